"""Test helpers for sink plugins: a fake cluster and the real ``eventrouter`` command run against it.

Public and stable under the same policy as ``eventrouter.__all__`` (docs/plugins.md, "Stability"): a
plugin's end-to-end test imports these, never ``eventrouter.simulator``, whose API may change.

::

    from eventrouter.testing import FakeCluster, run_eventrouter, wait_until

    def test_end_to_end(tmp_path):
        with FakeCluster() as cluster:
            cluster.add_event(type="Warning", reason="BackOff", message="Back-off restarting failed container")
            with run_eventrouter(cluster, "--sink=mysink:http://127.0.0.1:8080/in", workdir=tmp_path):
                wait_until(lambda: len(received) == 1)
        # leaving run_eventrouter sent SIGTERM and checked that eventrouter exited with status 0

Everything eventrouter writes (checkpoint, sink buffers and state) goes under ``workdir``: nothing is left
in the directory the tests run from.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eventrouter.event import Event, InvolvedObject

__all__ = ["FakeCluster", "run_eventrouter", "sample_event", "wait_until"]


class FakeCluster:
    """A fake Kubernetes API server on 127.0.0.1 (a free port) serving Events, with lists and watches.

    ``events``: Event objects (dicts) it holds at start; none by default. Use it as a context manager, or
    call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, events: Sequence[dict[str, Any]] = ()) -> None:
        from eventrouter.simulator import Simulator

        self._sim = Simulator(list(events))
        self._dir = tempfile.TemporaryDirectory(prefix="eventrouter-fake-cluster-")
        self.kubeconfig = Path(self._dir.name) / "kubeconfig"
        self._started = False

    def start(self) -> FakeCluster:
        self._sim.start()
        self._sim.write_kubeconfig(self.kubeconfig)
        self._started = True
        return self

    def stop(self) -> None:
        if self._started:
            self._sim.stop()
            self._started = False
        self._dir.cleanup()

    def __enter__(self) -> FakeCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def source_flag(self) -> str:
        """The ``--source`` flag that watches this cluster."""
        return f"--source=kubernetes:?inClusterConfig=false&auth={self.kubeconfig}"

    def add_event(self, obj: dict[str, Any] | None = None, *, namespace: str = "default", name: str | None = None,
                  type: str = "Warning", reason: str = "BackOff", message: str | None = None,
                  count: int = 1) -> dict[str, Any]:
        """Create an Event as the kubelet would (for Pod ``name``, stamped now), or store ``obj`` as given.
        Returns the stored object (its ``metadata.uid`` identifies it in what your sink receives)."""
        if obj is not None:
            return self._sim.add_event(obj)
        return self._sim.add_event(namespace=namespace, name=name, type=type, reason=reason, message=message,
                                   count=count)


@contextmanager
def run_eventrouter(cluster: FakeCluster | None, *args: str, workdir: str | Path,
                    timeout: float = 30.0) -> Iterator[subprocess.Popen[str]]:
    """Run the real ``eventrouter`` command (this Python's) with ``args``, watching ``cluster`` (or give
    your own ``--source`` and pass None). Its checkpoint and data directory are under ``workdir``, and its
    health port is free. On leaving the block it gets SIGTERM, as from Kubernetes; an exit status other
    than 0 raises AssertionError with the end of its log. Leave the block only once eventrouter is running
    (wait for what your sink receives): a SIGTERM during its first instants ends it with status -15."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "eventrouter", *([cluster.source_flag] if cluster else []), *args]
    if not any(a.startswith("--checkpoint") for a in args):
        command.append(f"--checkpoint=file:{workdir / 'checkpoint.json'}")
    if not any(a.startswith("--data-dir") for a in args):
        command.append(f"--data-dir={workdir / 'data'}")
    if not any(a.startswith("--healthz-port") for a in args):
        command.append("--healthz-port=0")
    log = (workdir / "eventrouter.log").open("w+")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True, cwd=workdir)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.seek(0)
        output = log.read()
        log.close()
    if proc.returncode != 0:
        raise AssertionError(f"eventrouter exited with status {proc.returncode}:\n{output[-3000:]}")


def wait_until(condition: Callable[[], object], timeout: float = 30.0, interval: float = 0.05,
               what: str = "the condition") -> None:
    """Poll ``condition`` until it is true; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout:g}s")
        time.sleep(interval)


def sample_event(n: int = 1, **fields: Any) -> Event:
    """A Warning BackOff Event for Pod ``app-<n>`` in ``default`` (for unit tests of ``send``); any field can be
    overridden, e.g. ``sample_event(2, type="Normal", message="Started")``."""
    when = datetime(2026, 4, 14, 9, 30, n % 60, tzinfo=UTC)
    values: dict[str, Any] = {
        "uid": f"00000000-0000-4000-8000-{n:012d}", "resource_version": str(1000 + n), "namespace": "default",
        "name": f"app-{n}.17a0b0c0d0e0f000", "type": "Warning", "reason": "BackOff",
        "message": f"Back-off restarting failed container app in pod app-{n}", "count": 1,
        "first_timestamp": when, "last_timestamp": when,
        "involved_object": InvolvedObject(kind="Pod", namespace="default", name=f"app-{n}", api_version="v1"),
        "source_component": "kubelet", "source_host": "node-1",
    }
    values.update(fields)
    return Event(**values)

