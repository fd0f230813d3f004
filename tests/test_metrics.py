"""/metrics, /healthz, /readyz and the logs of a running router, read over real HTTP.

The sink under test (``faulty``) is registered the way any plugin is: a ``*.dist-info`` directory
with an ``entry_points.txt`` on ``sys.path`` (and on ``PYTHONPATH`` for the CLI subprocess).
"""

from __future__ import annotations

import collections
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import orjson
import pytest

from eventrouter import Event, Option, PermanentError, RetryableError, Sink
from eventrouter.app import RunConfig, run
from eventrouter.config import build_sink
from eventrouter.health import SourceState
from eventrouter.metrics import serve
from eventrouter.router import LATENCY_BUCKETS, Router, SinkRunner
from eventrouter.sources import SourceContext
from tests.helpers import DATA, make_event, real_objects

ROOT = Path(__file__).resolve().parent.parent
EVENTS_FILE = str(DATA / "core-v1.jsonl")
TOKEN = "s3cr3t-t0ken-value"


class WorkerCrash(BaseException):
    """Not an Exception: the router does not retry it, the worker dies (a bug in a sink)."""


class FaultySink(Sink):
    """Test sink: delivers, fails permanently, fails retryably or crashes its worker, as told."""

    name = "faulty"
    options = (
        Option("mode", str, default="ok", choices=("ok", "permanent", "retry", "crash"), help="what send does"),
        Option("token", str, default="", secret=True, help="a credential that must never be logged"),
    )

    def send(self, batch: Sequence[Event]) -> None:
        mode = self.opts["mode"]
        token = self.opts["token"].reveal() if self.opts["token"] else ""
        if mode == "permanent":
            raise PermanentError(f"POST https://hooks.example/send?token={token}: 403 bad token {token}")
        if mode == "retry":
            raise RetryableError(f"POST https://hooks.example/send?token={token}: 503", retry_after=0.01)
        if mode == "crash":
            raise WorkerCrash("boom")


@pytest.fixture
def faulty_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Registers FaultySink under the entry-point group ``eventrouter.sinks``; returns the path entry."""
    dist = tmp_path / "site" / "eventrouter_test_faulty-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: eventrouter-test-faulty\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[eventrouter.sinks]\nfaulty = tests.test_metrics:FaultySink\n")
    monkeypatch.syspath_prepend(str(dist.parent))
    return dist.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(text: str) -> dict[str, float]:
    """``name{labels}`` -> value for every sample line of a Prometheus text page."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def running(faulty_plugin: Path, caplog: pytest.LogCaptureFixture) -> Iterator[tuple[str, threading.Event]]:
    """``eventrouter.app.run`` replaying the 1219 recorded events into three ``faulty`` sinks."""
    caplog.set_level("INFO")
    port = free_port()
    stop = threading.Event()
    config = RunConfig(
        source=f"file:{EVENTS_FILE}",
        sinks=[
            "faulty:?mode=ok&level=Warning&batch_size=50&flush_interval=50ms",
            f"faulty:?mode=permanent&token={TOKEN}",
            "faulty:?mode=retry&queue_size=5&buffer_max_bytes=0",  # memory only: overflow at 5
        ],
        context=SourceContext(),
        healthz_ip="127.0.0.1",
        healthz_port=port,
        shutdown_timeout=1.0,
    )
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(run(config, stop)), daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: _up(base), "the health endpoint")
    yield base, stop
    stop.set()
    thread.join(30)
    assert result == [0]


def _up(base: str) -> bool:
    try:
        return get(base + "/readyz")[0] in (200, 503)
    except OSError:
        return False


def test_metrics_of_a_running_router(running: tuple[str, threading.Event], caplog: pytest.LogCaptureFixture) -> None:
    base, _ = running
    total = len(real_objects())
    by_type = collections.Counter(o.get("type") for o in real_objects())
    metric = lambda: samples(get(base + "/metrics")[1])  # noqa: E731

    def settled() -> bool:
        m = metric()
        ok = (
            m['eventrouter_sink_events_sent_total{sink="faulty"}']
            + m['eventrouter_sink_events_filtered_total{sink="faulty"}']
        )
        return (
            ok == total
            and m['eventrouter_sink_events_failed_total{sink="faulty-2"}'] == total
            and m['eventrouter_sink_events_retried_total{sink="faulty-3"}'] >= 3
        )

    wait_for(settled, "every event to be settled by the first two sinks")
    m = metric()
    assert m['eventrouter_events_received_total{type="ADDED"}'] == total
    # by the Event's type (kube-eventer's eventer_events_{normal,warning}_total): 2 recorded events have none
    assert m['eventrouter_events_routed_total{type="Warning"}'] == by_type["Warning"]
    assert m['eventrouter_events_routed_total{type="Normal"}'] == by_type["Normal"]
    assert m['eventrouter_events_routed_total{type="other"}'] == total - by_type["Warning"] - by_type["Normal"] == 2
    assert m["eventrouter_events_malformed_total"] == 0
    # level=Warning: Warnings sent, Normals filtered; nothing failed or dropped
    assert m['eventrouter_sink_events_sent_total{sink="faulty"}'] == by_type["Warning"]
    assert m['eventrouter_sink_events_filtered_total{sink="faulty"}'] == total - by_type["Warning"]  # 2 have no type
    assert m['eventrouter_sink_events_failed_total{sink="faulty"}'] == 0
    assert m['eventrouter_sink_events_dropped_total{reason="overflow",sink="faulty"}'] == 0
    assert m['eventrouter_sink_queue_depth{sink="faulty"}'] == 0
    # 50 per batch: the histogram counts batches, every bucket at most the count
    batches = m['eventrouter_sink_batch_duration_seconds_count{sink="faulty"}']
    assert batches >= by_type["Warning"] / 50
    assert m['eventrouter_sink_batch_duration_seconds_bucket{le="+Inf",sink="faulty"}'] == batches
    assert m[f'eventrouter_sink_batch_duration_seconds_bucket{{le="{LATENCY_BUCKETS[0]}",sink="faulty"}}'] <= batches
    # permanent failures: every event failed once, none retried
    assert m['eventrouter_sink_events_sent_total{sink="faulty-2"}'] == 0
    assert m['eventrouter_sink_events_retried_total{sink="faulty-2"}'] == 0
    # retried forever with a queue of 5: everything else was dropped as overflow, counted
    dropped = m['eventrouter_sink_events_dropped_total{reason="overflow",sink="faulty-3"}']
    depth = m['eventrouter_sink_queue_depth{sink="faulty-3"}']
    assert depth in (5, 6)  # 5 queued, plus the batch being retried once the worker took one
    assert dropped + depth == total
    assert m['eventrouter_sink_queue_capacity{sink="faulty-3"}'] == 5
    assert m['eventrouter_sink_events_sent_total{sink="faulty-3"}'] == 0
    for label in ("faulty", "faulty-2", "faulty-3"):
        assert m[f'eventrouter_sink_worker_up{{sink="{label}"}}'] == 1
    assert m["eventrouter_leader"] == 1
    assert m["eventrouter_ready"] == 1
    # a finished replay is healthy (no progress expected), and ready
    assert get(base + "/healthz") == (200, "ok")
    assert get(base + "/readyz") == (200, "ok")
    assert get(base + "/nothing")[0] == 404
    # logs: the secret is masked, and 1219 identical failures make one line, not 1219
    messages = [r.getMessage() for r in caplog.get_records("setup") + caplog.records]  # run started in setup
    assert not [m for m in messages if TOKEN in m]
    failed_lines = [m for m in messages if "failed permanently" in m]
    assert len(failed_lines) == 1
    assert "token=***" in failed_lines[0] and "bad token ***" in failed_lines[0]
    assert len([m for m in messages if "queue full" in m]) == 1


def test_no_unbounded_labels(running: tuple[str, threading.Event]) -> None:
    base, _ = running
    wait_for(lambda: "eventrouter_events_received_total{" in get(base + "/metrics")[1], "events")
    page = get(base + "/metrics")[1]
    labels = set()
    for line in page.splitlines():
        if "{" in line and not line.startswith("#"):
            for pair in line[line.index("{") + 1 : line.index("}")].split(","):
                labels.add(pair.split("=", 1)[0])
    assert labels <= {"sink", "type", "reason", "le", "version"}
    # no object, namespace or event name ever shows up in a metric
    assert "kube-system" not in page and "namespace" not in page.replace("namespaces", "")


def _serve(router: Router, state: SourceState, window: float = 600.0) -> Iterator[str]:
    server = serve("127.0.0.1", 0, router, state, window)
    try:
        host, port = server.server_address[:2]
        yield f"http://{host}:{port}"
    finally:
        server.shutdown()
        server.server_close()


def test_source_metrics_watch_checkpoint_and_leader() -> None:
    state = SourceState(watch_restarts=3, relists=2, duplicates_suppressed=7, unchanged_suppressed=4, malformed=1)
    state.count("ADDED")
    state.count("MODIFIED")
    state.count("MODIFIED")
    state.count("WHATEVER")  # a server's invention: counted, under a bounded label
    state.count("Whatever-Else")
    state.leader = False
    for base in _serve(Router([]), state):
        m = samples(get(base + "/metrics")[1])
        assert "eventrouter_checkpoint_age_seconds" not in m  # never written: no made-up age
        state.checkpoint_written = time.time() - 120
        m = samples(get(base + "/metrics")[1])
    assert m['eventrouter_events_received_total{type="ADDED"}'] == 1
    assert m['eventrouter_events_received_total{type="MODIFIED"}'] == 2
    assert m['eventrouter_events_received_total{type="other"}'] == 2
    assert not [k for k in m if "WHATEVER" in k or "Whatever" in k]
    assert m["eventrouter_watch_restarts_total"] == 3
    assert m["eventrouter_watch_relists_total"] == 2
    assert m["eventrouter_events_duplicates_suppressed_total"] == 7
    assert m["eventrouter_events_unchanged_suppressed_total"] == 4
    assert m["eventrouter_events_malformed_total"] == 1
    assert m["eventrouter_leader"] == 0
    assert 120 <= m["eventrouter_checkpoint_age_seconds"] < 3600
    assert m['eventrouter_build_info{version="0.1.0"}'] == 1


def test_readyz_waits_for_the_first_list_unless_standby() -> None:
    state = SourceState()
    for base in _serve(Router([]), state):
        assert get(base + "/readyz") == (503, "waiting for the first list of events")
        assert get(base + "/healthz") == (200, "ok")  # not ready is not dead
        state.leader = False  # a standby replica is ready at once: it only waits for the Lease
        assert get(base + "/readyz") == (200, "ok")
        state.leader = True
        state.ready = True
        assert get(base + "/readyz") == (200, "ok")


def test_healthz_fails_when_the_api_server_did_not_answer_within_the_window() -> None:
    """Liveness is about reaching the API server, not about events: a quiet cluster stays live."""
    state = SourceState(ready=True)
    state.reached("")
    for base in _serve(Router([]), state, window=60.0):
        state.last_progress = time.monotonic() - 3600  # no event for an hour: a quiet cluster
        assert get(base + "/healthz") == (200, "ok")
        state.contact[""] = time.monotonic() - 61  # no answer (no watch re-opened) for 61 s
        status, body = get(base + "/healthz")
        assert status == 500
        assert body.startswith("no answer from the API server on the watch of all namespaces for 61s")
        state.leader = False  # a standby replica does not watch
        assert get(base + "/healthz") == (200, "ok")
        state.leader = True
        state.reached("")  # the watch is re-opened
        assert get(base + "/healthz") == (200, "ok")


def test_healthz_fails_when_a_sink_worker_died(faulty_plugin: Path) -> None:
    good = SinkRunner.build(build_sink("faulty:?mode=ok"), label="faulty")
    bad = SinkRunner.build(build_sink("faulty:?mode=crash"), label="faulty-2")
    router = Router([good, bad])
    router.start()
    state = SourceState(ready=True)
    try:
        for base in _serve(router, state):
            assert get(base + "/healthz") == (200, "ok")
            router.dispatch(make_event(1))
            wait_for(lambda: not bad.alive, "the worker to die")
            assert get(base + "/healthz") == (500, "sink workers not running: faulty-2")
            m = samples(get(base + "/metrics")[1])
            assert m['eventrouter_sink_worker_up{sink="faulty-2"}'] == 0
            assert m['eventrouter_sink_worker_up{sink="faulty"}'] == 1
            assert m['eventrouter_sink_events_sent_total{sink="faulty"}'] == 1
    finally:
        router.stop(1)


def test_json_logs_from_the_cli_mask_secrets_and_aggregate(faulty_plugin: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(faulty_plugin), str(ROOT)]))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "eventrouter",
            f"-source=file:{EVENTS_FILE}",
            "--log-format=json",
            "--healthz-port=0",
            "--sink=faulty:?mode=permanent&token=$FAULTY_TOKEN&queue_size=2000",  # all 1219 in memory: no spill line
        ],
        env=dict(env, FAULTY_TOKEN=TOKEN),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert TOKEN not in proc.stderr + proc.stdout
    lines = [orjson.loads(line) for line in proc.stderr.splitlines()]  # every line is one JSON object
    assert all({"time", "level", "logger", "msg"} <= line.keys() for line in lines)
    assert all(line["time"].endswith("Z") for line in lines)
    failures = [line for line in lines if "failed permanently" in line["msg"]]
    # 1219 failed sends, two lines: the first, and at exit the last one with the count held back (30s window)
    total = len(real_objects())
    assert len(failures) == 2
    assert all(f["level"] == "warning" and f["logger"] == "eventrouter.sinks.faulty" for f in failures)
    assert all("token=***: 403 bad token ***" in f["msg"] for f in failures)
    assert failures[1]["msg"].endswith(f"(the last of {total - 1} similar messages held back)")
    totals = [line["msg"] for line in lines if line["msg"].startswith("sink faulty: sent")]
    assert totals == [f"sink faulty: sent 0, filtered 0, failed {total}, dropped 0 (overflow) 0 (shutdown)"]
    # the flag is logged masked as well
    assert any("token=***" in line["msg"] and line["msg"].startswith("sink faulty:") for line in lines)


def test_throttled_log_aggregates_and_flushes(caplog: pytest.LogCaptureFixture) -> None:
    from eventrouter.logutil import ThrottledLog

    now = [0.0]
    throttled = ThrottledLog(logging.getLogger("eventrouter.test"), 30.0, clock=lambda: now[0])
    caplog.set_level("INFO")
    for n in range(5):
        throttled.log(logging.WARNING, "retry", "send failed, retry %d", n)
    now[0] = 31.0
    throttled.log(logging.WARNING, "retry", "send failed, retry %d", 5)
    throttled.log(logging.WARNING, "retry", "send failed, retry %d", 6)
    throttled.log(logging.WARNING, "other", "tick failed")
    throttled.flush()
    throttled.flush()  # nothing left: no line
    assert [r.getMessage() for r in caplog.records] == [
        "send failed, retry 0",
        "send failed, retry 5 (4 similar messages held back in the last 30s)",
        "tick failed",
        "send failed, retry 6 (the last of 1 similar messages held back)",
    ]


def test_docs_list_every_exported_metric(faulty_plugin: Path) -> None:
    """docs/operations.md's metrics table and /metrics name the same metrics (no stale docs)."""
    state = SourceState(checkpoint_written=time.time())
    state.count("ADDED")
    router = Router([SinkRunner.build(build_sink("faulty:?mode=ok"))])
    for base in _serve(router, state):
        page = get(base + "/metrics")[1]
    exported = {line.split()[2] for line in page.splitlines() if line.startswith("# TYPE")}
    exported = {name + "_total" if f"{name}_total" in page else name for name in exported}
    documented = set(re.findall(r"^\| `(eventrouter_\w+)`", (ROOT / "docs" / "operations.md").read_text(), re.M))
    assert documented == exported


def test_watch_metrics_against_the_simulator(faulty_plugin: Path, tmp_path: Path) -> None:
    """A 410 in the middle of a watch shows as one re-list, and the re-listed events as duplicates, not sends."""
    from eventrouter.simulator import Simulator

    sim = Simulator(list(real_objects()[:20])).start()
    sim.faults.bookmark_interval = 0.2
    port = free_port()
    stop = threading.Event()
    config = RunConfig(
        source=f"kubernetes:?inClusterConfig=false&auth={sim.write_kubeconfig(tmp_path / 'kubeconfig')}",
        sinks=["faulty:?mode=ok"],
        context=SourceContext(checkpoint=f"file:{tmp_path / 'checkpoint.json'}"),
        healthz_ip="127.0.0.1",
        healthz_port=port,
        shutdown_timeout=5.0,
    )
    thread = threading.Thread(target=run, args=(config, stop), daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    metric = lambda: samples(get(base + "/metrics")[1]) if _up(base) else {}  # noqa: E731
    try:
        wait_for(lambda: metric().get('eventrouter_sink_events_sent_total{sink="faulty"}') == 20, "the listed events")
        sim.faults.gone_after = 2  # the open watch gets ERROR 410 after 2 more events
        for _ in range(3):
            sim.add_event()
        wait_for(lambda: metric().get('eventrouter_sink_events_sent_total{sink="faulty"}') == 23, "the new events")
        wait_for(lambda: "eventrouter_checkpoint_age_seconds" in metric(), "a checkpoint")
        m = metric()
        assert m["eventrouter_watch_relists_total"] == 1
        assert m["eventrouter_events_duplicates_suppressed_total"] >= 20  # re-listed, already forwarded
        assert m['eventrouter_events_received_total{type="ADDED"}'] == 23
        assert m["eventrouter_leader"] == 1 and m["eventrouter_ready"] == 1
        assert get(base + "/healthz") == (200, "ok")
    finally:
        stop.set()
        thread.join(30)
        sim.stop()


def test_the_health_server_answers_after_a_quiet_spell_and_stops_at_once() -> None:
    """It sleeps until a connection comes (no poll for a shutdown every half second): a scrape after a
    quiet spell is answered, concurrent ones too, and shutdown() stops it at once, listener closed."""
    from concurrent.futures import ThreadPoolExecutor

    router = Router([])
    server = serve("127.0.0.1", 0, router, SourceState())
    host, port = server.server_address[:2]
    base = f"http://{host}:{port}"
    time.sleep(1.2)  # longer than socketserver's poll interval
    assert get(base + "/healthz") == (200, "ok")
    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(lambda _: get(base + "/healthz")[0], range(8))) == {200}
    started = time.monotonic()
    server.shutdown()
    server.server_close()
    assert time.monotonic() - started < 1
    with pytest.raises(OSError):
        socket.create_connection((host, port), timeout=2).close()
