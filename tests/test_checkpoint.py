"""The checkpoint: only settled events, atomic file writes, ConfigMap, and restarts that neither
repeat nor miss events (also when the stored position is too old)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import orjson
import pytest

from eventrouter import RetryableError
from eventrouter.errors import ConfigError
from eventrouter.sources import SourceContext
from eventrouter.sources.k8s_checkpoint import FileCheckpoint, Progress, parse_checkpoint_flag
from tests.servers.simulator import Collector, Harness, Simulator, wait_for


def run(sim: Simulator, tmp_path: Path, checkpoint: str | None = None, sink: Collector | None = None,
        **ctx: object) -> Harness:
    kubeconfig = sim.write_kubeconfig(tmp_path / "kubeconfig")
    context = SourceContext(checkpoint=checkpoint or f"file:{tmp_path / 'checkpoint.json'}", **ctx)  # type: ignore[arg-type]
    return Harness(f"kubernetes:?inClusterConfig=false&auth={kubeconfig}", context, sink).start()


def add(sim: Simulator, n: int) -> list[str]:
    return [sim.add_event()["metadata"]["uid"] for _ in range(n)]


def rv_of(sim: Simulator, uid: str) -> str:
    return sim.store.events[uid]["metadata"]["resourceVersion"]


# ---- flags ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("flag", "in_cluster", "expected"), [
    (None, False, ("file", ".eventrouter/checkpoint.json")),
    (None, True, ("configmap", "ns1/eventrouter-checkpoint")),
    ("file:/var/lib/er/ck.json", True, ("file", "/var/lib/er/ck.json")),
    ("configmap:monitoring/er", False, ("configmap", "monitoring/er")),
    ("configmap:er", False, ("configmap", "ns1/er")),
    ("none", True, ("none", "")),
])
def test_checkpoint_flag(flag: str | None, in_cluster: bool, expected: tuple[str, str]) -> None:
    assert parse_checkpoint_flag(flag, in_cluster=in_cluster, namespace="ns1") == expected


@pytest.mark.parametrize("flag", ["s3:bucket", "file:", "configmap:", "configmap:ns/"])
def test_checkpoint_flag_errors(flag: str) -> None:
    with pytest.raises(ConfigError, match=r"--checkpoint=.*configmap:NAMESPACE/NAME"):
        parse_checkpoint_flag(flag, in_cluster=False, namespace="default")


# ---- Progress: only settled events move the position ----------------------------------------------

def test_progress_moves_only_up_to_the_settled_seq() -> None:
    from eventrouter.sources.k8s_checkpoint import shown_key
    from tests.helpers import make_event

    a, b, c = make_event(1), make_event(2), make_event(3)
    p = Progress()
    p.note_entry(1, "", None, a.uid, (a.count, a.last_timestamp))  # listed
    p.note_entry(2, "", None, b.uid, (b.count, b.last_timestamp))
    p.note(2, "", "20")  # end of the list
    p.note_entry(3, "", "21", c.uid, (c.count, c.last_timestamp))  # watched
    p.note(3, "", "22")  # DELETED a
    p.advance(1)
    assert p.positions == {} and list(p.shown) == [shown_key(a.uid, 1, a.last_timestamp)]
    p.advance(2)
    assert p.positions == {"": "20"} and len(p.shown) == 2
    p.advance(3)
    assert p.positions == {"": "22"} and len(p.shown) == 3


def test_file_checkpoint_is_written_atomically(tmp_path: Path) -> None:
    store = FileCheckpoint(str(tmp_path / "sub" / "ck.json"))
    assert store.load() is None
    store.save({"positions": {"": "1"}})
    store.save({"positions": {"": "2"}})
    assert store.load() == {"positions": {"": "2"}}
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["ck.json"]  # no temp file left behind
    (tmp_path / "sub" / "ck.json").write_text("{not json")
    assert store.load() is None


# ---- restarts -------------------------------------------------------------------------------------

def test_restart_resumes_without_repeats_and_delivers_what_happened_while_down(sim: Simulator,
                                                                               tmp_path: Path) -> None:
    before = add(sim, 5)
    first = run(sim, tmp_path)
    wait_for(lambda: len(first.sink.keys) == 5)
    add(sim, 1)
    wait_for(lambda: len(first.sink.keys) == 6)
    first.stop()
    doc = orjson.loads((tmp_path / "checkpoint.json").read_bytes())
    assert set(doc["sinks"]) == {"collect"} and doc["server"] == sim.url and "delivered" not in doc

    while_down = add(sim, 3)
    sim.repeat(before[0])  # happened again while we were down: a new occurrence
    sim.touch(before[1])  # an invisible update: not an occurrence
    requests_before = len(sim.request_log)
    second = run(sim, tmp_path)
    wait_for(lambda: len(second.sink.keys) >= 4)
    add(sim, 1)
    wait_for(lambda: len(second.sink.keys) >= 5)
    second.stop()
    got = second.sink.occurrences
    # the watch from the checkpoint replays only what changed after it: nothing listed again
    assert [r.verb for r in sim.request_log[requests_before:] if "events" in r.path] == ["watch"]
    assert got[:4] == [*[(u, 1) for u in while_down], (before[0], 2)]
    assert len(got) == 5 and second.state.unchanged_suppressed == 1


def test_restart_with_a_too_old_position_relists_and_skips_what_was_delivered(sim: Simulator,
                                                                               tmp_path: Path) -> None:
    before = add(sim, 4)
    first = run(sim, tmp_path)
    wait_for(lambda: len(first.sink.keys) == 4)
    first.stop()
    while_down = add(sim, 2)
    sim.repeat(before[0])
    sim.compact()  # the checkpoint's resourceVersion is gone: the watch gets 410
    second = run(sim, tmp_path)
    wait_for(lambda: second.state.relists == 1 and len(second.sink.keys) == 3)
    second.stop()
    expected = [(u, rv_of(sim, u)) for u in [*while_down, before[0]]]
    assert sorted(second.sink.keys) == sorted(expected)
    # recognized as delivered: by what users saw (the checkpoint's "shown") or by the sink's own position
    assert second.state.unchanged_suppressed + second.router.runners[0].stats.relist_skipped == 3


def test_first_start_without_checkpoint_delivers_the_listed_events(sim: Simulator, tmp_path: Path) -> None:
    uids = add(sim, 3)
    h = run(sim, tmp_path)
    wait_for(lambda: len(h.sink.keys) == 3)
    h.stop()
    in_list_order = sorted(uids, key=lambda u: sim.store.events[u]["metadata"]["name"])  # etcd's key order
    assert [e.uid for e in h.sink.events] == in_list_order


class Gate(Collector):
    """A sink that refuses everything until opened."""

    def __init__(self, url, opts) -> None:  # type: ignore[no-untyped-def]
        super().__init__(url, opts)
        self.open_gate = threading.Event()

    def send(self, batch) -> None:  # type: ignore[no-untyped-def]
        if not self.open_gate.is_set():
            raise RetryableError("not yet")
        super().send(batch)


def test_checkpoint_holds_only_settled_events(sim: Simulator, tmp_path: Path) -> None:
    add(sim, 2)
    ok = run(sim, tmp_path)
    wait_for(lambda: len(ok.sink.keys) == 2)
    ok.stop()
    settled = orjson.loads((tmp_path / "checkpoint.json").read_bytes())

    later = add(sim, 3)
    gate = Gate.make("retry_backoff_max=0.2")
    stuck = run(sim, tmp_path, sink=gate)
    wait_for(lambda: stuck.state.received.get("ADDED") == 3, what="the watch to read the new events")
    time.sleep(1.0)  # five checkpoint intervals: nothing settled, so nothing may be written
    from eventrouter.sources.kubernetes import _written_at

    assert stuck.state.checkpoint_written == _written_at(settled)  # the loaded position's age: no write since
    doc = orjson.loads((tmp_path / "checkpoint.json").read_bytes())
    assert doc["positions"] == settled["positions"] and doc["sinks"] == settled["sinks"]
    stuck.kill()  # crash before anything was delivered

    again = run(sim, tmp_path)
    wait_for(lambda: len(again.sink.keys) == 3)
    again.stop()
    assert [e.uid for e in again.sink.events] == later  # at least once: nothing lost


def test_file_checkpoint_of_another_server_is_ignored(sim: Simulator, tmp_path: Path) -> None:
    add(sim, 2)
    (tmp_path / "checkpoint.json").write_bytes(orjson.dumps(
        {"version": 1, "server": "https://elsewhere:6443", "positions": {"": "999999"}, "delivered": {}}))
    h = run(sim, tmp_path)
    wait_for(lambda: len(h.sink.keys) == 2)
    h.stop()
    assert orjson.loads((tmp_path / "checkpoint.json").read_bytes())["server"] == sim.url


def test_configmap_checkpoint_resumes(sim: Simulator, tmp_path: Path) -> None:
    add(sim, 3)
    first = run(sim, tmp_path, checkpoint="configmap:monitoring/er-ck")
    wait_for(lambda: len(first.sink.keys) == 3)
    first.stop()
    cm = sim.store.get_object("ConfigMap", "monitoring", "er-ck")
    assert set(orjson.loads(cm["data"]["checkpoint.json"])["sinks"]) == {"collect"}
    new = add(sim, 2)
    second = run(sim, tmp_path, checkpoint="configmap:monitoring/er-ck")
    wait_for(lambda: len(second.sink.keys) == 2)
    second.stop()
    assert [e.uid for e in second.sink.events] == new
    verbs = {(r.verb, r.path) for r in sim.request_log if "configmaps" in r.path}
    assert verbs == {("get", "/api/v1/namespaces/monitoring/configmaps/er-ck"),
                     ("create", "/api/v1/namespaces/monitoring/configmaps"),
                     ("update", "/api/v1/namespaces/monitoring/configmaps/er-ck")}


def test_checkpoint_none_always_lists(sim: Simulator, tmp_path: Path) -> None:
    add(sim, 2)
    h = run(sim, tmp_path, checkpoint="none")
    wait_for(lambda: len(h.sink.keys) == 2)
    h.stop()
    assert not (tmp_path / "checkpoint.json").exists()


def _endpoints(h: Harness):  # type: ignore[no-untyped-def]
    """/readyz and /metrics of a harness, served as the app serves them."""
    import httpx

    from eventrouter.metrics import serve

    server = serve("127.0.0.1", 0, h.router, h.state)
    base = f"http://127.0.0.1:{server.server_address[1]}"

    def read() -> tuple[int, str, float | None]:
        ready = httpx.get(base + "/readyz")
        age = None
        for line in httpx.get(base + "/metrics").text.splitlines():
            if line.startswith("eventrouter_checkpoint_age_seconds "):
                age = float(line.split()[1])
        return ready.status_code, ready.text, age

    return server, read


def test_a_checkpoint_forbidden_by_rbac_is_loud_and_the_events_still_flow(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """kube-eventer's ServiceAccount kept (the migration guide's "keep args"), without our Role: the events
    are delivered, readiness fails with the exact rule to add, the checkpoint age exists and grows; once
    the rule is granted, the next write succeeds and the pod is ready again."""
    with Simulator([], service_account="kube-system:kube-eventer") as sim:
        sim.faults.forbid = ["/configmaps"]
        uids = add(sim, 2)
        h = run(sim, tmp_path, checkpoint="configmap:kube-system/eventrouter-checkpoint")
        server, read = _endpoints(h)
        try:
            wait_for(lambda: len(h.sink.keys) == 2)
            _, body, age = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(read()),
                                         what="readiness to fail")
            assert body.startswith("checkpoint configmap:kube-system/eventrouter-checkpoint: access denied (HTTP 403")
            for part in ("ServiceAccount kube-system/kube-eventer", "namespace kube-system",
                         "resourceNames: [eventrouter-checkpoint], verbs: [get, update]", "verbs: [create]",
                         "--checkpoint=none"):
                assert part in body
            assert age is not None and age >= 0
            time.sleep(1.1)
            assert read()[2] > age  # its true age: it grows while nothing can be written
            errors = [r for r in caplog.records if r.levelname == "ERROR"]
            assert errors and "ServiceAccount kube-system/kube-eventer" in errors[0].getMessage()
            sim.faults.forbid = []  # the platform engineer adds the Role
            add(sim, 1)
            wait_for(lambda: read()[0] == 200, timeout=40, what="ready again after the next write")
            assert read()[2] < 5
        finally:
            h.stop()
            server.shutdown()
            server.server_close()
        keys = h.sink.keys
        assert len(keys) == len(set(keys)) == 3 and {u for u, _ in keys} >= set(uids)
        doc = orjson.loads(sim.store.get_object("ConfigMap", "kube-system", "eventrouter-checkpoint")["data"][
            "checkpoint.json"])
        assert doc["positions"][""] == max((rv for _, rv in keys), key=int)  # the newest event's position


def test_a_checkpoint_path_that_cannot_be_written_fails_readiness(tmp_path: Path, sim: Simulator) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the checkpoint directory should be")
    add(sim, 1)
    h = run(sim, tmp_path, checkpoint=f"file:{blocker / 'checkpoint.json'}")
    server, read = _endpoints(h)
    try:
        wait_for(lambda: len(h.sink.keys) == 1)
        _, body, age = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(read()), what="not ready")
        assert body.startswith(f"checkpoint file:{blocker / 'checkpoint.json'}: cannot write it: ")
        assert "writable path" in body and age is not None
    finally:
        h.stop()
        server.shutdown()
        server.server_close()


def test_checkpoint_none_has_no_checkpoint_age_and_stays_ready(tmp_path: Path, sim: Simulator) -> None:
    add(sim, 1)
    h = run(sim, tmp_path, checkpoint="none")
    server, read = _endpoints(h)
    try:
        wait_for(lambda: len(h.sink.keys) == 1)
        assert read() == (200, "ok", None)
    finally:
        h.stop()
        server.shutdown()
        server.server_close()


def test_unsettled_positions_are_bounded_while_a_sink_lags(monkeypatch):
    """A sink that never settles must not make the source's memory grow without end."""
    from eventrouter.sources import k8s_checkpoint

    monkeypatch.setattr(k8s_checkpoint, "PENDING_CAP", 100)
    progress = Progress()
    for seq in range(1, 1001):
        progress.note(seq, "", str(seq))
    assert len(progress.pending) == 100
    progress.advance(1000)  # the sink recovers: the position is the newest settled one
    assert progress.positions == {"": "1000"}


def test_the_dedupe_record_does_not_keep_the_message():
    from eventrouter.sources.k8s_watch import seen_key
    from tests.helpers import make_event

    key = seen_key(make_event(1, message="x" * 10_000))
    assert isinstance(key, int) and key.bit_length() <= 64
    assert key != seen_key(make_event(1, message="y" * 10_000))
    assert key == seen_key(make_event(1, message="x" * 10_000))


class _FakeAPI:
    """Answers the ConfigMap calls of ConfigMapCheckpoint from a script."""

    def __init__(self, answers):
        import httpx

        self.answers = [httpx.Response(code, json=body) if not isinstance(body, bytes)
                        else httpx.Response(code, content=body) for code, body in answers]
        self.calls = []

    def request(self, method, path, json=None):
        self.calls.append(method)
        return self.answers.pop(0)


def test_a_deposed_leader_does_not_overwrite_a_newer_checkpoint():
    from eventrouter.sources.k8s_checkpoint import CheckpointError, ConfigMapCheckpoint

    api = _FakeAPI([(409, {"kind": "Status", "code": 409})])
    checkpoint = ConfigMapCheckpoint(api, "ns", "cp")
    checkpoint._rv = "5"
    with pytest.raises(CheckpointError, match="not the leader any more"):
        checkpoint.save({"positions": {}}, still_leading=lambda: False)
    assert api.calls == ["PUT"]  # no GET-and-overwrite

    api = _FakeAPI([(409, {"code": 409}), (200, {"metadata": {"resourceVersion": "9"}}),
                    (200, {"metadata": {"resourceVersion": "10"}})])
    checkpoint = ConfigMapCheckpoint(api, "ns", "cp")
    checkpoint._rv = "5"
    checkpoint.save({"positions": {}}, still_leading=lambda: True)  # still the leader: takes the new rv, writes
    assert api.calls == ["PUT", "GET", "PUT"] and checkpoint._rv == "10"


def test_an_odd_configmap_answer_is_a_checkpoint_error_not_a_crash():
    from eventrouter.sources.k8s_checkpoint import CheckpointError, ConfigMapCheckpoint

    for body in ([1, 2], {"no": "metadata"}, b"<html>proxy error</html>"):
        checkpoint = ConfigMapCheckpoint(_FakeAPI([(200, body)]), "ns", "cp")
        with pytest.raises(CheckpointError, match="not a ConfigMap"):
            checkpoint.load()
