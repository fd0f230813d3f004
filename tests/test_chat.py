"""The shared chat machinery: repeats, rate window, digests, layouts, truncation (no network)."""

from __future__ import annotations

import itertools
import logging
from dataclasses import replace
from datetime import UTC, datetime

import orjson
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
from eventrouter.chat import FORGET_AFTER, ChatStats, RateWindow, RepeatFilter
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


def test_repeat_memory_is_bounded_and_forgets_only_long_silent_problems():
    repeats = RepeatFilter(interval=60, max_keys=100)
    for n in range(1000):
        repeats.commit(make_event(n), 0)
    assert len(repeats) == 100
    assert repeats.check(make_event(999), 1) is None  # the newest are remembered
    repeats.commit(make_event(5000), 61)  # the interval passing forgets nothing
    assert len(repeats) == 101 - 1 and repeats.check(make_event(999), 70) == Notice(reminder=True, suppressed=1)
    repeats.commit(make_event(6000), 70 + FORGET_AFTER)  # an hour of silence: Kubernetes forgot them too
    assert len(repeats) == 1 and repeats.check(make_event(999), 71 + FORGET_AFTER) == Notice()


def test_every_repeat_after_the_interval_is_a_reminder_with_its_held_back_count():
    """repeat_interval=60s, a pod bumped every 10 s for 10 minutes while other pods come and go: each
    message after the first is a reminder saying 5 updates were held back (was: 1 in 18)."""
    clock = FakeClock()
    flow = ChatFlow(rate_limit=0, repeat_interval=60, clock=clock)
    rec = Recorder()
    pod = make_event(1)
    for step in range(61):
        flow.send([replace(pod, count=step + 1), make_event(100 + step, reason=f"Other{step}")], rec.event)
        clock.advance(10)
    notices = [notice for _, (name, notice) in rec.posts if name == "app-1"]
    assert notices[0] == Notice() and len(notices) == 11
    assert notices[1:] == [Notice(reminder=True, suppressed=5)] * 10
    assert flow.stats.repeats_suppressed == 50


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


def test_digest_headline_counts_the_groups_it_does_not_name_in_good_english():
    digest = Digest()
    for n, reason in enumerate(("BackOff", "Failed", "Unhealthy", "FailedMount", "FailedScheduling", "Evicted")):
        digest.add(make_event(n, reason=reason))
    assert digest.headline().endswith(", and 1 more group")  # was "and 1 more groups"
    digest.add(make_event(9, reason="Killing"))
    assert digest.headline().endswith(", and 2 more groups")


def test_digest_mixed_types_and_cluster_scoped_objects():
    digest = Digest()
    node = make_event(1, reason="NodeNotReady", namespace="", type="Normal")
    digest.add(replace(node, involved_object=replace(node.involved_object, kind="Node", namespace="", name="n1")))
    digest.add(make_event(2))
    assert digest.headline() == "2 more events (1 Normal and 1 Warning): NodeNotReady x1 (cluster-scoped), " \
                                "BackOff x1 in ns default"


# ---- the flow -------------------------------------------------------------------------------------
def test_burst_of_100_of_one_reason_gives_3_messages_and_one_digest_of_97():
    clock = FakeClock()
    flow = ChatFlow(rate_limit=20, repeat_interval=1800, clock=clock)
    rec = Recorder()
    flow.send([make_event(n) for n in range(100)], rec.event)
    assert [name for _, (name, _) in rec.posts] == ["app-0", "app-1", "app-2"]
    assert flow.pending() == 97
    flow.tick(rec.event, rec.digest)
    assert len(rec.posts) == 3  # a digest of known reasons gathers a few seconds first
    clock.advance(5)
    flow.tick(rec.event, rec.digest)
    kind, part = rec.posts[-1]
    assert kind == "digest" and part.events == 97 and part.keys == [("BackOff", "default")]
    assert part.text == "97 more Warning events: BackOff x97 in ns default"
    assert flow.pending() == 0
    assert flow.stats == ChatStats(messages=4, events_posted=3, digests=1, events_folded=97, events_in_digests=97)


def test_a_node_problem_mid_storm_goes_out_at_once():
    """300 pods in CrashLoopBackOff with count bumps, NodeNotReady 21 s in: it is the next message."""
    clock = FakeClock()
    flow = ChatFlow(rate_limit=20, repeat_interval=1800, clock=clock)
    rec = Recorder()
    pods = [make_event(n) for n in range(300)]
    for second in range(60):
        batch = [replace(p, count=second + 1) for p in pods[second * 5: second * 5 + 5]]  # 5 new pods a second
        batch += [replace(p, count=second + 1) for p in pods[: second * 5: 7]]  # and bumps of earlier ones
        if second == 21:
            batch.insert(3, _node("NodeNotReady"))
        flow.send(batch, rec.event)
        flow.tick(rec.event, rec.digest)
        if second == 21:
            at_21 = len(rec.posts)
        clock.advance(1)
    names = [item[0] if kind == "event" else "digest" for kind, item in rec.posts]
    assert "node-1" in names[:at_21] and names.index("node-1") >= at_21 - 3
    assert len(rec.posts) <= 20  # one minute: at most the rate
    folded = sum(part.events for kind, part in rec.posts if kind == "digest")
    assert flow.stats.events_posted + folded + flow.pending() == 301  # every pod once, and the node


def _node(reason: str, n: int = 1):  # type: ignore[no-untyped-def]
    """An event about Node node-<n>; the Event object lives in ``default``, the Node in no namespace."""
    event = make_event(n, reason=reason, namespace="default", message=f"Node node-{n} status is now: {reason}")
    return replace(event, involved_object=replace(event.involved_object, kind="Node", namespace="", name=f"node-{n}"))


def test_a_batch_is_ranked_urgent_then_new_reasons_then_the_rest():
    flow = ChatFlow(rate_limit=0, repeat_interval=0, clock=FakeClock())
    batch = [make_event(1), make_event(2), make_event(3, reason="FailedMount"), _node("NodeNotReady"),
             make_event(4)]
    assert [e.involved_object.name for e in flow.rank(batch, 0)] == ["node-1", "app-1", "app-3", "app-2", "app-4"]


def test_digest_waits_for_the_window_and_its_spacing():
    clock = FakeClock()
    flow = ChatFlow(rate_limit=4, repeat_interval=0, clock=clock)  # keeps 1 slot from new, 2 from known reasons
    rec = Recorder()
    flow.send([make_event(n) for n in range(5)], rec.event)  # app-0 new, app-1 known: then 3 folded
    assert [p[1][0] for p in rec.posts] == ["app-0", "app-1"] and flow.pending() == 3
    clock.advance(5)
    flow.tick(rec.event, rec.digest)
    assert rec.posts[-1][0] == "digest" and rec.posts[-1][1].events == 3
    flow.send([make_event(5)], rec.event)
    flow.tick(rec.event, rec.digest)
    assert len(rec.posts) == 3 and flow.pending() == 1  # a known reason waits: the spacing is 60 s here
    flow.send([_node("NodeNotReady")], rec.event)  # urgent: the last slot is its
    assert rec.posts[-1] == ("event", ("node-1", Notice()))
    clock.advance(55)
    flow.tick(rec.event, rec.digest)
    assert len(rec.posts) == 4  # the window has room again, but the spacing since the last digest is 60 s
    clock.advance(5)
    flow.tick(rec.event, rec.digest)
    assert rec.posts[-1][0] == "event" and rec.posts[-1][1][0] == "app-5"  # a digest of one is the event


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
    clock.advance(5)
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
    assert len(rec.posts) == 4 and rec.posts[-1][1].events == 22


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
                                                   "{{ last_time }} {{ label_lines|join(',') }} {{ reminder }}",
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


# ---- what on-call needs first: cluster-scoped objects, digests that name every group ----------------
def test_a_cluster_scoped_object_is_never_given_a_namespace():
    node = _node("NodeNotReady")  # its Event object lives in "default"
    layout = ChatLayout("dingtalk", _opts())
    assert "Namespace:(cluster-scoped)" in layout.event(node).splitlines()
    markdown = ChatLayout("dingtalk", _opts(msg_type="markdown"))
    assert "**Namespace:** (cluster-scoped)" in markdown.event(node)
    digest = Digest()
    digest.add(node, 0)
    assert layout.digest(digest, 20).splitlines()[1] == "- NodeNotReady x1 (cluster-scoped): Node/node-1"
    assert "in ns default" not in layout.digest(digest, 20)


def _many_groups(digest: Digest, groups: int) -> None:
    for n in range(groups):
        ns = f"team-{n:03d}"
        event = make_event(n, namespace=ns)
        digest.add(replace(event, involved_object=replace(event.involved_object, namespace=ns)))


@pytest.mark.parametrize(("msg_type", "limit", "measure"), [("text", 2048, None), ("markdown", 4096, None),
                                                            ("text", 18000, json_size)])
def test_a_digest_too_long_for_one_message_is_split_and_names_every_group(msg_type, limit, measure):
    layout = ChatLayout("wechat", _opts(label="prod", msg_type=msg_type), line_break="\n")
    digest = Digest()
    _many_groups(digest, 700)
    digest.add(_node("NodeNotReady"), 0)  # urgent: first in the first part
    parts = layout.digest_parts(digest, 20, limit, measure)
    assert len(parts) > 1
    size = measure or (lambda text: len(text.encode()))
    assert all(size(p.text) <= limit and "truncated" not in p.text for p in parts)
    assert all(p.text.splitlines()[0 if msg_type == "text" else 1] == "prod" for p in parts)  # labels in each
    lines = [line for p in parts for line in p.text.splitlines() if line.startswith("- ")]
    assert len(lines) == 701 and lines[0] == "- NodeNotReady x1 (cluster-scoped): Node/node-1"
    assert sorted(k for p in parts for k in p.keys) == sorted(digest.groups)
    assert sum(p.events for p in parts) == 701 and f"(part 1 of {len(parts)})" in parts[0].text


def test_digest_parts_go_out_one_per_slot_within_the_rate():
    clock = FakeClock()
    layout = ChatLayout("wechat", _opts(), line_break="\n")
    flow = ChatFlow(rate_limit=20, repeat_interval=0, clock=clock,
                    split=lambda d: layout.digest_parts(d, 20, 2048))
    rec = Recorder()
    for n in range(400):  # 400 namespaces, one new reason each time the window is tight
        ns = f"team-{n:03d}"
        event = make_event(n, namespace=ns)
        flow.send([replace(event, involved_object=replace(event.involved_object, namespace=ns))], rec.event)
    for _ in range(300):
        flow.tick(rec.event, rec.digest)
        clock.advance(1)
    times = [t for t in flow.rate.posts(clock())]
    assert all(len([u for u in times if t <= u < t + 60]) <= 20 for t in times)  # never over the rate
    parts = [p for kind, p in rec.posts if kind == "digest"]
    named = [line for p in parts for line in p.text.splitlines() if line.startswith("- BackOff x")]
    singles = [p for kind, p in rec.posts if kind == "event"]
    assert len(named) + len(singles) == 400 and flow.pending() == 0


# ---- busy answers, shutdown and restart --------------------------------------------------------------
def test_a_busy_answer_to_a_digest_is_retried_with_a_growing_wait():
    clock = FakeClock()
    flow = ChatFlow(rate_limit=20, repeat_interval=0, clock=clock)
    rec = Recorder()
    flow.send([make_event(n) for n in range(10)], rec.event)
    clock.advance(5)
    attempts = []
    for _ in range(40):  # 40 s of ticks every second; DingTalk says -1 (busy) four times
        if len(attempts) < 4:
            rec.fail = [RetryableError("dingtalk answered errcode -1: 系统繁忙")]
        before = len(rec.posts)
        try:
            flow.tick(rec.event, rec.digest)
        except RetryableError:
            attempts.append(clock())
        if len(rec.posts) > before:
            attempts.append(clock())
            break
        rec.fail = []
        clock.advance(1)
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert gaps == [2, 4, 8, 16]  # not every second
    assert rec.posts[-1][0] == "digest" and rec.posts[-1][1].events == 7 and flow.pending() == 0


def test_a_digest_left_at_shutdown_is_kept_and_posted_first_after_the_restart(tmp_path, caplog):
    clock, wall = FakeClock(), FakeClock(1_800_000_000.0)
    flow = ChatFlow(rate_limit=20, repeat_interval=0, clock=clock, sink="dingtalk")
    rec = Recorder()
    flow.send([_node(f"Node{n}", n) for n in range(20)], rec.event)  # the window is full
    flow.send([make_event(n) for n in range(30)] + [_node("NodeNotReady", 99)], rec.event)
    assert len(rec.posts) == 20 and flow.pending() == 31
    with caplog.at_level(logging.WARNING):
        flow.close(rec.event, rec.digest, str(tmp_path), wall)
    assert "31 folded events not posted at shutdown (the rate limit was reached): kept in" in caplog.text
    assert "NodeNotReady x1 (cluster-scoped)" in caplog.text and flow.stats.events_kept == 31
    # the restart, 10 s later: DingTalk still counts the 20 posts of the last minute
    clock2, rec2 = FakeClock(50.0), Recorder()
    wall.advance(10)
    again = ChatFlow(rate_limit=20, repeat_interval=0, clock=clock2, sink="dingtalk")
    again.restore(str(tmp_path), wall)
    assert again.pending() == 31
    again.tick(rec2.event, rec2.digest)
    assert rec2.posts == []  # the window carried over the restart: not over the rate
    clock2.advance(50)
    again.tick(rec2.event, rec2.digest)
    [(kind, part)] = rec2.posts
    assert kind == "digest" and part.events == 31 and part.text.startswith("31 more Warning events: NodeNotReady x1")
    assert orjson.loads((tmp_path / "chat-pending.json").read_bytes())["digest"] is None  # posted: not twice


def test_repeats_stay_held_back_and_reminded_across_a_restart(tmp_path):
    clock, wall = FakeClock(), FakeClock(1_800_000_000.0)
    flow = ChatFlow(rate_limit=20, repeat_interval=600, clock=clock)
    rec = Recorder()
    flow.send([make_event(1), replace(make_event(1), count=2)], rec.event)
    flow.close(rec.event, rec.digest, str(tmp_path), wall)
    wall.advance(120)  # restarted two minutes later
    clock2, rec2 = FakeClock(5.0), Recorder()
    again = ChatFlow(rate_limit=20, repeat_interval=600, clock=clock2)
    again.restore(str(tmp_path), wall)
    again.send([replace(make_event(1), count=3)], rec2.event)
    assert rec2.posts == [] and again.tier(make_event(2), clock2()) == 2  # held back; BackOff is known
    clock2.advance(481)
    again.send([replace(make_event(1), count=4)], rec2.event)
    assert rec2.posts == [("event", ("app-1", Notice(reminder=True, suppressed=2)))]


def test_a_process_killed_without_sigterm_loses_at_most_seconds_and_posts_nothing_twice(tmp_path):
    clock, wall = FakeClock(), FakeClock(1_800_000_000.0)
    flow = ChatFlow(rate_limit=20, repeat_interval=0, clock=clock)
    flow.restore(str(tmp_path), wall)  # what ChatSink.open does with a state dir
    rec = Recorder()
    flow.send([_node(f"Node{n}", n) for n in range(20)], rec.event)  # the window is full
    flow.send([make_event(n) for n in range(30)], rec.event)  # folded
    clock.advance(10)
    flow.tick(rec.event, rec.digest)  # no room to post; the digest is written down
    saved = orjson.loads((tmp_path / "chat-pending.json").read_bytes())["digest"]
    assert sum(g["count"] for g in saved["groups"]) == 30
    # SIGKILL now: a new process takes it back and posts it
    wall.advance(60)
    clock2, rec2 = FakeClock(), Recorder()
    again = ChatFlow(rate_limit=20, repeat_interval=0, clock=clock2)
    again.restore(str(tmp_path), wall)
    again.tick(rec2.event, rec2.digest)
    assert [p[1].events for p in rec2.posts] == [30]
    # and SIGKILL right after posting: the next process has nothing to post again
    third, rec3 = ChatFlow(rate_limit=20, repeat_interval=0, clock=FakeClock()), Recorder()
    third.restore(str(tmp_path), wall)
    third.tick(rec3.event, rec3.digest)
    assert rec3.posts == [] and third.pending() == 0


def test_a_busy_answer_at_shutdown_keeps_the_digest_with_the_true_reason(tmp_path, caplog):
    flow = ChatFlow(rate_limit=20, repeat_interval=0, clock=FakeClock(), sink="dingtalk")
    rec = Recorder()
    flow.send([make_event(n) for n in range(37)], rec.event)
    rec.fail = [RetryableError("dingtalk answered errcode -1: 系统繁忙")]
    with caplog.at_level(logging.WARNING):
        flow.close(rec.event, rec.digest, str(tmp_path))
    assert "34 folded events not posted at shutdown (RetryableError: dingtalk answered errcode -1" in caplog.text
    assert "rate limit" not in caplog.text
    assert orjson.loads((tmp_path / "chat-pending.json").read_bytes())["digest"]["groups"][0]["count"] == 34


def test_a_poster_bug_at_shutdown_still_keeps_the_digest(tmp_path):
    flow = ChatFlow(rate_limit=20, repeat_interval=0, clock=FakeClock(), sink="dingtalk")
    rec = Recorder()
    flow.send([make_event(n) for n in range(10)], rec.event)
    rec.fail = [AttributeError("'NoneType' object has no attribute 'text'")]
    flow.close(rec.event, rec.digest, str(tmp_path))
    assert orjson.loads((tmp_path / "chat-pending.json").read_bytes())["digest"]["groups"][0]["count"] == 7


def test_without_a_state_dir_what_is_left_is_logged_group_by_group(caplog):
    flow = ChatFlow(rate_limit=20, repeat_interval=0, clock=FakeClock(), sink="dingtalk")
    rec = Recorder()
    flow.send([_node(f"Node{n}", n) for n in range(20)], rec.event)
    digest = Digest()
    _many_groups(digest, 30)
    flow.digest = digest
    with caplog.at_level(logging.WARNING):
        flow.close(rec.event, rec.digest)
    assert "not kept (no data directory)" in caplog.text
    assert all(f"BackOff x1 in ns team-{n:03d}" in caplog.text for n in range(30))


def test_an_unreadable_state_file_is_logged_and_left_alone(tmp_path, caplog):
    (tmp_path / "chat-pending.json").write_text("{not json")
    flow = ChatFlow(clock=FakeClock(), sink="wechat")
    with caplog.at_level(logging.ERROR):
        flow.restore(str(tmp_path))
    assert "cannot read the chat state" in caplog.text and (tmp_path / "chat-pending.json").exists()


# ---- time zone ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("env", "query", "shown"), [
    ("Asia/Shanghai", {}, "2026-04-14 17:30:00 CST"),  # kube-eventer's manifests set TZ=Asia/Shanghai
    (":Asia/Shanghai", {}, "2026-04-14 17:30:00 CST"),
    ("/usr/share/zoneinfo/Asia/Shanghai", {}, "2026-04-14 17:30:00 CST"),
    ("Asia/Shanghai", {"tz": "UTC"}, "2026-04-14 09:30:00 UTC"),  # tz= wins
    ("Europe/Berlin", {"tz": "Asia/Shanghai"}, "2026-04-14 17:30:00 CST"),
    (None, {}, "2026-04-14 09:30:00 UTC"),
])
def test_tz_defaults_to_the_TZ_environment_variable(monkeypatch, env, query, shown):
    if env is None:
        monkeypatch.delenv("TZ", raising=False)
    else:
        monkeypatch.setenv("TZ", env)
    assert f"Timestamp:{shown}" in ChatLayout("dingtalk", _opts(**query)).event(_event())


def test_a_TZ_that_is_no_zone_name_falls_back_to_utc_with_a_warning(monkeypatch, caplog):
    monkeypatch.setenv("TZ", "CST-8")
    with caplog.at_level(logging.WARNING):
        layout = ChatLayout("dingtalk", _opts())
    assert "Timestamp:2026-04-14 09:30:00 UTC" in layout.event(_event())
    assert "TZ=CST-8 is not an IANA time zone name" in caplog.text


def test_layouts_name_the_owning_workload_when_enriched():
    from eventrouter.event import FrozenDict, Owner

    enriched = replace(_event(), owner=Owner("Deployment", "default", "app", "apps/v1"),
                       labels=FrozenDict({"team": "payments"}))
    text = ChatLayout("dingtalk", _opts()).event(enriched)
    assert "Name:app-7\nOwner:Deployment default/app\nReason:BackOff" in text
    assert "Owner" not in ChatLayout("dingtalk", _opts()).event(_event())
    markdown = ChatLayout("dingtalk", _opts(msg_type="markdown")).event(enriched)
    assert "**Owner:** Deployment default/app" in markdown
    templated = ChatLayout("dingtalk", _opts(template="{{ owner.name }}/{{ labels.team }}")).event(enriched)
    assert templated == "app/payments"
