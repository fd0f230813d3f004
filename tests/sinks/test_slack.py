"""Slack sink: flags, redaction, answer classification, webhook and bot modes against a fake Slack, the storm."""

from __future__ import annotations

import re
from dataclasses import replace

import httpx
import orjson
import pytest

from eventrouter import PartialError, PermanentError, RateLimitedError, RetryableError, SinkConfigError, SinkURL
from eventrouter.cli import main as cli_main
from eventrouter.config import build_sink
from sinks.slack import SlackAnswers, SlackSink
from tests.chat_storm import NODE_AT, crashloop_storm, run_storm
from tests.helpers import make_event
from tests.servers.fake_dingtalk import FakeClock
from tests.servers.fake_slack import HOOK_PATH, FakeSlack

HOOK = f"https://hooks.slack.com{HOOK_PATH}"
BOT = "xoxb-111-222-SECRETbot"


def build(flag: str, **kwargs) -> SlackSink:  # type: ignore[no-untyped-def]
    url = SinkURL.parse(flag)
    return SlackSink(url, SlackSink.parse_options(url), **kwargs)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# ---- flags ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("flag", "endpoint", "bot"), [
    (f"slack:{HOOK}", HOOK, False),
    (f"slack:{HOOK}?label=prod&mention=here,S0ONCALL", HOOK, False),
    (f"slack:?token={BOT}&channel=C0ALERTS", "https://slack.com/api/chat.postMessage", True),
    (f"slack:http://127.0.0.1:9999?token={BOT}&channel=C0ALERTS", "http://127.0.0.1:9999/api/chat.postMessage", True),
    (f"slack:http://hooks.slack.com{HOOK_PATH}", HOOK, False),  # always https
])
def test_url_forms(flag, endpoint, bot):
    sink = build_sink(flag)
    assert isinstance(sink, SlackSink) and sink.endpoint == endpoint and sink.bot is bot
    assert sink.opts["level"] == ["Warning"]


@pytest.mark.parametrize(("flag", "option", "words"), [
    ("slack:", None, "incoming webhook URL"),
    (f"slack:?token={BOT}", "channel", "channel ID"),
    (f"slack:{HOOK}?channel=C1", "channel", "bot mode"),
    (f"slack:{HOOK}?msg_type=markdown", "msg_type", "blocks, text"),
    (f"slack:{HOOK}?webhook=x", "webhook", "allowed options"),
])
def test_flag_errors(flag, option, words):
    with pytest.raises(SinkConfigError) as info:
        build_sink(flag)
    assert info.value.option == option and words in str(info.value) and BOT not in str(info.value)


def test_redaction():
    for flag in (f"slack:{HOOK}?label=prod", f"slack:?token={BOT}&channel=C0ALERTS"):
        sink = build_sink(flag)
        for text in (sink.describe(), repr(sink), str(sink.opts)):
            assert BOT not in text and "aWNvbWluZy13ZWJob29rLXRva2Vu" not in text
    assert build_sink(f"slack:{HOOK}?label=prod").describe() == "slack:https://hooks.slack.com/services/***?label=prod"


# ---- classification -------------------------------------------------------------------------------
@pytest.mark.parametrize(("response", "outcome", "words"), [
    (httpx.Response(200, text="ok"), None, ""),
    (httpx.Response(200, json={"ok": True, "ts": "1.2"}), None, ""),
    (httpx.Response(429, text="rate_limited", headers={"Retry-After": "3"}), RateLimitedError, "rate_limited"),
    (httpx.Response(429, json={"ok": False, "error": "ratelimited"}), RateLimitedError, "ratelimited"),
    (httpx.Response(400, text="invalid_payload"), PermanentError, "not valid JSON"),
    (httpx.Response(400, text="no_text"), PermanentError, "no text"),
    (httpx.Response(404, text="no_service"), PermanentError, "revoked"),
    (httpx.Response(404, text="channel_not_found"), PermanentError, "C0123ABC"),
    (httpx.Response(410, text="channel_is_archived"), PermanentError, "archived"),
    (httpx.Response(403, text="action_prohibited"), PermanentError, "admin"),
    (httpx.Response(500, text="rollup_error"), RetryableError, "rollup_error"),
    (httpx.Response(503, text=""), RetryableError, "503"),
    (httpx.Response(200, json={"ok": False, "error": "not_in_channel"}), PermanentError, "/invite"),
    (httpx.Response(200, json={"ok": False, "error": "invalid_auth"}), PermanentError, "token"),
    (httpx.Response(200, json={"ok": False, "error": "internal_error"}), RetryableError, "internal_error"),
])
def test_classify(response, outcome, words):
    answers = SlackAnswers("slack")
    if outcome is None:
        answers.classify(response)
        return
    with pytest.raises(outcome) as info:
        answers.classify(response)
    assert words in str(info.value)
    if isinstance(info.value, RateLimitedError) and "Retry-After" in response.headers:
        assert info.value.retry_after == 3.0


# ---- webhook mode ---------------------------------------------------------------------------------
def test_webhook_block_kit_message(clock):
    with FakeSlack(clock=clock) as slack:
        sink = build(f"slack:{slack.hook_url}?label=prod&mention=here,S0ONCALL,U042", clock=clock)
        sink.send([make_event(1, cluster="eu-1", count=4, message="OOM <killed> & restarted")])
    [request] = slack.accepted
    body = request.body
    assert body["text"] == ":warning: Warning: BackOff on Pod default/app-1"
    header, fields, message, context, mentions = body["blocks"]
    assert header["text"]["text"] == "BackOff on Pod default/app-1"
    assert [f["text"] for f in fields["fields"]] == [
        "*Type:*\n:warning: Warning", "*Object:*\nPod `default/app-1`", "*Count:*\n4",
        "*Last seen:*\n2026-04-14 09:30:01 UTC", "*First seen:*\n2026-04-14 09:30:01 UTC", "*Host:*\nnode-1",
        "*Cluster:*\neu-1"]
    assert message["text"]["text"] == "OOM &lt;killed&gt; &amp; restarted"
    assert context["elements"][0]["text"] == "prod | kubelet"
    assert mentions["text"]["text"] == "<!here> <!subteam^S0ONCALL> <@U042>"


def test_one_message_a_second_the_rest_in_a_digest(clock):
    with FakeSlack(clock=clock) as slack:
        sink = build(f"slack:{slack.hook_url}", clock=clock)
        sink.send([make_event(n) for n in range(5)])
        sink.tick()
        clock.advance(5)  # a digest gathers a few seconds
        sink.tick()
    assert all(r.accepted for r in slack.requests)
    first, digest = (r.body for r in slack.requests)
    assert first["blocks"][0]["text"]["text"] == "BackOff on Pod default/app-0"
    assert digest["text"].startswith("4 more Warning events")
    assert "BackOff x4 in ns default" in digest["blocks"][0]["text"]["text"]


def test_archived_channel_is_permanent_and_the_url_masked(clock):
    with FakeSlack(clock=clock) as slack:
        slack.archived = True
        sink = build(f"slack:{slack.hook_url}", clock=clock)
        with pytest.raises(PermanentError) as info:
            sink.send([make_event(1)])
    assert "channel_is_archived" in str(info.value) and "aWNvbWluZy13ZWJob29rLXRva2Vu" not in str(info.value)


def test_429_pauses_for_retry_after(clock):
    from tests.servers._chat_fake import Answer

    with FakeSlack(clock=clock) as slack:
        slack.script.append(Answer.text(429, "rate_limited", **{"Retry-After": "4"}))
        sink = build(f"slack:{slack.hook_url}", clock=clock)
        with pytest.raises(PartialError) as info:
            sink.send([make_event(1)])
        assert info.value.retry_after == 4.0
        clock.advance(4)
        sink.send(info.value.retry)
    assert len(slack.accepted) == 1


# ---- bot mode -------------------------------------------------------------------------------------
def test_bot_reminders_are_thread_replies(clock):
    with FakeSlack(clock=clock) as slack:
        sink = build(f"slack:{slack.base}?token={BOT}&channel=C0ALERTS&repeat_interval=10m", clock=clock)
        sink.send([make_event(1)])
        clock.advance(5)
        sink.send([make_event(2)])
        for count in (2, 3):
            clock.advance(60)
            sink.send([replace(make_event(1), count=count)])
        clock.advance(600)
        sink.send([replace(make_event(1), count=9)])
    first, other, reminder = (r.body for r in slack.accepted)
    assert first["channel"] == "C0ALERTS" and "thread_ts" not in first and "thread_ts" not in other
    parent = slack.accepted[0].answer
    assert reminder["thread_ts"] == orjson.loads(parent.body)["ts"]
    assert "9 (reminder: still happening; 2 updates held back)" in orjson.dumps(reminder).decode()
    assert slack.requests[0].headers["authorization"] == f"Bearer {BOT}"


@pytest.mark.parametrize(("flag_extra", "error"), [("&channel=C0NOPE", "channel_not_found"),
                                                  ("&channel=C0ALERTS", "not_in_channel")])
def test_bot_errors_are_permanent_with_hints(clock, flag_extra, error):
    with FakeSlack(clock=clock, member_of=()) as slack:
        sink = build(f"slack:{slack.base}?token={BOT}{flag_extra}", clock=clock)
        with pytest.raises(PermanentError) as info:
            sink.send([make_event(1)])
    assert error in str(info.value) and BOT not in str(info.value)


def test_bot_wrong_token(clock):
    with FakeSlack(clock=clock) as slack:
        sink = build(f"slack:{slack.base}?token=xoxb-wrong-SECRET&channel=C0ALERTS", clock=clock)
        with pytest.raises(PermanentError) as info:
            sink.send([make_event(1)])
    assert "invalid_auth" in str(info.value) and "xoxb-wrong-SECRET" not in str(info.value)


# ---- the storm ------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["webhook", "bot"])
def test_storm_within_slacks_rate_node_first_everything_named(clock, mode):
    storm = crashloop_storm()
    with FakeSlack(clock=clock) as slack:
        flag = f"slack:{slack.hook_url}" if mode == "webhook" else f"slack:{slack.base}?token={BOT}&channel=C0ALERTS"
        run_storm(storm, build(flag, clock=clock), clock)
    requests = slack.requests
    assert all(r.accepted for r in requests), [r.answer.body for r in requests if not r.accepted][:3]
    times = [r.at for r in requests]
    assert max(sum(1 for t in times if s <= t < s + 60) for s in times) <= 20
    assert max(sum(1 for t in times if s <= t < s + 1) for s in times) <= 1  # Slack: one a second
    digests = [r.body for r in requests if re.match(r"\d+ more", r.body["text"])]
    totals = [int(re.match(r"(\d+) more", d["text"]).group(1)) for d in digests]
    assert len(requests) - len(digests) + sum(totals) == storm.problems
    for digest, total in zip(digests, totals, strict=True):
        text = "".join(b["text"]["text"] for b in digest["blocks"])
        assert "more in other groups" not in text
        assert sum(int(n) for n in re.findall(r"^- \S+ x(\d+) ", text, re.MULTILINE)) == total
    after = [r for r in requests if r.at >= 1000.0 + NODE_AT]
    assert any("NodeNotReady" in orjson.dumps(r.body).decode() for r in after[:3])


def test_check_send_test(capsys):
    with FakeSlack() as slack:
        status = cli_main(["check", "--sink", f"slack:{slack.hook_url}", "--send-test"])
        out = capsys.readouterr().out
        assert status == 0, out
        assert "send-test: delivered" in out and "aWNvbWluZy13ZWJob29rLXRva2Vu" not in out
        slack.archived = True
        status = cli_main(["check", "--sink", f"slack:{slack.hook_url}", "--send-test"])
        out = capsys.readouterr().out
    assert status == 1 and "channel_is_archived" in out
