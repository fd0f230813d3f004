"""Feishu/Lark sink: flags, redaction, code classification, signing, and the storm against a fake Feishu bot."""

from __future__ import annotations

import re
from dataclasses import replace

import httpx
import orjson
import pytest

from eventrouter import PartialError, PermanentError, RateLimitedError, RetryableError, SinkConfigError, SinkURL
from eventrouter.cli import main as cli_main
from eventrouter.config import build_sink
from sinks.feishu import ERRORS, FeishuSink, sign
from tests.chat_storm import NODE_AT, crashloop_storm, run_storm
from tests.helpers import make_event
from tests.servers.fake_dingtalk import FakeClock
from tests.servers.fake_feishu import FakeFeishu, feishu_sign

TOKEN = "7f1c2d3e-0000-4abc-9def-1234567890ab"
SECRET = "fs-SECRET-signing-key"
HOOK = f"https://open.feishu.cn/open-apis/bot/v2/hook/{TOKEN}"


def build(flag: str, **kwargs) -> FeishuSink:  # type: ignore[no-untyped-def]
    url = SinkURL.parse(flag)
    return FeishuSink(url, FeishuSink.parse_options(url), **kwargs)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# ---- flags ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("flag", "endpoint"), [
    (f"feishu:{HOOK}", HOOK),
    (f"feishu:https://open.larksuite.com/open-apis/bot/v2/hook/{TOKEN}",
     f"https://open.larksuite.com/open-apis/bot/v2/hook/{TOKEN}"),
    (f"feishu:?token={TOKEN}", HOOK),
    (f"feishu:?token={TOKEN}&domain=lark", f"https://open.larksuite.com/open-apis/bot/v2/hook/{TOKEN}"),
    (f"feishu:http://open.feishu.cn/open-apis/bot/v2/hook/{TOKEN}", HOOK),  # always https
    (f"feishu:http://127.0.0.1:8080/open-apis/bot/v2/hook/{TOKEN}",
     f"http://127.0.0.1:8080/open-apis/bot/v2/hook/{TOKEN}"),
])
def test_url_forms(flag, endpoint):
    sink = build_sink(flag)
    assert isinstance(sink, FeishuSink) and sink.endpoint == endpoint
    assert sink.opts["level"] == ["Warning"] and sink.opts["msg_type"] == "card"


@pytest.mark.parametrize(("flag", "option", "words"), [
    ("feishu:", "token", "webhook URL or token="),
    ("feishu:https://open.feishu.cn/open-apis/bot/v2/other", None, "/open-apis/bot/v2/hook/TOKEN"),
    (f"feishu:{HOOK}?token=x", "token", "not both"),
    (f"feishu:{HOOK}?rate_limit=200", "rate_limit", "at most 100"),
    (f"feishu:{HOOK}?domain=larksuite", "domain", "feishu, lark"),
    (f"feishu:{HOOK}?msg_type=markdown", "msg_type", "card, text"),
    (f"feishu:{HOOK}?sign=x", "sign", "allowed options"),
])
def test_flag_errors(flag, option, words):
    with pytest.raises(SinkConfigError) as info:
        build_sink(flag)
    assert info.value.option == option and words in str(info.value) and TOKEN not in str(info.value)


def test_redaction():
    sink = build_sink(f"feishu:{HOOK}?secret={SECRET}&label=prod")
    for text in (sink.describe(), repr(sink), str(sink.opts)):
        assert TOKEN not in text and SECRET not in text
    assert sink.describe() == "feishu:https://open.feishu.cn/open-apis/bot/v2/hook/***?secret=***&label=prod"


# ---- classification -------------------------------------------------------------------------------
def answer(status: int, code: int, msg: str) -> httpx.Response:
    return httpx.Response(status, json={"code": code, "data": {}, "msg": msg})


@pytest.mark.parametrize(("response", "outcome", "words"), [
    (httpx.Response(200, json={"StatusCode": 0, "StatusMessage": "success", "code": 0, "data": {}, "msg": "success"}),
     None, ""),
    (answer(200, 11232, "frequency limited psm[lark.oapi.app_platform_runtime]appID[-1]"), RateLimitedError,
     "11232"),
    (answer(200, 19021, "sign match fail or timestamp is not within one hour from current time"), PermanentError,
     "check secret="),
    (answer(200, 19024, "Key Words Not Found"), PermanentError, "label="),
    (answer(200, 19022, "Ip Not Allowed"), PermanentError, "egress"),
    (answer(200, 19001, "param invalid: incoming webhook access token invalid"), PermanentError, "does not exist"),
    (answer(400, 9499, "Bad Request"), PermanentError, "HTTP 400"),
    (httpx.Response(429, headers={"Retry-After": "5"}), RateLimitedError, "429"),
    (httpx.Response(503, text="busy"), RetryableError, "503"),
    (httpx.Response(200, text="<html>"), RetryableError, "not JSON"),
])
def test_classify(response, outcome, words):
    if outcome is None:
        assert ERRORS.classify(response)["code"] == 0
        return
    with pytest.raises(outcome) as info:
        ERRORS.classify(response)
    assert words in str(info.value)


def test_signature_matches_feishus_definition():
    # the key is "timestamp\nsecret" and the message is empty (DingTalk's is the other way round)
    assert sign(SECRET, 1599360473) == feishu_sign(SECRET, 1599360473)
    assert sign(SECRET, 1599360473) != sign(SECRET, 1599360474)


# ---- against the fake bot -------------------------------------------------------------------------
def test_signed_card_with_mentions_and_labels(clock):
    with FakeFeishu(TOKEN, secret=SECRET, keywords=("k8s-alert",), clock=clock) as server:
        sink = build(f"feishu:{server.url}?secret={SECRET}&label=k8s-alert&at_all=true", clock=clock)
        sink.send([make_event(1, cluster="prod", count=3)])
    [request] = server.requests
    assert request.accepted and request.body["sign"] == feishu_sign(SECRET, int(request.body["timestamp"]))
    card = request.body["card"]
    assert card["header"] == {"template": "red",
                              "title": {"tag": "plain_text", "content": "Warning: BackOff on Pod default/app-1"}}
    texts = orjson.dumps(card).decode()
    for part in ("k8s-alert", "**Count**\\n3", "**Last seen**\\n2026-04-14 09:30:01 UTC", "**Host**\\nnode-1",
                 "**Cluster**\\nprod", "Back-off restarting failed container app in pod app-1", "<at id=all></at>"):
        assert part in texts, part


def test_text_mode(clock):
    with FakeFeishu(TOKEN, clock=clock) as server:
        sink = build(f"feishu:{server.url}?msg_type=text&at_user_ids=ou_1", clock=clock)
        sink.send([make_event(2)])
    text = server.accepted[0].body["content"]["text"]
    assert text.startswith("Level:Warning\nKind:Pod\nNamespace:default\nName:app-2\n")
    assert text.endswith(' <at user_id="ou_1"></at>')


@pytest.mark.parametrize(("wall_offset", "secret", "code"), [(-7200.0, SECRET, 19021), (0.0, "wrong", 19021)])
def test_bad_signature_is_permanent_and_masked(clock, wall_offset, secret, code):
    import time

    with FakeFeishu(TOKEN, secret=SECRET, clock=clock) as server:
        sink = build(f"feishu:{server.url}?secret={secret}", clock=clock, wall=lambda: time.time() + wall_offset)
        with pytest.raises(PermanentError) as info:
            sink.send([make_event(1)])
    assert str(code) in str(info.value) and TOKEN not in str(info.value) and secret not in str(info.value)


def test_frequency_limit_pauses_and_retries_the_rest(clock):
    with FakeFeishu(TOKEN, clock=clock) as server:
        server.limits.record(clock())  # another poster used the bot: 5 in this second
        for _ in range(4):
            server.limits.record(clock())
        sink = build(f"feishu:{server.url}", clock=clock)
        with pytest.raises(PartialError) as info:
            sink.send([make_event(1), make_event(2)])
        assert len(info.value.retry) == 2 and (info.value.retry_after or 0) >= 60
        clock.advance(60)
        sink.send(info.value.retry)
    assert [r.body["card"]["header"]["title"]["content"][-5:] for r in server.accepted] == ["app-1", "app-2"]


def test_reminder_shows_the_count_and_what_was_held_back(clock):
    with FakeFeishu(TOKEN, clock=clock) as server:
        sink = build(f"feishu:{server.url}?repeat_interval=10m", clock=clock)
        for count in range(1, 5):
            sink.send([replace(make_event(1), count=count)])
            clock.advance(60)
        clock.advance(600)
        sink.send([replace(make_event(1), count=9)])
    cards = [orjson.dumps(r.body).decode() for r in server.accepted]
    assert len(cards) == 2 and "9 (reminder: still happening; 3 updates held back)" in cards[1]


def test_storm_within_feishus_limits_node_first_everything_named(clock):
    storm = crashloop_storm()
    with FakeFeishu(TOKEN, clock=clock) as server:
        sink = build(f"feishu:{server.url}", clock=clock)
        run_storm(storm, sink, clock)
    requests = server.requests
    assert all(r.accepted for r in requests), [r.answer.body for r in requests if not r.accepted][:3]
    times = [r.at for r in requests]
    assert max(sum(1 for t in times if s <= t < s + 60) for s in times) <= 20  # rate_limit
    assert max(sum(1 for t in times if s <= t < s + 1) for s in times) <= 5  # Feishu's 5 a second
    cards = [r.body["card"] for r in requests]
    digests = [c for c in cards if c["header"]["template"] == "orange"]
    singles = len(cards) - len(digests)
    totals = [int(re.match(r"(\d+) more", c["header"]["title"]["content"]).group(1)) for c in digests]
    assert singles + sum(totals) == storm.problems  # nothing lost, repeats held back
    for card, total in zip(digests, totals, strict=True):
        text = card["elements"][0]["text"]["content"]
        assert "more in other groups" not in text
        assert sum(int(n) for n in re.findall(r"^- \S+ x(\d+) ", text, re.MULTILINE)) == total
    after = [r for r in requests if r.at >= 1000.0 + NODE_AT]
    assert any("NodeNotReady" in orjson.dumps(r.body).decode() for r in after[:3])


def test_check_send_test(capsys):
    with FakeFeishu(TOKEN, secret=SECRET) as server:
        status = cli_main(["check", "--sink", f"feishu:{server.url}?secret={SECRET}", "--send-test"])
        out = capsys.readouterr().out
        assert status == 0, out
        assert "send-test: delivered" in out and TOKEN not in out and SECRET not in out
        status = cli_main(["check", "--sink", f"feishu:{server.url}?secret=wrong-secret", "--send-test"])
        out = capsys.readouterr().out
    assert status == 1 and "19021" in out and TOKEN not in out
