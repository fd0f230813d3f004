"""The example plugin (examples/eventrouter-sink-jsonfile), installed as CI installs it, used as a user would.

It is found through its entry point like any built-in sink, listed by ``eventrouter sinks`` with its
distribution, routes events through the real command line, keeps to the public API, and its own
test suite (the one docs/plugins.md walks through) passes.
"""

from __future__ import annotations

import ast
import collections
import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

import eventrouter
from eventrouter import RetryableError, SinkConfigError, SinkURL, registry
from tests.helpers import DATA, make_event, real_objects

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "examples" / "eventrouter-sink-jsonfile"
EXE = str(Path(sys.executable).parent / "eventrouter")
EVENTS = str(DATA / "core-v1.jsonl")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_registered_through_its_entry_point() -> None:
    entry = registry.discover()["jsonfile"]
    assert (entry.distribution, entry.version) == ("eventrouter-sink-jsonfile", "0.1.0")
    assert entry.load().__name__ == "JsonFileSink"


def test_listed_by_eventrouter_sinks() -> None:
    proc = run("sinks")
    assert proc.returncode == 0, proc.stderr
    block = proc.stdout.split("jsonfile  ", 1)[1].split("\n\n", 1)[0]
    assert block.startswith("(eventrouter-sink-jsonfile 0.1.0)  Append events as JSON lines to a local file.")
    assert "    fsync (true or false = false)" in block
    assert "    raw (true or false = false)" in block


def test_routes_the_recorded_events_through_the_cli(tmp_path: Path) -> None:
    warnings_file = tmp_path / "warnings.jsonl"
    all_file = tmp_path / "all.jsonl"
    proc = run(
        f"--source=file:{EVENTS}",
        f"--sink=jsonfile:{warnings_file}?level=Warning",
        f"--sink=jsonfile:{all_file}?kinds=Node&raw=true",
        "--healthz-port=0",
        "--log-format=json",
    )
    assert proc.returncode == 0, proc.stderr
    objs = real_objects()
    warnings = [json.loads(line) for line in warnings_file.read_text().splitlines()]
    expected = [o["metadata"]["uid"] for o in objs if o.get("type") == "Warning"]
    assert [w["uid"] for w in warnings] == expected  # every Warning, once, in order; no Normal
    assert {w["type"] for w in warnings} == {"Warning"}
    nodes = [json.loads(line) for line in all_file.read_text().splitlines()]
    assert len(nodes) == collections.Counter(o["involvedObject"].get("kind") for o in objs)["Node"]
    assert all(n["involved_object"]["kind"] == "Node" and n["raw"]["involvedObject"]["kind"] == "Node" for n in nodes)
    totals = [json.loads(line)["msg"] for line in proc.stderr.splitlines() if "sent" in line]
    assert (
        f"sink jsonfile: sent {len(expected)}, filtered {len(objs) - len(expected)}, failed 0, "
        "dropped 0 (overflow) 0 (shutdown)" in totals
    )


def test_a_bad_flag_exits_2_naming_the_option() -> None:
    proc = run(f"--source=file:{EVENTS}", "--sink=jsonfile:/tmp/x.jsonl?fsnyc=true", "--healthz-port=0")
    assert proc.returncode == 2
    assert "--sink=jsonfile" in proc.stderr and "fsnyc" in proc.stderr and "fsync" in proc.stderr


def test_uses_only_the_public_api() -> None:
    tree = ast.parse((PLUGIN / "eventrouter_sink_jsonfile" / "__init__.py").read_text())
    imported = [
        (node.module, alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names
    ]
    from_eventrouter = {name for module, name in imported if module and module.startswith("eventrouter")}
    assert {module for module, _ in imported if module and module.startswith("eventrouter")} == {"eventrouter"}
    assert from_eventrouter <= set(eventrouter.__all__)


def test_the_plugins_own_tests_pass() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(PLUGIN / "tests")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PLUGIN,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout


def test_the_guide_s_example_sink_works() -> None:
    """docs/plugins.md's MySink, run as written: delivers, classifies a 503, masks its token."""
    code = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "plugins.md").read_text(), re.S)[0]
    namespace: dict = {}
    exec(compile(code, "docs/plugins.md", "exec"), namespace)
    sink_class = namespace["MySink"]
    received: list[tuple[str, dict]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append((self.headers["Authorization"], body))
            self.send_response(503 if len(received) == 2 else 200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"mysink:http://127.0.0.1:{server.server_port}/v1/events?token=tok-123&project=p"
        sink = sink_class.from_url(SinkURL.parse(url))
        assert "tok-123" not in repr(sink)
        sink.send([make_event(1), make_event(2)])
        with pytest.raises(RetryableError, match="503"):
            sink.send([make_event(3)])
        sink.close()
        sink.close()
    finally:
        server.shutdown()
        server.server_close()
    assert received[0][0] == "Bearer tok-123"
    assert [e["uid"] for e in received[0][1]["events"]] == [make_event(1).uid, make_event(2).uid]
    with pytest.raises(SinkConfigError, match="give the API URL"):
        sink_class.from_url(SinkURL.parse("mysink:?token=x"))
