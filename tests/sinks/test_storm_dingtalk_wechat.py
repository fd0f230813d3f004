"""The storm of issue 16 through DingTalk, the WeCom app and the WeCom robot, against fake services that
answer as the real ones do (rate limits, size limits, errcodes): 300 pods in CrashLoopBackOff bumping their
counts, one NodeNotReady 21 s in.

Each is run twice: on the sink with a fake clock shared with the service (exact timing: the node problem
among the first 3 messages after it happens, at most 20 messages in any minute), and through the real CLI
(file replay, real clock). Both stop mid-storm: what the rate does not allow at shutdown is kept in the
sink's state directory and posted after the restart, so every problem is seen once, alone or named in a
digest, and nothing is lost.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from eventrouter import Event, SinkURL
from eventrouter.cli import main as cli_main
from sinks.dingtalk import DingTalkSink
from sinks.wechat import WeChatSink
from tests.chat_storm import NODE_AT, crashloop_storm, run_storm
from tests.servers.fake_dingtalk import FakeClock, FakeDingTalk
from tests.servers.fake_wecom import FakeWeCom

STATE = "chat-pending.json"
LIMITS = {"dingtalk": 18000, "wecom-app": 2048, "wecom-robot": 2048}  # bytes of one message's content


class Service:
    """One of the three fake services, with what the tests need to read from it."""

    def __init__(self, kind: str, clock: Callable[[], float]) -> None:
        self.kind = kind
        self.server: Any = FakeDingTalk(clock=clock) if kind == "dingtalk" else FakeWeCom(clock=clock)

    def __enter__(self) -> Service:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)

    def flag(self) -> str:
        server = self.server
        if self.kind == "dingtalk":
            return f"dingtalk:{server.url}?access_token={server.token}"
        if self.kind == "wecom-robot":
            return f"wechat:{server.robot_url}?key={server.robot_key}"
        return (f"wechat:?corp_id={server.corp_id}&corp_secret={server.corp_secret}&agent_id={server.agent_id}"
                f"&to_party=2&api_base={server.base}")

    def contents(self) -> list[str]:
        return list(self.server.contents())

    def all_accepted(self, busy: bool = False) -> bool:
        """Every request accepted (or, with ``busy``, answered -1 while the test made the service busy):
        never a rate-limit or size error."""
        return all(r.errcode == 0 or (busy and r.errcode == -1) for r in self.server.requests)


def _named(content: str) -> int:
    """Events a message stands for: 1 for a single event, the group counts of a digest."""
    counts = [int(n) for n in re.findall(r"^- \S+ x(\d+) ", content, re.MULTILINE)]
    return sum(counts) if counts else 1


def _check_digest_names_every_group(content: str, limit: int) -> None:
    head = re.search(r"^(\d+) more \w+ events?", content, re.MULTILINE)
    if head is None:
        return  # a single event
    assert int(head.group(1)) == _named(content)  # the headline's total is in the listed groups
    assert "truncated" not in content and len(content.encode()) <= limit


def _kept(state_dir: Path) -> int:
    path = state_dir / STATE
    digest = orjson.loads(path.read_bytes())["digest"] if path.exists() else None
    return sum(g["count"] for g in digest["groups"]) + digest["other"] if digest else 0


def _build(kind: str, flag: str, clock: FakeClock, wall: Callable[[], float]) -> Any:
    cls = DingTalkSink if kind == "dingtalk" else WeChatSink
    url = SinkURL.parse(flag)
    return cls(url, cls.parse_options(url), clock=clock, wall=wall)


def _sent_times(service: Service) -> list[float]:
    """When the service accepted each message (its own clock)."""
    sent = service.server._sent
    return list(sent if service.kind == "dingtalk" else sent["robot" if service.kind == "wecom-robot" else "app"])


@pytest.mark.parametrize("kind", ["dingtalk", "wecom-app", "wecom-robot"])
def test_storm_on_the_sink_root_cause_first_within_the_rate_everything_named(kind, tmp_path):
    clock = FakeClock()
    storm = crashloop_storm()
    with Service(kind, clock) as service:
        sink = _build(kind, service.flag(), clock, time.time)
        sink.state_dir = str(tmp_path)
        sink.open()
        before_node: list[int] = []

        def on_second(second: int) -> None:
            if second == NODE_AT - 1:
                before_node.append(len(service.contents()))

        run_storm(storm, sink, clock, after=0, on_second=on_second)  # SIGTERM right after the storm
        contents = service.contents()
        times = _sent_times(service)
    assert service.all_accepted()  # never over the service's limits, never too long
    assert max(sum(1 for t in times if s <= t < s + 60) for s in times) <= 20
    after_node = contents[before_node[0]:]
    assert any("node-7" in c for c in after_node[:3]), [c[:80] for c in after_node[:3]]
    node = next(c for c in contents if "node-7" in c)
    assert "(cluster-scoped)" in node and "in ns default" not in node
    for content in contents:
        _check_digest_names_every_group(content, LIMITS[kind])
    # delivered before exit (the rate allowed it): every problem once, alone or named in a digest
    assert sum(_named(c) for c in contents) == storm.problems and _kept(tmp_path) == 0
    stats = sink.chat_stats()
    assert stats.messages == len(contents) and stats.events_kept == 0
    assert stats.repeats_suppressed == len(storm.events) - storm.problems  # the count bumps, held back


@pytest.mark.parametrize("kind", ["dingtalk", "wecom-app", "wecom-robot"])
def test_storm_cut_short_by_a_busy_service_keeps_the_digest_for_the_restart(kind, tmp_path, caplog):
    """SIGTERM 8 s into the storm while the service answers -1 (busy): the digest is kept, not dropped with
    a wrong reason, and posted first after the restart, within the rate."""
    clock = FakeClock()
    epoch = time.time()

    def wall() -> float:  # epoch seconds that move with the fake clock
        return epoch + clock() - 1000.0

    storm = crashloop_storm()
    early = [(second, event) for second, event in storm.events if second < 8]
    with Service(kind, clock) as service:
        sink = _build(kind, service.flag(), clock, wall)
        sink.state_dir = str(tmp_path)
        sink.open()
        for second in range(8):
            sink.send([e for s, e in early if s == second])
            sink.tick()
            clock.advance(1)
        service.server.busy_after = len(service.contents())
        sink.close()
        first_run = service.contents()
        kept = _kept(tmp_path)
        assert kept > 0 and "errcode -1" in caplog.text and "rate limit" not in caplog.text
        service.server.busy_after = None
        clock.advance(61)  # the restart, a minute later
        again = _build(kind, service.flag(), clock, wall)
        again.state_dir = str(tmp_path)
        again.open()
        again.tick()
        again.close()
        contents = service.contents()
    problems = len({e.involved_object.name for _, e in early})
    assert service.all_accepted(busy=True)
    assert sum(_named(c) for c in first_run) + kept == problems
    restarted = contents[len(first_run):]
    assert re.match(r"\d+ more Warning events", restarted[0]) and sum(_named(c) for c in restarted) == kept
    for content in restarted:  # WeCom: split to fit 2048 bytes, every group named
        _check_digest_names_every_group(content, LIMITS[kind])
    assert sum(_named(c) for c in contents) == problems and _kept(tmp_path) == 0


def _object(event: Event) -> dict[str, Any]:
    """A core/v1 Event object as the API server serves it."""
    obj = event.involved_object

    def ts(when: Any) -> str:
        return str(when.strftime("%Y-%m-%dT%H:%M:%SZ"))

    return {"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": event.name, "namespace": event.namespace, "uid": event.uid,
                         "resourceVersion": event.resource_version, "creationTimestamp": ts(event.first_timestamp)},
            "involvedObject": {"kind": obj.kind, "namespace": obj.namespace, "name": obj.name, "apiVersion": "v1"},
            "reason": event.reason, "message": event.message, "type": event.type, "count": event.count,
            "firstTimestamp": ts(event.first_timestamp), "lastTimestamp": ts(event.last_timestamp),
            "source": {"component": event.source_component, "host": event.source_host}}


@pytest.mark.parametrize("kind", ["dingtalk", "wecom-app", "wecom-robot"])
def test_storm_through_the_cli_and_a_restart(kind, tmp_path):
    storm = crashloop_storm()
    events = tmp_path / "storm.jsonl"
    events.write_bytes(b"".join(orjson.dumps(_object(e)) + b"\n" for _, e in storm.events))
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    data = tmp_path / "data"
    offset = [0.0]  # the service's clock: real time, moved on by a minute for the restart
    label = "dingtalk" if kind == "dingtalk" else "wechat"
    with Service(kind, lambda: time.monotonic() + offset[0]) as service:
        args = ["--healthz-port=0", f"--data-dir={data}", f"--sink={service.flag()}"]
        service.server.busy_after = 4  # the storm's first pods and the node go out; then the service is busy
        assert cli_main([f"--source=file:{events}", *args]) == 0
        service.server.busy_after = None
        first_run = service.contents()
        kept = _kept(data / "sinks" / label)
        # a minute passes before the restart: for the service, and in the kept window's post times
        offset[0] += 61
        path = data / "sinks" / label / STATE
        doc = orjson.loads(path.read_bytes())
        doc["posts"] = [t - 61 for t in doc["posts"]]
        path.write_bytes(orjson.dumps(doc))
        assert cli_main([f"--source=file:{empty}", *args]) == 0
        contents = service.contents()
    assert service.all_accepted(busy=True) and len(first_run) <= 20
    # read at once, the node problem is ranked first of its batch: after at most the 3 pods that show the storm
    node_at = next(i for i, c in enumerate(first_run) if "node-7" in c)
    assert node_at <= 3 and all("Reason:BackOff" in c for c in first_run[:node_at])
    for content in contents:
        _check_digest_names_every_group(content, LIMITS[kind])
    assert kept > 0 and sum(_named(c) for c in first_run) + kept == storm.problems
    assert sum(_named(c) for c in contents) == storm.problems and _kept(path.parent) == 0  # posted after the restart
