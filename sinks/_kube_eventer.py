"""kube-eventer's encodings of an Event, byte for byte: the one home for them, shared by the sinks.

kube-eventer marshals the ``*v1.Event`` it decoded from protobuf into k8s.io/api v0.17 structs with Go's
encoding/json, which decides what appears: Go's field order, no ``kind``/``apiVersion``, ``metav1.Time``
in whole UTC seconds, ``null`` for a zero time, maps sorted, unknown fields gone, ``omitempty`` rules per
field, ``<>&`` escaped. This module rebuilds that from the event's original JSON object:

- :func:`event_json`: ``json.MarshalIndent(event, "", " ")``, the Kafka ``EventValue`` and the InfluxDB
  ``value`` field;
- :func:`kafka_message`: the Kafka message ``{EventValue, EventTimestamp, EventTags}``;
- :func:`es_document`: the Elasticsearch ``EsSinkPoint`` document.

Go's three time texts used by kube-eventer's sinks each have one function here: :func:`metav1_time_json`
(a Kubernetes time inside the Event JSON), :func:`go_time_json` (a Go ``time.Time`` marshalled to JSON,
RFC 3339 with nanoseconds) and :func:`go_time_string` (Go's ``time.String()``, MySQL's varchar columns).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import orjson

from eventrouter import Event, format_time


def core_v1(event: Event) -> dict[str, Any]:
    """The core/v1 object kube-eventer would have received for this event."""
    return as_core_v1(event.raw) if isinstance(event.raw, dict) else from_event(event)


def event_json(event: Event) -> str:
    """``json.MarshalIndent(v1.Event, "", " ")``: kube-eventer's Kafka ``EventValue`` and InfluxDB ``value``."""
    return go_marshal(go_struct(core_v1(event), _EVENT), indent=True)


def kafka_message(event: Event) -> bytes:
    """kube-eventer's Kafka message (sinks/kafka/driver.go): json.Marshal of
    ``{EventValue: event_json(event), EventTimestamp, EventTags}``."""
    obj = core_v1(event)
    value = go_marshal(go_struct(obj, _EVENT), indent=True)
    tags = _tags(obj)
    point = {"EventValue": value, "EventTimestamp": go_time_json(last_event_time(obj, event)),
             "EventTags": dict(sorted(tags.items()))}
    return go_marshal(point).encode()


def es_document(event: Event, cluster_name: str) -> dict[str, Any]:
    """kube-eventer's ``EsSinkPoint`` (sinks/elasticsearch/driver.go): Go field names and order, the
    embedded structs as k8s JSON, FirstOccurrenceTimestamp a plain ``time.Time`` (zero: year 1)."""
    obj = core_v1(event)
    tags = {"cluster_name": cluster_name, **_tags(obj)}
    first = parse_time(obj.get("firstTimestamp"))
    return {
        "Count": obj.get("count") if isinstance(obj.get("count"), int) else 0,
        "Metadata": go_struct(obj.get("metadata"), _OBJECT_META),
        "InvolvedObject": go_struct(obj.get("involvedObject"), _OBJECT_REFERENCE),
        "Source": go_struct(obj.get("source"), _EVENT_SOURCE),
        "FirstOccurrenceTimestamp": go_time_json(first.replace(microsecond=0)) if first else GO_ZERO_TIME,
        "LastOccurrenceTimestamp": go_time_json(last_event_time(obj, event)),
        "Message": text(obj.get("message")),
        "Reason": text(obj.get("reason")),
        "Type": text(obj.get("type")),
        "EventTags": dict(sorted(tags.items())),  # Go sorts map keys
    }


GO_ZERO_TIME = "0001-01-01T00:00:00Z"


def _tags(obj: dict[str, Any]) -> dict[str, str]:
    involved = obj.get("involvedObject") or {}
    tags = {
        "eventID": text((obj.get("metadata") or {}).get("uid")),
        "hostname": text((obj.get("source") or {}).get("host")),
    }
    if involved.get("kind") == "Pod":
        tags.update(pod_id=text(involved.get("uid")), pod_name=text(involved.get("name")))
    return tags


def last_event_time(obj: dict[str, Any], event: Event) -> datetime:
    """kube-eventer's util.GetLastEventTimestamp: lastTimestamp (whole seconds: metav1.Time crosses
    protobuf so), else eventTime, else -- where kube-eventer takes time.Now() -- the event's own last time."""
    last = parse_time(obj.get("lastTimestamp"))
    return (last and last.replace(microsecond=0)) or parse_time(obj.get("eventTime")) or event.last_timestamp


def from_event(event: Event) -> dict[str, Any]:
    """A core/v1 object for an event built without one (``eventrouter check --send-test``)."""
    obj = event.involved_object
    return {
        "metadata": {"name": event.name, "namespace": event.namespace, "uid": event.uid,
                     "resourceVersion": event.resource_version,
                     "creationTimestamp": format_time(event.first_timestamp)},
        "involvedObject": {"kind": obj.kind, "namespace": obj.namespace, "name": obj.name, "uid": obj.uid,
                           "apiVersion": obj.api_version, "fieldPath": obj.field_path},
        "reason": event.reason,
        "message": event.message,
        "source": {"component": event.source_component, "host": event.source_host},
        "firstTimestamp": format_time(event.first_timestamp.replace(microsecond=0)),
        # metav1.Time holds whole seconds; a finer time is a MicroTime, as Kubernetes would send it
        "lastTimestamp": format_time(event.last_timestamp) if not event.last_timestamp.microsecond else None,
        "eventTime": format_time(event.last_timestamp) if event.last_timestamp.microsecond else None,
        "count": event.count,
        "type": event.type,
        "action": event.action,
        "reportingComponent": event.reporting_controller,
        "reportingInstance": event.reporting_instance,
    }


def as_core_v1(raw: dict[str, Any]) -> dict[str, Any]:
    """kube-eventer watches core/v1; an events.k8s.io/v1 object is mapped the way the API server does."""
    if not ("regarding" in raw or "note" in raw or str(raw.get("apiVersion", "")).startswith("events.k8s.io")):
        return raw
    return {
        "metadata": raw.get("metadata"),
        "involvedObject": raw.get("regarding"),
        "reason": raw.get("reason"),
        "message": raw.get("note"),
        "source": raw.get("deprecatedSource"),
        "firstTimestamp": raw.get("deprecatedFirstTimestamp"),
        "lastTimestamp": raw.get("deprecatedLastTimestamp"),
        "count": raw.get("deprecatedCount"),
        "type": raw.get("type"),
        "eventTime": raw.get("eventTime"),
        "series": raw.get("series"),
        "action": raw.get("action"),
        "related": raw.get("related"),
        "reportingComponent": raw.get("reportingController"),
        "reportingInstance": raw.get("reportingInstance"),
    }


# Go struct layouts of k8s.io/api core/v1 (v0.17, as vendored by kube-eventer), in field order.
# Kinds: s string,omitempty; S string (always); i int,omitempty; p pointer (omit if absent);
# t metav1.Time (always, null if zero); tp *metav1.Time; mt MicroTime (always); m map (sorted,
# omitempty); raw FieldsV1 (verbatim); a tuple is a struct (always), ("*", layout) a pointer to
# one, ("[]", layout) a slice of them, omitempty.
_OBJECT_REFERENCE = (("kind", "s"), ("namespace", "s"), ("name", "s"), ("uid", "s"), ("apiVersion", "s"),
                     ("resourceVersion", "s"), ("fieldPath", "s"))
_OWNER_REFERENCE = (("apiVersion", "S"), ("kind", "S"), ("name", "S"), ("uid", "S"), ("controller", "p"),
                    ("blockOwnerDeletion", "p"))
_MANAGED_FIELDS = (("manager", "s"), ("operation", "s"), ("apiVersion", "s"), ("time", "tp"), ("fieldsType", "s"),
                   ("fieldsV1", "raw"))
_OBJECT_META = (("name", "s"), ("generateName", "s"), ("namespace", "s"), ("selfLink", "s"), ("uid", "s"),
                ("resourceVersion", "s"), ("generation", "i"), ("creationTimestamp", "t"), ("deletionTimestamp", "tp"),
                ("deletionGracePeriodSeconds", "p"), ("labels", "m"), ("annotations", "m"),
                ("ownerReferences", ("[]", _OWNER_REFERENCE)), ("finalizers", "list"), ("clusterName", "s"),
                ("managedFields", ("[]", _MANAGED_FIELDS)))
_EVENT_SOURCE = (("component", "s"), ("host", "s"))
_EVENT = (("metadata", _OBJECT_META), ("involvedObject", _OBJECT_REFERENCE), ("reason", "s"), ("message", "s"),
          ("source", _EVENT_SOURCE), ("firstTimestamp", "t"), ("lastTimestamp", "t"),
          ("count", "i"), ("type", "s"), ("eventTime", "mt"),
          ("series", ("*", (("count", "i"), ("lastObservedTime", "mt"), ("state", "s")))), ("action", "s"),
          ("related", ("*", _OBJECT_REFERENCE)), ("reportingComponent", "S"), ("reportingInstance", "S"))


def go_struct(obj: Any, layout: tuple[Any, ...]) -> dict[str, Any]:
    """``obj`` as Go's encoding/json writes the struct ``layout`` describes (see the kinds above)."""
    if not isinstance(obj, dict):
        obj = {}
    out: dict[str, Any] = {}
    for name, kind in layout:
        value = obj.get(name)
        if kind == "s" or kind == "i" or kind == "list":  # the most common kinds first, then the structs
            if value:
                out[name] = value
        elif isinstance(kind, tuple):
            if kind[0] == "*":
                if isinstance(value, dict):
                    out[name] = go_struct(value, kind[1])
            elif kind[0] == "[]":
                if value:
                    out[name] = [go_struct(item, kind[1]) for item in value]
            else:
                out[name] = go_struct(value, kind)
        elif kind == "t" or kind == "mt":
            out[name] = metav1_time_json(value, micro=kind == "mt")
        elif kind == "S":
            out[name] = value if isinstance(value, str) else ""
        elif kind == "m":
            if value:
                out[name] = dict(sorted(value.items()))
        elif kind == "p" or kind == "raw":
            if value is not None:
                out[name] = value
        elif kind == "tp" and value is not None:
            out[name] = metav1_time_json(value, micro=False)
    return out


def text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def parse_time(value: Any) -> datetime | None:
    if not value or not isinstance(value, str):
        return None
    text = value.replace("z", "Z")
    head, dot, frac = text.partition(".")
    if dot:  # Go may write nanoseconds; Python reads at most microseconds
        digits = len(frac) - len(frac.lstrip("0123456789"))
        text = f"{head}.{frac[:min(digits, 6)].ljust(6, '0')}{frac[digits:]}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.replace(tzinfo=None) == datetime(1, 1, 1):
        return None  # Go's zero time
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def metav1_time_json(value: Any, micro: bool) -> str | None:
    """A Kubernetes time inside the Event JSON: metav1.Time is RFC 3339 seconds in UTC; MicroTime six
    fraction digits; zero: null."""
    if isinstance(value, str) and len(value) == (27 if micro else 20) and value[-1] == "Z" and value[10] == "T" \
            and not value.startswith("0001-01-01"):
        return value  # already in that form, as the API server writes it (the common case: no parsing)
    parsed = parse_time(value)
    if parsed is None:
        return None
    return parsed.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


def go_time_json(value: datetime) -> str:
    """A Go ``time.Time`` marshalled to JSON in UTC (time.RFC3339Nano): the fraction without trailing zeros."""
    text = format_time(value)
    if "." in text:
        head, frac = text[:-1].split(".")
        frac = frac.rstrip("0")
        text = f"{head}.{frac}Z" if frac else f"{head}Z"
    return text


_GO_ESCAPE = re.compile(r'[\x00-\x1f"\\<>&\u2028\u2029\ud800-\udfff]')
_GO_SHORT = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def go_time_string(value: datetime) -> str:
    """Go's ``time.String()`` of a UTC time, the text kube-eventer wrote into MySQL's varchar time columns
    (kube-eventer used the pod's local zone; eventrouter writes UTC)."""
    utc = value.astimezone(UTC)
    fraction = f".{utc.microsecond:06d}".rstrip("0") if utc.microsecond else ""
    return f"{utc.strftime('%Y-%m-%d %H:%M:%S')}{fraction} +0000 UTC"


def go_escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _GO_SHORT:
        return _GO_SHORT[char]
    if "\ud800" <= char <= "\udfff":
        return "\\ufffd"  # Go decodes a lone surrogate to U+FFFD
    return f"\\u{ord(char):04x}"


_HTML_SAFE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028",
                            "\u2029": "\\u2029"})


def _needs_html_safe(raw: bytes) -> bool:
    """Whether orjson's bytes hold one of the characters Go escapes as HTML-unsafe: ``<>&``, or U+2028 /
    U+2029 (E2 80 A8 / A9 in UTF-8). A one-byte ``in`` is a memchr, several times faster than a regex or
    a longer needle, so the three-byte ones are looked for only when an E2 byte is there."""
    return b"<" in raw or b">" in raw or b"&" in raw or (
        b"\xe2" in raw and (b"\xe2\x80\xa8" in raw or b"\xe2\x80\xa9" in raw))


def go_marshal(value: Any, indent: bool = False) -> str:
    """:func:`go_json` (``indent``: one space), the fast way: orjson writes the same JSON except for
    Go's HTML-safe escapes and its indent of two, both fixed after; it refuses lone surrogates, which
    :func:`go_json` writes as Go does. Values are what :func:`go_struct` makes (no floats)."""
    try:
        raw = orjson.dumps(value, option=orjson.OPT_INDENT_2 if indent else 0)
    except TypeError:
        return go_json(value, " " if indent else None)
    if indent:
        raw = _halve_indent(raw)
    text = raw.decode()
    return text.translate(_HTML_SAFE) if _needs_html_safe(raw) else text


# the steps of _halve_indent: "\n" and n+1 spaces -> "\n" and n spaces, built once for the usual depths
_HALVING_STEPS = [(b"\n" + b" " * (level + 1), b"\n" + b" " * level) for level in range(16)]


def _halve_indent(raw: bytes) -> bytes:
    """orjson's indent of two spaces per level -> Go's one. A raw newline occurs only before an indent
    (a string's newlines are escaped) and no line starts with a space after it. Step n takes one space
    off every indent of more than n spaces: a line of level d (2d spaces) loses one at steps 1..d and is
    left with d; a line already at its final indent never has more than n. The first step that changes
    nothing ends it."""
    level = 1
    while True:
        old, new = (_HALVING_STEPS[level] if level < len(_HALVING_STEPS)
                    else (b"\n" + b" " * (level + 1), b"\n" + b" " * level))
        halved = raw.replace(old, new)
        if len(halved) == len(raw):
            return raw
        raw, level = halved, level + 1


def go_json(value: Any, indent: str | None = None, depth: int = 0) -> str:
    """Go's encoding/json output (json.Marshal, or json.MarshalIndent with prefix "" and
    ``indent``): HTML-safe string escapes, dict order kept, empty objects and arrays as {} and []."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        return '"' + _GO_ESCAPE.sub(go_escape, value) + '"'
    if isinstance(value, dict):
        colon = ": " if indent else ":"
        items = [f"{go_json(str(k))}{colon}{go_json(v, indent, depth + 1)}" for k, v in value.items()]
        return go_join("{", items, "}", indent, depth)
    if isinstance(value, (list, tuple)):
        return go_join("[", [go_json(v, indent, depth + 1) for v in value], "]", indent, depth)
    return go_json(str(value))


def go_join(open_: str, items: list[str], close: str, indent: str | None, depth: int) -> str:
    if not items:
        return open_ + close
    if indent is None:
        return open_ + ",".join(items) + close
    inner = "\n" + indent * (depth + 1)
    return open_ + inner + ("," + inner).join(items) + "\n" + indent * depth + close
