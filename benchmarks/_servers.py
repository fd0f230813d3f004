"""Child process: a keep-alive (HTTP/1.1) webhook receiver that only counts, for the webhook benchmark.

The tests' receiver (``tests/servers/fake_webhook.py``) answers HTTP/1.0, so every request opens a new
connection, and it runs inside the benchmark's process. This one keeps connections open, runs in its
own process (its CPU stays out of the sink's figures) and keeps no bodies: it counts the events of
every POST per path (a JSON array counts its items, an object counts 1). ``GET /_count/PATH`` answers
the count for ``/PATH``. It prints its port on stdout and stops when stdin closes.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import orjson


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver behind a load balancer
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall
    counts: Counter[str] = Counter()
    lock = threading.Lock()

    def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        parsed = orjson.loads(body)
        with self.lock:
            self.counts[self.path] += len(parsed) if isinstance(parsed, list) else 1
        self._answer(b"ok")

    def do_GET(self) -> None:
        with self.lock:
            count = self.counts[self.path.removeprefix("/_count")]
        self._answer(str(count).encode())

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class KeepAliveReceiver:
    """The receiver above in a child process (a context manager)."""

    def __enter__(self) -> KeepAliveReceiver:
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks._servers"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.proc.kill()
            raise RuntimeError(f"the webhook receiver did not start: {line!r}")
        self.port = int(line)
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def count(self, path: str) -> int:
        return int(httpx.get(self.url(f"/_count{path}"), timeout=10).text)

    def __exit__(self, *exc: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def main() -> None:
    server = _Server(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(server.server_address[1], flush=True)
    sys.stdin.read()  # until the parent closes stdin (or exits)
    server.shutdown()


if __name__ == "__main__":
    main()
