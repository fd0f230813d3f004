"""The simulator speaks the API server's wire protocol; `eventrouter simulate` and `make demo` run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest

from eventrouter.event import Event
from eventrouter.simulator import Simulator
from eventrouter.simulator.store import Conflict, Store, list_key, restamp
from tests.helpers import real_objects
from tests.servers.simulator import wait_for

AUTH = {"Authorization": "Bearer simulator-token"}


@pytest.fixture
def sim():
    s = Simulator("builtin").start()
    s.faults.bookmark_interval = 0.2
    yield s
    s.stop()


@pytest.fixture
def client(sim: Simulator):
    with httpx.Client(base_url=sim.url, headers=AUTH, timeout=10) as c:
        yield c


def watch_lines(client: httpx.Client, path: str, **params: object) -> list[dict]:
    with client.stream("GET", path, params={"watch": "1", **params}) as resp:
        assert resp.status_code == 200 and resp.headers["transfer-encoding"] == "chunked"
        return [orjson.loads(line) for line in resp.iter_lines() if line]


def test_serves_every_recorded_event(sim: Simulator, client: httpx.Client) -> None:
    unique = {o["metadata"]["uid"] for o in real_objects()}
    body = client.get("/api/v1/events").json()
    assert body["kind"] == "EventList" and len(body["items"]) == len(unique) == len(sim.uids())
    first = real_objects()[0]
    served = next(o for o in body["items"] if o["metadata"]["uid"] == first["metadata"]["uid"])
    assert served["message"] == first["message"] and served["involvedObject"] == first["involvedObject"]


def test_pagination_is_a_consistent_snapshot(sim: Simulator, client: httpx.Client) -> None:
    page = client.get("/api/v1/events", params={"limit": 1000}).json()
    rv = page["metadata"]["resourceVersion"]
    assert len(page["items"]) == 1000 and page["metadata"]["remainingItemCount"] == len(sim.uids()) - 1000
    sim.add_event()  # not part of the snapshot
    rest = client.get("/api/v1/events", params={"limit": 1000, "continue": page["metadata"]["continue"]}).json()
    assert rest["metadata"]["resourceVersion"] == rv and "continue" not in rest["metadata"]
    assert len(page["items"]) + len(rest["items"]) == len(sim.uids()) - 1
    sim.compact()
    expired = client.get("/api/v1/events", params={"limit": 10, "continue": page["metadata"]["continue"]})
    assert expired.status_code == 410 and expired.json()["reason"] == "Expired"


def test_bearer_token_is_required(sim: Simulator) -> None:
    resp = httpx.get(f"{sim.url}/api/v1/events")
    assert resp.status_code == 401 and resp.json()["kind"] == "Status"
    assert httpx.get(f"{sim.url}/api/v1/events", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_watch_streams_changes_and_bookmarks(sim: Simulator, client: httpx.Client) -> None:
    rv = sim.resource_version
    new = sim.add_event(namespace="shop")
    uid = new["metadata"]["uid"]
    sim.repeat(uid)
    sim.expire(uid)
    lines = watch_lines(client, "/api/v1/events", resourceVersion=rv, allowWatchBookmarks="true", timeoutSeconds=1)
    changes = [(line["type"], line["object"].get("count")) for line in lines if line["type"] != "BOOKMARK"]
    assert changes == [("ADDED", 1), ("MODIFIED", 2), ("DELETED", 2)]
    rvs = [int(line["object"]["metadata"]["resourceVersion"]) for line in lines]
    assert rvs == sorted(rvs)
    assert lines[-1]["type"] == "BOOKMARK" and lines[-1]["object"]["metadata"] == {"resourceVersion": str(rvs[-1])}
    quiet = watch_lines(client, "/api/v1/events", resourceVersion=sim.resource_version, timeoutSeconds=1)
    assert quiet == []  # no bookmarks unless asked for


def test_namespaced_watch_and_list(sim: Simulator, client: httpx.Client) -> None:
    rv = sim.resource_version
    sim.add_event(namespace="a")
    sim.add_event(namespace="b")
    lines = watch_lines(client, "/api/v1/namespaces/b/events", resourceVersion=rv, timeoutSeconds=1)
    assert [line["object"]["metadata"]["namespace"] for line in lines] == ["b"]
    items = client.get("/api/v1/namespaces/a/events").json()["items"]
    assert [o["metadata"]["namespace"] for o in items] == ["a"]


def test_events_k8s_io_shape_normalizes_to_the_same_event(sim: Simulator, client: httpx.Client) -> None:
    core = client.get("/api/v1/events").json()["items"]
    v1 = client.get("/apis/events.k8s.io/v1/events").json()
    assert v1["apiVersion"] == "events.k8s.io/v1" and "regarding" in v1["items"][0]
    assert [Event.from_object(o).to_dict() for o in core] == [Event.from_object(o).to_dict() for o in v1["items"]]
    rv = sim.resource_version
    sim.add_event()
    line = watch_lines(client, "/apis/events.k8s.io/v1/namespaces/default/events", resourceVersion=rv,
                       timeoutSeconds=1)[0]
    assert line["object"]["apiVersion"] == "events.k8s.io/v1" and line["object"]["note"].startswith("Back-off")


def test_watch_from_a_compacted_version_sends_error_410(sim: Simulator, client: httpx.Client) -> None:
    old = sim.resource_version
    sim.add_event()
    sim.compact()
    lines = watch_lines(client, "/api/v1/events", resourceVersion=old)
    assert lines == [{"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        # Events are watched from etcd (no watch cache): etcd's compaction message, as kube-apiserver sends it
        "message": "The resourceVersion for the provided watch is too old.", "reason": "Expired", "code": 410}}]


def test_watch_without_resource_version_starts_with_synthetic_added(sim: Simulator, client: httpx.Client) -> None:
    lines = watch_lines(client, "/api/v1/events", timeoutSeconds=1)
    assert len(lines) == len(sim.uids()) and {line["type"] for line in lines} == {"ADDED"}


def test_fault_injection(sim: Simulator, client: httpx.Client) -> None:
    sim.faults.errors, sim.faults.retry_after = [429, 500], 3
    first = client.get("/api/v1/events", params={"limit": 1})
    assert first.status_code == 429 and first.headers["Retry-After"] == "3"
    assert client.get("/api/v1/events", params={"limit": 1}).status_code == 500
    assert client.get("/api/v1/events", params={"limit": 1}).status_code == 200
    sim.faults.http_gone = 1
    with client.stream("GET", "/api/v1/events", params={"watch": "1", "resourceVersion": "1"}) as resp:
        assert resp.status_code == 410
    rv = sim.resource_version
    sim.faults.gone_after = 1
    sim.add_event()
    sim.add_event()
    lines = watch_lines(client, "/api/v1/events", resourceVersion=rv)
    assert [line["type"] for line in lines] == ["ADDED", "ERROR"] and lines[1]["object"]["code"] == 410
    sim.faults.drop_after = 1
    with client.stream("GET", "/api/v1/events", params={"watch": "1", "resourceVersion": rv}) as resp:  # noqa: SIM117
        with pytest.raises(httpx.RemoteProtocolError):
            resp.read()


def test_lease_and_configmap_objects(sim: Simulator, client: httpx.Client) -> None:
    path = "/apis/coordination.k8s.io/v1/namespaces/ops/leases"
    assert client.get(f"{path}/er").status_code == 404
    created = client.post(path, json={"metadata": {"name": "er"}, "spec": {"holderIdentity": "a"}})
    assert created.status_code == 201 and created.json()["kind"] == "Lease"
    assert client.post(path, json={"metadata": {"name": "er"}}).json()["reason"] == "Conflict"
    lease = created.json()
    lease["spec"]["holderIdentity"] = "b"
    assert client.put(f"{path}/er", json=lease).status_code == 200
    assert client.put(f"{path}/er", json=lease).status_code == 409  # stale resourceVersion
    assert client.get(f"{path}/er").json()["spec"]["holderIdentity"] == "b"
    cm = "/api/v1/namespaces/ops/configmaps"
    assert client.put(f"{cm}/x", json={"metadata": {"name": "x"}}).status_code == 404
    assert client.post(cm, json={"metadata": {"name": "x"}, "data": {"k": "v"}}).status_code == 201
    assert client.get(f"{cm}/x").json()["data"] == {"k": "v"}
    verbs = [(r.verb, r.status) for r in sim.request_log if "ops" in r.path]
    assert verbs[:5] == [("get", 404), ("create", 201), ("create", 409), ("update", 200), ("update", 409)]


def test_multiply_restamps_copies(tmp_path: Path) -> None:
    sim = Simulator("builtin", multiply=3)
    objs = list(sim.store.events.values())
    # the first copy keeps the recorded uids (successive states of one uid are one Event); copies get new ones
    assert len(objs) == len({o["metadata"]["uid"] for o in real_objects()}) + 2 * len(real_objects())
    assert len({o["metadata"]["resourceVersion"] for o in objs}) == len(objs)
    assert {o["metadata"]["creationTimestamp"][:4] for o in objs} == {time.strftime("%Y", time.gmtime())}


def test_rate_generates_new_and_repeated_events() -> None:
    with Simulator([], rate=50) as sim:
        wait_for(lambda: len(sim.store.history) >= 20, what="generated events")


def test_kubeconfig_and_request_log_file(sim: Simulator, tmp_path: Path) -> None:
    from kubernetes import client, config

    kubeconfig = sim.write_kubeconfig(tmp_path / "kc")
    api = client.CoreV1Api(config.new_client_from_config(str(kubeconfig)))
    assert len(api.list_event_for_all_namespaces(limit=5).items) == 5  # the official client works too
    # the server logs a request after answering it: wait rather than race the handler thread
    wait_for(lambda: ("list", "/api/v1/events") in {(r.verb, r.path) for r in sim.request_log}, timeout=10,
             what="the list in the request log")


def test_simulate_command(tmp_path: Path) -> None:
    kubeconfig, log = tmp_path / "kc", tmp_path / "requests.log"
    proc = subprocess.Popen([sys.executable, "-m", "eventrouter", "simulate", "--port", "0", "--kubeconfig-out",
                             str(kubeconfig), "--request-log", str(log), "--token", "t0"],
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(kubeconfig.exists, timeout=20, what="the kubeconfig")
        server = orjson.loads(kubeconfig.read_bytes())["clusters"][0]["cluster"]["server"]
        resp = httpx.get(f"{server}/api/v1/events", params={"limit": 2}, headers={"Authorization": "Bearer t0"})
        assert resp.status_code == 200 and len(resp.json()["items"]) == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    assert "1217 events at http://127.0.0.1:" in proc.stderr.read()
    assert log.read_text() == "list GET /api/v1/events 200\n"


def test_make_demo_shows_events_and_stops_by_itself() -> None:
    env = {**os.environ, "DEMO_SECONDS": "3"}
    done = subprocess.run([sys.executable, "-m", "eventrouter.demo"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) >= 1217
    # listed in etcd's key order (namespace/name), as a real API server lists
    # with the owning workload: the demo runs with --enrich=labels,owner and a warm cache
    assert ("Pod/message-container-creating-failed-mount/crashpod-f9b59484-7828f (Deployment crashpod) Scheduled"
            in done.stdout)
    assert "Pod/ci/busybox Pulling" in lines[0]
    assert "received SIGINT: stopping the watch" in done.stderr


@pytest.mark.parametrize(("content", "args", "message"), [
    (b'{"metadata": {}}\n{"bad json\n', [], "--events EVENTS: line 2: not JSON"),
    (b"[1, 2]\n", [], "--events EVENTS: line 1: not an Event object"),
    (b'{"metadata": {"uid": "a", "namespace": "ns", "name": "e.1"}}\n'
     b'{"metadata": {"uid": "b", "namespace": "ns", "name": "e.1"}}\n', [],
     'events "e.1" already exists in namespace "ns" (uid a; this one is uid b)'),
    (b'{"metadata": {}}\n', ["--errors", "429,abc"], "'429,abc' is not a comma-separated list of HTTP statuses"),
    (b'{"metadata": {}}\n', ["--errors", "42"], "HTTP statuses are 100 to 599"),
])
def test_simulate_bad_input_is_one_clear_line_and_exit_2(tmp_path: Path, capsys, content, args, message) -> None:
    from eventrouter.simulator.cli import main as simulate

    events = tmp_path / "events.jsonl"
    events.write_bytes(content)
    try:
        code = simulate(["--port", "0", "--events", str(events), *args])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and message.replace("EVENTS", str(events)) in err and "Traceback" not in err


# ---- real kube-apiserver v1.36 behaviour, the simulator's defaults --------------------------------


@pytest.fixture
def real():
    """A simulator at its defaults (no bookmarks), with a few Events."""
    s = Simulator([]).start()
    for n in range(5):
        s.add_event(namespace=f"ns-{n % 2}")
    yield s
    s.stop()


def test_a_quiet_event_watch_sends_nothing_not_even_bookmarks(real: Simulator) -> None:
    with httpx.Client(base_url=real.url, headers=AUTH, timeout=10) as c:
        started = time.monotonic()
        lines = watch_lines(c, "/api/v1/events", resourceVersion=real.resource_version,
                            allowWatchBookmarks="true", timeoutSeconds=1)
        assert lines == [] and time.monotonic() - started >= 1  # an empty stream, ended by the timeout
        real.faults.bookmark_interval = 0.2  # bookmarks only when a test asks for them
        lines = watch_lines(c, "/api/v1/events", resourceVersion=real.resource_version,
                            allowWatchBookmarks="true", timeoutSeconds=1)
        assert lines and {line["type"] for line in lines} == {"BOOKMARK"}


def test_compaction_every_five_minutes_makes_older_versions_410() -> None:
    with Simulator([]) as sim, httpx.Client(base_url=sim.url, headers=AUTH, timeout=10) as c:
        old = sim.resource_version
        sim.advance(299, rate=1)  # 299 events in under five minutes: nothing compacted yet
        assert sim.store.compactions == 0
        assert [line["type"] for line in watch_lines(c, "/api/v1/events", resourceVersion=old, timeoutSeconds=1)
                ] == ["ADDED"] * 299
        mark = sim.resource_version
        sim.advance(2)  # the first tick compacts to the revision seen at start-up (the previous tick)
        assert sim.store.compactions == 1
        sim.advance(300)  # the second tick compacts to the revision seen at the first: `old` is gone
        assert sim.store.compactions == 2 and sim.store.floor == int(mark)
        watch = watch_lines(c, "/api/v1/events", resourceVersion=old, timeoutSeconds=1)
        assert watch == [{"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "The resourceVersion for the provided watch is too old.", "reason": "Expired", "code": 410}}]
        listed = c.get("/api/v1/events", params={"resourceVersion": old, "limit": 10})
        assert listed.status_code == 410 and listed.json()["reason"] == "Expired"
        assert c.get("/api/v1/events", params={"resourceVersion": mark, "limit": 10}).status_code == 200


def test_events_expire_one_hour_after_their_last_write() -> None:
    with Simulator([], compaction_interval=0) as sim, httpx.Client(base_url=sim.url, headers=AUTH, timeout=10) as c:
        quiet = sim.add_event()["metadata"]["uid"]
        busy = sim.add_event()["metadata"]["uid"]
        sim.advance(1800)
        sim.repeat(busy)  # a write restarts the TTL
        rv = sim.resource_version
        sim.advance(1801)
        assert sim.uids() == [busy]
        lines = watch_lines(c, "/api/v1/events", resourceVersion=rv, timeoutSeconds=1)
        assert [(line["type"], line["object"]["metadata"]["uid"]) for line in lines] == [("DELETED", quiet)]


def test_an_hour_of_30_events_a_second_runs_in_seconds() -> None:
    with Simulator([], clock_offset=-3600) as sim:  # the past hour, ending now
        started = time.monotonic()
        made = sim.advance(3600, rate=30, repeat_share=0.25)
        assert made == 108_000 and time.monotonic() - started < 120  # a generous bound: not a benchmark
        with sim.store.cond:  # real time goes on expiring the oldest
            objs = list(sim.store.events.values())
        stamps = sorted(Event.from_object(o).last_timestamp.timestamp() for o in objs)
        now = time.time()
        assert abs(stamps[0] - (now - 3600)) < 60 and abs(stamps[-1] - now) < 60  # spread over the past hour
        assert 70_000 < len(sim.uids()) < 81_000  # 3/4 are new Events; those of the first seconds expired
        assert sim.store.compactions == 12


def test_an_expired_continue_token_gets_410_with_a_fresh_token(real: Simulator) -> None:
    with httpx.Client(base_url=real.url, headers=AUTH, timeout=10) as c:
        first = c.get("/api/v1/events", params={"limit": 2}).json()
        listed = [o["metadata"]["name"] for o in first["items"]]
        late = real.add_event(namespace="ns-9")  # after the cut in key order
        early = real.add_event(namespace="ns-0")  # may sort before or after the cut
        real.compact()
        expired = c.get("/api/v1/events", params={"limit": 2, "continue": first["metadata"]["continue"]})
        body = expired.json()
        assert expired.status_code == 410 and body["reason"] == "Expired" and body["code"] == 410
        assert body["message"].startswith("The provided continue parameter is too old to display a consistent "
                                          "list result")
        fresh = body["metadata"]["continue"]
        names: list[str] = []
        token, rvs = fresh, set()
        while token:
            page = c.get("/api/v1/events", params={"limit": 2, "continue": token}).json()
            names += [o["metadata"]["name"] for o in page["items"]]
            rvs.add(page["metadata"]["resourceVersion"])
            token = page["metadata"].get("continue")
        assert rvs == {real.resource_version}  # the rest of the list, at the newest revision
        assert not set(names) & set(listed)  # it continues after the cut, it does not start over
        assert late["metadata"]["name"] in names
        keys = [f"{o['metadata']['namespace']}/{o['metadata']['name']}" for o in first["items"]]
        early_key = f"ns-0/{early['metadata']['name']}"
        assert (early["metadata"]["name"] in names) == (early_key > keys[-1])


def test_terminate_closes_the_listener_at_once_and_keeps_open_watches(real: Simulator) -> None:
    rv = real.resource_version
    got: list[dict] = []
    with httpx.Client(base_url=real.url, headers=AUTH, timeout=10) as c, \
            c.stream("GET", "/api/v1/events", params={"watch": "1", "resourceVersion": rv}) as resp:
        assert resp.status_code == 200
        real.terminate(grace=1.5)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{real.url}/version", headers=AUTH)
        real.add_event()
        started = time.monotonic()
        got = [orjson.loads(line) for line in resp.iter_lines() if line]
        assert 1.0 < time.monotonic() - started < 5  # the open watch streamed on until the grace ended
    assert [line["type"] for line in got] == ["ADDED"]


def test_a_forbidden_answer_names_the_service_account_verb_and_resource() -> None:
    with Simulator([], service_account="kube-system:kube-eventer") as sim:
        sim.faults.forbid = ["/configmaps"]
        resp = httpx.get(f"{sim.url}/api/v1/namespaces/kube-system/configmaps/eventrouter-checkpoint", headers=AUTH)
        assert resp.status_code == 403 and resp.json()["message"] == (
            'configmaps "eventrouter-checkpoint" is forbidden: User "system:serviceaccount:kube-system:kube-eventer" '
            'cannot get resource "configmaps" in API group "" in the namespace "kube-system"')


def test_a_live_events_name_is_unique_as_on_a_real_api_server() -> None:
    pool = real_objects()[:50]
    first, second = restamp(pool, 2, True)[50:], restamp(pool, 2, True)[50:]
    assert not {list_key(o) for o in first} & {list_key(o) for o in second}  # copies made apart never clash
    store = Store()
    store.add_events(first + second)
    clash = {**second[0], "metadata": {**second[0]["metadata"], "uid": "another-uid"}}
    with pytest.raises(Conflict, match="already exists"):
        store.add_event(clash)  # kube-apiserver: 409 AlreadyExists; a paged list would skip one of the two
    store.expire(second[0]["metadata"]["uid"])
    assert store.add_event(clash)["metadata"]["uid"] == "another-uid"  # the name is free once it expired
