"""Shared pieces of the benchmarks: sinks that do nothing, the simulator child, resource figures."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eventrouter import Event, Sink, SinkURL
from eventrouter.app import tune_gc
from eventrouter.enrich import EnrichSettings, attach_enricher
from eventrouter.router import Router, SinkRunner
from eventrouter.simulator.sim import Simulator
from eventrouter.sources import SourceContext, build_source


class NullSink(Sink):
    """Acks every batch at once; counts what it got."""

    name = "null"

    def __init__(self, url, opts):  # type: ignore[no-untyped-def]
        super().__init__(url, opts)
        self.count = 0
        self.done = threading.Event()
        self.expect = 0

    def send(self, batch: Sequence[Event]) -> None:
        self.count += len(batch)
        if self.expect and self.count >= self.expect:
            self.done.set()


class StalledSink(Sink):
    """Never returns from send until released: the worst sink there is."""

    name = "stalled"
    release = threading.Event()

    def send(self, batch: Sequence[Event]) -> None:
        self.release.wait()


def null_sink(query: str = "") -> NullSink:
    sink = NullSink.from_url(SinkURL.parse(f"null:?{query}"))
    assert isinstance(sink, NullSink)
    return sink


def rss_mb() -> float:
    """Current resident set size of this process in MB (from /proc)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- another process, from /proc ----
def proc_rss_mb(pid: int) -> float:
    return proc_status(pid).get("VmRSS", 0.0)


def proc_status(pid: int) -> dict[str, float]:
    """/proc/PID/status's memory lines in MB (VmRSS; VmHWM, its peak; RssAnon: the heap; RssFile: pages of
    the native libraries, e.g. librdkafka's code) and Threads (glibc gives each thread that allocates its own
    arena)."""
    found: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                found[key] = int(value.split()[0]) / 1024
            elif key == "Threads":
                found[key] = int(value)
    return found


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of another process so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class SimulatorChild:
    """The simulator in a child process (benchmarks/_simproc.py), fed on demand."""

    def __init__(self, token: bool = True) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks._simproc", *([] if token else ["--no-token"])],
                                     stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.dir = tempfile.mkdtemp(prefix="eventrouter-bench-")
        sim = Simulator(events=[], port=self.port, token="bench-token")  # only to write a kubeconfig
        self.kubeconfig = str(sim.write_kubeconfig(Path(self.dir) / "kubeconfig"))

    def _say(self, line: str) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        self.proc.stdout.readline()

    def prepare(self, n: int) -> None:
        """Make n events in the child, untimed; ``go()`` releases them into the watch."""
        self._say(f"prep {n}")

    def go(self, n: int | None = None) -> None:
        if n is not None:
            self.prepare(n)
        self._say("go")

    def source_flag(self) -> str:
        return f"kubernetes:?inClusterConfig=false&auth={self.kubeconfig}"

    def close(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write("stop\n")
            self.proc.stdin.flush()
            self.proc.wait(10)
        except Exception:
            self.proc.kill()


class RouterInProcess:
    """The real source (list+watch against the simulator child) and router, in this process."""

    def __init__(self, sim: SimulatorChild, sinks: list[Sink], checkpoint: str | None = None,
                 enrich: EnrichSettings | None = None) -> None:
        ctx = SourceContext(cluster="bench", checkpoint=checkpoint or f"file:{sim.dir}/checkpoint.json")
        self.source = build_source(sim.source_flag(), ctx)
        # with a data directory, as eventrouter.app.run builds them: a sink that falls behind spills to disk
        self.router = Router(SinkRunner.build(s, label=f"{s.name}-{i}", data_dir=f"{sim.dir}/data")
                             for i, s in enumerate(sinks))
        self.enricher = attach_enricher(self.router, self.source, enrich) if enrich is not None else None
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.source.run, args=(self.router, self.stop_event), daemon=True)

    def start(self, timeout: float = 30.0) -> None:
        tune_gc()  # as eventrouter.app.run does
        self.router.start()
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.source.state.ready and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self.source.state.ready:
            raise RuntimeError("the source did not finish its first list")

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        self.thread.join(timeout)
        self.router.stop(timeout)
        if self.enricher is not None:
            self.enricher.close()


def stop_router(proc: subprocess.Popen[Any], timeout: float = 60) -> None:
    """SIGTERM a router process the benchmark spawned, and SIGKILL it if it has not exited in ``timeout``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def report(name: str, figures: dict[str, Any]) -> dict[str, Any]:
    """One JSON line per benchmark, for comparing commits."""
    print(json.dumps({"benchmark": name, **figures}, sort_keys=False), flush=True)
    return figures
