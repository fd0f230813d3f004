"""Test fixtures for the Kubernetes source: the simulator on 127.0.0.1 and a collecting sink.

``Harness`` runs one KubernetesSource + Router on a thread, as ``eventrouter.app`` does, so tests
can stop it cleanly (final checkpoint, Lease released) or kill it (no release).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from eventrouter import Event, Sink, SinkURL
from eventrouter.router import Router, SinkRunner
from eventrouter.simulator import Simulator
from eventrouter.sources import SourceContext, build_source

__all__ = ["Collector", "Harness", "Simulator", "wait_for"]


class Collector(Sink):
    """Keeps every delivered event, in order; ``fail_next`` makes sends fail (retryable)."""

    name = "collect"
    options: ClassVar = ()
    # the harness runs without a data dir (no disk buffer), so the memory window must hold a minute of a busy
    # cluster on a loaded machine: at the default 1,000 the overflow policy dropped events mid-test
    delivery_defaults: ClassVar = {"batch_size": 100, "flush_interval": 0.05, "queue_size": 100_000}

    def __init__(self, url: SinkURL, opts: Any) -> None:
        super().__init__(url, opts)
        self.events: list[Event] = []
        self.lock = threading.Lock()

    @classmethod
    def make(cls, query: str = "") -> Collector:
        return cls.from_url(SinkURL.parse(f"collect:?{query}"))  # type: ignore[return-value]

    def send(self, batch: Sequence[Event]) -> None:
        with self.lock:
            self.events.extend(batch)

    @property
    def keys(self) -> list[tuple[str, str]]:
        with self.lock:
            return [(e.uid, e.resource_version) for e in self.events]

    @property
    def occurrences(self) -> list[tuple[str, int]]:
        with self.lock:
            return [(e.uid, e.count) for e in self.events]


def wait_for(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Harness:
    """A source + router + collector running on threads, like ``eventrouter.app.run``."""

    def __init__(self, flag: str, ctx: SourceContext, sink: Collector | None = None,
                 checkpoint_interval: float = 0.2, others: Sequence[tuple[str, Sink]] = (),
                 data_dir: str | None = None) -> None:
        """``others``: more sinks, as (label, sink), next to ``sink`` (labelled ``collect``). ``data_dir``:
        where the sinks keep their disk buffers, as ``--data-dir`` (none by default: memory windows only)."""
        self.sink = sink or Collector.make()
        self.ctx = ctx
        self.source = build_source(flag, ctx)
        self.source.checkpoint_interval = checkpoint_interval  # type: ignore[attr-defined]
        self.router = Router([SinkRunner.build(self.sink, label="collect", data_dir=data_dir),
                              *(SinkRunner.build(other, label=label, data_dir=data_dir) for label, other in others)])
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.source.run, args=(self.router, self.stop_event), daemon=True)

    @property
    def state(self) -> Any:
        return self.source.state

    def start(self) -> Harness:
        self.router.start()
        self.thread.start()
        return self

    def stop(self, release: bool = True) -> None:
        """A clean shutdown: stop watching, drain, final checkpoint, release the Lease."""
        self.stop_event.set()
        self.thread.join(10)
        assert not self.thread.is_alive(), "the source did not stop"
        self.router.stop(10)
        self.source.finish(self.router, release=release)  # type: ignore[call-arg]

    def kill(self) -> None:
        """A crash: no final checkpoint, the Lease is not released."""
        elector = getattr(self.source, "elector", None)
        if elector is not None:
            elector.stop(release=False)
        self.source._done.set()  # type: ignore[attr-defined]  # no more checkpoint writes
        self.stop_event.set()
        self.source.api.abort()  # type: ignore[attr-defined]  # the housekeeping thread is gone: wake the read
        self.thread.join(10)
        self.router.stop(0.5)
