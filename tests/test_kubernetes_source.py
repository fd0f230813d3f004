"""The Kubernetes source against the simulator: fast path, no gap and no duplicate under faults."""

from __future__ import annotations

import os
import stat
import sys
import time
from pathlib import Path

import orjson
import pytest

from eventrouter.errors import ConfigError
from eventrouter.sinkurl import SinkURL
from eventrouter.sources import SourceContext, build_source
from eventrouter.sources import kubernetes as k8s
from eventrouter.sources.k8s_options import parse_settings
from eventrouter.sources.k8s_watch import uid_key
from tests.servers.simulator import Harness, Simulator, wait_for

# ---- options --------------------------------------------------------------------------------------

OPTION_TABLE = [
    # kube-eventer's forms
    ("kubernetes:https://kubernetes.default", dict(host="https://kubernetes.default", in_cluster=True)),
    ("kubernetes:https://kubernetes.default?inClusterConfig=true&insecure=true",
     dict(in_cluster=True, insecure=True)),
    ("kubernetes:?inClusterConfig=false&auth=/etc/kube/config", dict(in_cluster=False, kubeconfig="/etc/kube/config")),
    ("kubernetes:?inClusterConfig=false&localKubeConfig=/root/.kube/config",
     dict(in_cluster=False, kubeconfig="/root/.kube/config")),
    ("kubernetes:https://10.0.0.1:6443?inClusterConfig=false&useServiceAccount=true",
     dict(host="https://10.0.0.1:6443", in_cluster=False, use_service_account=True)),
    ("kubernetes:https://kubernetes.default?inClusterConfig=true&auth=/x", dict(in_cluster=True, kubeconfig=None)),
    ("kubernetes:https://kubernetes.default?useServiceAccount=true&kubeletHttps=true&kubeletPort=10250",
     dict(in_cluster=True, use_service_account=True)),
    # ours
    ("kubernetes:?kubeconfig=/k&context=prod", dict(in_cluster=False, kubeconfig="/k", context="prod")),
    ("kubernetes:?namespaces=a,b&namespaces=c,a", dict(namespaces=["a", "b", "c"])),
    ("kubernetes:?api=events.k8s.io/v1&page_size=50", dict(api="events.k8s.io/v1", page_size=50)),
    ("kubernetes:?stall_timeout=2m&watch_timeout=30", dict(stall_timeout=120.0, watch_timeout=30.0)),
    ("kubernetes:", dict(in_cluster=True, api="v1", page_size=500, stall_timeout=90.0, watch_timeout=300.0)),
    # a repeated key: the first value counts, as in kube-eventer (Go's opts["inClusterConfig"][0])
    ("kubernetes:?inClusterConfig=false&inClusterConfig=true&auth=/a&auth=/b",
     dict(in_cluster=False, kubeconfig="/a")),
    ("kubernetes:?api=events.k8s.io/v1&api=v1&page_size=50&page_size=7", dict(api="events.k8s.io/v1", page_size=50)),
]


@pytest.mark.parametrize(("flag", "expected"), OPTION_TABLE)
def test_options(flag: str, expected: dict) -> None:
    settings = parse_settings(SinkURL.parse(flag, what="--source"))
    for key, value in expected.items():
        assert getattr(settings, key) == value, key


ERROR_TABLE = [
    ("kubernetes:?inClusterConfig=maybe", "option 'inClusterConfig': 'maybe' is not allowed; use true or false"),
    ("kubernetes:?insecure=yes", "option 'insecure'"),
    ("kubernetes:?api=v2", "option 'api': 'v2' is not allowed; use v1 or events.k8s.io/v1"),
    ("kubernetes:?page_size=0", "option 'page_size'"),
    ("kubernetes:?page_size=ten", "option 'page_size'"),
    ("kubernetes:?stall_timeout=fast", "option 'stall_timeout': 'fast' is not allowed; use a duration"),
    ("kubernetes:?watch_timeout=0s", "option 'watch_timeout'"),
    ("kubernetes:?namespaces=", "option 'namespaces'"),
    ("kubernetes:?namespaces=team-a,Team_B", "option 'namespaces': 'Team_B' is not allowed; use namespace names"),
    ("kubernetes:?namespaces=a%2Fb", "option 'namespaces': 'a/b' is not allowed"),
    ("kubernetes:?namespace=a", "unknown option 'namespace'; options: inClusterConfig"),
    ("kubernetes:ftp://host", "ftp:// is not supported"),
]


@pytest.mark.parametrize(("flag", "message"), ERROR_TABLE)
def test_option_errors(flag: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(SinkURL.parse(flag, what="--source"))
    assert str(info.value).startswith("--source=kubernetes")
    assert message in str(info.value)


def test_missing_kubeconfig_and_not_in_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigError, match="kubeconfig /nonexistent does not exist"):
        build_source("kubernetes:?inClusterConfig=false&auth=/nonexistent", SourceContext())
    with pytest.raises(ConfigError, match="inClusterConfig=true but this is not a pod"):
        build_source("kubernetes:?inClusterConfig=true", SourceContext())


# ---- helpers --------------------------------------------------------------------------------------


def start(sim: Simulator, tmp_path: Path, query: str = "", ctx: SourceContext | None = None) -> Harness:
    kubeconfig = sim.write_kubeconfig(tmp_path / "kubeconfig")
    ctx = ctx or SourceContext(checkpoint=f"file:{tmp_path / 'checkpoint.json'}")
    flag = f"kubernetes:?inClusterConfig=false&auth={kubeconfig}" + (f"&{query}" if query else "")
    return Harness(flag, ctx).start()


def add(sim: Simulator, n: int, **fields) -> list[str]:
    return [sim.add_event(**fields)["metadata"]["uid"] for _ in range(n)]


def assert_exactly_once(harness: Harness, expected: set[tuple[str, str]]) -> None:
    keys = harness.sink.keys
    assert len(keys) == len(set(keys)), "an event was delivered twice"
    assert set(keys) == expected


def current_keys(sim: Simulator) -> set[tuple[str, str]]:
    with sim.store.cond:
        return {(u, o["metadata"]["resourceVersion"]) for u, o in sim.store.events.items()}


# ---- fast path ------------------------------------------------------------------------------------


def test_first_start_lists_in_pages_then_watches_from_the_list_rv(tmp_path: Path) -> None:
    with Simulator("builtin") as sim:
        expected = current_keys(sim)
        h = start(sim, tmp_path, "page_size=200")
        wait_for(lambda: len(h.sink.keys) >= len(expected), what="the listed events")
        list_rv = sim.resource_version
        live = add(sim, 3)
        wait_for(lambda: len(h.sink.keys) == len(expected) + 3, what="the live events")
        h.stop()
        assert_exactly_once(h, expected | {(u, sim.store.events[u]["metadata"]["resourceVersion"]) for u in live})
        lists = [r for r in sim.request_log if r.verb == "list"]
        assert [r.query.get("limit") for r in lists] == ["200"] * 7  # 1217 objects in pages of 200
        assert all("continue" in r.query for r in lists[1:]) and "continue" not in lists[0].query
        watch = next(r for r in sim.request_log if r.verb == "watch")
        assert watch.query["resourceVersion"] == list_rv and watch.query["allowWatchBookmarks"] == "true"
        # normalized from the real recorded objects, not from client model objects
        first = h.sink.events[0]
        assert first.raw["metadata"]["uid"] == first.uid and isinstance(first.raw, dict)


def test_repeat_is_a_new_occurrence_invisible_change_and_expiry_are_not(sim: Simulator, tmp_path: Path) -> None:
    h = start(sim, tmp_path)
    wait_for(lambda: h.state.ready, what="ready")
    uid = add(sim, 1)[0]
    wait_for(lambda: len(h.sink.keys) == 1)
    sim.touch(uid)  # MODIFIED, same count/lastTimestamp/message/type/reason
    sim.repeat(uid)  # count 2
    wait_for(lambda: len(h.sink.keys) == 2)
    sim.expire(uid)  # DELETED
    marker = add(sim, 1)[0]
    wait_for(lambda: len(h.sink.keys) == 3)
    h.stop()
    assert h.sink.occurrences == [(uid, 1), (uid, 2), (marker, 1)]
    assert h.state.unchanged_suppressed == 1
    assert uid_key(uid) not in h.source.seen and h.source.seen  # DELETED freed the dedupe memory (its uid only)
    assert h.state.received == {"ADDED": 2, "MODIFIED": 2, "DELETED": 1}


def test_dedupe_memory_is_bounded(sim: Simulator, tmp_path: Path) -> None:
    h = start(sim, tmp_path)
    h.source.seen_cap = 50
    wait_for(lambda: h.state.ready)
    add(sim, 200)
    wait_for(lambda: len(h.sink.keys) == 200)
    h.stop()
    assert len(h.source.seen) <= 51


def test_events_k8s_io_api_gives_the_same_events(sim: Simulator, tmp_path: Path) -> None:
    objs = [o for o in Simulator("builtin").store.events.values()][:50]
    sim.store.add_events(objs)
    core = start(sim, tmp_path / "a")
    v1 = start(sim, tmp_path / "b", "api=events.k8s.io/v1")
    wait_for(lambda: len(core.sink.keys) == 50 and len(v1.sink.keys) == 50)
    add(sim, 1, reason="Unhealthy")
    wait_for(lambda: len(core.sink.keys) == 51 and len(v1.sink.keys) == 51)
    core.stop()
    v1.stop()
    assert [e.to_dict() for e in core.sink.events] == [e.to_dict() for e in v1.sink.events]
    assert v1.sink.events[0].raw["apiVersion"] == "events.k8s.io/v1"
    assert any(r.path == "/apis/events.k8s.io/v1/events" and r.verb == "watch" for r in sim.request_log)


def test_namespaces_option_watches_only_those(sim: Simulator, tmp_path: Path) -> None:
    add(sim, 2, namespace="team-a")
    add(sim, 2, namespace="kube-system")
    h = start(sim, tmp_path, "namespaces=team-a,team-b")
    wait_for(lambda: len(h.sink.keys) == 2)
    add(sim, 1, namespace="team-b")
    add(sim, 3, namespace="kube-system")
    add(sim, 1, namespace="team-a")
    wait_for(lambda: len(h.sink.keys) == 4)
    time.sleep(0.3)
    h.stop()
    assert sorted(e.namespace for e in h.sink.events) == ["team-a", "team-a", "team-a", "team-b"]
    paths = {(r.verb, r.path) for r in sim.request_log if "events" in r.path}
    assert paths == {(v, f"/api/v1/namespaces/{ns}/events") for v in ("list", "watch") for ns in ("team-a", "team-b")}
    doc = orjson.loads((tmp_path / "checkpoint.json").read_bytes())
    assert set(doc["positions"]) == {"team-a", "team-b"}


def test_max_event_age_skips_old_listed_events_on_first_start(tmp_path: Path) -> None:
    with Simulator("builtin") as sim:  # recorded in 2023
        ctx = SourceContext(checkpoint=f"file:{tmp_path / 'c.json'}", max_event_age=3600)
        h = start(sim, tmp_path, ctx=ctx)
        wait_for(lambda: h.state.ready)
        fresh = add(sim, 2)
        wait_for(lambda: len(h.sink.keys) == 2)
        h.stop()
        assert [e.uid for e in h.sink.events] == fresh


# ---- faults: no gap, no duplicate -----------------------------------------------------------------


def test_watch_timeout_rewatches_from_the_last_resource_version(sim: Simulator, tmp_path: Path) -> None:
    h = start(sim, tmp_path, "watch_timeout=1s")
    wait_for(lambda: h.state.ready)
    add(sim, 2)
    wait_for(lambda: h.state.watch_restarts >= 2, what="two server-side watch timeouts")
    add(sim, 2)
    wait_for(lambda: len(h.sink.keys) == 4)
    h.stop()
    assert_exactly_once(h, current_keys(sim))
    watches = [r.query["resourceVersion"] for r in sim.request_log if r.verb == "watch"]
    assert len(watches) >= 3 and [r for r in sim.request_log if r.verb == "list"][1:] == []


def test_error_410_in_stream_relists_without_duplicates_or_gaps(sim: Simulator, tmp_path: Path) -> None:
    h = start(sim, tmp_path)
    wait_for(lambda: h.state.ready)
    sim.faults.gone_after = 2
    add(sim, 6)  # 2 arrive, then ERROR 410; the other 4 must come from the re-list
    wait_for(lambda: len(h.sink.keys) == 6)
    add(sim, 1)
    wait_for(lambda: len(h.sink.keys) == 7)
    h.stop()
    assert h.state.relists == 1
    assert h.state.duplicates_suppressed == 2  # the 2 already forwarded, seen again in the list
    assert_exactly_once(h, current_keys(sim))


def test_http_410_on_watch_relists(sim: Simulator, tmp_path: Path) -> None:
    add(sim, 3)
    sim.faults.http_gone = 1
    h = start(sim, tmp_path)
    wait_for(lambda: h.state.relists == 1)
    add(sim, 2)
    wait_for(lambda: len(h.sink.keys) == 5)
    h.stop()
    assert_exactly_once(h, current_keys(sim))


def test_compaction_while_the_watch_is_down(sim: Simulator, tmp_path: Path) -> None:
    h = start(sim, tmp_path)
    wait_for(lambda: h.state.ready)
    sim.faults.drop_after = 1
    add(sim, 3)
    sim.compact()  # the reconnect's resourceVersion is gone: 410, re-list
    wait_for(lambda: len(h.sink.keys) == 3)
    h.stop()
    assert h.state.relists == 1
    assert_exactly_once(h, current_keys(sim))


def test_connection_reset_mid_line(sim: Simulator, tmp_path: Path) -> None:
    h = start(sim, tmp_path)
    wait_for(lambda: h.state.ready)
    sim.faults.drop_after = 2
    add(sim, 5)
    wait_for(lambda: len(h.sink.keys) == 5)
    h.stop()
    assert h.state.malformed == 0 and h.state.relists == 0 and h.state.watch_restarts >= 1
    assert_exactly_once(h, current_keys(sim))


def test_stalled_connection_is_abandoned(sim: Simulator, tmp_path: Path) -> None:
    h = start(sim, tmp_path, "stall_timeout=1s")
    wait_for(lambda: h.state.ready)
    sim.faults.bookmark_interval = 0  # a real stall: not even bookmarks
    sim.faults.stall_after, sim.faults.stall_seconds = 1, 4
    add(sim, 3)
    wait_for(lambda: len(h.sink.keys) == 3, timeout=10)
    h.stop()
    assert h.state.watch_restarts >= 1
    assert_exactly_once(h, current_keys(sim))


def test_429_and_500_are_retried(sim: Simulator, tmp_path: Path) -> None:
    add(sim, 2)
    sim.faults.errors = [429, 500, 503]
    h = start(sim, tmp_path)
    wait_for(lambda: len(h.sink.keys) == 2)
    h.stop()
    statuses = [r.status for r in sim.request_log if "events" in r.path]
    assert statuses[:4] == [429, 500, 503, 200]
    assert_exactly_once(h, current_keys(sim))


def test_retry_after_is_honoured_and_backoff_has_jitter(sim: Simulator, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(k8s.KubernetesSource, "_sleep", staticmethod(lambda s, halted: slept.append(s)))
    add(sim, 1)
    sim.faults.errors, sim.faults.retry_after = [429, 503], 7
    h = start(sim, tmp_path)
    wait_for(lambda: len(h.sink.keys) == 1)
    h.stop()
    assert slept[:2] == [7, 7]
    delays = [k8s.Backoff().next() for _ in range(20)]
    assert len(set(delays)) > 1 and all(0.25 <= d <= 0.5 for d in delays)
    b = k8s.Backoff()
    assert max(b.next() for _ in range(30)) <= k8s.BACKOFF_MAX


def test_401_without_a_token(sim: Simulator, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kc"
    sim.write_kubeconfig(kubeconfig)
    sim.token = "another"
    h = Harness(f"kubernetes:?inClusterConfig=false&auth={kubeconfig}",
                SourceContext(checkpoint=f"file:{tmp_path / 'c.json'}")).start()
    wait_for(lambda: sum(r.status == 401 for r in sim.request_log) >= 2)
    assert not h.state.ready and h.sink.keys == []
    h.stop()


EXEC_PLUGIN = """
import json, sys
token = open(sys.argv[1]).read().strip()
print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential",
                  "status": {"token": token}}))
"""


def test_exec_plugin_token_is_refreshed_on_401(sim: Simulator, tmp_path: Path) -> None:
    plugin = tmp_path / "plugin.py"
    plugin.write_text(EXEC_PLUGIN)
    token_file = tmp_path / "token"
    token_file.write_text(sim.token or "")
    kubeconfig = tmp_path / "kc"
    sim.write_kubeconfig(kubeconfig)
    config = orjson.loads(kubeconfig.read_bytes())
    config["users"][0]["user"] = {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1",
                                           "command": sys.executable, "args": [str(plugin), str(token_file)],
                                           "interactiveMode": "Never"}}
    kubeconfig.write_bytes(orjson.dumps(config))
    h = Harness(f"kubernetes:?inClusterConfig=false&auth={kubeconfig}&watch_timeout=1s",
                SourceContext(checkpoint=f"file:{tmp_path / 'c.json'}")).start()
    wait_for(lambda: h.state.ready)
    add(sim, 1)
    wait_for(lambda: len(h.sink.keys) == 1)
    sim.token = "rotated"  # the cluster rotates credentials; the plugin now hands out the new token
    token_file.write_text("rotated")
    wait_for(lambda: any(r.status == 401 for r in sim.request_log), what="a reconnect refused")
    add(sim, 1)
    wait_for(lambda: len(h.sink.keys) == 2, timeout=15)
    h.stop()
    assert any(r.status == 401 for r in sim.request_log)
    assert_exactly_once(h, current_keys(sim))


def test_in_cluster_service_account(sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kubernetes.config import incluster_config

    token, ca, ns = tmp_path / "token", tmp_path / "ca.crt", tmp_path / "namespace"
    token.write_text(sim.token or "")
    ca.write_text("unused over http")
    ns.write_text("monitoring")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(sim.port))
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(token))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(ca))
    monkeypatch.setattr("eventrouter.sources.k8s_client.SA_TOKEN", str(token))
    monkeypatch.setattr("eventrouter.sources.kubernetes.SA_NAMESPACE", str(ns))
    add(sim, 2)
    listed_rv = int(sim.resource_version)
    # kube-eventer's form with the URL overriding the in-cluster host (http: the simulator has no TLS)
    h = Harness(f"kubernetes:http://127.0.0.1:{sim.port}", SourceContext()).start()
    wait_for(lambda: len(h.sink.keys) == 2)
    h.stop()
    # in-cluster, the checkpoint defaults to a ConfigMap in the pod's namespace
    cm = sim.store.get_object("ConfigMap", "monitoring", "eventrouter-checkpoint")
    assert int(orjson.loads(cm["data"]["checkpoint.json"])["positions"][""]) >= listed_rv


def test_cli_end_to_end(sim: Simulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import signal
    import threading

    from eventrouter.cli import main

    add(sim, 3, reason="FailedMount")
    kubeconfig = sim.write_kubeconfig(tmp_path / "kc")
    threading.Timer(2.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    code = main([f"--source=kubernetes:?inClusterConfig=false&auth={kubeconfig}", "--sink=log",
                 f"--checkpoint=file:{tmp_path / 'c.json'}", "--healthz-port=0"])
    assert code == 0
    lines = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["reason"] for line in lines] == ["FailedMount"] * 3
    assert stat.S_ISREG(os.stat(tmp_path / "c.json").st_mode)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_tls_with_the_kubeconfig_ca_and_insecure(tmp_path: Path) -> None:
    with Simulator([], tls=True) as sim:
        add(sim, 1)
        h = start(sim, tmp_path / "ca")  # the kubeconfig carries certificate-authority-data
        wait_for(lambda: len(h.sink.keys) == 1)
        h.stop()
        config = orjson.loads((tmp_path / "ca" / "kubeconfig").read_bytes())
        del config["clusters"][0]["cluster"]["certificate-authority-data"]
        (tmp_path / "bare.kc").write_bytes(orjson.dumps(config))
        flag = f"kubernetes:?inClusterConfig=false&auth={tmp_path / 'bare.kc'}"
        refused = Harness(flag, SourceContext(checkpoint="none")).start()
        insecure = Harness(flag + "&insecure=true", SourceContext(checkpoint="none")).start()
        wait_for(lambda: len(insecure.sink.keys) == 1)
        insecure.stop()
        refused.stop()
        assert refused.sink.keys == [] and not refused.state.ready  # an unknown CA is not trusted


def test_resource_versions_are_opaque(tmp_path: Path) -> None:
    with Simulator([], opaque_rvs=True) as sim:
        sim.faults.bookmark_interval = 0.2
        add(sim, 5)
        h = start(sim, tmp_path)
        wait_for(lambda: len(h.sink.keys) == 5)
        sim.faults.gone_after = 1
        add(sim, 20)  # crosses rv-fff -> rv-1000: string order and number order disagree
        wait_for(lambda: len(h.sink.keys) == 25)
        h.stop()
        add(sim, 2)
        again = start(sim, tmp_path)
        wait_for(lambda: len(again.sink.keys) == 2)
        again.stop()
        assert h.state.relists == 1
        keys = h.sink.keys + again.sink.keys
        assert all(rv.startswith("rv-") for _, rv in keys)
        assert len(keys) == len(set(keys)) and set(keys) == current_keys(sim)


def test_an_unexpected_checkpoint_write_error_is_logged_and_the_next_write_happens(
        sim: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    kubeconfig = sim.write_kubeconfig(tmp_path / "kubeconfig")
    target = tmp_path / "checkpoint.json"
    h = Harness(f"kubernetes:?inClusterConfig=false&auth={kubeconfig}", SourceContext(checkpoint=f"file:{target}"))
    checkpoint = h.source.checkpoint
    save, calls = checkpoint.save, []

    def flaky(doc, still_leading=None):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 1:
            raise KeyError("metadata")  # e.g. an API answer without the field the writer reads
        save(doc)

    checkpoint.save = flaky
    h.start()
    add(sim, 2)
    wait_for(lambda: len(h.sink.keys) == 2)
    add(sim, 1)  # a change after the failed write: the housekeeping thread must still be there to write it
    wait_for(lambda: len(h.sink.keys) == 3)
    wait_for(target.exists, timeout=10, what="a checkpoint write after the failed one")
    h.stop()
    assert f"checkpoint file:{target}: cannot write it: KeyError: 'metadata'" in caplog.text


def test_after_a_quiet_spell_the_next_event_is_checkpointed_and_a_stop_is_prompt(
        sim: Simulator, tmp_path: Path) -> None:
    """On a quiet cluster the housekeeping thread sleeps until the next write is due instead of looking
    ten times a second: an event after the quiet spell must still reach the checkpoint within about a
    write interval, and a stop during the quiet must still end the run at once."""
    kubeconfig = sim.write_kubeconfig(tmp_path / "kubeconfig")
    target = tmp_path / "checkpoint.json"
    h = Harness(f"kubernetes:?inClusterConfig=false&auth={kubeconfig}", SourceContext(checkpoint=f"file:{target}"))
    h.start()
    add(sim, 2)
    wait_for(lambda: len(h.sink.keys) == 2)
    wait_for(lambda: target.exists() and orjson.loads(target.read_bytes())["positions"], timeout=10,
             what="the first checkpoint")
    before = orjson.loads(target.read_bytes())["positions"]
    time.sleep(2.5)  # nothing moves: the housekeeping thread is asleep
    assert orjson.loads(target.read_bytes())["positions"] == before
    rv = sim.add_event()["metadata"]["resourceVersion"]
    wait_for(lambda: len(h.sink.keys) == 3)
    wait_for(lambda: orjson.loads(target.read_bytes())["positions"] != before, timeout=5,
             what="the event after the quiet spell in the checkpoint")
    after = orjson.loads(target.read_bytes())["positions"]
    assert set(after.values()) == {rv}
    time.sleep(1.5)  # quiet again
    started = time.monotonic()
    h.stop()
    assert time.monotonic() - started < 3


def test_the_checkpoint_remembers_what_users_saw_only_as_bounded_digests_of_settled_occurrences():
    """No per-uid record in the checkpoint: 8-byte digests of (uid, count, lastTimestamp) of the last
    settled occurrences, capped; a version 1 checkpoint's per-uid record is read and upgraded."""
    import base64
    from dataclasses import replace

    from eventrouter.sources.k8s_checkpoint import SHOWN_CAP, Progress, shown_key
    from eventrouter.sources.k8s_watch import same_version, seen_record, unchanged
    from tests.helpers import make_event

    event = make_event(1, count=3)
    record = seen_record("10", event)
    assert unchanged(record, seen_record("11", event))
    assert not unchanged(record, seen_record("11", replace(event, count=4)))
    assert not unchanged(record, seen_record("11", replace(event, message="other")))
    assert same_version(record, "10") and not same_version(record, "11")
    assert record.bit_length() <= 128  # one int per live Event, not a tuple of strings

    progress = Progress()
    progress.note_entry(1, "", "10", event.uid, (3, event.last_timestamp))
    other = make_event(2)
    progress.note_entry(2, "", "11", "other-uid", (other.count, other.last_timestamp))
    progress.advance(1)  # only the settled one
    assert progress.positions == {"": "10"} and list(progress.shown) == [shown_key(event.uid, 3, event.last_timestamp)]
    for n in range(SHOWN_CAP + 10):
        e = make_event(n)
        progress.note_entry(3 + n, "", str(100 + n), e.uid, (e.count, e.last_timestamp))
    progress.advance(10**9)
    doc = progress.document("s", "v1", [], {"log": {"floor": 1.0}})
    assert len(base64.b64decode(doc["shown"])) == 8 * SHOWN_CAP and "delivered" not in doc
    assert doc["sinks"] == {"log": {"floor": 1.0}} and doc["version"] == 2

    legacy = Progress()
    ts = int(event.last_timestamp.timestamp())
    legacy.load({"version": 1, "positions": {"": "9"}, "delivered": {event.uid: ["9", 3, ts], "bare": ["8"]}})
    assert legacy.positions == {"": "9"} and list(legacy.shown) == [shown_key(event.uid, 3, event.last_timestamp)]
    again = Progress()
    again.load(progress.document("s", "v1", [], {}))
    assert again.shown == progress.shown


# ---- a quiet cluster on a real API server: health and shutdown ---------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> tuple[int, str]:
    import httpx

    try:
        resp = httpx.get(url, timeout=5)
    except httpx.TransportError as exc:
        return 0, type(exc).__name__
    return resp.status_code, resp.text


def test_a_quiet_cluster_stays_live_without_warnings_and_an_unreachable_one_does_not(
        sim: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """No event and no bookmark (a real API server sends none for Events) for longer than the window:
    /healthz stays 200 and nothing is logged above INFO; once the API server is gone, /healthz fails."""
    import logging
    import threading

    from eventrouter.app import RunConfig, run

    caplog.set_level(logging.INFO)
    kubeconfig = sim.write_kubeconfig(tmp_path / "kc")
    port = _free_port()
    config = RunConfig(source=f"kubernetes:?inClusterConfig=false&auth={kubeconfig}&stall_timeout=1s"
                              "&namespaces=a1,d-page",
                       sinks=["log"], context=SourceContext(checkpoint=f"file:{tmp_path / 'c.json'}"),
                       healthz_ip="127.0.0.1", healthz_port=port, healthz_window=2.0)
    stop = threading.Event()
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(run(config, stop)), daemon=True)
    runner.start()
    try:
        wait_for(lambda: _get(f"http://127.0.0.1:{port}/readyz")[0] == 200, what="ready")
        quiet_until = time.monotonic() + 4.5  # more than twice the window, without a single event
        while time.monotonic() < quiet_until:
            assert _get(f"http://127.0.0.1:{port}/healthz") == (200, "ok")
            time.sleep(0.25)
        watches = [r for r in sim.request_log if r.verb == "watch"]
        assert len(watches) >= 6  # each namespace's silent watch was re-opened (stall_timeout=1s), quietly
        noisy = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert noisy == []
        sim.stop()  # the API server goes away: nothing answers any more
        _, body = wait_for(lambda: (lambda a: a if a[0] == 500 else None)(
            _get(f"http://127.0.0.1:{port}/healthz")), timeout=10, what="/healthz to fail")
        assert body.startswith("no answer from the API server on the watch of namespace ")
    finally:
        stop.set()
        runner.join(30)
    assert result == [0]


def test_sigterm_of_an_idle_router_watching_several_namespaces_exits_at_once(sim: Simulator, tmp_path: Path) -> None:
    """Before: one blocked quiet watch per namespace, and SIGTERM waited for --shutdown-timeout (30 s)."""
    import signal
    import subprocess

    add(sim, 2, namespace="a1")
    kubeconfig = sim.write_kubeconfig(tmp_path / "kc")
    namespaces = ["a1", "d-page", "b", "c", "e"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "eventrouter",
         f"--source=kubernetes:?inClusterConfig=false&auth={kubeconfig}&namespaces={','.join(namespaces)}",
         "--sink=log", f"--checkpoint=file:{tmp_path / 'c.json'}", "--healthz-port=0", "--shutdown-timeout=30s"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: {r.path for r in sim.request_log if r.verb == "watch"}
                 == {f"/api/v1/namespaces/{ns}/events" for ns in namespaces}, timeout=20, what="five open watches")
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)  # generous; the old behaviour took the full 30 s
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert len(out.splitlines()) == 2 and "shutdown deadline reached" not in err
