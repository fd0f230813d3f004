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
time: it is not held, so it is forwarded once. The keys are capped (:data:`KEYS_CAP`); past the cap
the oldest keys are forgotten, which can make a re-list send those events again but never skips one.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
from collections.abc import Iterable
from typing import Any

from eventrouter.event import Event

log = logging.getLogger("eventrouter.router")

GRACE = 120.0  # seconds below the newest settled time still recorded exactly
KEYS_CAP = 4096  # keys per sink in the document: 4096 * 8 bytes = 44 KB of base64
DIGEST_SIZE = 8


def event_key(event: Event) -> bytes:
    """The identity of one occurrence (uid + resourceVersion), 8 bytes: stable across processes."""
    return hashlib.blake2b(f"{event.uid}\x00{event.resource_version}".encode(), digest_size=DIGEST_SIZE).digest()


def event_time(event: Event) -> float:
    return event.last_timestamp.timestamp()


class SinkPosition:
    """One sink's settled position. The worker calls :meth:`settle`; the source's thread calls
    :meth:`holds`; the checkpoint's thread calls :meth:`document`."""

    def __init__(self, *, grace: float = GRACE, cap: int = KEYS_CAP) -> None:
        self.grace = grace
        self.cap = cap
        self.floor: float | None = None  # every event with an earlier time is settled; None: nothing known
        self.max_time: float | None = None  # the newest settled time
        self.hole: float | None = None  # the oldest time of an event dropped by the overflow policy
        self.keys: dict[bytes, float] = {}  # settled keys at or above the floor -> their times
        self.changes = 0  # bumped whenever the document would differ
        self.forgotten = 0  # keys dropped past the cap (a re-list may send those events again)
        self._lock = threading.Lock()

    def settle(self, events: Iterable[Event]) -> None:
        keys = self.keys
        newest = self.max_time
        with self._lock:
            for event in events:
                t = event.last_timestamp.timestamp()
                keys[event_key(event)] = t
                if newest is None or t > newest:
                    newest = t
            self.max_time = newest
            self.changes += 1
            if len(keys) > 8 * self.cap:  # a long burst between two checkpoints: bound the memory
                self._trim(self._floor(None))

    def dropped(self, events: Iterable[Event]) -> None:
        """Events the overflow policy dropped: the floor stays below them."""
        with self._lock:
            for event in events:
                t = event.last_timestamp.timestamp()
                if self.hole is None or t < self.hole:
                    self.hole = t
            self.changes += 1

    def dropped_time(self, earliest: float) -> None:
        """Events dropped by the overflow policy, the earliest of them at ``earliest``."""
        with self._lock:
            if self.hole is None or earliest < self.hole:
                self.hole = earliest
            self.changes += 1

    def holds(self, event: Event) -> bool:
        floor = self.floor
        if floor is not None and event.last_timestamp.timestamp() < floor:
            return True
        return event_key(event) in self.keys

    def document(self, oldest_unsettled: float | None) -> dict[str, Any]:
        """The JSON-safe position; ``oldest_unsettled`` is the time of the oldest event not yet delivered."""
        with self._lock:
            floor = self._floor(oldest_unsettled)
            self._trim(floor)
            self.floor = floor
            keys = sorted(self.keys)
            return {"floor": floor, "max": self.max_time,
                    "keys": base64.b64encode(b"".join(keys)).decode("ascii")}

    def restore(self, doc: dict[str, Any]) -> None:
        """Take a position from a checkpoint (before any event is dispatched)."""
        floor, newest, blob = doc.get("floor"), doc.get("max"), doc.get("keys") or ""
        with self._lock:
            self.floor = float(floor) if isinstance(floor, (int, float)) else None
            self.max_time = float(newest) if isinstance(newest, (int, float)) else self.floor
            raw = base64.b64decode(blob) if isinstance(blob, str) else b""
            t = self.max_time if self.max_time is not None else 0.0
            self.keys = {raw[i:i + DIGEST_SIZE]: t for i in range(0, len(raw) - DIGEST_SIZE + 1, DIGEST_SIZE)}

    def _floor(self, oldest_unsettled: float | None) -> float | None:
        candidates = [t for t in (oldest_unsettled, self.hole) if t is not None]
        if self.max_time is not None:
            candidates.append(self.max_time - self.grace)
        if not candidates:
            return self.floor
        floor = min(candidates)
        if oldest_unsettled is None and self.hole is None and self.floor is not None and floor < self.floor:
            # nothing older is waiting: a floor once reached stays (a restored position keeps its claim)
            floor = self.floor
        return floor

    def _trim(self, floor: float | None) -> None:
        keys = self.keys
        if floor is not None:
            for key in [k for k, t in keys.items() if t < floor]:
                del keys[key]
        excess = len(keys) - self.cap
        if excess > 0:
            self.forgotten += excess
            for key, _ in sorted(keys.items(), key=lambda kv: kv[1])[:excess]:
                del keys[key]
            log.warning("position: %d exact keys above the floor, %d forgotten so far; a re-list may send "
                        "those events again", len(keys), self.forgotten)
