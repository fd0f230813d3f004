"""HTTP endpoints on --healthz-ip:--healthz-port (default 0.0.0.0:8084): /healthz, /readyz, /metrics.

- ``/metrics``: Prometheus text format. Nothing is counted on the hot path for it: the collector
  reads the router's and the source's plain int counters when Prometheus scrapes. Labels are
  bounded: ``sink`` (one per ``--sink`` flag), ``type`` (the watch event type ADDED, MODIFIED,
  DELETED, BOOKMARK, ERROR or ``other``; or the Event's type Normal, Warning or ``other``),
  ``reason`` (a fixed set). No namespace, object or reason-of-event labels (their cardinality is unbounded).
- ``/healthz`` (liveness): 500 when a sink worker died, or when the leader's source got no answer
  from the API server for longer than ``--healthz-window`` (see ``health.py``); 200 ``ok`` otherwise.
- ``/readyz`` (readiness): 200 once the first list succeeded, or at once on a standby replica
  (``--leader-elect`` and not holding the Lease); 503 before that and while the checkpoint cannot be
  written.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from eventrouter import __version__
from eventrouter.health import SourceState
from eventrouter.router import LATENCY_BUCKETS, Router

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

# prometheus_client is imported at the first scrape, not at start-up: it is not needed to reach the
# first watch request (issue 20, start-up time)

# per-sink counters: SinkStats field -> help text (exported as eventrouter_sink_events_<field>_total)
_SINK_COUNTERS = {
    "sent": "Events delivered to the sink",
    "filtered": "Events the sink's filters (level, namespaces, kinds, reasons, ...) left out",
    "failed": "Events that failed permanently or ran out of retries",
    "retried": "Event sends retried after a retryable error",
    "spilled": "Events written to the sink's disk buffer (it was behind by more than queue_size)",
    "relist_skipped": "Re-listed events the sink already had (settled, queued or buffered): not sent again",
}

# source counters: SourceState field -> (metric name, help text)
_SOURCE_COUNTERS = {
    "malformed": ("eventrouter_events_malformed", "Objects read from the source that were not valid events"),
    "watch_restarts": ("eventrouter_watch_restarts", "Watches that ended and were started again"),
    "relists": ("eventrouter_watch_relists", "Re-lists after the API server answered 410 Gone"),
    "duplicates_suppressed": (
        "eventrouter_events_duplicates_suppressed",
        "Events already seen (same uid and resourceVersion, e.g. after a re-list) and not sent again",
    ),
    "unchanged_suppressed": (
        "eventrouter_events_unchanged_suppressed",
        "MODIFIED events with nothing new for the sinks (no count or time bump) and not sent",
    ),
}


WATCH_TYPES = ("ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR")


def bounded_watch_types(received: dict[str, int]) -> dict[str, int]:
    """The received counts with any type a server invents summed as ``other``: the label stays bounded."""
    counts: dict[str, int] = {}
    for watch_type, value in list(received.items()):
        label = watch_type if watch_type in WATCH_TYPES else "other"
        counts[label] = counts.get(label, 0) + value
    return counts


class RouterCollector:
    """Reads the router's and the source's plain counters at scrape time (nothing on the hot path).
    A prometheus_client collector (it has ``collect``)."""

    def __init__(self, router: Router, state: SourceState) -> None:
        self.router = router
        self.state = state

    def collect(self) -> Iterator[Metric]:
        yield from self._source_metrics()
        if self.router.enricher is not None:
            yield from self.router.enricher.metrics()
        yield from self._sink_metrics()

    # ---- the source: what was read, watch health, checkpoint, leadership -------------------------
    def _source_metrics(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        state = self.state
        info = GaugeMetricFamily("eventrouter_build_info", "Version of the running eventrouter", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        received = CounterMetricFamily(
            "eventrouter_events_received",
            "Events read from the source, by watch event type (ADDED, MODIFIED, DELETED, BOOKMARK, ERROR, other)",
            labels=["type"],
        )
        for watch_type, value in sorted(bounded_watch_types(state.received).items()):
            received.add_metric([watch_type], value)
        yield received
        routed = CounterMetricFamily(
            "eventrouter_events_routed",
            "Events passed to the sinks' filters, by the Event's type (Normal, Warning, other)",
            labels=["type"],
        )
        for event_type, value in dict(self.router.event_types).items():
            routed.add_metric([event_type], value)
        yield routed
        for field, (name, help_text) in _SOURCE_COUNTERS.items():
            yield CounterMetricFamily(name, help_text, value=getattr(state, field))
        yield GaugeMetricFamily(
            "eventrouter_leader",
            "1 while this replica delivers events (holds the Lease, or no --leader-elect)",
            value=1 if state.leader else 0,
        )
        yield GaugeMetricFamily(
            "eventrouter_ready",
            "1 once the first list succeeded (what /readyz reports for the leader)",
            value=1 if state.ready else 0,
        )
        yield GaugeMetricFamily(
            "eventrouter_source_idle_seconds",
            "Seconds since the last event or bookmark from the source",
            value=max(0.0, time.monotonic() - state.last_progress),
        )
        if state.checkpoint_written is not None:  # absent until the first write: no fake "age 0"
            yield GaugeMetricFamily(
                "eventrouter_checkpoint_age_seconds",
                "Seconds since the resume position was last written",
                value=max(0.0, time.time() - state.checkpoint_written),
            )

    def _buffer_metrics(self) -> Iterator[Metric]:
        """Each sink's disk buffer (part core): bytes on disk against buffer_max_bytes."""
        from prometheus_client.core import GaugeMetricFamily

        used = GaugeMetricFamily("eventrouter_sink_buffer_bytes", "Bytes in the sink's disk buffer", labels=["sink"])
        limit = GaugeMetricFamily("eventrouter_sink_buffer_capacity_bytes", "The sink's buffer_max_bytes (0: none)",
                                  labels=["sink"])
        for runner in self.router.runners:
            used.add_metric([runner.label], runner.buffer.size if runner.buffer is not None else 0)
            limit.add_metric([runner.label], runner.delivery.buffer_max_bytes)
        yield used
        yield limit

    # ---- each sink: outcomes, queue, latency, worker ------------------------------------------
    def _sink_metrics(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        runners = self.router.runners
        for field, help_text in _SINK_COUNTERS.items():
            family = CounterMetricFamily(f"eventrouter_sink_events_{field}", help_text, labels=["sink"])
            for runner in runners:
                family.add_metric([runner.label], getattr(runner.stats, field))
            yield family
        yield from _chat_metrics(runners)
        dropped = CounterMetricFamily(
            "eventrouter_sink_events_dropped",
            "Events dropped: overflow (queue full) or shutdown (not delivered before --shutdown-timeout)",
            labels=["sink", "reason"],
        )
        for runner in runners:
            dropped.add_metric([runner.label, "overflow"], runner.stats.dropped_overflow)
            dropped.add_metric([runner.label, "shutdown"], runner.stats.dropped_shutdown)
        yield dropped
        depth = GaugeMetricFamily(
            "eventrouter_sink_queue_depth", "Events waiting for the sink (queued or in flight)", labels=["sink"]
        )
        capacity = GaugeMetricFamily("eventrouter_sink_queue_capacity", "The sink's queue_size", labels=["sink"])
        up = GaugeMetricFamily("eventrouter_sink_worker_up", "1 while the sink's worker thread runs", labels=["sink"])
        for runner in runners:
            depth.add_metric([runner.label], runner.depth)
            capacity.add_metric([runner.label], runner.delivery.queue_size)
            up.add_metric([runner.label], 1 if runner.alive else 0)
        yield depth
        yield capacity
        yield up
        yield from self._buffer_metrics()
        latency = HistogramMetricFamily(
            "eventrouter_sink_batch_duration_seconds",
            "Time from a batch's first send attempt until it settled (delivered or failed), retries included",
            labels=["sink"],
        )
        for runner in runners:
            counts = list(runner.stats.latency_counts)  # one copy: buckets and count agree
            buckets, total = [], 0
            for bound, count in zip((*map(_le, LATENCY_BUCKETS), "+Inf"), counts, strict=True):
                total += count
                buckets.append((bound, total))
            latency.add_metric([runner.label], buckets, sum_value=runner.stats.latency_sum)
        yield latency


# a chat sink's ChatStats field -> the outcome label of eventrouter_chat_events_total
_CHAT_OUTCOMES = {"events_posted": "posted", "events_folded": "folded", "events_in_digests": "in_posted_digest",
                  "repeats_suppressed": "repeat_held_back", "events_failed": "refused", "events_kept": "kept"}


def _chat_metrics(runners: list[Any]) -> Iterator[Metric]:
    """Chat sinks (those with ``chat_stats()``, see eventrouter.chat_transport.ChatSink): messages posted
    and what happened to the events, apart, since one message may stand for many events (a digest)."""
    from prometheus_client.core import CounterMetricFamily

    # the families exist (empty) without a chat sink too: dashboards and alerts see a stable set of names
    chats = [(r.label, r.sink.chat_stats()) for r in runners if callable(getattr(r.sink, "chat_stats", None))]

    messages = CounterMetricFamily("eventrouter_chat_messages", "Chat messages posted: single events and digest "
                                   "messages", labels=["sink", "kind"])
    events = CounterMetricFamily("eventrouter_chat_events", "What a chat sink did with the events it was given "
                                 "(posted alone, folded into a digest, in a posted digest, repeat held back, "
                                 "refused by the service, kept for after a restart)", labels=["sink", "outcome"])
    for label, stats in chats:
        messages.add_metric([label, "event"], stats.messages - stats.digests)
        messages.add_metric([label, "digest"], stats.digests)
        for field, outcome in _CHAT_OUTCOMES.items():
            events.add_metric([label, outcome], getattr(stats, field))
    yield messages
    yield events


def _le(bound: float) -> str:
    return repr(float(bound))


class _RequestHandler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            from prometheus_client import generate_latest

            self._reply(200, generate_latest(self.server.registry()), "text/plain; version=0.0.4; charset=utf-8")
        elif path == "/healthz":
            problem = self.server.health_problem()
            self._reply(500 if problem else 200, (problem or "ok").encode())
        elif path == "/readyz":
            problem = self.server.readiness_problem()
            self._reply(503 if problem else 200, (problem or "ok").encode())
        else:
            self._reply(404, b"not found; try /healthz, /readyz or /metrics")

    def _reply(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # probes every few seconds would flood the log


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    timeout = 1.0  # handle_request()'s own wait, should a ready listener have nothing to accept after all

    def __init__(self, address: tuple[str, int], router: Router, state: SourceState, window: float) -> None:
        super().__init__(address, _RequestHandler)
        self.router = router
        self.state = state
        self.window = window
        self._registry: CollectorRegistry | None = None
        self._registry_lock = threading.Lock()
        self._serving: threading.Thread | None = None

    def registry(self) -> CollectorRegistry:
        """The Prometheus registry, made at the first scrape."""
        with self._registry_lock:
            if self._registry is None:
                from prometheus_client import CollectorRegistry

                registry = CollectorRegistry()
                registry.register(RouterCollector(self.router, self.state))
                self._registry = registry
            return self._registry

    def start(self) -> None:
        self._wake_r, self._wake_w = socket.socketpair()
        self._serving = threading.Thread(target=self._serve, name="healthz", daemon=True)
        self._serving.start()

    def _serve(self) -> None:
        # socketserver's serve_forever() wakes every 0.5 s to look for a shutdown(); a quiet process should
        # not wake at all, so this loop sleeps until a connection, or shutdown()'s byte on the socket pair
        with selectors.DefaultSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    if key.fileobj is self._wake_r:
                        return
                    self.handle_request()  # accept (it is ready), then answer on a handler thread

    def shutdown(self) -> None:
        """Stop serving (new connections); requests being answered finish on their own threads."""
        thread = self._serving
        if thread is None:
            return
        self._serving = None
        self._wake_w.send(b"\0")
        thread.join(10)
        self._wake_r.close()
        self._wake_w.close()

    def health_problem(self) -> str | None:
        """Why the process should be restarted, or None."""
        dead = [r.label for r in self.router.runners if not r.alive]
        if dead:
            return f"sink workers not running: {', '.join(dead)}"
        return self.state.liveness_problem(self.window)  # the source's rule lives in health.py

    def readiness_problem(self) -> str | None:
        return self.state.readiness_problem()


def serve(host: str, port: int, router: Router, state: SourceState, window: float = 600.0, *,
          start: bool = True) -> _Server:
    """Bind (OSError if the address is taken) and, unless ``start=False``, serve on a daemon thread
    (then call ``server.start()``); ``port=0`` picks a free port (see ``server_address``)."""
    server = _Server((host, port), router, state, window)
    if start:
        server.start()
    return server
