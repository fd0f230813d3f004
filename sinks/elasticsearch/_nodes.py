"""The node list: round robin over the node URLs, with a cool-down for a node that failed, and the
password of a ``http://user:pass@host`` node kept aside to be masked."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

NODE_COOLDOWN = 30.0  # seconds a node that failed is skipped while another one is available


class Nodes:
    """Round robin over the node URLs, skipping a node that failed in the last NODE_COOLDOWN seconds."""

    def __init__(self, urls: Sequence[str], clock: Any = time.monotonic) -> None:
        self.urls = list(urls)
        self._failed: dict[str, float] = {}
        self._next = 0
        self._clock = clock

    def pick(self) -> str:
        now = self._clock()
        for step in range(len(self.urls)):
            url = self.urls[(self._next + step) % len(self.urls)]
            if now - self._failed.get(url, -NODE_COOLDOWN) >= NODE_COOLDOWN:
                self._next = (self._next + step + 1) % len(self.urls)
                return url
        # every node failed recently: try the one that failed longest ago
        return min(self.urls, key=lambda u: self._failed[u])

    def failed(self, url: str) -> None:
        self._failed[url] = self._clock()

    def ok(self, url: str) -> None:
        self._failed.pop(url, None)

    def any_healthy(self) -> bool:
        now = self._clock()
        return any(now - self._failed.get(u, -NODE_COOLDOWN) >= NODE_COOLDOWN for u in self.urls)


def split_userinfo(url: str) -> tuple[str, str | None]:
    """``http://user:pass@h:9200/`` -> (``http://user:pass@h:9200``, ``pass``): httpx sends the userinfo as
    basic auth; the password is kept aside to mask it in messages."""
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    password = None
    if "@" in authority:
        userinfo, _, authority = authority.rpartition("@")
        password = userinfo.partition(":")[2] or None
        url = f"{scheme}{sep}{userinfo}@{authority}{slash}{path}"
    return url.rstrip("/"), password
