"""A restart (SIGTERM, SIGKILL) of the real ``eventrouter`` process while one sink lags.

The issue's scenario: the webhook receiver is down, the router restarts; before, the healthy sink then
received thousands of events a second time. Here the healthy sink (jsonfile) must get each event once,
and the lagging webhook, once its receiver is up, every event once too (its backlog from the disk buffer
after SIGTERM; from the source's re-list after SIGKILL, where nothing of it was settled).
"""

from __future__ import annotations

import collections
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest

from eventrouter.simulator import Simulator
from tests.servers.fake_webhook import FakeWebhook, _Server
from tests.servers.simulator import wait_for


def add(sim: Simulator, n: int) -> None:
    for _ in range(n):
        sim.add_event()


def current_keys(sim: Simulator) -> set[tuple[str, str]]:
    with sim.store.cond:
        return {(u, o["metadata"]["resourceVersion"]) for u, o in sim.store.events.items()}


def file_keys(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    return [(d["uid"], d["resource_version"]) for d in map(orjson.loads, path.read_bytes().splitlines())]


def hook_keys(hook: FakeWebhook) -> list[tuple[str, str]]:
    keys = []
    for request in list(hook.requests):
        body = request.json()
        for item in body if isinstance(body, list) else [body]:
            keys.append((item["uid"], item["resource_version"]))
    return keys


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def webhook_on(port: int) -> FakeWebhook:
    """The tests' recording receiver, on the port the sink was configured with."""
    hook = FakeWebhook()
    handler = hook._server.RequestHandlerClass
    hook._server.server_close()
    hook._server = _Server(("127.0.0.1", port), handler)
    hook._thread = threading.Thread(target=hook._server.serve_forever, name="fake-webhook", daemon=True)
    return hook.start()


class Router:
    def __init__(self, sim: Simulator, tmp: Path, hook_port: int) -> None:
        self.args = [
            sys.executable, "-m", "eventrouter",
            f"--source=kubernetes:?inClusterConfig=false&auth={sim.write_kubeconfig(tmp / 'kc')}",
            f"--sink=jsonfile:{tmp / 'healthy.jsonl'}?flush_interval=50ms",
            f"--sink=webhook:http://127.0.0.1:{hook_port}/hook?batch=true&batch_size=100&queue_size=50",
            f"--checkpoint=file:{tmp / 'checkpoint.json'}", f"--data-dir={tmp / 'data'}",
            "--healthz-port=0", "--shutdown-timeout=2s",
        ]
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def stop(self, sig: int) -> str:
        assert self.proc is not None
        self.proc.send_signal(sig)
        _, err = self.proc.communicate(timeout=30)
        return err

    def kill_if_running(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_restart_while_one_sink_lags_repeats_nothing_at_the_other(sim: Simulator, tmp_path: Path, sig) -> None:
    healthy = tmp_path / "healthy.jsonl"
    port = closed_port()  # the webhook receiver is down
    router = Router(sim, tmp_path, port)
    hook = None
    try:
        add(sim, 300)  # listed at the first start
        router.start()
        wait_for(lambda: len(file_keys(healthy)) == 300, timeout=30, what="the first list at the healthy sink")
        add(sim, 300)  # watched
        wait_for(lambda: len(file_keys(healthy)) == 600, timeout=30, what="the watched events")
        time.sleep(1.5)  # a checkpoint after the last delivery (written at least once a second)
        err = router.stop(sig)
        if sig == signal.SIGTERM:
            assert "kept in the disk buffer for the next start" in err
        add(sim, 200)  # while the router is down

        router.start()
        wait_for(lambda: len(file_keys(healthy)) >= 800, timeout=30, what="the events of the downtime")
        hook = webhook_on(port)  # the receiver comes back
        wait_for(lambda: len(hook_keys(hook)) >= 800, timeout=40, what="the webhook's backlog after it came back")
        time.sleep(1.0)  # anything more would be a duplicate
        router.stop(signal.SIGTERM)
    finally:
        router.kill_if_running()
        if hook is not None:
            hook.stop()

    expected = current_keys(sim)
    at_file, at_hook = file_keys(healthy), hook_keys(hook)
    assert [k for k, n in collections.Counter(at_file).items() if n > 1] == []
    assert set(at_file) == expected
    assert [k for k, n in collections.Counter(at_hook).items() if n > 1] == []
    assert set(at_hook) == expected
