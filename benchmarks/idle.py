"""Idle cost: RSS and CPU of a router process over 60 s at 10 events/s (a quiet cluster).

The router runs as ``python -m eventrouter`` in its own process (so only its own memory and CPU are
measured) against the simulator child, which releases 10 fresh events every second into the watch.
CPU is the process's user+system time over the measured window (after start-up and the first list);
RSS is read from /proc every second (the figure is the last one; the peak is reported too).

Two configurations:

- ``idle-log-sink``: ``--sink=log`` (stdout to /dev/null);
- ``idle-all-sinks``: the eight built-in sinks of kube-eventer's set, each writing to a server running
  here (log, dingtalk, wechat, webhook, kafka, elasticsearch, mysql, influxdb, s3: tansu, MariaDB,
  InfluxDB 1.x, moto, the tests' fake DingTalk/WeCom/Elasticsearch servers and a keep-alive receiver).

Delivery is checked from the router's own ``/metrics``: the events each sink sent are reported.

With ``KUBE_EVENTER=<path to a kube-eventer binary>`` (none is shipped or built here), ``idle-kube-eventer``
measures kube-eventer the same way, side by side: ``--sink=log`` at its default ``--frequency`` (30 s),
against a simulator child without a token (its client-go sends a kubeconfig's token only over TLS); the
events it exported are summed from its own "Exporting N events" lines.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from benchmarks._common import SimulatorChild, proc_cpu_s, proc_rss_mb, proc_status, report, stop_router

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn_ready(sim: SimulatorChild, flags: list[str], port: int) -> subprocess.Popen[bytes]:
    """The router as its own process against the simulator child, once its /readyz answers 200."""
    argv = [sys.executable, "-m", "eventrouter", f"--source={sim.source_flag()}", *flags,
            "--healthz-ip=127.0.0.1", f"--healthz-port={port}", f"--checkpoint=file:{sim.dir}/checkpoint.json"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=sim.dir,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the router did not get ready: {proc.stderr.read().decode()[-2000:]}"
                               if proc.stderr else "the router did not get ready")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        time.sleep(0.1)


@contextlib.contextmanager
def _all_sink_flags() -> Iterator[list[str]]:
    """Every server started here; yields one --sink flag per built-in sink of kube-eventer's set."""
    from benchmarks._servers import KeepAliveReceiver
    from benchmarks.sinks import influxdb_target, kafka_target, mysql_target, s3_target
    from tests.servers.fake_dingtalk import FakeDingTalk
    from tests.servers.fake_elasticsearch import FakeElasticsearch
    from tests.servers.fake_wecom import FakeWeCom

    with contextlib.ExitStack() as stack:
        kafka = stack.enter_context(kafka_target())
        mysql = stack.enter_context(mysql_target())
        influx = stack.enter_context(influxdb_target())
        s3 = stack.enter_context(s3_target())
        receiver = stack.enter_context(KeepAliveReceiver())
        dingtalk = stack.enter_context(FakeDingTalk(rate_limit=1000))
        wecom = stack.enter_context(FakeWeCom(rate_limit=1000))
        es = FakeElasticsearch().start()
        stack.callback(es.stop)
        yield [
            "--sink=log",
            f"--sink=dingtalk:{dingtalk.url}?access_token={dingtalk.token}",
            f"--sink=wechat:?corp_id={wecom.corp_id}&corp_secret={wecom.corp_secret}&agent_id={wecom.agent_id}"
            f"&api_base={wecom.base}",
            f"--sink=webhook:{receiver.url('/idle')}",
            f"--sink={kafka.flag('idle')}",
            f"--sink=elasticsearch:{es.url}",
            f"--sink={mysql.flag('idle')}",
            f"--sink={influx.flag('idle')}",
            f"--sink={s3.flag('idle')}",
        ]


def _sent_by_sink(base: str) -> dict[str, float]:
    sent: dict[str, float] = {}
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith("eventrouter_sink_events_sent_total{"):
            label = line.split('sink="', 1)[1].split('"', 1)[0]
            sent[label] = float(line.rsplit(" ", 1)[1])
    return sent


def _quiet_window(pid: int, sim: SimulatorChild, seconds: int, rate: int) -> dict[str, Any]:
    """``rate`` fresh events a second for ``seconds``; the process's RSS each second and its CPU over it."""
    cpu_start = proc_cpu_s(pid)
    rss: list[float] = []
    started = time.monotonic()
    for second in range(seconds):
        sim.go(rate)
        rss.append(round(proc_rss_mb(pid), 1))
        time.sleep(max(0.0, started + second + 1 - time.monotonic()))
    cpu = proc_cpu_s(pid) - cpu_start
    status = proc_status(pid)
    return {
        "events": seconds * rate,
        "seconds": seconds,
        "rss_mb": rss[-1],
        "peak_rss_mb": max(rss),
        "rss_anon_mb": round(status.get("RssAnon", 0.0), 1),
        "rss_file_mb": round(status.get("RssFile", 0.0), 1),
        "threads": int(status.get("Threads", 0)),
        "cpu_s": round(cpu, 2),
    }


def measure(flags: list[str], name: str, seconds: int = 60, rate: int = 10) -> dict[str, Any]:
    sim = SimulatorChild()
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = spawn_ready(sim, list(flags), port)
    try:
        time.sleep(2)  # sinks connected, first list done: the idle window starts now
        figures = _quiet_window(proc.pid, sim, seconds, rate)
        time.sleep(2)  # the last events reach the sinks
        sent = _sent_by_sink(base)
    finally:
        stop_router(proc)
        sim.close()
    return report(name, {"sinks": len(flags), **figures, "sent_by_sink": sent})


def measure_kube_eventer(binary: str, seconds: int = 60, rate: int = 10) -> dict[str, Any]:
    sim = SimulatorChild(token=False)
    log_path = Path(sim.dir) / "kube-eventer.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([binary, f"--source={sim.source_flag()}", "--sink=log", "--healthz-ip=127.0.0.1",
                                 f"--healthz-port={_free_port()}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        time.sleep(2)  # as for the router: started, first list done
        figures = _quiet_window(proc.pid, sim, seconds, rate)
    finally:
        proc.kill()
        proc.wait()
        sim.close()
    exported = sum(int(n) for n in re.findall(r"Exporting (\d+) events", log_path.read_text(errors="replace")))
    return report("idle-kube-eventer", {**figures, "exported": exported})


def run(seconds: int = 60, all_sinks: bool = False) -> dict[str, Any]:
    if not all_sinks:
        return measure(["--sink=log"], "idle-log-sink", seconds)
    with _all_sink_flags() as flags:
        return measure(flags, "idle-all-sinks", seconds)
