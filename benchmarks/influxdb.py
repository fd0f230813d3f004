"""InfluxDB 1.x sink throughput, end to end and from dispatch, against a real ``influxd``.

- ``influxdb, watch burst``: the simulator (a child process) releases N = 100,000 fresh events at once;
  the real source reads them from the watch stream, the router feeds the InfluxDB sink (kube-eventer's
  default layout, ``log/events`` with the Event JSON in ``value``, default delivery options except
  ``queue_size=N``). The clock runs from the release until the router has settled all N (every write
  answered 204), as kube-eventer's drain rate was measured.
- ``influxdb, dispatch``: N pre-normalized events dispatched straight into the router (``benchmarks.sinks``).

Afterwards (not timed) the server is asked how many points it holds; a run fails unless it is N.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import RouterInProcess, SimulatorChild, cpu_seconds, peak_rss_mb, report
from benchmarks.sinks import bench_events, influxdb_target, run_one
from eventrouter.config import build_sink


def _count(server: Any, db: str) -> int:
    result = server.query('SELECT count("value") FROM "log/events"', db)
    series = result.get("series") or [{"values": [[0, 0]]}]
    return int(series[0]["values"][0][1])


def watch_burst(n: int) -> dict[str, Any]:
    from tests.servers.influxdb import ADMIN, ADMIN_PASSWORD, InfluxDB

    with tempfile.TemporaryDirectory(prefix="eventrouter-bench-influxdb-") as tmp:
        server = InfluxDB(Path(tmp)).start()
        sim = SimulatorChild()
        try:
            sink = build_sink(f"influxdb:{server.url}?user={ADMIN}&pw={ADMIN_PASSWORD}&db=burst&queue_size={n}")
            sink.open()
            router = RouterInProcess(sim, [sink])
            try:
                router.start()
                sim.prepare(n)
                cpu0 = cpu_seconds()
                sim.go()  # returns once the child stored the N events: its watch streams them from now
                start = time.monotonic()
                deadline = start + 900
                while router.router.settled_seq() < n:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"influxdb burst: only {router.router.settled_seq()} of {n} settled")
                    time.sleep(0.005)
                elapsed = time.monotonic() - start
                cpu = cpu_seconds() - cpu0
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
                "cpu_s_per_100k": round(cpu / n * 100_000, 2),
                "peak_rss_mb": round(peak_rss_mb(), 1),
            })
        finally:
            sim.close()
            server.stop()


def run(n: int = 100_000) -> list[tuple[str, dict[str, Any]]]:
    results = [("influxdb, watch burst (end to end)", watch_burst(n))]
    events = bench_events(n)
    with influxdb_target() as target:
        results.append(("influxdb, dispatch", run_one(target, "influxdb", "dispatch", "", events)))
    return results
