"""Shared machinery of chat sinks (DingTalk, WeCom, Slack, ...): never a flood, never silent, root cause first.

A chat robot accepts about 20 messages a minute, and people read every one of them. So a chat sink
does not post one message per event; :class:`ChatFlow` decides, per robot:

- **Repeats** (same involved object kind/namespace/name + reason, e.g. a ``count`` bump): the first
  occurrence is sent, then at most one reminder per ``repeat_interval`` saying how many updates were
  held back; ``repeat_interval=0`` sends every occurrence. Memory is bounded (:class:`RepeatFilter`).
- **Rank**: what on-call needs first goes out first: cluster-scoped and node-level problems
  (:func:`is_urgent`), then reasons not seen lately, then the rest (see :class:`ChatFlow`).
- **Rate**: at most ``rate_limit`` messages per minute (what was actually posted, digests included),
  part of the window kept for what is urgent or new.
- **Digest**: events not posted alone are never dropped: they are folded into a :class:`Digest`, ranked
  the same way and posted by :meth:`ChatFlow.tick` in parts (:class:`DigestPart`) that each fit one
  message and together name every group. What the window does not allow at shutdown is kept in the
  sink's ``state_dir`` and posted first after the restart.

The flow never sleeps and starts no threads: the router calls ``Sink.tick()`` at least every
``flush_interval``. Time comes from an injectable clock, so tests need no sleeping. :class:`ChatStats`
counts messages and events apart.

:mod:`eventrouter.chat_layout` renders the messages (kube-eventer's text layout, markdown, templates,
digest parts, ``tz``); :class:`eventrouter.chat_transport.ChatSink` is the HTTP side every chat sink shares.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from eventrouter.errors import PartialError, PermanentError, RetryableError, SinkError
from eventrouter.event import Event
from eventrouter.options import Duration, Option

log = logging.getLogger("eventrouter.chat")

RATE_WINDOW = 60.0

CHAT_OPTIONS: tuple[Option, ...] = (
    Option("label", list, default=[], split_commas=False,
           help="a line shown first in every message (repeatable; one label per label=)"),
    Option("msg_type", str, default="text", choices=("text", "markdown"), help="message layout"),
    Option("tz", str, help="time zone of the times shown (IANA name, e.g. Asia/Shanghai); default: the TZ "
           "environment variable (kube-eventer's manifests set TZ=Asia/Shanghai), else UTC"),
    Option("template", str, help="Jinja2 template of the message content (replaces the default layout)"),
    Option("template_file", str, help="file holding the Jinja2 template (read at start-up)"),
    Option("repeat_interval", Duration, default=Duration(1800.0), min=0,
           help="repeats of the same object+reason: one reminder per interval (0: send every occurrence)"),
    Option("rate_limit", int, default=20, min=0,
           help="messages per minute to this robot, digest included (0: no limit)"),
)


# ---- repeats --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Notice:
    """Why an event is posted: first occurrence, or a reminder after ``suppressed`` repeats."""

    reminder: bool = False
    suppressed: int = 0


RepeatKey = tuple[str, str, str, str]


def repeat_key(event: Event) -> RepeatKey:
    """The problem an event is about: involved object kind/namespace/name + reason."""
    obj = event.involved_object
    return (obj.kind, obj.namespace, obj.name, event.reason)


# Kubernetes keeps an Event about an hour (the API server's --event-ttl): a problem silent that long has
# been forgotten by the cluster too, so its next event is news again rather than a reminder
FORGET_AFTER = 3600.0


class RepeatFilter:
    """Remembers when each object+reason was last shown and how many repeats were held back since.

    Bounded: at most ``max_keys`` problems (the least recently active forgotten first), and a problem
    with no event for ``max(interval, FORGET_AFTER)`` is forgotten. A problem is never forgotten merely
    because ``interval`` passed: its next repeat is a reminder that says how many updates were held back.
    """

    def __init__(self, interval: float, max_keys: int = 10000) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self.forget_after = max(interval, FORGET_AFTER)
        # key -> [shown at, repeats held back, last activity]; ordered by last activity
        self._seen: OrderedDict[RepeatKey, list[float]] = OrderedDict()

    def check(self, event: Event, now: float) -> Notice | None:
        """A Notice if the event is worth a message now; None if it is a repeat to hold back."""
        if self.interval <= 0:
            return Notice()
        key = repeat_key(event)
        entry = self._seen.get(key)
        if entry is None or now - entry[2] >= self.forget_after:
            return Notice()
        entry[2] = now
        self._seen.move_to_end(key)
        if now - entry[0] < self.interval:
            entry[1] += 1
            return None
        return Notice(reminder=True, suppressed=int(entry[1]))

    def commit(self, event: Event, now: float) -> None:
        """The event was shown (alone or in a digest): repeats are held back from now on."""
        if self.interval <= 0:
            return
        key = repeat_key(event)
        self._seen[key] = [now, 0, now]
        self._seen.move_to_end(key)
        seen = self._seen
        while seen:
            oldest = next(iter(seen.values()))
            if now - oldest[2] < self.forget_after and len(seen) <= self.max_keys:
                break
            seen.popitem(last=False)

    def __len__(self) -> int:
        return len(self._seen)

    def to_json(self, now: float, epoch: float) -> list[list[Any]]:
        """The problems remembered, times as epoch seconds (to carry them over a restart)."""
        return [[*key, epoch - (now - shown), int(held), epoch - (now - active)]
                for key, (shown, held, active) in self._seen.items()]

    def restore(self, items: list[list[Any]], now: float, epoch: float) -> None:
        """Take back :meth:`to_json`: a problem shown before the restart is still held back or reminded."""
        for kind, namespace, name, reason, shown, held, active in items:
            if epoch - float(active) < self.forget_after and self.interval > 0:
                key = (str(kind), str(namespace), str(name), str(reason))
                self._seen[key] = [now - (epoch - float(shown)), int(held), now - (epoch - float(active))]
        while len(self._seen) > self.max_keys:
            self._seen.popitem(last=False)


# ---- rate -----------------------------------------------------------------------------------------
class RateWindow:
    """A sliding window of post times: at most ``limit`` posts in any ``window`` seconds."""

    def __init__(self, limit: int, window: float = RATE_WINDOW) -> None:
        self.limit = limit
        self.window = window
        self._posts: deque[float] = deque()
        self.paused_until = 0.0

    def used(self, now: float) -> int:
        while self._posts and now - self._posts[0] >= self.window:
            self._posts.popleft()
        return len(self._posts)

    def room(self, now: float) -> int:
        """Posts allowed right now (a large number when there is no limit)."""
        if now < self.paused_until:
            return 0
        if self.limit <= 0:
            return 1 << 30
        return max(0, self.limit - self.used(now))

    def record(self, now: float) -> None:
        if self.limit > 0:
            self._posts.append(now)

    def pause(self, now: float, seconds: float) -> None:
        """The server said "too fast": post nothing until ``seconds`` have passed."""
        self.paused_until = max(self.paused_until, now + seconds)

    def posts(self, now: float) -> list[float]:
        """Times of the posts still in the window (to carry them over a restart)."""
        self.used(now)
        return list(self._posts)


# ---- what on-call needs first ---------------------------------------------------------------------
URGENT, NEW, KNOWN = 0, 1, 2  # tiers: lower goes out first
# reasons about a node (some are reported on the node's pods): the likely root cause of a pod storm
NODE_REASONS = frozenset({
    "NodeNotReady", "NodeNotSchedulable", "NodeHasDiskPressure", "NodeHasMemoryPressure", "NodeHasPIDPressure",
    "NodeHasInsufficientMemory", "NodeHasInsufficientPID", "NodeNetworkUnavailable", "NodeShutdown",
    "Rebooted", "SystemOOM", "EvictionThresholdMet", "FreeDiskSpaceFailed", "ImageGCFailed", "ContainerGCFailed",
    "KubeletNotReady", "TaintManagerEviction", "NodeControllerEviction", "DeletingNode", "RemovingNode",
})


def is_urgent(event: Event) -> bool:
    """Cluster-scoped objects (Node, PersistentVolume, ...) and node-level reasons: a probable root cause."""
    return event.is_cluster_scoped or event.involved_object.kind == "Node" or event.reason in NODE_REASONS


def where(namespace: str) -> str:
    """``in ns a``, or ``(cluster-scoped)``: a cluster-scoped object is never given a namespace."""
    return f"in ns {namespace}" if namespace else "(cluster-scoped)"


# ---- digest ---------------------------------------------------------------------------------------
_MAX_GROUPS = 5000  # memory bound; beyond it groups are counted in `other` (and still said so)
_NAMES_PER_GROUP = 3
GroupKey = tuple[str, str]  # (reason, involved object's namespace; "" when cluster-scoped)


@dataclass
class DigestGroup:
    """Events of one reason in one namespace (or cluster-scoped), folded into a digest."""

    reason: str
    namespace: str
    tier: int = KNOWN
    count: int = 0
    names: list[str] = field(default_factory=list)
    more_names: int = 0
    types: Counter[str] = field(default_factory=Counter)
    order: int = 0  # arrival order, for stable ranking

    def line(self) -> str:
        names = ", ".join(self.names) + (f" and {self.more_names} more" if self.more_names else "")
        return f"- {self.reason} x{self.count} {where(self.namespace)}" + (f": {names}" if names else "")

    def to_json(self) -> dict[str, Any]:
        return {"reason": self.reason, "namespace": self.namespace, "tier": self.tier, "count": self.count,
                "names": self.names, "more_names": self.more_names, "types": dict(self.types)}

    @classmethod
    def from_json(cls, data: dict[str, Any], order: int) -> DigestGroup:
        return cls(str(data["reason"]), str(data["namespace"]), int(data["tier"]), int(data["count"]),
                   [str(n) for n in data["names"]], int(data["more_names"]),
                   Counter({str(k): int(v) for k, v in dict(data["types"]).items()}), order)


class Digest:
    """Events folded together because the rate budget was spent; bounded in memory.

    Groups are ranked by what on-call needs first (:meth:`ranked`): urgent (cluster-scoped and node
    problems), then reasons not seen before, then the rest by count. A digest may go out in several
    messages (parts); :meth:`remove` takes out the groups a posted part named.
    """

    def __init__(self) -> None:
        self.groups: dict[GroupKey, DigestGroup] = {}
        self.other = 0  # events beyond _MAX_GROUPS groups
        self.first: Event | None = None  # set while the digest holds exactly what it was first given
        self.cluster = ""
        self.since: datetime | None = None
        self.until: datetime | None = None
        self._order = 0

    @property
    def total(self) -> int:
        return sum(g.count for g in self.groups.values()) + self.other

    @property
    def types(self) -> Counter[str]:
        types: Counter[str] = Counter()
        for group in self.groups.values():
            types.update(group.types)
        return types

    def add(self, event: Event, tier: int = KNOWN) -> None:
        self.first = event if not self.groups and not self.other else None
        self.cluster = self.cluster or event.cluster
        when = event.last_timestamp
        self.since = when if self.since is None or when < self.since else self.since
        self.until = when if self.until is None or when > self.until else self.until
        obj = event.involved_object
        key = (event.reason or "(no reason)", obj.namespace)
        group = self.groups.get(key)
        if group is None:
            if len(self.groups) >= _MAX_GROUPS:
                self.other += 1
                return
            self._order += 1
            group = self.groups[key] = DigestGroup(key[0], key[1], tier=tier, order=self._order)
        group.tier = min(group.tier, tier)
        group.count += 1
        group.types[event.type or "Unknown"] += 1
        name = f"{obj.kind}/{obj.name}" if obj.kind else obj.name
        if name in group.names:
            return
        if len(group.names) < _NAMES_PER_GROUP:
            group.names.append(name)
        else:
            group.more_names += 1

    def ranked(self) -> list[DigestGroup]:
        """Groups in the order on-call needs them: urgent, new reasons, then the largest first."""
        return sorted(self.groups.values(), key=lambda g: (g.tier, -g.count, g.order))

    @property
    def urgent(self) -> bool:
        """Holds a group that must not wait for the digest spacing (urgent or a new reason)."""
        return any(g.tier < KNOWN for g in self.groups.values())

    def remove(self, keys: Sequence[GroupKey], other: bool = False) -> None:
        for key in keys:
            self.groups.pop(key, None)
        if other:
            self.other = 0
        self.first = None

    def __bool__(self) -> bool:
        return bool(self.groups) or self.other > 0

    def headline(self, limit: int = 5, groups: Sequence[DigestGroup] | None = None, other: int | None = None) -> str:
        """``37 more Warning events: BackOff x30 in ns a, FailedScheduling x7 in ns b, ...`` (of ``groups``)."""
        groups = self.ranked() if groups is None else list(groups)
        other = self.other if other is None else other
        types: Counter[str] = Counter()
        for group in groups:
            types.update(group.types)
        total = sum(g.count for g in groups) + other
        noun = "event" if total == 1 else "events"
        if len(types) == 1:
            head = f"{total} more {next(iter(types))} {noun}"
        else:
            head = f"{total} more {noun} (" + " and ".join(f"{n} {t}" for t, n in types.most_common()) + ")"
        parts = [f"{g.reason} x{g.count} {where(g.namespace)}" for g in groups[:limit]]
        if len(groups) > limit:
            more = len(groups) - limit
            parts.append(f"and {more} more {'group' if more == 1 else 'groups'}")
        if other:
            parts.append(f"{other} in groups beyond {_MAX_GROUPS}")
        return head + ": " + ", ".join(parts)

    # ---- kept across a restart ----------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"groups": [g.to_json() for g in self.ranked()], "other": self.other, "cluster": self.cluster,
                "since": self.since.isoformat() if self.since else None,
                "until": self.until.isoformat() if self.until else None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Digest:
        digest = cls()
        for order, item in enumerate(data.get("groups") or (), 1):
            group = DigestGroup.from_json(item, order)
            digest.groups[(group.reason, group.namespace)] = group
        digest._order = len(digest.groups)
        digest.other = int(data.get("other") or 0)
        digest.cluster = str(data.get("cluster") or "")
        digest.since = datetime.fromisoformat(data["since"]) if data.get("since") else None
        digest.until = datetime.fromisoformat(data["until"]) if data.get("until") else None
        return digest


class DigestPart(Digest):
    """One message of a digest: a Digest of the groups it names (removed from the whole once posted),
    with its ``text`` and ``title`` rendered to fit one message. ``events`` is the events it names."""

    def __init__(self, whole: Digest, groups: Sequence[DigestGroup], other: int, text: str = "",
                 title: str = "") -> None:
        super().__init__()
        self.groups = {(g.reason, g.namespace): g for g in groups}
        self.other = other
        self.cluster, self.since, self.until = whole.cluster, whole.since, whole.until
        self.first = whole.first if len(groups) == len(whole.groups) and other == whole.other else None
        self.text = text or self.headline(len(groups))
        self.title = title or self.headline(2)

    @property
    def keys(self) -> list[GroupKey]:
        return list(self.groups)

    @property
    def events(self) -> int:
        return self.total


# ---- the flow -------------------------------------------------------------------------------------
class RateLimitedError(RetryableError):
    """The robot said "too fast" (DingTalk 130101, WeCom 45009): the flow pauses its window too."""

    def __init__(self, message: str, retry_after: float = RATE_WINDOW) -> None:
        super().__init__(message, retry_after=retry_after)


PostEvent = Callable[[Event, Notice], None]
PostDigest = Callable[[DigestPart], None]
SplitDigest = Callable[[Digest], list[DigestPart]]

STATE_FILE = "chat-pending.json"
STATE_VERSION = 1
SAME_REASON_POSTS = 3  # single messages of one reason per window; more of it is folded into the digest
DIGEST_RETRY_MAX = 60.0  # longest wait before a digest refused as busy is posted again
DIGEST_GATHER = 5.0  # a digest of known reasons gathers this long first: a storm arrives over seconds
AUTOSAVE_EVERY = 10.0  # with a state dir, a changed digest is written at least this often (a crash loses less)


@dataclass
class ChatStats:
    """What the flow did, kept apart: messages posted, and what happened to the events it was given."""

    messages: int = 0  # messages posted (single events and digest parts)
    events_posted: int = 0  # events posted as their own message
    digests: int = 0  # digest messages posted
    events_folded: int = 0  # events folded into a digest
    events_in_digests: int = 0  # folded events whose digest message was posted
    repeats_suppressed: int = 0  # repeats held back (counted in the next reminder)
    events_failed: int = 0  # events (alone or in a digest) the service refused for good
    events_kept: int = 0  # folded events kept for after a restart (or lost without a state_dir)

    def summary(self) -> str:
        return (f"posted {self.messages} messages ({self.events_posted} events, {self.digests} digests of "
                f"{self.events_in_digests} folded events); {self.repeats_suppressed} repeats held back; "
                f"{self.events_failed} events refused; {self.events_kept} folded events left for after a restart")


def _plain_split(digest: Digest) -> list[DigestPart]:
    """Without a layout: one part holding the whole digest (the poster renders it)."""
    return [DigestPart(digest, digest.ranked(), digest.other)]


class ChatFlow:
    """Per-robot flow control: repeats, ranking, rate window and digests. One per sink instance.

    Public use (what :class:`~eventrouter.chat_transport.ChatSink` does for you): call :meth:`send` with
    each batch, :meth:`tick` at least every second, :meth:`close` at shutdown; :meth:`restore` after
    :meth:`save` to carry a digest and the rate window over a restart. ``stats`` counts what happened.

    What goes out first is what on-call needs first:

    - an urgent event (cluster-scoped object, node problem: :func:`is_urgent`) is posted alone whenever
      the window has room (beyond ``SAME_REASON_POSTS`` of one reason it goes into the digest, which is
      then posted at once);
    - the first event of a reason not seen lately is posted alone while a quarter of the window stays
      free (for urgent events and digests);
    - another event of a reason already shown is posted alone only while half the window is free and
      fewer than ``SAME_REASON_POSTS`` (3) of that reason went out in the window;
    - within a batch, urgent events go first, then the first event of each new reason (:meth:`rank`);
    - everything else is folded into the digest, ranked the same way, posted in parts that each fit
      one message: at once when it holds an urgent group or a new reason, otherwise after gathering
      ``DIGEST_GATHER`` (5 s) and at most every ``window / (rate_limit / 4)`` seconds (12 s at 20 a
      minute), leaving room for what is new.
    """

    def __init__(self, *, rate_limit: int = 20, repeat_interval: float = 1800.0, window: float = RATE_WINDOW,
                 max_keys: int = 10000, clock: Callable[[], float] = time.monotonic, sink: str = "",
                 split: SplitDigest | None = None) -> None:
        self.log = logging.getLogger(f"eventrouter.sinks.{sink}") if sink else log
        self.rate_limit = rate_limit
        self.rate = RateWindow(rate_limit, window)
        self.repeats = RepeatFilter(repeat_interval, max_keys)
        self.clock = clock
        self.split = split or _plain_split
        self.digest: Digest | None = None
        self.stats = ChatStats()
        # reasons shown lately (alone or in a digest) -> when; and posts of each reason in the window
        self._reasons_seen: OrderedDict[str, float] = OrderedDict()
        self._reason_posts: dict[str, deque[float]] = {}
        self._last_digest = -1e18
        self._digest_started = 0.0
        self._digest_retry_at = 0.0
        self._digest_backoff = 0.0
        self._restored = False  # the digest came from the state file: post it first
        # set by restore(): the state dir the flow keeps its digest in while it runs (see tick)
        self._autosave: tuple[str, Callable[[], float]] | None = None
        self._dirty = False  # the digest changed since the last save
        self._saved_digest = False  # the last save holds a digest (so posting it must be saved at once)
        self._last_save = -1e18

    # compatibility: the counters before ChatStats
    @property
    def posted(self) -> int:
        return self.stats.messages

    @property
    def suppressed(self) -> int:
        return self.stats.repeats_suppressed

    # ---- ranking ------------------------------------------------------------------------------
    def tier(self, event: Event, now: float) -> int:
        if is_urgent(event):
            return URGENT
        seen = self._reasons_seen.get(event.reason)
        return KNOWN if seen is not None and now - seen < FORGET_AFTER else NEW

    def _seen(self, reason: str, now: float) -> None:
        reasons = self._reasons_seen
        reasons[reason] = now
        reasons.move_to_end(reason)
        while len(reasons) > 1000 or (reasons and now - next(iter(reasons.values())) >= FORGET_AFTER):
            reasons.popitem(last=False)

    def _reason_posts_in_window(self, reason: str, now: float) -> int:
        posts = self._reason_posts.get(reason)
        if not posts:
            return 0
        while posts and now - posts[0] >= self.rate.window:
            posts.popleft()
        return len(posts)

    def _alone(self, event: Event, tier: int, now: float) -> bool:
        """Whether the event is posted as its own message now (else it is folded into the digest).

        ``room`` is what every window of ``self.rate`` allows now (a burst cap included); the budget
        (the longest window: ``rate.limit`` posts a ``rate.window``) decides what is kept for what."""
        rate = self.rate
        room = rate.room(now)
        if rate.limit <= 0:
            return room >= 1
        if tier == URGENT:  # many nodes at once read better as one digest line, posted at once
            return room >= 1 and self._reason_posts_in_window(event.reason, now) < SAME_REASON_POSTS
        free = rate.limit - rate.used(now)  # of the budget
        if room < 2:  # the last slot of any window is the digest's
            return False
        if tier == NEW:  # a quarter of the budget stays for urgent events and digests
            return free > max(1, rate.limit // 4)
        return free > max(1, rate.limit // 2) and self._reason_posts_in_window(event.reason, now) < SAME_REASON_POSTS

    def _digest_spacing(self) -> float:
        """Digests of known reasons: at most a quarter of the budget (every 12 s at 20 a minute)."""
        return self.rate.window / max(1, self.rate.limit // 4) if self.rate.limit > 0 else 0.0

    def rank(self, batch: Sequence[Event], now: float) -> list[Event]:
        """The batch in the order on-call needs it (stable): urgent events, then the first event of each
        reason not seen lately, then the rest. Within a batch arrival order says little: it is one read."""
        firsts: set[str] = set()

        def key(event: Event) -> int:
            if is_urgent(event):
                return URGENT
            if event.reason in firsts or self.tier(event, now) == KNOWN:
                return KNOWN
            firsts.add(event.reason)
            return NEW

        keys = [key(event) for event in batch]
        return [batch[i] for i in sorted(range(len(batch)), key=keys.__getitem__)]

    # ---- events -------------------------------------------------------------------------------
    def send(self, batch: Sequence[Event], post_event: PostEvent) -> None:
        """Post, hold back or fold each event. Raises PartialError so delivered events are not re-sent."""
        rejected: list[Event] = []
        error: SinkError | None = None
        batch = self.rank(batch, self.clock())
        for index, event in enumerate(batch):
            now = self.clock()
            notice = self.repeats.check(event, now)
            if notice is None:
                self.stats.repeats_suppressed += 1
                continue
            tier = self.tier(event, now)
            if not self._alone(event, tier, now):
                if not self.digest:
                    self.digest, self._digest_started = Digest(), now
                self.digest.add(event, tier)
                self.stats.events_folded += 1
                self._dirty = True
                self.repeats.commit(event, now)
                self._seen(event.reason, now)
                continue
            try:
                self._post(functools.partial(post_event, event, notice))
            except RetryableError as exc:
                raise PartialError(str(exc), retry=batch[index:], rejected=rejected,
                                   retry_after=exc.retry_after) from exc
            except PermanentError as exc:
                rejected.append(event)
                self.stats.events_failed += 1
                error = exc
                continue
            except Exception as exc:  # a bug (not a SinkError): retried as the router does, but never
                # the messages already posted from this batch
                raise PartialError(f"{type(exc).__name__}: {exc}", retry=batch[index:], rejected=rejected) from exc
            now = self.clock()
            self.stats.events_posted += 1
            self.repeats.commit(event, now)
            self._seen(event.reason, now)
            self._reason_posts.setdefault(event.reason, deque()).append(now)
            if len(self._reason_posts) > 1000:  # bounded: drop reasons with no post in the window
                self._reason_posts = {r: p for r, p in self._reason_posts.items()
                                      if self._reason_posts_in_window(r, now)}
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
        self.stats.messages += 1

    # ---- the digest ---------------------------------------------------------------------------
    def pending(self) -> int:
        """Events waiting in the digest."""
        return self.digest.total if self.digest else 0

    def _digest_due(self, now: float) -> bool:
        digest = self.digest
        if not digest or self.rate.room(now) < 1 or now < self._digest_retry_at:
            return False
        if digest.urgent or self._restored:
            return True
        return now - self._last_digest >= self._digest_spacing() and now - self._digest_started >= DIGEST_GATHER

    def tick(self, post_event: PostEvent, post_digest: PostDigest) -> None:
        """Post the next part of the pending digest if it is due and the window allows; a digest of one
        event is posted as that event. A busy answer is retried later with a growing wait (2 s .. 60 s)."""
        try:
            if self._digest_due(self.clock()):
                self._post_digest(post_event, post_digest)
        finally:
            if self._dirty and self._autosave and self.clock() - self._last_save >= AUTOSAVE_EVERY:
                self.save(*self._autosave)

    def _post_digest(self, post_event: PostEvent, post_digest: PostDigest) -> None:
        digest = self.digest
        assert digest is not None
        first = digest.first
        if first is not None:  # one event, as given: its own message reads better than a digest of one
            part = DigestPart(digest, list(digest.groups.values()), digest.other)
            action = functools.partial(post_event, first, Notice())
        else:
            part = self.split(digest)[0]
            action = functools.partial(post_digest, part)
        try:
            self._post(action)
        except RateLimitedError:
            raise  # the window is paused: the next due tick tries again
        except RetryableError as exc:
            self._digest_backoff = min(DIGEST_RETRY_MAX, max(2.0, self._digest_backoff * 2))
            self._digest_retry_at = self.clock() + max(self._digest_backoff, exc.retry_after or 0.0)
            raise
        except PermanentError:
            # it will never be accepted as it is: counted and logged (by the router), the rest stays
            self.stats.events_failed += part.events
            self._taken(digest, part)
            raise
        self._digest_backoff = 0.0
        self._last_digest = self.clock()
        if first is not None:
            self.stats.events_posted += 1
        else:
            self.stats.digests += 1
        self.stats.events_in_digests += part.events if first is None else 0
        self._taken(digest, part)

    def _taken(self, digest: Digest, part: DigestPart) -> None:
        digest.remove(part.keys, part.other > 0)
        if not digest:
            self.digest = None
            self._restored = False
        self._dirty = True
        if self._saved_digest and self._autosave:  # the file names what was just posted: not twice
            self.save(*self._autosave)

    # ---- shutdown and restart -----------------------------------------------------------------
    def close(self, post_event: PostEvent, post_digest: PostDigest, state_dir: str | None = None,
              wall: Callable[[], float] = time.time) -> None:
        """Post what the window allows of the pending digest, whatever the spacing; keep the rest in
        ``state_dir`` (and the window's posts, so a restart does not exceed the rate) for :meth:`restore`.
        Without a ``state_dir`` what is left is logged in full: every group it held."""
        reason = "the rate limit was reached"
        while self.digest and self.rate.room(self.clock()) >= 1:
            try:
                self._post_digest(post_event, post_digest)
            except Exception as exc:  # a refusal, or a bug in the poster: either way the digest is kept
                reason = f"{type(exc).__name__}: {exc}"
                break
        if self.rate.room(self.clock()) < 1 and self.clock() < self.rate.paused_until:  # (ChatRates has it too)
            reason = "the service asked to wait (too fast)"
        left = self.digest
        self.stats.events_kept = left.total if left else 0
        if state_dir is not None:
            self.save(state_dir, wall)
            if left:
                self.log.warning("%d folded events not posted at shutdown (%s): kept in %s, posted after the "
                                 "restart: %s", left.total, reason, os.path.join(state_dir, STATE_FILE),
                                 left.headline(len(left.groups)))
        elif left:
            self.log.warning("%d folded events not posted at shutdown (%s) and not kept (no data directory): %s",
                             left.total, reason, left.headline(len(left.groups)))
        self.digest = None

    def save(self, state_dir: str, wall: Callable[[], float] = time.time) -> None:
        """Write the pending digest, the window's recent posts and the problems already shown (so their
        repeats stay held back and reminders keep their count) to ``state_dir``, atomically."""
        now, epoch = self.clock(), wall()
        doc = {"version": STATE_VERSION, "saved_at": epoch,
               "posts": [epoch - (now - t) for t in self.rate.posts(now)],
               "paused_until": epoch + max(0.0, self.rate.paused_until - now),
               "digest": self.digest.to_json() if self.digest else None,
               "repeats": self.repeats.to_json(now, epoch),
               "reasons": {reason: epoch - (now - t) for reason, t in self._reasons_seen.items()}}
        path = os.path.join(state_dir, STATE_FILE)
        try:
            tmp = path + ".tmp"
            with open(tmp, "wb") as file:
                file.write(orjson.dumps(doc))
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, path)
            self._dirty, self._saved_digest, self._last_save = False, bool(self.digest), now
        except OSError as exc:
            held = self.digest.headline(len(self.digest.groups)) if self.digest else "nothing pending"
            self.log.error("cannot keep the chat state in %s (%s); lost: %s", path, exc.strerror or exc, held)

    def restore(self, state_dir: str, wall: Callable[[], float] = time.time) -> None:
        """Take back what :meth:`save` kept: the digest (posted first, when the window allows), the posts
        of the last window and the problems shown. An unreadable file is logged and left for a person.
        From then on the flow keeps its digest in ``state_dir`` while it runs too: written at least every
        ``AUTOSAVE_EVERY`` seconds while it changes, and at once when a saved digest was posted, so a
        process killed without SIGTERM loses at most those seconds and posts nothing twice."""
        path = os.path.join(state_dir, STATE_FILE)
        self._autosave = (state_dir, wall)
        try:
            with open(path, "rb") as file:
                doc = orjson.loads(file.read())
            if doc.get("version") != STATE_VERSION:
                raise ValueError(f"version {doc.get('version')!r}")
            now, epoch = self.clock(), wall()
            for posted in doc.get("posts") or ():
                if 0 <= epoch - float(posted) < self.rate.window:
                    self.rate.record(now - (epoch - float(posted)))
            paused = float(doc.get("paused_until") or 0.0) - epoch
            if paused > 0:
                self.rate.pause(now, paused)
            self.repeats.restore(list(doc.get("repeats") or ()), now, epoch)
            for reason, seen in dict(doc.get("reasons") or {}).items():
                if epoch - float(seen) < FORGET_AFTER:
                    self._reasons_seen[str(reason)] = now - (epoch - float(seen))
            digest = Digest.from_json(doc["digest"]) if doc.get("digest") else None
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.log.error("cannot read the chat state %s (%s): a digest kept at the last shutdown may be lost",
                           path, exc)
            return
        if digest:
            self.digest, self._restored, self._saved_digest = digest, True, True
            self.log.info("%d folded events kept at the last shutdown will be posted first: %s", digest.total,
                          digest.headline(3))


__all__ = [
    "CHAT_OPTIONS",
    "ChatFlow",
    "ChatStats",
    "Digest",
    "DigestGroup",
    "DigestPart",
    "Notice",
    "RateLimitedError",
    "RateWindow",
    "RepeatFilter",
    "is_urgent",
]
