"""A local server that answers as Slack: incoming webhooks (``POST /services/T/B/X``) and the Web API's
``POST /api/chat.postMessage`` (bot token).

Incoming webhook, as Slack's "Sending messages using incoming webhooks" describes: ``200 ok`` when posted;
plain-text errors with a status: ``400 invalid_payload`` (not JSON), ``400 no_text`` (neither text nor
blocks), ``400 invalid_blocks``, ``404 no_service`` (unknown or revoked URL), ``410 channel_is_archived``
(``archived=True``), ``403 action_prohibited`` (``prohibited=True``); more than one message a second gives
``429`` with ``Retry-After: 1`` (Slack tolerates short bursts; this fake is strict, so a sink that passes
here never relies on them).

chat.postMessage: ``Authorization: Bearer xoxb-...``; HTTP 200 with ``{"ok": true, "channel", "ts",
"message"}`` or ``{"ok": false, "error": "not_authed" | "invalid_auth" | "channel_not_found" |
"not_in_channel" | "no_text" | "invalid_blocks" | "thread_not_found"}``; more than one message a second to a
channel gives HTTP 429 ``{"ok": false, "error": "ratelimited"}`` with ``Retry-After``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tests.servers._chat_fake import Answer, FakeChatService, Limits, Received

HOOK_PATH = "/services/T0AAAAAAA/B0BBBBBBB/aWNvbWluZy13ZWJob29rLXRva2Vu"


class FakeSlack(FakeChatService):
    def __init__(self, *, token: str = "xoxb-111-222-SECRETbot", channels: tuple[str, ...] = ("C0ALERTS",),
                 member_of: tuple[str, ...] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        self.token = token
        self.channels = channels
        self.member_of = channels if member_of is None else member_of
        self.archived = False
        self.prohibited = False
        self.limits: dict[str, Limits] = {}
        self._ts = 1_776_000_000.0
        self.threads: dict[str, list[str]] = {}  # parent ts -> reply ts

    @property
    def hook_url(self) -> str:
        return f"{self.base}{HOOK_PATH}"

    def answer(self, request: Received) -> tuple[Answer, bool]:
        if request.path == "/api/chat.postMessage":
            return self._post_message(request)
        if request.path != HOOK_PATH:
            return Answer.text(404, "no_service"), False
        if not isinstance(request.body, dict):
            return Answer.text(400, "invalid_payload"), False
        if self.archived:
            return Answer.text(410, "channel_is_archived"), False
        if self.prohibited:
            return Answer.text(403, "action_prohibited"), False
        problem = _payload_problem(request.body)
        if problem:
            return Answer.text(400, problem), False
        if not self._room("hook"):
            return Answer.text(429, "rate_limited", **{"Retry-After": "1"}), False
        return Answer.text(200, "ok"), True

    def _post_message(self, request: Received) -> tuple[Answer, bool]:
        auth = request.headers.get("authorization", "")
        if not auth:
            return Answer.json(200, {"ok": False, "error": "not_authed"}), False
        if auth != f"Bearer {self.token}":
            return Answer.json(200, {"ok": False, "error": "invalid_auth"}), False
        body = request.body if isinstance(request.body, dict) else {}
        channel = body.get("channel", "")
        if channel not in self.channels:
            return Answer.json(200, {"ok": False, "error": "channel_not_found"}), False
        if channel not in self.member_of:
            return Answer.json(200, {"ok": False, "error": "not_in_channel"}), False
        problem = _payload_problem(body)
        if problem:
            return Answer.json(200, {"ok": False, "error": problem}), False
        parent = body.get("thread_ts")
        if parent is not None and parent not in self.threads:
            return Answer.json(200, {"ok": False, "error": "thread_not_found"}), False
        if not self._room(channel):
            return Answer.json(429, {"ok": False, "error": "ratelimited"}, **{"Retry-After": "1"}), False
        self._ts += 1.0
        ts = f"{self._ts:.6f}"
        if parent is None:
            self.threads[ts] = []
        else:
            self.threads[parent].append(ts)
        return Answer.json(200, {"ok": True, "channel": channel, "ts": ts,
                                 "message": {"text": body.get("text", ""), "ts": ts}}), True

    def _room(self, key: str) -> bool:
        limits = self.limits.setdefault(key, Limits((1, 1.0)))
        now = self.clock()
        if limits.exceeded(now):
            return False
        limits.record(now)
        return True


def _payload_problem(body: dict[str, Any]) -> str | None:
    blocks = body.get("blocks")
    if not body.get("text") and not blocks:
        return "no_text"
    if blocks is not None:
        if not isinstance(blocks, list) or len(blocks) > 50:
            return "invalid_blocks"
        for block in blocks:
            if not isinstance(block, dict) or block.get("type") not in ("header", "section", "context", "divider"):
                return "invalid_blocks"
            text = block.get("text") or {}
            limit = 150 if block["type"] == "header" else 3000
            if len(text.get("text", "")) > limit or len(block.get("fields") or []) > 10:
                return "invalid_blocks"
    return None
