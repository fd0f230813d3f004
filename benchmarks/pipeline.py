"""Pipeline throughput: simulator watch stream -> decode -> normalize -> filter -> enqueue -> null sink(s).

N events are added to the simulator (in a child process) after the router's first list, so all of them
arrive through the chunked watch stream. Figures are for this process only (the router).
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks._common import RouterInProcess, SimulatorChild, cpu_seconds, null_sink, peak_rss_mb, report
from eventrouter.enrich import EnrichSettings
from eventrouter.simulator.sim import load_events

# eight sinks with different filters, to show the cost of fan-out
FANOUT_FILTERS = [
    "",
    "level=Warning",
    "level=Normal",
    "namespaces=default,kube-system",
    "kinds=Pod,Node",
    "reasons=BackOff|Failed.*&exclude_namespaces=kube-system",
    "exclude_reasons=^Pull|^Creat|^Start&min_count=2",
    "exclude_kinds=Node&exclude_namespaces=,",
]


def run(n: int = 200_000, fanout: bool = False, enrich: bool = False) -> dict[str, Any]:
    """``enrich``: with --enrich=labels,owner, its cache warmed by one pass over the recorded events first
    (this measures the enriched hot path, not the API server's lookups)."""
    sim = SimulatorChild()
    queries = FANOUT_FILTERS if fanout else [""]
    # a queue as large as the burst: this measures throughput, not the overflow policy
    sinks = [null_sink(f"{q}&queue_size={n}&batch_size=1000&flush_interval=20ms".lstrip("&")) for q in queries]
    settings = EnrichSettings(features=frozenset({"labels", "owner"}), qps=1000, burst=1000, timeout=1.0)
    router = RouterInProcess(sim, list(sinks), enrich=settings if enrich else None)
    try:
        router.start()
        if router.enricher is not None:
            warm = 2 * len(load_events("builtin"))
            sinks[0].expect = warm
            sim.go(warm)
            if not sinks[0].done.wait(120):
                raise RuntimeError("the warm-up events did not arrive")
            while router.enricher._inflight:
                time.sleep(0.05)
            sinks[0].done.clear()
            sinks[0].count = 0
            warmed = dict(router.enricher.stats.events)
        sinks[0].expect = n
        sim.prepare(n)
        cpu0 = cpu_seconds()
        go = time.monotonic()
        sim.go()
        # The clock starts when the child has stored the events. Storing them (~1 s for 200k) holds the
        # simulator's store lock, so its watch sends nothing meanwhile: that second is the simulator's
        # work, not the router's, and it used to be counted in events/s. It is reported apart.
        start = time.monotonic()
        if not sinks[0].done.wait(600):
            raise RuntimeError(f"only {sinks[0].count} of {n} events arrived")
        elapsed = time.monotonic() - start
        cpu = cpu_seconds() - cpu0
    finally:
        router.stop()
        sim.close()
    runners = router.router.runners
    extra: dict[str, Any] = {}
    if router.enricher is not None:
        stats = router.enricher.stats.events
        extra["enriched"] = stats["enriched"] - warmed["enriched"]
        extra["not_enriched"] = sum(stats.values()) - sum(warmed.values()) - extra["enriched"]
    return report(
        ("pipeline-fanout8" if fanout else "pipeline") + ("-enrich" if enrich else ""),
        {
            **extra,
            "events": n,
            "sinks": len(sinks),
            "events_per_s": round(n / elapsed),
            "sim_store_s": round(start - go, 2),
            "cpu_s_per_100k": round(cpu / n * 100_000, 2),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "delivered_per_sink": [s.count for s in sinks],
            "filtered_per_sink": [r.stats.filtered for r in runners],
            "dropped": sum(r.stats.dropped_overflow for r in runners),
        },
    )
