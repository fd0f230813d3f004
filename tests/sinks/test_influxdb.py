"""The InfluxDB sink: 1.x against a real influxd (tests/servers/influxdb.py), 2.x/3.x against a local
server that checks the /api/v2/write request (tests/servers/fake_influx2.py)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from eventrouter import Event, PartialError, PermanentError, RetryableError, SinkConfigError, SinkURL
from eventrouter.cli import main as cli_main
from eventrouter.config import build_sink
from eventrouter.router import Router, SinkRunner
from sinks._kube_eventer import _EVENT, core_v1, event_json, go_json, go_struct, kafka_message
from sinks.influxdb import InfluxDBSink, _classify, field_string, nanoseconds, point, tag_set, tag_value
from tests.helpers import make_event, real_objects
from tests.servers.fake_influx2 import FakeInflux2
from tests.servers.influxdb import ADMIN, ADMIN_PASSWORD, InfluxDB

SECRET = "pw-Qy71-secret"


@pytest.fixture(scope="module")
def influx(tmp_path_factory: pytest.TempPathFactory):
    server = InfluxDB(tmp_path_factory.mktemp("influxdb")).start()
    yield server
    server.stop()


@pytest.fixture
def fake2():
    server = FakeInflux2().start()
    yield server
    server.stop()


def v1_flag(influx: InfluxDB, db: str, extra: str = "", pw: str = ADMIN_PASSWORD) -> str:
    return f"influxdb:{influx.url}?user={ADMIN}&pw={pw}&db={db}{extra}"


def nasty_event(n: int = 1) -> Event:
    base = make_event(n)
    return replace(
        base,
        uid=f"uid {n},x=y",
        message='He said "hi", a=b\nnext line \\ back\\slash 节点 🔥 tab\tend',
        source_host="node 1,rack=a\\",
        source_component="kube let",
        reason="Back Off,=\nsecond line",
        involved_object=replace(base.involved_object, name=f"web app,{n}=x", uid=f"pod uid {n}"),
    )


# ---- flags ---------------------------------------------------------------------------------------
FLAGS = [
    # kube-eventer's documented flag
    (
        "influxdb:http://127.0.0.1:8086?user=root&pw=root&db=k8s&withfields=false&insecuressl=false"
        "&cluster_name=default",
        dict(
            base_url="http://127.0.0.1:8086",
            v2=False,
            user="root",
            pw="root",
            db="k8s",
            withfields=False,
            cluster_name="default",
        ),
    ),
    (
        "influxdb:https://monitoring-influxdb:8086?db=events&withfields=true&retention=30d&cluster_name=prod",
        dict(
            base_url="https://monitoring-influxdb:8086",
            db="events",
            withfields=True,
            retention="30d",
            cluster_name="prod",
        ),
    ),
    ("influxdb:?db=k8s", dict(base_url="http://localhost:8086", db="k8s")),
    (
        "influxdb:http://h:8086?insecuressl=true&concurrency=4&disable_counter_metrics=true",
        dict(insecuressl=True, concurrency=4),
    ),
    ("influxdb:http://h:8086?password=pw2", dict(pw="pw2")),
    ("influxdb:http://h:8086?org=my-org&bucket=k8s&token=tok", dict(v2=True, org="my-org", bucket="k8s", token="tok")),
    (
        "influxdb:https://us-east-1-1.aws.cloud2.influxdata.com?bucket=k8s&token=tok",  # 3.x: no org
        dict(v2=True, bucket="k8s", base_url="https://us-east-1-1.aws.cloud2.influxdata.com"),
    ),
]


@pytest.mark.parametrize(("text", "expected"), FLAGS)
def test_flags(text: str, expected: dict) -> None:
    sink = build_sink(text)
    assert isinstance(sink, InfluxDBSink)
    for key, value in expected.items():
        if key in ("base_url", "v2"):
            assert getattr(sink, key) == value
        elif key in ("pw", "token"):
            assert sink.opts[key].reveal() == value
        else:
            assert sink.opts[key] == value, key
    assert sink.opts["batch_size"] == 10_000


def test_kube_eventer_defaults_user_and_password_root() -> None:
    sink = build_sink("influxdb:http://h:8086")
    assert sink.opts["user"] == "root" and sink._password() == "root"
    assert sink._http().auth is not None
    sink.close()


BAD_FLAGS = [
    ("influxdb:http://h:8086?db=k8s&bucket=b&token=t", "option 'db': is an InfluxDB 1.x option"),
    ("influxdb:http://h:8086?org=o&token=t", "option 'bucket': InfluxDB 2.x/3.x needs the bucket"),
    ("influxdb:http://h:8086?retention=forever", "option 'retention'"),
    ("influxdb:http://h:8086?withfields=maybe", "option 'withfields'"),
    ("influxdb:http://h:8086?database=k8s", "option 'database': unknown option"),
    ("influxdb:udp://h:8089", "scheme 'udp' is not supported"),
    ("influxdb:http://root:pw@h:8086", "not in the URL"),
    ("influxdb:h:8086?db=k8s", "not supported"),
]


@pytest.mark.parametrize(("text", "message"), BAD_FLAGS)
def test_bad_flags(text: str, message: str) -> None:
    with pytest.raises(SinkConfigError) as info:
        build_sink(text)
    assert "--sink=influxdb" in str(info.value) and message in str(info.value)


def test_redacted_round_trip(caplog: pytest.LogCaptureFixture) -> None:
    url = SinkURL.parse(f"influxdb:http://127.0.0.1:1?user=u&pw={SECRET}&db=k8s")
    assert InfluxDBSink.redact(url) == "influxdb:http://127.0.0.1:1?user=u&pw=***&db=k8s"
    url2 = SinkURL.parse(f"influxdb:http://127.0.0.1:1?org=o&bucket=b&token={SECRET}")
    assert InfluxDBSink.redact(url2) == "influxdb:http://127.0.0.1:1?org=o&bucket=b&token=***"
    for u in (url, url2):
        sink = InfluxDBSink.from_url(u)
        assert SECRET not in repr(sink)
        with caplog.at_level(logging.DEBUG), pytest.raises(RetryableError) as info:
            sink.send([make_event(1)])  # nothing listens on port 1
        assert "cannot reach" in str(info.value)
        assert SECRET not in str(info.value) and SECRET not in caplog.text
        sink.close()


# ---- line protocol ----------------------------------------------------------------------------------
def test_line_protocol_escaping() -> None:
    assert tag_value("v 1,=") == "v\\ 1\\,\\="
    # no newline escape exists in line protocol: a newline in a tag becomes a space
    assert tag_value("x\ny\r\nz") == "x\\ y\\ \\ z"
    # 1.x reads a backslash before the separator as an escape: a zero-width space keeps it a backslash
    assert tag_value("tail\\") == "tail\\\u200b"
    assert tag_value("mid\\dle") == "mid\\dle"
    assert tag_set({"b": "2", "a": "1", "c": ""}) == ",a=1,b=2"
    assert field_string('say "hi"\\\nok') == '"say \\"hi\\"\\\\\nok"'


def test_nanoseconds() -> None:
    assert nanoseconds(datetime(2026, 4, 14, 9, 30, 1, 5, tzinfo=UTC)) == 1776159001000005000


def test_default_and_withfields_points() -> None:
    ev = make_event(3, cluster="")
    sink = build_sink("influxdb:http://h:8086?db=k8s")
    ts = nanoseconds(ev.last_timestamp)
    value = json.loads(kafka_message(ev))["EventValue"]  # kube-eventer's json.MarshalIndent(event, "", " ")
    assert point(ev, with_fields=False, cluster_name="default") == (
        f"log/events,cluster_name=default,hostname=node-1,pod_id={ev.involved_object.uid},pod_name=app-3,"
        f"uid={ev.uid} value={field_string(value)} {ts}"
    )
    assert point(ev, with_fields=True, cluster_name="c1") == (
        f"events,cluster_name=c1,component=kubelet,hostname=node-1,kind=Pod,namespace_name=default,"
        f"object_name=app-3,pod_id={ev.involved_object.uid},reason=BackOff,type=Warning,uid={ev.uid} "
        f'message="Back-off restarting failed container app in pod app-3" {ts}'
    )
    node = replace(ev, involved_object=replace(ev.involved_object, kind="Node", name="node-1", uid="n1"))
    assert ",pod_id=" not in point(node, with_fields=False, cluster_name="x")
    assert ",pod_name=" not in point(node, with_fields=False, cluster_name="x")
    # empty tags are left out, in both layouts: no cluster, no host, a Pod without uid
    bare = replace(ev, source_host="", involved_object=replace(ev.involved_object, uid=""))
    assert point(bare, with_fields=False, cluster_name="").startswith(f"log/events,pod_name=app-3,uid={ev.uid} value=")
    assert point(bare, with_fields=True, cluster_name="").startswith(
        f"events,component=kubelet,kind=Pod,namespace_name=default,object_name=app-3,reason=BackOff,type=Warning,"
        f"uid={ev.uid} message=")
    sink.close()


def deeply_nested(depth: int) -> dict:
    value: dict = {"leaf": "<&>"}
    for level in range(depth):
        value = {f"f:{level}": value, "list": [level, {"x": ""}]}
    return value


def test_value_field_is_the_reference_go_encoding_byte_for_byte() -> None:
    """The ``value`` JSON is built the fast way (orjson, then Go's indent of one and its HTML escapes
    fixed after); it must be what the reference encoder ``go_json`` (Go's rules, written out) gives, for
    every recorded event, for text with Go's escapes and near misses (U+2013, U+2000), and for nesting
    deeper than the usual (managedFields)."""
    events = [Event.from_object(o) for o in real_objects()] + [
        Event.from_object(o) for o in real_objects("events-k8s-io-v1")]
    # each on its own: one of Go's escapes in a text must not hide a missed other
    specials = [" <b>", " a&b", " \u2028", " \u2029", " \u2013 \u2000 “q”", ' 中文 \\ "x" \t\n\x01 🔥']
    events += [replace(e, raw={**e.raw, "message": str(e.raw.get("message") or e.raw.get("note")) + special})
               for e in events[:10] for special in specials]
    managed = [{"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": "2026-04-14T09:30:00Z",
                "fieldsType": "FieldsV1", "fieldsV1": deeply_nested(20)}]
    events += [replace(e, raw={**e.raw, "metadata": {**e.raw["metadata"], "managedFields": managed}})
               for e in events[:5]]
    checked = 0
    for ev in events:
        value = event_json(ev)
        assert value == go_json(go_struct(core_v1(ev), _EVENT), " ")
        checked += "\\u0026" in value or "\\u2029" in value
    assert checked >= 20  # the escapes were exercised


# ---- classification ------------------------------------------------------------------------------
CLASSIFY = [
    (204, "", None, None),
    (200, "", None, None),
    (400, '{"error":"unable to parse \'x\': missing fields"}', None, PermanentError),
    (400, '{"error":"partial write: field type conflict: dropped=1"}', None, PermanentError),
    # kube-eventer's layout has one series per event: past the server's max-values-per-tag it refuses them
    (400, '{"error":"partial write: max-values-per-tag limit exceeded (100000/100000): measurement=\\"log/events\\" '
          'tag=\\"uid\\" value=\\"97341615\\" dropped=2000"}', None, PermanentError),
    (400, '{"error":"partial write: points beyond retention policy dropped=3"}', None, None),
    (401, '{"error":"authorization failed"}', None, PermanentError),
    (403, '{"code":"forbidden","message":"insufficient permissions for write"}', None, PermanentError),
    (404, '{"error":"database not found: \\"k8s\\""}', None, RetryableError),  # recreated, then retried
    (404, '{"code":"not found","message":"bucket \\"k8s\\" not found"}', None, PermanentError),
    (413, '{"error":"Request Entity Too Large"}', None, PermanentError),
    (429, '{"code":"too many requests"}', "7", RetryableError),
    (500, '{"error":"timeout"}', None, RetryableError),
    (503, "", "30", RetryableError),
]


@pytest.mark.parametrize(("status", "body", "retry_after", "expected"), CLASSIFY)
def test_classify(status: int, body: str, retry_after: str | None, expected: type | None) -> None:
    error = _classify(status, body, retry_after)
    if expected is None:
        assert error is None
        return
    assert isinstance(error, expected)
    if expected is PermanentError:
        assert not isinstance(error, RetryableError)
    assert f"HTTP {status}" in str(error)
    if retry_after:
        assert error.retry_after == float(retry_after)


# ---- InfluxDB 1.x, real server ---------------------------------------------------------------------
def test_v1_creates_database_and_points_read_back_exactly(influx: InfluxDB) -> None:
    sink = build_sink(v1_flag(influx, "exact", "&cluster_name=prod cluster"))
    events = [nasty_event(1), make_event(2)]
    sink.send(events)
    sink.send(events)  # a retried batch rewrites the same points
    sink.close()
    points = influx.points("log/events", "exact")
    assert [p["time"] for p in points] == ["2026-04-14T09:30:01Z", "2026-04-14T09:30:02Z"]
    nasty, plain = events
    assert {k: v for k, v in points[0].items() if k != "value"} == {
        "time": "2026-04-14T09:30:01Z",
        "uid": nasty.uid,
        "pod_id": nasty.involved_object.uid,
        "pod_name": nasty.involved_object.name,
        "hostname": "node 1,rack=a\\\u200b",
        "cluster_name": "prod cluster",
    }
    assert points[0]["value"] == event_json(nasty) == json.loads(kafka_message(nasty))["EventValue"]
    assert json.loads(points[0]["value"])["message"] == nasty.message
    assert points[1]["uid"] == plain.uid and points[1]["value"] == event_json(plain)


def test_v1_withfields_layout(influx: InfluxDB) -> None:
    sink = build_sink(v1_flag(influx, "fields", "&withfields=true"))
    ev = replace(nasty_event(4), cluster="from-cli")
    sink.send([ev])
    sink.close()
    assert influx.points("events", "fields") == [
        {
            "time": "2026-04-14T09:30:04Z",
            "uid": ev.uid,
            "pod_id": "pod uid 4",
            "object_name": "web app,4=x",
            "type": "Warning",
            "kind": "Pod",
            "component": "kube let",
            "reason": "Back Off,= second line",
            "namespace_name": "default",
            "hostname": "node 1,rack=a\\\u200b",
            "cluster_name": "from-cli",
            "message": ev.message,
        }
    ]
    assert "log/events" not in str(influx.query("SHOW MEASUREMENTS", "fields"))


def test_v1_retention_policy_on_create(influx: InfluxDB) -> None:
    sink = build_sink(v1_flag(influx, "retained", "&retention=30d"))
    sink.open()
    now = datetime.now(UTC)
    # a point older than the retention is dropped by the server: not an error, the rest is written
    sink.send([make_event(1, last_timestamp=now), make_event(2, last_timestamp=now - timedelta(days=90))])
    sink.close()
    policies = influx.query("SHOW RETENTION POLICIES ON retained")["series"][0]
    row = dict(zip(policies["columns"], policies["values"][0], strict=True))
    assert (row["name"], row["duration"], row["default"]) == ("default", "720h0m0s", True)
    assert len(influx.points("log/events", "retained")) == 1


def test_v1_wrong_password_fails_at_check(influx: InfluxDB, capsys: pytest.CaptureFixture[str]) -> None:
    sink = build_sink(v1_flag(influx, "k8s", pw=SECRET))
    with pytest.raises(PermanentError, match="HTTP 401"):
        sink.open()
    sink.close()
    assert (
        cli_main(["check", f"--sink={v1_flag(influx, 'k8s', pw=SECRET)}", f"--sink={v1_flag(influx, 'checked')}"]) == 1
    )
    out = capsys.readouterr().out
    assert SECRET not in out and ADMIN_PASSWORD not in out
    assert "failed: PermanentError: InfluxDB answered HTTP 401" in out and out.count("open: ok") == 1


def test_v1_writer_without_admin_rights_writes_to_an_existing_database(
    influx: InfluxDB, caplog: pytest.LogCaptureFixture
) -> None:
    influx.query('CREATE DATABASE "shared"')
    influx.query("CREATE USER writer WITH PASSWORD 'writer-pw'")
    influx.query('GRANT WRITE ON "shared" TO writer')
    sink = build_sink(f"influxdb:{influx.url}?user=writer&pw=writer-pw&db=shared")
    with caplog.at_level(logging.WARNING):
        sink.send([make_event(9)])
    sink.close()
    assert "may not create databases" in caplog.text
    assert [p["pod_name"] for p in influx.points("log/events", "shared")] == ["app-9"]


def test_v1_dropped_database_is_created_again(influx: InfluxDB) -> None:
    sink = build_sink(v1_flag(influx, "dropme"))
    sink.send([make_event(1)])
    influx.query('DROP DATABASE "dropme"')
    with pytest.raises(RetryableError, match="database not found"):
        sink.send([make_event(2)])
    sink.send([make_event(2)])  # the router's retry
    sink.close()
    assert [p["pod_name"] for p in influx.points("log/events", "dropme")] == ["app-2"]


def test_v1_real_events_end_to_end_through_the_cli(influx: InfluxDB, tmp_path: Path) -> None:
    objs = real_objects()
    source = tmp_path / "events.jsonl"
    source.write_bytes(b"".join(orjson.dumps(o) + b"\n" for o in objs))
    status = cli_main(
        [
            f"--source=file:{source}",
            f"--sink={v1_flag(influx, 'real')}",
            "--healthz-port=0",
            f"--checkpoint=file:{tmp_path / 'checkpoint'}",
            "--cluster-name=kind",
        ]
    )
    assert status == 0
    events = [Event.from_object(o) for o in objs]
    points = influx.points("log/events", "real")
    # one point per occurrence (uid, last time); a repeat at the same time overwrites its point
    latest = {(e.uid, nanoseconds(e.last_timestamp)): e for e in events}
    assert len(points) == len(latest)
    assert {p["cluster_name"] for p in points} == {"kind"}
    for p in points:
        ts = datetime.fromisoformat(p["time"].replace("Z", "+00:00"))
        ev = latest[(p["uid"], nanoseconds(ts))]
        # byte for byte kube-eventer's value: its Kafka EventValue, json.MarshalIndent of the v1.Event
        assert p["value"] == json.loads(kafka_message(ev))["EventValue"], p["uid"]


def test_v1_new_database_uses_kube_eventers_retention_policy_default(influx: InfluxDB) -> None:
    sink = build_sink(v1_flag(influx, "rp_new"))
    sink.send([make_event(1)])
    sink.close()
    policies = influx.query('SHOW RETENTION POLICIES ON "rp_new"')["series"][0]
    rows = [dict(zip(policies["columns"], v, strict=True)) for v in policies["values"]]
    assert [(r["name"], r["default"]) for r in rows] == [("default", True)]
    counted = influx.query('SELECT count("value") FROM "rp_new"."default"."log/events"')["series"][0]
    assert counted["values"][0][1] == 1
    # an existing database keeps its own default policy (here autogen), where the points go
    influx.query('CREATE DATABASE "rp_old"')
    sink = build_sink(v1_flag(influx, "rp_old"))
    sink.send([make_event(2)])
    sink.close()
    counted = influx.query('SELECT count("value") FROM "rp_old"."autogen"."log/events"')["series"][0]
    assert counted["values"][0][1] == 1


def test_v1_kube_eventers_flags_without_user_and_pw_log_in_as_root(influx: InfluxDB) -> None:
    bare = f"influxdb:{influx.url}?db=rootdb"  # kube-eventer's defaults: user=root, pw=root
    sink = build_sink(bare)
    with pytest.raises(PermanentError, match=r"HTTP 401.*default to kube-eventer's root/root"):
        sink.send([make_event(1)])
    sink.close()
    influx.query("CREATE USER root WITH PASSWORD 'root' WITH ALL PRIVILEGES")
    try:
        sink = build_sink(bare)
        sink.send([make_event(1)])
        sink.close()
    finally:
        influx.query("DROP USER root")
    assert [p["pod_name"] for p in influx.points("log/events", "rootdb")] == ["app-1"]


def test_v1_large_batch_in_concurrent_gzipped_writes_lands_once(influx: InfluxDB) -> None:
    sink = build_sink(v1_flag(influx, "chunks", "&points_per_write=700&concurrency=3&gzip=true"))
    events = [make_event(n, uid=f"uid-{n}") for n in range(5000)]
    sink.send(events)
    sink.send(events[:1500])  # a retried batch rewrites its points
    sink.close()
    assert sorted(p["uid"] for p in influx.points("log/events", "chunks")) == sorted(e.uid for e in events)


def test_v1_server_restart_mid_stream_loses_nothing(influx: InfluxDB) -> None:
    sink = build_sink(v1_flag(influx, "restart", "&batch_size=20&flush_interval=50ms&retry_backoff_max=300ms"))
    runner = SinkRunner.build(sink)
    router = Router([runner])
    router.start()
    events = [make_event(n, uid=f"uid-{n}") for n in range(300)]
    try:
        for ev in events[:100]:
            router.dispatch(ev)
        deadline = time.monotonic() + 30
        while runner.stats.sent < 20:
            assert time.monotonic() < deadline, "nothing arrived before the restart"
            time.sleep(0.02)
        influx.stop()
        for ev in events[100:]:
            router.dispatch(ev)
        time.sleep(1.0)
        influx.start()
    finally:
        if influx.proc is None:
            influx.start()
        drained = router.stop(60)
    assert drained and runner.stats.failed == 0 and runner.stats.retried > 0
    assert sorted(p["uid"] for p in influx.points("log/events", "restart")) == sorted(e.uid for e in events)


def test_v1_events_k8s_io_v1_objects(influx: InfluxDB) -> None:
    events = [Event.from_object(o) for o in real_objects("events-k8s-io-v1")]
    sink = build_sink(v1_flag(influx, "events_v1", "&withfields=true"))
    sink.send(events)
    sink.close()
    points = influx.points("events", "events_v1")
    assert len(points) == len({(e.uid, e.last_timestamp) for e in events})
    messages = {(e.uid, e.message) for e in events}
    assert all((p["uid"], p["message"]) in messages for p in points)
    sink = build_sink(v1_flag(influx, "events_v1_value"))
    sink.send(events)
    sink.close()
    latest = {(e.uid, nanoseconds(e.last_timestamp)): e for e in events}
    points = influx.points("log/events", "events_v1_value")
    assert len(points) == len(latest)
    for p in points:
        ev = latest[(p["uid"], nanoseconds(datetime.fromisoformat(p["time"].replace("Z", "+00:00"))))]
        assert p["value"] == json.loads(kafka_message(ev))["EventValue"]


# ---- InfluxDB 2.x/3.x -------------------------------------------------------------------------------
def v2_flag(fake: FakeInflux2, extra: str = "", token: str | None = None) -> str:
    return f"influxdb:{fake.url}?org={fake.org}&bucket={fake.bucket}&token={token or fake.token}{extra}"


def test_v2_write_request(fake2: FakeInflux2) -> None:
    sink = build_sink(v2_flag(fake2, "&withfields=true"))
    events = [make_event(1), nasty_event(2)]
    sink.send(events)
    sink.close()
    [write] = fake2.writes
    assert write.method == "POST"
    assert write.query == {"org": "my-org", "bucket": "k8s", "precision": "ns"}
    assert write.headers["Authorization"] == f"Token {fake2.token}"
    assert write.headers["Content-Type"] == "text/plain; charset=utf-8"
    expected = "\n".join(point(e, with_fields=True, cluster_name="default") for e in events)
    assert write.body.decode("utf-8") == expected
    assert write.body.decode("utf-8").startswith("events,cluster_name=default,component=kubelet,")


def test_v2_errors_and_retry_after(fake2: FakeInflux2) -> None:
    wrong = build_sink(v2_flag(fake2, token=SECRET))
    with pytest.raises(PermanentError, match="HTTP 401") as info:
        wrong.send([make_event(1)])
    assert SECRET not in str(info.value)
    wrong.close()
    sink = build_sink(v2_flag(fake2))
    fake2.responses += [
        (429, {"Retry-After": "7"}, b'{"code":"too many requests","message":"slow down"}'),
        (503, {"Retry-After": "2"}, b""),
    ]
    with pytest.raises(RetryableError) as first:
        sink.send([make_event(1)])
    assert first.value.retry_after == 7.0 and "slow down" in str(first.value)
    with pytest.raises(RetryableError) as second:
        sink.send([make_event(1)])
    assert second.value.retry_after == 2.0
    sink.send([make_event(1)])
    sink.close()
    bad_bucket = build_sink(f"influxdb:{fake2.url}?org=my-org&bucket=nope&token={fake2.token}")
    with pytest.raises(PermanentError, match="bucket not found"):
        bad_bucket.send([make_event(1)])
    bad_bucket.close()


def test_chunked_writes_report_what_to_retry_and_what_was_rejected(fake2: FakeInflux2) -> None:
    sink = build_sink(v2_flag(fake2, "&points_per_write=2&concurrency=1"))  # one at a time: answers in order
    events = [make_event(n) for n in range(6)]
    fake2.responses += [(204, {}, b""), (400, {}, b'{"code":"invalid","message":"unable to parse"}'),
                        (503, {}, b"")]
    with pytest.raises(PartialError) as info:
        sink.send(events)
    assert info.value.rejected == events[2:4] and info.value.retry == events[4:]
    assert "2 of 6 points written, 2 to retry, 2 rejected" in str(info.value)
    fake2.responses += [(204, {}, b""), (503, {}, b""), (204, {}, b"")]
    with pytest.raises(RetryableError):  # only retryable failures: the whole batch again, rewriting is harmless
        sink.send(events)
    sink.close()
    assert [r.body.count(b"log/events,") for r in fake2.writes] == [2] * 6  # each write: 2 points


def test_v2_end_to_end_through_the_router(fake2: FakeInflux2) -> None:
    fake2.responses.append((503, {"Retry-After": "0"}, b'{"code":"unavailable"}'))
    sink = build_sink(v2_flag(fake2, "&batch_size=50&flush_interval=50ms"))
    runner = SinkRunner.build(sink)
    router = Router([runner])
    router.start()
    events = [
        make_event(n, last_timestamp=datetime(2026, 4, 14, tzinfo=UTC) + timedelta(seconds=n)) for n in range(120)
    ]
    for ev in events:
        router.dispatch(ev)
    assert router.stop(20)
    assert runner.stats.sent == 120 and runner.stats.failed == 0 and runner.stats.retried > 0
    # the refused first batch is sent again, then every later batch, in order, each event once
    assert fake2.writes[0].body == fake2.writes[1].body
    delivered = "\n".join(w.body.decode() for w in fake2.writes[1:])
    assert delivered == "\n".join(point(e, with_fields=False, cluster_name="default") for e in events)


@pytest.mark.parametrize("answer", [b'{"results": {"0": {}}}', b'{"results": 5}', b'{"results": [7]}',
                                    b"[]", b"not json"])
def test_v1_odd_create_database_answers_do_not_escape_as_exceptions(answer: bytes) -> None:
    import httpx

    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        return httpx.Response(200 if request.url.path == "/query" else 204, content=answer)

    url = SinkURL.parse("influxdb:http://127.0.0.1:8086?db=k8s")
    sink = InfluxDBSink(url, InfluxDBSink.parse_options(url), transport=httpx.MockTransport(handler))
    sink.send([make_event(1)])
    sink.close()
    assert paths == ["/query", "/write"]
