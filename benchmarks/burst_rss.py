"""Peak RSS of a router process on a 20,000-event burst into Kafka and into MySQL (issue 20).

The router runs as ``python -m eventrouter`` in its own process (only its memory is measured), with the
real Kubernetes source against the simulator child and one sink at its **default options** writing to a
real server (tansu for Kafka, MariaDB for MySQL). Once the router is ready, the simulator releases N =
20,000 fresh events at once into the watch. The run ends when the sink has sent N (the router's own
``/metrics``); the figure is the process's peak RSS (``VmHWM`` from /proc), and RSS again 5 s after the
drain. Afterwards the server is asked what it holds: a run fails unless it is exactly N (nothing lost,
nothing written twice).
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks._common import SimulatorChild, proc_rss_mb, proc_status, report, stop_router
from benchmarks.idle import _free_port, _sent_by_sink, spawn_ready


def measure(name: str, flag: str, n: int) -> tuple[dict[str, Any], float]:
    sim = SimulatorChild()
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = spawn_ready(sim, [f"--sink={flag}", f"--data-dir={sim.dir}/data"], port)
    try:
        time.sleep(1)
        rss_ready = proc_rss_mb(proc.pid)
        sim.prepare(n)
        sim.go()
        start = time.monotonic()
        deadline = start + 600
        while sum(_sent_by_sink(base).values()) < n:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name}: the sink did not send {n} events: {_sent_by_sink(base)}")
            time.sleep(0.05)
        elapsed = time.monotonic() - start
        peak = proc_status(proc.pid)["VmHWM"]
        time.sleep(5)
        rss_after = proc_rss_mb(proc.pid)
    finally:
        stop_router(proc)
        sim.close()
    return {"events": n, "seconds": round(elapsed, 2), "rss_mb_ready": round(rss_ready, 1),
            "peak_rss_mb": round(peak, 1), "rss_mb_after_drain": round(rss_after, 1)}, elapsed


def run(n: int = 20_000, names: tuple[str, ...] = ("kafka", "mysql")) -> list[tuple[str, dict[str, Any]]]:
    from benchmarks.sinks import kafka_target, mysql_target

    targets = {"kafka": kafka_target, "mysql": mysql_target}
    results = []
    for sink in names:
        with targets[sink]() as target:
            figures, _ = measure(f"burst-rss-{sink}", target.flag("burst"), n)
            stored = target.stored("burst")
        if stored != n:
            raise RuntimeError(f"burst-rss-{sink}: the server holds {stored} of {n} events")
        results.append((f"burst RSS: {n // 1000}k events, {sink}",
                        report(f"burst-rss-{sink}", {"sink": sink, **figures, "stored": stored})))
    return results
