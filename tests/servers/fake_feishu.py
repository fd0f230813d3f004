"""A local server that answers as a Feishu/Lark custom bot (``POST /open-apis/bot/v2/hook/TOKEN``).

What it checks, as Feishu's custom-bot guide describes it:
- the token in the path: unknown -> ``code 19001`` "param invalid: incoming webhook access token invalid";
- signature (when ``secret`` is set): the body's ``timestamp`` (seconds, within one hour of now) and ``sign``
  = base64(HMAC-SHA256 with key ``"<timestamp>\\n<secret>"`` over empty content), else ``code 19021``
  "sign match fail or timestamp is not within one hour from current time";
- keywords (when set): the message must contain one, else ``code 19024`` "Key Words Not Found";
- the body: JSON with a known ``msg_type`` and its content, at most 20 KB, else HTTP 400 ``code 9499`` "Bad
  Request" (the guide gives the 20 KB limit; the code for it is our assumption);
- the rate: 100 messages a minute and 5 a second per bot, else ``code 11232`` "frequency limited ...".

Errors come as ``{"code": N, "msg": ..., "data": {}}``; success as ``{"StatusCode":0,"StatusMessage":"success",
"code":0,"data":{},"msg":"success"}``. ``script`` forces the next answers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Any

import orjson

from tests.servers._chat_fake import Answer, FakeChatService, Limits, Received

OK = {"StatusCode": 0, "StatusMessage": "success", "code": 0, "data": {}, "msg": "success"}
MSG_TYPES = {"text": "content", "post": "content", "image": "content", "share_chat": "content",
             "interactive": "card"}
MAX_BODY = 20 * 1024


def feishu_sign(secret: str, timestamp: int) -> str:
    key = f"{timestamp}\n{secret}".encode()
    return base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()


def error(code: int, msg: str, status: int = 200) -> Answer:
    return Answer.json(status, {"code": code, "data": {}, "msg": msg})


class FakeFeishu(FakeChatService):
    def __init__(self, token: str = "7f1c2d3e-0000-4abc-9def-1234567890ab", *, secret: str | None = None,
                 keywords: tuple[str, ...] = (), clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        self.token = token
        self.secret = secret
        self.keywords = keywords
        self.wall = wall
        self.limits = Limits((100, 60.0), (5, 1.0))

    @property
    def url(self) -> str:
        return f"{self.base}/open-apis/bot/v2/hook/{self.token}"

    def answer(self, request: Received) -> tuple[Answer, bool]:
        prefix = "/open-apis/bot/v2/hook/"
        if not request.path.startswith(prefix) or request.path[len(prefix):] != self.token:
            return error(19001, "param invalid: incoming webhook access token invalid"), False
        body = request.body
        if len(request.raw) > MAX_BODY or not isinstance(body, dict):
            return error(9499, "Bad Request", 400), False
        key = MSG_TYPES.get(body.get("msg_type", ""))
        if key is None or not body.get(key):
            return error(9499, "Bad Request", 400), False
        if self.secret is not None:
            timestamp = str(body.get("timestamp", ""))
            if (not timestamp.isdigit() or abs(self.wall() - int(timestamp)) > 3600
                    or body.get("sign") != feishu_sign(self.secret, int(timestamp))):
                return error(19021, "sign match fail or timestamp is not within one hour from current time"), False
        if self.keywords and not any(k in orjson.dumps(body).decode() for k in self.keywords):
            return error(19024, "Key Words Not Found"), False
        now = self.clock()
        if self.limits.exceeded(now):
            return error(11232, "frequency limited psm[lark.oapi.app_platform_runtime]appID[-1]"), False
        self.limits.record(now)
        return Answer.json(200, OK), True

    def texts(self) -> list[str]:
        """Every accepted message as one string (card titles and element texts, or the text content)."""
        return [_flatten(r.body) for r in self.accepted]


def _flatten(value: Any) -> str:
    if isinstance(value, dict):
        return " ".join(_flatten(v) for k, v in value.items() if k not in ("sign", "timestamp", "tag", "template"))
    if isinstance(value, list):
        return " ".join(_flatten(v) for v in value)
    return str(value) if isinstance(value, str) else ""
