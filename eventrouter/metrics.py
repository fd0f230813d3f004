"""HTTP endpoints on --healthz-ip:--healthz-port: /healthz, /readyz and Prometheus /metrics."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from eventrouter.health import SourceState
from eventrouter.router import Router


class RouterCollector(Collector):
    """Reads the router's and the source's plain counters at scrape time (nothing on the hot path)."""

    def __init__(self, router: Router, state: SourceState) -> None:
        self.router = router
        self.state = state

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        received = CounterMetricFamily("eventrouter_events_received", "Events read from the source", labels=["type"])
        for watch_type, value in sorted(self.state.received.items()):
            received.add_metric([watch_type], value)
        yield received
        yield CounterMetricFamily("eventrouter_events_malformed", "Objects that were not valid events",
                                  value=self.state.malformed)
        per_sink = {
            "sent": "Events delivered",
            "filtered": "Events the sink's filters dropped",
            "failed": "Events that failed permanently or ran out of retries",
            "retried": "Event sends retried",
        }
        for field, help_text in per_sink.items():
            family = CounterMetricFamily(f"eventrouter_sink_events_{field}", help_text, labels=["sink"])
            for runner in self.router.runners:
                family.add_metric([runner.label], getattr(runner.stats, field))
            yield family
        dropped = CounterMetricFamily("eventrouter_sink_events_dropped", "Events dropped", labels=["sink", "reason"])
        for runner in self.router.runners:
            dropped.add_metric([runner.label, "overflow"], runner.stats.dropped_overflow)
            dropped.add_metric([runner.label, "shutdown"], runner.stats.dropped_shutdown)
        yield dropped
        depth = GaugeMetricFamily("eventrouter_sink_queue_depth", "Events waiting for the sink", labels=["sink"])
        for runner in self.router.runners:
            depth.add_metric([runner.label], runner.depth)
        yield depth


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._reply(200, generate_latest(self.server.registry), "text/plain; version=0.0.4; charset=utf-8")
        elif path == "/healthz":
            problem = self.server.health_problem()
            self._reply(500 if problem else 200, (problem or "ok").encode())
        elif path == "/readyz":
            ready = self.server.state.ready or not self.server.state.leader
            self._reply(200 if ready else 503, b"ok" if ready else b"waiting for the first list")
        else:
            self._reply(404, b"not found")

    def _reply(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], router: Router, state: SourceState, window: float) -> None:
        super().__init__(address, _Handler)
        self.router = router
        self.state = state
        self.window = window
        self.registry = CollectorRegistry()
        self.registry.register(RouterCollector(router, state))

    def health_problem(self) -> str | None:
        if not self.router.healthy:
            dead = [r.label for r in self.router.runners if not r.alive]
            return f"sink workers not running: {', '.join(dead)}"
        if self.state.leader and self.state.ready and not self.state.finished.is_set():
            idle = time.monotonic() - self.state.last_progress
            if self.window and idle > self.window:
                return f"no event or bookmark from the source for {idle:.0f}s"
        return None


def serve(host: str, port: int, router: Router, state: SourceState, window: float = 600.0) -> _Server:
    server = _Server((host, port), router, state, window)
    threading.Thread(target=server.serve_forever, name="healthz", daemon=True).start()
    return server
