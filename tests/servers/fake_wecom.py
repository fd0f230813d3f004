"""A local HTTP server that behaves like WeCom (企业微信): gettoken, message/send and the group robot.

Like WeCom, it always answers HTTP 200 with an ``errcode``:

- ``GET /cgi-bin/gettoken?corpid=&corpsecret=``: 40013 unknown corp, 40001 wrong secret, else a new token;
- ``POST /cgi-bin/message/send?access_token=``: 42001 for an expired token, 40014 for an unknown one,
  81013 when every recipient is invalid or none is given (``invaliduser`` lists the unknown ones
  otherwise; ``audience()`` tells whom a message reached: ``@all`` overrides parties and tags), 45009 past
  ``rate_limit`` messages in 60 s;
- ``POST /cgi-bin/webhook/send?key=``: 93000 for a wrong key, 40058 for text over 2048 / markdown over 4096
  bytes, 45009 past ``rate_limit``.

``expire_tokens()`` makes every issued token expired; after ``busy_after`` accepted messages every send is
answered -1 (system busy); ``script`` forces the next answers. Everything is
recorded in ``requests``; accepted messages are in ``messages()``. The clock is injectable.
"""

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

from tests.servers.fake_dingtalk import FakeClock

__all__ = ["FakeClock", "FakeWeCom", "Request"]


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    answer: dict[str, Any]

    @property
    def errcode(self) -> int:
        return int(self.answer["errcode"])


@dataclass
class FakeWeCom:
    corp_id: str = "ww0123456789"
    corp_secret: str = "CORP-secret-0123456789abcdef"
    agent_id: int = 1000002
    robot_key: str = "ROBOT-key-0123456789abcdef"
    users: frozenset[str] | None = None  # None: every user id is valid
    expires_in: int = 7200
    rate_limit: int = 20
    clock: Callable[[], float] = time.monotonic
    requests: list[Request] = field(default_factory=list)
    script: deque[dict[str, Any]] = field(default_factory=deque)
    busy_after: int | None = None  # after this many accepted messages every send is answered -1 (system busy)
    _tokens: set[str] = field(default_factory=set)
    _expired: set[str] = field(default_factory=set)
    _sent: dict[str, deque[float]] = field(default_factory=dict)

    def __enter__(self) -> FakeWeCom:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                answer = fake.handle(method, self.path, self.rfile.read(length) if length else b"")
                data = orjson.dumps(answer)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._answer("GET")

            def do_POST(self) -> None:
                self._answer("POST")

            def log_message(self, *args: Any) -> None:
                pass

        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def robot_url(self) -> str:
        return f"{self.base}/cgi-bin/webhook/send"

    def expire_tokens(self) -> None:
        with self._lock:
            self._expired |= self._tokens
            self._tokens.clear()

    def messages(self, path: str = "") -> list[Any]:
        """Accepted message bodies (app and robot), in order."""
        return [r.body for r in self.requests
                if r.errcode == 0 and r.method == "POST" and (not path or r.path == path)]

    def contents(self) -> list[str]:
        return [body[body["msgtype"]]["content"] for body in self.messages()]

    @staticmethod
    def audience(body: dict[str, Any]) -> dict[str, str]:
        """Who an app message reaches, as WeCom decides: ``@all`` makes it ignore toparty and totag."""
        if "@all" in str(body.get("touser", "")).split("|"):
            return {"touser": "@all"}
        return {key: str(body[key]) for key in ("touser", "toparty", "totag") if body.get(key)}

    def token_calls(self) -> int:
        return sum(1 for r in self.requests if r.path == "/cgi-bin/gettoken")

    # ---- behaviour ---------------------------------------------------------------------------
    def handle(self, method: str, path: str, raw: bytes) -> dict[str, Any]:
        with self._lock:
            split = urlsplit(path)
            query = {k: v[0] for k, v in parse_qs(split.query).items()}
            try:
                body = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                body = raw.decode(errors="replace")
            if self.script:
                answer = self.script.popleft()
            elif method == "POST" and self.busy_after is not None and len(self.messages()) >= self.busy_after:
                answer = _err(-1, "system busy")
            else:
                answer = self._judge(method, split.path, query, body)
            self.requests.append(Request(method, split.path, query, body, answer))
            return answer

    def _judge(self, method: str, path: str, query: dict[str, str], body: Any) -> dict[str, Any]:
        if path == "/cgi-bin/gettoken" and method == "GET":
            if query.get("corpid") != self.corp_id:
                return _err(40013, "invalid corpid")
            if query.get("corpsecret") != self.corp_secret:
                return _err(40001, "invalid credential, hint: [1700000000_1_abc]")
            token = f"ACCESS-{len(self._tokens) + len(self._expired) + 1:04d}-tokenvalue"
            self._tokens.add(token)
            return {"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": self.expires_in}
        if path == "/cgi-bin/message/send" and method == "POST":
            token = query.get("access_token", "")
            if token in self._expired:
                return _err(42001, "access_token expired, hint: [1700000000_2_def]")
            if token not in self._tokens:
                return _err(40014, "invalid access_token")
            if not isinstance(body, dict) or body.get("agentid") != self.agent_id:
                return _err(40056, "invalid agentid")
            return self._app_send(body)
        if path == "/cgi-bin/webhook/send" and method == "POST":
            if query.get("key") != self.robot_key:
                return _err(93000, "invalid webhook url, hint: [1700000000_3_ghi]")
            return self._robot_send(body)
        return _err(404, "not found")

    def _rate(self, who: str) -> dict[str, Any] | None:
        sent = self._sent.setdefault(who, deque())
        now = self.clock()
        while sent and now - sent[0] >= 60:
            sent.popleft()
        if len(sent) >= self.rate_limit:
            return _err(45009, "api freq out of limit")
        sent.append(now)
        return None

    def _app_send(self, body: dict[str, Any]) -> dict[str, Any]:
        if not any(body.get(key) for key in ("touser", "toparty", "totag")):
            return _err(81013, "user & party & tag all invalid")
        users = [u for u in str(body.get("touser", "")).split("|") if u]
        invalid = [u for u in users if u != "@all" and self.users is not None and u not in self.users]
        if users and len(invalid) == len(users) and not body.get("toparty") and not body.get("totag"):
            return _err(81013, "user & party & tag all invalid")
        limited = self._rate("app")
        if limited:
            return limited
        return {"errcode": 0, "errmsg": "ok", "invaliduser": "|".join(invalid), "msgid": f"m{len(self.requests)}"}

    def _robot_send(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or body.get("msgtype") not in ("text", "markdown"):
            return _err(40008, "invalid message type")
        content = body[body["msgtype"]].get("content", "")
        cap = 2048 if body["msgtype"] == "text" else 4096
        if len(content.encode()) > cap:
            return _err(40058, f"{body['msgtype']}.content exceed max length {cap}")
        return self._rate("robot") or {"errcode": 0, "errmsg": "ok"}


def _err(code: int, msg: str) -> dict[str, Any]:
    return {"errcode": code, "errmsg": msg}
