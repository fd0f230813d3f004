"""Start-up time: from spawning ``eventrouter`` to its first watch request at the simulator.

Each run spawns ``python -m eventrouter --source=kubernetes:...`` against a simulator in this process
(empty, so the list is instant) and stops the clock when the simulator receives the first request with
``watch=`` in its query: everything the router does before it can see an event (interpreter start,
imports, flag parsing, building and opening the sinks, the first list) is inside. The run is then
ended with SIGTERM. Also reported: the CPU time the process used until that request (user + system,
read from /proc), which depends much less on how busy the machine is. The figures are medians of N
runs (the machine is shared: single runs are noisy), after one warm-up run that is not counted (it
fills the file cache and writes the bytecode, which an installed package ships compiled).

``sinks``: the ``--sink`` flags of the run (default ``log``). Sinks whose server is not running here
still load their client library and build their client, which is what start-up costs.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks._common import proc_cpu_s, report, stop_router
from eventrouter.simulator import server as sim_server
from eventrouter.simulator.sim import Simulator

ROOT = Path(__file__).resolve().parent.parent


class _WatchClock:
    """Records when the simulator receives its first watch request (wraps the handler's do_GET)."""

    def __init__(self) -> None:
        self.first_watch: float | None = None
        self.seen = threading.Event()
        original = sim_server.Handler.do_GET
        clock = self

        def do_GET(handler: Any) -> None:
            if "watch=" in handler.path and not clock.seen.is_set():
                clock.first_watch = time.monotonic()
                clock.seen.set()
            original(handler)

        sim_server.Handler.do_GET = do_GET  # type: ignore[method-assign]
        self._original = original

    def reset(self) -> None:
        self.first_watch = None
        self.seen.clear()

    def close(self) -> None:
        sim_server.Handler.do_GET = self._original  # type: ignore[method-assign]


def spawn_to_watch(flags: list[str], kubeconfig: str, clock: _WatchClock, workdir: str,
                   timeout: float = 60.0, cpu: list[float] | None = None) -> float:
    """Seconds from Popen to the first watch request of one router process. ``cpu`` gets the CPU seconds
    the process used until then (user + system: what the wall clock shows on an idle machine)."""
    clock.reset()
    argv = [sys.executable, "-m", "eventrouter", f"--source=kubernetes:?inClusterConfig=false&auth={kubeconfig}",
            *flags, "--healthz-port=0", f"--checkpoint=file:{workdir}/checkpoint.json"]
    # bytecode is written (the warm-up run compiles it), as an installed package has it: this machine's
    # PYTHONDONTWRITEBYTECODE=1 would otherwise add the compilation of every module to every start
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"} | {"PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=workdir, env=env)
    try:
        if not clock.seen.wait(timeout):
            proc.kill()
            _, err = proc.communicate()
            raise RuntimeError(f"no watch request within {timeout:g}s: {err.decode(errors='replace')[-2000:]}")
        assert clock.first_watch is not None
        if cpu is not None:
            cpu.append(proc_cpu_s(proc.pid))
        return clock.first_watch - started
    finally:
        stop_router(proc, 30)


def run(runs: int = 9, flags: list[str] | None = None, name: str = "startup-log-sink") -> dict[str, Any]:
    flags = flags or ["--sink=log"]
    sim = Simulator(events=[], token="bench-token").start()
    clock = _WatchClock()
    try:
        with tempfile.TemporaryDirectory(prefix="eventrouter-bench-startup-") as tmp:
            kubeconfig = str(sim.write_kubeconfig(Path(tmp) / "kubeconfig"))
            spawn_to_watch(flags, kubeconfig, clock, tmp)  # warm-up (file cache, bytecode): not counted
            cpu: list[float] = []
            times = [spawn_to_watch(flags, kubeconfig, clock, tmp, cpu=cpu) for _ in range(runs)]
    finally:
        clock.close()
        sim.stop()
    return report(name, {
        "runs": runs,
        "sinks": [f.partition("=")[2].partition(":")[0] for f in flags],
        "startup_s_median": round(statistics.median(times), 3),
        "startup_s_min": round(min(times), 3),
        "startup_s_max": round(max(times), 3),
        "cpu_s_median": round(statistics.median(cpu), 3),
    })
