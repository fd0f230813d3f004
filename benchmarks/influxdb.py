"""InfluxDB 1.x sink throughput, end to end and from dispatch, against a real ``influxd``, with the
server's own ceiling measured in the same run. The runs, in the order they run:

- ``influxdb, watch burst``: the simulator (a child process) releases N = 100,000 fresh events at once;
  the real source reads them from the watch stream, the router feeds the InfluxDB sink (kube-eventer's
  default layout, ``log/events`` with the Event JSON in ``value``, default delivery options except
  ``queue_size=N``). The clock runs from the release until the router has settled all N (every write
  answered 204), as kube-eventer's drain rate was measured.
- ``influxdb, influxd alone``: the same N points, their line protocol built beforehand (untimed) with
  the sink's own encoder, posted straight to ``/write`` in the sink's default write size and number of
  writes in flight, by plain httpx clients on threads: no eventrouter in the loop. What the server
  takes of this layout on this machine now: the ceiling for the other two.
- ``influxdb, dispatch``: N pre-normalized events dispatched straight into the router (``benchmarks.sinks``).
- ``influxdb, kube-eventer``: only when ``KUBE_EVENTER`` names a kube-eventer binary (none is shipped or
  built here): the same burst from the same simulator child into kube-eventer's own InfluxDB sink, on a
  fresh ``influxd``, side by side with the runs above. kube-eventer exports what it buffered once per
  ``--frequency`` (5 s, its minimum; ticks on the wall clock), so the burst is released just after a tick,
  its best case. Reported: events/s from the release until the server counted N points written (its
  ``/debug/vars``), and the drain, from its first point written to its last: the rate of kube-eventer's
  sink once the events are in its buffer, comparable with ``dispatch``.

Each run gets a fresh ``influxd`` with the tests' configuration (tests/servers/influxdb.py: inmem index,
WAL fsync per write, authentication on), and reports the CPU seconds per 100k of the router process
(this one), of ``influxd`` and, end to end, of the simulator child. Afterwards (not timed) the server is
asked how many points it holds; a run fails unless it is N. N may not pass 100,000: the server's
``max-values-per-tag`` (default 100,000) refuses more distinct ``uid`` tags in one database.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from benchmarks._common import (
    RouterInProcess,
    SimulatorChild,
    cpu_seconds,
    peak_rss_mb,
    proc_cpu_s,
    proc_status,
    report,
)
from benchmarks.sinks import Target, bench_events, run_one
from eventrouter import Event
from eventrouter.config import build_sink


def _count(server: Any, db: str) -> int:
    result = server.query('SELECT count("value") FROM "log/events"', db)
    series = result.get("series") or [{"values": [[0, 0]]}]
    return int(series[0]["values"][0][1])


@contextmanager
def _influxd() -> Iterator[Any]:
    from tests.servers.influxdb import InfluxDB

    with tempfile.TemporaryDirectory(prefix="eventrouter-bench-influxdb-") as tmp:
        server = InfluxDB(Path(tmp)).start()
        try:
            yield server
        finally:
            server.stop()


def _flag(server: Any, db: str) -> str:
    from tests.servers.influxdb import ADMIN, ADMIN_PASSWORD

    return f"influxdb:{server.url}?user={ADMIN}&pw={ADMIN_PASSWORD}&db={db}"


def _per_100k(seconds: float, n: int) -> float:
    return round(seconds / n * 100_000, 2)


def _points_written(server: Any) -> int:
    """Points the server has accepted so far, from its own counters (not a query: cheap, and exact)."""
    from tests.servers.influxdb import ADMIN, ADMIN_PASSWORD

    stats = httpx.get(f"{server.url}/debug/vars", auth=(ADMIN, ADMIN_PASSWORD), timeout=10).json()
    return sum(int(v["values"]["pointsWrittenOK"]) for k, v in stats.items() if k.startswith("httpd"))


def influxd_alone(events: list[Event]) -> dict[str, Any]:
    """The server's ceiling: the sink's bodies, built untimed, posted by an ideal client."""
    from tests.servers.influxdb import ADMIN, ADMIN_PASSWORD

    n = len(events)
    with _influxd() as server:
        sink = build_sink(_flag(server, "alone"))
        sink.open()  # creates the database, as the sink does
        size, in_flight = int(sink.opts["points_per_write"]), int(sink.opts["concurrency"])
        bodies = [sink._body(events[i:i + size]) for i in range(0, n, size)]
        sink.close()
        clients = [httpx.Client(base_url=server.url, auth=(ADMIN, ADMIN_PASSWORD), timeout=300)
                   for _ in range(in_flight)]

        def write(index: int) -> None:
            response = clients[index % in_flight].post("/write", params={"db": "alone", "precision": "ns"},
                                                       content=bodies[index])
            if response.status_code != 204:
                raise RuntimeError(f"influxd alone: HTTP {response.status_code} {response.text}")

        server_cpu0, cpu0 = proc_cpu_s(server.proc.pid), cpu_seconds()
        start = time.monotonic()
        with ThreadPoolExecutor(in_flight) as pool:
            list(pool.map(write, range(len(bodies))))
        elapsed = time.monotonic() - start
        server_cpu, cpu = proc_cpu_s(server.proc.pid) - server_cpu0, cpu_seconds() - cpu0
        for client in clients:
            client.close()
        stored = _count(server, "alone")
    if stored != n:
        raise RuntimeError(f"influxd alone: server holds {stored} of {n}")
    return report("influxdb-alone", {
        "events": n,
        "events_per_s": round(n / elapsed),
        "seconds": round(elapsed, 2),
        "points_per_write": size,
        "concurrency": in_flight,
        "stored": stored,
        "cpu_s_per_100k": _per_100k(cpu, n),
        "influxd_cpu_s_per_100k": _per_100k(server_cpu, n),
    })


def dispatch(events: list[Event]) -> dict[str, Any]:
    n = len(events)
    with _influxd() as server:
        server_cpu = [proc_cpu_s(server.proc.pid)]

        def stored(run: str) -> int:  # after the drain: the count query's CPU is not the writes'
            server_cpu.append(proc_cpu_s(server.proc.pid))
            return _count(server, run)

        figures = run_one(Target(lambda run: _flag(server, run), stored), "influxdb", "dispatch", "", events)
    influxd_cpu = _per_100k(server_cpu[1] - server_cpu[0], n)
    return report("influxdb-dispatch-server", {**figures, "influxd_cpu_s_per_100k": influxd_cpu})


def watch_burst(n: int) -> dict[str, Any]:
    with _influxd() as server:
        sim = SimulatorChild()
        try:
            sink = build_sink(f"{_flag(server, 'burst')}&queue_size={n}")
            sink.open()
            router = RouterInProcess(sim, [sink])
            try:
                router.start()
                sim.prepare(n)
                cpu0, server_cpu0, sim_cpu0 = cpu_seconds(), proc_cpu_s(server.proc.pid), proc_cpu_s(sim.proc.pid)
                sim.go()  # returns once the child stored the N events: its watch streams them from now
                start = time.monotonic()
                deadline = start + 900
                while router.router.settled_seq() < n:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"influxdb burst: only {router.router.settled_seq()} of {n} settled")
                    time.sleep(0.005)
                elapsed = time.monotonic() - start
                cpu = cpu_seconds() - cpu0
                server_cpu = proc_cpu_s(server.proc.pid) - server_cpu0
                sim_cpu = proc_cpu_s(sim.proc.pid) - sim_cpu0
            finally:
                router.stop(60)
            stats = router.router.runners[0].stats
            stored = _count(server, "burst")
            if stored != n or stats.failed:
                raise RuntimeError(f"influxdb burst: server holds {stored} of {n} (failed {stats.failed})")
            delivery = router.router.runners[0].delivery
            return report("influxdb-watch-burst", {
                "sink": "influxdb",
                "events": n,
                "events_per_s": round(n / elapsed),
                "seconds": round(elapsed, 2),
                "batch_size": delivery.batch_size,
                "stored": stored,
                "batches": stats.batches,
                "retried": stats.retried,
                "cpu_s_per_100k": _per_100k(cpu, n),
                "influxd_cpu_s_per_100k": _per_100k(server_cpu, n),
                "simulator_cpu_s_per_100k": _per_100k(sim_cpu, n),
                "peak_rss_mb": round(peak_rss_mb(), 1),
            })
        finally:
            sim.close()


KUBE_EVENTER_FREQUENCY = 5  # seconds: kube-eventer's smallest --frequency


def kube_eventer(binary: str, n: int) -> dict[str, Any]:
    """kube-eventer's InfluxDB sink: the same burst, simulator child and server setup as ``watch_burst``."""
    with _influxd() as server:
        # kube-eventer's client-go (v1.2.7) sends a kubeconfig's token only over TLS: this simulator asks none
        sim = SimulatorChild(token=False)
        log_path = Path(sim.dir) / "kube-eventer.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen([binary, f"--source={sim.source_flag()}", f"--sink={_flag(server, 'ke')}",
                                     f"--frequency={KUBE_EVENTER_FREQUENCY}s", "--healthz-ip=127.0.0.1",
                                     "--healthz-port=0"], stdout=log, stderr=subprocess.STDOUT)
        try:
            sim.prepare(n)
            # kube-eventer logs "Exporting <k> events" at each tick; its list was long done by the first
            # one, and releasing right after a tick gives it the whole period to read the burst
            ticks = _wait_for_line(log_path, "Exporting", 0, 3 * KUBE_EVENTER_FREQUENCY)
            _wait_for_line(log_path, "Exporting", ticks, 3 * KUBE_EVENTER_FREQUENCY)
            cpu0, server_cpu0, sim_cpu0 = (proc_cpu_s(proc.pid), proc_cpu_s(server.proc.pid),
                                           proc_cpu_s(sim.proc.pid))
            sim.go()
            start = time.monotonic()
            first_write, written = None, 0
            while written < n:
                if time.monotonic() > start + 900:
                    raise RuntimeError(f"kube-eventer: the server counted {written} of {n} points written")
                time.sleep(0.02)  # coarse: this poll shares the two cores with kube-eventer
                written = _points_written(server)
                if first_write is None and written:
                    first_write = time.monotonic()
            done = time.monotonic()
            cpu, server_cpu, sim_cpu = (proc_cpu_s(proc.pid) - cpu0, proc_cpu_s(server.proc.pid) - server_cpu0,
                                        proc_cpu_s(sim.proc.pid) - sim_cpu0)
            peak = round(proc_status(proc.pid)["VmHWM"], 1)
        finally:
            proc.kill()
            proc.wait()
            sim.close()
        stored = _count(server, "ke")
    if stored != n:
        raise RuntimeError(f"kube-eventer: server holds {stored} of {n}")
    assert first_write is not None
    return report("influxdb-kube-eventer", {
        "events": n,
        "events_per_s": round(n / (done - start)),
        "seconds": round(done - start, 2),
        "release_to_first_write_s": round(first_write - start, 2),
        "drain_events_per_s": round(n / (done - first_write)),
        "frequency_s": KUBE_EVENTER_FREQUENCY,
        "stored": stored,
        "cpu_s_per_100k": _per_100k(cpu, n),
        "influxd_cpu_s_per_100k": _per_100k(server_cpu, n),
        "simulator_cpu_s_per_100k": _per_100k(sim_cpu, n),
        "peak_rss_mb": peak,
    })


def _wait_for_line(path: Path, needle: str, seen: int, timeout: float) -> int:
    """Wait until the log holds more than ``seen`` lines with ``needle``; return how many it holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        count = path.read_text(errors="replace").count(needle)
        if count > seen:
            return count
        time.sleep(0.01)
    raise RuntimeError(f"kube-eventer: no {needle!r} in its log after {timeout} s: {path.read_text()[-2000:]}")


def run(n: int = 100_000) -> list[tuple[str, dict[str, Any]]]:
    # end to end first: its peak RSS is then the router's, not that of the event list the others share
    burst = watch_burst(n)
    theirs = os.environ.get("KUBE_EVENTER")
    kube = kube_eventer(theirs, n) if theirs else None
    events = bench_events(n)
    results = [
        ("influxdb, influxd alone (ideal client)", influxd_alone(events)),
        ("influxdb, dispatch", dispatch(events)),
        ("influxdb, watch burst (end to end)", burst),
    ]
    if kube is not None:
        results.append(("influxdb, kube-eventer (KUBE_EVENTER)", kube))
    return results
