"""DingTalk sink: flags, redaction, errcode classification, and sends to a fake DingTalk robot."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import time
from dataclasses import replace
from urllib.parse import unquote_plus

import httpx
import orjson
import pytest

from eventrouter import PartialError, PermanentError, RateLimitedError, RetryableError, SinkConfigError, SinkURL
from eventrouter.cli import main as cli_main
from eventrouter.config import build_sink
from eventrouter.router import Router, SinkRunner
from sinks.dingtalk import ERRORS, MAX_CONTENT, DingTalkSink, sign
from tests.helpers import make_event, real_events, real_objects
from tests.servers.fake_dingtalk import FakeClock, FakeDingTalk

TOKEN = "T0KEN-abcdef123456"
SECRET = "SEC0123456789abcdefSECRET"
KE = "dingtalk:https://oapi.dingtalk.com/robot/send?access_token=" + TOKEN


def build(flag: str, **kwargs) -> DingTalkSink:  # type: ignore[no-untyped-def]
    url = SinkURL.parse(flag)
    return DingTalkSink(url, DingTalkSink.parse_options(url), **kwargs)


# ---- flags ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("flag", "expected"), [
    # kube-eventer's documented forms
    (KE + "&level=Warning", {"level": ["Warning"], "msg_type": "text", "endpoint": "https://oapi.dingtalk.com/robot/send"}),
    (KE + "&sign=" + SECRET + "&level=Normal", {"level": ["Normal"], "sign": True}),
    (KE + "&label=cluster-a&label=team,b", {"label": ["cluster-a", "team,b"]}),
    (KE + "&msg_type=markdown&cluster_id=c0ffee&region=cn-hangzhou",
     {"msg_type": "markdown", "cluster_id": "c0ffee", "region": "cn-hangzhou"}),
    (KE + "&namespaces=kube-system,default&kinds=Pod,Node", {"namespaces": ["kube-system", "default"],
                                                             "kinds": ["Pod", "Node"]}),
    (KE, {"level": ["Warning"], "repeat_interval": 1800.0, "rate_limit": 20, "tz": None, "sign": False}),
    # ours
    (KE + "&at_mobiles=138001,139002&at_user_ids=u1&at_all=true",
     {"at_mobiles": ["138001", "139002"], "at_user_ids": ["u1"], "at_all": True}),
    (KE + "&repeat_interval=0&rate_limit=5&tz=Asia/Shanghai", {"repeat_interval": 0.0, "rate_limit": 5}),
    (KE + "&repeat_interval=10m", {"repeat_interval": 600.0}),
    ("dingtalk:?access_token=" + TOKEN, {"endpoint": "https://oapi.dingtalk.com/robot/send"}),
    ("dingtalk:http://oapi.dingtalk.com/robot/send?access_token=" + TOKEN,
     {"endpoint": "https://oapi.dingtalk.com/robot/send"}),  # kube-eventer always used https
    ("dingtalk:http://127.0.0.1:8080/robot/send?access_token=" + TOKEN,
     {"endpoint": "http://127.0.0.1:8080/robot/send"}),
    ("dingtalk:https://proxy.example/dt?access_token=" + TOKEN, {"endpoint": "https://proxy.example/dt"}),
    ("dingtalk:https://oapi.dingtalk.com/robot/send?access_token=$DT_TOKEN", {"token_from_env": True}),
])
def test_flags(flag, expected, monkeypatch):
    monkeypatch.setenv("DT_TOKEN", TOKEN)
    sink = build_sink(flag)
    assert isinstance(sink, DingTalkSink)
    assert sink.opts["access_token"].reveal() == TOKEN
    for key, value in expected.items():
        if key == "endpoint":
            assert sink.endpoint == value
        elif key == "sign":
            assert bool(sink.opts["sign"]) is value
        elif key == "token_from_env":
            continue
        else:
            assert sink.opts[key] == value, key


@pytest.mark.parametrize(("flag", "option", "words"), [
    ("dingtalk:https://oapi.dingtalk.com/robot/send", "access_token", "required"),
    (KE + "&msg_type=actionCard", "msg_type", "text, markdown"),
    (KE + "&level=Error", "level", "Normal"),
    (KE + "&secret=" + SECRET, "secret", "allowed options"),
    (KE + "&tz=Nowhere/City", "tz", "IANA"),
    (KE + "&rate_limit=-1", "rate_limit", "out of range"),
    (KE + "&repeat_interval=soon", "repeat_interval", "duration"),
    (KE + "&at_all=maybe", "at_all", "true or false"),
    (KE + "&template={{ oops", "template", "template"),
    ("dingtalk:ftp://oapi.dingtalk.com/robot/send?access_token=" + TOKEN, None, "https://"),
])
def test_flag_errors_name_the_option(flag, option, words):
    with pytest.raises(SinkConfigError) as info:
        build_sink(flag)
    text = str(info.value)
    assert info.value.option == option and "dingtalk" in text and words in text
    assert TOKEN not in text and SECRET not in text


def test_redaction_round_trip():
    sink = build_sink(KE + "&sign=" + SECRET + "&label=prod")
    for text in (sink.describe(), repr(sink), str(sink.opts)):
        assert TOKEN not in text and SECRET not in text
    assert sink.describe() == ("dingtalk:https://oapi.dingtalk.com/robot/send?access_token=***&sign=***"
                               "&label=prod")


# ---- classification -------------------------------------------------------------------------------
def _body(code: int, msg: str) -> bytes:
    return orjson.dumps({"errcode": code, "errmsg": msg})


@pytest.mark.parametrize(("status", "body", "outcome"), [
    (200, _body(0, "ok"), None),
    (200, _body(130101, "send too fast, exceed 20 times per minute"), RateLimitedError),
    (200, _body(410100, "发送速度太快而限流"), RateLimitedError),
    (200, _body(999999, "send too fast"), RateLimitedError),
    (200, _body(-1, "系统繁忙"), RetryableError),
    (200, _body(310000, "keywords not in content"), PermanentError),
    (200, _body(310000, "sign not match"), PermanentError),
    (200, _body(310000, "ip 1.2.3.4 not in whitelist"), PermanentError),
    (200, _body(300005, "token is not exist"), PermanentError),
    (200, _body(40035, "缺少参数 access_token"), PermanentError),
    (200, _body(400013, "群已被解散"), PermanentError),
    (200, _body(400102, "机器人已停用"), PermanentError),
    (200, _body(460101, "message too long, exceed 20000 bytes"), PermanentError),
    (200, b"<html>gateway</html>", RetryableError),
    (429, b"", RateLimitedError),
    (503, b"busy", RetryableError),
    (400, b"bad", PermanentError),
])
def test_classify(status, body, outcome):
    if outcome is None:
        assert ERRORS.classify(httpx.Response(status, content=body))["errcode"] == 0
        return
    with pytest.raises(outcome) as info:
        ERRORS.classify(httpx.Response(status, content=body))
    if outcome is RateLimitedError:
        assert info.value.retry_after == 60
    if outcome is PermanentError and status == 200:
        assert orjson.loads(body)["errmsg"] in str(info.value)


def test_signature_matches_dingtalk_reference():
    ts = 1700000000000
    expected = base64.b64encode(hmac.new(SECRET.encode(), f"{ts}\n{SECRET}".encode(), hashlib.sha256).digest())
    assert unquote_plus(sign(SECRET, ts)) == expected.decode()
    assert "+" not in sign(SECRET, ts) and "/" not in sign(SECRET, ts)  # URL-encoded


# ---- against the fake robot -----------------------------------------------------------------------
@pytest.fixture
def clock():
    return FakeClock()


def robot_flag(server: FakeDingTalk, extra: str = "") -> str:
    flag = f"dingtalk:{server.url}?access_token={server.token}"
    if server.secret:
        flag += f"&sign={server.secret}"
    return flag + extra


def test_signed_text_message_with_keyword_and_mentions(clock):
    with FakeDingTalk(secret=SECRET, keywords=("k8s-alert",), clock=clock) as server:
        sink = build(robot_flag(server, "&label=k8s-alert&at_mobiles=13800000000&at_user_ids=u1"), clock=clock)
        sink.send([make_event(1, cluster="prod")])
        sink.close()
    [request] = server.requests
    assert request.errcode == 0
    assert request.headers["Content-Type"] == "application/json;charset=utf-8"
    assert set(request.query) == {"access_token", "timestamp", "sign"}
    assert request.body["at"] == {"atMobiles": ["13800000000"], "atUserIds": ["u1"], "isAtAll": False}
    assert request.body["text"]["content"] == (
        "k8s-alert\nLevel:Warning\nKind:Pod\nNamespace:default\nName:app-1\nReason:BackOff\n"
        "Timestamp:2026-04-14 09:30:01 UTC\nMessage:Back-off restarting failed container app in pod app-1\n"
        "Count:1\nCluster:prod\nHost:node-1\n@13800000000 @u1")


@pytest.mark.parametrize("msg_type", ["text", "markdown"])
def test_region_is_shown_with_the_cluster(clock, msg_type):
    with FakeDingTalk(clock=clock) as server:
        sink = build(robot_flag(server, f"&cluster_id=c1&region=cn-hangzhou&msg_type={msg_type}"), clock=clock)
        sink.send([make_event(1)])
    [content] = server.contents()
    expected = (["Cluster:c1", "Region:cn-hangzhou"] if msg_type == "text"
                else ["**Cluster:** c1", "**Region:** cn-hangzhou"])
    assert all(line in content.splitlines() for line in expected)


def test_markdown_message(clock):
    with FakeDingTalk(clock=clock) as server:
        sink = build(robot_flag(server, "&msg_type=markdown&at_all=true"), clock=clock)
        sink.send([make_event(2)])
    [body] = server.messages
    assert body["msgtype"] == "markdown" and body["at"]["isAtAll"] is True
    assert body["markdown"]["title"] == "[Warning] BackOff Pod default/app-2"
    assert "**Name:** app-2" in body["markdown"]["text"]


@pytest.mark.parametrize(("wall_offset", "secret", "errmsg"), [
    (-7200.0, SECRET, "invalid timestamp"),
    (0.0, "SECwrong-secret-value", "sign not match"),
])
def test_bad_signature_is_permanent_and_masks_secrets(clock, wall_offset, secret, errmsg):
    with FakeDingTalk(secret=SECRET, clock=clock) as server:
        sink = build(f"dingtalk:{server.url}?access_token={TOKEN}&sign={secret}", clock=clock,
                     wall=lambda: time.time() + wall_offset)
        with pytest.raises(PermanentError) as info:
            sink.send([make_event(1)])
    assert "310000" in str(info.value) and errmsg in str(info.value)
    assert TOKEN not in str(info.value) and secret not in str(info.value)


def test_missing_keyword_is_permanent(clock):
    with FakeDingTalk(keywords=("k8s-alert",), clock=clock) as server:
        sink = build(robot_flag(server), clock=clock)
        with pytest.raises(PermanentError, match="keywords not in content"):
            sink.send([make_event(1)])
    assert server.messages == []


def test_oversized_message_is_truncated_not_rejected(clock):
    with FakeDingTalk(clock=clock) as server:
        sink = build(robot_flag(server, "&at_mobiles=13800000000"), clock=clock)
        sink.send([make_event(1, message='容器 "app" 崩溃\n' * 3000)])
    [content] = server.contents()
    assert "… (truncated)\n@13800000000" in content
    assert len(orjson.dumps(content)) <= MAX_CONTENT


def test_burst_of_two_reasons_gives_three_of_each_and_one_digest_naming_both(clock):
    events = [make_event(n) for n in range(90)] + [
        make_event(n, reason="FailedScheduling", namespace="b") for n in range(90, 100)]
    events[90:] = [replace(e, involved_object=replace(e.involved_object, namespace="b")) for e in events[90:]]
    with FakeDingTalk(secret=SECRET, keywords=("k8s",), clock=clock) as server:
        sink = build(robot_flag(server, "&label=k8s"), clock=clock)
        sink.send(events)
        sink.tick()
        clock.advance(30)
        sink.tick()  # nothing more to send
    contents = server.contents()
    assert len(contents) == 7 and all(r.errcode == 0 for r in server.requests)
    # the first of each reason leads (a batch is ranked), then two more of each
    assert [c.split("\nName:")[1].split("\n")[0] for c in contents[:6]] == [
        "app-0", "app-90", "app-1", "app-2", "app-91", "app-92"]
    assert contents[6].splitlines()[1:4] == [
        "94 more Warning events: BackOff x87 in ns default, FailedScheduling x7 in ns b",
        "- BackOff x87 in ns default: Pod/app-3, Pod/app-4, Pod/app-5 and 84 more",
        "- FailedScheduling x7 in ns b: Pod/app-93, Pod/app-94, Pod/app-95 and 4 more"]


def _node_event(n: int, reason: str = "NodeNotReady"):  # type: ignore[no-untyped-def]
    """An event about Node ``node-<n>``: cluster-scoped (the Event object itself lives in ``default``)."""
    event = make_event(n, reason=reason, message=f"Node node-{n} status is now: {reason}")
    return replace(event, involved_object=replace(event.involved_object, kind="Node", namespace="", name=f"node-{n}"))


def test_digest_waits_for_the_next_window(clock):
    with FakeDingTalk(clock=clock) as server:
        sink = build(robot_flag(server), clock=clock)
        # 20 node problems of different reasons: urgent, each alone, they may use the whole window
        sink.send([_node_event(n, reason=f"Node{n}") for n in range(20)])
        sink.tick()
        sink.send([make_event(n, reason=f"Reason{n}") for n in range(20, 25)])  # the window is full now
        sink.tick()
        assert len(server.messages) == 20
        clock.advance(61)
        sink.tick()
    assert len(server.messages) == 21 and server.contents()[-1].startswith("5 more Warning events")
    assert all(r.errcode == 0 for r in server.requests)  # never over DingTalk's limit


def test_repeats_are_held_back_then_reminded(clock):
    with FakeDingTalk(clock=clock) as server:
        sink = build(robot_flag(server, "&repeat_interval=30m"), clock=clock)
        event = make_event(1)
        for count in range(1, 6):
            sink.send([replace(event, count=count)])
            clock.advance(60)
        clock.advance(1800)
        sink.send([replace(event, count=42)])
    contents = server.contents()
    assert len(contents) == 2
    assert "Count:1\n" in contents[0]
    assert "Count:42 (reminder: still happening; 4 updates held back since the last message)" in contents[1]


def test_repeat_interval_zero_sends_every_occurrence(clock):
    with FakeDingTalk(clock=clock) as server:
        sink = build(robot_flag(server, "&repeat_interval=0"), clock=clock)
        sink.send([replace(make_event(1), count=c) for c in range(1, 4)])
    assert len(server.messages) == 3


def test_server_rate_limit_is_retried_after_a_minute(clock):
    with FakeDingTalk(rate_limit=2, clock=clock) as server:  # someone else uses the robot too
        sink = build(robot_flag(server), clock=clock)
        with pytest.raises(PartialError) as info:
            sink.send([make_event(n) for n in range(4)])
        assert info.value.retry_after == 60 and [e.involved_object.name for e in info.value.retry] == [
            "app-2", "app-3"]
        clock.advance(60)
        sink.send(info.value.retry)  # the router's retry
    assert [c.split("Name:")[1].split("\n")[0] for c in server.contents()] == ["app-0", "app-1", "app-2", "app-3"]


def test_unreachable_robot_is_retryable():
    sink = build("dingtalk:http://127.0.0.1:9/robot/send?access_token=" + TOKEN)
    with pytest.raises(PartialError) as info:
        sink.send([make_event(1)])
    assert "cannot reach the dingtalk" in str(info.value) and TOKEN not in str(info.value)


# ---- end to end -----------------------------------------------------------------------------------
def _wait(predicate, timeout=10.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)


def _accounted(contents: list[str]) -> int:
    """Events a reader sees in these messages: one per single message, N per digest line ``- R xN ...``."""
    total = 0
    for content in contents:
        lines = [re.match(r"- .+? x(\d+) |- (\d+) more events", line) for line in content.splitlines()]
        counts = [int(m.group(1) or m.group(2)) for m in lines if m]
        total += sum(counts) if counts else 1
    return total


def test_router_end_to_end_burst_of_real_events():
    real = [e for e in real_events() if e.type == "Warning"]  # the 79 recorded Warning events
    burst = (real + [make_event(n) for n in range(100)])[:100]
    with FakeDingTalk(secret=SECRET, keywords=("prod",)) as server:
        # repeat_interval=0: every one of the 100 counts, none is held back as a repeat
        sink = build_sink(robot_flag(server, "&label=prod&batch_size=100&level=Warning&repeat_interval=0"))
        router = Router([SinkRunner.build(sink)])
        for event in [*burst, replace(make_event(1), type="Normal")]:
            router.dispatch(event)
        router.start()
        _wait(lambda: sink.flow.stats.events_posted + sink.flow.stats.events_folded >= 100)
        assert router.stop(10)
    assert len(server.messages) <= 20 and all(r.errcode == 0 for r in server.requests)
    assert _accounted(server.contents()) == 100  # every event alone or named in a digest
    assert router.runners[0].stats.sent == 100 and router.runners[0].stats.filtered == 1
    stats = sink.flow.stats
    assert stats.messages == len(server.messages) and stats.events_posted + stats.events_in_digests == 100


def test_metrics_and_summary_count_messages_folded_events_and_repeats_apart(caplog):
    from eventrouter.app import _log_totals
    from eventrouter.health import SourceState
    from eventrouter.metrics import RouterCollector

    with FakeDingTalk() as server:
        sink = build_sink(robot_flag(server, "&batch_size=100"))
        router = Router([SinkRunner.build(sink)])
        pods = [make_event(n) for n in range(10)]
        for event in [*pods, *(replace(p, count=2) for p in pods)]:  # 10 problems, then 10 count bumps
            router.dispatch(event)
        router.start()
        _wait(lambda: router.runners[0].stats.sent == 20)
        assert router.stop(10)  # the digest of 7 goes out at shutdown
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for m in RouterCollector(router, SourceState()).collect() for s in m.samples}
    label = (("kind", "event"), ("sink", "dingtalk"))
    assert samples[("eventrouter_chat_messages_total", label)] == 3 == len(server.messages) - 1
    assert samples[("eventrouter_chat_messages_total", (("kind", "digest"), ("sink", "dingtalk")))] == 1
    outcomes = {dict(k[1])["outcome"]: v for k, v in samples.items() if k[0] == "eventrouter_chat_events_total"}
    assert outcomes == {"posted": 3, "folded": 7, "in_posted_digest": 7, "repeat_held_back": 10, "refused": 0,
                        "kept": 0}
    with caplog.at_level(logging.INFO, logger="eventrouter"):
        _log_totals(router, True, 0.1)
    assert ("sink dingtalk: handled 20 events: posted 4 messages (3 events, 1 digests of 7 folded events); "
            "10 repeats held back; 0 events refused; 0 folded events left for after a restart") in caplog.text


def test_router_logs_permanent_errors_with_the_token_masked(caplog):
    with FakeDingTalk(token="OTHER-token-value", clock=FakeClock()) as server:
        sink = build_sink(f"dingtalk:{server.url}?access_token={TOKEN}&sign={SECRET}")
        router = Router([SinkRunner.build(sink)])
        router.start()
        with caplog.at_level(logging.WARNING):
            router.dispatch(make_event(1))
            _wait(lambda: router.runners[0].stats.failed == 1)
            router.stop(10)
    assert router.runners[0].stats.failed == 1
    assert "300005" in caplog.text and "token is not exist" in caplog.text
    assert TOKEN not in caplog.text and SECRET not in caplog.text


def test_check_send_test(capsys):
    with FakeDingTalk(secret=SECRET, keywords=("k8s",)) as server:
        status = cli_main(["check", "--sink", robot_flag(server, "&label=k8s"), "--send-test"])
        out = capsys.readouterr().out
        assert status == 0, out
        assert "send-test: delivered" in out and TOKEN not in out and SECRET not in out
        assert "Reason:EventrouterTest" in server.contents()[0]
        # a robot that rejects the message: check says why, and exits 1
        status = cli_main(["check", "--sink", robot_flag(server), "--send-test"])
        out = capsys.readouterr().out
    assert status == 1 and "keywords not in content" in out and TOKEN not in out


def _kept(data_dir) -> int:  # type: ignore[no-untyped-def]
    """Events of the digest kept for after the restart in the sink's state directory."""
    path = data_dir / "sinks" / "dingtalk" / "chat-pending.json"
    digest = orjson.loads(path.read_bytes())["digest"] if path.exists() else None
    return sum(g["count"] for g in digest["groups"]) + digest["other"] if digest else 0


def test_cli_run_replays_real_events_once_per_problem_and_digests_the_rest(tmp_path):
    warnings = [o for o in real_objects() if o.get("type") == "Warning"]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(orjson.dumps(o) + b"\n" for o in real_objects()))
    problems = {(e.involved_object.kind, e.involved_object.namespace, e.involved_object.name, e.reason)
                for e in real_events() if e.type == "Warning"}
    with FakeDingTalk(secret=SECRET, keywords=("prod",)) as server:
        status = cli_main(["--source=file:" + str(path), "--cluster-name=prod", "--healthz-port=0",
                           f"--data-dir={tmp_path / 'data'}",
                           "--sink=" + robot_flag(server, "&label=prod&batch_size=1000")])
    assert status == 0 and len(warnings) > len(problems)
    contents = server.contents()
    assert len(contents) <= 20 and all(r.errcode == 0 for r in server.requests)
    singles = [c for c in contents if "\nLevel:Warning\n" in c]
    assert singles and all("Cluster:prod" in c for c in contents)
    # node problems lead (the recorded Node warnings and NodeNotReady), before any pod's problem
    node_level = ["Kind:Node\n" in c or "Reason:NodeNotReady\n" in c for c in singles]
    assert node_level[:6] == [True] * 6 and not any(node_level[6:])
    assert "Reason:NodeNotReady\n" in singles[5]
    # every problem once, alone or named in a digest (posted, or kept for after the restart); repeats not
    assert _accounted(contents) + _kept(tmp_path / "data") == len(problems)


def test_repeated_rate_limit_answers_back_off_towards_dingtalks_ten_minute_block():
    """Another poster on the same robot keeps it throttled: wait 1, 2, 4, 8, then 10 minutes; reset on success."""
    answers = iter([{"errcode": 130101, "errmsg": "send too fast, exceed 20 times per minute"}] * 6
                   + [{"errcode": 0, "errmsg": "ok"}, {"errcode": 130101, "errmsg": "send too fast"}])
    sink = build("dingtalk:http://127.0.0.1:9/robot/send?access_token=tok-1&repeat_interval=0")
    sink._client = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(200, json=next(answers))))
    waits = []
    for _ in range(6):
        with pytest.raises(RateLimitedError) as err:
            sink.deliver("text", "title")
        waits.append(err.value.retry_after)
    assert waits == [60.0, 120.0, 240.0, 480.0, 600.0, 600.0]
    sink.deliver("text", "title")  # delivered: the streak ends
    with pytest.raises(RateLimitedError) as err:
        sink.deliver("text", "title")
    assert err.value.retry_after == 60.0
