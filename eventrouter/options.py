"""Sink options declared as data: the declaration drives parsing, validation, help and masking.

A sink lists its options once::

    options = (
        Option("brokers", list, required=True, help="bootstrap host:port"),
        Option("password", str, secret=True, help="SASL password"),
    )

Types: ``str``, ``int``, ``float``, ``bool`` (Go's ``strconv.ParseBool`` words), ``list``
(repeated keys and comma-separated values; ``item=`` types each value), ``Duration`` (``30s``, ``5m``,
``1h``, ``250ms`` or plain seconds), ``HostPort`` (``host:port``) and ``URL`` (``http(s)://host:port/``).
A secret option's value is wrapped in :class:`Secret`, which prints as ``***``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from eventrouter.errors import SinkConfigError

MASK = "***"

_TRUE = {"1", "t", "T", "true", "TRUE", "True"}
_FALSE = {"0", "f", "F", "false", "FALSE", "False"}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


class Secret:
    """A secret value. ``str()`` and ``repr()`` show ``***``; call :meth:`reveal` where it is used."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __str__(self) -> str:
        return MASK

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class HostPort(str):
    """``host:port`` (``[v6addr]:port``), the port from 1 to 65535: a Kafka broker, a node address."""


class URL(str):
    """An absolute ``http://`` or ``https://`` URL whose host:port is valid."""


_HOST = re.compile(r"[A-Za-z0-9_.~%!$&'()*+,;=-]+")


def check_authority(authority: str, *, port_required: bool = False) -> str | None:
    """What is wrong with a URL's ``host[:port]`` (``[v6]:port`` too), or None. The one home of this
    check: the URL of every ``--sink``/``--source`` flag and every HostPort/URL option use it."""
    host, port = authority, None
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            return f"{authority!r} is not a valid host ('[' without ']')"
        host, tail = authority[1:end], authority[end + 1 :]
        if tail:
            if not tail.startswith(":"):
                return f"{authority!r} is not a valid host:port"
            port = tail[1:]
        if not host or not all(c in ":.%" or c.isalnum() for c in host):
            return f"{authority!r} is not a valid IPv6 address"
    else:
        if ":" in authority:
            host, _, port = authority.rpartition(":")
            if ":" in host:
                return f"{authority!r} is not a valid host:port (write an IPv6 address in brackets)"
        if host and not _HOST.fullmatch(host):
            return f"{authority!r} is not a valid host"
    if port_required and not host:
        return f"{authority!r} has no host; use host:port"
    if port is None or port == "":
        # Go accepts an empty port ("h:"); a host:port option needs one
        return f"{authority!r} has no port; use host:port" if port_required else None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"{authority!r}: the port {port!r} is not a number from 1 to 65535"
    return None


def _check_url(text: str) -> str | None:
    shown = re.sub(r"^([^@/]*//)?[^@/]*@", lambda m: (m.group(1) or "") + MASK + "@", text)  # userinfo: secret
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return f"{shown!r} is not an http:// or https:// URL"
    authority = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0].rpartition("@")[2]
    if not authority:
        return f"{shown!r} has no host"
    return check_authority(authority)


class Duration(float):
    """Seconds, parsed from ``250ms``, ``30s``, ``5m``, ``1h``, ``1d`` or a plain number."""


def parse_duration(text: str) -> Duration:
    match = _DURATION.match(text)
    if not match:
        raise ValueError(text)
    return Duration(float(match.group(1)) * _UNIT_SECONDS[match.group(2)])


def _type_name(kind: Any) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "a list (repeat the key or separate values with commas)",
        Duration: "a duration such as 500ms, 30s, 5m, 1h",
        HostPort: "host:port (port 1-65535)",
        URL: "an http:// or https:// URL",
    }.get(kind, getattr(kind, "__name__", str(kind)))


@dataclass(frozen=True)
class Option:
    """One option of a sink (or of every sink, for the core's filter and delivery options)."""

    name: str
    type: Any = str
    default: Any = None
    required: bool = False
    secret: bool = False
    help: str = ""
    choices: Sequence[str] | None = None
    aliases: Sequence[str] = ()
    # list options: the type of each item (str, int, HostPort, URL, ...)
    item: Any = str
    # list options: also split each value on commas (kube-eventer's namespaces=a,b);
    # False for options whose values may contain commas (label=, header=).
    split_commas: bool = True
    # int/float/Duration bounds, inclusive
    min: float | None = None
    max: float | None = None
    validate: Callable[[Any], str | None] | None = field(default=None, compare=False)

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    def describe(self) -> str:
        """What values are allowed, for error messages and ``eventrouter sinks``."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.type is list and self.item is not str:
            return f"a list of {_type_name(self.item)} (repeat the key or separate values with commas)"
        if self.type is list and not self.split_commas:
            return "a list (repeat the key for more values)"
        text = _type_name(self.type)
        if self.min is not None and self.max is not None:
            text += f" from {self.min:g} to {self.max:g}"
        elif self.min is not None:
            text += f" >= {self.min:g}"
        return text

    def parse(self, sink: str, values: Sequence[str]) -> Any:
        """Convert the raw query values of this option; raise SinkConfigError if they do not fit."""
        if self.type is list:
            items: list[str] = []
            for value in values:
                items.extend(value.split(",") if self.split_commas else [value])
            if self.choices:
                for item in items:
                    self._check_choice(sink, item)
            # typed items: an empty one (a trailing comma) is left out, not an error
            result: Any = items if self.item is str else [self._convert(sink, i, self.item) for i in items if i.strip()]
        else:
            # kube-eventer reads the first value of a repeated key; so do we.
            raw = values[0]
            result = self._convert(sink, raw)
        if self.validate is not None:
            problem = self.validate(result)
            if problem:
                raise SinkConfigError(sink, problem, self.name)
        if self.secret:
            if isinstance(result, list):
                return [Secret(v) for v in result]
            return Secret(result)
        return result

    def _check_choice(self, sink: str, raw: str) -> str:
        assert self.choices is not None
        for choice in self.choices:
            if raw == choice or raw.lower() == choice.lower():
                return choice
        shown = MASK if self.secret else repr(raw)
        raise SinkConfigError(sink, f"{shown} is not allowed; use {self.describe()}", self.name)

    def _convert(self, sink: str, raw: str, kind: Any = None) -> Any:
        if self.choices and kind is None:
            return self._check_choice(sink, raw)
        kind = self.type if kind is None else kind
        if kind in (HostPort, URL):
            if kind is URL and not raw.strip():
                return ""  # unset: the sink's default applies
            problem = check_authority(raw.strip(), port_required=True) if kind is HostPort else _check_url(raw.strip())
            if problem:
                shown = f"the value is not {_type_name(kind)}" if self.secret else problem
                raise SinkConfigError(sink, shown, self.name)
            return kind(raw.strip())
        try:
            if kind is str:
                return raw
            if kind is bool:
                if raw in _TRUE:
                    return True
                if raw in _FALSE:
                    return False
                raise ValueError(raw)
            if kind is Duration:
                value: Any = parse_duration(raw)
            elif kind is int:
                value = int(raw)
            elif kind is float:
                value = float(raw)
            else:
                value = kind(raw)
        except (ValueError, TypeError):
            shown = MASK if self.secret else repr(raw)
            raise SinkConfigError(sink, f"{shown} is not {self.describe()}", self.name) from None
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            raise SinkConfigError(sink, f"{raw!r} is out of range; use {self.describe()}", self.name)
        return value


class Options(Mapping[str, Any]):
    """Parsed option values, read as ``opts["name"]`` or ``opts.name``; secrets stay wrapped."""

    def __init__(self, values: dict[str, Any], given: Iterable[str]) -> None:
        self._values = values
        self.given = frozenset(given)

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __getattr__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(key) from None

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Options({self._values!r})"


def parse_options(sink: str, declared: Sequence[Option], query: Mapping[str, Sequence[str]]) -> Options:
    """Parse a query against the declared options: unknown, missing and bad values are errors."""
    by_key: dict[str, Option] = {}
    for option in declared:
        for key in option.keys:
            by_key[key] = option
    values: dict[str, Any] = {}
    given: set[str] = set()
    for key, raw in query.items():
        found = by_key.get(key)
        if found is None:
            names = sorted(o.name for o in declared)
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise SinkConfigError(sink, f"unknown option; {hint}allowed options are: {', '.join(names)}", key)
        option = found
        if option.name in given:
            # an alias and its name both given: the values add up, as repeats do
            raw = list(_raw_values(query, option))
        values[option.name] = option.parse(sink, raw)
        given.add(option.name)
    for option in declared:
        if option.name in values:
            continue
        if option.required:
            raise SinkConfigError(sink, f"is required ({option.help or option.describe()})", option.name)
        default = option.default
        values[option.name] = list(default) if isinstance(default, (list, tuple)) else default
    return Options(values, given)


def _raw_values(query: Mapping[str, Sequence[str]], option: Option) -> Iterable[str]:
    for key in option.keys:
        yield from query.get(key, ())
