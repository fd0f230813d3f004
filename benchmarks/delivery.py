"""Delivery under pressure, through the real source and router with disk buffers (as ``eventrouter`` runs):

- ``burst``: the simulator releases N = 100,000 events at once; one sink acks at once, the other takes
  20 ms per batch of 500 (25,000 events/s at most, like a busy database). Events lost and duplicated at
  each sink (must be 0 and 0), the time until both have everything, peak RSS.
- ``stall``: one sink stalls (its send never returns) while N = 600,000 events stream in (10 minutes at
  1,000 events/s, in fast-forward) and a second sink stays current; then the stalled one is released.
  Lost and duplicated at each sink, RSS while the backlog grows (target: at most 150 MB), RSS after the
  backlog drained, and the peak size of the disk buffer; after the drain also CPython's live objects and
  arenas, and how many per-event records the source keeps (what RSS after the drain is made of).

Each sink writes the key (uid, resourceVersion) of every event it is sent to a file, checked after the
run (outside the RSS figures).
"""

from __future__ import annotations

import collections
import gc
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from benchmarks._common import RouterInProcess, SimulatorChild, report, rss_mb
from eventrouter import Event, Sink, SinkURL


class KeySink(Sink):
    """Writes the key of every event it is sent to a file; optionally slow, or stalled until released."""

    name = "keys"
    delivery_defaults: ClassVar[Mapping[str, Any]] = {"batch_size": 500, "flush_interval": 0.2}

    def __init__(self, url, opts):  # type: ignore[no-untyped-def]
        super().__init__(url, opts)
        self.path: Path | None = None
        self.count = 0
        self.delay = 0.0
        self.release: threading.Event | None = None
        self._file: Any = None

    @classmethod
    def make(cls, path: Path, *, delay: float = 0.0, stalled: bool = False) -> KeySink:
        sink = cls.from_url(SinkURL.parse("keys:"))
        assert isinstance(sink, KeySink)
        sink.path, sink.delay = path, delay
        sink.release = threading.Event() if stalled else None
        sink._file = path.open("wb")
        return sink

    def send(self, batch: Sequence[Event]) -> None:
        if self.release is not None:
            self.release.wait()
        if self.delay:
            time.sleep(self.delay)
        self._file.write(b"".join(f"{e.uid} {e.resource_version}\n".encode() for e in batch))
        self.count += len(batch)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _tally(path: Path, expected: int) -> dict[str, int]:
    counts = collections.Counter(path.read_bytes().splitlines())
    return {"lost": expected - len(counts), "duplicated": sum(n - 1 for n in counts.values() if n > 1)}


def _wait(predicate: Any, timeout: float) -> float:
    start = time.monotonic()
    while not predicate() and time.monotonic() - start < timeout:
        time.sleep(0.05)
    return time.monotonic() - start


def _python_heap() -> dict[str, float]:
    """CPython's small-object allocator now: MB in live objects and 1 MiB arenas held (what RSS cannot give
    back while any object in an arena lives). ``sys._debugmallocstats`` writes to the C stderr."""
    with tempfile.TemporaryFile() as out:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(out.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read().decode(errors="replace")

    def figure(label: str) -> int:
        match = re.search(rf"# {label}\s*=\s*([\d,]+)", text)
        return int(match.group(1).replace(",", "")) if match else -1

    return {"objects_mb": round(figure("bytes in allocated blocks") / 1e6, 1),
            "arenas": figure("arenas allocated current")}


def _buffer_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*.seg")) if directory.exists() else 0


def burst(n: int = 100_000) -> dict[str, Any]:
    sim = SimulatorChild()
    fast = KeySink.make(Path(sim.dir) / "fast.keys")
    slow = KeySink.make(Path(sim.dir) / "slow.keys", delay=0.02)
    router = RouterInProcess(sim, [fast, slow])
    try:
        router.start()
        sim.prepare(n)
        baseline = rss_mb()
        peak = baseline
        sim.go()
        start = time.monotonic()
        while (fast.count < n or slow.count < n) and time.monotonic() - start < 600:
            peak = max(peak, rss_mb())
            time.sleep(0.05)
        seconds = time.monotonic() - start
        spilled = router.router.runners[1].stats.spilled
    finally:
        router.stop(5)
        sim.close()
    fast_tally, slow_tally = _tally(Path(sim.dir) / "fast.keys", n), _tally(Path(sim.dir) / "slow.keys", n)
    return report("burst", {
        "events": n, "seconds_until_both_have_all": round(seconds, 1),
        "lost": fast_tally["lost"] + slow_tally["lost"],
        "duplicated": fast_tally["duplicated"] + slow_tally["duplicated"],
        "fast_sink": fast_tally, "slow_sink": slow_tally, "slow_sink_spilled_to_disk": spilled,
        "rss_mb_start": round(baseline, 1), "peak_rss_mb": round(peak, 1),
    })


def stall(n: int = 600_000, step: int = 50_000) -> dict[str, Any]:
    sim = SimulatorChild()
    healthy = KeySink.make(Path(sim.dir) / "healthy.keys")
    stalled = KeySink.make(Path(sim.dir) / "stalled.keys", stalled=True)
    assert stalled.release is not None
    router = RouterInProcess(sim, [stalled, healthy])
    buffers = Path(sim.dir) / "data" / "buffer"
    samples = []
    behind = []
    try:
        router.start()
        baseline = rss_mb()
        sent = 0
        disk_peak = 0
        while sent < n:
            sim.go(min(step, n - sent))
            sent += min(step, n - sent)
            _wait(lambda: healthy.count >= sent, 300)  # noqa: B023 (sent is read at once)
            behind.append(sent - healthy.count)
            samples.append((sent, round(rss_mb(), 1)))
            disk_peak = max(disk_peak, _buffer_bytes(buffers))
        stalled.release.set()
        drain = _wait(lambda: stalled.count >= n, 900)
        time.sleep(2.5)  # the drained sink's worker gives the memory back at its next tick
        gc.collect()
        after = rss_mb()
        heap = _python_heap()
        source_records = {"seen": len(router.source.seen),  # type: ignore[attr-defined]
                          "progress_pending": len(router.source.progress.pending)}  # type: ignore[attr-defined]
    finally:
        stalled.release.set()
        router.stop(5)
        sim.close()
    return report("stall", {
        "events": n, "healthy_sink_behind_max": max(behind),
        "lost": _tally(Path(sim.dir) / "healthy.keys", n)["lost"] + _tally(Path(sim.dir) / "stalled.keys", n)["lost"],
        "duplicated": (_tally(Path(sim.dir) / "healthy.keys", n)["duplicated"]
                       + _tally(Path(sim.dir) / "stalled.keys", n)["duplicated"]),
        "rss_mb_start": round(baseline, 1), "rss_mb_samples": samples,
        "peak_rss_mb": max(rss for _, rss in samples), "rss_mb_after_drain": round(after, 1),
        # after the drain: CPython's live objects and arenas, and the source's per-event records then
        "python_heap_after_drain": heap, "source_records_after_drain": source_records,
        "disk_buffer_peak_mb": round(disk_peak / 1e6, 1), "drain_s": round(drain, 1),
    })
