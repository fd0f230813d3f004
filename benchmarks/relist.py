"""410 after an hour of a busy cluster, across a restart, with a ConfigMap checkpoint and a lagging sink.

The simulator runs at kube-apiserver's defaults (no bookmarks, compaction every 5 minutes, Event TTL 1 h)
on a virtual clock: ``minutes`` of ``rate`` events/s (a quarter are count bumps) happen while the router
watches, a minute at a time; a second sink (a webhook) loses its receiver for the last 5 minutes. The router
stops (SIGTERM path: drain, final checkpoint), 10 minutes pass (its position is compacted away), it
restarts with the receiver back: the watch gets 410 and the whole live set is listed again.

Figures: lost and duplicated at the healthy sink and at the lagging one (must be 0 and 0), the re-list's
size and time (from the restart until the healthy sink has what is new to it), the ConfigMap checkpoint's
size (two sinks).
"""

from __future__ import annotations

import collections
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import report
from eventrouter import Event, RetryableError, Sink, SinkURL
from eventrouter.router import Router, SinkRunner
from eventrouter.simulator.sim import Simulator
from eventrouter.sources import SourceContext, build_source

NAMESPACES = ("shop", "payments", "kube-system")
CHECKPOINT = ("monitoring", "eventrouter-checkpoint")


class KeySink(Sink):
    """Keeps (uid, resourceVersion) of what it got; refuses everything (retryably) while ``down``."""

    name = "keys"

    def __init__(self, url, opts):  # type: ignore[no-untyped-def]
        super().__init__(url, opts)
        self.keys: list[tuple[str, str]] = []
        self.down = False

    def send(self, batch: Sequence[Event]) -> None:
        if self.down:
            raise RetryableError("connection refused")
        self.keys.extend((e.uid, e.resource_version) for e in batch)


def _sink(down: bool) -> KeySink:
    sink = KeySink.from_url(SinkURL.parse("keys:?retry_backoff_max=0.5&max_retries=1000000"))
    assert isinstance(sink, KeySink)
    sink.down = down
    return sink


class _Run:
    def __init__(self, sim: Simulator, kubeconfig: Path, data: str, healthy: KeySink, webhook: KeySink) -> None:
        ctx = SourceContext(cluster="bench", checkpoint=f"configmap:{CHECKPOINT[0]}/{CHECKPOINT[1]}")
        self.source = build_source(f"kubernetes:?inClusterConfig=false&auth={kubeconfig}", ctx)
        self.router = Router([SinkRunner.build(healthy, label="file", data_dir=data),
                              SinkRunner.build(webhook, label="webhook", data_dir=data)])
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.source.run, args=(self.router, self.stop_event), daemon=True)
        self.router.start()
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(30)
        self.router.stop(5)
        self.source.finish(self.router)  # type: ignore[attr-defined]


def _wait(check: Any, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.05)


def _history(sim: Simulator, after: int) -> list[tuple[str, str]]:
    with sim.store.cond:
        return [(c.obj["metadata"]["uid"], c.obj["metadata"]["resourceVersion"])
                for c in sim.store.history if c.rv > after and c.type != "DELETED"]


def _checkpoint_bytes(sim: Simulator) -> int:
    return len(sim.store.get_object("ConfigMap", *CHECKPOINT)["data"]["checkpoint.json"].encode())


def run(minutes: int = 60, rate: int = 30) -> dict[str, Any]:
    data = tempfile.mkdtemp(prefix="eventrouter-bench-")
    sim = Simulator([], clock_offset=-(minutes + 12) * 60).start()
    try:
        kubeconfig = sim.write_kubeconfig(Path(data) / "kubeconfig")
        healthy, webhook = _sink(False), _sink(False)
        first = _Run(sim, kubeconfig, data, healthy, webhook)
        _wait(lambda: first.source.state.ready)
        made = 0
        for minute in range(minutes):
            webhook.down = minute >= minutes - 5  # its receiver goes away: it lags from here on
            sim.advance(60, rate=rate, repeat_share=0.25, namespaces=NAMESPACES)
            made += 60 * rate
            _wait(lambda: len(healthy.keys) >= made)  # noqa: B023
        first.stop()
        size_after_hour = _checkpoint_bytes(sim)
        sim.advance(600, rate=rate, repeat_share=0.25, namespaces=NAMESPACES)  # down for 10 minutes
        mark = sim.store.rv
        with sim.store.cond:
            live = {(u, o["metadata"]["resourceVersion"]) for u, o in sim.store.events.items()}
        new_to_healthy = live - set(healthy.keys)
        healthy2, webhook2 = _sink(False), _sink(False)  # the receiver is back
        started = time.monotonic()
        second = _Run(sim, kubeconfig, data, healthy2, webhook2)
        try:
            _wait(lambda: second.source.state.relists >= 1 and len(healthy2.keys) >= len(new_to_healthy), timeout=120)
        except RuntimeError:
            pass  # counted as lost below
        relist_s = time.monotonic() - started
        try:  # the lagging sink: its disk buffer, then what the re-list gives it
            _wait(lambda: live <= set(webhook.keys) | set(webhook2.keys), timeout=120)
        except RuntimeError:
            pass  # counted as lost below
        time.sleep(1.0)  # anything more would be a duplicate
        second.stop()
        after = _history(sim, mark)
        size_after_relist = _checkpoint_bytes(sim)
    finally:
        sim.stop()
    healthy_keys = healthy.keys + healthy2.keys
    webhook_keys = webhook.keys + webhook2.keys
    return report("relist-after-an-hour", {
        "changes": made + 600 * rate + len(after), "live_events_relisted": len(live),
        "lost_healthy": len(live - set(healthy_keys)),
        "duplicated_healthy": sum(n - 1 for n in collections.Counter(healthy_keys).values()),
        "lost_lagging": len(live - set(webhook_keys)),
        "duplicated_lagging": sum(n - 1 for n in collections.Counter(webhook_keys).values()),
        "relist_s": round(relist_s, 1),
        "checkpoint_kb_after_hour": round(size_after_hour / 1024, 1),
        "checkpoint_kb_after_relist": round(size_after_relist / 1024, 1),
    })
