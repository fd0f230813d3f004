"""Fan-out, isolation, batching, retries, overflow, watermark and shutdown of the router."""

import threading
import time

import pytest

from eventrouter import Event, PartialError, PermanentError, RetryableError, Sink, SinkURL
from eventrouter.router import Router, SinkRunner
from tests.helpers import make_event


class RecordingSink(Sink):
    name = "rec"

    def __init__(self, url, opts):
        super().__init__(url, opts)
        self.received = []
        self.batches = []
        self.closed = 0
        self.lock = threading.Lock()

    def send(self, batch):
        with self.lock:
            self.batches.append(list(batch))
            self.received.extend(batch)

    def close(self):
        self.closed += 1


class BlockingSink(RecordingSink):
    name = "blocking"
    release = None

    def send(self, batch):
        self.release.wait()
        super().send(batch)


class FlakySink(RecordingSink):
    name = "flaky"
    failures = 3

    def send(self, batch):
        if self.failures:
            self.failures -= 1
            raise RetryableError("503 from server", retry_after=0)
        super().send(batch)


class BrokenSink(RecordingSink):
    name = "broken"
    attempts = 0

    def send(self, batch):
        self.attempts += 1
        raise PermanentError("401 bad credentials")


def build(cls, query=""):
    return cls.from_url(SinkURL.parse(f"{cls.name}:?{query}"))


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def run_router(*sinks):
    runners = [SinkRunner.build(s) for s in sinks]
    router = Router(runners)
    router.start()
    return router, runners


def test_a_blocked_sink_does_not_hold_back_another_sink():
    blocked = build(BlockingSink)
    blocked.release = threading.Event()
    fast = build(RecordingSink)
    router, _ = run_router(blocked, fast)
    events = [make_event(i) for i in range(500)]
    for event in events:
        router.dispatch(event)  # returns at once although one sink never answers
    assert wait_for(lambda: len(fast.received) == 500, timeout=5.0)
    assert fast.received == events
    assert blocked.received == []
    blocked.release.set()
    assert router.stop(10)
    assert blocked.received == events


def test_a_sink_failing_three_times_then_recovering_gets_every_event_once():
    flaky = build(FlakySink, "batch_size=10&flush_interval=10ms")
    router, runners = run_router(flaky)
    events = [make_event(i) for i in range(25)]
    for event in events:
        router.dispatch(event)
    assert router.stop(10)
    assert flaky.received == events
    assert runners[0].stats.sent == 25 and runners[0].stats.retried >= 3
    assert runners[0].stats.failed == 0


def test_a_permanently_failing_sink_is_counted_and_does_not_stop_others(caplog):
    broken = build(BrokenSink)
    good = build(RecordingSink)
    router, runners = run_router(broken, good)
    for i in range(5):
        router.dispatch(make_event(i))
    assert router.stop(10)
    assert len(good.received) == 5
    assert broken.attempts == 5  # each event tried once: permanent errors are never retried
    assert runners[0].stats.failed == 5
    assert "failed permanently" in caplog.text and "401 bad credentials" in caplog.text


def test_retries_stop_at_max_retries():
    class AlwaysDown(RecordingSink):
        name = "down"
        attempts = 0

        def send(self, batch):
            self.attempts += 1
            raise RetryableError("connection refused")

    sink = build(AlwaysDown, "max_retries=2&retry_backoff_max=1ms")
    router, runners = run_router(sink)
    router.dispatch(make_event(1))
    assert router.stop(10)
    assert sink.attempts == 3 and runners[0].stats.failed == 1


def test_partial_error_retries_only_the_named_events():
    class Partial(RecordingSink):
        name = "partial"
        first = True

        def send(self, batch):
            if self.first:
                self.first = False
                super().send(batch[:2])
                raise PartialError("bulk: 1 rejected, 1 to retry", retry=[batch[3]], rejected=[batch[2]],
                                   retry_after=0)
            super().send(batch)

    sink = build(Partial, "batch_size=4&flush_interval=1s")
    router, runners = run_router(sink)
    events = [make_event(i) for i in range(4)]
    for event in events:
        router.dispatch(event)
    assert router.stop(10)
    assert sink.received == [events[0], events[1], events[3]]
    assert (runners[0].stats.sent, runners[0].stats.failed) == (3, 1)


def test_batches_fill_up_to_batch_size():
    sink = build(RecordingSink, "batch_size=100&flush_interval=5s")
    gate = threading.Event()
    original = sink.send

    def send(batch):
        gate.wait()
        original(batch)

    sink.send = send
    router, _ = run_router(sink)
    for i in range(250):
        router.dispatch(make_event(i))
    gate.set()
    assert router.stop(10)
    assert [len(b) for b in sink.batches] == [100, 100, 50]


def test_filters_apply_per_sink():
    warnings = build(RecordingSink, "level=Warning")
    everything = build(RecordingSink)
    router, runners = run_router(warnings, everything)
    normal, warning = make_event(1, type="Normal"), make_event(2)
    router.dispatch(normal)
    router.dispatch(warning)
    assert router.stop(10)
    assert warnings.received == [warning] and everything.received == [normal, warning]
    assert runners[0].stats.filtered == 1


@pytest.mark.parametrize(("policy", "kept"), [("drop_oldest", [7, 8, 9]), ("drop_newest", [0, 1, 2])])
def test_overflow_policy_drops_and_counts(policy, kept, caplog):
    sink = build(BlockingSink, f"queue_size=3&overflow={policy}")
    sink.release = threading.Event()
    runner = SinkRunner.build(sink)
    router = Router([runner])  # not started: the queue only fills
    for i in range(10):
        router.dispatch(make_event(i))
    assert runner.stats.dropped_overflow == 7
    assert [e.uid for e in runner.waiting()] == [make_event(i).uid for i in kept]
    assert "queue full" in caplog.text
    sink.release.set()
    router.start()
    assert router.stop(10)
    assert [e.uid for e in sink.received] == [make_event(i).uid for i in kept]


def test_settled_seq_waits_for_the_slowest_sink():
    slow = build(BlockingSink)
    slow.release = threading.Event()
    fast = build(RecordingSink)
    filtered = build(RecordingSink, "level=Warning")
    router, _ = run_router(slow, fast, filtered)
    for i in range(5):
        router.dispatch(make_event(i, type="Normal"))
    assert wait_for(lambda: len(fast.received) == 5)
    assert router.settled_seq() == 0  # the slow sink holds event 1
    slow.release.set()
    assert wait_for(lambda: router.settled_seq() == 5)
    assert router.stop(10)


def test_shutdown_deadline_leaves_undelivered_events_unsettled(caplog):
    stuck = build(BlockingSink)
    stuck.release = threading.Event()
    router, runners = run_router(stuck)
    for i in range(3):
        router.dispatch(make_event(i))
    assert router.stop(0.2) is False
    assert router.settled_seq() == 0  # a restart sends them again
    assert runners[0].stats.dropped_shutdown == 3  # two queued, and one in a send that never returned
    assert "3 events not delivered before the shutdown deadline" in caplog.text
    stuck.release.set()


def test_retry_after_from_the_sink_is_honoured():
    class RateLimited(RecordingSink):
        name = "ratelimited"
        calls = []

        def send(self, batch):
            self.calls.append(time.monotonic())
            if len(self.calls) == 1:
                raise RetryableError("429", retry_after=0.3)
            super().send(batch)

    sink = build(RateLimited, "retry_backoff_max=1ms")
    router, _ = run_router(sink)
    router.dispatch(make_event(1))
    assert router.stop(10)
    assert sink.calls[1] - sink.calls[0] >= 0.3  # not the 1ms backoff cap


def test_close_is_called_once_per_worker_and_secrets_never_reach_logs(caplog):
    from eventrouter import Option

    class Leaky(RecordingSink):
        name = "leaky"
        options = (Option("token", str, secret=True, help="token"),)

        def send(self, batch):
            raise PermanentError(f"POST https://h/send?token={self.opts['token'].reveal()} -> 403")

    sink = build(Leaky, "token=tok-abcdef-123")
    router, _ = run_router(sink)
    router.dispatch(make_event(1))
    assert router.stop(10)
    assert sink.closed == 1
    assert "tok-abcdef-123" not in caplog.text and "token=***" in caplog.text


def test_a_sink_bug_is_retried_and_logged_with_its_type(caplog):
    class Buggy(RecordingSink):
        name = "buggy"
        calls = 0

        def send(self, batch):
            self.calls += 1
            if self.calls == 1:
                raise KeyError("oops")
            super().send(batch)

    sink = build(Buggy, "retry_backoff_max=1ms")
    router, _ = run_router(sink)
    router.dispatch(make_event(1))
    assert router.stop(10)
    assert len(sink.received) == 1 and "KeyError" in caplog.text


def test_a_waiting_worker_wakes_for_a_full_batch_and_for_stop_without_its_flush_interval():
    """The worker sleeps up to flush_interval; a full batch, and shutdown, must not wait that long."""
    sink = build(RecordingSink, "batch_size=10&flush_interval=60s")
    router, runners = run_router(sink)
    assert wait_for(lambda: runners[0]._worker_waiting)
    for i in range(10):
        router.dispatch(make_event(i))
    assert wait_for(lambda: len(sink.received) == 10, timeout=5)  # a full batch goes at once
    for i in range(10, 13):
        router.dispatch(make_event(i))
    time.sleep(0.2)
    assert len(sink.received) == 10  # a partial batch waits for flush_interval...
    started = time.monotonic()
    assert router.stop(10)  # ...or for the shutdown, which sends it at once
    assert time.monotonic() - started < 5
    assert [e.uid for e in sink.received] == [make_event(i).uid for i in range(13)]
    assert router.settled_seq() == 13


class TickingSink(RecordingSink):
    name = "ticking"

    def __init__(self, url, opts):
        super().__init__(url, opts)
        self.ticks = 0

    def tick(self):
        self.ticks += 1


def test_an_idle_worker_sleeps_until_an_event_unless_its_sink_holds_something_back():
    """A quiet cluster: a worker whose sink has no tick() of its own stops waking every flush_interval
    after one idle tick; a sink with its own tick() keeps getting it. The first event after the sleep
    still starts a full flush_interval, so what arrives together is sent together."""
    plain = build(RecordingSink, "batch_size=10&flush_interval=0.05s")
    ticking = build(TickingSink, "flush_interval=0.05s")
    runners = [SinkRunner.build(plain), SinkRunner.build(ticking)]
    woken = []
    original_tick = runners[0]._tick

    def counted_tick():
        woken.append(time.monotonic())
        original_tick()

    runners[0]._tick = counted_tick
    router = Router(runners)
    router.start()
    time.sleep(0.6)  # twelve flush intervals of nothing
    assert len(woken) <= 2
    assert ticking.ticks >= 4
    for i in range(3):
        router.dispatch(make_event(i))
    assert wait_for(lambda: len(plain.received) == 3, timeout=5)
    assert [len(b) for b in plain.batches] == [3]
    assert [e.uid for e in ticking.received] == [make_event(i).uid for i in range(3)]
    assert router.stop(10)
    assert router.settled_seq() == 3


def test_the_route_key_covers_every_filter_option():
    """Router.dispatch remembers filter verdicts per (type, namespace, kind, reason, count): a new filter
    option that reads another field must extend that key (and ROUTE_KEY_FILTERS), or be listed in
    filters.UNKEYED (a sink using it turns the remembered routes off)."""
    from eventrouter.filters import UNKEYED, EventFilter
    from eventrouter.router import ROUTE_KEY_FILTERS

    assert set(EventFilter.__slots__) == ROUTE_KEY_FILTERS | set(UNKEYED)


def test_remembered_routes_give_each_sink_exactly_what_its_filter_accepts():
    from eventrouter.event import Event
    from tests.helpers import real_objects

    queries = ["", "level=Warning", "namespaces=default,kube-system", "kinds=Pod,Node",
               "reasons=BackOff|Failed.*&exclude_namespaces=kube-system",
               "exclude_reasons=^Pull|^Creat|^Start&min_count=2", "exclude_kinds=Node&exclude_namespaces=,",
               "min_count=5"]
    runners = [SinkRunner.build(build(RecordingSink, f"{q}&queue_size=100000".lstrip("&"))) for q in queries]
    router = Router(runners)  # not started: the queues only fill
    assert router._routes is not None
    events = [Event.from_object(o) for o in real_objects() + real_objects("events-k8s-io-v1")]
    events += [replace_count(e, n) for e in events[:200] for n in (2, 4, 5, 9)]
    for event in events * 2:
        router.dispatch(event)
    for runner in runners:
        expected = [e for e in events * 2 if runner.filter.accepts(e)]
        assert runner.waiting() == expected  # decoded again where held encoded: equal
        assert runner.stats.filtered == len(events) * 2 - len(expected)


def replace_count(event, count):
    """The event at another count, its object included (a sink behind by more than a batch holds events
    encoded from their object, as the disk buffer does)."""
    from eventrouter.event import Event

    raw = dict(event.raw)
    raw["count" if "involvedObject" in raw else "deprecatedCount"] = count
    changed = Event.from_object(raw, event.cluster)
    assert changed.count == count
    return changed


def test_a_sink_that_comes_back_is_retried_within_five_seconds_by_default():
    """Issue 15: after an outage delivery resumed 17-41 s late (the backoff had grown to 60 s)."""
    runner = SinkRunner.build(build(RecordingSink))
    assert runner.delivery.retry_backoff_max == 5.0
    waits = [runner._backoff(attempt, None) for attempt in range(1, 60)]
    assert max(waits) <= 5.0 and waits[0] <= 0.5
    assert runner._backoff(3, 30.0) == 30.0  # a server's Retry-After still wins


# ---- the memory window holds a deep backlog encoded (issue 14: at most ~1 KB per held event) ---------------
def enriched_real_events(n):
    """Real Kubernetes objects (some enriched) and hand-made events (no object), interleaved."""
    from eventrouter.event import Event, FrozenDict, Owner
    from tests.helpers import real_objects

    objs = real_objects()
    out = []
    for i in range(n):
        if i % 3 == 2:
            out.append(make_event(i))
            continue
        event = Event.from_object(objs[i % len(objs)], "prod")
        if i % 3 == 1:  # as the enricher sets them
            object.__setattr__(event, "labels", FrozenDict({"app": f"a{i}"}))
            object.__setattr__(event, "owner", Owner("Deployment", "default", f"d{i}"))
        out.append(event)
    return out


def held_backlog(n: int, query: str = "queue_size=5000&batch_size=100",
                 ) -> tuple[BlockingSink, SinkRunner, Router, list[Event]]:
    """n enriched real events dispatched to a runner not started yet (held as a stalled sink holds them);
    the sink blocks until ``sink.release`` is set."""
    sink = build(BlockingSink, query)
    sink.release = threading.Event()
    runner = SinkRunner.build(sink)
    router = Router([runner])
    evs = enriched_real_events(n)
    for e in evs:
        router.dispatch(e)
    return sink, runner, router, evs


def test_a_backlog_deeper_than_a_batch_is_held_encoded_and_delivered_equal_in_order():
    from eventrouter.router import LIVE_TAIL

    sink, runner, router, evs = held_backlog(3000)
    # the next batch and the newest LIVE_TAIL stay Events; everything between is encoded
    assert runner.stats.packed == 3000 - 100 - LIVE_TAIL
    assert sum(h.__class__ is bytes for h in runner._queue) == runner.stats.packed
    assert runner.depth == 3000
    assert runner.waiting() == evs
    # the position's floor counts the encoded events too
    assert runner.oldest_unsettled_time() == min(e.last_timestamp for e in evs).timestamp()
    router.start()
    sink.release.set()
    assert router.stop(10)
    assert sink.received == evs  # equal, in order, none twice
    assert [e.to_dict(raw=True) for e in sink.received] == [e.to_dict(raw=True) for e in evs]
    assert [(e.labels, e.owner) for e in sink.received] == [(e.labels, e.owner) for e in evs]
    assert all(len(b) <= 100 for b in sink.batches)


def test_an_encoded_event_keeps_its_number_in_its_record_only():
    """A held record carries its sequence number; the window keeps no int beside it (32 bytes less per held
    event), and reads the number from the record when that record is the oldest event waiting."""
    sink, runner, router, evs = held_backlog(1000)
    assert runner.stats.packed > 0 and len(runner._seqs) == 1000 - runner.stats.packed
    with runner._lock:  # as if the first batch had been delivered: the oldest waiting event is a record
        for _ in range(100):
            runner._queue.popleft()
            runner._seqs.popleft()
    assert runner._queue[0].__class__ is bytes
    assert runner.oldest_unsettled() == 101 and router.settled_seq() == 100
    router.start()
    sink.release.set()
    assert router.stop(10)
    assert sink.received == evs[100:] and router.settled_seq() == 1000


def test_a_sink_that_keeps_up_holds_no_encoded_event():
    sink = build(RecordingSink, "batch_size=100&flush_interval=10ms")
    router, runners = run_router(sink)
    evs = enriched_real_events(1000)
    for i, e in enumerate(evs):
        router.dispatch(e)
        if i % 100 == 99:
            assert wait_for(lambda i=i: len(sink.received) == i + 1)
    assert router.stop(10)
    assert runners[0].stats.packed == 0
    assert [e for e in sink.received] == evs and all(a is b for a, b in zip(sink.received, evs, strict=True))


def test_a_held_backlog_costs_at_most_1_5_kb_per_event():
    """Real objects as the API server sends them (with managedFields: ~1.1 KB of JSON each); an Event with
    its decoded object costs ~4.7 KB."""
    import gc
    import tracemalloc

    import orjson

    from eventrouter.event import Event
    from tests.helpers import real_objects

    lines = [orjson.dumps(o) for o in real_objects()] * 4
    runner = SinkRunner.build(build(RecordingSink, f"queue_size={len(lines)}&batch_size=100"))
    router = Router([runner])
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for line in lines:
            router.dispatch(Event.from_object(orjson.loads(line)))
        gc.collect()
        per_event = (tracemalloc.get_traced_memory()[0] - before) / len(lines)
    finally:
        tracemalloc.stop()
    assert runner.depth == len(lines)
    assert per_event < 1500, per_event


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest"])
def test_the_overflow_policy_applies_to_encoded_events_too(policy):
    # batch_size 1: 32 Events at the head
    sink, runner, router, evs = held_backlog(1000, f"queue_size=400&overflow={policy}")
    assert runner.stats.dropped_overflow == 600 and runner.stats.packed > 0
    kept = evs[600:] if policy == "drop_oldest" else evs[:400]
    assert runner.waiting() == kept
    assert runner.position.hole == min(e.last_timestamp.timestamp() for e in evs if e not in kept)
    router.start()
    sink.release.set()
    assert router.stop(10)
    assert sink.received == kept


def test_a_relisted_event_held_encoded_is_skipped():
    sink, runner, router, evs = held_backlog(600, "queue_size=5000&batch_size=10")
    assert runner._queue[300].__class__ is bytes
    for e in evs:
        router.dispatch(e, relisted=True)
    assert runner.stats.relist_skipped == 600 and runner.depth == 600
    router.start()
    sink.release.set()
    assert router.stop(10)
    assert sink.received == evs


def test_a_sink_stalled_in_one_send_gets_its_window_encoded_then_delivers_it_equal(monkeypatch):
    import eventrouter.router as router_module
    from eventrouter.router import LIVE_TAIL

    monkeypatch.setattr(router_module, "PACK_AFTER", 0.05)
    sink = build(BlockingSink, "queue_size=5000&batch_size=100")
    sink.release = threading.Event()
    router, runners = run_router(sink)
    runner = runners[0]
    evs = enriched_real_events(2001)
    router.dispatch(evs[0])
    assert wait_for(lambda: runner._inflight)  # the worker is in its first send, which does not return
    for e in evs[1:2000]:
        router.dispatch(e)
    time.sleep(0.1)  # the send has lasted longer than PACK_AFTER
    router.dispatch(evs[2000])  # the next offer encodes the window behind the next batch
    assert runner.stats.packed == 2000 - 100 - LIVE_TAIL
    sink.release.set()
    assert router.stop(10)
    assert sink.received == evs and runner.stats.dropped_overflow == 0


def test_a_slow_but_steady_sink_encodes_nothing():
    class SlowSink(RecordingSink):
        name = "slow"

        def send(self, batch):
            time.sleep(0.01)
            super().send(batch)

    sink = build(SlowSink, "queue_size=5000&batch_size=100&flush_interval=10ms")
    router, runners = run_router(sink)
    evs = enriched_real_events(3000)
    for e in evs:  # far faster than the sink takes them: the window grows to thousands
        router.dispatch(e)
    assert router.stop(30)
    assert runners[0].stats.packed == 0 and sink.received == evs
