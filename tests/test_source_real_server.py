"""The Kubernetes source against a simulator with a real kube-apiserver's defaults (no bookmarks,
compaction every 5 minutes, Event TTL, expired continue tokens): what reaches each sink, exactly.

- a 410 after an hour of 30 events/s, across a restart, with a ConfigMap checkpoint;
- a restart and a leader handover while one sink lags: no duplicate at the others;
- a list slower than etcd's history (an expired continue token).
"""

from __future__ import annotations

import collections
import threading
from pathlib import Path

import orjson
import pytest

from eventrouter import RetryableError
from eventrouter.simulator.store import NotFound
from eventrouter.sources import SourceContext
from tests.servers.simulator import Collector, Harness, Simulator, wait_for


def harness(sim: Simulator, tmp_path: Path, checkpoint: str, sink: Collector | None = None,
            others: tuple = (), query: str = "", data_dir: str | None = None, **ctx: object) -> Harness:
    kubeconfig = sim.write_kubeconfig(tmp_path / "kubeconfig")
    context = SourceContext(checkpoint=checkpoint, **ctx)  # type: ignore[arg-type]
    flag = f"kubernetes:?inClusterConfig=false&auth={kubeconfig}" + (f"&{query}" if query else "")
    return Harness(flag, context, sink, others=others, data_dir=data_dir).start()


def live_keys(sim: Simulator) -> set[tuple[str, str]]:
    with sim.store.cond:
        return {(u, o["metadata"]["resourceVersion"]) for u, o in sim.store.events.items()}


def history_keys(sim: Simulator, after: int = 0) -> list[tuple[str, str]]:
    """Every ADDED/MODIFIED the store recorded after revision ``after`` (what a watch shows)."""
    with sim.store.cond:
        return [(c.obj["metadata"]["uid"], c.obj["metadata"]["resourceVersion"])
                for c in sim.store.history if c.rv > after and c.type != "DELETED"]


def configmap_doc(sim: Simulator, namespace: str, name: str) -> tuple[dict, int]:
    """The checkpoint document in the ConfigMap and its size in bytes ({}, 0 while there is none)."""
    try:
        text = sim.store.get_object("ConfigMap", namespace, name)["data"]["checkpoint.json"]
    except NotFound:
        return {}, 0
    return orjson.loads(text), len(text.encode())


class Gate(Collector):
    """A sink whose receiver is down (every send fails, retryably) until ``up`` is set."""

    def __init__(self, url, opts) -> None:  # type: ignore[no-untyped-def]
        super().__init__(url, opts)
        self.up = threading.Event()

    def send(self, batch) -> None:  # type: ignore[no-untyped-def]
        if not self.up.is_set():
            raise RetryableError("connection refused")
        super().send(batch)


def no_duplicates(keys: list[tuple[str, str]]) -> None:
    repeated = [k for k, n in collections.Counter(keys).items() if n > 1]
    assert not repeated, f"{len(repeated)} events delivered twice, e.g. {repeated[:3]}"


# ---- 410 after an hour of 30 events/s, across a restart ---------------------------------------------

NAMESPACES = ("shop", "payments", "kube-system")


@pytest.mark.timeout(400)
def test_an_hour_of_30_events_a_second_then_a_410_relist_after_a_restart(tmp_path: Path) -> None:
    """The router delivers an hour of a busy cluster (108 000 changes; a quarter are count bumps), stops,
    is down for 10 minutes (two compactions: its position is gone), restarts: the watch gets 410 and the
    whole live set (~80 000 Events) is listed again. Nothing is delivered twice, nothing is missed, and
    the ConfigMap checkpoint stays under 256 KB."""
    checkpoint = "configmap:monitoring/eventrouter-checkpoint"
    with Simulator([], clock_offset=-4300) as sim:
        first = harness(sim, tmp_path, checkpoint, query="page_size=500")
        wait_for(lambda: first.state.ready, what="ready")
        # the hour, a minute at a time: the router keeps up with a real cluster, so no 410 while it runs
        expected_first: list[tuple[str, str]] = []
        for _ in range(60):
            mark = sim.store.rv
            sim.advance(60, rate=30, repeat_share=0.25, namespaces=NAMESPACES)
            expected_first += history_keys(sim, after=mark)  # before compaction forgets them
            target = len(expected_first)
            wait_for(lambda: len(first.sink.events) >= target, timeout=60, what="a minute of events")  # noqa: B023
        assert len(expected_first) == 108_000 and sim.store.compactions >= 11
        first.stop()
        assert first.state.relists == 0
        doc, size = configmap_doc(sim, "monitoring", "eventrouter-checkpoint")
        assert size < 256 * 1024, f"checkpoint of {size} bytes"
        assert "delivered" not in doc and set(doc["sinks"]) == {"collect"}
        stopped_at = int(doc["positions"][""])

        down = sim.advance(600, rate=30, repeat_share=0.25, namespaces=NAMESPACES)
        assert sim.store.floor > stopped_at  # the stored position was compacted away: the watch gets 410
        second = harness(sim, tmp_path, checkpoint, query="page_size=500")
        wait_for(lambda: second.state.relists == 1 and second.state.ready, timeout=120, what="the re-list")
        sim.add_event(namespace="shop")  # and the watch goes on after it
        live = live_keys(sim)
        changed_while_down = {k for k in live if int(k[1]) > stopped_at}
        wait_for(lambda: len(second.sink.events) >= len(changed_while_down), timeout=120, what="the re-listed events")
        second.stop()
        doc, size = configmap_doc(sim, "monitoring", "eventrouter-checkpoint")

    keys = first.sink.keys + second.sink.keys
    no_duplicates(keys)
    assert first.sink.keys == expected_first  # in the watch's order, each change once
    assert set(keys) >= live  # 0 lost: every live Event's current state was delivered
    # what changed while it was down arrived once, with its latest state (bumps collapse in a re-list)
    assert set(second.sink.keys) == changed_while_down
    assert 5_000 < len(changed_while_down) <= down + 1
    assert size < 256 * 1024, f"checkpoint of {size} bytes"


@pytest.mark.timeout(300)
def test_a_relist_in_key_order_misses_nothing_at_a_fast_sink_next_to_a_lagging_one(tmp_path: Path) -> None:
    """A list comes in key order, not time order. After 15 minutes down (a 410), the fast sink settles
    the re-listed events as they come, newest and oldest mixed, past its share of the position keys (two
    sinks: 8,192 each); its floor must not rise past listed events still to come (the benchmark ``relist``
    found 4 to 161 events of the outage lost at the healthy sink). The lagging sink replays its disk buffer
    meanwhile: what it delivered from there, the list must not send it again (it got 1,447 to 3,505 twice
    once the floor was pinned, before the keys the cap drops during a list were kept)."""
    checkpoint = "configmap:monitoring/eventrouter-checkpoint"
    with Simulator([], clock_offset=-1500) as sim:
        data = str(tmp_path / "data")  # the same volume across the restart: the webhook's backlog is on disk
        gate = Gate.make("retry_backoff_max=0.2&max_retries=1000000")
        first = harness(sim, tmp_path, checkpoint, others=(("webhook", gate),), query="page_size=500", data_dir=data)
        wait_for(lambda: first.state.ready, what="ready")
        sim.advance(120, rate=30, repeat_share=0.25, namespaces=NAMESPACES)  # the webhook's receiver is down
        wait_for(lambda: len(first.sink.keys) >= 3600, timeout=60, what="two minutes of events")
        first.stop()
        assert gate.keys == [] and first.router.runners[1].buffer.pending > 3000  # kept on disk for the restart
        stopped_at = int(configmap_doc(sim, "monitoring", "eventrouter-checkpoint")[0]["positions"][""])

        sim.advance(900, rate=30, repeat_share=0.25, namespaces=NAMESPACES)  # down for 15 minutes
        assert sim.store.floor > stopped_at  # compacted: the restart gets 410 and lists everything again
        live = live_keys(sim)
        gate2 = Gate.make("retry_backoff_max=0.2&max_retries=1000000")
        gate2.up.set()
        second = harness(sim, tmp_path, checkpoint, others=(("webhook", gate2),), query="page_size=500",
                         data_dir=data)
        new_to_fast = live - set(first.sink.keys)
        assert len(new_to_fast) > 2 * 8192  # past the fast sink's key cap during the list
        wait_for(lambda: set(second.sink.keys) >= new_to_fast, timeout=120, what="the re-listed events")
        wait_for(lambda: set(gate.keys) | set(gate2.keys) >= live, timeout=120, what="the webhook's events")
        second.stop()

    no_duplicates(first.sink.keys + second.sink.keys)
    assert set(first.sink.keys + second.sink.keys) >= live
    no_duplicates(gate.keys + gate2.keys)


# ---- a lagging sink: restart and handover ----------------------------------------------------------


def test_a_restart_while_one_sink_lags_sends_nothing_twice_to_the_others(sim: Simulator, tmp_path: Path) -> None:
    """A webhook receiver is down; the log/file sink next to it must not get anything twice when the
    router restarts, and the webhook gets everything once it is back."""
    checkpoint = f"file:{tmp_path / 'checkpoint.json'}"
    before = [sim.add_event()["metadata"]["uid"] for _ in range(5)]
    gate = Gate.make("retry_backoff_max=0.2&max_retries=1000")
    first = harness(sim, tmp_path, checkpoint, others=(("webhook", gate),))
    wait_for(lambda: len(first.sink.keys) == 5)
    for _ in range(3):
        sim.add_event()
    sim.repeat(before[0])
    wait_for(lambda: len(first.sink.keys) == 9)
    first.stop()  # the webhook's backlog is not delivered: the checkpoint must not claim it
    assert gate.keys == []

    while_down = [sim.add_event()["metadata"]["uid"] for _ in range(2)]
    gate2 = Gate.make("retry_backoff_max=0.2&max_retries=1000")
    gate2.up.set()  # the receiver is back
    second = harness(sim, tmp_path, checkpoint, others=(("webhook", gate2),))
    wait_for(lambda: len(second.sink.keys) == 2, what="what happened while down")
    after = sim.add_event()["metadata"]["uid"]
    wait_for(lambda: len(second.sink.keys) == 3 and len(gate2.keys) == 11, what="the webhook's backlog")
    second.stop()

    healthy = first.sink.keys + second.sink.keys
    no_duplicates(healthy)
    got = [u for u, _ in second.sink.keys]
    assert sorted(got[:2]) == sorted(while_down) and got[2:] == [after]  # listed (key order), then watched
    # the webhook got every occurrence it had not had, once: the re-list shows the latest of each
    no_duplicates(gate2.keys)
    assert set(gate2.keys) == live_keys(sim)
    assert second.router.runners[0].stats.relist_skipped == 9 - 1  # the healthy sink's own position


def test_a_leader_handover_while_one_sink_lags_sends_nothing_twice_to_the_others(sim: Simulator,
                                                                              tmp_path: Path) -> None:
    checkpoint = "configmap:default/eventrouter-checkpoint"
    election = dict(leader_elect=True, leader_elect_lease_duration=2.0, leader_elect_renew_deadline=1.5,
                    leader_elect_retry_period=0.2)
    for _ in range(4):
        sim.add_event()
    shared = Collector.make()  # both replicas write to the same file: it must not see an event twice
    gates = [Gate.make("retry_backoff_max=0.2&max_retries=1000") for _ in range(2)]
    gates[1].up.set()  # the receiver is back by the time the standby takes over
    a = harness(sim, tmp_path / "a", checkpoint, sink=shared, others=(("webhook", gates[0]),), **election)
    wait_for(lambda: a.state.leader and len(shared.keys) == 4, what="the first leader's deliveries")
    b = harness(sim, tmp_path / "b", checkpoint, sink=shared, others=(("webhook", gates[1]),), **election)
    for _ in range(3):
        sim.add_event()
    wait_for(lambda: len(shared.keys) == 7)
    a.stop()  # a clean handover: drained what it could, checkpointed, released the Lease
    wait_for(lambda: b.state.leader, timeout=8, what="the standby to take over")
    sim.add_event()
    wait_for(lambda: len(shared.keys) == 8 and len(gates[1].keys) == 8, what="the new leader's deliveries")
    b.stop()
    no_duplicates(shared.keys)
    assert set(shared.keys) == live_keys(sim)
    assert gates[0].keys == [] and set(gates[1].keys) == live_keys(sim)  # the lagging sink, exactly once


def test_a_killed_leader_repeats_nothing_written_before_its_last_checkpoint(sim: Simulator, tmp_path: Path) -> None:
    checkpoint = "configmap:default/eventrouter-checkpoint"
    election = dict(leader_elect=True, leader_elect_lease_duration=2.0, leader_elect_renew_deadline=1.5,
                    leader_elect_retry_period=0.2)
    shared = Collector.make()
    gate = Gate.make("retry_backoff_max=0.2&max_retries=1000")
    a = harness(sim, tmp_path / "a", checkpoint, sink=shared, others=(("webhook", gate),), **election)
    wait_for(lambda: a.state.leader)
    for _ in range(5):
        sim.add_event()
    wait_for(lambda: len(shared.keys) == 5)
    # the periodic write (at most a second after the deliveries) holds the healthy sink's position
    newest = max(e.last_timestamp.timestamp() for e in shared.events)
    wait_for(lambda: ((configmap_doc(sim, "default", "eventrouter-checkpoint")[0].get("sinks") or {})
                      .get("collect") or {}).get("max") == newest,
             what="a checkpoint with the healthy sink's position")
    b = harness(sim, tmp_path / "b", checkpoint, sink=shared, others=(("webhook", Gate.make()),), **election)
    a.kill()  # SIGKILL: no final checkpoint, the Lease is left to expire
    sim.add_event()
    wait_for(lambda: b.state.leader and len(shared.keys) == 6, timeout=10, what="the takeover")
    b.stop()
    no_duplicates(shared.keys)
    assert set(shared.keys) == live_keys(sim)


# ---- a list slower than etcd's history --------------------------------------------------------------


def test_an_expired_continue_token_goes_on_with_the_fresh_one_and_misses_nothing(sim: Simulator,
                                                                                tmp_path: Path) -> None:
    for n in range(40):
        sim.add_event(namespace=f"ns-{n % 4}")
    changed: dict[str, str] = {}

    def meanwhile() -> None:
        """Between two pages: an Event bumped and one created before the cut, one after; then compaction."""
        with sim.store.cond:
            first_key = min(sim.store.events.values(), key=lambda o: (o["metadata"]["namespace"],
                                                                        o["metadata"]["name"]))
        changed["bumped"] = sim.repeat(first_key["metadata"]["uid"])["metadata"]["uid"]
        changed["early"] = sim.add_event(namespace="aaa")["metadata"]["uid"]
        changed["late"] = sim.add_event(namespace="zzz")["metadata"]["uid"]
        sim.compact()

    sim.faults.on_continue = [None, meanwhile]  # after the second page
    h = harness(sim, tmp_path, f"file:{tmp_path / 'c.json'}", query="page_size=10")
    wait_for(lambda: set(h.sink.keys) >= live_keys(sim), what="every Event")
    sim.add_event(namespace="ns-1")
    wait_for(lambda: len(h.sink.keys) == 44, what="the watch after the list")
    h.stop()
    no_duplicates(h.sink.keys)
    assert set(h.sink.keys) == live_keys(sim) | {k for k in h.sink.keys if k[0] == changed["bumped"]}
    assert [c for _, c in h.sink.occurrences if _ == changed["bumped"]] == [1, 2]  # the bump, not lost
    lists = [r for r in sim.request_log if r.verb == "list"]
    assert [r.status for r in lists].count(410) == 1
    assert "continue" not in lists[0].query and h.state.relists == 0  # no restart from scratch


def test_a_relist_cut_short_by_a_shutdown_loses_nothing(tmp_path: Path) -> None:
    """A list comes in key order, not time order: a checkpoint written in the middle of one (or at a
    shutdown that cut it short) would let a sink's time floor claim events not listed yet. None is
    written then; the next start lists again."""
    import time

    checkpoint = f"file:{tmp_path / 'checkpoint.json'}"
    with Simulator([], clock_offset=-2400) as sim:
        sim.advance(600, rate=2, namespaces=NAMESPACES)  # events over ten minutes, spread over namespaces
        first = harness(sim, tmp_path, checkpoint, query="page_size=100")
        wait_for(lambda: len(first.sink.events) == 1200)
        first.stop()
        stored = (tmp_path / "checkpoint.json").read_bytes()
        sim.advance(900, rate=2, repeat_share=0.25, namespaces=NAMESPACES)  # down: its position is compacted
        sim.faults.on_continue = [lambda: time.sleep(0.3)] * 5  # a slow list...
        second = harness(sim, tmp_path, checkpoint, query="page_size=100")
        wait_for(lambda: second.state.relists == 1 and len(second.sink.events) >= 150, what="part of the re-list")
        second.stop()  # ...cut short by a shutdown
        assert (tmp_path / "checkpoint.json").read_bytes() == stored  # nothing written for the partial list
        third = harness(sim, tmp_path, checkpoint, query="page_size=100")
        wait_for(lambda: third.state.relists == 1 and not third.source._listing, what="the whole re-list")
        time.sleep(0.5)
        third.stop()
        live = live_keys(sim)
    delivered = set(first.sink.keys) | set(second.sink.keys) | set(third.sink.keys)
    assert delivered >= live  # nothing lost
    no_duplicates(first.sink.keys + third.sink.keys)  # what the cut-short run sent may come again, nothing else
