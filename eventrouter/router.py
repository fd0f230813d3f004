"""Fan-out: each sink gets its own filter, memory window, disk buffer, worker thread and position.

The source calls :meth:`Router.dispatch` for every event (on its own thread). Dispatch numbers the
event, and each :class:`SinkRunner` either filters it out or queues it: in memory up to ``queue_size``,
past that in the sink's disk buffer (:mod:`eventrouter.buffer`), so a stalled sink never slows the
watch or another sink, and its backlog survives bursts and restarts without costing RAM. Only a full
disk buffer applies the ``overflow`` policy, counted and logged.

A worker takes batches (``batch_size``, ``flush_interval``), calls ``Sink.send`` and settles the
batch: delivered, or failed (``PermanentError``, or retries exhausted). What each sink settled is its
position (:mod:`eventrouter.positions`): :meth:`Router.positions` goes into the checkpoint, and after
:meth:`Router.restore_positions` a relisted event a sink already holds (settled, queued or buffered) is
skipped for that sink only. :meth:`Router.settled_seq` is what every sink has settled;
:meth:`Router.accepted_seq` what every sink holds durably (settled, or fsynced in its disk buffer): the
source resumes its watch from there. See docs/delivery.md for what a crash can still repeat.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from eventrouter.buffer import (
    DiskBuffer,
    ReadBatch,
    encode_event,
    encode_record,
    parse_size,
    record_event,
    record_fields,
)
from eventrouter.errors import PartialError, PermanentError, RetryableError
from eventrouter.event import Event
from eventrouter.filters import EventFilter
from eventrouter.logutil import ThrottledLog
from eventrouter.memory import RELEASE_AFTER, release_memory
from eventrouter.options import Secret
from eventrouter.positions import KEYS_CAP, KEYS_TOTAL, SinkPosition, event_key
from eventrouter.sink import Sink
from eventrouter.sinkurl import redact_text

log = logging.getLogger("eventrouter.router")

BACKOFF_INITIAL = 0.5
# upper bounds (seconds) of the batch latency histogram /metrics exports; a retried batch counts once,
# with the time from its first attempt until it settled
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# A sink's memory window holds its next batch (batch_size, within these bounds) and its newest LIVE_TAIL
# events as Events; an event between the two is held encoded (~0.7-0.9 KB instead of ~3-5 KB) once the
# sink has been in one send for PACK_AFTER seconds (see SinkRunner._append_locked). Long enough that a slow
# but working sink (InfluxDB writes 10,000 points in a few seconds) pays no encoding and decoding per event.
LIVE_MIN = 32
LIVE_MAX = 1000
LIVE_TAIL = 256
PACK_AFTER = 5.0


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
    buffered_at_exit: int = 0  # undelivered at the shutdown deadline, kept in the disk buffer for the next start
    spilled: int = 0  # events written to the disk buffer (the sink was behind by more than queue_size)
    packed: int = 0  # events held encoded in the memory window (the sink was behind by more than a batch)
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
    retry_backoff_max: float = 5.0
    overflow: str = "drop_oldest"
    buffer_max_bytes: int = 0  # 0: no disk buffer (the overflow policy applies at queue_size)


class SinkRunner:
    """One sink: its filter, bounded queue, worker thread and counters."""

    def __init__(self, sink: Sink, event_filter: EventFilter, delivery: Delivery, *, label: str = "",
                 buffer: DiskBuffer | None = None) -> None:
        self.sink = sink
        self.filter = event_filter
        self.delivery = delivery
        self.label = label or sink.name
        self.stats = SinkStats()
        # two deques (events, and the numbers of those not encoded) rather than one of (seq, event) pairs: no
        # tuple per event per sink, which the cyclic GC would have to track and scan
        # The memory window: an Event each, or, for an event held long (see _append_locked), its encoded
        # disk record (eventrouter.buffer: one bytes object about the size of its JSON), decoded when its
        # batch is taken
        self._queue: deque[Event | bytes] = deque()
        # The numbers of the window's Events, in order (one of an event held encoded is in its record: no
        # slot nor int object beside it, ~40 bytes less per held event and sink)
        self._seqs: deque[int] = deque()
        self._packed = 0  # records in the window (0: a batch needs no decoding)
        # when the worker's current send started (None: it is not sending); a runner not started yet holds
        # what is dispatched to it as a stalled sink would. _swept: the window was encoded for this send.
        self._send_started: float | None = 0.0
        self._swept = False
        self._lock = threading.Lock()
        # The worker sleeps on its own Event, not on a Condition of the queue lock: woken from a Condition,
        # it would take the queue lock back before it has the GIL, and the source's next offer would then
        # block on that lock until the worker got the GIL (a lock/GIL convoy on every wake-up).
        self._wakeup = threading.Event()
        self._worker_waiting = False
        # Idle, the worker wakes every flush_interval only for a sink that holds something back (its own
        # tick()); any other sleeps from its last idle tick until an offer or a stop (a quiet cluster).
        self._ticks = type(sink).tick is not Sink.tick
        self._idle = False
        self._inflight_first: int | None = None
        # the batch being delivered (events of it not yet settled; records until the worker decoded them)
        self._inflight: Sequence[Event | bytes] = ()
        self._inflight_read: ReadBatch | None = None  # the batch came from the disk buffer
        # Past queue_size, events go to the disk buffer, and keep going there (behind the backlog) until the
        # worker has read it all: the order stays FIFO. Set by the source thread, cleared by the worker, both
        # under the lock; the source's lock-free fast path only reads it.
        self.buffer = buffer
        self._spilling = buffer is not None and buffer.pending > 0
        self.position = SinkPosition()
        self.position.oldest_unsettled = self.oldest_unsettled_time
        # keys of the events held but not settled, taken when a re-list starts (see holds)
        self._held_keys: set[bytes] | None = None
        self._held_keys_at = 0.0
        self._stopping = False
        self._hard_stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._errors = ThrottledLog(logging.getLogger(f"eventrouter.sinks.{sink.name}"), 30.0)
        self._secrets = [v for v in sink.opts.values() if isinstance(v, Secret)] if hasattr(sink, "opts") else []
        self.died: BaseException | None = None
        self._backlog_peak = 0  # the largest depth seen since the last drain (see _release_after_drain)
        self._abandoned: Sequence[Event] = ()  # the batch given up at the shutdown deadline
        self._passes_all = event_filter.passes_everything
        self._batch_size = delivery.batch_size
        self._queue_size = delivery.queue_size
        # events held as Events at the head of the window: the next batch (capped: a batch_size of 10,000
        # would hold ~50 MB); past _pack_depth events the window starts encoding (see _append_locked)
        self._live_size = max(LIVE_MIN, min(delivery.batch_size, LIVE_MAX))
        self._pack_depth = min(delivery.queue_size, self._live_size + LIVE_TAIL)

    @classmethod
    def build(cls, sink: Sink, *, label: str = "", data_dir: str | None = None) -> SinkRunner:
        """The runner of a configured sink; with ``data_dir``, its disk buffer is ``data_dir/buffer/<label>``
        (opened here: what an earlier run left in it is delivered first)."""
        opts = sink.opts
        label = label or sink.name
        delivery = Delivery(
            queue_size=opts["queue_size"],
            batch_size=opts["batch_size"],
            flush_interval=float(opts["flush_interval"]),
            max_retries=opts["max_retries"],
            retry_backoff_max=float(opts["retry_backoff_max"]),
            overflow=opts["overflow"],
            buffer_max_bytes=parse_size(opts["buffer_max_bytes"]) if data_dir is not None else 0,
        )
        buffer = None
        if data_dir is not None and delivery.buffer_max_bytes:
            buffer = DiskBuffer(os.path.join(data_dir, "buffer", label), delivery.buffer_max_bytes)
            buffer.open()
        return cls(sink, EventFilter(sink.name, opts), delivery, label=label, buffer=buffer)

    # ---- hot path (source thread) -----------------------------------------------------------
    def offer(self, seq: int, event: Event) -> None:
        if not self._passes_all and not self.filter.accepts(event):
            self.stats.filtered += 1
            return
        self.enqueue(seq, event)

    def enqueue(self, seq: int, event: Event) -> None:
        """:meth:`offer` for an event known to pass this sink's filter."""
        queue = self._queue
        if len(queue) >= self._pack_depth or self._spilling:
            self._offer_held(seq, event)
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

    def _offer_held(self, seq: int, event: Event) -> None:
        """The sink is behind by more than a batch and LIVE_TAIL events: into the memory window while it
        has room, else to the disk buffer, or the overflow policy."""
        with self._lock:
            if not self._spilling and len(self._queue) < self._queue_size:
                self._append_locked(seq, event)
                self.stats.queued += 1
                self._wake()
                return
        self._offer_full(seq, event)

    def _append_locked(self, seq: int, event: Event) -> None:
        """Append to the window. While the sink has been in one send for PACK_AFTER seconds (stalled, or
        retrying), the events behind its next batch and more than LIVE_TAIL behind the newest are held
        encoded: all of them when that time passes, then each as it falls that far behind. A sink that
        keeps up, or sends slowly but steadily, encodes nothing: its events are taken within a send's time
        (and its window is bounded by queue_size); decoding them would only cost CPU."""
        queue, seqs = self._queue, self._seqs
        seqs.append(seq)
        queue.append(event)
        index = len(queue) - LIVE_TAIL - 1
        if index < self._live_size:
            return
        started = self._send_started
        if started is None or time.monotonic() - started < PACK_AFTER:
            return
        if not self._swept:
            self._sweep_locked()
            return
        behind = queue[index]
        if behind.__class__ is not bytes:
            # the LIVE_TAIL events behind it are Events (only older ones get encoded): its number is as far
            # from the end of the numbers
            number = -LIVE_TAIL - 1
            queue[index] = _record(seqs[number], behind, compress=True)  # type: ignore[arg-type]
            del seqs[number]
            self._packed += 1
            self.stats.packed += 1

    def _sweep_locked(self) -> None:
        """Encode every event between the next batch and the newest LIVE_TAIL (once per stalled send)."""
        self._swept = True
        held, numbers = list(self._queue), iter(list(self._seqs))
        first, stop = self._live_size, len(held) - LIVE_TAIL
        kept: list[int] = []  # the numbers of the Events that stay Events
        packed = 0
        for index, behind in enumerate(held):
            if behind.__class__ is bytes:
                continue
            seq = next(numbers)
            if first <= index < stop:
                held[index] = _record(seq, behind, compress=True)  # type: ignore[arg-type]
                packed += 1
            else:
                kept.append(seq)
        if packed:
            # new deques (indexing one in its middle is O(n)), swapped in whole: a thread that reads the
            # window without the lock (oldest_unsettled_time, holds) sees the old one or the new one
            self._queue = deque(held)
            self._seqs = deque(kept)
            self._packed += packed
            self.stats.packed += packed

    def _offer_full(self, seq: int, event: Event) -> None:
        """The window is full (or the disk holds a backlog): to the disk buffer, or the overflow policy."""
        if self.buffer is not None:
            self._spill(seq, event)
            return
        with self._lock:
            queue = self._queue
            if len(queue) >= self._queue_size:
                self.stats.dropped_overflow += 1
                if self.delivery.overflow == "drop_newest":
                    self.position.dropped((event,))
                    self._report_overflow()
                    return
                oldest = queue.popleft()
                if oldest.__class__ is bytes:
                    self._packed -= 1
                else:
                    self._seqs.popleft()
                self.position.dropped_time(_held_time(oldest))
                self._report_overflow()
            self._append_locked(seq, event)
            self.stats.queued += 1
        self._wake()

    def _spill(self, seq: int, event: Event) -> None:
        """Append to the disk buffer, behind what is there. The memory window goes first when spilling starts,
        so the worker reads everything in order from disk (and the window's memory is freed)."""
        with self._lock:
            if not self._spilling:
                if len(self._queue) < self._queue_size:  # the worker made room meanwhile
                    self._append_locked(seq, event)
                    self.stats.queued += 1
                    self._wake()
                    return
                self._spill_window_locked()
            self._write(seq, event)
            self.stats.queued += 1
        self._wake()

    def _spill_window(self) -> None:
        """Move the memory window to the disk buffer now, and queue behind it from here on."""
        with self._lock:
            if not self._spilling:
                self._spill_window_locked()

    def _spill_window_locked(self) -> None:
        self._spilling = True
        queue, seqs = self._queue, self._seqs
        while queue:
            held = queue.popleft()
            self._write_held(None if held.__class__ is bytes else seqs.popleft(), held)
        self._packed = 0

    def _write(self, seq: int, event: Event) -> None:
        self._write_record(_record(seq, event))

    def _write_held(self, seq: int | None, held: Event | bytes) -> None:
        """An event of the window to the disk buffer (one held encoded is written as it is; ``seq`` is None
        for those)."""
        if held.__class__ is bytes:
            self._write_record(held)
        else:
            assert seq is not None
            self._write(seq, held)  # type: ignore[arg-type]

    def _write_record(self, record: bytes) -> None:
        buffer = self.buffer
        assert buffer is not None
        seq, t, key = record_fields(record)
        if buffer.append_record(record, seq, t, key):
            self.stats.spilled += 1
            return
        if self.delivery.overflow == "drop_oldest":
            dropped, oldest = buffer.drop_oldest()
            if dropped:
                self.stats.dropped_overflow += dropped
                if oldest is not None:
                    self.position.dropped_time(oldest)
                self._report_overflow()
                if buffer.append_record(record, seq, t, key):
                    self.stats.spilled += 1
                    return
        self.stats.dropped_overflow += 1
        self.position.dropped_time(t)
        self._report_overflow()

    def _wake(self) -> None:
        if self._worker_waiting and not self._wakeup.is_set():
            self._wakeup.set()

    def _report_overflow(self) -> None:
        self._errors.log(
            logging.WARNING,
            "overflow",
            "sink %s: %s; %s events dropped so far (overflow=%s)",
            self.label,
            f"disk buffer full ({self.delivery.buffer_max_bytes} bytes)" if self.buffer is not None
            else f"queue full ({self.delivery.queue_size} events)",
            self.stats.dropped_overflow,
            self.delivery.overflow,
        )

    # ---- watermark ---------------------------------------------------------------------------
    def _head_seq(self) -> int | None:
        """The number of the window's oldest event (caller holds the lock); None: the window is empty. The
        source appends an Event's number before the Event: one being appended counts already."""
        queue = self._queue
        if queue:
            head = queue[0]
            if head.__class__ is bytes:
                return record_fields(head)[0]
        seqs = self._seqs
        return seqs[0] if seqs else None

    def oldest_unsettled(self) -> int | None:
        """The sequence number of the oldest event this sink holds but has not settled (a lower bound for
        events on disk; 0 for those an earlier run left there)."""
        with self._lock:
            if self._inflight_first is not None:
                return self._inflight_first
            head = self._head_seq()
            if head is not None:
                return head
            return self.buffer.oldest_seq() if self.buffer is not None else None

    def newest_accepted(self) -> int | None:
        """Every event numbered up to this is settled or durably in the disk buffer; None: all of them."""
        limits = []
        with self._lock:
            if self._inflight_first is not None and self._inflight_read is None:
                limits.append(self._inflight_first - 1)
            head = self._head_seq()
            if head is not None:
                limits.append(head - 1)
        buffer = self.buffer
        if buffer is not None:
            buffer.sync()
            if buffer.unsynced:
                limits.append(buffer.synced_seq)
        return min(limits) if limits else None

    def oldest_unsettled_time(self) -> float | None:
        """The earliest event time among the events this sink holds but has not settled (a lower bound)."""
        held = [*self._inflight, *list(self._queue)]  # list(deque) copies in one step, under the GIL
        times = [min(map(_held_time, held))] if held else []  # Events, and records (see _append_locked)
        if self.buffer is not None:
            on_disk = self.buffer.min_time()
            if on_disk is not None:
                times.append(on_disk)
        return min(times) if times else None

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
            held = self._held_keys = {_held_key(e) for e in [*self._inflight, *list(self._queue)]}
            self._held_keys_at = now
        key = event_key(event)
        return key in held or (self.buffer is not None and self.buffer.contains(key))

    def discard_buffer(self, why: str) -> None:
        """Drop what the disk buffer holds (it is not this checkpoint's: another pod delivered since)."""
        if self.buffer is None:
            return
        with self._lock:
            dropped = self.buffer.discard()
            self._spilling = False
        if dropped:
            log.warning("sink %s: discarded %d buffered events: %s", self.label, dropped, why)

    def waiting(self) -> list[Event]:
        """The events of the memory window, oldest first (those held encoded decoded again: equal, not the
        same objects). For tests and diagnostics; the worker does not use it."""
        with self._lock:
            held = list(self._queue)
        return _decoded(held)

    @property
    def depth(self) -> int:
        """Every event not yet delivered: in memory, in the batch being sent, and on disk."""
        depth = len(self._queue)
        if self._inflight_read is None:
            depth += len(self._inflight)
        if self.buffer is not None:
            depth += self.buffer.pending  # the batch being sent from disk included
        return depth

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.died is None

    # ---- worker ------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"sink-{self.label}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self._send_started = None
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
                    self._release_after_drain()
                    self._idle = not batch
                elif batch:
                    self._idle = False
        except BaseException as exc:  # a dead worker must show in /healthz, not vanish
            self.died = exc
            log.exception("sink %s: worker stopped by an unexpected error", self.label)
        finally:
            try:
                self.sink.close()
            except Exception as exc:
                log.warning("sink %s: close failed: %s", self.label, self._redact(str(exc)))
            self._errors.flush()  # the errors held back in the last interval still get their line

    def _release_after_drain(self) -> None:
        """Once a large backlog has drained, give its memory back to the system (RSS falls again)."""
        depth = self.depth
        if depth > self._backlog_peak:
            self._backlog_peak = depth
        elif depth == 0 and self._backlog_peak >= RELEASE_AFTER:
            self._backlog_peak = 0
            release_memory()

    def _take_batch(self) -> list[Event]:
        """The next batch: from memory (the older events), else from the disk buffer, else wait."""
        while True:
            batch = self._take_from_memory()
            if batch is not _FROM_DISK:
                return batch
            buffer = self.buffer
            assert buffer is not None
            read = buffer.read(self.delivery.batch_size)
            if read is None:
                with self._lock:  # everything written was read: new events may go to memory again
                    if not buffer.unread:
                        self._spilling = False
                continue
            if not read.events:  # only corrupted records: settled as such
                buffer.commit(read)
                continue
            with self._lock:
                self._inflight_first = read.first_seq
                self._inflight = read.events
                self._inflight_read = read
            return read.events

    def _take_from_memory(self) -> list[Event]:
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
                    self._inflight_first = self._head_seq()
                    pop_event = queue.popleft
                    batch = [pop_event() for _ in range(take)]
                    self._inflight = batch
                    packed = self._packed
                    records = sum(1 for h in batch if h.__class__ is bytes) if packed else 0
                    self._packed = packed - records
                    pop_seq = seqs.popleft
                    for _ in range(take - records):  # the records' numbers are in them
                        pop_seq()
                    break
                if not queued:
                    if self._spilling:
                        self._worker_waiting = False
                        return _FROM_DISK
                    if self._stopping:
                        return []
                    if deadline is not None:
                        return []  # waited a full interval with nothing: let the worker tick
                    deadline = now + interval
                    if self._idle and not self._ticks:
                        deadline = None  # asleep until woken; then a fresh interval from the first event
                elif deadline is None:
                    deadline = now + interval
            self._wakeup.wait(None if deadline is None else max(0.0, deadline - now) or 0.001)
        if packed and records:
            # decoded outside the lock (the source keeps queuing meanwhile); _inflight holds the records
            # until then (the position's floor, and holds, read them)
            events = _decoded(batch)
            self._inflight = events
            return events
        return batch  # type: ignore[return-value]  # no record in it: Events only

    def _deliver(self, batch: list[Event]) -> None:
        events: Sequence[Event] = batch
        stats = self.stats
        attempt = 0
        error: BaseException
        started = time.monotonic()
        self._swept = False
        self._send_started = started
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
            if self.buffer is not None and self._queue and not self._spilling:
                self._spill_window()  # the sink is down or refusing: what waits for it needs no RAM
            if self._hard_stop.wait(delay):
                # shutdown deadline: leave the batch unsettled so a restart sends it again
                self._abandoned = events
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
        read = self._inflight_read
        if read is not None:
            self.buffer.commit(read)  # type: ignore[union-attr]
        with self._lock:
            self._inflight_first = None
            self._inflight = ()
            self._inflight_read = None
        self._send_started = None

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
        """Wait for the queue to drain until ``deadline`` (monotonic); then keep what is left in the disk
        buffer for the next start (without one, it is abandoned: the source sends it again after a restart)."""
        thread = self._thread
        if thread is None:
            self._close_buffer()
            return True
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            self._hard_stop.set()
            self._wakeup.set()
            thread.join(1.0)
        stuck = thread.is_alive()  # inside Sink.send: that batch's outcome is unknown
        with self._lock:
            # the batch given up in a retry wait, if it came from memory (one from disk is still there)
            given_up = list(self._abandoned) if self._inflight_read is None else []
            numbers = iter(list(self._seqs))
            left_seqs = [0] * len(given_up) + [None if h.__class__ is bytes else next(numbers) for h in self._queue]
            left_events: list[Event | bytes] = [*given_up, *self._queue]
            self._queue.clear()
            self._seqs.clear()
            self._packed = 0
            in_send = len(self._inflight) if stuck and self._inflight_read is None else 0
        buffer = self.buffer
        kept = 0
        if buffer is not None:
            for seq, held in zip(left_seqs, left_events, strict=True):
                self._write_held(seq, held)  # behind the disk backlog: their order is not kept across the restart
            self.stats.buffered_at_exit = kept = buffer.pending
            self._close_buffer()
            left_events = []
        lost = len(left_events) + in_send  # not kept: the source reads them again after a restart
        self.stats.dropped_shutdown += lost
        if kept:
            log.warning("sink %s: %d events not delivered before the shutdown deadline; kept in the disk buffer "
                        "for the next start", self.label, kept)
        if lost:
            log.warning("sink %s: %d events not delivered before the shutdown deadline%s", self.label, lost,
                        "" if buffer is None else " (in a send that did not return; read again after a restart)")
        return not kept and not lost and not stuck

    def _close_buffer(self) -> None:
        if self.buffer is not None:
            self.buffer.close()
# What EventFilter.accepts reads, besides the count: (type, involved namespace, involved kind, reason).
# A filter option that reads anything else must extend the route key in Router.dispatch, and this set
# (tests/test_router.py compares it with EventFilter's options).
ROUTE_KEY_FILTERS = frozenset({"threshold", "namespaces", "exclude_namespaces", "kinds", "exclude_kinds",
                               "reasons", "exclude_reasons", "min_count"})
ROUTES_CAP = 4096
_FROM_DISK: list[Event] = []  # _take_from_memory's answer when the next events are on disk


def _held_time(held: Event | bytes) -> float:
    """The event time of an event in a memory window (an Event, or its encoded record)."""
    if held.__class__ is bytes:
        return record_fields(held)[1]
    return held.last_timestamp.timestamp()  # type: ignore[union-attr]


def _held_key(held: Event | bytes) -> bytes:
    if held.__class__ is bytes:
        return record_fields(held)[2]
    return event_key(held)  # type: ignore[arg-type]


def _decoded(held: Iterable[Event | bytes]) -> list[Event]:
    """Events of a memory window, those held encoded decoded again (equal Events, new objects)."""
    return [record_event(h) if h.__class__ is bytes else h for h in held]  # type: ignore[misc]


# The last event encoded as a record: when several sinks hold or spill the same event (one dispatch offers
# it to each in turn), it is encoded once and the sinks share the bytes. One tuple, swapped whole: safe
# from any thread.
_last_record: tuple[Event | None, int, bool, bytes] = (None, 0, False, b"")


def _record(seq: int, event: Event, *, compress: bool = False) -> bytes:
    """The event as a disk buffer record (eventrouter.buffer), numbered ``seq``."""
    global _last_record
    last_event, last_seq, last_compress, record = _last_record
    if last_event is not event or last_seq != seq or last_compress != compress:
        record = encode_record(seq, event.last_timestamp.timestamp(), event_key(event), encode_event(event),
                               compress=compress)
        _last_record = (event, seq, compress, record)
    return record


_Route = tuple[tuple[Callable[[int, Event], None], ...], tuple[SinkStats, ...]]


class Router:
    """Numbers each event and offers it to every sink runner."""

    def __init__(self, runners: Iterable[SinkRunner]) -> None:
        self.runners = list(runners)
        for runner in self.runners:  # the checkpoint holds every sink's keys: share one budget
            runner.position.cap = max(KEYS_CAP // 2, KEYS_TOTAL // max(1, len(self.runners)))
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
        # watch events up to this time are checked against the positions restored from a checkpoint and the
        # disk buffers an earlier run left (a restart resumes the watch from the slowest sink's position)
        self._check_until: datetime | None = None
        self._extend_checks([r.buffer.restored_max_time() for r in self.runners if r.buffer is not None])
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
        """Every event numbered up to this has been settled by every sink.

        The source asks several times a second: the disk buffers are fsynced here when due (a buffer that
        is no longer appended to still gets its last records to disk within a second)."""
        settled = self.seq
        for runner in self.runners:
            if runner.buffer is not None:
                runner.buffer.sync()
            oldest = runner.oldest_unsettled()
            if oldest is not None and oldest - 1 < settled:
                settled = oldest - 1
        return settled

    def accepted_seq(self) -> int:
        """Every event numbered up to this is held durably by every sink: settled, filtered out, or in its
        disk buffer (fsynced; the buffers are synced here when due, so this lags by at most a second)."""
        accepted = self.seq
        for runner in self.runners:
            newest = runner.newest_accepted()
            if newest is not None and newest < accepted:
                accepted = newest
        return accepted

    # ---- per-sink positions (the checkpoint's "sinks") -----------------------------------------
    def positions(self) -> dict[str, Any]:
        """Each sink's settled position (see :mod:`eventrouter.positions`), JSON-safe, by sink label."""
        self._changes_written = self._position_changes()
        docs = {}
        for runner in self.runners:
            doc = runner.position.document(runner.oldest_unsettled_time())
            if runner.buffer is not None:
                doc["buffer"] = runner.buffer.id
            docs[runner.label] = doc
        return docs

    @contextmanager
    def relisting(self) -> Iterator[None]:
        """A list is under way (start-up, a 410, a handover): its events come in key order, not time order,
        so no sink's floor may rise until it ends, or a fast sink would claim listed events still to come."""
        for runner in self.runners:
            runner.position.pin()
        try:
            yield
        finally:
            for runner in self.runners:
                runner.position.unpin()

    def restore_positions(self, doc: dict[str, Any]) -> None:
        """Take the positions of a checkpoint; call before :meth:`start`. A sink missing from ``doc`` (newly
        configured) starts as on a first start: it has nothing yet.

        A sink's position names its disk buffer. The same buffer (a restart on the same volume) still holds
        what the sink had accepted but not delivered, and resumes from it. Another one (a leader handover, a
        new volume) is not this checkpoint's: what it holds is discarded, and the sink falls back to its
        settled position, so a re-list sends it whatever it had not settled."""
        newest: float | None = None
        for runner in self.runners:
            saved = doc.get(runner.label) if isinstance(doc, dict) else None
            if not isinstance(saved, dict):
                continue
            buffer = runner.buffer
            if buffer is not None and saved.get("buffer") not in (None, buffer.id):
                runner.discard_buffer("the checkpoint was written with another buffer (a handover or a new volume)")
            position = runner.position
            position.restore(saved)
            if position.max_time is not None and (newest is None or position.max_time > newest):
                newest = position.max_time
        self._extend_checks([newest])

    def _extend_checks(self, times: list[float | None]) -> None:
        known = [t for t in times if t is not None]
        if self._check_until is not None:
            known.append(self._check_until.timestamp())
        if known:
            self._check_until = datetime.fromtimestamp(max(known), UTC)

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
