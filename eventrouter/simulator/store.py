"""The simulated cluster's state: Events with a watch history, plus Lease and ConfigMap objects.

resourceVersions are one monotonic integer counter shared by every object (as etcd's revision);
they leave the simulator as strings. The watch history keeps every change after the compaction
floor; a watch or continue token from below the floor gets 410 Expired, as on a real API server.

As on a real kube-apiserver (v1.36, measured): etcd is compacted every ``compaction_interval``
(5 minutes) to the revision seen at the previous compaction, so between 5 and 10 minutes of history
stay watchable; an Event lives ``event_ttl`` (1 hour) after its last write, then it is deleted
(a DELETED). Time is the store's clock: real time plus ``offset``, which :meth:`Store.advance_clock`
moves forward so a test can run "an hour of events" in seconds (see ``Simulator.advance``).
"""

from __future__ import annotations

import bisect
import itertools
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

_TIME_FIELDS = ("firstTimestamp", "lastTimestamp", "eventTime")


def _clone(obj: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of a JSON object (an orjson round trip: twice as fast as copy.deepcopy)."""
    copy: dict[str, Any] = orjson.loads(orjson.dumps(obj))
    return copy


def now_text(micro: bool = False, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if micro else now.strftime("%Y-%m-%dT%H:%M:%SZ")


def list_key(obj: dict[str, Any]) -> str:
    """Where etcd keeps an Event (``/registry/events/NAMESPACE/NAME`` without the prefix): lists come in
    this order, and a continue token says where in it the next page starts."""
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace') or ''}/{meta.get('name') or ''}"


def to_events_v1(obj: dict[str, Any]) -> dict[str, Any]:
    """A core/v1 Event in the events.k8s.io/v1 shape (kubernetes pkg/apis/events/v1/conversion.go)."""
    out: dict[str, Any] = {"kind": "Event", "apiVersion": "events.k8s.io/v1", "metadata": obj.get("metadata", {})}
    mapping = (
        ("eventTime", "eventTime"), ("series", "series"), ("reportingComponent", "reportingController"),
        ("reportingInstance", "reportingInstance"), ("action", "action"), ("reason", "reason"),
        ("involvedObject", "regarding"), ("related", "related"), ("message", "note"), ("type", "type"),
        ("source", "deprecatedSource"), ("firstTimestamp", "deprecatedFirstTimestamp"),
        ("lastTimestamp", "deprecatedLastTimestamp"), ("count", "deprecatedCount"),
    )
    for core, v1 in mapping:
        if obj.get(core) is not None:
            out[v1] = obj[core]
    return out


@dataclass(slots=True)
class Change:
    """One entry of the watch history (a pre-encoded watch line per API shape, built lazily)."""

    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    namespace: str
    obj: dict[str, Any]
    core_line: bytes = b""
    v1_line: bytes = b""

    def line(self, api: str) -> bytes:
        if api == "v1":
            if not self.core_line:
                self.core_line = orjson.dumps({"type": self.type, "object": self.obj}) + b"\n"
            return self.core_line
        if not self.v1_line:
            self.v1_line = orjson.dumps({"type": self.type, "object": to_events_v1(self.obj)}) + b"\n"
        return self.v1_line


class Conflict(Exception):
    """resourceVersion mismatch or the object already exists (HTTP 409)."""


class NotFound(Exception):
    """HTTP 404."""


class Expired(Exception):
    """The resourceVersion is older than the compaction floor (HTTP 410)."""


@dataclass
class Store:
    rv: int = 1000
    floor: int = 0  # history at or below this RV is compacted
    events: dict[str, dict[str, Any]] = field(default_factory=dict)  # uid -> object
    names: dict[str, str] = field(default_factory=dict)  # list_key (namespace/name) -> uid of the live Event
    history_rvs: list[int] = field(default_factory=list)
    history: list[Change] = field(default_factory=list)
    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)  # (kind, ns, name)
    cond: threading.Condition = field(default_factory=threading.Condition)
    history_limit: int = 1_000_000  # a memory bound only: compaction (below) is what forgets history
    opaque: bool = False  # resourceVersions as 'rv-<hex>': a client comparing them as numbers breaks
    compaction_interval: float = 300.0  # seconds (kube-apiserver --etcd-compaction-interval); 0: never
    event_ttl: float = 3600.0  # seconds an Event lives after its last write (kube-apiserver --event-ttl); 0: forever
    offset: float = 0.0  # the store's clock runs this many seconds ahead of real time
    written: dict[str, float] = field(default_factory=dict)  # uid -> clock time of its last write, oldest first
    compactions: int = 0
    _next_compaction: float = 0.0
    _compaction_mark: int = 0  # the revision seen at the previous compaction tick: the next floor

    def __post_init__(self) -> None:
        self._next_compaction = self.now() + self.compaction_interval
        self._compaction_mark = self.rv

    # ---- the clock, TTL expiry and periodic compaction ---------------------------------------
    def now(self) -> float:
        return time.time() + self.offset

    def now_dt(self) -> datetime:
        return datetime.fromtimestamp(self.now(), UTC)

    def maintain(self) -> None:
        """Expire Events past their TTL and run the compaction ticks that are due (caller may hold ``cond``)."""
        with self.cond:
            now = self.now()
            if self.event_ttl:
                written = self.written
                cutoff = now - self.event_ttl
                while written:
                    uid, at = next(iter(written.items()))
                    if at > cutoff:
                        break
                    self.expire(uid)
            if self.compaction_interval:
                while now >= self._next_compaction:
                    # as kube-apiserver's compactor: compact to the revision seen at the previous tick
                    self.compact(self._compaction_mark)
                    self.compactions += 1
                    self._compaction_mark = self.rv
                    self._next_compaction += self.compaction_interval

    def advance_clock(self, seconds: float) -> None:
        """Move the clock forward (virtual time), expiring and compacting what falls due on the way."""
        with self.cond:
            self.offset += seconds
            self.maintain()

    def rv_text(self, rv: int) -> str:
        return f"rv-{rv:x}" if self.opaque else str(rv)

    def rv_int(self, text: str) -> int:
        """The counter behind a resourceVersion a client sent back; ValueError if it is not ours."""
        if self.opaque:
            if not text.startswith("rv-"):
                raise ValueError(text)
            return int(text[3:], 16)
        return int(text)

    # ---- events -----------------------------------------------------------------------------
    def _record(self, kind: str, obj: dict[str, Any]) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = self.rv_text(self.rv)
        namespace = obj["metadata"].get("namespace") or ""
        self.history_rvs.append(self.rv)
        self.history.append(Change(self.rv, kind, namespace, obj))
        uid = obj["metadata"].get("uid")
        if kind == "DELETED":
            self.written.pop(uid, None)
        elif uid:
            self.written.pop(uid, None)  # re-insert: the dict stays ordered by last write (the TTL restarts)
            self.written[uid] = self.now()
        if len(self.history) > self.history_limit:
            drop = len(self.history) // 10
            self.floor = max(self.floor, self.history_rvs[drop - 1])
            del self.history_rvs[:drop]
            del self.history[:drop]
        self.cond.notify_all()

    def add_event(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store an Event (a copy); an existing uid is updated (MODIFIED). Returns the stored object."""
        obj = _clone(obj)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("namespace", "default")
        meta.setdefault("name", f"event.{uuid.uuid4().hex[:16]}")
        with self.cond:
            meta.setdefault("creationTimestamp", now_text(now=self.now_dt()))
            self._put_event(obj)
        return obj

    def add_events(self, objs: Iterable[dict[str, Any]]) -> None:
        with self.cond:
            for obj in objs:
                self._put_event(obj)

    def _put_event(self, obj: dict[str, Any]) -> None:
        """Store one Event (caller holds ``cond``). A namespace/name that a live Event with another uid has is
        refused, as kube-apiserver answers such a create with 409 AlreadyExists: two live objects under one
        etcd key cannot exist, and a list (paged by that key) would skip one of them."""
        meta = obj["metadata"]
        uid, key = meta["uid"], list_key(obj)
        holder = self.names.get(key)
        if holder is not None and holder != uid:
            raise Conflict(f'events "{meta.get("name")}" already exists in namespace "{meta.get("namespace") or ""}" '
                           f"(uid {holder}; this one is uid {uid}): a live Event's namespace/name is unique")
        kind = "MODIFIED" if uid in self.events else "ADDED"
        self.events[uid] = obj
        self.names[key] = uid
        self._record(kind, obj)

    def repeat(self, uid: str, message: str | None = None) -> dict[str, Any]:
        """The Event happened again: count+1 and a new lastTimestamp (a MODIFIED)."""
        with self.cond:
            if uid not in self.events:
                raise NotFound(uid)
            obj = _clone(self.events[uid])
            obj["count"] = int(obj.get("count") or 1) + 1
            now = self.now_dt()
            if obj.get("series"):
                obj["series"]["count"] = int(obj["series"].get("count") or 1) + 1
                obj["series"]["lastObservedTime"] = now_text(micro=True, now=now)
            obj["lastTimestamp"] = now_text(now=now)
            if message is not None:
                obj["message"] = message
            self.events[uid] = obj
            self._record("MODIFIED", obj)
            return obj

    def touch(self, uid: str) -> dict[str, Any]:
        """A MODIFIED that changes nothing a user sees (only metadata), as a managedFields update."""
        with self.cond:
            obj = _clone(self.events[uid])
            obj["metadata"].setdefault("annotations", {})["simulator/touched"] = str(self.rv + 1)
            self.events[uid] = obj
            self._record("MODIFIED", obj)
            return obj

    def expire(self, uid: str) -> None:
        """TTL expiry: the Event is deleted (a DELETED)."""
        with self.cond:
            obj = self.events.pop(uid, None)
            if obj is None:
                raise NotFound(uid)
            self.names.pop(list_key(obj), None)
            obj = _clone(obj)
            self._record("DELETED", obj)

    def compact(self, rv: int | None = None) -> None:
        """Forget history at or below ``rv`` (default: everything so far)."""
        with self.cond:
            self.floor = max(self.floor, self.rv if rv is None else rv)
            cut = bisect.bisect_right(self.history_rvs, self.floor)
            del self.history_rvs[:cut]
            del self.history[:cut]

    def snapshot(self, namespace: str | None) -> tuple[int, list[dict[str, Any]]]:
        """The current Events (of one namespace) in etcd's key order, and the revision they are at."""
        with self.cond:
            items = [o for o in self.events.values() if namespace is None or o["metadata"]["namespace"] == namespace]
            rv = self.rv
        items.sort(key=list_key)
        return rv, items

    def changes_after(self, rv: int, namespace: str | None, limit: int = 5000) -> list[Change]:
        """History entries newer than ``rv`` (caller holds ``cond``). Raises Expired below the floor."""
        if rv < self.floor:
            raise Expired(rv)
        start = bisect.bisect_right(self.history_rvs, rv)
        changes = self.history[start:start + limit]
        if namespace is None:
            return changes
        return [c for c in changes if c.namespace == namespace]

    # ---- Lease and ConfigMap ------------------------------------------------------------------
    def get_object(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        with self.cond:
            obj = self.objects.get((kind, namespace, name))
            if obj is None:
                raise NotFound(name)
            return _clone(obj)

    def create_object(self, kind: str, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
        name = (obj.get("metadata") or {}).get("name")
        if not name:
            raise ValueError("metadata.name is required")
        with self.cond:
            if (kind, namespace, name) in self.objects:
                raise Conflict(f'{kind.lower()}s "{name}" already exists')
            return self._put(kind, namespace, name, obj)

    def update_object(self, kind: str, namespace: str, name: str, obj: dict[str, Any]) -> dict[str, Any]:
        with self.cond:
            current = self.objects.get((kind, namespace, name))
            if current is None:
                raise NotFound(name)
            sent = str((obj.get("metadata") or {}).get("resourceVersion") or "")
            if sent and sent != current["metadata"]["resourceVersion"]:
                raise Conflict(
                    f'Operation cannot be fulfilled on {kind.lower()}s "{name}": the object has been modified; '
                    "please apply your changes to the latest version and try again"
                )
            return self._put(kind, namespace, name, obj)

    def _put(self, kind: str, namespace: str, name: str, obj: dict[str, Any]) -> dict[str, Any]:
        obj = _clone(obj)
        self.rv += 1
        meta = obj.setdefault("metadata", {})
        meta.update(name=name, namespace=namespace, resourceVersion=self.rv_text(self.rv))
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", now_text())
        self.objects[(kind, namespace, name)] = obj
        return _clone(obj)


_copy_numbers = itertools.count(1)  # restamp's copies in this process: names never repeat


def restamp(objs: Iterable[dict[str, Any]], copies: int, fresh_times: bool) -> list[dict[str, Any]]:
    """``copies`` copies of each object; copies after the first (or all, with fresh_times) get new
    uids and names, and every present timestamp is set to now. The first copy keeps its uid."""
    stamp = now_text()
    micro = now_text(micro=True)
    out = []
    for n in range(copies):
        for obj in objs:
            new = _clone(obj)
            meta = new.setdefault("metadata", {})
            meta.pop("managedFields", None)
            if n > 0:
                meta["uid"] = str(uuid.uuid4())
                # unique across calls too, as a live Event's namespace/name is (see Store._put_event)
                meta["name"] = f"{meta.get('name', 'event')}-{next(_copy_numbers)}"
            if n > 0 or fresh_times:
                meta["creationTimestamp"] = stamp
                for key in _TIME_FIELDS:
                    if new.get(key):
                        new[key] = micro if key == "eventTime" else stamp
                if (new.get("series") or {}).get("lastObservedTime"):
                    new["series"]["lastObservedTime"] = micro
            out.append(new)
    return out
