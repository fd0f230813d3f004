"""webhook chat=true: the shared chat flow for any chat receiver; the Slack and Feishu recipes through it."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

import orjson
import pytest

from eventrouter import SinkConfigError, SinkURL
from eventrouter.config import build_sink
from sinks.webhook import WebhookSink
from tests.chat_storm import NODE_AT, crashloop_storm, run_storm
from tests.helpers import make_event
from tests.servers.fake_dingtalk import FakeClock
from tests.servers.fake_feishu import FakeFeishu
from tests.servers.fake_webhook import FakeWebhook, Reply

TEMPLATES = Path(__file__).resolve().parents[2] / "docs" / "templates"


def build(flag: str, clock: FakeClock) -> WebhookSink:
    url = SinkURL.parse(flag)
    return WebhookSink(url, WebhookSink.parse_options(url), clock=clock, wall=lambda: 1_776_000_000.0 + clock())


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def hook():
    server = FakeWebhook().start()
    yield server
    server.stop()


# ---- flags ----------------------------------------------------------------------------------------
def test_chat_defaults():
    sink = build_sink("webhook:https://chat.example.com/hooks/abc?chat=true")
    assert isinstance(sink, WebhookSink) and sink.chat is not None
    assert sink.opts["level"] == ["Warning"] and sink.opts["batch_size"] == 100
    assert sink.chat.flow.rate_limit == 20 and sink.chat.flow.repeats.interval == 1800.0
    plain = build_sink("webhook:https://chat.example.com/hooks/abc")
    assert isinstance(plain, WebhookSink) and plain.chat is None and plain.opts["level"] == []


@pytest.mark.parametrize(("flag", "option", "words"), [
    ("?rate=100/min", "rate", "add chat=true"),
    ("?repeat_interval=5m", "repeat_interval", "add chat=true"),
    ("?chat=true&batch=true", "batch", "one message at a time"),
    ("?chat=true&rate=100", "rate", "N/min"),
    ("?chat=true&rate=1/min", "rate", "at least 2"),
    ("?chat=true&rate=5/s,6/s", "rate", "same period"),
    ("?chat=maybe", "chat", "true or false"),
])
def test_chat_flag_errors(flag, option, words):
    with pytest.raises(SinkConfigError) as info:
        build_sink("webhook:https://chat.example.com/hooks/abc" + flag)
    assert info.value.option == option and words in str(info.value)


# ---- the flow -------------------------------------------------------------------------------------
def test_repeats_are_held_back_and_reminded_with_the_count(hook, clock):
    sink = build(f"webhook:{hook.url()}?chat=true&repeat_interval=10m", clock)
    event = make_event(1)
    for count in range(1, 6):
        sink.send([replace(event, count=count)])
        clock.advance(30)
    clock.advance(600)
    sink.send([replace(event, count=9)])
    bodies = [r.json() for r in hook.requests]
    assert [(b["count"], b["reminder"], b["suppressed"]) for b in bodies] == [(1, False, 0), (9, True, 4)]


def test_burst_over_the_rate_gives_messages_then_one_digest_naming_the_groups(hook, clock):
    sink = build(f"webhook:{hook.url()}?chat=true&rate=10/min", clock)
    events = [make_event(n) for n in range(30)] + [
        replace(make_event(n, reason="FailedMount"), involved_object=replace(make_event(n).involved_object,
                                                                             namespace="db")) for n in range(30, 35)]
    sink.send(events)
    sink.tick()  # the digest gathers a few seconds
    clock.advance(30)
    sink.tick()
    bodies = [r.json() for r in hook.requests]
    assert len(bodies) == 6
    # the first of each reason leads, then a few more while half the budget is free (chat flow ranking)
    assert [b["involved_object"]["name"] for b in bodies[:5]] == ["app-0", "app-30", "app-1", "app-2", "app-31"]
    digest = bodies[5]
    assert digest["digest"] is True and digest["total"] == 30
    assert "BackOff x27 in ns default" in digest["text"] and "FailedMount x3 in ns db" in digest["text"]
    stats = sink.chat_stats()  # what /metrics and the shutdown summary show
    assert (stats.messages, stats.digests, stats.events_posted, stats.events_in_digests) == (6, 1, 5, 30)
    sink.close()
    sink.close()  # safe twice
    assert len(hook.requests) == 6


def test_a_burst_cap_folds_into_the_digest_and_sends_it_next_second(hook, clock):
    sink = build(f"webhook:{hook.url()}?chat=true&rate=100/min,5/s", clock)
    sink.send([make_event(n, reason=f"Reason{n}") for n in range(12)])  # 12 problems, each new
    assert len(hook.requests) == 5  # 5 a second
    sink.tick()
    assert len(hook.requests) == 5  # the second is full
    clock.advance(1)
    sink.tick()
    assert len(hook.requests) == 6 and hook.requests[5].json()["total"] == 7


def test_receiver_429_pauses_the_flow_for_retry_after(hook, clock):
    from eventrouter import PartialError

    hook.reply(Reply(429, b"slow down", {"Retry-After": "7"}))
    sink = build(f"webhook:{hook.url()}?chat=true", clock)
    with pytest.raises(PartialError) as info:
        sink.send([make_event(1), make_event(2)])
    assert info.value.retry_after == 7.0 and len(info.value.retry) == 2
    assert sink.chat is not None and sink.chat.flow.rate.room(clock()) == 0
    clock.advance(7)
    sink.send(info.value.retry)
    assert [r.json()["involved_object"]["name"] for r in hook.requests[1:]] == ["app-1", "app-2"]


def test_template_gets_reminder_and_digest_variables(hook, clock):
    template = quote('{"t": "{{ reason }} {{ count }}{{ \' reminder\' if reminder }}{{ \' digest:\' ~ digest_total '
                     'if digest }}"}', safe="")
    sink = build(f"webhook:{hook.url()}?chat=true&rate=3/min&template={template}", clock)
    sink.send([make_event(n) for n in range(5)])
    clock.advance(60)
    sink.tick()
    assert [r.json()["t"] for r in hook.requests] == ["BackOff 1", "BackOff 1", "Digest 3 digest:3"]


def test_close_posts_the_pending_digest(hook, clock):
    sink = build(f"webhook:{hook.url()}?chat=true&rate=2/min", clock)
    sink.send([make_event(n) for n in range(4)])
    clock.advance(60)
    sink.close()
    assert [r.json().get("total") for r in hook.requests] == [None, 3]


# ---- the recipes against a fake Feishu and the storm ----------------------------------------------
def feishu_flag(server: FakeFeishu) -> str:
    return (f"webhook:{server.url}?chat=true&rate=100/min,5/s&success_field=code:0"
            f"&template_file={TEMPLATES / 'feishu.json.j2'}")


def test_feishu_recipe_storm_stays_within_feishus_limits_and_names_everything(clock):
    """Issue 16 defect 7: 300 pods x 5 count bumps through the Feishu recipe gave 1,500 requests."""
    storm = crashloop_storm()
    with FakeFeishu(clock=clock) as server:
        sink = build(feishu_flag(server), clock)
        run_storm(storm, sink, clock)
    requests = server.requests
    assert all(r.accepted for r in requests), [r.answer.body for r in requests if not r.accepted][:3]
    times = [r.at for r in requests]
    assert max(sum(1 for t in times if s <= t < s + 60) for s in times) <= 100
    assert max(sum(1 for t in times if s <= t < s + 1) for s in times) <= 5
    cards = [r.body["card"] for r in requests]
    singles = [c for c in cards if c["header"]["template"] != "orange"]
    digests = [c for c in cards if c["header"]["template"] == "orange"]
    folded = [int(re.match(r"(\d+) more", c["header"]["title"]["content"]).group(1)) for c in digests]
    # every problem (300 pods + the node) reached the chat once, alone or in a digest; repeats held back
    assert len(singles) + sum(folded) == storm.problems
    assert len(requests) < 40  # not 1,500
    # every group a digest folds is named in it, with its count
    for card in digests:
        text = card["elements"][0]["text"]["content"]
        assert "more in other groups" not in text
        total = int(re.match(r"(\d+) more", card["header"]["title"]["content"]).group(1))
        assert sum(int(n) for n in re.findall(r"^- \S+ x(\d+) ", text, re.MULTILINE)) == total
    # the node problem is in one of the first 3 messages after it happened
    after = [r for r in requests if r.at >= 1000.0 + NODE_AT]
    assert any("NodeNotReady" in orjson.dumps(r.body).decode() for r in after[:3])


def test_slack_recipe_digest_and_reminder_render(hook, clock):
    sink = build(f"webhook:{hook.url()}?chat=true&rate=3/min,1/s&repeat_interval=1m"
                 f"&template_file={TEMPLATES / 'slack.json.j2'}", clock)
    sink.send([make_event(n) for n in range(4)])  # one a second: the rest waits in a digest
    clock.advance(5)  # which gathers 5 s
    sink.tick()
    clock.advance(60)
    sink.send([replace(make_event(0), count=7)])
    bodies = [r.json() for r in hook.requests]
    assert len(bodies) == 3
    assert bodies[0]["text"].startswith(":warning: Warning: BackOff on Pod default/app-0")
    assert bodies[1]["text"].startswith(":package: 3 more Warning events")
    assert "BackOff x3 in ns default" in bodies[1]["attachments"][0]["blocks"][0]["text"]["text"]
    fields = bodies[2]["attachments"][0]["blocks"][1]["fields"]
    assert fields[2]["text"] == "*Count:*\n7 (reminder: still happening; 0 updates held back)"


def test_a_digest_the_rate_does_not_allow_at_shutdown_is_posted_after_the_restart(hook, clock, tmp_path):
    flag = f"webhook:{hook.url()}?chat=true&rate=2/min"
    sink = build(flag, clock)
    sink.state_dir = str(tmp_path)
    sink.open()
    sink.send([make_event(0), make_event(1)])
    clock.advance(5)
    sink.tick()  # the event and a digest: the minute's two messages are spent
    sink.send([make_event(n) for n in range(2, 5)])
    sink.close()  # the new digest is kept, not lost
    assert len(hook.requests) == 2 and (tmp_path / "chat-pending.json").exists()
    clock.advance(60)
    again = build(flag, clock)
    again.state_dir = str(tmp_path)
    again.open()
    again.tick()
    digest = hook.requests[-1].json()
    assert len(hook.requests) == 3 and digest["digest"] is True and digest["total"] == 3
    assert "BackOff x3 in ns default" in digest["text"]
