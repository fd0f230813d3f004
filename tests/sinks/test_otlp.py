"""The otlp sink: flags, classification of OTLP/HTTP answers, and what a receiver decodes from its requests."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from eventrouter import PartialError, PermanentError, RetryableError, SinkConfigError, SinkURL, format_time
from sinks.otlp import OTLPSink
from tests.helpers import DATA, make_event, real_events, real_objects
from tests.servers.fake_otlp import JSON, PROTOBUF, FakeOTLP, Reply, attributes, status_body
from tests.servers.fake_webhook import TLSFiles


def build(flag: str) -> OTLPSink:
    sink = OTLPSink.from_url(SinkURL.parse(flag))
    assert isinstance(sink, OTLPSink)
    return sink


@pytest.fixture
def otlp() -> Iterator[FakeOTLP]:
    server = FakeOTLP().start()
    yield server
    server.stop()


# ---- flags ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("flag", "target", "content_type", "gzip"),
    [
        ("otlp:http://collector:4318", "http://collector:4318/v1/logs", PROTOBUF, True),
        ("otlp:http://collector:4318/", "http://collector:4318/v1/logs", PROTOBUF, True),
        ("otlp:https://otlp.example.com/otlp", "https://otlp.example.com/otlp/v1/logs", PROTOBUF, True),
        ("otlp:https://otlp.example.com/v1/logs?encoding=json&compression=none",
         "https://otlp.example.com/v1/logs", JSON, False),
        ("otlp:http://c:4318/prefix/?level=Warning", "http://c:4318/prefix/v1/logs", PROTOBUF, True),
    ],
)
def test_flags(flag: str, target: str, content_type: str, gzip: bool) -> None:
    sink = build(flag)
    assert sink.target == target
    assert sink.headers["Content-Type"] == content_type
    assert ("Content-Encoding" in sink.headers) == gzip
    assert sink.opts["batch_size"] == 500


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("otlp:", "needs the OTLP/HTTP endpoint"),
        ("otlp:grpc://collector:4317", "needs the OTLP/HTTP endpoint"),
        ("otlp:http://c:4318?encoding=xml", "option 'encoding': 'xml' is not allowed; use one of protobuf, json"),
        ("otlp:http://c:4318?compression=zstd", "option 'compression'"),
        ("otlp:http://c:4318?header=Authorization", "option 'header': expected header=Name=Value"),
        ("otlp:http://c:4318?encodign=json", "encodign"),
    ],
)
def test_bad_flags(flag: str, message: str) -> None:
    with pytest.raises(SinkConfigError, match=message):
        build(flag)


def test_header_values_are_secret() -> None:
    flag = "otlp:http://c:4318?header=Authorization=Bearer%20tok-SECRET&header=X-Scope-OrgID=team-a"
    sink = build(flag)
    assert sink.headers["Authorization"] == "Bearer tok-SECRET"
    assert sink.headers["X-Scope-OrgID"] == "team-a"
    assert "SECRET" not in OTLPSink.redact(SinkURL.parse(flag)) + repr(sink) + repr(sink.opts)


# ---- classification -------------------------------------------------------------------------------
def answer(status: int, body: bytes = b"", content_type: str = PROTOBUF, **headers: str) -> httpx.Response:
    return httpx.Response(status, content=body, headers={"Content-Type": content_type, **headers})


def partial(rejected: int, message: str, content_type: str = PROTOBUF) -> bytes:
    from google.protobuf import json_format
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse

    response = ExportLogsServiceResponse()
    response.partial_success.rejected_log_records = rejected
    response.partial_success.error_message = message
    return json_format.MessageToJson(response).encode() if content_type == JSON else response.SerializeToString()


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (answer(200), (0, "")),
        (answer(200, partial(0, "")), (0, "")),
        (answer(200, partial(2, "attribute too long")), (2, "attribute too long")),
        (answer(200, partial(3, "dropped", JSON), JSON), (3, "dropped")),
        (answer(200, b"not protobuf"), (0, "")),  # a 2xx is delivered whatever its body
        (answer(429, status_body(8, "rate limited", PROTOBUF), **{"Retry-After": "7"}), (RetryableError, 7.0)),
        (answer(503, status_body(14, "unavailable", PROTOBUF)), (RetryableError, None)),
        (answer(502, b"bad gateway", "text/plain"), (RetryableError, None)),
        (answer(504, status_body(4, "deadline", JSON), JSON, **{"Retry-After": "2"}), (RetryableError, 2.0)),
        (answer(400, status_body(3, "invalid log record", PROTOBUF)), (PermanentError, "invalid log record")),
        (answer(401, status_body(16, "bad token", JSON), JSON), (PermanentError, "bad token")),
        (answer(413), (PermanentError, "HTTP 413")),
        (answer(500, status_body(13, "internal", PROTOBUF)), (PermanentError, "internal")),  # OTLP: not retryable
    ],
)
def test_classification(response: httpx.Response, expected: tuple[object, object]) -> None:
    sink = build("otlp:http://c:4318")
    kind, detail = expected
    if isinstance(kind, type) and issubclass(kind, Exception):
        with pytest.raises(kind) as info:
            sink.classify(response)
        if kind is RetryableError:
            assert info.value.retry_after == detail  # type: ignore[attr-defined]
        else:
            assert str(detail) in str(info.value)
    else:
        assert sink.classify(response) == expected


def test_a_refused_connection_is_retryable() -> None:
    sink = build("otlp:http://127.0.0.1:1?header=Authorization=tok-SECRET")
    with pytest.raises(RetryableError, match="cannot reach the OTLP endpoint") as info:
        sink.send([make_event(1)])
    assert "tok-SECRET" not in str(info.value)


# ---- what the receiver decodes --------------------------------------------------------------------
def test_each_event_becomes_a_log_record_as_the_collector_makes_it(otlp: FakeOTLP) -> None:
    events = real_events(cluster="prod-eu")
    sink = build(f"otlp:{otlp.url}?header=Authorization=Bearer%20tok")
    before = time.time_ns()
    sink.send(events)
    after = time.time_ns()
    sink.close()
    assert len(otlp.received) == 1
    request = otlp.received[0]
    assert request.path == "/v1/logs"
    assert request.headers["authorization"] == "Bearer tok"
    assert request.headers["content-encoding"] == "gzip"
    records = otlp.records()
    assert len(records) == len(events)
    # the records arrive grouped by involved object; every event is there exactly once
    def key(attrs: dict) -> tuple[str, int]:  # the recording repeats two uids, with a higher count
        return attrs["k8s.event.uid"], attrs.get("k8s.event.count", 0)

    by_key = {key(attributes(record.attributes)): (resource, record) for resource, record in records}
    assert sorted(by_key) == sorted((e.uid, e.count) for e in events)
    for obj, event in zip(real_objects(), events, strict=True):
        resource, record = by_key[event.uid, event.count]
        involved = obj["involvedObject"]
        assert resource == {
            "k8s.cluster.name": "prod-eu",
            "k8s.node.name": obj.get("source", {}).get("host", ""),
            "k8s.object.kind": involved.get("kind", ""),
            "k8s.object.name": involved.get("name", ""),
            "k8s.object.uid": involved.get("uid", ""),
            "k8s.object.fieldpath": involved.get("fieldPath", ""),
            "k8s.object.api_version": involved.get("apiVersion", ""),
            "k8s.object.resource_version": involved.get("resourceVersion", ""),
        }
        expected_attrs = {
            "k8s.event.reason": obj.get("reason", ""),
            "k8s.event.action": obj.get("action") or "",
            "k8s.event.start_time": obj["metadata"].get("creationTimestamp") or format_time(event.first_timestamp),
            "k8s.event.name": obj["metadata"]["name"],
            "k8s.event.uid": obj["metadata"]["uid"],
            "k8s.namespace.name": involved.get("namespace", ""),
        }
        if event.count:
            expected_attrs["k8s.event.count"] = event.count
        assert attributes(record.attributes) == expected_attrs
        assert record.body.string_value == obj.get("message", "")
        severity = {"Normal": 9, "Warning": 13}.get(obj.get("type", ""), 0)  # no type: UNSPECIFIED
        assert (record.severity_number, record.severity_text) == (severity, obj.get("type", "") if severity else "")
        since_epoch = event.last_timestamp - datetime(1970, 1, 1, tzinfo=UTC)
        assert record.time_unix_nano == since_epoch // timedelta(microseconds=1) * 1000
        assert before <= record.observed_time_unix_nano <= after
        assert record.event_name == "k8s.event"


def test_json_encoding_without_compression(otlp: FakeOTLP) -> None:
    sink = build(f"otlp:{otlp.url}/v1/logs?encoding=json&compression=none")
    sink.send([make_event(1), make_event(2, type="Normal", message="Started")])
    assert otlp.received[0].headers["content-type"] == JSON
    assert "content-encoding" not in otlp.received[0].headers
    bodies = [(r.body.string_value, r.severity_text, r.severity_number) for _, r in otlp.records()]
    assert bodies == [(make_event(1).message, "Warning", 13), ("Started", "Normal", 9)]


def test_partial_success_is_counted_not_retried(otlp: FakeOTLP) -> None:
    otlp.replies.append(Reply(rejected=1, message="log record 2: body too large"))
    sink = build(f"otlp:{otlp.url}")
    with pytest.raises(PartialError, match=r"rejected 1 of 2 log records .*: log record 2: body too large") as info:
        sink.send([make_event(1), make_event(2)])
    # nothing to retry (the accepted one would be written twice); one event counts as failed
    assert info.value.retry == [] and len(info.value.rejected) == 1
    assert len(otlp.received) == 1
    otlp.replies.append(Reply(rejected=2, message="all dropped"))
    with pytest.raises(PermanentError, match="rejected 2 of 2"):
        sink.send([make_event(3), make_event(4)])


def test_rate_limit_then_retry_delivers_once(otlp: FakeOTLP) -> None:
    otlp.replies.append(Reply(status=429, message="too many requests", headers={"Retry-After": "3"}))
    sink = build(f"otlp:{otlp.url}")
    with pytest.raises(RetryableError, match="HTTP 429: too many requests") as info:
        sink.send([make_event(1)])
    assert info.value.retry_after == 3.0
    assert otlp.received == []
    sink.send([make_event(1)])
    assert [attributes(r.attributes)["k8s.event.uid"] for _, r in otlp.records()] == [make_event(1).uid]


def test_bad_request_is_permanent_with_the_servers_message(otlp: FakeOTLP) -> None:
    otlp.replies.append(Reply(status=400, message="ReadTimeout while reading the body"))
    with pytest.raises(PermanentError, match="HTTP 400: ReadTimeout while reading the body"):
        build(f"otlp:{otlp.url}").send([make_event(1)])


def test_https_with_the_ca_and_a_client_certificate(tmp_path: Path) -> None:
    tls = TLSFiles.create(tmp_path)
    server = FakeOTLP(tls=tls.server_context(require_client_cert=True)).start()
    try:
        flag = (f"otlp:{server.url}?ca_file={tls.ca_file}&cert_file={tls.client_cert_file}"
                f"&key_file={tls.client_key_file}")
        build(flag).send([make_event(1)])
        assert len(server.records()) == 1
        with pytest.raises(RetryableError, match="CERTIFICATE_VERIFY_FAILED"):
            build(f"otlp:{server.url}").send([make_event(2)])
        assert len(server.records()) == 1
    finally:
        server.stop()


def test_through_the_command_line(otlp: FakeOTLP, tmp_path: Path) -> None:
    """The recorded events, replayed by the real eventrouter command, all reach the receiver once."""
    exe = str(Path(sys.executable).parent / "eventrouter")
    proc = subprocess.run(
        [exe, f"--source=file:{DATA / 'core-v1.jsonl'}", f"--sink=otlp:{otlp.url}?batch_size=7",
         "--healthz-port=0"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    uids = [attributes(r.attributes)["k8s.event.uid"] for _, r in otlp.records()]
    assert sorted(uids) == sorted(o["metadata"]["uid"] for o in real_objects())


def test_json_and_protobuf_encodings_carry_the_same_request() -> None:
    from google.protobuf import json_format
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    events = real_events(cluster="prod")
    decoded = []
    for encoding in ("protobuf", "json"):
        body = build(f"otlp:http://c:4318?encoding={encoding}&compression=none").encode(events)
        request = ExportLogsServiceRequest()
        if encoding == "json":
            json_format.Parse(body, request)  # strict: an unknown or misspelt field name fails
        else:
            request.ParseFromString(body)
        for resource_logs in request.resource_logs:
            for record in resource_logs.scope_logs[0].log_records:
                record.observed_time_unix_nano = 0
        decoded.append(request)
    assert decoded[0] == decoded[1]
    assert sum(len(r.scope_logs[0].log_records) for r in decoded[1].resource_logs) == len(events)


def test_enriched_events_carry_labels_annotations_and_owner(otlp: FakeOTLP) -> None:
    """With --enrich: labels/annotations as k8s.<kind>.label.<key>, the workload as k8s.deployment.name."""
    from eventrouter.event import FrozenDict, Owner

    event = make_event(1, labels=FrozenDict({"team": "payments", "app": "api"}),
                       annotations=FrozenDict({"team.example.com/oncall": "pay-oncall"}),
                       owner=Owner("Deployment", "default", "api", "apps/v1"))
    plain = make_event(2)
    for encoding in ("protobuf", "json"):
        otlp.received.clear()
        sink = build(f"otlp:{otlp.url}?encoding={encoding}")
        sink.send([event, plain])
        sink.close()
        resources = [resource for resource, _ in otlp.records()]
        enriched = {k: v for k, v in resources[0].items() if not k.startswith(("k8s.object.", "k8s.node.", "k8s.cl"))}
        assert enriched == {
            "k8s.pod.label.app": "api",
            "k8s.pod.label.team": "payments",
            "k8s.pod.annotation.team.example.com/oncall": "pay-oncall",
            "k8s.deployment.name": "api",
            "k8s.owner.kind": "Deployment",
            "k8s.owner.name": "api",
        }
        assert not [k for k in resources[1] if ".label." in k or "owner" in k or "deployment" in k]
