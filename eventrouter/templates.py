"""Jinja2 message templates for chat and webhook sinks, rendered in a sandbox.

Variables: every normalized field (``type``, ``reason``, ``message``, ``count``, ``namespace``, ``name``,
``first_timestamp``, ``last_timestamp`` as UTC ``...Z`` strings, ``involved_object.kind`` ...), plus
``event`` (the Event object), ``raw`` (the Kubernetes object), ``first_time``/``last_time`` (formatted in the
sink's ``tz``) and ``cluster``. Filters: ``tojson``, ``localtime(fmt)``.

With ``json_escape=True`` (JSON bodies) every ``{{ value }}`` is JSON-string-escaped, so a message with ``"`` or a
newline still yields valid JSON inside ``"{{ message }}"``; ``{{ x | tojson }}`` inserts a complete JSON value.

kube-eventer's webhook templates use Go syntax (``{{ .InvolvedObject.Name }}``); plain field references of that
form are accepted too and read the Go field names of the Kubernetes object (control structures are not).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from jinja2 import TemplateError, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from eventrouter.errors import SinkConfigError
from eventrouter.event import Event, InvolvedObject, sample_event

_GO_FIELD = re.compile(r"\{\{-?\s*\.([A-Za-z][A-Za-z0-9_.]*)\s*-?\}\}")
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


_GO_NAMES = {"uid": "UID", "apiVersion": "APIVersion"}


def _go_view(obj: Any) -> Any:
    """The Kubernetes object with Go field names (involvedObject -> InvolvedObject, uid -> UID)."""
    if isinstance(obj, dict):
        return {_GO_NAMES.get(key, key[:1].upper() + key[1:]): _go_view(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [_go_view(v) for v in obj]
    return obj


def _go_fields(event: Event, last_time: str, first_time: str) -> dict[str, Any]:
    """kube-eventer's template view: Go field names, filled from the normalized event over the raw object."""
    view = _go_view(event.raw) if isinstance(event.raw, dict) else {}
    obj = event.involved_object
    view.update(
        Type=event.type, Reason=event.reason, Message=event.message, Count=event.count,
        Namespace=event.namespace, Name=event.name, FirstTimestamp=first_time, LastTimestamp=last_time,
        InvolvedObject={"Kind": obj.kind, "Namespace": obj.namespace, "Name": obj.name, "UID": obj.uid,
                        "APIVersion": obj.api_version, "FieldPath": obj.field_path},
        Source={"Component": event.source_component, "Host": event.source_host},
    )
    return view


class EventTemplate:
    """A compiled template. Construction validates it against a sample event (SinkConfigError if it fails)."""

    def __init__(self, sink: str, source: str, *, option: str = "template", json_escape: bool = False,
                 tz: tzinfo = UTC, time_format: str = DEFAULT_TIME_FORMAT) -> None:
        self.tz = tz
        self.time_format = time_format
        self._uses_go = bool(_GO_FIELD.search(source))
        source = _GO_FIELD.sub(lambda m: "{{ go." + m.group(1) + " }}", source)
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

    def _localtime(self, value: Any, fmt: str | None = None) -> str:
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if not isinstance(value, datetime):
            return str(value)
        return value.astimezone(self.tz).strftime(fmt or self.time_format)

    def context(self, event: Event, **extra: Any) -> dict[str, Any]:
        data = event.to_dict()
        first_time = self._localtime(event.first_timestamp)
        last_time = self._localtime(event.last_timestamp)
        data.update(event=event, raw=event.raw or {}, first_time=first_time, last_time=last_time)
        if self._uses_go:
            data["go"] = _go_fields(event, last_time, first_time)
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
