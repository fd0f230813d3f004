"""Every event pushed to Loki is either stored or counted (and logged) as refused, never counted as sent when
Loki dropped it: its answer to a push of several streams covers one stream only, so the sink pushes each stream
on its own and reads each answer entry by entry.

The test server answers as Loki does (tests/servers/fake_loki.py); the first tests pin that behaviour down."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest

from eventrouter import Event, PartialError, PermanentError, RetryableError, SinkURL
from sinks.loki import LokiSink
from tests.helpers import DATA, make_event, real_events
from tests.servers.fake_loki import PASS, RATE_LIMITED, FakeLoki, Reply

HOUR = 3_600_000_000_000


@pytest.fixture
def loki() -> Iterator[FakeLoki]:
    server = FakeLoki().start()
    yield server
    server.stop()


def build(flag: str) -> LokiSink:
    sink = LokiSink.from_url(SinkURL.parse(flag))
    assert isinstance(sink, LokiSink)
    return sink


def push(loki: FakeLoki, *streams: tuple[str, list[tuple[int, str]]]) -> httpx.Response:
    """A push as any Loki client sends it (JSON form): (app label, [(ns, line)]) per stream."""
    body = {"streams": [{"stream": {"app": app}, "values": [[str(ns), line] for ns, line in values]}
                        for app, values in streams]}
    return httpx.post(f"{loki.url}/loki/api/v1/push", json=body)


def stored_lines(loki: FakeLoki) -> list[str]:
    return [e.line for e in loki.entries]


# ---- the test server answers as Loki does ------------------------------------------------------------------
def test_a_push_of_several_streams_is_answered_with_the_last_streams_outcome(loki: FakeLoki) -> None:
    """Loki's ingester (instance.Push) keeps one error, replaced by each stream's outcome: a refusal in a stream
    that is not the last goes unreported."""
    now = datetime.now(UTC).timestamp() * 1e9
    t = int(now)
    assert push(loki, ("a", [(t, "a-new")]), ("b", [(t, "b-new")])).status_code == 204
    answer = push(loki, ("a", [(t - 2 * HOUR, "a-late")]), ("b", [(t, "b-2")]))
    assert (answer.status_code, answer.text) == (204, "")  # a-late was ignored, and nothing says so
    answer = push(loki, ("b", [(t, "b-3")]), ("a", [(t - 2 * HOUR, "a-late")]))
    assert answer.status_code == 400 and answer.headers["content-type"] == "text/plain; charset=utf-8"
    assert re.fullmatch(r"entry with timestamp \d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)? \+0000 UTC ignored, reason: "
                        r"'entry too far behind, entry timestamp is: \S+Z, oldest acceptable timestamp is: \S+Z',\n"
                        r"user 'fake', total ignored: 1 out of 1 for stream: \{app=\"a\", service_name=\"a\"\}\n",
                        answer.text)
    assert stored_lines(loki) == ["a-new", "b-new", "b-2", "b-3"]


def test_identical_entries_are_stored_once(loki: FakeLoki) -> None:
    t = int(datetime.now(UTC).timestamp() * 1e9)
    for _ in range(2):
        assert push(loki, ("a", [(t, "one"), (t + 1, "two")])).status_code == 204
    assert push(loki, ("a", [(t, "one"), (t, "other line, same time")])).status_code == 204
    assert stored_lines(loki) == ["one", "two", "other line, same time"]


def test_the_distributor_lists_every_refusal_unless_the_ingester_fails() -> None:
    server = FakeLoki(max_age=86400, max_line_size=20).start()
    try:
        t = int(datetime.now(UTC).timestamp() * 1e9)
        old = t - 48 * HOUR
        answer = push(server, ("a", [(old, "x"), (old, "y"), (t, "z" * 30), (t, "ok")]))
        assert answer.status_code == 400
        parts = sorted(answer.text.strip().split("; "))
        assert len(parts) == 2 and parts[0].startswith("1 errors like: max entry size '20' bytes exceeded for "
                                                       "stream '{app=\"a\", service_name=\"a\"}' while adding an "
                                                       "entry with length '30' bytes")
        assert re.fullmatch(r"2 errors like: entry for stream '\{app=\"a\", service_name=\"a\"\}' has timestamp "
                            r"too old: \S+Z, oldest acceptable timestamp is: \S+Z", parts[1])
        assert stored_lines(server) == ["ok"]
        # the ingester ignores one entry of this push: its answer replaces the distributor's
        answer = push(server, ("a", [(old, "x"), (t - 2 * HOUR, "late"), (t, "ok 2")]))
        assert answer.status_code == 400 and "too old" not in answer.text
        assert answer.text.endswith("total ignored: 1 out of 2 for stream: {app=\"a\", service_name=\"a\"}\n")
        assert stored_lines(server) == ["ok", "ok 2"]
    finally:
        server.stop()


# ---- the sink: one push per stream, each entry accounted for -------------------------------------------
def ns_event(n: int, namespace: str, when: datetime) -> Event:
    event = make_event(n, last_timestamp=when)
    return replace(event, involved_object=replace(event.involved_object, namespace=namespace))


def uids(events: Sequence[Event]) -> list[str]:
    return sorted(e.uid for e in events)


def stored_uids(loki: FakeLoki) -> list[str]:
    return sorted(orjson.loads(line)["uid"] for line in stored_lines(loki))


def test_refusals_in_every_stream_of_a_batch_are_counted(loki: FakeLoki, caplog: pytest.LogCaptureFixture) -> None:
    sink = build(f"loki:{loki.url}?stream_labels=namespace")
    now = datetime.now(UTC).replace(microsecond=0)
    sink.send([ns_event(n, ns, now) for n, ns in ((1, "a"), (2, "b"), (3, "c"))])
    late = [ns_event(4, "a", now - timedelta(hours=2)), ns_event(5, "b", now - timedelta(hours=3)),
            ns_event(6, "b", now - timedelta(hours=2))]
    fine = [ns_event(7, "a", now), ns_event(8, "b", now - timedelta(minutes=30)), ns_event(9, "c", now)]
    loki.pushes.clear()
    with pytest.raises(PartialError) as info:
        sink.send([late[0], fine[0], late[1], fine[1], late[2], fine[2]])
    assert uids(info.value.rejected) == uids(late) and info.value.retry == []
    assert stored_uids(loki) == sorted(uids([ns_event(n, "x", now) for n in (1, 2, 3)]) + uids(fine))
    assert [[labels["namespace"] for labels, _ in p] for p in loki.pushes] == [["a"], ["b"], ["c"]]
    assert "Loki refused 3 of 6 events, counted as failed: 3 too far behind (entry with timestamp" in caplog.text


def test_refusals_of_the_distributor_and_the_ingester_in_one_stream(caplog: pytest.LogCaptureFixture) -> None:
    """The ingester's answer hides the distributor's refusals ("1 out of 3" for a push of 5): each entry is pushed
    alone to learn which the distributor refuses (its verdict depends on the entry only); nothing is stored twice."""
    server = FakeLoki(max_age=7 * 86400).start()
    try:
        sink = build(f"loki:{server.url}?stream_labels=namespace")
        now = datetime.now(UTC).replace(microsecond=0)
        sink.send([ns_event(1, "a", now)])
        too_old = [ns_event(2, "a", now - timedelta(days=9)), ns_event(3, "a", now - timedelta(days=8))]
        behind = [ns_event(4, "a", now - timedelta(hours=5))]
        fine = [ns_event(5, "a", now - timedelta(minutes=20)), ns_event(6, "a", now - timedelta(minutes=10))]
        with pytest.raises(PartialError) as info:
            sink.send([*fine, *behind, *too_old])
        assert uids(info.value.rejected) == uids(too_old + behind) and info.value.retry == []
        assert stored_uids(server) == uids([ns_event(1, "a", now), *fine])
        assert len(server.entries) == 3  # the probes stored nothing again
        assert re.search(r"Loki refused 3 of 5 events, counted as failed: (2 too old \(.*\), 1 too far behind|"
                         r"1 too far behind \(.*\), 2 too old)", caplog.text)
    finally:
        server.stop()


def test_a_429_midway_retries_the_streams_not_stored_and_stores_nothing_twice(loki: FakeLoki) -> None:
    sink = build(f"loki:{loki.url}?stream_labels=namespace")
    now = datetime.now(UTC).replace(microsecond=0)
    batch = [ns_event(n, ns, now) for n, ns in ((1, "a"), (2, "b"), (3, "c"), (4, "a"))]
    loki.replies.extend([PASS, Reply(429, RATE_LIMITED.format(lines=1, bytes=500), {"Retry-After": "3"})])
    with pytest.raises(PartialError, match="Ingestion rate limit exceeded") as info:
        sink.send(batch)
    assert uids(info.value.retry) == uids([batch[1], batch[2]]) and info.value.rejected == []
    assert info.value.retry_after == 3.0
    assert stored_uids(loki) == uids([batch[0], batch[3]])
    sink.send(info.value.retry)
    assert stored_uids(loki) == uids(batch)


def test_a_push_stored_but_answered_with_an_error_is_not_stored_twice(loki: FakeLoki) -> None:
    sink = build(f"loki:{loki.url}?stream_labels=namespace")
    batch = [ns_event(n, "a", datetime.now(UTC)) for n in (1, 2)]
    loki.replies.append(Reply(504, "upstream timed out", stored=True))
    with pytest.raises(RetryableError, match="HTTP 504"):
        sink.send(batch)
    sink.send(batch)
    assert stored_uids(loki) == uids(batch)


def test_bad_credentials_fail_the_streams_not_yet_pushed(loki: FakeLoki) -> None:
    sink = build(f"loki:{loki.url}?stream_labels=namespace")
    batch = [ns_event(n, ns, datetime.now(UTC)) for n, ns in ((1, "a"), (2, "b"))]
    loki.replies.extend([PASS, Reply(401, "invalid token")])
    with pytest.raises(PartialError, match="HTTP 401: invalid token") as info:
        sink.send(batch)
    assert info.value.rejected == [batch[1]] and info.value.retry == []
    assert stored_uids(loki) == uids(batch[:1])


# ---- the recorded corpus: out of order, years old ----------------------------------------------------------
def deliver(sink: LokiSink, events: list[Event], batch_size: int = 500) -> list[Event]:
    """As the router does: batches, PartialError's retry sent again, rejected and permanent failures counted."""
    failed: list[Event] = []
    for start in range(0, len(events), batch_size):
        batch: Sequence[Event] = events[start:start + batch_size]
        while batch:
            try:
                sink.send(batch)
                batch = []
            except PartialError as exc:
                failed += exc.rejected
                batch = exc.retry
            except PermanentError:
                failed += batch
                batch = []
    return failed


def key(event: dict[str, object] | Event) -> tuple[object, object]:
    return (event["uid"], event["count"]) if isinstance(event, dict) else (event.uid, event.count)


# Loki's reject_old_samples bound in the middle of the recording, so that both kinds of refusal meet in a stream
MID_CORPUS = datetime(2022, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("reject_before", [None, MID_CORPUS], ids=["window only", "window and too old"])
def test_each_recorded_event_is_stored_or_refused_exactly_once(reject_before: datetime | None) -> None:
    max_age = (datetime.now(UTC) - reject_before).total_seconds() if reject_before else None
    server = FakeLoki(max_age=max_age).start()
    try:
        events = real_events()
        failed = deliver(build(f"loki:{server.url}"), events)
        stored = [orjson.loads(line) for line in stored_lines(server)]
        assert len({(e.ns, e.line) for e in server.entries}) == len(server.entries)  # nothing stored twice
        assert Counter(map(key, stored)) + Counter(map(key, failed)) == Counter(map(key, events))
        assert len(failed) > 100 and len(stored) > 500  # both outcomes are exercised
        if reject_before:
            old = {key(e) for e in events if e.last_timestamp < reject_before}
            assert old <= set(map(key, failed))
    finally:
        server.stop()


@pytest.mark.parametrize(("max_age", "reasons"), [(None, {"too far behind"}), (7 * 86400, {"too old"}),
                                                  ("mid", {"too far behind", "too old"})])
def test_replaying_the_recording_through_the_command_line(tmp_path: Path, max_age: float | str | None,
                                                          reasons: set[str]) -> None:
    """What a user sees: the totals line adds up to the 1,219 recorded events, the stored ones are in Loki once,
    and the refused ones are in the log, per batch, with Loki's reason."""
    if max_age == "mid":
        max_age = (datetime.now(UTC) - MID_CORPUS).total_seconds()
    assert not isinstance(max_age, str)
    server = FakeLoki(max_age=max_age).start()
    exe = str(Path(sys.executable).parent / "eventrouter")
    proc = subprocess.run([exe, f"--source=file:{DATA / 'core-v1.jsonl'}", f"--sink=loki:{server.url}",
                           "--healthz-port=0"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    server.stop()
    assert proc.returncode == 0, proc.stderr
    totals = re.search(r"sink loki: sent (\d+), filtered 0, failed (\d+), dropped 0 \(overflow\) 0 \(shutdown\)",
                       proc.stderr)
    assert totals, proc.stderr
    sent, failed = int(totals.group(1)), int(totals.group(2))
    assert sent + failed == 1219 and failed > 0
    assert sent == len(server.entries) == len({(e.ns, e.line) for e in server.entries})
    refused = re.findall(r"loki: Loki refused (\d+) of \d+ events, counted as failed: (.*)", proc.stderr)
    assert sum(int(n) for n, _ in refused) == failed
    seen = {reason for _, text in refused for reason in re.findall(r"\d+ (too far behind|too old) \(", text)}
    assert seen == reasons
