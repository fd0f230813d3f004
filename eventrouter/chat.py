"""Shared machinery of chat sinks (DingTalk, WeCom, ...): never a flood, never silent, readable.

A chat robot accepts about 20 messages a minute, and people read every one of them. So a chat sink
does not post one message per event; :class:`ChatFlow` decides, per robot:

- **Repeats** (same involved object kind/namespace/name + reason, e.g. a ``count`` bump): the first
  occurrence is sent, then at most one reminder per ``repeat_interval`` with the current count;
  ``repeat_interval=0`` sends every occurrence. Memory is bounded and entries expire.
- **Rate**: at most ``rate_limit`` messages per minute (what was actually posted, digests included).
  One slot of each window is kept for a digest, so individual events use ``rate_limit - 1``.
- **Digest**: events beyond the budget are not dropped. They are folded into one digest message
  ("37 more Warning events: BackOff x30 in ns a, ...") that :meth:`ChatFlow.tick` posts when the
  window allows. While a digest is pending, new events join it, so messages keep their order.

The flow never sleeps and starts no threads: the router calls ``Sink.tick()`` at least every
``flush_interval``. Time comes from an injectable clock, so tests need no sleeping.

:class:`ChatLayout` renders the default text layout (kube-eventer's ``Level:/Kind:/Namespace:/Name:/
Reason:/Timestamp:/Message:`` shape, labels first, then ``Count``, ``Cluster``, ``Host``), a
markdown layout, digests, or the user's Jinja2 template; :func:`truncate_bytes` keeps a message
under a size limit with a visible marker.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any

import orjson

from eventrouter.errors import PartialError, PermanentError, RetryableError, SinkError
from eventrouter.event import Event
from eventrouter.logutil import ThrottledLog
from eventrouter.options import Duration, Option
from eventrouter.templates import EventTemplate, parse_tz, template_source

log = logging.getLogger("eventrouter.chat")

RATE_WINDOW = 60.0
TRUNCATED = "\n… (truncated)"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S %Z"

CHAT_OPTIONS: tuple[Option, ...] = (
    Option("label", list, default=[], split_commas=False,
           help="a line shown first in every message (repeatable; one label per label=)"),
    Option("msg_type", str, default="text", choices=("text", "markdown"), help="message layout"),
    Option("tz", str, default="UTC", help="time zone of the times shown (IANA name, e.g. Asia/Shanghai)"),
    Option("template", str, help="Jinja2 template of the message content (replaces the default layout)"),
    Option("template_file", str, help="file holding the Jinja2 template (read at start-up)"),
    Option("repeat_interval", Duration, default=Duration(1800.0), min=0,
           help="repeats of the same object+reason: one reminder per interval (0: send every occurrence)"),
    Option("rate_limit", int, default=20, min=0,
           help="messages per minute to this robot, digest included (0: no limit)"),
)


def truncate_bytes(text: str, limit: int, marker: str = TRUNCATED,
                   measure: Callable[[str], int] | None = None) -> str:
    """``text`` if it fits in ``limit`` (UTF-8 bytes, or ``measure``), else its head plus ``marker``."""
    size = measure or (lambda s: len(s.encode()))
    if size(text) <= limit:
        return text
    low, high = 0, len(text)  # longest prefix that fits with the marker: binary search on characters
    while low < high:
        mid = (low + high + 1) // 2
        if size(text[:mid] + marker) <= limit:
            low = mid
        else:
            high = mid - 1
    return text[:low] + marker


def json_size(text: str) -> int:
    """Bytes ``text`` takes as a JSON string (escapes included): for limits on the request body."""
    return len(orjson.dumps(text))


# ---- repeats --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Notice:
    """Why an event is posted: first occurrence, or a reminder after ``suppressed`` repeats."""

    reminder: bool = False
    suppressed: int = 0


def repeat_key(event: Event) -> tuple[str, str, str, str]:
    obj = event.involved_object
    return (obj.kind, obj.namespace or event.namespace, obj.name, event.reason)


class RepeatFilter:
    """Remembers when each object+reason was last shown; bounded (oldest forgotten first)."""

    def __init__(self, interval: float, max_keys: int = 10000) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._seen: OrderedDict[tuple[str, str, str, str], list[float]] = OrderedDict()  # key -> [time, held]

    def check(self, event: Event, now: float) -> Notice | None:
        """A Notice if the event is worth a message now; None if it is a repeat to hold back."""
        if self.interval <= 0:
            return Notice()
        entry = self._seen.get(repeat_key(event))
        if entry is None:
            return Notice()
        if now - entry[0] < self.interval:
            entry[1] += 1
            return None
        return Notice(reminder=True, suppressed=int(entry[1]))

    def commit(self, event: Event, now: float) -> None:
        """The event was shown (alone or in a digest): repeats are held back from now on."""
        if self.interval <= 0:
            return
        key = repeat_key(event)
        self._seen[key] = [now, 0]
        self._seen.move_to_end(key)
        seen = self._seen
        while seen:
            oldest = next(iter(seen.values()))
            if now - oldest[0] < self.interval and len(seen) <= self.max_keys:
                break
            seen.popitem(last=False)

    def __len__(self) -> int:
        return len(self._seen)


# ---- rate -----------------------------------------------------------------------------------------
class RateWindow:
    """A sliding window of post times: at most ``limit`` posts in any ``window`` seconds."""

    def __init__(self, limit: int, window: float = RATE_WINDOW) -> None:
        self.limit = limit
        self.window = window
        self._posts: deque[float] = deque()
        self._paused_until = 0.0

    def used(self, now: float) -> int:
        while self._posts and now - self._posts[0] >= self.window:
            self._posts.popleft()
        return len(self._posts)

    def room(self, now: float) -> int:
        """Posts allowed right now (a large number when there is no limit)."""
        if now < self._paused_until:
            return 0
        if self.limit <= 0:
            return 1 << 30
        return max(0, self.limit - self.used(now))

    def record(self, now: float) -> None:
        if self.limit > 0:
            self._posts.append(now)

    def pause(self, now: float, seconds: float) -> None:
        """The server said "too fast": post nothing until ``seconds`` have passed."""
        self._paused_until = max(self._paused_until, now + seconds)


# ---- digest ---------------------------------------------------------------------------------------
_MAX_GROUPS = 200
_NAMES_PER_GROUP = 3


@dataclass
class _Group:
    count: int = 0
    names: list[str] = field(default_factory=list)
    more_names: int = 0


class Digest:
    """Events folded together because the rate budget was spent; bounded in memory."""

    def __init__(self) -> None:
        self.total = 0
        self.types: Counter[str] = Counter()
        self.groups: dict[tuple[str, str], _Group] = {}  # (reason, namespace) -> group
        self.other = 0  # events of groups beyond _MAX_GROUPS
        self.first: Event | None = None
        self.since: datetime | None = None
        self.until: datetime | None = None

    def add(self, event: Event) -> None:
        self.total += 1
        self.types[event.type or "Unknown"] += 1
        if self.first is None:
            self.first = event
        when = event.last_timestamp
        self.since = when if self.since is None or when < self.since else self.since
        self.until = when if self.until is None or when > self.until else self.until
        obj = event.involved_object
        key = (event.reason or "(no reason)", obj.namespace or event.namespace)
        group = self.groups.get(key)
        if group is None:
            if len(self.groups) >= _MAX_GROUPS:
                self.other += 1
                return
            group = self.groups[key] = _Group()
        group.count += 1
        name = f"{obj.kind}/{obj.name}" if obj.kind else obj.name
        if name in group.names:
            return
        if len(group.names) < _NAMES_PER_GROUP:
            group.names.append(name)
        else:
            group.more_names += 1

    def ranked(self) -> list[tuple[str, str, _Group]]:
        """Groups, largest first (ties in arrival order)."""
        items = sorted(self.groups.items(), key=lambda item: -item[1].count)
        return [(reason, ns, group) for (reason, ns), group in items]

    def headline(self, limit: int = 5) -> str:
        """``37 more Warning events: BackOff x30 in ns a, FailedScheduling x7 in ns b, ...``"""
        kinds = " and ".join(f"{n} {t}" for t, n in self.types.most_common()) if len(self.types) > 1 else ""
        what = self.types.most_common(1)[0][0] if len(self.types) == 1 else ""
        noun = "event" if self.total == 1 else "events"
        head = f"{self.total} more {what} {noun}" if what else f"{self.total} more {noun} ({kinds})"
        parts = [f"{reason} x{g.count} {_where(ns)}" for reason, ns, g in self.ranked()[:limit]]
        rest = len(self.groups) - limit
        if rest > 0:
            parts.append(f"and {rest} more groups")
        if self.other:
            parts.append(f"{self.other} in other groups")
        return head + ": " + ", ".join(parts)


def _where(namespace: str) -> str:
    return f"in ns {namespace}" if namespace else "(cluster-scoped)"


# ---- layout ---------------------------------------------------------------------------------------
class ChatLayout:
    """Message text for events and digests: the default layouts or the user's template."""

    def __init__(self, sink: str, opts: Any, *, line_break: str = "\n\n", cluster_id: str = "") -> None:
        self.msg_type: str = opts["msg_type"]
        self.labels: list[str] = list(opts["label"])
        self.tz: tzinfo = parse_tz(sink, opts.get("tz"))
        self.cluster_id = cluster_id
        self.region = ""  # shown with the cluster (DingTalk's kube-eventer option region=)
        self.line_break = line_break  # markdown line break (DingTalk needs a blank line)
        source = template_source(sink, opts)
        self.template = EventTemplate(sink, source, tz=self.tz) if source else None
        self._template_errors = ThrottledLog(logging.getLogger(f"eventrouter.sinks.{sink}"), 300.0)

    def time(self, when: datetime | None) -> str:
        if when is None:
            return ""
        return when.astimezone(self.tz).strftime(TIME_FORMAT)

    def cluster(self, event: Event | None) -> str:
        return (event.cluster if event else "") or self.cluster_id

    def title(self, event: Event) -> str:
        obj = event.involved_object
        where = f"{obj.namespace}/{obj.name}" if obj.namespace else obj.name
        return f"[{event.type or 'Event'}] {event.reason} {obj.kind} {where}"[:120]

    def event(self, event: Event, notice: Notice | None = None) -> str:
        notice = notice or Notice()
        if self.template is not None:
            try:
                return self.template.render(event, labels=self.labels, reminder=notice.reminder,
                                            suppressed=notice.suppressed, cluster=self.cluster(event))
            except Exception as exc:
                # checked on a sample at start-up, but this event's data broke it: the alert still goes out
                obj = event.involved_object
                self._template_errors.log(
                    logging.WARNING, "template", "the template does not render for %s %s (%s: %s); "
                    "this message uses the default layout", obj.kind or "event", obj.name or event.name,
                    type(exc).__name__, exc)
        if self.msg_type == "markdown":
            return self._event_markdown(event, notice)
        return self._event_text(event, notice)

    def _count(self, event: Event, notice: Notice) -> str:
        if not notice.reminder:
            return str(event.count)
        held = f"; {notice.suppressed} updates held back since the last message" if notice.suppressed else ""
        return f"{event.count} (reminder: still happening{held})"

    def _event_text(self, event: Event, notice: Notice) -> str:
        obj = event.involved_object
        lines = [*self.labels,
                 f"Level:{event.type}",
                 f"Kind:{obj.kind}",
                 f"Namespace:{obj.namespace or event.namespace}",
                 f"Name:{obj.name}",
                 f"Reason:{event.reason}",
                 f"Timestamp:{self.time(event.last_timestamp)}",
                 f"Message:{event.message}",
                 f"Count:{self._count(event, notice)}"]
        if event.count > 1 and event.first_timestamp != event.last_timestamp:
            lines.append(f"FirstTimestamp:{self.time(event.first_timestamp)}")
        if self.cluster(event):
            lines.append(f"Cluster:{self.cluster(event)}")
        if self.region:
            lines.append(f"Region:{self.region}")
        if event.source_host:
            lines.append(f"Host:{event.source_host}")
        return "\n".join(lines)

    def _event_markdown(self, event: Event, notice: Notice) -> str:
        obj = event.involved_object
        head = f"### {'⚠️ ' if event.type == 'Warning' else ''}{event.type} {event.reason}"
        lines = [head, *self.labels]
        if self.cluster(event):
            lines.append(f"**Cluster:** {self.cluster(event)}")
        if self.region:
            lines.append(f"**Region:** {self.region}")
        lines += [f"**Level:** {event.type}",
                  f"**Kind:** {obj.kind}",
                  f"**Namespace:** {obj.namespace or event.namespace or '-'}",
                  f"**Name:** {obj.name}",
                  f"**Reason:** {event.reason}",
                  f"**Count:** {self._count(event, notice)}",
                  f"**First seen:** {self.time(event.first_timestamp)}",
                  f"**Last seen:** {self.time(event.last_timestamp)}"]
        if event.source_host:
            lines.append(f"**Host:** {event.source_host}")
        lines.append("> " + event.message.replace("\n", " "))
        return self.line_break.join(lines)

    def digest(self, digest: Digest, rate_limit: int) -> str:
        markdown = self.msg_type == "markdown"
        cluster = self.cluster(digest.first)
        lines: list[str] = []
        if markdown:
            lines.append(f"### {digest.headline(3)}")
        lines += self.labels
        if cluster:
            lines.append(f"**Cluster:** {cluster}" if markdown else f"Cluster:{cluster}")
        if not markdown:
            lines.append(digest.headline())
        for reason, ns, group in digest.ranked()[:20]:
            names = ", ".join(group.names) + (f" and {group.more_names} more" if group.more_names else "")
            lines.append(f"- {reason} x{group.count} {_where(ns)}: {names}")
        rest = sum(g.count for _, _, g in digest.ranked()[20:]) + digest.other
        if rest:
            lines.append(f"- {rest} more in other groups")
        lines.append(f"From {self.time(digest.since)} to {self.time(digest.until)}; one message instead of "
                     f"{digest.total} to stay under {rate_limit} messages a minute.")
        return (self.line_break if markdown else "\n").join(lines)


# ---- the flow -------------------------------------------------------------------------------------
class RateLimitedError(RetryableError):
    """The robot said "too fast" (DingTalk 130101, WeCom 45009): the flow pauses its window too."""

    def __init__(self, message: str, retry_after: float = RATE_WINDOW) -> None:
        super().__init__(message, retry_after=retry_after)


PostEvent = Callable[[Event, Notice], None]
PostDigest = Callable[[Digest], None]


class ChatFlow:
    """Per-robot flow control: repeats, rate window and digest. One per sink instance."""

    def __init__(self, *, rate_limit: int = 20, repeat_interval: float = 1800.0, window: float = RATE_WINDOW,
                 max_keys: int = 10000, clock: Callable[[], float] = time.monotonic, sink: str = "") -> None:
        self.log = logging.getLogger(f"eventrouter.sinks.{sink}") if sink else log
        self.rate_limit = rate_limit
        self.rate = RateWindow(rate_limit, window)
        self.repeats = RepeatFilter(repeat_interval, max_keys)
        self.clock = clock
        self.digest: Digest | None = None
        self.posted = 0  # messages posted (events and digests)
        self.suppressed = 0  # repeats held back

    def _room_for_event(self, now: float) -> bool:
        # one slot of every window stays free for a digest, so the overflow is never silent
        return self.digest is None and self.rate.room(now) > (1 if self.rate_limit > 0 else 0)

    def send(self, batch: Sequence[Event], post_event: PostEvent) -> None:
        """Post, hold back or fold each event. Raises PartialError so delivered events are not re-sent."""
        rejected: list[Event] = []
        error: SinkError | None = None
        for index, event in enumerate(batch):
            now = self.clock()
            notice = self.repeats.check(event, now)
            if notice is None:
                self.suppressed += 1
                continue
            if not self._room_for_event(now):
                self.digest = self.digest or Digest()
                self.digest.add(event)
                self.repeats.commit(event, now)
                continue
            try:
                self._post(functools.partial(post_event, event, notice))
            except RetryableError as exc:
                raise PartialError(str(exc), retry=batch[index:], rejected=rejected,
                                   retry_after=exc.retry_after) from exc
            except PermanentError as exc:
                rejected.append(event)
                error = exc
                continue
            except Exception as exc:  # a bug (not a SinkError): retried as the router does, but never
                # the messages already posted from this batch
                raise PartialError(f"{type(exc).__name__}: {exc}", retry=batch[index:], rejected=rejected) from exc
            self.repeats.commit(event, self.clock())
        if rejected:
            if len(rejected) == len(batch):
                raise PermanentError(str(error)) from error
            raise PartialError(f"{len(rejected)} messages rejected: {error}", rejected=rejected) from error

    def _post(self, action: Callable[[], None]) -> None:
        """Run one post and account for it in the rate window."""
        try:
            action()
        except RateLimitedError as exc:
            self.rate.pause(self.clock(), exc.retry_after or self.rate.window)
            raise
        except PermanentError:
            self.rate.record(self.clock())  # the server answered: it counted the message
            raise
        self.rate.record(self.clock())
        self.posted += 1

    def pending(self) -> int:
        """Events waiting in the digest."""
        return self.digest.total if self.digest else 0

    def tick(self, post_event: PostEvent, post_digest: PostDigest) -> None:
        """Post the pending digest if the window allows; a digest of one event is posted as that event."""
        digest = self.digest
        if digest is None or self.rate.room(self.clock()) < 1:
            return
        try:
            if digest.total == 1 and digest.first is not None:
                self._post(lambda: post_event(digest.first, Notice()))  # type: ignore[arg-type]
            else:
                self._post(lambda: post_digest(digest))
        except PermanentError:
            self.digest = None  # it will never be accepted; the router logs the error
            raise
        self.digest = None

    def close(self, post_event: PostEvent, post_digest: PostDigest) -> None:
        """Last chance for a pending digest; if the window is full, say in the log what it held."""
        digest = self.digest
        if digest is None:
            return
        try:
            self.tick(post_event, post_digest)
        except SinkError as exc:
            self.log.warning("digest not sent at shutdown (%s): %s", type(exc).__name__, exc)
        if self.digest is not None:
            self.log.warning("digest not sent at shutdown (rate limit reached): %s", digest.headline())
            self.digest = None


__all__ = [
    "CHAT_OPTIONS",
    "ChatFlow",
    "ChatLayout",
    "Digest",
    "Notice",
    "RateLimitedError",
    "RateWindow",
    "RepeatFilter",
    "json_size",
    "truncate_bytes",
]
