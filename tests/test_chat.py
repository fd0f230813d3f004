"""The shared chat machinery: repeats, rate window, digests, layouts, truncation (no network)."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from eventrouter import (
    CHAT_OPTIONS,
    ChatFlow,
    ChatLayout,
    Digest,
    Notice,
    PartialError,
    PermanentError,
    RateLimitedError,
    RetryableError,
    SinkConfigError,
    json_size,
    truncate_bytes,
)
from eventrouter.chat import RateWindow, RepeatFilter
from eventrouter.options import parse_options
from tests.helpers import make_event
from tests.servers.fake_dingtalk import FakeClock


def _opts(**query: str):
    return parse_options("chat", CHAT_OPTIONS, {k: [v] for k, v in query.items()})


class Recorder:
    """post_event / post_digest callables that record, or fail as told."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, object]] = []
        self.fail: list[Exception] = []

    def event(self, event, notice) -> None:  # type: ignore[no-untyped-def]
        if self.fail:
            raise self.fail.pop(0)
        self.posts.append(("event", (event.involved_object.name, notice)))

    def digest(self, digest) -> None:  # type: ignore[no-untyped-def]
        if self.fail:
            raise self.fail.pop(0)
        self.posts.append(("digest", digest))


# ---- truncation -----------------------------------------------------------------------------------
def test_truncate_keeps_short_text_and_marks_long_text():
    assert truncate_bytes("short", 100) == "short"
    long = "告警" * 2000  # 3 bytes per character
    cut = truncate_bytes(long, 2048)
    assert cut.endswith("… (truncated)")
    assert len(cut.encode()) <= 2048
    assert cut.startswith("告警告警")
    assert len(cut.encode()) > 2000  # not cut more than needed


def test_truncate_by_json_size_counts_escapes():
    text = '"\n' * 5000
    cut = truncate_bytes(text, 1000, measure=json_size)
    assert json_size(cut) <= 1000 and cut.endswith("(truncated)")


# ---- repeats --------------------------------------------------------------------------------------
def test_repeat_first_sent_then_held_then_reminded_with_count():
    repeats = RepeatFilter(interval=1800)
    first = make_event(1)
    assert repeats.check(first, 0) == Notice()
    repeats.commit(first, 0)
    for t in (10, 600, 1799):
        assert repeats.check(replace(first, count=5), t) is None
    # another reason or object is not a repeat
    assert repeats.check(replace(first, reason="Failed"), 10) == Notice()
    assert repeats.check(make_event(2), 10) == Notice()
    assert repeats.check(replace(first, count=9), 1800) == Notice(reminder=True, suppressed=3)


def test_repeat_interval_zero_sends_every_occurrence_and_keeps_no_memory():
    repeats = RepeatFilter(interval=0)
    for t in range(5):
        assert repeats.check(make_event(1), t) == Notice()
        repeats.commit(make_event(1), t)
    assert len(repeats) == 0


def test_repeat_memory_is_bounded_and_expires():
    repeats = RepeatFilter(interval=60, max_keys=100)
    for n in range(1000):
        repeats.commit(make_event(n), 0)
    assert len(repeats) == 100
    assert repeats.check(make_event(999), 1) is None  # the newest are remembered
    repeats.commit(make_event(5000), 61)  # everything older than the interval expires
    assert len(repeats) == 1


# ---- rate window ----------------------------------------------------------------------------------
def test_rate_window_slides_and_pauses():
    rate = RateWindow(3, window=60)
    for t in (0, 1, 2):
        rate.record(t)
    assert rate.room(30) == 0
    assert rate.room(60) == 1 and rate.room(62) == 3
    rate.pause(62, 60)
    assert rate.room(100) == 0 and rate.room(122) == 3
    assert RateWindow(0).room(0) > 1000  # 0 means no limit


# ---- digest ---------------------------------------------------------------------------------------
def test_digest_headline_groups_by_reason_and_namespace():
    digest = Digest()
    for n in range(30):
        digest.add(make_event(n, namespace="a", involved_object=replace(make_event(n).involved_object, namespace="a")))
    for n in range(7):
        ev = make_event(100 + n, reason="FailedScheduling", namespace="b")
        digest.add(replace(ev, involved_object=replace(ev.involved_object, namespace="b")))
    assert digest.total == 37
    assert digest.headline() == "37 more Warning events: BackOff x30 in ns a, FailedScheduling x7 in ns b"


def test_digest_mixed_types_and_cluster_scoped_objects():
    digest = Digest()
    node = make_event(1, reason="NodeNotReady", namespace="", type="Normal")
    digest.add(replace(node, involved_object=replace(node.involved_object, kind="Node", namespace="", name="n1")))
    digest.add(make_event(2))
    assert digest.headline() == "2 more events (1 Normal and 1 Warning): NodeNotReady x1 (cluster-scoped), " \
                                "BackOff x1 in ns default"


# ---- the flow -------------------------------------------------------------------------------------
def test_burst_of_100_gives_19_messages_and_one_digest_of_81():
    clock = FakeClock()
    flow = ChatFlow(rate_limit=20, repeat_interval=1800, clock=clock)
    rec = Recorder()
    flow.send([make_event(n) for n in range(100)], rec.event)
    assert [name for _, (name, _) in rec.posts] == [f"app-{n}" for n in range(19)]
    assert flow.pending() == 81
    flow.tick(rec.event, rec.digest)
    assert len(rec.posts) == 20
    kind, digest = rec.posts[-1]
    assert kind == "digest" and digest.total == 81
    assert digest.headline() == "81 more Warning events: BackOff x81 in ns default"
    assert flow.pending() == 0


def test_digest_waits_for_the_window_and_keeps_order():
    clock = FakeClock()
    flow = ChatFlow(rate_limit=3, repeat_interval=0, clock=clock)
    rec = Recorder()
    flow.send([make_event(n) for n in range(3)], rec.event)  # 2 sent, 1 folded
    flow.tick(rec.event, rec.digest)  # the reserved slot: a one-event digest goes out as the event itself
    assert [p[1][0] for p in rec.posts] == ["app-0", "app-1", "app-2"]
    flow.send([make_event(3)], rec.event)
    assert flow.pending() == 1  # app-3 waits: window full
    clock.advance(10)
    flow.send([make_event(4)], rec.event)  # joins the pending digest (order kept)
    flow.tick(rec.event, rec.digest)
    assert len(rec.posts) == 3
    clock.advance(50)  # the first posts leave the window
    flow.tick(rec.event, rec.digest)
    assert rec.posts[-1][0] == "digest" and rec.posts[-1][1].total == 2
    clock.advance(60)
    flow.send([make_event(5)], rec.event)
    assert rec.posts[-1] == ("event", ("app-5", Notice()))


def test_repeats_held_back_then_reminded():
    clock = FakeClock()
    flow = ChatFlow(rate_limit=20, repeat_interval=1800, clock=clock)
    rec = Recorder()
    ev = make_event(1)
    flow.send([ev, replace(ev, count=2), replace(ev, count=3)], rec.event)
    clock.advance(1000)
    flow.send([replace(ev, count=4)], rec.event)
    assert len(rec.posts) == 1 and flow.suppressed == 3
    clock.advance(800)
    flow.send([replace(ev, count=5)], rec.event)
    assert rec.posts[-1] == ("event", ("app-1", Notice(reminder=True, suppressed=3)))


def test_retryable_error_mid_batch_retries_only_the_rest():
    flow = ChatFlow(rate_limit=0, repeat_interval=1800, clock=FakeClock())
    rec = Recorder()
    batch = [make_event(n) for n in range(5)]
    rec.posts.clear()
    calls = iter([None, None, RetryableError("busy")])

    def post(event, notice):  # type: ignore[no-untyped-def]
        err = next(calls, None)
        if err:
            raise err
        rec.event(event, notice)

    with pytest.raises(PartialError) as info:
        flow.send(batch, post)
    assert info.value.retry == batch[2:] and not info.value.rejected
    flow.send(info.value.retry, rec.event)  # the router's retry: not held back as a repeat
    assert [p[1][0] for p in rec.posts] == [f"app-{n}" for n in range(5)]


def test_permanent_errors_reject_only_the_failing_events():
    flow = ChatFlow(rate_limit=0, repeat_interval=0, clock=FakeClock())
    rec = Recorder()
    rec.fail = [PermanentError("errcode 310000")]
    with pytest.raises(PartialError) as info:
        flow.send([make_event(1), make_event(2)], rec.event)
    assert [e.involved_object.name for e in info.value.rejected] == ["app-1"] and not info.value.retry
    rec.fail = [PermanentError("errcode 300005")]
    with pytest.raises(PermanentError, match="300005"):
        flow.send([make_event(3)], rec.event)


def test_server_rate_limit_pauses_the_window():
    clock = FakeClock()
    flow = ChatFlow(rate_limit=20, repeat_interval=0, clock=clock)
    rec = Recorder()
    rec.fail = [RateLimitedError("errcode 130101", retry_after=60)]
    with pytest.raises(PartialError) as info:
        flow.send([make_event(1)], rec.event)
    assert info.value.retry_after == 60
    clock.advance(30)
    flow.send([make_event(2)], rec.event)  # paused: folded into the digest, not posted
    assert rec.posts == [] and flow.pending() == 1
    clock.advance(31)
    flow.tick(rec.event, rec.digest)
    assert rec.posts == [("event", ("app-2", Notice()))]


def test_permanent_digest_failure_drops_it_and_close_reports_what_was_left(caplog):
    clock = FakeClock()
    flow = ChatFlow(rate_limit=2, repeat_interval=0, clock=clock)
    rec = Recorder()
    flow.send([make_event(n) for n in range(4)], rec.event)
    rec.fail = [PermanentError("errcode 310000")]
    with pytest.raises(PermanentError):
        flow.tick(rec.event, rec.digest)
    assert flow.pending() == 0
    flow.send([make_event(n) for n in range(10, 13)], rec.event)  # window full: all folded
    with caplog.at_level(logging.WARNING):
        flow.close(rec.event, rec.digest)
    assert "3 more Warning events: BackOff x3 in ns default" in caplog.text
    assert flow.pending() == 0


def test_close_posts_the_pending_digest_when_the_window_allows():
    flow = ChatFlow(rate_limit=20, repeat_interval=0, clock=FakeClock())
    rec = Recorder()
    flow.send([make_event(n) for n in range(25)], rec.event)
    flow.close(rec.event, rec.digest)
    assert len(rec.posts) == 20 and rec.posts[-1][1].total == 6


# ---- layouts --------------------------------------------------------------------------------------
def _event():
    when = datetime(2026, 4, 14, 9, 30, 0, tzinfo=UTC)
    return make_event(7, count=12, first_timestamp=when.replace(minute=0), last_timestamp=when, cluster="prod",
                      name="app-7.17a0b0c0d0e0f000")


def test_text_layout_keeps_kube_eventer_shape_with_involved_object_name():
    layout = ChatLayout("dingtalk", _opts(label="k8s", tz="Asia/Shanghai"))
    assert layout.event(_event()) == (
        "k8s\nLevel:Warning\nKind:Pod\nNamespace:default\nName:app-7\nReason:BackOff\n"
        "Timestamp:2026-04-14 17:30:00 CST\nMessage:Back-off restarting failed container app in pod app-7\n"
        "Count:12\nFirstTimestamp:2026-04-14 17:00:00 CST\nCluster:prod\nHost:node-1"
    )
    reminder = layout.event(_event(), Notice(reminder=True, suppressed=4))
    assert "Count:12 (reminder: still happening; 4 updates held back since the last message)" in reminder


def test_markdown_layout_shows_every_field():
    layout = ChatLayout("dingtalk", _opts(msg_type="markdown"), cluster_id="c123")
    text = layout.event(replace(_event(), cluster=""))
    for part in ("**Cluster:** c123", "**Level:** Warning", "**Kind:** Pod", "**Namespace:** default",
                 "**Name:** app-7", "**Reason:** BackOff", "**Count:** 12", "**First seen:** 2026-04-14 09:00:00 UTC",
                 "**Last seen:** 2026-04-14 09:30:00 UTC", "**Host:** node-1", "> Back-off restarting"):
        assert part in text
    assert "\n\n" in text
    assert layout.title(_event()) == "[Warning] BackOff Pod default/app-7"


def test_template_replaces_the_layout():
    layout = ChatLayout("dingtalk", _opts(template="{{ involved_object.name }} {{ reason }} x{{ count }} "
                                                   "{{ last_time }} {{ labels|join(',') }} {{ reminder }}",
                                          label="L", tz="Asia/Shanghai"))
    assert layout.event(_event()) == "app-7 BackOff x12 2026-04-14 17:30:00 CST L False"


@pytest.mark.parametrize(("query", "option"), [
    ({"tz": "Mars/Olympus"}, "tz"),
    ({"template": "{{ x"}, "template"),
    ({"template_file": "/nonexistent/t.j2"}, "template_file"),
])
def test_layout_config_errors_name_the_option(query, option):
    with pytest.raises(SinkConfigError) as info:
        ChatLayout("dingtalk", _opts(**query))
    assert info.value.option == option and "dingtalk" in str(info.value)


def test_digest_layout_lists_groups_and_labels():
    layout = ChatLayout("dingtalk", _opts(label="k8s"))
    digest = Digest()
    for n in range(5):
        digest.add(make_event(n, cluster="prod"))
    text = layout.digest(digest, 20)
    assert text.splitlines()[:4] == ["k8s", "Cluster:prod", "5 more Warning events: BackOff x5 in ns default",
                                     "- BackOff x5 in ns default: Pod/app-0, Pod/app-1, Pod/app-2 and 2 more"]


def test_template_that_fails_on_one_event_falls_back_to_the_default_layout(caplog):
    """Checked on a sample at start-up, a template can still break on real data: the alert is sent anyway."""
    layout = ChatLayout("dingtalk", _opts(template="{% if reason == 'BackOff' %}{{ raw.spec.x }}{% endif %}ok",
                                          label="L"))
    with caplog.at_level(logging.WARNING, logger="eventrouter.sinks.dingtalk"):
        text = layout.event(_event())
        layout.event(_event())
    assert text.splitlines()[:3] == ["L", "Level:Warning", "Kind:Pod"] and "Name:app-7" in text
    warnings = [r.getMessage() for r in caplog.records if r.name == "eventrouter.sinks.dingtalk"]
    assert len(warnings) == 1 and "does not render for Pod app-7" in warnings[0]  # throttled
    assert layout.event(replace(_event(), reason="Other")) == "ok"


def test_flow_posts_every_event_once_when_the_template_fails_on_some():
    layout = ChatLayout("dingtalk", _opts(template="{{ 1 // (count - 12) }}"))  # count 12: ZeroDivisionError
    flow = ChatFlow(rate_limit=0, repeat_interval=0)
    posted: list[str] = []
    events = [replace(_event(), count=11), _event(), replace(_event(), count=13)]
    flow.send(events, lambda e, n: posted.append(layout.event(e, n)))
    assert posted[0] == "-1" and posted[1].startswith("Level:Warning") and posted[2] == "1"


def test_unexpected_exception_mid_batch_never_reposts_what_was_posted():
    flow = ChatFlow(rate_limit=0, repeat_interval=0, clock=FakeClock())
    rec = Recorder()
    batch = [make_event(n) for n in range(4)]
    calls = iter([None, AttributeError("'int' object has no attribute 'replace'")])

    def post(event, notice):  # type: ignore[no-untyped-def]
        err = next(calls, None)
        if err:
            raise err
        rec.event(event, notice)

    with pytest.raises(PartialError) as info:
        flow.send(batch, post)  # was: the AttributeError itself, and the router re-sent the whole batch
    assert info.value.retry == batch[1:] and not info.value.rejected
    assert "AttributeError" in str(info.value)
    flow.send(info.value.retry, rec.event)
    assert [p[1][0] for p in rec.posts] == ["app-0", "app-1", "app-2", "app-3"]
