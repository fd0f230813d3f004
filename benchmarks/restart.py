"""Restart mid-stream: events lost and duplicated at the sink (must be 0 and 0) and the time to resume.

The router runs as a real process (file checkpoint, the example ``jsonfile`` sink). Events keep arriving
while it is stopped (SIGTERM) and while it restarts. With ``kill=True`` it is SIGKILLed instead: nothing
may be lost, and the duplicates are those delivered after the last checkpoint write (at-least-once).
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from benchmarks._common import SimulatorChild, report


def _router(sim: SimulatorChild, out: Path, checkpoint: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "eventrouter", f"--source={sim.source_flag()}",
         f"--sink=jsonfile:{out}?batch_size=500&flush_interval=50ms", f"--checkpoint=file:{checkpoint}",
         f"--data-dir={sim.dir}/data", "--healthz-port=0", "--shutdown-timeout=20s"],
        stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _lines(out: Path) -> list[tuple[str, str]]:
    if not out.exists():
        return []
    data = out.read_bytes()
    whole = data[:data.rfind(b"\n") + 1]  # a line the sink is writing right now is not there yet
    return [(d["uid"], d["resource_version"]) for d in map(orjson.loads, whole.splitlines())]


def _wait_lines(out: Path, n: int, timeout: float = 300) -> float:
    start = time.monotonic()
    while len(_lines(out)) < n and time.monotonic() - start < timeout:
        time.sleep(0.05)
    return time.monotonic() - start


def run(batch: int = 20_000, kill: bool = False) -> dict[str, Any]:
    sim = SimulatorChild()
    out = Path(sim.dir) / "delivered.jsonl"
    checkpoint = Path(sim.dir) / "checkpoint.json"
    try:
        sim.go(batch)  # history before the first start: listed and delivered
        router = _router(sim, out, checkpoint)
        _wait_lines(out, batch)
        sim.go(batch)  # live, through the watch
        time.sleep(0.5)  # stop in the middle of this batch
        router.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        router.wait(60)
        sim.go(batch)  # while the router is down
        started = time.monotonic()
        router = _router(sim, out, checkpoint)
        before = len(_lines(out))
        while len(_lines(out)) == before and time.monotonic() - started < 120:
            time.sleep(0.01)
        resume = time.monotonic() - started
        sim.go(batch)  # after the restart
        _wait_lines(out, 4 * batch, timeout=300)
        time.sleep(1.0)  # anything more would be a duplicate
        router.send_signal(signal.SIGTERM)
        router.wait(60)
    finally:
        sim.close()
    delivered = _lines(out)
    counts = collections.Counter(delivered)
    uids = {uid for uid, _ in delivered}
    return report(
        "restart-sigkill" if kill else "restart-sigterm",
        {
            "events": 4 * batch,
            "delivered": len(delivered),
            "lost": 4 * batch - len(uids),
            "duplicated": sum(c - 1 for c in counts.values() if c > 1),
            "time_to_resume_s": round(resume, 2),
        },
    )
