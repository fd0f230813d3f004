"""The new chat sinks end to end: the real command replays the recorded events into a fake Slack, Teams and
Feishu (and the webhook's Feishu recipe with chat=true). Every answer is a success (the sink stayed under the
service's limits), node problems come first, and every problem is accounted for: posted alone, named in a
digest, or kept in the data directory for after the restart."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from eventrouter.cli import main as cli_main
from tests.helpers import real_events, real_objects
from tests.servers._chat_fake import Limits
from tests.servers.fake_feishu import FakeFeishu
from tests.servers.fake_slack import FakeSlack
from tests.servers.fake_teams import FakeTeams

TEMPLATES = Path(__file__).resolve().parents[2] / "docs" / "templates"


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def _accounted(body: Any) -> int:
    """Events a reader sees in one message: 1 for a single event, N per digest line ``- R xN ...``."""
    text = "\n".join(_strings(body))
    counts = [int(m.group(1)) for m in re.finditer(r"^- .+? x(\d+) ", text, re.MULTILINE)]
    return sum(counts) if counts else 1


def _kept(data_dir: Path, label: str) -> int:
    path = data_dir / "sinks" / label / "chat-pending.json"
    digest = orjson.loads(path.read_bytes())["digest"] if path.exists() else None
    return sum(g["count"] for g in digest["groups"]) + digest["other"] if digest else 0


def _node_level(body: Any) -> bool:
    text = "\n".join(_strings(body))
    return "NodeNotReady" in text or " on Node " in text or ": Node " in text


@pytest.mark.parametrize("kind", ["slack", "teams", "feishu", "webhook"])
def test_cli_replay_into_each_chat_service(tmp_path, kind):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(orjson.dumps(o) + b"\n" for o in real_objects()))
    problems = {(e.involved_object.kind, e.involved_object.namespace, e.involved_object.name, e.reason)
                for e in real_events() if e.type == "Warning"}
    fakes = {"slack": FakeSlack, "teams": FakeTeams, "feishu": FakeFeishu, "webhook": FakeFeishu}
    with fakes[kind]() as server:
        flag = {
            "slack": f"slack:{server.hook_url}" if kind == "slack" else "",
            "teams": f"teams:{server.url}&batch_size=1000" if kind == "teams" else "",
            "feishu": f"feishu:{server.url}?batch_size=1000" if kind == "feishu" else "",
            "webhook": (f"webhook:{server.url}?chat=true&rate=20/min,5/s&success_field=code:0&batch_size=1000"
                        f"&template_file={TEMPLATES / 'feishu.json.j2'}") if kind == "webhook" else "",
        }[kind]
        if kind == "slack":
            flag += "?batch_size=1000"
        status = cli_main([f"--source=file:{path}", "--healthz-port=0", f"--data-dir={tmp_path / 'data'}",
                           f"--sink={flag}"])
    assert status == 0
    requests = server.requests
    assert requests and all(r.accepted for r in requests), [r.answer.body for r in requests if not r.accepted][:3]
    bodies = [r.body for r in requests]
    accounted = sum(_accounted(b) for b in bodies)
    assert accounted + _kept(tmp_path / "data", kind) == len(problems)
    singles = [b for b in bodies if _accounted(b) == 1 and not re.search(r"\d+ more", "\n".join(_strings(b)))]
    node = [_node_level(b) for b in singles]
    assert node[0] and node == sorted(node, reverse=True)  # the node problems lead


def test_what_was_kept_at_shutdown_goes_out_after_the_restart(tmp_path):
    """Nothing lost at shutdown: the digest kept in the data directory is posted by the next run (what its
    rate allows; the rest is kept again), so posted + kept stays equal to the problems."""
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(orjson.dumps(o) + b"\n" for o in real_objects()))
    empty = tmp_path / "none.jsonl"
    empty.write_bytes(b"")
    problems = {(e.involved_object.kind, e.involved_object.namespace, e.involved_object.name, e.reason)
                for e in real_events() if e.type == "Warning"}
    data = tmp_path / "data"
    with FakeFeishu() as server:
        flag = f"--sink=feishu:{server.url}?batch_size=1000"
        assert cli_main([f"--source=file:{path}", "--healthz-port=0", f"--data-dir={data}", flag]) == 0
        kept = _kept(data, "feishu")
        first = len(server.requests)
        assert kept > 0
        # the restart comes a minute later: the posts the state file remembers are a minute older
        state = data / "sinks" / "feishu" / "chat-pending.json"
        doc = orjson.loads(state.read_bytes())
        doc["posts"] = [t - 61 for t in doc["posts"]]
        doc["saved_at"] -= 61
        doc["paused_until"] -= 61
        state.write_bytes(orjson.dumps(doc))
        server.limits = Limits((100, 60.0), (5, 1.0))  # and Feishu's own count, a minute later
        assert cli_main([f"--source=file:{empty}", "--healthz-port=0", f"--data-dir={data}", flag]) == 0
    assert all(r.accepted for r in server.requests)
    posted = sum(_accounted(r.body) for r in server.requests)
    assert posted + _kept(data, "feishu") == len(problems)
    assert len(server.requests) > first and _kept(data, "feishu") < kept  # the restart posted some of it
