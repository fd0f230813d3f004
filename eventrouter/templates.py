"""Jinja2 message templates for chat and webhook sinks, rendered in a sandbox.

Variables: every normalized field (``type``, ``reason``, ``message``, ``count``, ``namespace``, ``name``,
``first_timestamp``, ``last_timestamp`` as UTC ``...Z`` strings, ``involved_object.kind`` ...), plus
``event`` (the Event object), ``raw`` (the Kubernetes object), ``first_time``/``last_time`` (formatted in the
sink's ``tz``) and ``cluster``. Filters: ``tojson``, ``localtime(fmt)``.

With ``json_escape=True`` (JSON bodies) every ``{{ value }}`` is JSON-string-escaped, so a message with ``"`` or a
newline still yields valid JSON inside ``"{{ message }}"``; ``{{ x | tojson }}`` inserts a complete JSON value.

kube-eventer's webhook templates use Go syntax (``{{ .InvolvedObject.Name }}``): field references of that form
(and ``{{ index .Labels "key" }}``) read the ``v1.Event`` kube-eventer rendered and print as Go's text/template
printed them (``templates_go.py``); a reference to a field the struct does not have is a start-up error.
Go control structures (``{{ if }}``, pipelines) are not Go here: use Jinja2's ``{% if %}``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from eventrouter.errors import SinkConfigError
from eventrouter.event import Event, InvolvedObject, sample_event
from eventrouter.templates_go import GO_REFERENCE, UnknownField, check_reference, event_view, go_print, lookup
from eventrouter.templates_go import references as go_references

DEFAULT_TIME_FORMAT = "%Y-%m-%d %H:%M:%S %Z"


class JSONValue(str):
    """Already a complete JSON value: not escaped again."""


def _tojson(value: Any) -> JSONValue:
    if isinstance(value, (Event, InvolvedObject)):
        value = value.to_dict()
    return JSONValue(orjson.dumps(value, default=str).decode())


def _json_escape(value: Any) -> Any:
    if isinstance(value, JSONValue):
        return value
    from jinja2 import Undefined  # loaded already: this runs inside a jinja2 render

    if value is None or isinstance(value, Undefined):
        return ""
    text = value if isinstance(value, str) else str(value)
    return orjson.dumps(text).decode()[1:-1]


def parse_tz(sink: str, name: str | None, option: str = "tz") -> tzinfo:
    if not name or name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise SinkConfigError(sink, f"{name!r} is not a time zone; use an IANA name such as Asia/Shanghai or UTC",
                              option) from None


class EventTemplate:
    """A compiled template. Construction validates it against a sample event (SinkConfigError if it fails)."""

    def __init__(self, sink: str, source: str, *, option: str = "template", json_escape: bool = False,
                 tz: tzinfo = UTC, time_format: str = DEFAULT_TIME_FORMAT) -> None:
        self.tz = tz
        self.time_format = time_format
        self._go_paths = self._go_references(sink, source, option)
        source = self._replace_go_references(source)
        # jinja2 only when a template is configured (start-up time and memory, issue 20)
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(
            autoescape=False,
            keep_trailing_newline=True,
            finalize=_json_escape if json_escape else None,
        )
        env.filters["tojson"] = _tojson
        env.filters["localtime"] = self._localtime
        try:
            self._template = env.from_string(source)
        except TemplateError as exc:
            raise SinkConfigError(sink, f"template error: {exc}", option) from None
        try:
            self.render(sample_event())  # catch errors at start-up, not at the first alert
        except Exception as exc:
            raise SinkConfigError(sink, f"template does not render: {type(exc).__name__}: {exc}", option) from None

    @staticmethod
    def _go_references(sink: str, source: str, option: str) -> list[tuple[str, ...]]:
        paths = []
        for ref in go_references(source):
            try:
                check_reference(ref.path, ref.index)
            except UnknownField as exc:
                raise SinkConfigError(sink, f"template: {ref.text}: {exc}", option) from None
            paths.append(ref.path)
        return paths

    @staticmethod
    def _replace_go_references(source: str) -> str:
        """``{{ .A.B }}`` -> ``{{ _go[i] }}`` (the i-th reference's value, printed the Go way)."""
        counter = iter(range(1 << 30))

        def replace(match: re.Match[str]) -> str:
            left = "{{-" if match.group(1) else "{{"
            right = "-}}" if match.group(5) else "}}"
            return f"{left} _go[{next(counter)}] {right}"

        return GO_REFERENCE.sub(replace, source)

    def _localtime(self, value: Any, fmt: str | None = None) -> str:
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if not isinstance(value, datetime):
            return str(value)
        return value.astimezone(self.tz).strftime(fmt or self.time_format)

    def context(self, event: Event, **extra: Any) -> dict[str, Any]:
        data = event.to_dict()
        # enrichment fields are always there, empty when off, so {{ labels.team }} renders "" rather than fails
        data.setdefault("labels", {})
        data.setdefault("annotations", {})
        data.setdefault("owner", None)
        first_time = self._localtime(event.first_timestamp)
        last_time = self._localtime(event.last_timestamp)
        data.update(event=event, raw=event.raw or {}, first_time=first_time, last_time=last_time)
        if self._go_paths:
            view = event_view(event)
            data["_go"] = [go_print(lookup(view, path), self.tz) for path in self._go_paths]
        data.update(extra)
        return data

    def render(self, event: Event, **extra: Any) -> str:
        return self._template.render(self.context(event, **extra))


def template_source(sink: str, opts: Any, inline: str = "template", file: str = "template_file") -> str | None:
    """The template text from an inline option or a file option (read at start-up)."""
    text = opts.get(inline)
    path = opts.get(file)
    if text and path:
        raise SinkConfigError(sink, f"give either {inline} or {file}, not both", file)
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                return handle.read()
        except OSError as exc:
            raise SinkConfigError(sink, f"cannot read {path}: {exc.strerror}", file) from None
    return text or None
