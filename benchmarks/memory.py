"""Memory under a stalled sink: one sink never acks while 500,000 events stream through the watch.

The runners are built as ``eventrouter`` builds them (a data directory): past the default ``queue_size``
(10,000) the sink's backlog goes to its disk buffer, so nothing is dropped; the figure to watch is RSS:
it must stay flat however many more events arrive.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import orjson

from benchmarks._common import RouterInProcess, SimulatorChild, StalledSink, null_sink, report, rss_mb
from eventrouter import Event, SinkURL
from eventrouter.memory import release_memory
from eventrouter.router import Router, SinkRunner
from eventrouter.simulator.sim import load_events
from eventrouter.simulator.store import restamp


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


def _watch_lines(n: int, managed_fields: bool) -> list[bytes]:
    """n watch lines (``{"type": "ADDED", "object": ...}``) of fresh re-stamped recorded Events; with
    ``managed_fields`` each keeps its recorded ``metadata.managedFields`` (as a real API server sends them;
    the simulator's re-stamped copies drop them)."""
    pool = load_events("builtin")
    objs = restamp(pool, n // len(pool) + 2, True)[len(pool):len(pool) + n]
    lines = []
    for i, obj in enumerate(objs):
        if managed_fields and "managedFields" in pool[i % len(pool)]["metadata"]:
            obj["metadata"]["managedFields"] = pool[i % len(pool)]["metadata"]["managedFields"]
        lines.append(orjson.dumps({"type": "ADDED", "object": obj}))
    return lines


def _held_once(path: str, sinks: int, batch_size: int, traced: bool) -> float:
    """Bytes per event held by ``sinks`` runners (not started: every event stays in their memory window),
    measured in a fresh process that read the watch lines from ``path``."""
    lines = Path(path).read_bytes().splitlines()
    n = len(lines)
    runners = [SinkRunner.build(null_sink(f"queue_size={n}&batch_size={batch_size}")) for _ in range(sinks)]
    router = Router(runners)
    release_memory()
    if traced:
        tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0] if traced else rss_mb() * 1e6
    for line in lines:  # decoded as the source decodes a watch line, so every event owns its strings
        router.dispatch(Event.from_object(orjson.loads(line)["object"], "bench"))
    gc.collect()
    after = tracemalloc.get_traced_memory()[0] if traced else rss_mb() * 1e6
    tracemalloc.stop()
    assert all(r.depth == n for r in runners)
    return (after - before) / n


def held(n: int = 50_000) -> dict[str, Any]:
    """RAM per event held in sinks' memory windows (queue_size=n, so none goes to disk): one sink, and 8
    sinks sharing the same events; batch_size 500 (most sinks' default), so the first 500 are Events and
    the rest are held encoded. tracemalloc's count (Python's allocations) and the RSS growth, each in a
    fresh process (one that already held and freed as much would reuse that memory)."""
    figures: dict[str, Any] = {"events": n, "batch_size": 500}
    with tempfile.TemporaryDirectory(prefix="eventrouter-held-") as tmp:
        for managed in (False, True):
            lines = _watch_lines(n, managed)
            path = Path(tmp) / "lines"
            path.write_bytes(b"\n".join(lines))
            json_bytes = sum(map(len, lines)) / n - len(b'{"type":"ADDED","object":}')
            figures["managed_fields" if managed else "simulator_events"] = row = {"json_bytes": round(json_bytes)}
            for sinks in (1, 8):
                for traced in (True, False):
                    code = ("from benchmarks.memory import _held_once; "
                            f"print(_held_once({str(path)!r}, {sinks}, 500, {traced}))")
                    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                         cwd=Path(__file__).parent.parent)
                    name = f"{'traced' if traced else 'rss'}_bytes_per_event_{sinks}_sink{'s' if sinks > 1 else ''}"
                    row[name] = round(float(out.stdout.split()[-1]))
    return report("memory-held", figures)
