"""What one sink has settled, kept small enough for a ConfigMap checkpoint.

A position is a *floor* on the events' own times (``Event.last_timestamp``: lastTimestamp,
series.lastObservedTime, eventTime or creationTimestamp) plus the exact keys of the settled events
at or above it::

    {"floor": 1767000000.0, "max": 1767000120.5, "keys": "<base64 of 8-byte digests>"}

An event is *held* by the sink when its time is below the floor, or when its key (uid and
resourceVersion, as an 8-byte BLAKE2b digest) is among the keys. The floor is the lowest of

- the time of the oldest event the sink still has to deliver (so nothing undelivered is claimed),
- the time of the oldest event the overflow policy dropped (so a dropped event is not claimed), and
- the newest settled time minus :data:`GRACE` (events whose time is older than what was already
  delivered, arriving late through clock skew or a slow controller, are still recognized exactly).

A repeat of an Event that happened while the router was down has a new resourceVersion and a newer
time: it is not held, so it is forwarded once. The keys are capped (:data:`KEYS_TOTAL` over all sinks,
8-byte digests): past the cap the floor rises to the oldest key kept, so during a burst the grace
shrinks (a late event older than the burst may then be taken as settled); only when an undelivered or
dropped event keeps the floor down are keys forgotten, which can make a re-list send those events again
but never skips one. A second whose keys the cap dropped builds no keys for its later events until the
floor passes it (a burst stamps thousands of events with one second; outside a list).

While a list is under way (:meth:`SinkPosition.pin`) the floor does not rise: a list comes in key order,
not time order, so a fast sink settles events newer than ones the list has still to reach, and a floor
taken from its newest settled time would claim those.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from itertools import groupby
from operator import attrgetter
from typing import Any

from eventrouter.event import Event

log = logging.getLogger("eventrouter.router")

GRACE = 120.0  # seconds below the newest settled time still recorded exactly (less during a burst: see _trim)
KEYS_CAP = 4096  # keys per sink in the document: 4096 * 8 bytes = 44 KB of base64
KEYS_TOTAL = 16384  # keys of all sinks together: 175 KB of base64, well inside a ConfigMap
DIGEST_SIZE = 8


def event_key(event: Event) -> bytes:
    """The identity of one occurrence (uid + resourceVersion), 8 bytes: stable across processes."""
    return _digest(event.uid, event.resource_version)


def event_time(event: Event) -> float:
    return event.last_timestamp.timestamp()


class SinkPosition:
    """One sink's settled position. The worker calls :meth:`settle`; the source's thread calls
    :meth:`holds`; the checkpoint's thread calls :meth:`document`.

    Settled keys are kept per event time (one set per distinct ``last_timestamp``; the events of a burst
    share a few), so settling costs no hashing and no time conversion per event, and the cap drops whole
    seconds from the oldest. Digests are made only for the keys a document carries."""

    def __init__(self, *, grace: float = GRACE, cap: int = KEYS_CAP) -> None:
        self.grace = grace
        self.cap = cap
        self.floor: float | None = None  # every event with an earlier time is settled; None: nothing known
        self.hole: float | None = None  # the oldest time of an event dropped by the overflow policy
        self.changes = 0  # bumped whenever the document would differ
        self.forgotten = 0  # keys dropped past the cap below an undelivered event (a re-list may repeat those)
        # settled (uid, resourceVersion) at or above the floor, by event time
        self._buckets: dict[datetime, set[tuple[str, str]]] = {}
        self._size = 0  # keys in the buckets (an upper bound: a key settled twice counts twice)
        # digests made for documents, per event time as the keys: a second dropped from the keys drops its
        # digests at once (no per-key work when a burst's keys are trimmed)
        self._digests: dict[datetime, dict[tuple[str, str], bytes]] = {}
        self._restored: set[bytes] = set()  # digests from the checkpoint
        self._restored_max: float | None = None
        self._newest: float | None = None  # the newest settled event time of this process
        self._lock = threading.Lock()
        self._pins = 0  # lists under way (pin/unpin); while any is, the floor may fall but not rise
        self._pinned: float | None = None  # the floor when the first of them began
        # keys the cap dropped while pinned (the floor could not rise over them): hash((uid, rv)), kept until
        # the floor passes the newest of them (_overflow_max), so a list does not send them again
        self._overflow: set[int] = set()
        self._overflow_max: float | None = None
        self._warned_at = -math.inf
        # seconds whose keys the cap dropped (outside a list), until the floor passes them: a burst's second
        # keeps delivering after its first keys filled the cap, and building keys only to drop them cost fan-out
        # benchmarks 15-20 % of their CPU
        self._dropped_seconds: set[datetime] = set()
        # the time of the oldest event the sink has not settled yet (set by its runner)
        self.oldest_unsettled: Callable[[], float | None] = lambda: None

    @property
    def max_time(self) -> float | None:
        """The newest settled time known (kept apart from the keys: the cap may drop the newest of those
        while a list is under way)."""
        times = [t for t in (self._newest, self._restored_max) if t is not None]
        return max(times) if times else None

    def settle(self, events: Sequence[Event]) -> None:
        buckets = self._buckets
        get = buckets.get
        newest: datetime | None = None
        with self._lock:
            # runs of one time (a batch comes mostly in time order, and bursts share a time): one set update per
            # run, in C; the newest time is found among the runs, not the events
            dropped = self._dropped_seconds if not self._pins else ()
            for when, run in groupby(events, _TIME):
                if newest is None or when > newest:
                    newest = when
                if when in dropped:
                    continue  # the cap dropped this second's keys: its late events' would be dropped as well
                bucket = get(when)
                if bucket is None:
                    buckets[when] = bucket = set()
                bucket.update(map(_KEY, run))
            if newest is not None and (self._newest is None or newest.timestamp() > self._newest):
                self._newest = newest.timestamp()
            self._size += len(events)
            self.changes += 1
            if self._size > 2 * self.cap:  # a long burst between two checkpoints: bound the memory
                self.floor = self._next_floor(self.oldest_unsettled())

    def dropped(self, events: Iterable[Event]) -> None:
        """Events the overflow policy dropped: the floor stays below them."""
        for event in events:
            self.dropped_time(event.last_timestamp.timestamp())

    def dropped_time(self, earliest: float) -> None:
        """Events dropped by the overflow policy, the earliest of them at ``earliest``."""
        with self._lock:
            if self.hole is None or earliest < self.hole:
                self.hole = earliest
            self.changes += 1

    def holds(self, event: Event) -> bool:
        floor = self.floor
        when = event.last_timestamp
        if floor is not None and when.timestamp() < floor:
            return True
        key = (event.uid, event.resource_version)
        bucket = self._buckets.get(when)
        if bucket is not None and key in bucket:
            return True
        if self._overflow and hash(key) in self._overflow:
            return True
        return bool(self._restored) and event_key(event) in self._restored

    def document(self, oldest_unsettled: float | None) -> dict[str, Any]:
        """The JSON-safe position; ``oldest_unsettled`` is the time of the oldest event not yet delivered."""
        with self._lock:
            self.floor = floor = self._next_floor(oldest_unsettled)
            out = set(self._restored)
            for when, bucket in self._buckets.items():
                made = self._digests.get(when)
                if made is None:
                    self._digests[when] = made = {}
                if len(made) != len(bucket):
                    for key in bucket:
                        if key not in made:
                            made[key] = _digest(*key)
                out.update(made.values())
            return {"floor": floor, "max": self.max_time,
                    "keys": base64.b64encode(b"".join(sorted(out))).decode("ascii")}

    def restore(self, doc: dict[str, Any]) -> None:
        """Take a position from a checkpoint (before any event is dispatched)."""
        floor, newest, blob = doc.get("floor"), doc.get("max"), doc.get("keys") or ""
        with self._lock:
            self.floor = float(floor) if isinstance(floor, (int, float)) else None
            self._restored_max = float(newest) if isinstance(newest, (int, float)) else self.floor
            raw = base64.b64decode(blob) if isinstance(blob, str) else b""
            self._restored = {raw[i:i + DIGEST_SIZE] for i in range(0, len(raw) - DIGEST_SIZE + 1, DIGEST_SIZE)}

    def pin(self) -> None:
        """A list begins: until :meth:`unpin`, the floor stays at most where it is now."""
        with self._lock:
            self._pins += 1
            if self._pins == 1:
                self._pinned = self.floor

    def unpin(self) -> None:
        """A list ended (completed or not); the floor follows the settled events again."""
        with self._lock:
            self._pins = max(0, self._pins - 1)

    def _next_floor(self, oldest_unsettled: float | None) -> float | None:
        """Trim the keys below the new floor and return it (kept at or below the pinned one during a list,
        before anything is trimmed: the keys and restored digests above the pinned floor must stay)."""
        floor = self._trim(self._pinned_at_most(self._floor(oldest_unsettled)), oldest_unsettled)
        return self._pinned_at_most(floor)

    def _pinned_at_most(self, floor: float | None) -> float | None:
        if not self._pins:
            return floor
        pinned = self._pinned
        return pinned if floor is None or pinned is None else min(floor, pinned)

    def _floor(self, oldest_unsettled: float | None) -> float | None:
        candidates = [t for t in (oldest_unsettled, self.hole) if t is not None]
        newest = self.max_time
        if newest is not None:
            candidates.append(newest - self.grace)
        if not candidates:
            return self.floor
        floor = min(candidates)
        if oldest_unsettled is None and self.hole is None and self.floor is not None and floor < self.floor:
            # nothing older is waiting: a floor once reached stays (a restored position keeps its claim)
            floor = self.floor
        return floor

    def _trim(self, floor: float | None, oldest_unsettled: float | None) -> float | None:
        """Drop the keys below ``floor``; past the cap, raise the floor instead (the grace shrinks during a
        burst). Returns the floor."""
        buckets, digests = self._buckets, self._digests
        if floor is not None:
            if self._restored and self._restored_max is not None and self._restored_max < floor:
                self._restored = set()
            if self._overflow_max is not None and self._overflow_max < floor:
                self._overflow, self._overflow_max = set(), None
            for when in [w for w in buckets if w.timestamp() < floor]:
                del buckets[when]
                digests.pop(when, None)
            if self._dropped_seconds:
                self._dropped_seconds = {w for w in self._dropped_seconds if w.timestamp() >= floor}
        size = sum(len(b) for b in buckets.values()) + len(self._restored)
        self._size = size
        if size <= self.cap:
            return floor
        # drop whole seconds (times), oldest first, until the keys fit
        at_risk = 0  # dropped keys newer than the oldest undelivered event
        cut: datetime | None = None
        for when in sorted(buckets):
            if size <= self.cap:
                break
            bucket = buckets.pop(when)
            digests.pop(when, None)
            size -= len(bucket)
            cut = when
            if self._pins:
                # a list is under way: the floor will not rise over these, so they stay known, compactly
                # (an int each; a buffer replayed meanwhile would otherwise be sent again by the list)
                self._overflow.update(map(hash, bucket))
                if self._overflow_max is None or when.timestamp() > self._overflow_max:
                    self._overflow_max = when.timestamp()
            else:
                self._dropped_seconds.add(when)
                if oldest_unsettled is not None and when.timestamp() >= oldest_unsettled:
                    at_risk += len(bucket)
        self._size = size
        if cut is None:  # only restored keys: keep them (they are at most one document's worth)
            return floor
        # every settled event up to ``cut`` is now below the floor
        remaining = min(buckets, default=None)
        raised = remaining.timestamp() if remaining is not None else math.nextafter(cut.timestamp(), math.inf)
        limits = [t for t in (oldest_unsettled, self.hole) if t is not None and t < raised]
        if not limits:
            return raised
        # an undelivered (or dropped) event is older: the floor must stay below it, and the keys dropped
        # between the two can make a re-list send those events again (never skip one)
        self.forgotten += at_risk
        now = time.monotonic()
        if at_risk and now - self._warned_at >= 600.0:
            self._warned_at = now
            log.info("position: more than %d settled events newer than the oldest undelivered one; %d forgotten "
                        "so far (a re-list may send those again)", self.cap, self.forgotten)
        return min(limits)


def _digest(uid: str, resource_version: str) -> bytes:
    return hashlib.blake2b(f"{uid}\x00{resource_version}".encode(), digest_size=DIGEST_SIZE).digest()


_KEY = attrgetter("uid", "resource_version")
_TIME = attrgetter("last_timestamp")
