"""Memory under a stalled sink: one sink never acks while 500,000 events stream through the watch.

The runners are built as ``eventrouter`` builds them (a data directory): past the default ``queue_size``
(10,000) the sink's backlog goes to its disk buffer, so nothing is dropped; the figure to watch is RSS:
it must stay flat however many more events arrive.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from benchmarks._common import RouterInProcess, SimulatorChild, StalledSink, report, rss_mb
from eventrouter import SinkURL


def run(n: int = 500_000, step: int = 50_000) -> dict[str, Any]:
    sim = SimulatorChild()
    StalledSink.release = threading.Event()
    sink = StalledSink.from_url(SinkURL.parse("stalled:"))
    router = RouterInProcess(sim, [sink])
    samples = []
    try:
        router.start()
        runner = router.router.runners[0]
        state = router.source.state
        baseline = rss_mb()
        sent = 0
        while sent < n:
            sim.prepare(min(step, n - sent))
            sim.go()
            sent += min(step, n - sent)
            deadline = time.monotonic() + 300
            while sum(state.received.values()) < sent and time.monotonic() < deadline:
                time.sleep(0.05)
            samples.append((sent, round(rss_mb(), 1)))
        dropped = runner.stats.dropped_overflow
        depth = runner.depth
    finally:
        StalledSink.release.set()
        router.stop(2)
        sim.close()
    # the memory window fills at 10k events (then goes to disk) and the source's bounded records at 100k;
    # from then on RSS must not grow: compare the second half of the stream
    late = [rss for count, rss in samples if count >= n // 2]
    return report(
        "memory-stalled-sink",
        {
            "events": n,
            "queue_size": runner.delivery.queue_size,
            "queued": depth,
            "dropped_overflow": dropped,
            "rss_mb_start": round(baseline, 1),
            "rss_mb_samples": samples,
            "peak_rss_mb": max(rss for _, rss in samples),
            "rss_growth_second_half_mb": round(max(late) - min(late), 1) if late else None,
        },
    )
