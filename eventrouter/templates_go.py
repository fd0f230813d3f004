"""kube-eventer's Go-template field references (``{{ .InvolvedObject.Name }}``) over a core/v1 Event.

kube-eventer renders its webhook body with Go's ``text/template`` over the ``*v1.Event`` it decoded
(k8s.io/api v0.17). A reference reaches any field of that struct, with the embedded ``TypeMeta`` and
``ObjectMeta`` fields promoted (``.Name`` is ``.ObjectMeta.Name``). This module knows the struct as data
(:data:`EVENT`), so a reference to a field that does not exist is a start-up error naming it, and it prints
each value the way ``text/template`` prints it:

- strings as they are, numbers in decimal;
- times (``metav1.Time``/``MicroTime``) with Go's ``time.String()``: ``2026-04-14 09:30:05 +0000 UTC``, the
  fraction only when there is one (``…05.123456 +0000 UTC``), in the sink's ``tz``; an unset time is
  ``0001-01-01 00:00:00 +0000 UTC``;
- maps (``.Labels``) as ``map[k1:v1 k2:v2]`` with sorted keys, ``map[]`` when empty; a missing key
  (``.Labels.app``) as ``<no value>``;
- slices as ``[a b]``; structs as ``{v1 v2 …}``; a nil pointer (``.Series``, ``.Related``,
  ``.DeletionTimestamp``) as ``<nil>``.

Values come from the raw Kubernetes object, with kube-eventer's two changes before rendering:
``LastTimestamp`` is the event's last time (kube-eventer: lastTimestamp, else eventTime), and ``Message`` is
the message (kube-eventer removed its ``"``; here the sink JSON-escapes it instead). ``Kind`` and
``APIVersion`` (TypeMeta) are empty, as they were in kube-eventer's decoded objects. Where kube-eventer failed
the whole event (a field under a nil pointer: ``.Series.Count`` without a series), the field renders empty.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any

import orjson

from eventrouter.event import Event, parse_time

# ---- the Go struct, as data -----------------------------------------------------------------------
STR, INT, TIME, MAP, STRS = "string", "int", "time", "map", "[]string"


@dataclass(frozen=True)
class Struct:
    name: str
    fields: tuple[tuple[str, Any], ...]  # (Go name, type) in declaration order
    promoted: tuple[str, ...] = ()  # embedded structs whose fields are promoted

    def field(self, name: str) -> Any:
        for field, kind in self.fields:
            if field == name:
                return kind
        for embedded in self.promoted:
            inner = self.field(embedded)
            found = inner.field(name)
            if found is not None:
                return found
        return None

    def names(self) -> list[str]:
        names = [f for f, _ in self.fields]
        for embedded in self.promoted:
            names += self.field(embedded).names()
        return names


@dataclass(frozen=True)
class Ptr:
    to: Any


@dataclass(frozen=True)
class Slice:
    of: Any


OBJECT_REFERENCE = Struct("ObjectReference", (
    ("Kind", STR), ("Namespace", STR), ("Name", STR), ("UID", STR), ("APIVersion", STR),
    ("ResourceVersion", STR), ("FieldPath", STR)))
OWNER_REFERENCE = Struct("OwnerReference", (
    ("APIVersion", STR), ("Kind", STR), ("Name", STR), ("UID", STR), ("Controller", Ptr("bool")),
    ("BlockOwnerDeletion", Ptr("bool"))))
MANAGED_FIELDS_ENTRY = Struct("ManagedFieldsEntry", (
    ("Manager", STR), ("Operation", STR), ("APIVersion", STR), ("Time", Ptr(TIME)), ("FieldsType", STR),
    ("FieldsV1", Ptr(STR))))
TYPE_META = Struct("TypeMeta", (("Kind", STR), ("APIVersion", STR)))
OBJECT_META = Struct("ObjectMeta", (
    ("Name", STR), ("GenerateName", STR), ("Namespace", STR), ("SelfLink", STR), ("UID", STR),
    ("ResourceVersion", STR), ("Generation", INT), ("CreationTimestamp", TIME), ("DeletionTimestamp", Ptr(TIME)),
    ("DeletionGracePeriodSeconds", Ptr(INT)), ("Labels", MAP), ("Annotations", MAP),
    ("OwnerReferences", Slice(OWNER_REFERENCE)), ("Finalizers", STRS), ("ClusterName", STR),
    ("ManagedFields", Slice(MANAGED_FIELDS_ENTRY))))
EVENT_SOURCE = Struct("EventSource", (("Component", STR), ("Host", STR)))
EVENT_SERIES = Struct("EventSeries", (("Count", INT), ("LastObservedTime", TIME), ("State", STR)))
EVENT = Struct("Event", (
    ("TypeMeta", TYPE_META), ("ObjectMeta", OBJECT_META), ("InvolvedObject", OBJECT_REFERENCE),
    ("Reason", STR), ("Message", STR), ("Source", EVENT_SOURCE), ("FirstTimestamp", TIME),
    ("LastTimestamp", TIME), ("Count", INT), ("Type", STR), ("EventTime", TIME), ("Series", Ptr(EVENT_SERIES)),
    ("Action", STR), ("Related", Ptr(OBJECT_REFERENCE)), ("ReportingController", STR),
    ("ReportingInstance", STR)), promoted=("TypeMeta", "ObjectMeta"))


class UnknownField(ValueError):
    """A reference names a field the Go struct does not have (or indexes into a value that has no fields)."""


def kind_at(path: tuple[str, ...]) -> Any:
    """The Go type at ``.A.B.C`` of a v1.Event; UnknownField if text/template could not evaluate it."""
    kind: Any = EVENT
    where = "v1.Event"
    for step in path:
        if isinstance(kind, Ptr):
            kind = kind.to
        if kind == MAP:
            kind, where = STR, "a map value"  # .Labels.app: the key app of a map[string]string
            continue
        if not isinstance(kind, Struct):
            raise UnknownField(f"{where} is of type {_type_name(kind)} and has no field {step}")
        found = kind.field(step)
        if found is None:
            raise UnknownField(f"{kind.name} has no field {step}; its fields are {', '.join(kind.names())}")
        where = f"{kind.name}.{step}"
        kind = found
    return kind


def check_reference(path: tuple[str, ...], index: bool) -> None:
    """Raise UnknownField unless text/template can evaluate this reference on a v1.Event."""
    if not index:
        kind_at(path)
        return
    kind = kind_at(path[:-1])
    if kind != MAP:
        raise UnknownField(f"index needs a map such as .Labels or .Annotations; .{'.'.join(path[:-1])} is of "
                           f"type {_type_name(kind)}")


def _type_name(kind: Any) -> str:
    if isinstance(kind, Slice):
        return f"[]{_type_name(kind.of)}"
    if isinstance(kind, Ptr):
        return f"*{_type_name(kind.to)}"
    if isinstance(kind, Struct):
        return kind.name
    return "map[string]string" if kind == MAP else str(kind)


# ---- the values -----------------------------------------------------------------------------------
class _Nil:
    """A nil pointer: printed ``<nil>``; a field under it renders empty."""


class GoStruct(dict[str, Any]):
    """A struct value (printed ``{v1 v2 ...}``), as opposed to a map (printed ``map[k:v ...]``)."""


NIL = _Nil()
NO_VALUE = "<no value>"
ZERO_TIME = "0001-01-01 00:00:00 +0000 UTC"


@dataclass(frozen=True)
class GoTime:
    value: datetime | None  # None: Go's zero time


def go_time(value: datetime | None, tz: tzinfo = UTC) -> str:
    """Go's ``time.String()`` (without the monotonic reading): ``2006-01-02 15:04:05.999999999 -0700 MST``."""
    if value is None:
        return ZERO_TIME
    local = value.astimezone(tz)
    text = local.strftime("%Y-%m-%d %H:%M:%S")
    if local.microsecond:
        text += "." + f"{local.microsecond:06d}".rstrip("0")
    return f"{text} {local.strftime('%z')} {local.tzname() or local.strftime('%z')}"


def _time(value: Any) -> GoTime:
    try:
        return GoTime(parse_time(value))
    except ValueError:
        return GoTime(None)


def _ref(ref: Any) -> dict[str, Any]:
    ref = ref if isinstance(ref, dict) else {}
    return GoStruct({"Kind": _s(ref.get("kind")), "Namespace": _s(ref.get("namespace")), "Name": _s(ref.get("name")),
            "UID": _s(ref.get("uid")), "APIVersion": _s(ref.get("apiVersion")),
            "ResourceVersion": _s(ref.get("resourceVersion")), "FieldPath": _s(ref.get("fieldPath"))})


def _s(value: Any) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _i(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _map(value: Any) -> dict[str, str]:
    return {str(k): _s(v) for k, v in value.items()} if isinstance(value, dict) else {}


def _meta(meta: Any) -> dict[str, Any]:
    meta = meta if isinstance(meta, dict) else {}
    owners = [GoStruct({"APIVersion": _s(o.get("apiVersion")), "Kind": _s(o.get("kind")), "Name": _s(o.get("name")),
               "UID": _s(o.get("uid")),
               "Controller": NIL if o.get("controller") is None else bool(o["controller"]),
               "BlockOwnerDeletion": NIL if o.get("blockOwnerDeletion") is None else bool(o["blockOwnerDeletion"])})
              for o in meta.get("ownerReferences") or () if isinstance(o, dict)]
    managed = [GoStruct({"Manager": _s(m.get("manager")), "Operation": _s(m.get("operation")),
                "APIVersion": _s(m.get("apiVersion")),
                "Time": _time(m["time"]) if m.get("time") else NIL, "FieldsType": _s(m.get("fieldsType")),
                "FieldsV1": NIL if m.get("fieldsV1") is None else _json(m["fieldsV1"])})
               for m in meta.get("managedFields") or () if isinstance(m, dict)]
    grace = meta.get("deletionGracePeriodSeconds")
    return GoStruct({"Name": _s(meta.get("name")), "GenerateName": _s(meta.get("generateName")),
            "Namespace": _s(meta.get("namespace")), "SelfLink": _s(meta.get("selfLink")),
            "UID": _s(meta.get("uid")), "ResourceVersion": _s(meta.get("resourceVersion")),
            "Generation": _i(meta.get("generation")), "CreationTimestamp": _time(meta.get("creationTimestamp")),
            "DeletionTimestamp": _time(meta["deletionTimestamp"]) if meta.get("deletionTimestamp") else NIL,
            "DeletionGracePeriodSeconds": NIL if grace is None else _i(grace),
            "Labels": _map(meta.get("labels")), "Annotations": _map(meta.get("annotations")),
            "OwnerReferences": owners, "Finalizers": [_s(f) for f in meta.get("finalizers") or ()],
            "ClusterName": _s(meta.get("clusterName")), "ManagedFields": managed})


def event_view(event: Event) -> GoStruct:
    """The ``v1.Event`` kube-eventer rendered, as nested dicts of Go-typed values."""
    raw = event.raw if isinstance(event.raw, dict) else None
    if raw is None:  # an event built in code: what the normalized fields say
        obj = event.involved_object
        raw = {"metadata": {"name": event.name, "namespace": event.namespace, "uid": event.uid,
                            "resourceVersion": event.resource_version},
               "involvedObject": {"kind": obj.kind, "namespace": obj.namespace, "name": obj.name, "uid": obj.uid,
                                  "apiVersion": obj.api_version, "fieldPath": obj.field_path},
               "reason": event.reason, "type": event.type, "count": event.count,
               "firstTimestamp": event.first_timestamp.isoformat(),
               "source": {"component": event.source_component, "host": event.source_host},
               "action": event.action, "reportingComponent": event.reporting_controller,
               "reportingInstance": event.reporting_instance}
    events_v1 = "involvedObject" not in raw and ("regarding" in raw or "note" in raw)
    get = raw.get
    series = get("series")
    source = get("deprecatedSource" if events_v1 else "source")
    source = source if isinstance(source, dict) else {}
    related = get("related")
    return GoStruct({
        "TypeMeta": GoStruct({"Kind": "", "APIVersion": ""}),
        "ObjectMeta": _meta(get("metadata")),
        "InvolvedObject": _ref(get("regarding" if events_v1 else "involvedObject")),
        "Reason": event.reason,
        "Message": event.message,
        "Source": GoStruct({"Component": _s(source.get("component")), "Host": _s(source.get("host"))}),
        "FirstTimestamp": _time(get("deprecatedFirstTimestamp" if events_v1 else "firstTimestamp")),
        "LastTimestamp": GoTime(event.last_timestamp),
        "Count": _i(get("deprecatedCount" if events_v1 else "count")),
        "Type": event.type,
        "EventTime": _time(get("eventTime")),
        "Series": GoStruct({"Count": _i(series.get("count")), "LastObservedTime": _time(series.get("lastObservedTime")),
                            "State": _s(series.get("state"))}) if isinstance(series, dict) else NIL,
        "Action": _s(get("action")),
        "Related": _ref(related) if isinstance(related, dict) else NIL,
        "ReportingController": _s(get("reportingController" if events_v1 else "reportingComponent")),
        "ReportingInstance": _s(get("reportingInstance")),
    })


def lookup(view: GoStruct, path: tuple[str, ...]) -> Any:
    """The value at ``path`` (already checked by :func:`check_path`); NO_VALUE for a missing map key."""
    value: Any = view
    kind: Any = EVENT
    for step in path:
        if isinstance(kind, Ptr):
            kind = kind.to
        if value is NIL:
            return ""  # kube-eventer: "nil pointer evaluating ..." failed the event; here the field is empty
        if kind == MAP:
            return value.get(step, NO_VALUE)
        if step not in value:  # promoted from an embedded struct (.Name is .ObjectMeta.Name)
            embedded = next(e for e in kind.promoted if kind.field(e).field(step) is not None)
            value, kind = value[embedded], kind.field(embedded)
        value, kind = value[step], kind.field(step)
    return value


def go_print(value: Any, tz: tzinfo = UTC) -> str:
    """``value`` as text/template prints it (fmt's ``%v``; times through their String())."""
    if value is NIL:
        return "<nil>"
    if isinstance(value, GoTime):
        return go_time(value.value, tz)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, GoStruct):
        return "{" + " ".join(go_print(v, tz) for v in value.values()) + "}"
    if isinstance(value, dict):  # fmt prints maps with sorted keys
        return "map[" + " ".join(f"{k}:{v}" for k, v in sorted(value.items())) + "]"
    if isinstance(value, list):
        return "[" + " ".join(go_print(v, tz) for v in value) + "]"
    return str(value)


# ---- the references in a template -----------------------------------------------------------------
# {{ .A.B }}, {{- .A -}}, and {{ index .Labels "key" }}
GO_REFERENCE = re.compile(
    r"\{\{(-?)\s*(?:index\s+\.([A-Za-z][A-Za-z0-9_.]*)\s+\"((?:[^\"\\]|\\.)*)\"|\.([A-Za-z][A-Za-z0-9_.]*))\s*(-?)\}\}")


@dataclass(frozen=True)
class Reference:
    text: str  # as written in the template
    path: tuple[str, ...]
    index: bool  # {{ index .Labels "key" }}: the last step is a map key
    trim_left: bool
    trim_right: bool


def references(source: str) -> list[Reference]:
    """Each Go field reference in ``source``, in order."""
    found = []
    for match in GO_REFERENCE.finditer(source):
        if match.group(2) is not None:
            key = re.sub(r"\\(.)", r"\1", match.group(3))
            path, index = (*match.group(2).split("."), key), True
        else:
            path, index = tuple(match.group(4).split(".")), False
        found.append(Reference(match.group(0), path, index, match.group(1) == "-", match.group(5) == "-"))
    return found
