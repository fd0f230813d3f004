"""Teams sink: flags, redaction, answer classification, Adaptive Cards against a fake Workflows webhook, the storm."""

from __future__ import annotations

import re
from dataclasses import replace

import httpx
import orjson
import pytest

from eventrouter import PartialError, PermanentError, RateLimitedError, RetryableError, SinkConfigError, SinkURL
from eventrouter.cli import main as cli_main
from eventrouter.config import build_sink
from sinks.teams import CARD, TeamsAnswers, TeamsSink
from tests.chat_storm import NODE_AT, crashloop_storm, run_storm
from tests.helpers import make_event
from tests.servers.fake_dingtalk import FakeClock
from tests.servers.fake_teams import MAX_MESSAGE, FakeTeams

SIG = "SIG-aBcD-0123456789"
URL = ("https://prod-01.westus.logic.azure.com:443/workflows/0a1b/triggers/manual/paths/invoke"
       f"?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig={SIG}")


def build(flag: str, **kwargs) -> TeamsSink:  # type: ignore[no-untyped-def]
    url = SinkURL.parse(flag)
    return TeamsSink(url, TeamsSink.parse_options(url), **kwargs)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# ---- flags ----------------------------------------------------------------------------------------
def test_the_workflow_url_keeps_its_own_parameters():
    sink = build_sink(f"teams:{URL}&label=prod&rate_limit=10&level=Normal")
    assert isinstance(sink, TeamsSink)
    assert sink.endpoint == URL.replace(":443", ":443")
    assert sink.opts["label"] == ["prod"] and sink.opts["rate_limit"] == 10 and sink.opts["level"] == ["Normal"]
    assert build_sink(f"teams:{URL}").opts["level"] == ["Warning"]


@pytest.mark.parametrize(("flag", "option", "words"), [
    ("teams:", None, "Workflows webhook URL"),
    ("teams:https://prod-01.westus.logic.azure.com/workflows/x/triggers/manual/paths/invoke?api-version=1", None,
     "no sig="),
    (f"teams:{URL}&msg_type=markdown", None, "no sig="),  # not an option: it would be sent to the flow
    (f"teams:{URL}&rate_limit=-1", "rate_limit", "out of range"),
])
def test_flag_errors(flag, option, words):
    if "msg_type" in flag:
        sink = build_sink(flag)  # unknown keys belong to the workflow URL, as with the webhook sink
        assert isinstance(sink, TeamsSink) and "msg_type=markdown" in sink.endpoint
        return
    with pytest.raises(SinkConfigError) as info:
        build_sink(flag)
    assert info.value.option == option and words in str(info.value) and SIG not in str(info.value)


def test_a_misspelt_option_is_forwarded_with_a_warning(caplog):
    with caplog.at_level("WARNING"):
        sink = build_sink(f"teams:{URL}&lable=prod")
    assert isinstance(sink, TeamsSink) and sink.endpoint.endswith("&lable=prod")
    assert "'lable' is not an option" in caplog.text and "did you mean 'label'" in caplog.text
    assert SIG not in caplog.text


def test_redaction():
    sink = build_sink(f"teams:{URL}&label=prod")
    for text in (sink.describe(), repr(sink), str(sink.opts)):
        assert SIG not in text
    assert sink.describe().endswith("&sv=1.0&sig=***&label=prod")


# ---- classification -------------------------------------------------------------------------------
def err(status: int, code: str, message: str, **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message}}, headers=headers)


@pytest.mark.parametrize(("response", "outcome", "words"), [
    (httpx.Response(202), None, ""),
    (httpx.Response(200, text="1"), None, ""),
    (err(429, "TooManyRequests", "Rate limit is exceeded.", **{"Retry-After": "2"}), RateLimitedError, "429"),
    (err(401, "DirectApiInvalidAuthorizationSignature", "The provided authorization signature is not valid."),
     PermanentError, "copy the URL"),
    (err(404, "WorkflowNotFound", "The workflow could not be found."), PermanentError, "turned off"),
    (err(400, "InvalidRequestContent", "not valid"), PermanentError, "InvalidRequestContent"),
    (httpx.Response(413, text="Request Entity Too Large"), PermanentError, "too large"),
    (httpx.Response(502, text="Bad Gateway"), RetryableError, "502"),
])
def test_classify(response, outcome, words):
    if outcome is None:
        assert TeamsAnswers("teams").classify(response) == {}
        return
    with pytest.raises(outcome) as info:
        TeamsAnswers("teams").classify(response)
    assert words in str(info.value)
    if outcome is RateLimitedError:
        assert info.value.retry_after == 2.0


# ---- against the fake workflow --------------------------------------------------------------------
def test_adaptive_card(clock):
    with FakeTeams(sig=SIG, clock=clock) as teams:
        sink = build(f"teams:{teams.url}&label=prod", clock=clock)
        sink.send([make_event(1, cluster="eu-1", count=3)])
    [request] = teams.accepted
    assert request.headers["content-type"].startswith("application/json")
    [attachment] = request.body["attachments"]
    assert attachment["contentType"] == CARD and attachment["content"]["type"] == "AdaptiveCard"
    labels, title, facts, message, origin = attachment["content"]["body"]
    assert labels["text"] == "prod"
    assert title["text"] == "Warning: BackOff on Pod default/app-1" and title["color"] == "Attention"
    assert {f["title"]: f["value"] for f in facts["facts"]} == {
        "Kind": "Pod", "Object": "default/app-1", "Count": "3", "Last seen": "2026-04-14 09:30:01 UTC",
        "First seen": "2026-04-14 09:30:01 UTC", "Host": "node-1", "Cluster": "eu-1"}
    assert message["text"] == "Back-off restarting failed container app in pod app-1" and origin["text"] == "kubelet"


def test_a_huge_message_stays_under_28_kb(clock):
    with FakeTeams(sig=SIG, clock=clock) as teams:
        sink = build(f"teams:{teams.url}", clock=clock)
        sink.send([make_event(1, message="容器崩溃 " * 20000)])
    [request] = teams.requests
    assert request.accepted and len(request.raw) <= MAX_MESSAGE
    assert "… (truncated)" in request.body["attachments"][0]["content"]["body"][2]["text"]


@pytest.mark.parametrize(("old", "new", "words"), [(SIG, "wrong-sig", "DirectApiInvalidAuthorizationSignature"),
                                                  ("0a1b2c3d4e5f46a7b8c9d0e1f2a3b4c5", "gone", "WorkflowNotFound")])
def test_refusals_are_permanent_and_masked(clock, old, new, words):
    with FakeTeams(sig=SIG, clock=clock) as teams:
        url = teams.url.replace(old, new)
        sink = build(f"teams:{url}", clock=clock)
        with pytest.raises(PermanentError) as info:
            sink.send([make_event(1)])
    assert words in str(info.value) and SIG not in str(info.value) and "wrong-sig" not in str(info.value)


def test_throttled_by_teams_pauses_for_retry_after(clock):
    with FakeTeams(sig=SIG, clock=clock) as teams:
        for _ in range(4):
            teams.limits.record(clock())  # another poster used this second
        sink = build(f"teams:{teams.url}", clock=clock)
        with pytest.raises(PartialError) as info:
            sink.send([make_event(1), make_event(2)])
        assert info.value.retry_after == 1.0 and len(info.value.retry) == 2
        clock.advance(1)
        sink.send(info.value.retry)
    assert len(teams.posted) == 2


def test_reminder_card(clock):
    with FakeTeams(sig=SIG, clock=clock) as teams:
        sink = build(f"teams:{teams.url}&repeat_interval=5m", clock=clock)
        sink.send([make_event(1)])
        clock.advance(60)
        sink.send([replace(make_event(1), count=2)])
        clock.advance(300)
        sink.send([replace(make_event(1), count=5)])
    facts = [{f["title"]: f["value"] for f in c["body"][1]["facts"]} for c in teams.posted]
    assert [f["Count"] for f in facts] == ["1", "5 (reminder: still happening; 1 updates held back)"]


def test_storm_within_teams_limits_node_first_everything_named(clock):
    storm = crashloop_storm()
    with FakeTeams(sig=SIG, clock=clock) as teams:
        run_storm(storm, build(f"teams:{teams.url}", clock=clock), clock)
    requests = teams.requests
    assert all(r.accepted for r in requests), [r.answer.body for r in requests if not r.accepted][:3]
    times = [r.at for r in requests]
    assert max(sum(1 for t in times if s <= t < s + 60) for s in times) <= 20
    assert max(sum(1 for t in times if s <= t < s + 1) for s in times) <= 4
    cards = teams.posted
    digests = [c for c in cards if re.match(r"\d+ more", c["body"][0]["text"])]
    totals = [int(re.match(r"(\d+) more", c["body"][0]["text"]).group(1)) for c in digests]
    assert len(cards) - len(digests) + sum(totals) == storm.problems
    for card, total in zip(digests, totals, strict=True):
        text = card["body"][1]["text"]
        assert "more in other groups" not in text
        assert sum(int(n) for n in re.findall(r"^- \S+ x(\d+) ", text, re.MULTILINE)) == total
    after = [r for r in requests if r.at >= 1000.0 + NODE_AT]
    assert any("NodeNotReady" in orjson.dumps(r.body).decode() for r in after[:3])


def test_check_send_test(capsys):
    with FakeTeams(sig=SIG) as teams:
        status = cli_main(["check", "--sink", f"teams:{teams.url}", "--send-test"])
        out = capsys.readouterr().out
        assert status == 0, out
        assert "send-test: delivered" in out and SIG not in out
        status = cli_main(["check", "--sink", f"teams:{teams.url.replace(SIG, 'bad')}", "--send-test"])
        out = capsys.readouterr().out
    assert status == 1 and "DirectApiInvalidAuthorizationSignature" in out
