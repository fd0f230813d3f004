"""The loki sink: flags, bounded labels, classification of Loki's answers, and what Loki stores."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest

from eventrouter import PartialError, PermanentError, RetryableError, SinkConfigError, SinkURL
from sinks.loki import LokiSink, label_string
from tests.helpers import DATA, make_event, real_events, real_objects
from tests.servers.fake_loki import RATE_LIMITED, FakeLoki, Reply, basic, go_time


def build(flag: str) -> LokiSink:
    sink = LokiSink.from_url(SinkURL.parse(flag))
    assert isinstance(sink, LokiSink)
    return sink


@pytest.fixture
def loki() -> Iterator[FakeLoki]:
    server = FakeLoki().start()
    yield server
    server.stop()


def ns(when: datetime) -> int:
    return (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000


# ---- flags ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("flag", "target", "labels", "headers"),
    [
        ("loki:http://loki:3100", "http://loki:3100/loki/api/v1/push",
         ["cluster", "namespace", "kind", "type", "reason"], {"Content-Type": "application/x-protobuf"}),
        ("loki:http://gw/loki/api/v1/push?tenant=team-a&stream_labels=namespace,reason&encoding=json",
         "http://gw/loki/api/v1/push", ["namespace", "reason"],
         {"Content-Type": "application/json", "X-Scope-OrgID": "team-a"}),
        ("loki:https://logs.example.net/?bearer_token=tok&stream_labels=type", "https://logs.example.net/loki/api/v1/push",
         ["type"], {"Authorization": "Bearer tok"}),
        ("loki:http://loki:3100?stream_labels=&static_label=job=eventrouter", "http://loki:3100/loki/api/v1/push",
         [], {}),
    ],
)
def test_flags(flag: str, target: str, labels: list[str], headers: dict[str, str]) -> None:
    sink = build(flag)
    assert (sink.target, sink.label_names) == (target, labels)
    assert headers.items() <= sink.headers.items()


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("loki:", "needs Loki's URL"),
        ("loki:http://loki:3100?stream_labels=namespace,uid", "option 'stream_labels': 'uid' has a value per object"),
        ("loki:http://loki:3100?stream_labels=name",
         "'name' has a value per object, so each event would make a new Loki stream"),
        ("loki:http://loki:3100?stream_labels=pod", "'pod' has a value per object"),
        ("loki:http://loki:3100?stream_labels=team",
         "'team' is not a label this sink makes; use some of cluster, namespace"),
        ("loki:http://loki:3100?static_label=job", "option 'static_label': expected static_label=NAME=VALUE"),
        ("loki:http://loki:3100?static_label=my-job=x", "option 'static_label'"),
        ("loki:http://loki:3100?static_label=reason=x", "'reason' is both in stream_labels and a static_label"),
        ("loki:http://loki:3100?stream_labels=&static_label=", "at least one stream label"),
        ("loki:http://loki:3100?password=p", "password= needs username="),
        ("loki:http://loki:3100?username=u&bearer_token=t", "either bearer_token or username/password"),
        ("loki:http://loki:3100?encoding=snappy", "option 'encoding'"),
        ("loki:http://loki:3100?tennant=a", "did you mean 'tenant'"),
    ],
)
def test_bad_flags(flag: str, message: str) -> None:
    with pytest.raises(SinkConfigError, match=message):
        build(flag)


def test_a_high_cardinality_label_exits_2_with_one_line(tmp_path: Path) -> None:
    exe = str(Path(sys.executable).parent / "eventrouter")
    proc = subprocess.run([exe, f"--source=file:{DATA / 'core-v1.jsonl'}",
                           "--sink=loki:http://127.0.0.1:1?stream_labels=uid",
                           "--healthz-port=0"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "labels" in line]
    assert len(errors) == 1 and "--sink=loki" in errors[0] and "'uid'" in errors[0] and "namespace" in errors[0]


def test_secrets_are_masked() -> None:
    flag = "loki:https://logs.example.net?username=123&password=pw-SECRET"
    sink = build(flag)
    assert "SECRET" not in LokiSink.redact(SinkURL.parse(flag)) + repr(sink) + repr(sink.opts)


def test_label_string_quotes_as_go() -> None:
    assert label_string((("a", 'say "hi"\\'), ("b", "x\ny"))) == '{a="say \\"hi\\"\\\\", b="x\\ny"}'


# ---- classification -------------------------------------------------------------------------------
def streams_of(sink: LokiSink, *events):  # type: ignore[no-untyped-def]
    return sink.streams(list(events))


def test_classification() -> None:
    sink = build("loki:http://loki:3100?stream_labels=namespace")
    e1, e2 = make_event(1), make_event(2)
    streams = streams_of(sink, e1, e2)
    assert sink.classify(httpx.Response(204), streams) is None
    with pytest.raises(RetryableError, match="HTTP 429: Ingestion rate limit exceeded") as info:
        sink.classify(httpx.Response(429, text=RATE_LIMITED.format(lines=2, bytes=300),
                                     headers={"Retry-After": "5"}), streams)
    assert info.value.retry_after == 5.0
    for status in (500, 502, 503, 504):
        with pytest.raises(RetryableError):
            sink.classify(httpx.Response(status, text="empty ring"), streams)
    with pytest.raises(PermanentError, match="HTTP 401: no org id"):
        sink.classify(httpx.Response(401, text="no org id"), streams)
    with pytest.raises(PermanentError, match="HTTP 400: error at least one label pair"):
        sink.classify(httpx.Response(400, text="error at least one label pair is required per stream"), streams)
    with pytest.raises(PermanentError, match="HTTP 413"):
        sink.classify(httpx.Response(413, text="request body too large"), streams)


def too_far_behind(events, labels: str, total: int, out_of: int) -> str:  # type: ignore[no-untyped-def]
    lines = [f"entry with timestamp {go_time(ns(e.last_timestamp))} ignored, reason: 'entry too far behind, "
             f"oldest acceptable timestamp is: 2026-04-14T09:00:00Z'," for e in events]
    return "\n".join(lines) + f"\nuser 'fake', total ignored: {total} out of {out_of} for stream: {labels}"


def test_too_far_behind_rejects_only_the_entries_loki_named() -> None:
    sink = build("loki:http://loki:3100?stream_labels=namespace")
    old = make_event(1, last_timestamp=datetime(2026, 4, 14, 8, 0, 0, 250000, tzinfo=UTC))
    new = make_event(2)
    other = make_event(3, involved_object=replace(make_event(3).involved_object, namespace="web"))
    streams = streams_of(sink, new, old, other)
    body = too_far_behind([old], '{job="eventrouter", namespace="default", service_name="unknown_service"}', 1, 2)
    with pytest.raises(PartialError) as info:
        sink.classify(httpx.Response(400, text=body), streams)
    assert info.value.rejected == [old] and info.value.retry == []  # new and other were stored


def test_loki_2_out_of_order_lines_are_understood() -> None:
    sink = build("loki:http://loki:3100?stream_labels=namespace")
    a, b = make_event(1), make_event(2)
    body = (f"entry with timestamp {go_time(ns(a.last_timestamp))} ignored, reason: 'entry out of order' for stream: "
            '{job="eventrouter", namespace="default"},\ntotal ignored: 1 out of 2')
    with pytest.raises(PartialError) as info:
        sink.classify(httpx.Response(400, text=body), streams_of(sink, a, b))
    assert info.value.rejected == [a]


def test_too_old_rejects_every_entry_before_the_bound() -> None:
    sink = build("loki:http://loki:3100?stream_labels=namespace")
    old = make_event(1, last_timestamp=datetime(2026, 4, 1, tzinfo=UTC))
    older = make_event(2, last_timestamp=datetime(2026, 3, 1, tzinfo=UTC),
                       involved_object=replace(make_event(2).involved_object, namespace="web"))
    fresh = make_event(3)
    # Loki may name only one stream: the bound holds for all
    body = ("entry for stream '{job=\"eventrouter\", namespace=\"default\"}' has timestamp too old: "
            "2026-04-01T00:00:00Z, oldest acceptable timestamp is: 2026-04-07T09:30:00Z")
    with pytest.raises(PartialError) as info:
        sink.classify(httpx.Response(400, text=body), streams_of(sink, old, older, fresh))
    assert sorted(e.uid for e in info.value.rejected) == sorted([old.uid, older.uid])


def test_an_answer_that_does_not_name_every_ignored_entry_fails_the_batch() -> None:
    sink = build("loki:http://loki:3100?stream_labels=namespace")
    a, b, c = make_event(1), make_event(2), make_event(3)
    # 2 ignored, 1 listed: which other is unknown
    body = too_far_behind([a], '{job="eventrouter", namespace="default"}', 2, 3)
    with pytest.raises(PermanentError, match="Loki refused entries for their time"):
        sink.classify(httpx.Response(400, text=body), streams_of(sink, a, b, c))


def test_time_rejection_of_every_entry_is_permanent() -> None:
    sink = build("loki:http://loki:3100?stream_labels=namespace")
    a = make_event(1)
    with pytest.raises(PermanentError):
        sink.classify(httpx.Response(400, text=too_far_behind([a], '{job="eventrouter", namespace="default"}', 1, 1)),
                      streams_of(sink, a))


# ---- what Loki stores -----------------------------------------------------------------------------
def stored(loki: FakeLoki) -> list[tuple[dict[str, str], int, dict]]:
    return [(e.labels, e.ns, orjson.loads(e.line)) for e in loki.entries]


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
def test_real_events_arrive_in_bounded_streams_sorted_by_time(loki: FakeLoki, encoding: str) -> None:
    events = real_events(cluster="prod")
    sink = build(f"loki:{loki.url}?encoding={encoding}&tenant=team-a&static_label=job=eventrouter")
    sink.send(events)
    entries = stored(loki)
    assert len(entries) == len(events)
    assert Counter((line["uid"], line["count"]) for _, _, line in entries) == Counter((e.uid, e.count) for e in events)
    for labels, entry_ns, line in entries:
        event = next(e for e in events if (e.uid, e.count) == (line["uid"], line["count"]))
        assert line == orjson.loads(orjson.dumps(event.to_dict()))
        assert entry_ns == ns(event.last_timestamp)
        expected = {"job": "eventrouter", "cluster": "prod", "namespace": event.involved_object.namespace,
                    "kind": event.involved_object.kind, "type": event.type, "reason": event.reason}
        assert labels == {k: v for k, v in expected.items() if v}
    streams: dict[str, list[int]] = {}
    for labels, entry_ns, _ in entries:
        streams.setdefault(str(sorted(labels.items())), []).append(entry_ns)
    assert all(times == sorted(times) for times in streams.values())
    # few streams for many events: the labels are bounded
    assert len(streams) < len(events) / 4
    assert {h["x-scope-orgid"] for h in loki.requests} == {"team-a"}


def test_message_lines_and_basic_auth() -> None:
    server = FakeLoki(auth=basic("123", "glc-token")).start()
    try:
        sink = build(f"loki:{server.url}?username=123&password=glc-token&line_format=message&stream_labels=reason")
        sink.send([make_event(1), make_event(2, reason="Pulled", type="Normal", message="pulled")])
        assert [(e.labels, e.line) for e in server.entries] == [
            ({"job": "eventrouter", "reason": "BackOff"}, make_event(1).message),
            ({"job": "eventrouter", "reason": "Pulled"}, "pulled")]
        wrong = build(f"loki:{server.url}?username=123&password=wrong&stream_labels=reason")
        with pytest.raises(PermanentError, match="HTTP 401"):
            wrong.send([make_event(3)])
    finally:
        server.stop()


def test_a_multi_tenant_loki_refuses_a_push_without_a_tenant() -> None:
    server = FakeLoki(tenants=True).start()
    try:
        with pytest.raises(PermanentError, match="no org id"):
            build(f"loki:{server.url}").send([make_event(1)])
        build(f"loki:{server.url}?tenant=t1").send([make_event(1)])
        assert [e.tenant for e in server.entries] == ["t1"]
    finally:
        server.stop()


def test_an_event_without_any_label_value_fails_alone(loki: FakeLoki) -> None:
    """Without static labels, a Node event has no namespace: Loki would refuse the whole push for its stream."""
    sink = build(f"loki:{loki.url}?stream_labels=namespace&static_label=")
    node = make_event(1, involved_object=replace(make_event(1).involved_object, kind="Node", namespace=""))
    pod = make_event(2)
    with pytest.raises(PartialError, match="1 events have no value for any stream label") as info:
        sink.send([node, pod])
    assert info.value.rejected == [node] and info.value.retry == []
    assert [(e.labels, orjson.loads(e.line)["uid"]) for e in loki.entries] == [({"namespace": "default"}, pod.uid)]
    with pytest.raises(PermanentError, match="no value for any stream label"):
        sink.send([node])
    # with the default static label job=eventrouter, the Node event has a stream
    build(f"loki:{loki.url}?stream_labels=namespace").send([node])
    assert loki.entries[-1].labels == {"job": "eventrouter"}


def test_rate_limited_then_delivered_once(loki: FakeLoki) -> None:
    loki.replies.append(Reply(429, RATE_LIMITED.format(lines=1, bytes=400)))
    sink = build(f"loki:{loki.url}")
    with pytest.raises(RetryableError, match="Ingestion rate limit exceeded"):
        sink.send([make_event(1)])
    assert loki.entries == []
    sink.send([make_event(1)])
    assert len(loki.entries) == 1


def test_entries_too_far_behind_are_rejected_and_the_rest_stored(loki: FakeLoki) -> None:
    sink = build(f"loki:{loki.url}?stream_labels=namespace")
    now = datetime.now(UTC).replace(microsecond=0)
    sink.send([make_event(1, last_timestamp=now)])
    late = make_event(2, last_timestamp=now - timedelta(hours=2))  # older than newest - max_chunk_age/2
    fine = make_event(3, last_timestamp=now - timedelta(minutes=5))
    with pytest.raises(PartialError) as info:
        sink.send([late, fine])
    assert info.value.rejected == [late] and info.value.retry == []
    assert [orjson.loads(e.line)["uid"] for e in loki.entries] == [make_event(1).uid, fine.uid]


def test_too_old_entries_are_rejected_and_the_rest_stored() -> None:
    server = FakeLoki(max_age=7 * 86400).start()
    try:
        sink = build(f"loki:{server.url}?stream_labels=namespace,kind")
        now = datetime.now(UTC)
        ancient = make_event(1, last_timestamp=now - timedelta(days=30))
        fresh = make_event(2, last_timestamp=now)
        with pytest.raises(PartialError) as info:
            sink.send([ancient, fresh])
        assert info.value.rejected == [ancient]
        assert [orjson.loads(e.line)["uid"] for e in server.entries] == [fresh.uid]
    finally:
        server.stop()


def test_a_truncated_listing_fails_the_whole_batch() -> None:
    server = FakeLoki(max_listed=1).start()
    try:
        sink = build(f"loki:{server.url}?stream_labels=namespace")
        now = datetime.now(UTC).replace(microsecond=0)
        sink.send([make_event(1, last_timestamp=now)])
        late = [make_event(n, last_timestamp=now - timedelta(hours=3, seconds=n)) for n in (2, 3)]
        with pytest.raises(PermanentError, match="for their time"):
            sink.send([*late, make_event(4, last_timestamp=now)])
    finally:
        server.stop()


def test_through_the_command_line(tmp_path: Path) -> None:
    """The recording spans months, far more than Loki's out-of-order window (max_chunk_age / 2): a Loki that
    accepts it (a very long max_chunk_age) stores every replayed event once."""
    loki = FakeLoki(max_chunk_age=20 * 365 * 86400).start()
    exe = str(Path(sys.executable).parent / "eventrouter")
    proc = subprocess.run([exe, f"--source=file:{DATA / 'core-v1.jsonl'}", f"--sink=loki:{loki.url}?batch_size=50",
                           "--healthz-port=0"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    loki.stop()
    assert proc.returncode == 0, proc.stderr
    assert sorted(orjson.loads(e.line)["uid"] for e in loki.entries) == sorted(
        o["metadata"]["uid"] for o in real_objects())
    assert f"sink loki: sent {len(real_objects())}, filtered 0, failed 0" in proc.stderr

