"""Per-sink positions: after a restart or a re-list each sink receives exactly what it had not settled."""

import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import orjson

from eventrouter.router import Router, SinkRunner
from tests.helpers import make_event
from tests.test_router import BlockingSink, RecordingSink, build, wait_for

T0 = datetime(2026, 4, 14, 9, 0, 0, tzinfo=UTC)


def event(n, *, seconds=None, rv=None, count=1):
    """Event n, its time n seconds after T0 (one event per second, as a steady cluster)."""
    when = T0 + timedelta(seconds=n if seconds is None else seconds)
    return make_event(n, last_timestamp=when, first_timestamp=when, count=count,
                      resource_version=str(rv if rv is not None else 1000 + n))


def router_of(**sinks):
    runners = [SinkRunner.build(sink, label=label) for label, sink in sinks.items()]
    return Router(runners), runners


def keys(events):
    return [(e.uid, e.resource_version) for e in events]


def test_after_a_restart_each_sink_gets_exactly_what_it_had_not_settled():
    healthy = build(RecordingSink)
    lagging = build(BlockingSink)
    lagging.release = threading.Event()
    router, _ = router_of(healthy=healthy, lagging=lagging)
    router.start()
    first = [event(i) for i in range(50)]
    for e in first:
        router.dispatch(e)
    assert wait_for(lambda: len(healthy.received) == 50)
    doc = orjson.loads(orjson.dumps(router.positions()))  # what the checkpoint stores
    lagging.release.set()
    router.stop(5.0)

    # the next process: a re-list returns the 50 old events and 10 new ones
    healthy2, lagging2 = build(RecordingSink), build(RecordingSink)
    router2, runners2 = router_of(healthy=healthy2, lagging=lagging2)
    router2.restore_positions(doc)
    router2.start()
    listed = first + [event(i) for i in range(50, 60)]
    for e in listed:
        router2.dispatch(e, relisted=True)
    assert wait_for(lambda: len(healthy2.received) == 10 and len(lagging2.received) == 60)
    router2.stop(5.0)
    assert keys(healthy2.received) == keys(listed[50:])  # no duplicate at the healthy sink
    assert keys(lagging2.received) == keys(listed)  # the lagging sink gets what it never settled
    assert runners2[0].stats.relist_skipped == 50
    assert runners2[1].stats.relist_skipped == 0


def test_a_watch_resumed_from_an_older_position_sends_no_duplicate_to_a_sink_that_had_the_events():
    sink = build(RecordingSink)
    router, _ = router_of(a=sink)
    router.start()
    for i in range(20):
        router.dispatch(event(i))
    assert wait_for(lambda: len(sink.received) == 20)
    router.stop(5.0)
    doc = router.positions()

    sink2 = build(RecordingSink)
    router2, _ = router_of(a=sink2)
    router2.restore_positions(doc)
    router2.start()
    for i in range(10, 30):  # watch events (not relisted) from a position 10 events back
        router2.dispatch(event(i))
    assert wait_for(lambda: len(sink2.received) == 10)
    router2.stop(5.0)
    assert keys(sink2.received) == keys([event(i) for i in range(20, 30)])


def test_a_count_bump_while_down_is_forwarded_once():
    sink = build(RecordingSink)
    router, _ = router_of(a=sink)
    router.start()
    for i in range(10):
        router.dispatch(event(i))
    assert wait_for(lambda: len(sink.received) == 10)
    router.stop(5.0)
    doc = router.positions()

    sink2 = build(RecordingSink)
    router2, _ = router_of(a=sink2)
    router2.restore_positions(doc)
    router2.start()
    bumped = event(3, seconds=100, rv=5000, count=2)  # the same Event, repeated while the router was down
    listed = [event(i) for i in range(10) if i != 3] + [bumped]
    for e in listed:
        router2.dispatch(e, relisted=True)
    router2.dispatch(bumped, relisted=True)  # and listed once more (a second 410)
    assert wait_for(lambda: len(sink2.received) >= 1)
    router2.stop(5.0)
    assert keys(sink2.received) == [(bumped.uid, "5000")]


def test_a_late_event_older_than_what_was_delivered_is_still_sent_after_a_restart():
    sink = build(RecordingSink)
    router, _ = router_of(a=sink)
    router.start()
    for i in range(100, 110):
        router.dispatch(event(i))
    assert wait_for(lambda: len(sink.received) == 10)
    router.stop(5.0)
    doc = router.positions()

    sink2 = build(RecordingSink)
    router2, _ = router_of(a=sink2)
    router2.restore_positions(doc)
    router2.start()
    late = event(7, seconds=60)  # its time is 49 s older than the newest delivered one (clock skew)
    for e in [event(i) for i in range(100, 110)] + [late]:
        router2.dispatch(e, relisted=True)
    assert wait_for(lambda: len(sink2.received) == 1)
    router2.stop(5.0)
    assert keys(sink2.received) == keys([late])


def test_a_relisted_event_still_waiting_in_a_sinks_queue_is_skipped_for_that_sink_only():
    fast = build(RecordingSink)
    slow = build(BlockingSink)
    slow.release = threading.Event()
    router, runners = router_of(fast=fast, slow=slow)
    router.start()
    events = [event(i) for i in range(30)]
    for e in events:
        router.dispatch(e)
    assert wait_for(lambda: len(fast.received) == 30)
    for e in events:  # an in-process 410 re-list
        router.dispatch(e, relisted=True)
    slow.release.set()
    assert wait_for(lambda: len(slow.received) == 30)
    router.stop(5.0)
    assert keys(fast.received) == keys(events)
    assert keys(slow.received) == keys(events)
    assert [r.stats.relist_skipped for r in runners] == [30, 30]


def test_events_dropped_by_the_overflow_policy_are_not_claimed_by_the_position():
    sink = build(BlockingSink, "queue_size=5&overflow=drop_newest")
    sink.release = threading.Event()
    router, runners = router_of(a=sink)  # not started: the queue only fills
    events = [event(i) for i in range(8)]
    for e in events:
        router.dispatch(e)
    assert runners[0].stats.dropped_overflow == 3
    sink.release.set()
    router.start()
    assert wait_for(lambda: len(sink.received) == 5)
    router.stop(5.0)
    doc = router.positions()

    sink2 = build(RecordingSink)
    router2, _ = router_of(a=sink2)
    router2.restore_positions(doc)
    router2.start()
    for e in events:
        router2.dispatch(e, relisted=True)
    assert wait_for(lambda: len(sink2.received) == 3)
    router2.stop(5.0)
    assert keys(sink2.received) == keys(events[5:])


def test_a_newly_configured_sink_starts_as_on_a_first_start():
    old = build(RecordingSink)
    router, _ = router_of(a=old)
    router.start()
    for i in range(5):
        router.dispatch(event(i))
    assert wait_for(lambda: len(old.received) == 5)
    router.stop(5.0)
    doc = router.positions()

    a, b = build(RecordingSink), build(RecordingSink)
    router2, _ = router_of(a=a, b=b)
    router2.restore_positions(doc)
    router2.start()
    for i in range(5):
        router2.dispatch(event(i), relisted=True)
    assert wait_for(lambda: len(b.received) == 5)
    router2.stop(5.0)
    assert a.received == []
    assert keys(b.received) == keys([event(i) for i in range(5)])


def test_positions_stay_small_after_an_hour_of_a_busy_cluster_and_a_large_burst():
    """An hour at 30 events/s, then 100,000 events in one second: the document stays well inside a ConfigMap."""
    sink = build(RecordingSink, "batch_size=1000")
    router, runners = router_of(a=sink, b=build(RecordingSink, "batch_size=1000"))
    position = runners[0].position
    hour = [replace(event(i % 1000, seconds=i / 30), resource_version=str(i)) for i in range(0, 3600 * 30, 7)]
    position.settle(hour)
    router.positions()
    burst = [replace(event(i % 1000, seconds=3600), resource_version=str(10**6 + i)) for i in range(100_000)]
    position.settle(burst)
    runners[1].position.settle(burst)
    size = len(orjson.dumps(router.positions()))
    assert size < 200_000  # the checkpoint's budget is 256 KB, a ConfigMap holds 1 MiB
    assert all(position.holds(e) for e in burst[::997])  # every delivered event is still recognized
    assert not position.holds(event(7, seconds=3601))


def test_position_changed_tells_when_the_checkpoint_needs_writing():
    sink = build(RecordingSink)
    router, _ = router_of(a=sink)
    router.start()
    assert router.position_changed()  # never written
    router.positions()
    assert not router.position_changed()
    router.dispatch(event(1))
    assert wait_for(router.position_changed)
    router.positions()
    assert not router.position_changed()
    router.stop(5.0)


def test_a_relist_right_after_a_large_burst_sends_nothing_twice():
    """20,000 events in the same two seconds, all delivered, then a restart and a re-list of them all."""
    sink = build(RecordingSink, "batch_size=1000&queue_size=100000")
    router, _ = router_of(a=sink)
    router.start()
    burst = [replace(event(i % 1000, seconds=3600 + i // 10_000), resource_version=str(10**6 + i))
             for i in range(20_000)]
    for e in burst:
        router.dispatch(e)
    assert wait_for(lambda: len(sink.received) == 20_000, timeout=30)
    router.stop(5.0)
    doc = orjson.loads(orjson.dumps(router.positions()))

    sink2 = build(RecordingSink)
    router2, runners2 = router_of(a=sink2)
    router2.restore_positions(doc)
    router2.start()
    new = event(5000, seconds=3602)
    for e in [*burst, new]:
        router2.dispatch(e, relisted=True)
    assert wait_for(lambda: len(sink2.received) == 1)
    router2.stop(5.0)
    assert keys(sink2.received) == keys([new])
    assert runners2[0].stats.relist_skipped == 20_000


def test_a_list_out_of_time_order_misses_nothing_at_a_fast_sink():
    """A list comes in key order, not time order. A fast sink settles the newest listed events first; its
    floor must not rise past the older ones the list has still to reach (they would be taken as held),
    nor forget the restored keys of what it had before the restart (they would be sent twice)."""
    sink = build(RecordingSink)
    router, _ = router_of(fast=sink)
    router.start()
    had = [event(i) for i in range(100)]
    for e in had:
        router.dispatch(e)
    assert wait_for(lambda: len(sink.received) == 100)
    router.stop(5.0)
    doc = orjson.loads(orjson.dumps(router.positions()))  # floor at 100 s - GRACE; keys above it

    sink2 = build(RecordingSink)
    router2, runners2 = router_of(fast=sink2)
    router2.restore_positions(doc)
    router2.start()
    newest = [event(i) for i in range(1000, 1400)]  # what happened while it was down, listed first
    older = [event(i) for i in range(100, 150)]  # also new to it, but older: listed last
    with router2.relisting():
        for e in [*had, *newest]:
            router2.dispatch(e, relisted=True)
        assert wait_for(lambda: len(sink2.received) == 400)
        router2.positions()  # a checkpoint computed meanwhile must not move the floor either
        runners2[0].position.cap = 64  # and neither may the key cap (a burst past it raises the floor)
        router2.dispatch(event(1400), relisted=True)
        assert wait_for(lambda: len(sink2.received) == 401)
        time.sleep(1.1)  # the runner's snapshot of the keys it still waits on is renewed each second
        for e in [*older, *had, *newest]:  # and what it settled before the cap dropped its keys: not again
            router2.dispatch(e, relisted=True)
        assert wait_for(lambda: len(sink2.received) == 451)
    runners2[0].position.cap = 4096
    router2.stop(5.0)
    assert sorted(keys(sink2.received)) == sorted(keys([*newest, event(1400), *older]))
    assert runners2[0].stats.relist_skipped == 600  # `had` twice (before and after the newer events), `newest`
    after = orjson.loads(orjson.dumps(router2.positions()))["fast"]
    assert after["floor"] == 1400 + T0.timestamp() - 120  # once the list ended, the floor follows again
