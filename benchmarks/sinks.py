"""Per-sink throughput against the real servers the tests use: events/s until the server has them all.

Targets (each started on loopback with its data in a temp dir, by the test fixtures' own classes in
``tests/servers/``): Kafka (the ``tansu`` broker), MySQL (MariaDB), InfluxDB 1.x, S3 (moto's server)
and webhook (the tests' recording HTTP server).

Each run builds the sink from a ``--sink`` flag (its default delivery options unless the run names a
``batch_size``; ``queue_size`` is raised to N so the burst measures throughput, not the overflow
policy), opens it as ``eventrouter`` does, drives it through the real router (``SinkRunner`` +
``Router``), dispatches N pre-normalized real events (the recorded core/v1 Events re-stamped to now,
each with a fresh uid) as fast as dispatch takes them and stops the clock when the last one is
confirmed stored:

- kafka, mysql, influxdb, webhook: when the router has settled all N (each batch is acked only after
  the server acknowledged the write: Kafka ``acks=all`` delivery reports, a committed INSERT, HTTP 2xx);
- s3: the sink acks once an event is fsynced in its spool and uploads sealed chunks later, so the
  clock stops when ``close()`` (router stop) has uploaded everything.

Then the server is asked what it holds (not timed): Kafka messages consumed up to an end marker,
``SELECT COUNT(*)``, InfluxDB ``SELECT count(*)``, the lines of every S3 object, the events in the
webhook's received bodies. A run whose server does not hold exactly N events raises.
"""

from __future__ import annotations

import gzip
import logging
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._common import cpu_seconds, report
from eventrouter import Event
from eventrouter.config import build_sink
from eventrouter.router import Router, SinkRunner
from eventrouter.simulator.sim import load_events
from eventrouter.simulator.store import restamp


def bench_events(n: int) -> list[Event]:
    """N normalized Events from the recorded real ones: times set to now, every uid unique."""
    objs = load_events("builtin")
    copies = -(-n // len(objs))
    events = []
    for obj in restamp(objs, copies, True)[:n]:
        obj["metadata"]["uid"] = str(uuid.uuid4())  # the recording itself repeats two uids
        events.append(Event.from_object(obj, "bench"))
    return events


@dataclass
class Target:
    """A running server: the sink flag that writes to it and how to count what it holds."""

    flag: Callable[[str], str]  # run name -> --sink flag (no delivery options)
    stored: Callable[[str], int]  # run name -> events the server holds for that run
    stored_on_close: bool = False  # acks before the data is on the server (S3): time until close


# ---- the servers (the test fixtures' classes) ---------------------------------------------------
@contextmanager
def kafka_target() -> Iterator[Target]:
    from tests.servers.tansu import Tansu

    broker = Tansu().start()
    try:
        yield Target(lambda run: f"kafka:?brokers={broker.bootstrap}&eventstopic={run}",
                     lambda run: len(broker.read(run, timeout=120)))
    finally:
        broker.stop()


@contextmanager
def mysql_target() -> Iterator[Target]:
    from tests.servers.mariadb import MariaDB

    with tempfile.TemporaryDirectory(prefix="eventrouter-bench-mariadb-") as tmp:
        server = MariaDB(Path(tmp)).start()
        try:
            yield Target(lambda run: f"mysql:?{server.dsn()}&table={run}",
                         lambda run: server.query(f"SELECT COUNT(*) AS n FROM `{run}`")[0]["n"])
        finally:
            server.stop()


@contextmanager
def influxdb_target() -> Iterator[Target]:
    from tests.servers.influxdb import ADMIN, ADMIN_PASSWORD, InfluxDB

    def stored(run: str) -> int:
        result = server.query('SELECT count("value") FROM "log/events"', run)
        series = result.get("series") or [{"values": [[0, 0]]}]
        return int(series[0]["values"][0][1])

    with tempfile.TemporaryDirectory(prefix="eventrouter-bench-influxdb-") as tmp:
        server = InfluxDB(Path(tmp)).start()
        try:
            yield Target(lambda run: f"influxdb:{server.url}?user={ADMIN}&pw={ADMIN_PASSWORD}&db={run}", stored)
        finally:
            server.stop()


@contextmanager
def s3_target() -> Iterator[Target]:
    from tests.servers.moto_s3 import ENV, REGION, MotoS3

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request
    def stored(run: str) -> int:
        return sum(gzip.decompress(server.body(run, key)).count(b"\n") for key in server.keys(run))

    def flag(run: str) -> str:
        server.client().create_bucket(Bucket=run)
        return (f"s3:s3://{run}/events?region={REGION}&endpoint_url={server.endpoint}&store_dir={tmp}/{run}"
                f"&access_key_id={ENV['AWS_ACCESS_KEY_ID']}&secret_access_key={ENV['AWS_SECRET_ACCESS_KEY']}")

    with tempfile.TemporaryDirectory(prefix="eventrouter-bench-s3-") as tmp:
        server = MotoS3().start()
        try:
            yield Target(flag, stored, stored_on_close=True)
        finally:
            server.stop()


@contextmanager
def webhook_target() -> Iterator[Target]:
    from tests.servers.fake_webhook import FakeWebhook

    def stored(run: str) -> int:
        received = 0  # every event of every request (a duplicate would count twice)
        for request in server.requests:
            if request.path == f"/{run}":
                body = request.json()
                received += len(body) if isinstance(body, list) else 1
        return received

    server = FakeWebhook().start()
    try:
        yield Target(lambda run: f"webhook:{server.url('/' + run)}", stored)
    finally:
        server.stop()


@contextmanager
def webhook_keepalive_target() -> Iterator[Target]:
    from benchmarks._servers import KeepAliveReceiver

    with KeepAliveReceiver() as server:
        yield Target(lambda run: f"webhook:{server.url('/' + run)}", lambda run: server.count(f"/{run}"))


@contextmanager
def otlp_target() -> Iterator[Target]:
    from tests.servers.fake_otlp import FakeOTLP

    def stored(run: str) -> int:
        # every record of every request to this run's path (a duplicate would count twice)
        return sum(len(r.records()) for r in server.received if r.path == f"/{run}/v1/logs")

    server = FakeOTLP(decode_later=True).start()  # JSON bodies decoded when counted, not while timed
    try:
        yield Target(lambda run: f"otlp:{server.url}/{run}", stored)
    finally:
        server.stop()


@contextmanager
def loki_target() -> Iterator[Target]:
    from tests.servers.fake_loki import FakeLoki

    server = FakeLoki().start()
    try:
        # each run its own tenant, so runs do not share streams (the out-of-order window is per stream)
        yield Target(lambda run: f"loki:{server.url}?tenant={run}",
                     lambda run: sum(1 for entry in server.entries if entry.tenant == run))
    finally:
        server.stop()


@contextmanager
def firehose_target() -> Iterator[Target]:
    from tests.servers.moto_firehose import create_stream, stored_lines
    from tests.servers.moto_s3 import ENV, REGION, MotoS3

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request

    def flag(run: str) -> str:
        create_stream(server, run, f"{run}-dest")
        return (f"firehose:{run}?region={REGION}&endpoint_url={server.endpoint}"
                f"&access_key_id={ENV['AWS_ACCESS_KEY_ID']}&secret_access_key={ENV['AWS_SECRET_ACCESS_KEY']}")

    server = MotoS3().start()
    try:
        yield Target(flag, lambda run: len(stored_lines(server, f"{run}-dest")))
    finally:
        server.stop()


# sink -> (server, the runs: extra flag options; "" = the sink's defaults)
SINKS: dict[str, tuple[Callable[[], Any], list[str]]] = {
    "kafka": (kafka_target, ["", "batch_size=5000"]),
    "mysql": (mysql_target, ["", "batch_size=5000"]),
    "influxdb": (influxdb_target, ["", "batch_size=5000"]),
    "s3": (s3_target, ["", "batch_size=5000"]),
    "otlp": (otlp_target, ["", "encoding=json"]),
    "loki": (loki_target, ["", "encoding=json"]),
    "firehose": (firehose_target, [""]),
    "webhook": (webhook_target, ["", "batch=true", "batch=true&batch_size=1000"]),
    # the same sink against a keep-alive receiver in its own process: the sink's own cost per request
    "webhook-keepalive": (webhook_keepalive_target, ["", "batch=true"]),
}


def run_one(target: Target, name: str, run: str, extra: str, events: list[Event]) -> dict[str, Any]:
    n = len(events)
    flag = target.flag(run)
    sink = build_sink(f"{flag}{'&' if '?' in flag else '?'}queue_size={n}{'&' + extra if extra else ''}")
    sink.open()
    runner = SinkRunner.build(sink)
    router = Router([runner])
    router.start()
    stopped = False
    try:
        cpu0 = cpu_seconds()
        start = time.monotonic()
        for event in events:
            router.dispatch(event)
        deadline = start + 900
        while router.settled_seq() < n:
            if time.monotonic() > deadline or not runner.alive:
                raise RuntimeError(f"{name}: only {router.settled_seq()} of {n} events settled")
            time.sleep(0.002)
        if target.stored_on_close:
            stopped = router.stop(300)
            if not stopped:
                raise RuntimeError(f"{name}: close did not finish")
        elapsed = time.monotonic() - start
        cpu = cpu_seconds() - cpu0
    finally:
        if not stopped:
            router.stop(60)
    stats = runner.stats
    verify_start = time.monotonic()
    stored = target.stored(run)
    verify = time.monotonic() - verify_start
    if stored != n or stats.failed:
        raise RuntimeError(f"{name} {extra or 'defaults'}: server holds {stored} of {n} events "
                           f"(sent {stats.sent}, failed {stats.failed}, retried {stats.retried})")
    delivery = runner.delivery
    return report(f"sink-{name}", {
        "sink": sink.name,
        "events": n,
        "events_per_s": round(n / elapsed),
        "seconds": round(elapsed, 2),
        "batch_size": delivery.batch_size,
        "flush_interval": delivery.flush_interval,
        "options": extra or "defaults",
        "stored": stored,
        "batches": stats.batches,
        "retried": stats.retried,
        "cpu_s_per_100k": round(cpu / n * 100_000, 2),
        "verify_s": round(verify, 2),
    })


def run(n: int = 50_000, names: list[str] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """Every run of every named sink (all by default): (table title, figures)."""
    events = bench_events(n)
    results = []
    for name in names or list(SINKS):
        start_server, runs = SINKS[name]
        with start_server() as target:
            for index, extra in enumerate(runs):
                figures = run_one(target, name, f"bench{index}", extra, events)
                size = figures["batch_size"]
                if name.startswith("webhook"):
                    title = f"{name}, batch=true {size}" if "batch=true" in extra else f"{name}, 1 per request"
                else:
                    title = f"{name}, batch_size {size}" + (f", {extra}" if extra and "batch_size" not in extra else "")
                results.append((title, figures))
    return results
