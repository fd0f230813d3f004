"""A 100,000-event burst through ``eventrouter`` at default delivery options: nothing lost, nothing twice.

One run of the app (the file source replays the burst as fast as it reads) feeds four sinks at once:
the jsonfile example sink, Kafka (a real tansu broker), MySQL (MariaDB) and InfluxDB 1.x. The slower
ones fall far behind the source, so their backlog goes through their disk buffers. Afterwards every
server is asked what it holds.
"""

from __future__ import annotations

import logging
import re
import uuid
from pathlib import Path

import orjson
import pytest

from eventrouter.app import RunConfig, run
from eventrouter.simulator.sim import load_events
from eventrouter.simulator.store import restamp
from eventrouter.sources import SourceContext
from tests.servers.influxdb import ADMIN, ADMIN_PASSWORD, InfluxDB
from tests.servers.mariadb import MariaDB
from tests.servers.tansu import Tansu

N = 100_000


def burst_file(path: Path, n: int) -> set[str]:
    """N Events (the recorded real ones, re-stamped, each with a fresh uid) as JSON lines; their uids."""
    objs = load_events("builtin")
    uids = set()
    with path.open("wb") as fh:
        for obj in restamp(objs, -(-n // len(objs)), True)[:n]:
            obj["metadata"]["uid"] = uid = str(uuid.uuid4())
            uids.add(uid)
            fh.write(orjson.dumps(obj) + b"\n")
    return uids


@pytest.fixture
def servers(tmp_path):
    broker = Tansu().start()
    mysql = influx = None
    try:
        mysql = MariaDB(tmp_path / "mariadb").start()
        influx = InfluxDB(tmp_path / "influxdb").start()
        yield broker, mysql, influx
    finally:
        broker.stop()
        if mysql is not None:
            mysql.stop()
        if influx is not None:
            influx.stop()


def sent_by_sink(text: str) -> dict[str, tuple[int, int, int]]:
    """(sent, failed, dropped) per sink, from the shutdown summary lines."""
    found = re.findall(r"sink (\S+): sent (\d+), filtered \d+, failed (\d+), dropped (\d+) \(overflow\) (\d+)", text)
    return {label: (int(sent), int(failed), int(over) + int(down)) for label, sent, failed, over, down in found}


def test_a_100k_burst_at_default_options_loses_and_repeats_nothing(servers, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    broker, mysql, influx = servers
    source = tmp_path / "burst.jsonl"
    uids = burst_file(source, N)
    out = tmp_path / "events.jsonl"
    config = RunConfig(
        source=f"file:{source}",
        sinks=[
            f"jsonfile:{out}",
            f"kafka:?brokers={broker.bootstrap}&eventstopic=burst",
            f"mysql:?{mysql.dsn()}&table=burst",
            f"influxdb:{influx.url}?user={ADMIN}&pw={ADMIN_PASSWORD}&db=burst",
        ],
        context=SourceContext(), healthz_port=0, shutdown_timeout=60.0, data_dir=str(tmp_path / "data"),
    )
    assert run(config) == 0

    # every sink sent each event once (a retried batch would show here), none failed or was dropped
    totals = sent_by_sink(caplog.text)
    assert totals == {label: (N, 0, 0) for label in ("jsonfile", "kafka", "mysql", "influxdb")}
    # the slower sinks went through their disk buffers (the test would prove nothing otherwise). Which ones, and
    # how much, depends on the machine's load (measured: MySQL 0-99,500, InfluxDB 28,788-100,000, Kafka 0-99,500),
    # so at least two sinks must have used their buffers and together held more than half of the burst
    assert "disk buffer full" not in caplog.text
    spilled = {label: int(n) for label, n in
               re.findall(r"sink (\S+): sent .*, (\d+) went through the disk buffer", caplog.text)}
    assert sum(1 for n in spilled.values() if n) >= 2 and sum(spilled.values()) > N // 2, spilled
    assert not list((tmp_path / "data" / "buffer").glob("*/*.seg"))  # delivered segments are gone, every sink's

    written = [orjson.loads(line)["uid"] for line in out.read_bytes().splitlines()]
    assert len(written) == N and set(written) == uids

    records = broker.read("burst", timeout=120)
    kafka_uids = [orjson.loads(r.value)["uid"] for r in records]
    assert len(kafka_uids) == N and set(kafka_uids) == uids

    rows = mysql.query("SELECT COUNT(*) AS n, COUNT(DISTINCT event_id) AS d FROM burst")[0]
    assert (rows["n"], rows["d"]) == (N, N)

    counted = influx.query('SELECT count("value") FROM "log/events"', "burst")["series"][0]["values"][0][1]
    assert counted == N
