"""What the fake chat services (Slack, Teams, Feishu) share: an HTTP server on 127.0.0.1 (free port, daemon
thread), every request recorded, an injectable clock, sliding-window rate limits and a script of forced
answers. Each service's module decides what a request gets, as the real service answers it."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson


@dataclass
class Answer:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, data: Any, **headers: str) -> Answer:
        return cls(status, orjson.dumps(data), {"Content-Type": "application/json", **headers})

    @classmethod
    def text(cls, status: int, text: str, **headers: str) -> Answer:
        return cls(status, text.encode(), {"Content-Type": "text/plain; charset=utf-8", **headers})


@dataclass
class Received:
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    raw: bytes
    body: Any  # decoded JSON, else the text
    answer: Answer
    at: float  # the server's clock
    accepted: bool = False


class Limits:
    """Sliding windows: at most ``limit`` accepted requests in any ``seconds``."""

    def __init__(self, *windows: tuple[int, float]) -> None:
        self.windows = windows
        self._times: deque[float] = deque()

    def exceeded(self, now: float) -> tuple[int, float] | None:
        """The first window that one more request would exceed, else None."""
        for limit, seconds in self.windows:
            if sum(1 for t in self._times if now - t < seconds) >= limit:
                return limit, seconds
        return None

    def wait(self, now: float) -> float:
        """Seconds until one more request fits every window."""
        waits = [0.0]
        for limit, seconds in self.windows:
            inside = [t for t in self._times if now - t < seconds]
            if len(inside) >= limit:
                waits.append(inside[len(inside) - limit] + seconds - now)
        return max(waits)

    def record(self, now: float) -> None:
        self._times.append(now)
        longest = max(s for _, s in self.windows)
        while self._times and now - self._times[0] >= longest:
            self._times.popleft()


class FakeChatService:
    """Base of the fakes: subclasses implement :meth:`answer` (under a lock, with the server's clock)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.requests: list[Received] = []
        self.script: deque[Answer] = deque()
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                answer = owner._handle(self.path, {k.lower(): v for k, v in self.headers.items()}, raw)
                self.send_response(answer.status)
                for key, value in answer.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name=type(self).__name__, daemon=True)

    def __enter__(self) -> Any:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _handle(self, path: str, headers: dict[str, str], raw: bytes) -> Answer:
        split = urlsplit(path)
        query = {k: v[0] for k, v in parse_qs(split.query).items()}
        try:
            body: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = raw.decode(errors="replace")
        with self._lock:
            now = self.clock()
            received = Received(split.path, query, headers, raw, body, Answer(500, b""), now)
            if self.script:
                received.answer = self.script.popleft()
            else:
                received.answer, received.accepted = self.answer(received)
            self.requests.append(received)
            return received.answer

    def answer(self, request: Received) -> tuple[Answer, bool]:
        """The answer to a request, and whether the service accepted (posted) the message."""
        raise NotImplementedError

    @property
    def accepted(self) -> list[Received]:
        return [r for r in self.requests if r.accepted]
