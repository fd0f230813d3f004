"""A local HTTP server that behaves like the DingTalk custom robot (``POST /robot/send``).

It checks what DingTalk checks and answers the way DingTalk does (always HTTP 200 + ``errcode``):
unknown token 300005, bad or old signature 310000, missing keyword 310000, more than ``rate_limit``
messages in 60 s 130101, body over 20,000 bytes 460101; after ``busy_after`` accepted messages -1 (busy).
``script`` forces the next answers. Every
request is recorded in ``requests``; the accepted messages in ``messages``, in arrival order.
Its clock is injectable, so a test can share a fake clock with the sink.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson


class FakeClock:
    """A monotonic clock a test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Received:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    errcode: int
    errmsg: str


@dataclass
class FakeDingTalk:
    token: str = "T0KEN-abcdef123456"
    secret: str | None = None
    keywords: tuple[str, ...] = ()
    rate_limit: int = 20
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    requests: list[Received] = field(default_factory=list)
    script: deque[tuple[int, str]] = field(default_factory=deque)
    busy_after: int | None = None  # after this many accepted messages, DingTalk is overloaded: -1 系统繁忙
    _sent: deque[float] = field(default_factory=deque)

    # ---- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> FakeDingTalk:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                code, msg = fake.handle(self.path, dict(self.headers), self.rfile.read(length))
                data = orjson.dumps({"errcode": code, "errmsg": msg})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self._lock = threading.Lock()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/robot/send"

    @property
    def messages(self) -> list[Any]:
        """Accepted request bodies, in order."""
        return self._accepted()

    def _accepted(self) -> list[Any]:
        return [r.body for r in self.requests if r.errcode == 0]

    def contents(self) -> list[str]:
        """The text of each accepted message (text content or markdown text)."""
        out = []
        for body in self.messages:
            part = body.get(body["msgtype"], {})
            out.append(part.get("content") or part.get("text") or "")
        return out

    # ---- behaviour ---------------------------------------------------------------------------
    def handle(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, str]:
        with self._lock:
            split = urlsplit(path)
            query = {k: v[0] for k, v in parse_qs(split.query).items()}
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = raw.decode(errors="replace")
            code, msg = self._judge(split.path, query, body, len(raw))
            self.requests.append(Received(split.path, query, headers, body, code, msg))
            if code == 0:
                self._sent.append(self.clock())
            return code, msg

    def _judge(self, path: str, query: dict[str, str], body: Any, size: int) -> tuple[int, str]:
        if self.script:
            return self.script.popleft()
        if self.busy_after is not None and len(self._accepted()) >= self.busy_after:
            return -1, "系统繁忙"
        if path != "/robot/send":
            return 404, "not found"
        token = query.get("access_token")
        if not token:
            return 40035, "缺少参数 access_token"
        if token != self.token:
            return 300005, "token is not exist"
        if self.secret is not None:
            timestamp = query.get("timestamp", "")
            if not timestamp.isdigit() or abs(self.wall() * 1000 - int(timestamp)) > 3600 * 1000:
                return 310000, "invalid timestamp"
            expected = base64.b64encode(
                hmac.new(self.secret.encode(), f"{timestamp}\n{self.secret}".encode(), hashlib.sha256).digest()
            ).decode()
            if query.get("sign") != expected:
                return 310000, "sign not match"
        if size > 20000:
            return 460101, "message too long, exceed 20000 bytes"
        if not isinstance(body, dict) or body.get("msgtype") not in ("text", "markdown"):
            return 40008, "invalid message type"
        part = body.get(body["msgtype"]) or {}
        content = part.get("content") or part.get("text") or ""
        if self.keywords and not any(k in content for k in self.keywords):
            return 310000, "keywords not in content, more: [https://ding-doc.dingtalk.com/doc#/serverapi2/qf2nxq]"
        now = self.clock()
        while self._sent and now - self._sent[0] >= 60:
            self._sent.popleft()
        if len(self._sent) >= self.rate_limit:
            return 130101, "send too fast, exceed 20 times per minute"
        return 0, "ok"
