"""``success_field=NAME[:VALUE]``: for receivers that answer HTTP 200 with an error in the body.

Feishu/Lark bots answer ``{"code": 19021, "msg": "sign match fail ..."}``, DingTalk-style APIs
``{"errcode": 310000, "errmsg": ...}``, some Slack APIs ``{"ok": false, "error": "invalid_auth"}``. With
``success_field`` set, a 2xx answer is delivered only when its JSON object has NAME equal to VALUE; else it
is a PermanentError carrying the body's message, or a RateLimitedError (retried after a minute) when the
code or message says the receiver is rate limiting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from eventrouter import PermanentError, RateLimitedError

# codes that mean "too many messages, try later": Feishu/Lark, DingTalk, WeCom
RATE_LIMIT_CODES = frozenset({"11232", "130101", "410100", "45009"})
_RATE_LIMIT_TEXT = re.compile(r"rate[ _-]?limit|too[ _-]many|too fast|freq", re.IGNORECASE)
MESSAGE_FIELDS = ("msg", "errmsg", "error", "message", "StatusMessage")
MESSAGE_LIMIT = 300


def _text(value: Any) -> str:
    """A JSON value as written in the option: true/false/null, numbers as JSON, strings as they are."""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


@dataclass(frozen=True)
class SuccessField:
    """A 2xx answer is delivered only when its JSON object has ``name`` equal to ``value``."""

    name: str
    value: str

    @classmethod
    def parse(cls, text: str) -> SuccessField:
        """``code:0``, ``errcode:0``, ``ok:true``; ``NAME`` alone means ``NAME:true``. ValueError when NAME is empty."""
        name, sep, value = text.partition(":")
        name = name.strip()
        if not name:
            raise ValueError(f"expected NAME[:VALUE] such as code:0 or ok:true, got {text!r}")
        return cls(name, value.strip() if sep else "true")

    def __str__(self) -> str:
        return f"{self.name}:{self.value}"

    def matches(self, value: Any) -> bool:
        """``0`` and ``"0"`` both match ``code:0``; ``true`` and ``"true"`` match ``ok:true``."""
        if _text(value) == self.value:
            return True
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                return float(self.value) == float(value)
            except ValueError:
                return False
        return False

    def check(self, status: int, body: bytes, what: str = "webhook receiver") -> None:
        """Return when the answer says success; raise PermanentError or RateLimitedError otherwise."""
        shown = body[:MESSAGE_LIMIT].decode(errors="replace").strip()
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise PermanentError(f"{what} did not answer JSON (HTTP {status}), so success_field={self} "
                                 f"cannot be checked: {shown!r}") from None
        if not isinstance(data, dict):
            raise PermanentError(f"{what} answered HTTP {status} with JSON that is not an object, so "
                                 f"success_field={self} cannot be checked: {shown}")
        if self.name in data and self.matches(data[self.name]):
            return
        message = _message(data)
        if self.name in data:
            value = _text(data[self.name])
            detail = f"{what} answered HTTP {status} with {self.name}={value} (expected {self.value})"
        else:
            value = ""
            detail = f"{what} answered HTTP {status} without the field {self.name!r} of success_field={self}"
        if message:
            detail += f": {message}"
        if value in RATE_LIMIT_CODES or _RATE_LIMIT_TEXT.search(message):
            raise RateLimitedError(detail + " (rate limited)")
        raise PermanentError(detail)


def _message(data: dict[str, Any]) -> str:
    """The first message-like field of the answer, cut to MESSAGE_LIMIT characters."""
    for key in MESSAGE_FIELDS:
        value = data.get(key)
        if value not in (None, "", {}, []):
            text = _text(value)
            return text if len(text) <= MESSAGE_LIMIT else text[:MESSAGE_LIMIT] + "…"
    return ""
