"""The normalized Event, built once per Kubernetes object and shared read-only by every sink.

Both Kubernetes Event APIs map onto it (kubernetes pkg/apis/events/v1/conversion.go):

============================  ==========================================
Event field                   core/v1 (events.k8s.io/v1)
============================  ==========================================
involved_object               involvedObject (regarding)
message                       message (note)
count                         count, series.count (deprecatedCount), else 1
first_timestamp               firstTimestamp (deprecatedFirstTimestamp), else eventTime, else creation
last_timestamp                lastTimestamp (deprecatedLastTimestamp), series.lastObservedTime,
                              eventTime, metadata.creationTimestamp
source_component              source.component (deprecatedSource), else reportingController
============================  ==========================================

Times are timezone-aware UTC datetimes; :meth:`Event.to_dict` writes them as ISO 8601 with ``Z``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EMPTY: dict[str, Any] = {}


class FrozenDict(dict[str, str]):
    """A read-only dict (labels, annotations): shared by many events, so no sink may change it. A dict
    subclass rather than a mapping proxy, so orjson, Jinja2 and pickle take it as they take a dict."""

    __slots__ = ()

    def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("event labels and annotations are read-only")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _read_only
    __ior__ = _read_only

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (dict(self),))


# the labels/annotations of an event that was not enriched (read-only, shared)
NO_LABELS: Mapping[str, str] = FrozenDict()


class _Fields(NamedTuple):
    """Where one API keeps the fields that differ between core/v1 and events.k8s.io/v1."""

    last: str
    first: str
    times: str  # the count field ("count" would shadow tuple.count)
    message: str
    involved: str
    source: str
    controller: str


_CORE_V1 = _Fields("lastTimestamp", "firstTimestamp", "count", "message", "involvedObject", "source",
                   "reportingComponent")
_EVENTS_V1 = _Fields("deprecatedLastTimestamp", "deprecatedFirstTimestamp", "deprecatedCount", "note", "regarding",
                     "deprecatedSource", "reportingController")


class MalformedEvent(ValueError):
    """The object is not a Kubernetes Event this router can read."""


@dataclass(frozen=True, slots=True)
class InvolvedObject:
    kind: str = ""
    namespace: str = ""
    name: str = ""
    uid: str = ""
    api_version: str = ""
    field_path: str = ""

    def to_dict(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
            "uid": self.uid,
            "api_version": self.api_version,
            "field_path": self.field_path,
        }


@dataclass(frozen=True, slots=True)
class Owner:
    """The top workload that owns the involved object (Pod -> ReplicaSet -> Deployment, ...)."""

    kind: str
    namespace: str
    name: str
    api_version: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "namespace": self.namespace, "name": self.name, "api_version": self.api_version}

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"


@dataclass(frozen=True, slots=True)
class Event:
    uid: str
    resource_version: str
    namespace: str
    name: str
    type: str
    reason: str
    message: str
    count: int
    first_timestamp: datetime
    last_timestamp: datetime
    involved_object: InvolvedObject
    source_component: str = ""
    source_host: str = ""
    reporting_controller: str = ""
    reporting_instance: str = ""
    action: str = ""
    cluster: str = ""
    raw: Any = None
    # enrichment (--enrich): the involved object's labels, selected annotations and top owner; empty
    # unless enabled. Set once by the source before dispatch (see eventrouter/enrich.py).
    # (read-only mappings, left out of == and hash: they describe the object, not the occurrence)
    labels: Mapping[str, str] = field(default_factory=lambda: NO_LABELS, compare=False)
    annotations: Mapping[str, str] = field(default_factory=lambda: NO_LABELS, compare=False)
    owner: Owner | None = None

    @classmethod
    def from_object(cls, obj: Any, cluster: str = "") -> Event:
        """Normalize a core/v1 or events.k8s.io/v1 Event object (a decoded JSON dict)."""
        if not isinstance(obj, dict):
            raise MalformedEvent(f"expected a JSON object, got {type(obj).__name__}")
        meta = obj.get("metadata")
        if not isinstance(meta, dict):
            raise MalformedEvent("the object has no metadata")
        kind = obj.get("kind")
        if kind is not None and kind != "Event":
            raise MalformedEvent(f"kind is {kind!r}, not 'Event'")
        try:
            api = _CORE_V1
            if "involvedObject" not in obj and (
                "regarding" in obj or "note" in obj or str(obj.get("apiVersion", "")).startswith("events.k8s.io")
            ):
                api = _EVENTS_V1
            return cls._build(obj, meta, cluster, api)
        except MalformedEvent:
            raise
        except (TypeError, ValueError, AttributeError) as exc:
            raise MalformedEvent(f"event {meta.get('namespace', '')}/{meta.get('name', '')}: {exc}") from None

    @classmethod
    def _build(cls, obj: dict[str, Any], meta: dict[str, Any], cluster: str, api: _Fields) -> Event:
        get = obj.get
        series = get("series")
        source = get(api.source) or _EMPTY
        # pick the raw strings first and parse each once (parse_time is cached, but not free)
        last = parse_time(
            get(api.last)
            or (series and series.get("lastObservedTime"))
            or get("eventTime")
            or meta.get("creationTimestamp")
        ) or EPOCH
        first = parse_time(get(api.first) or get("eventTime") or meta.get("creationTimestamp")) or last
        controller = get(api.controller) or ""
        event = _new_event()
        event.uid = meta.get("uid") or ""
        event.resource_version = str(meta.get("resourceVersion") or "")
        event.namespace = meta.get("namespace") or ""
        event.name = meta.get("name") or ""
        event.type = _text(get("type"))
        event.reason = _text(get("reason"))
        event.message = _text(get(api.message))
        event.count = _count(get(api.times), series and series.get("count"))
        event.first_timestamp = first
        event.last_timestamp = last
        event.involved_object = _involved(get(api.involved))
        event.source_component = source.get("component") or controller
        event.source_host = source.get("host") or ""
        event.reporting_controller = controller
        event.reporting_instance = get("reportingInstance") or ""
        event.action = get("action") or ""
        event.cluster = cluster
        event.raw = obj
        event.labels = event.annotations = NO_LABELS
        event.owner = None
        return _freeze(event, cls)

    @property
    def key(self) -> tuple[str, str]:
        """Identity of this occurrence: the same uid at another resourceVersion is a new occurrence."""
        return (self.uid, self.resource_version)

    @property
    def is_cluster_scoped(self) -> bool:
        return not self.involved_object.namespace

    def to_dict(self, *, raw: bool = False) -> dict[str, Any]:
        """The normalized fields in a stable order, times as UTC ISO 8601 ``...Z`` strings."""
        data: dict[str, Any] = {
            "uid": self.uid,
            "resource_version": self.resource_version,
            "cluster": self.cluster,
            "namespace": self.namespace,
            "name": self.name,
            "type": self.type,
            "reason": self.reason,
            "message": self.message,
            "count": self.count,
            "first_timestamp": format_time(self.first_timestamp),
            "last_timestamp": format_time(self.last_timestamp),
            "involved_object": self.involved_object.to_dict(),
            "source_component": self.source_component,
            "source_host": self.source_host,
            "reporting_controller": self.reporting_controller,
            "reporting_instance": self.reporting_instance,
            "action": self.action,
        }
        if self.labels:
            data["labels"] = dict(self.labels)
        if self.annotations:
            data["annotations"] = dict(self.annotations)
        if self.owner is not None:
            data["owner"] = self.owner.to_dict()
        if raw:
            data["raw"] = self.raw
        return data


def _text(value: Any) -> str:
    """A text field as a string: a hand-written or foreign object may hold a number there."""
    if value.__class__ is str:
        return value  # type: ignore[no-any-return,unused-ignore]
    return str(value) if value else ""


def _count(count: Any, series_count: Any) -> int:
    value = count or series_count
    return int(value) if value else 1


_INVOLVED_CACHE: dict[tuple[str, ...], InvolvedObject] = {}
_INVOLVED_CACHE_SIZE = 4096


def _involved(ref: Any) -> InvolvedObject:
    """The InvolvedObject of a reference; identical ones are shared (bounded cache).

    Many Events name the same object (a Pod's Scheduled, Pulled, Created, Started; a Node's repeats),
    and a queued Event then costs one object less to keep and for the garbage collector to scan.
    """
    if not ref:
        return _NO_OBJECT
    get = ref.get
    key = (get("uid") or "", get("fieldPath") or "", get("kind") or "", get("name") or "",
           get("namespace") or "", get("apiVersion") or "")
    cached = _INVOLVED_CACHE.get(key)
    if cached is not None:
        return cached
    obj = _new_involved()
    obj.uid, obj.field_path, obj.kind, obj.name, obj.namespace, obj.api_version = key
    involved = _freeze(obj, InvolvedObject)
    if len(_INVOLVED_CACHE) >= _INVOLVED_CACHE_SIZE:
        _INVOLVED_CACHE.clear()
    _INVOLVED_CACHE[key] = involved
    return involved


# Fast construction. The dataclass __init__ of a frozen class stores each field through
# object.__setattr__ (a call per field; ~3x slower than a plain store), and from_object runs once per
# event. So the mapping fills a private twin with exactly the same slots and no frozen __setattr__, then
# turns it into the frozen class: CPython allows the __class__ assignment because both types have the
# same layout. The result is an ordinary frozen Event (equality, hash, replace(), pickling all as usual).
class _EventBuilder:
    __slots__ = Event.__slots__


class _InvolvedObjectBuilder:
    __slots__ = InvolvedObject.__slots__


_NO_OBJECT = InvolvedObject()
_new_event: Callable[[], Any] = _EventBuilder
_new_involved: Callable[[], Any] = _InvolvedObjectBuilder
_T = TypeVar("_T")


def _freeze(obj: Any, cls: type[_T]) -> _T:
    try:
        object.__setattr__(obj, "__class__", cls)
    except TypeError:  # a subclass that adds fields: the ordinary constructor
        return cls(**{name: getattr(obj, name) for name in obj.__slots__})
    frozen: _T = obj
    return frozen


_TIME_CACHE: dict[str, datetime] = {}
_TIME_CACHE_SIZE = 8192


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 time from the API (``2023-07-10T05:31:39Z``, with or without micro/nanoseconds).

    Events of one burst share their timestamps, so parsed values are cached (bounded): this runs
    several times per event on the hot path.
    """
    if not value:
        return None
    cached = _TIME_CACHE.get(value)
    if cached is not None:
        return cached
    if not isinstance(value, str):
        raise MalformedEvent(f"time {value!r} is not a string")
    text = value
    if "." in text:
        # Go may write nanoseconds; Python takes at most microseconds.
        head, _, frac = text.partition(".")
        digits = len(frac) - len(frac.lstrip("0123456789"))
        zone = frac[digits:]
        text = f"{head}.{frac[:min(digits, 6)].ljust(6, '0')}{zone}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise MalformedEvent(f"time {value!r} is not RFC 3339") from None
    if parsed.tzinfo is not UTC:
        parsed = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    if len(_TIME_CACHE) >= _TIME_CACHE_SIZE:
        _TIME_CACHE.clear()
    _TIME_CACHE[value] = parsed
    return parsed


def format_time(value: datetime) -> str:
    """UTC ISO 8601 with ``Z``: whole seconds when there is no fraction, else microseconds."""
    value = value.astimezone(UTC) if value.utcoffset() else value
    if value.microsecond:
        return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def sample_event() -> Event:
    """A realistic Warning event, for `eventrouter check --send-test` and template validation."""
    import uuid

    now = datetime.now(UTC)
    return Event(
        uid=str(uuid.uuid4()),
        resource_version="1",
        namespace="default",
        name="eventrouter-check.test",
        type="Warning",
        reason="EventrouterTest",
        message="Test event sent by 'eventrouter check --send-test': if you read this, the sink works.",
        count=1,
        first_timestamp=now,
        last_timestamp=now,
        involved_object=InvolvedObject(kind="Pod", namespace="default", name="eventrouter-check", api_version="v1"),
        source_component="eventrouter",
        source_host="eventrouter-check",
    )
