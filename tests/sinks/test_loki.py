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

from eventrouter import Event, PartialError, PermanentError, RetryableError, SinkConfigError, SinkURL
from sinks.loki import LokiSink, StreamEntry, label_string
from sinks.loki._answers import Hidden
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


# ---- classification: Loki's answer to the push of ONE stream ------------------------------------------
def entries_of(sink: LokiSink, *events: Event) -> list[StreamEntry]:
    streams = sink.streams(list(events))
    assert len(streams) == 1, "one stream per push"
    return next(iter(streams.values()))


def refusals(answer: object) -> list[tuple[str, str]]:
    assert isinstance(answer, list)
    return [(refusal.event.uid[-2:], refusal.reason) for refusal in answer]


def at(minute: int, second: int = 0, micro: int = 0) -> datetime:
    return datetime(2026, 4, 14, 9, minute, second, micro, tzinfo=UTC)


SINK = "loki:http://loki:3100?stream_labels=namespace"
# five entries of one stream, 09:01 ... 09:05, sorted by time by the sink
FIVE = [make_event(n, last_timestamp=at(6 - n, 0, 250000 * (n % 2))) for n in (5, 4, 3, 2, 1)]  # 01 is newest
STREAM = "{job=\"eventrouter\", namespace=\"default\", service_name=\"eventrouter\"}"


def ignored_lines(events: list[Event], loki3: bool = True) -> list[str]:
    if loki3:
        return [f"entry with timestamp {go_time(ns(e.last_timestamp))} ignored, reason: 'entry too far behind, entry "
                f"timestamp is: {e.last_timestamp:%Y-%m-%dT%H:%M:%SZ}, oldest acceptable timestamp is: "
                "2026-04-14T09:03:00Z'," for e in events]
    return [f"entry with timestamp {go_time(ns(e.last_timestamp))} ignored, reason: 'entry too far behind, oldest "
            "acceptable timestamp is: 2026-04-14T09:03:00Z'," for e in events]


def too_old(e: Event) -> str:
    return (f"entry for stream '{STREAM}' has timestamp too old: {e.last_timestamp:%Y-%m-%dT%H:%M:%SZ}, oldest "
            "acceptable timestamp is: 2026-04-14T09:02:30Z")


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (204, "", []),
        # Loki 3 ingester: the oldest N of the push were too far behind (the stream's newest - max_chunk_age/2)
        (400, "\n".join([*ignored_lines(FIVE[:2]), f"user 'fake', total ignored: 2 out of 5 for stream: {STREAM}"]),
         [("05", "too far behind"), ("04", "too far behind")]),
        # Loki 2.9: the same without the entry's own time in the reason
        (400, "\n".join([*ignored_lines(FIVE[:1], False), f"user 'fake', total ignored: 1 out of 5 for stream: "
                         f"{STREAM}"]),
         [("05", "too far behind")]),
        # the listing is cut at max_returned_stream_errors (here 1 of 3): the total still says how many
        (400, "\n".join([*ignored_lines(FIVE[:1]), f"user 'fake', total ignored: 3 out of 5 for stream: {STREAM}"]),
         [("05", "too far behind"), ("04", "too far behind"), ("03", "too far behind")]),
        # Loki before 2.4 (ordered writes)
        (400, f"entry with timestamp {go_time(ns(FIVE[0].last_timestamp))} ignored, reason: 'entry out of order' for "
              f"stream: {STREAM},\ntotal ignored: 1 out of 5", [("05", "out of order")]),
        # the distributor: every refused entry, grouped by message ("N errors like:"), in no particular order
        (400, f"{too_old(FIVE[0])}", [("05", "too old")]),
        (400, f"1 errors like: {too_old(FIVE[1])}; 1 errors like: {too_old(FIVE[0])}",
         [("05", "too old"), ("04", "too old")]),
        (400, f"entry for stream '{STREAM}' has timestamp too new: 2026-04-14T09:05:00Z", [("01", "too new")]),
        (400, f"1 errors like: max entry size '4000' bytes exceeded for stream '{STREAM}' while adding an entry with "
              f"length '5500' bytes; 1 errors like: {too_old(FIVE[0])}", "too_long"),
        # a stream Loki skips whole for its labels, or an answer about the request: nothing of it was stored
        (400, f"stream '{STREAM}' has label value too long: 'xxxx'", [(u, "invalid stream") for u in
                                                                      ("05", "04", "03", "02", "01")]),
        (400, "error at least one label pair is required per stream",
         [(u, "invalid stream") for u in ("05", "04", "03", "02", "01")]),
        (413, "request body too large: 9000000 bytes, limit: 8388608 bytes",
         [(u, "refused") for u in ("05", "04", "03", "02", "01")]),
        # answers that do not add up are never taken as "stored": the whole stream is counted as failed
        (400, "\n".join([*ignored_lines(FIVE[3:4]), f"user 'fake', total ignored: 1 out of 5 for stream: {STREAM}"]),
         [(u, "unaccounted") for u in ("05", "04", "03", "02", "01")]),  # the listed entry is not the oldest
        (400, f"{too_old(FIVE[4])}", [(u, "unaccounted") for u in ("05", "04", "03", "02", "01")]),  # not the oldest
        (400, f"1 errors like: {too_old(FIVE[0])}; 1 errors like: entry for stream '{STREAM}' has structured metadata "
              "too large: '9' bytes, limit: '1' bytes", [(u, "unaccounted") for u in ("05", "04", "03", "02", "01")]),
    ],
)
def test_refusals_in_an_answer(status: int, body: str, expected: object) -> None:
    sink = build(SINK)
    events = FIVE
    if expected == "too_long":  # 02's line is the long one; 05 is too old
        events = [*FIVE[:3], replace(FIVE[3], message="x" * 5000), FIVE[4]]
        expected = [("05", "too old"), ("02", "line too long")]
    answer = sink.classify(httpx.Response(status, text=body), entries_of(sink, *events))
    assert sorted(refusals(answer)) == sorted(expected)  # type: ignore[arg-type]


def test_an_ingester_answer_for_fewer_entries_than_pushed_needs_a_closer_look() -> None:
    """The ingester's error replaces the distributor's: "1 out of 3" for a push of 5 means the distributor refused
    2 without a word."""
    sink = build(SINK)
    body = "\n".join([*ignored_lines(FIVE[2:3]), f"user 'fake', total ignored: 1 out of 3 for stream: {STREAM}"])
    answer = sink.classify(httpx.Response(400, text=body), entries_of(sink, *FIVE))
    assert isinstance(answer, Hidden) and (answer.ignored, answer.reached) == (1, 3)


def test_classification_of_whole_push_errors() -> None:
    sink = build(SINK)
    entries = entries_of(sink, make_event(1), make_event(2))
    with pytest.raises(RetryableError, match="HTTP 429: Ingestion rate limit exceeded") as info:
        sink.classify(httpx.Response(429, text=RATE_LIMITED.format(lines=2, bytes=300),
                                     headers={"Retry-After": "5"}), entries)
    assert info.value.retry_after == 5.0
    for status in (500, 502, 503, 504):
        with pytest.raises(RetryableError):
            sink.classify(httpx.Response(status, text="empty ring"), entries)
    with pytest.raises(PermanentError, match="HTTP 401: no org id"):
        sink.classify(httpx.Response(401, text="no org id"), entries)
    with pytest.raises(PermanentError, match="HTTP 403"):
        sink.classify(httpx.Response(403, text="forbidden"), entries)


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
    with pytest.raises(PartialError, match=r"refused 1 of 2 events: 1 without any label \(no value for any") as info:
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


def test_a_listing_cut_at_ten_lines_still_accounts_for_every_entry() -> None:
    """Loki lists at most max_returned_stream_errors (10) ignored entries; its total says how many there were."""
    server = FakeLoki(max_listed=1).start()
    try:
        sink = build(f"loki:{server.url}?stream_labels=namespace")
        now = datetime.now(UTC).replace(microsecond=0)
        sink.send([make_event(1, last_timestamp=now)])
        late = [make_event(n, last_timestamp=now - timedelta(hours=3, seconds=n)) for n in (2, 3)]
        with pytest.raises(PartialError, match="refused 2 of 3 events: 2 too far behind") as info:
            sink.send([*late, make_event(4, last_timestamp=now)])
        assert sorted(e.uid for e in info.value.rejected) == sorted(e.uid for e in late)
        assert [orjson.loads(e.line)["uid"] for e in server.entries] == [make_event(1).uid, make_event(4).uid]
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

