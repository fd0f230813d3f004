"""Leader election on a Lease: one replica delivers; a handover resumes from the ConfigMap checkpoint."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from eventrouter.sources import SourceContext
from eventrouter.sources.k8s_client import ApiClient, load_configuration
from eventrouter.sources.k8s_leader import LeaderElector
from tests.servers.simulator import Harness, Simulator, wait_for

LEASE = ("Lease", "default", "eventrouter")


def replica(sim: Simulator, tmp_path: Path) -> Harness:
    kubeconfig = sim.write_kubeconfig(tmp_path / "kubeconfig")
    ctx = SourceContext(checkpoint="configmap:default/eventrouter-checkpoint", leader_elect=True,
                        leader_elect_lease_duration=2.0, leader_elect_renew_deadline=1.5,
                        leader_elect_retry_period=0.2)
    return Harness(f"kubernetes:?inClusterConfig=false&auth={kubeconfig}", ctx).start()


def leader_of(*replicas: Harness) -> Harness:
    leaders = wait_for(lambda: [r for r in replicas if r.state.leader], what="a leader")
    assert len(leaders) == 1
    return leaders[0]


def add(sim: Simulator, n: int) -> list[str]:
    return [sim.add_event()["metadata"]["uid"] for _ in range(n)]


def delivered(*replicas: Harness) -> list[tuple[str, str]]:
    return [key for r in replicas for key in r.sink.keys]


def current_keys(sim: Simulator) -> set[tuple[str, str]]:
    with sim.store.cond:
        return {(u, o["metadata"]["resourceVersion"]) for u, o in sim.store.events.items()}


def test_exactly_one_of_two_replicas_delivers(sim: Simulator, tmp_path: Path) -> None:
    add(sim, 3)
    a, b = replica(sim, tmp_path), replica(sim, tmp_path)
    leader = leader_of(a, b)
    standby = b if leader is a else a
    add(sim, 2)
    wait_for(lambda: len(leader.sink.keys) == 5)
    assert standby.state.ready and not standby.state.leader
    assert standby.sink.keys == [] and standby.state.received == {}
    lease = sim.store.get_object(*LEASE)
    holder = lease["spec"]["holderIdentity"]
    assert holder == leader.source.elector.identity and holder.startswith(socket.gethostname() + "_")
    assert lease["spec"]["leaseDurationSeconds"] == 2
    a.stop()
    b.stop()


def test_killed_leader_is_replaced_and_the_new_one_resumes_from_the_checkpoint(sim: Simulator,
                                                                               tmp_path: Path) -> None:
    add(sim, 4)
    a, b = replica(sim, tmp_path), replica(sim, tmp_path)
    first = leader_of(a, b)
    second = b if first is a else a
    wait_for(lambda: len(first.sink.keys) == 4)
    first.stop(release=False)  # drained and checkpointed, but the Lease is left to expire
    assert sim.store.get_object(*LEASE)["spec"]["holderIdentity"] == first.source.elector.identity
    during = add(sim, 3)  # nobody is leading: these must not be lost
    wait_for(lambda: second.state.leader, timeout=8, what="the standby to take over")
    wait_for(lambda: len(second.sink.keys) == 3)
    add(sim, 1)
    wait_for(lambda: len(second.sink.keys) == 4)
    second.stop()
    assert [e.uid for e in second.sink.events][:3] == during
    keys = delivered(a, b)
    assert len(keys) == len(set(keys)) == 8 and set(keys) == current_keys(sim)
    assert sim.store.get_object(*LEASE)["spec"]["leaseTransitions"] >= 1


def test_crashed_leader_loses_nothing(sim: Simulator, tmp_path: Path) -> None:
    add(sim, 2)
    a, b = replica(sim, tmp_path), replica(sim, tmp_path)
    first = leader_of(a, b)
    second = b if first is a else a
    wait_for(lambda: len(first.sink.keys) == 2)
    newest = max((rv for _, rv in first.sink.keys), key=int)

    def stored() -> str | None:
        import orjson

        try:
            cm = sim.store.get_object("ConfigMap", "default", "eventrouter-checkpoint")
        except Exception:
            return None
        return orjson.loads(cm["data"]["checkpoint.json"])["positions"].get("")

    wait_for(lambda: int(stored() or 0) >= int(newest), what="a periodic checkpoint after delivery")
    first.kill()  # no final checkpoint, no release
    add(sim, 2)
    # a 2 s lease, then a list: the wait ends as soon as it is done; the limit is for a loaded CI machine
    wait_for(lambda: second.state.leader and len(second.sink.keys) == 2, timeout=30)
    second.stop()
    keys = delivered(a, b)
    assert set(keys) == current_keys(sim)
    assert len(keys) == len(set(keys))  # the checkpoint was written after the last delivery


def test_clean_shutdown_releases_the_lease(sim: Simulator, tmp_path: Path) -> None:
    a = replica(sim, tmp_path)
    wait_for(lambda: a.state.leader)
    a.stop()
    assert sim.store.get_object(*LEASE)["spec"]["holderIdentity"] == ""
    b = replica(sim, tmp_path)
    wait_for(lambda: b.state.leader, timeout=1.5, what="an immediate takeover of a released lease")
    b.stop()


class RacingApi:
    """Lets a rival act between our GET and our write: the write must then lose with 409."""

    def __init__(self, api: ApiClient, rival: Any) -> None:
        self.api, self.rival = api, rival

    def request(self, method: str, path: str, **kw: Any) -> Any:
        resp = self.api.request(method, path, **kw)
        if method == "GET" and self.rival is not None:
            rival, self.rival = self.rival, None
            rival()
        return resp


def test_lost_race_is_a_409_not_two_leaders(sim: Simulator, tmp_path: Path) -> None:
    kubeconfig = sim.write_kubeconfig(tmp_path / "kc")

    def api() -> ApiClient:
        return ApiClient(load_configuration(kubeconfig=str(kubeconfig), context=None, in_cluster_mode=False))

    winner = LeaderElector(api(), "default", "race", lease_duration=2)
    loser = LeaderElector(RacingApi(api(), winner.try_acquire_or_renew), "default", "race", lease_duration=2)
    assert loser.try_acquire_or_renew() is False  # GET said 404, the rival created it, our create got 409
    assert sim.store.get_object("Lease", "default", "race")["spec"]["holderIdentity"] == winner.identity
    # the same on update: a released lease, both read it, the rival writes first
    winner._release()
    again = LeaderElector(RacingApi(api(), winner.try_acquire_or_renew), "default", "race", lease_duration=2)
    assert again.try_acquire_or_renew() is False
    assert [r.status for r in sim.request_log if r.method == "PUT"][-1] == 409
    assert sim.store.get_object("Lease", "default", "race")["spec"]["holderIdentity"] == winner.identity


def test_lease_forbidden_keeps_the_replica_standby_and_says_why(sim: Simulator, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    sim.faults.forbid = ["/leases"]
    add(sim, 1)
    a = replica(sim, tmp_path)
    wait_for(lambda: "HTTP 403 (RBAC: get/create/update on leases needed)" in caplog.text)
    assert not a.state.leader and a.sink.keys == []
    a.stop()
