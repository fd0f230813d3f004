"""How chat messages read: :class:`ChatLayout` renders single events (kube-eventer's text layout, a
markdown layout, or the user's Jinja2 template) and digests (split by :meth:`ChatLayout.digest_parts`
into messages that each fit the service's limit); :func:`chat_tz` picks the zone of the times shown
(``tz=``, else the ``TZ`` environment variable, else UTC); :func:`truncate_bytes` and :func:`json_size`
keep a message under a size limit with a visible marker. The flow that decides *what* is posted is
:mod:`eventrouter.chat`; the HTTP side is :mod:`eventrouter.chat_transport`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, tzinfo
from typing import Any

import orjson

from eventrouter.chat import Digest, DigestGroup, DigestPart, Notice
from eventrouter.errors import SinkConfigError
from eventrouter.event import Event
from eventrouter.logutil import ThrottledLog
from eventrouter.templates import EventTemplate, parse_tz, template_source

TRUNCATED = "\n… (truncated)"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S %Z"


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


# ---- layout ---------------------------------------------------------------------------------------
def chat_tz(sink: str, name: str | None) -> tzinfo:
    """The zone of human-facing times: ``tz=`` if given (an error names the option), else the ``TZ``
    environment variable (kube-eventer's manifests set ``TZ=Asia/Shanghai``; ``:Zone`` and
    ``/usr/share/zoneinfo/Zone`` forms are understood), else UTC. A ``TZ`` that is not an IANA name is
    logged and UTC is used. Stored and exported times are UTC whatever this says."""
    if name:
        return parse_tz(sink, name)
    env = os.environ.get("TZ", "").strip().lstrip(":")
    if "zoneinfo/" in env:
        env = env.split("zoneinfo/", 1)[1]
    if not env:
        return UTC
    try:
        return parse_tz(sink, env)
    except SinkConfigError:
        logging.getLogger(f"eventrouter.sinks.{sink}").warning(
            "TZ=%s is not an IANA time zone name: chat times are shown in UTC (set tz= on the sink)", env)
        return UTC


class ChatLayout:
    """Message text for events and digests: the default layouts or the user's template."""

    def __init__(self, sink: str, opts: Any, *, line_break: str = "\n\n", cluster_id: str = "") -> None:
        self.msg_type: str = opts["msg_type"]
        self.labels: list[str] = list(opts["label"])
        self.tz: tzinfo = chat_tz(sink, opts.get("tz"))
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

    @staticmethod
    def owner(event: Event) -> str:
        """The owning workload (with ``--enrich=owner``) when it is not the object itself:
        ``Deployment shop/api``; empty otherwise."""
        owner, obj = event.owner, event.involved_object
        if owner is None or (owner.kind, owner.name) == (obj.kind, obj.name):
            return ""
        return str(owner)

    def card_facts(self, event: Event, notice: Notice) -> list[tuple[str, str]]:
        """The (title, value) facts a card shows for one event (Feishu, Teams): kind, object, owner,
        count (with the reminder), times, host and cluster. Values may be empty."""
        obj = event.involved_object
        where = f"{obj.namespace}/{obj.name}" if obj.namespace else obj.name
        count = str(event.count)
        if notice.reminder:
            held = f"; {notice.suppressed} updates held back" if notice.suppressed else ""
            count += f" (reminder: still happening{held})"
        facts = [("Kind", obj.kind), ("Object", where), ("Count", count),
                 ("Last seen", self.time(event.last_timestamp))]
        if self.owner(event):
            facts.insert(2, ("Owner", self.owner(event)))
        if event.count > 1:
            facts.append(("First seen", self.time(event.first_timestamp)))
        if event.source_host:
            facts.append(("Host", event.source_host))
        if self.cluster(event):
            facts.append(("Cluster", self.cluster(event)))
        return facts

    def title(self, event: Event) -> str:
        obj = event.involved_object
        where = f"{obj.namespace}/{obj.name}" if obj.namespace else obj.name
        return f"[{event.type or 'Event'}] {event.reason} {obj.kind} {where}"[:120]

    def event(self, event: Event, notice: Notice | None = None) -> str:
        notice = notice or Notice()
        if self.template is not None:
            try:
                return self.template.render(event, label_lines=self.labels, reminder=notice.reminder,
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
                 f"Namespace:{obj.namespace or '(cluster-scoped)'}",
                 f"Name:{obj.name}",
                 *([f"Owner:{owner}"] if (owner := self.owner(event)) else []),
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
                  f"**Namespace:** {obj.namespace or '(cluster-scoped)'}",
                  f"**Name:** {obj.name}",
                  *([f"**Owner:** {owner}"] if (owner := self.owner(event)) else []),
                  f"**Reason:** {event.reason}",
                  f"**Count:** {self._count(event, notice)}",
                  f"**First seen:** {self.time(event.first_timestamp)}",
                  f"**Last seen:** {self.time(event.last_timestamp)}"]
        if event.source_host:
            lines.append(f"**Host:** {event.source_host}")
        lines.append("> " + event.message.replace("\n", " "))
        return self.line_break.join(lines)

    def digest(self, digest: Digest, rate_limit: int) -> str:
        """The whole digest as one message (no size limit): every group named."""
        return self._digest_text(digest, digest.ranked(), digest.other, rate_limit)

    def digest_parts(self, digest: Digest, rate_limit: int, max_size: int = 0,
                     measure: Callable[[str], int] | None = None) -> list[DigestPart]:
        """The digest as messages that each fit ``max_size`` (as ``measure`` counts, UTF-8 bytes by
        default; 0: one message), ranked, every group named in exactly one of them."""
        size = measure or (lambda text: len(text.encode()))
        groups = digest.ranked()
        batches: list[list[DigestGroup]] = []
        current: list[DigestGroup] = []
        used = 0
        for group in groups:
            line = size(group.line()) + 2
            if current and max_size and used + line > max_size:
                batches.append(current)
                current, used = [], 0
            if not current:  # what every part has: labels, cluster, headline, footer (+ slack for numbers)
                used = size(self._digest_text(digest, [group], digest.other, rate_limit, 99, 99)) + 200
            else:
                used += line
            current.append(group)
        batches.append(current)
        count = len(batches)
        parts = []
        for index, batch in enumerate(batches, 1):
            other = digest.other if index == count else 0
            text = self._digest_text(digest, batch, other, rate_limit, index, count)
            if max_size:
                text = truncate_bytes(text, max_size, measure=size)
            parts.append(DigestPart(digest, batch, other, text, digest.headline(2, batch, other)))
        return parts

    def _digest_text(self, digest: Digest, groups: Sequence[DigestGroup], other: int, rate_limit: int,
                     index: int = 1, count: int = 1) -> str:
        markdown = self.msg_type == "markdown"
        cluster = digest.cluster or self.cluster_id
        of = f" (part {index} of {count})" if count > 1 else ""
        lines: list[str] = []
        if markdown:
            lines.append(f"### {digest.headline(3, groups, other)}{of}")
        lines += self.labels
        if cluster:
            lines.append(f"**Cluster:** {cluster}" if markdown else f"Cluster:{cluster}")
        if self.region:
            lines.append(f"**Region:** {self.region}" if markdown else f"Region:{self.region}")
        if not markdown:
            lines.append(digest.headline(5, groups, other) + of)
        lines += [group.line() for group in groups]
        if other:
            lines.append(f"- {other} more events in groups beyond the first {len(digest.groups)}")
        events = sum(g.count for g in groups) + other
        lines.append(f"From {self.time(digest.since)} to {self.time(digest.until)}; one message instead of "
                     f"{events} to stay under {rate_limit} messages a minute.")
        return (self.line_break if markdown else "\n").join(lines)


__all__ = ["ChatLayout", "chat_tz", "json_size", "truncate_bytes"]
