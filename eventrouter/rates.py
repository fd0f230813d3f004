"""Chat platforms limit messages per minute *and* per second: ``rate=100/min,5/s`` (Feishu/Lark),
``20/min,1/s`` (a Slack incoming webhook), ``20/min,4/s`` (a Teams Workflows webhook).

:func:`parse_rates` reads such an option; :class:`ChatRates` is the rate window of a
:class:`~eventrouter.chat.ChatFlow` that honours all of them (``ChatFlow.rate``, see :func:`use_rates`):

- the longest window is the flow's budget: one slot of it stays free for the digest, as with one window;
- a shorter window is a burst cap: when it is full, the event is folded into the digest like any event
  over budget, and the digest goes out once the short window has room again (at the next ``tick``).

So a burst gives a few messages and one digest instead of a queue of posts the platform would refuse,
and nothing sleeps and nothing is retried to pace the posts.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import Any

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$", re.IGNORECASE)
_UNIT = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0, "h": 3600.0, "hour": 3600.0}


@dataclass(frozen=True)
class Rate:
    limit: int
    window: float  # seconds

    def __str__(self) -> str:
        unit = {1.0: "s", 60.0: "min", 3600.0: "h"}.get(self.window, f"{self.window:g}s")
        return f"{self.limit}/{unit}"


def parse_rates(text: str) -> tuple[Rate, ...]:
    """``"100/min,5/s"`` -> (Rate(100, 60), Rate(5, 1)), longest window first. ValueError says what is wrong."""
    rates = []
    for part in text.split(","):
        match = _RATE.match(part)
        if not match:
            raise ValueError(f"{part.strip()!r} is not a rate; write N/min, N/s or N/h, several separated by "
                             "commas (100/min,5/s)")
        rate = Rate(int(match.group(1)), _UNIT[match.group(2).lower()])
        if rate.limit < 1:
            raise ValueError(f"{part.strip()!r}: the number of messages must be at least 1")
        rates.append(rate)
    rates.sort(key=lambda r: -r.window)
    if len({r.window for r in rates}) != len(rates):
        raise ValueError(f"{text!r} gives two rates for the same period")
    if rates[0].limit < 2:
        raise ValueError(f"{rates[0]} leaves no message for single events (one of each "
                         f"{rates[0].window:g} s is kept for the digest); give at least 2")
    return tuple(rates)


class _Window:
    """Post times within ``window`` seconds."""

    def __init__(self, rate: Rate) -> None:
        self.limit = rate.limit
        self.window = rate.window
        self._posts: deque[float] = deque()

    def room(self, now: float) -> int:
        posts = self._posts
        while posts and now - posts[0] >= self.window:
            posts.popleft()
        return max(0, self.limit - len(posts))


class ChatRates:
    """Several sliding windows as one: the same interface as the flow's single window (room, record,
    pause, paused_until, posts, used, limit, window)."""

    def __init__(self, rates: tuple[Rate, ...]) -> None:
        self.rates = rates
        self._windows = [_Window(rate) for rate in rates]  # longest first
        self.limit = rates[0].limit
        self.window = rates[0].window
        self.paused_until = 0.0

    def used(self, now: float) -> int:
        main = self._windows[0]
        return main.limit - main.room(now)

    def room(self, now: float) -> int:
        """Posts allowed now by the budget; 0 while a burst cap is full. The flow posts a single event only
        when this is 2 or more (one slot of the budget is the digest's), a digest when it is 1 or more."""
        if now < self.paused_until:
            return 0
        room = self._windows[0].room(now)
        for window in self._windows[1:]:
            burst = window.room(now)
            if burst == 0:
                return 0
            room = min(room, burst + 1)  # a burst cap keeps no digest slot of its own
        return room

    def record(self, now: float) -> None:
        for window in self._windows:
            window._posts.append(now)

    def pause(self, now: float, seconds: float) -> None:
        """The service said "too fast": post nothing until ``seconds`` have passed."""
        self.paused_until = max(self.paused_until, now + seconds)

    def posts(self, now: float) -> list[float]:
        """Post times still in the budget window (what ChatFlow.save carries over a restart)."""
        self._windows[0].room(now)
        return list(self._windows[0]._posts)


def use_rates(flow: Any, rates: tuple[Rate, ...]) -> None:
    """Make ``flow`` (a ChatFlow) honour every one of ``rates``; its budget is the longest window's."""
    flow.rate = ChatRates(rates)
    flow.rate_limit = rates[0].limit
