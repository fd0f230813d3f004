"""Fan-out: each sink gets its own filter, bounded queue and worker thread.

The source calls :meth:`Router.dispatch` for every event (on its own thread). Dispatch numbers the
event, and each :class:`SinkRunner` either filters it out or appends it to its queue; nothing in
dispatch waits for a sink, so a stalled sink never slows the watch or another sink.

A worker takes batches (``batch_size``, ``flush_interval``), calls ``Sink.send`` and settles the
batch: delivered, failed (``PermanentError``, or retries exhausted) or dropped by the overflow
policy. Everything a sink has settled is below its *watermark*; the checkpoint may pass an event
only when every sink's watermark has (see :meth:`Router.settled_seq`). Events left undelivered at
shutdown are not settled, so they are sent again after a restart.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from eventrouter.errors import PartialError, PermanentError, RetryableError
from eventrouter.event import Event
from eventrouter.filters import EventFilter
from eventrouter.logutil import ThrottledLog
from eventrouter.options import Secret
from eventrouter.positions import SinkPosition, event_key
from eventrouter.sink import Sink
from eventrouter.sinkurl import redact_text

log = logging.getLogger("eventrouter.router")

BACKOFF_INITIAL = 0.5
# upper bounds (seconds) of the batch latency histogram /metrics exports; a retried batch counts once,
# with the time from its first attempt until it settled
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


@dataclass(slots=True)
class SinkStats:
    """Counters of one sink. Plain ints: the metrics collector reads them at scrape time."""

    filtered: int = 0
    queued: int = 0
    sent: int = 0
    failed: int = 0
    retried: int = 0
    batches: int = 0
    dropped_overflow: int = 0
    dropped_shutdown: int = 0
    relist_skipped: int = 0  # relisted events this sink already had (settled, queued or buffered)
    batch_seconds: list[float] = field(default_factory=list)
    # per LATENCY_BUCKETS bound, then one overflow slot (not cumulative); updated once per batch
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0


@dataclass(frozen=True)
class Delivery:
    queue_size: int = 10000
    batch_size: int = 1
    flush_interval: float = 1.0
    max_retries: int = -1
    retry_backoff_max: float = 60.0
    overflow: str = "drop_oldest"


class SinkRunner:
    """One sink: its filter, bounded queue, worker thread and counters."""

    def __init__(self, sink: Sink, event_filter: EventFilter, delivery: Delivery, *, label: str = "") -> None:
        self.sink = sink
        self.filter = event_filter
        self.delivery = delivery
        self.label = label or sink.name
        self.stats = SinkStats()
        # two parallel deques (event, and its sequence number) rather than one of (seq, event) pairs: no
        # tuple per event per sink, which the cyclic GC would have to track and scan
        self._queue: deque[Event] = deque()
        self._seqs: deque[int] = deque()
        self._lock = threading.Lock()
        # The worker sleeps on its own Event, not on a Condition of the queue lock: woken from a Condition,
        # it would take the queue lock back before it has the GIL, and the source's next offer would then
        # block on that lock until the worker got the GIL (a lock/GIL convoy on every wake-up).
        self._wakeup = threading.Event()
        self._worker_waiting = False
        self._inflight_first: int | None = None
        self._inflight: Sequence[Event] = ()  # the batch being delivered (events of it not yet settled)
        self.position = SinkPosition()
        # keys of the events held but not settled, taken when a re-list starts (see holds)
        self._held_keys: set[bytes] | None = None
        self._held_keys_at = 0.0
        self._stopping = False
        self._hard_stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._errors = ThrottledLog(logging.getLogger(f"eventrouter.sinks.{sink.name}"), 30.0)
        self._secrets = [v for v in sink.opts.values() if isinstance(v, Secret)] if hasattr(sink, "opts") else []
        self.died: BaseException | None = None
        self._abandoned = 0  # events of the batch given up at the shutdown deadline
        self._passes_all = event_filter.passes_everything
        self._batch_size = delivery.batch_size
        self._queue_size = delivery.queue_size

    @classmethod
    def build(cls, sink: Sink, *, label: str = "") -> SinkRunner:
        opts = sink.opts
        delivery = Delivery(
            queue_size=opts["queue_size"],
            batch_size=opts["batch_size"],
            flush_interval=float(opts["flush_interval"]),
            max_retries=opts["max_retries"],
            retry_backoff_max=float(opts["retry_backoff_max"]),
            overflow=opts["overflow"],
        )
        return cls(sink, EventFilter(sink.name, opts), delivery, label=label)

    # ---- hot path (source thread) -----------------------------------------------------------
    def offer(self, seq: int, event: Event) -> None:
        if not self._passes_all and not self.filter.accepts(event):
            self.stats.filtered += 1
            return
        self.enqueue(seq, event)

    def enqueue(self, seq: int, event: Event) -> None:
        """:meth:`offer` for an event known to pass this sink's filter."""
        queue = self._queue
        if len(queue) >= self._queue_size:
            self._offer_full(seq, event)
            return
        # No lock: the source is the only producer (dispatch is not thread-safe; concurrent watches are
        # serialized) and deque appends are atomic. The seq goes first, so a worker that sees n events
        # also finds their n seqs. Taking a lock here let a forced GIL switch inside the critical section
        # stall the source behind a worker holding the lock but waiting for the GIL (per sink!).
        self._seqs.append(seq)
        queue.append(event)
        self.stats.queued += 1
        # wake the worker only when it has something to do: the first event (it starts the
        # flush_interval clock) or a full batch; a wake-up per event costs a GIL hand-off each
        if self._worker_waiting:
            queued = len(queue)
            if (queued == 1 or queued >= self._batch_size) and not self._wakeup.is_set():
                self._wakeup.set()

    def _offer_full(self, seq: int, event: Event) -> None:
        """The queue is full: the overflow policy, under the lock (the worker may be taking a batch)."""
        with self._lock:
            queue = self._queue
            if len(queue) >= self._queue_size:
                self.stats.dropped_overflow += 1
                if self.delivery.overflow == "drop_newest":
                    self.position.dropped((event,))
                    self._report_overflow()
                    return
                self.position.dropped((queue.popleft(),))
                self._seqs.popleft()
                self._report_overflow()
            self._seqs.append(seq)
            queue.append(event)
            self.stats.queued += 1
        if self._worker_waiting:
            self._wakeup.set()

    def _report_overflow(self) -> None:
        self._errors.log(
            logging.WARNING,
            "overflow",
            "sink %s: queue full (%d events); %s events dropped so far (overflow=%s)",
            self.label,
            self.delivery.queue_size,
            self.stats.dropped_overflow,
            self.delivery.overflow,
        )

    # ---- watermark ---------------------------------------------------------------------------
    def oldest_unsettled(self) -> int | None:
        """The sequence number of the oldest event this sink holds but has not settled."""
        with self._lock:
            if self._inflight_first is not None:
                return self._inflight_first
            return self._seqs[0] if self._seqs else None

    def oldest_unsettled_time(self) -> float | None:
        """The earliest event time among the events this sink holds but has not settled."""
        held = [*self._inflight, *list(self._queue)]  # list(deque) copies in one step, under the GIL
        if not held:
            return None
        return min(e.last_timestamp for e in held).timestamp()

    # ---- re-list (source thread) -------------------------------------------------------------
    def offer_relisted(self, seq: int, event: Event) -> None:
        """:meth:`offer` for an event that comes from a list: skipped when this sink already has it."""
        if not self._passes_all and not self.filter.accepts(event):
            self.stats.filtered += 1
            return
        if self.holds(event):
            self.stats.relist_skipped += 1
            return
        self.enqueue(seq, event)
        if self._held_keys is not None:
            self._held_keys.add(event_key(event))

    def holds(self, event: Event) -> bool:
        """Whether this sink has the event already: settled (its position) or still waiting for delivery."""
        if self.position.holds(event):
            return True
        now = time.monotonic()
        held = self._held_keys
        if held is None or now - self._held_keys_at > 1.0:
            # a re-list dispatches thousands of events in a row: one snapshot of the waiting keys serves
            # them all (each event the re-list queues is added to it; newer watch events are no re-list's)
            held = self._held_keys = {event_key(e) for e in [*self._inflight, *list(self._queue)]}
            self._held_keys_at = now
        return event_key(event) in held

    @property
    def depth(self) -> int:
        return len(self._queue) + (1 if self._inflight_first is not None else 0)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.died is None

    # ---- worker ------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"sink-{self.label}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_tick = time.monotonic() + self.delivery.flush_interval
        try:
            while True:
                batch = self._take_batch()
                if batch:
                    self._deliver(batch)
                elif self._stopping or self._hard_stop.is_set():
                    break
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + self.delivery.flush_interval
                    self._tick()
        except BaseException as exc:  # a dead worker must show in /healthz, not vanish
            self.died = exc
            log.exception("sink %s: worker stopped by an unexpected error", self.label)
        finally:
            try:
                self.sink.close()
            except Exception as exc:
                log.warning("sink %s: close failed: %s", self.label, self._redact(str(exc)))
            self._errors.flush()  # the errors held back in the last interval still get their line

    def _take_batch(self) -> list[Event]:
        size = self.delivery.batch_size
        interval = self.delivery.flush_interval
        deadline: float | None = None
        while True:
            # Cleared, then flagged, before the queue is looked at: a stop, or an offer made after the
            # look, sets the Event again, so the wait below cannot miss it.
            self._wakeup.clear()
            self._worker_waiting = True
            with self._lock:
                if self._hard_stop.is_set():
                    return []
                queue, seqs = self._queue, self._seqs
                queued = len(queue)
                now = time.monotonic()
                if queued >= size or (queued and (self._stopping or (deadline is not None and now >= deadline))):
                    self._worker_waiting = False
                    # popleft only: the source may append meanwhile (it removes only under the lock)
                    take = min(queued, size)
                    self._inflight_first = seqs[0]
                    pop_event = queue.popleft
                    batch = [pop_event() for _ in range(take)]
                    self._inflight = batch
                    pop_seq = seqs.popleft
                    for _ in range(take):
                        pop_seq()
                    return batch
                if not queued:
                    if self._stopping:
                        return []
                    if deadline is not None:
                        return []  # waited a full interval with nothing: let the worker tick
                    deadline = now + interval
                elif deadline is None:
                    deadline = now + interval
            self._wakeup.wait(max(0.0, deadline - now) or 0.001)

    def _deliver(self, batch: list[Event]) -> None:
        events: Sequence[Event] = batch
        stats = self.stats
        attempt = 0
        error: BaseException
        started = time.monotonic()
        while True:
            retry_after: float | None = None
            try:
                self.sink.send(events)
                stats.sent += len(events)
                break
            except PartialError as exc:
                delivered = len(events) - len(exc.retry) - len(exc.rejected)
                stats.sent += max(0, delivered)
                if exc.rejected:
                    stats.failed += len(exc.rejected)
                    self._log_error("rejected", f"{len(exc.rejected)} events rejected", exc)
                if not exc.retry:
                    break
                events, retry_after, error = exc.retry, exc.retry_after, exc
            except PermanentError as exc:
                stats.failed += len(events)
                self._log_error("permanent", f"{len(events)} events failed permanently", exc)
                break
            except RetryableError as exc:
                retry_after, error = exc.retry_after, exc
            except Exception as exc:  # a sink bug: retried like a transient error, logged with its type
                error = exc
            attempt += 1
            limit = self.delivery.max_retries
            if 0 <= limit < attempt:
                stats.failed += len(events)
                self._log_error("exhausted", f"{len(events)} events failed after {limit} retries", error)
                break
            delay = self._backoff(attempt, retry_after)
            self._log_error("retry", f"send failed, retry {attempt} in {delay:.1f}s", error)
            if self._hard_stop.wait(delay):
                # shutdown deadline: leave the batch unsettled so a restart sends it again
                stats.dropped_shutdown += len(events)
                self._abandoned = len(events)
                return
            stats.retried += len(events)
        # delivered or failed for good: the sink's position passes the whole batch
        self.position.settle(batch)
        stats.batches += 1
        latencies = stats.batch_seconds
        elapsed = time.monotonic() - started
        latencies.append(elapsed)
        stats.latency_counts[bisect_left(LATENCY_BUCKETS, elapsed)] += 1
        stats.latency_sum += elapsed
        if len(latencies) > 1024:
            del latencies[:512]
        with self._lock:
            self._inflight_first = None
            self._inflight = ()

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None and retry_after >= 0:
            return float(retry_after)
        cap = self.delivery.retry_backoff_max
        base = min(cap, BACKOFF_INITIAL * 2.0 ** min(attempt - 1, 30))
        return base * random.uniform(0.5, 1.0)

    def _tick(self) -> None:
        try:
            self.sink.tick()
        except Exception as exc:
            self._log_error("tick", "periodic flush failed", exc)

    def _log_error(self, key: str, what: str, exc: BaseException) -> None:
        text = self._redact(f"{type(exc).__name__}: {exc}")
        self._errors.log(logging.WARNING, key, "sink %s: %s: %s", self.label, what, text)

    def _redact(self, text: str) -> str:
        return redact_text(text, self._secrets)

    # ---- shutdown ----------------------------------------------------------------------------
    def request_stop(self) -> None:
        with self._lock:
            self._stopping = True
        self._wakeup.set()

    def join(self, deadline: float) -> bool:
        """Wait for the queue to drain until ``deadline`` (monotonic); then abandon what is left."""
        thread = self._thread
        if thread is None:
            return True
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            self._hard_stop.set()
            self._wakeup.set()
            thread.join(1.0)
        with self._lock:
            left = len(self._queue)
        self.stats.dropped_shutdown += left
        left += self._abandoned
        if left:
            log.warning("sink %s: %d events not delivered before the shutdown deadline", self.label, left)
        return not left and not thread.is_alive()


# What EventFilter.accepts reads, besides the count: (type, involved namespace, involved kind, reason).
# A filter option that reads anything else must extend the route key in Router.dispatch, and this set
# (tests/test_router.py compares it with EventFilter's options).
ROUTE_KEY_FILTERS = frozenset({"threshold", "namespaces", "exclude_namespaces", "kinds", "exclude_kinds",
                               "reasons", "exclude_reasons", "min_count"})
ROUTES_CAP = 4096

_Route = tuple[tuple[Callable[[int, Event], None], ...], tuple[SinkStats, ...]]


class Router:
    """Numbers each event and offers it to every sink runner."""

    def __init__(self, runners: Iterable[SinkRunner]) -> None:
        self.runners = list(runners)
        # a step every event takes before it is numbered (the enricher: eventrouter/enrich.py)
        self.prepare: Callable[[Event], Event] | None = None
        self.enricher: Any = None  # the Enricher behind prepare, for /metrics
        self._offers: tuple[Callable[[int, Event], None], ...] = tuple(r.offer for r in self.runners)
        self.seq = 0
        # events dispatched, by the Event's type (eventrouter_events_routed_total; "other" bounds the label)
        self.event_types: dict[str, int] = {"Normal": 0, "Warning": 0, "other": 0}
        # With several filtered sinks, the filters' verdicts are remembered per route key (most events
        # share a type, object kind, namespace and reason with many others): one dict lookup per event
        # instead of one filter per sink. Only for the stock EventFilter, whose inputs the key covers.
        filtered = [r for r in self.runners if not r._passes_all]
        cacheable = all(type(r.filter) is EventFilter and r.filter.route_keyed for r in self.runners)
        self._routes: dict[tuple[Any, ...], _Route] | None = (
            {} if len(self.runners) > 1 and filtered and cacheable else None)
        # count only matters up to the largest min_count: count >= m <=> min(count, cap) >= m for m <= cap
        self._count_cap = max((r.filter.min_count for r in filtered), default=0)
        # watch events up to this time are checked against the positions restored from a checkpoint
        self._check_until: datetime | None = None
        self._changes_written = -1

    def dispatch(self, event: Event, *, relisted: bool = False) -> int:
        """Number the event and offer it to every sink. One thread at a time (sources serialize their
        watches): the numbering, and the lock-free :meth:`SinkRunner.offer`, rely on it.

        ``relisted``: the event comes from a list (start-up, a 410 re-list, a handover), so a sink may
        have it already; each sink then checks its own position and skips it if so. Watch events are
        checked the same way while their time is within what the restored positions cover (a restart
        resumes the watch from the position of the slowest sink)."""
        if self.prepare is not None:
            event = self.prepare(event)
        self.seq = seq = self.seq + 1
        types, kind = self.event_types, event.type
        types[kind if kind in types else "other"] += 1
        if relisted or (self._check_until is not None and event.last_timestamp <= self._check_until):
            for runner in self.runners:
                runner.offer_relisted(seq, event)
            return seq
        routes = self._routes
        if routes is None:
            for offer in self._offers:
                offer(seq, event)
            return seq
        obj = event.involved_object
        count = event.count
        cap = self._count_cap
        key = (event.type, obj.namespace, obj.kind, event.reason, count if count < cap else cap)
        enqueues, rejected = routes.get(key) or self._route(key, event)
        for enqueue in enqueues:
            enqueue(seq, event)
        for stats in rejected:
            stats.filtered += 1
        return seq

    def _route(self, key: tuple[Any, ...], event: Event) -> _Route:
        accepted: list[Callable[[int, Event], None]] = []
        rejected: list[SinkStats] = []
        for runner in self.runners:
            if runner._passes_all or runner.filter.accepts(event):
                accepted.append(runner.enqueue)
            else:
                rejected.append(runner.stats)
        route = (tuple(accepted), tuple(rejected))
        routes = self._routes
        assert routes is not None
        if len(routes) >= ROUTES_CAP:
            routes.clear()
        routes[key] = route
        return route

    def settled_seq(self) -> int:
        """Every event numbered up to this has been settled by every sink."""
        settled = self.seq
        for runner in self.runners:
            oldest = runner.oldest_unsettled()
            if oldest is not None and oldest - 1 < settled:
                settled = oldest - 1
        return settled

    def accepted_seq(self) -> int:
        """Every event numbered up to this is held durably by every sink (settled, or filtered out)."""
        return self.settled_seq()

    # ---- per-sink positions (the checkpoint's "sinks") -----------------------------------------
    def positions(self) -> dict[str, Any]:
        """Each sink's settled position (see :mod:`eventrouter.positions`), JSON-safe, by sink label."""
        self._changes_written = self._position_changes()
        return {r.label: r.position.document(r.oldest_unsettled_time()) for r in self.runners}

    def restore_positions(self, doc: dict[str, Any]) -> None:
        """Take the positions of a checkpoint; call before :meth:`start`. A sink missing from ``doc`` (newly
        configured) starts as on a first start: it has nothing yet."""
        newest: float | None = None
        for runner in self.runners:
            saved = doc.get(runner.label) if isinstance(doc, dict) else None
            if not isinstance(saved, dict):
                continue
            position = runner.position
            position.restore(saved)
            if position.max_time is not None and (newest is None or position.max_time > newest):
                newest = position.max_time
        if newest is not None:
            self._check_until = datetime.fromtimestamp(newest, UTC)

    def position_changed(self) -> bool:
        """Whether any sink's position moved since the last :meth:`positions`."""
        return self._position_changes() != self._changes_written

    def _position_changes(self) -> int:
        return sum(r.position.changes for r in self.runners)

    def start(self) -> None:
        for runner in self.runners:
            runner.start()

    def stop(self, timeout: float) -> bool:
        """Drain every queue within ``timeout`` seconds. True if everything was delivered."""
        deadline = time.monotonic() + timeout
        for runner in self.runners:
            runner.request_stop()
        drained = True
        for runner in self.runners:
            drained = runner.join(deadline) and drained
        return drained

    @property
    def healthy(self) -> bool:
        return all(r.alive for r in self.runners)
