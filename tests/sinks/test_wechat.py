"""WeChat (WeCom) sink: flags, redaction, errcode classification, app messages and the group robot."""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import httpx
import orjson
import pytest

from eventrouter import PartialError, PermanentError, RateLimitedError, RetryableError, SinkConfigError, SinkURL
from eventrouter.cli import main as cli_main
from eventrouter.config import build_sink
from eventrouter.router import Router, SinkRunner
from sinks.wechat import ERRORS, WeChatSink
from tests.helpers import make_event
from tests.servers.fake_wecom import FakeClock, FakeWeCom

CORP = "ww0123456789"
SECRET = "CORP-secret-0123456789abcdef"
KEY = "ROBOT-key-0123456789abcdef"
KE = f"wechat:?corp_id={CORP}&corp_secret={SECRET}&agent_id=1000002"
ROBOT = f"wechat:https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={KEY}"


def build(flag: str, **kwargs) -> WeChatSink:  # type: ignore[no-untyped-def]
    url = SinkURL.parse(flag)
    return WeChatSink(url, WeChatSink.parse_options(url), **kwargs)


# ---- flags ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("flag", "expected"), [
    # kube-eventer's documented form
    (KE, {"mode": "app", "to_user": [], "level": ["Warning"], "agent_id": 1000002, "msg_type": "text",
          "recipients": {"touser": "@all"}}),
    (KE + "&to_user=", {"recipients": {"touser": "@all"}}),  # kube-eventer: an empty to_user is everyone
    (KE + "&to_user=alice,bob&label=prod&level=Normal&namespaces=default&kinds=Pod",
     {"to_user": ["alice", "bob"], "label": ["prod"], "level": ["Normal"], "namespaces": ["default"],
      "kinds": ["Pod"]}),
    ("wechat:https://qyapi.weixin.qq.com?" + KE.split("?")[1], {"mode": "app"}),  # the host is ignored
    # ours
    (KE + "&to_party=2,3&to_tag=7&msg_type=markdown",
     {"to_party": ["2", "3"], "to_tag": ["7"], "recipients": {"toparty": "2|3", "totag": "7"}}),  # not @all
    (KE + "&to_user=&to_tag=7", {"recipients": {"totag": "7"}}),
    (KE + "&api_base=http://127.0.0.1:9000", {"api_base": "http://127.0.0.1:9000"}),
    (ROBOT, {"mode": "robot", "endpoint": "https://qyapi.weixin.qq.com/cgi-bin/webhook/send"}),
    (ROBOT + "&mentioned_list=u1,@all&mentioned_mobile_list=138",
     {"mentioned_list": ["u1", "@all"], "mentioned_mobile_list": ["138"]}),
    (f"wechat:?key={KEY}", {"mode": "robot", "endpoint": "https://qyapi.weixin.qq.com/cgi-bin/webhook/send"}),
    (f"wechat:http://127.0.0.1:8080/cgi-bin/webhook/send?key={KEY}",
     {"endpoint": "http://127.0.0.1:8080/cgi-bin/webhook/send"}),
    (ROBOT + "&repeat_interval=0&rate_limit=10&tz=Asia/Shanghai", {"repeat_interval": 0.0, "rate_limit": 10}),
])
def test_flags(flag, expected):
    sink = build_sink(flag)
    assert isinstance(sink, WeChatSink)
    for key, value in expected.items():
        if key in ("mode", "endpoint", "api_base"):
            assert getattr(sink, key) == value
        elif key == "recipients":
            assert sink.recipients() == value
        else:
            assert sink.opts[key] == value, key


@pytest.mark.parametrize(("flag", "option", "words"), [
    (f"wechat:?corp_secret={SECRET}&agent_id=1", "corp_id", "required"),
    (f"wechat:?corp_id={CORP}&agent_id=1", "corp_secret", "required"),
    (f"wechat:?corp_id={CORP}&corp_secret={SECRET}", "agent_id", "required"),
    (KE.replace("1000002", "abc"), "agent_id", "integer"),
    ("wechat:https://qyapi.weixin.qq.com/cgi-bin/webhook/send", "key", "webhook key"),
    (ROBOT + "&to_user=alice", "to_user", "application messages"),
    (KE + "&mentioned_list=u1", "mentioned_list", "group robot"),
    (ROBOT + "&msg_type=markdown&mentioned_list=u1,@all", "mentioned_list", "msg_type=text only"),
    (KE + "&msg_type=news", "msg_type", "text, markdown"),
    (KE + "&api_base=http://wecom.example.com", "api_base", "https"),
    (KE + "&corpsecret=x", "corpsecret", "allowed options"),
])
def test_flag_errors_name_the_option(flag, option, words):
    with pytest.raises(SinkConfigError) as info:
        build_sink(flag)
    text = str(info.value)
    assert info.value.option == option and "wechat" in text and words in text
    assert SECRET not in text and KEY not in text


@pytest.mark.parametrize("flag", [KE + "&to_user=a", ROBOT])
def test_redaction_round_trip(flag):
    sink = build_sink(flag)
    for text in (sink.describe(), repr(sink), str(sink.opts)):
        assert SECRET not in text and KEY not in text and "***" in text


# ---- classification -------------------------------------------------------------------------------
def _body(code: int, msg: str) -> bytes:
    return orjson.dumps({"errcode": code, "errmsg": msg})


@pytest.mark.parametrize(("status", "body", "outcome"), [
    (200, _body(0, "ok"), None),
    (200, _body(45009, "api freq out of limit"), RateLimitedError),
    (200, _body(-1, "system busy"), RetryableError),
    (200, _body(45033, "api concurrent out of limit"), RetryableError),
    (200, _body(81013, "user & party & tag all invalid"), PermanentError),
    (200, _body(93000, "invalid webhook url"), PermanentError),
    (200, _body(40001, "invalid credential"), PermanentError),
    (200, _body(40013, "invalid corpid"), PermanentError),
    (200, _body(40058, "markdown.content exceed max length 4096"), PermanentError),
    (200, b"not json", RetryableError),
    (502, b"bad gateway", RetryableError),
    (404, b"", PermanentError),
])
def test_classify(status, body, outcome):
    if outcome is None:
        assert ERRORS.classify(httpx.Response(status, content=body))["errcode"] == 0
        return
    with pytest.raises(outcome) as info:
        ERRORS.classify(httpx.Response(status, content=body))
    if outcome is RateLimitedError:
        assert info.value.retry_after == 60


# ---- application messages ------------------------------------------------------------------------
@pytest.fixture
def clock():
    return FakeClock()


def app_flag(server: FakeWeCom, extra: str = "") -> str:
    return (f"wechat:?corp_id={server.corp_id}&corp_secret={server.corp_secret}&agent_id={server.agent_id}"
            f"&api_base={server.base}{extra}")


def test_app_message_to_several_users_in_one_request_with_cached_token(clock):
    with FakeWeCom(clock=clock) as server:
        sink = build(app_flag(server, "&to_user=alice,bob|carol&to_party=2&label=prod"), clock=clock)
        sink.open()
        sink.send([make_event(1), make_event(2)])
        sink.close()
    assert server.token_calls() == 1
    bodies = server.messages("/cgi-bin/message/send")
    assert len(bodies) == 2
    assert {k: v for k, v in bodies[0].items() if k not in ("text", "enable_duplicate_check",
                                                             "duplicate_check_interval")} == {
        "touser": "alice|bob|carol", "toparty": "2", "msgtype": "text", "agentid": 1000002, "safe": 0}
    assert bodies[0]["text"]["content"].startswith("prod\nLevel:Warning\nKind:Pod\nNamespace:default\nName:app-1\n")


@pytest.mark.parametrize(("extra", "audience"), [
    ("&to_party=2&to_tag=7", {"toparty": "2", "totag": "7"}),  # the documented example: not everyone
    ("&to_user=&to_party=2", {"toparty": "2"}),
    ("&to_user=", {"touser": "@all"}),  # kube-eventer's empty to_user= is everyone
    ("", {"touser": "@all"}),
    ("&to_user=alice&to_tag=7", {"touser": "alice", "totag": "7"}),
])
def test_app_message_reaches_exactly_the_recipients_given(clock, extra, audience):
    with FakeWeCom(clock=clock) as server:
        sink = build(app_flag(server, extra), clock=clock)
        sink.open()
        sink.send([make_event(1)])
        sink.close()
    [body] = server.messages("/cgi-bin/message/send")
    assert FakeWeCom.audience(body) == audience


def test_expired_token_is_refreshed_and_the_send_retried_at_once(clock):
    with FakeWeCom(clock=clock) as server:
        sink = build(app_flag(server), clock=clock)
        sink.send([make_event(1)])
        server.expire_tokens()
        sink.send([make_event(2)])  # 42001, new token, same message again: no error reaches the router
        server.script.append({"errcode": 40014, "errmsg": "invalid access_token"})
        sink.send([make_event(3)])
    assert server.token_calls() == 3
    assert [r.errcode for r in server.requests if r.path == "/cgi-bin/message/send"] == [0, 42001, 0, 40014, 0]
    assert [c.split("Name:")[1].split("\n")[0] for c in server.contents()] == ["app-1", "app-2", "app-3"]


def test_token_is_fetched_again_when_it_runs_out(clock):
    with FakeWeCom(clock=clock, expires_in=7200) as server:
        sink = build(app_flag(server, "&repeat_interval=0"), clock=clock)
        sink.send([make_event(1)])
        clock.advance(3600)
        sink.send([make_event(2)])
        assert server.token_calls() == 1
        clock.advance(3600)
        sink.send([make_event(3)])
    assert server.token_calls() == 2 and len(server.messages()) == 3


def test_wrong_secret_fails_open_with_the_secret_masked(clock):
    with FakeWeCom(clock=clock, corp_secret="the-right-secret") as server:
        sink = build(app_flag(server).replace("the-right-secret", SECRET), clock=clock)
        with pytest.raises(PermanentError) as info:
            sink.open()
    assert "40001" in str(info.value) and "corp_secret" in str(info.value) and SECRET not in str(info.value)


def test_all_recipients_invalid_is_permanent_and_some_invalid_is_logged(clock, caplog):
    with FakeWeCom(clock=clock, users=frozenset({"alice"})) as server:
        sink = build(app_flag(server, "&to_user=nobody"), clock=clock)
        with pytest.raises(PermanentError, match="81013"):
            sink.send([make_event(1)])
        sink = build(app_flag(server, "&to_user=alice,nobody"), clock=clock)
        with caplog.at_level(logging.WARNING, "eventrouter.sinks.wechat"):
            sink.send([make_event(2)])
    assert "nobody" in caplog.text and len(server.messages()) == 1


def test_app_rate_limit_45009_is_retried_after_the_window(clock):
    with FakeWeCom(clock=clock, rate_limit=1) as server:
        sink = build(app_flag(server, "&repeat_interval=0"), clock=clock)
        with pytest.raises(PartialError) as info:
            sink.send([make_event(1), make_event(2)])
        assert info.value.retry_after == 60 and len(info.value.retry) == 1
        clock.advance(60)
        sink.send(info.value.retry)
    assert len(server.messages()) == 2


def test_app_markdown_is_cut_at_2048_bytes(clock):
    with FakeWeCom(clock=clock) as server:
        sink = build(app_flag(server, "&msg_type=markdown"), clock=clock)
        sink.send([make_event(1, message="磁盘已满 " * 1000)])
    [body] = server.messages()
    content = body["markdown"]["content"]
    assert len(content.encode()) <= 2048 and content.endswith("… (truncated)")


# ---- group robot ----------------------------------------------------------------------------------
def robot_flag(server: FakeWeCom, extra: str = "") -> str:
    return f"wechat:{server.robot_url}?key={server.robot_key}{extra}"


def test_robot_text_with_mentions_and_truncation(clock):
    with FakeWeCom(clock=clock) as server:
        sink = build(robot_flag(server, "&mentioned_list=u1,@all&mentioned_mobile_list=13800000000"), clock=clock)
        sink.send([make_event(1, message="x" * 5000)])
    [body] = server.messages("/cgi-bin/webhook/send")
    assert body["msgtype"] == "text"
    assert body["text"]["mentioned_list"] == ["u1", "@all"]
    assert body["text"]["mentioned_mobile_list"] == ["13800000000"]
    assert len(body["text"]["content"].encode()) <= 2048 and body["text"]["content"].endswith("… (truncated)")


def test_robot_markdown_mentions_in_content_and_4096_bytes(clock):
    with FakeWeCom(clock=clock) as server:
        sink = build(robot_flag(server, "&msg_type=markdown&mentioned_list=u1"), clock=clock)
        sink.send([make_event(1, message="告警" * 3000, cluster="prod")])
    [body] = server.messages()
    content = body["markdown"]["content"]
    assert 4000 < len(content.encode()) <= 4096 and content.endswith("… (truncated)\n<@u1>")
    assert "**Cluster:** prod\n**Level:** Warning" in content


def test_robot_wrong_key_is_permanent_with_the_key_masked(clock):
    with FakeWeCom(clock=clock) as server:
        sink = build(f"wechat:{server.robot_url}?key=WRONG-{KEY}", clock=clock)
        with pytest.raises(PermanentError) as info:
            sink.send([make_event(1)])
    assert "93000" in str(info.value) and KEY not in str(info.value)


def test_robot_burst_of_one_reason_gives_three_messages_and_digests(clock):
    """100 pods with one reason: three alone show what it looks like, a digest names the rest; more pods
    of the same reason later join the next digest, spaced so that room stays for anything new."""
    with FakeWeCom(clock=clock) as server:
        sink = build(robot_flag(server), clock=clock)
        sink.send([make_event(n) for n in range(100)])
        sink.tick()
        assert len(server.messages()) == 3  # the digest gathers a few seconds
        clock.advance(5)
        sink.tick()
        sink.send([make_event(n) for n in range(100, 105)])
        sink.tick()
        assert len(server.messages()) == 4  # the next digest waits for its spacing
        clock.advance(12)
        sink.tick()
    contents = server.contents()
    assert all(r.errcode == 0 for r in server.requests)
    assert [c.split("Name:")[1].split("\n")[0] for c in contents[:3]] == ["app-0", "app-1", "app-2"]
    assert contents[3].startswith("97 more Warning events: BackOff x97 in ns default")
    assert contents[4].startswith("5 more Warning events: BackOff x5 in ns default")
    assert len(contents) == 5


def test_robot_repeats_held_back_then_reminded(clock):
    with FakeWeCom(clock=clock) as server:
        sink = build(robot_flag(server, "&repeat_interval=5m"), clock=clock)
        event = make_event(1)
        sink.send([replace(event, count=c) for c in (1, 2, 3)])
        clock.advance(301)
        sink.send([replace(event, count=9)])
    contents = server.contents()
    assert len(contents) == 2 and "Count:9 (reminder" in contents[1]


# ---- end to end -----------------------------------------------------------------------------------
def _wait(predicate, timeout=10.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)


def test_router_end_to_end_app_messages_in_order():
    with FakeWeCom() as server:
        sink = build_sink(app_flag(server, "&to_user=alice,bob&batch_size=10"))
        router = Router([SinkRunner.build(sink)])
        router.start()
        events = [make_event(n, reason=f"Reason{n}") for n in range(5)]  # five problems: five messages
        for event in [*events, replace(make_event(9), type="Normal")]:  # Normal: filtered by the default level
            router.dispatch(event)
        _wait(lambda: len(server.messages()) >= 5)
        assert router.stop(10)
    assert [c.split("Name:")[1].split("\n")[0] for c in server.contents()] == [f"app-{n}" for n in range(5)]
    assert server.token_calls() == 1 and router.runners[0].stats.filtered == 1


def test_router_logs_permanent_errors_with_secrets_masked(caplog):
    with FakeWeCom() as server:
        sink = build_sink(f"wechat:{server.robot_url}?key=WRONG-{KEY}")
        router = Router([SinkRunner.build(sink)])
        router.start()
        with caplog.at_level(logging.WARNING):
            router.dispatch(make_event(1))
            _wait(lambda: router.runners[0].stats.failed == 1)
            router.stop(10)
    assert "93000" in caplog.text and "invalid webhook url" in caplog.text and KEY not in caplog.text


def test_check_send_test_app_and_robot(capsys):
    with FakeWeCom() as server:
        for flag in (app_flag(server, "&to_user=alice"), robot_flag(server)):
            status = cli_main(["check", "--sink", flag, "--send-test"])
            out = capsys.readouterr().out
            assert status == 0, out
            assert "open: ok" in out and "send-test: delivered" in out
            assert server.corp_secret not in out and server.robot_key not in out
        bad = app_flag(server).replace(server.corp_secret, "wrong-secret-value")
        status = cli_main(["check", "--sink", bad, "--send-test"])
        out = capsys.readouterr().out
    assert status == 1 and "40001" in out and "wrong-secret-value" not in out
    assert [c.count("Reason:EventrouterTest") for c in server.contents()] == [1, 1]


@pytest.mark.parametrize("expires_in", ["soon", None, [7200], {"s": 1}])
def test_a_gettoken_answer_with_an_odd_expires_in_still_delivers(clock, expires_in):
    with FakeWeCom(clock=clock) as server:
        sink = build(app_flag(server), clock=clock)
        server.script.append({"errcode": 0, "errmsg": "ok", "access_token": "ODD-token-1", "expires_in": expires_in})
        sink.send([make_event(1)])  # was: ValueError/TypeError out of the sink, the batch retried as a bug
        sink.close()
    assert len(server.messages()) == 1
    assert server.requests[1].query["access_token"] == "ODD-token-1"
