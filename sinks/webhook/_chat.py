"""``chat=true``: the webhook posts to a chat receiver through the shared chat flow (repeats held back and
reminded, ``rate=`` honoured, the overflow folded into digests), for chat services that have no sink of their
own (Mattermost, Rocket.Chat, Google Chat, a relay).

A template sees, besides the event: ``reminder`` (true for a reminder of an ongoing problem) and
``suppressed`` (updates held back since the last message). A digest is rendered through the same template
with ``digest`` set (the digest text: one line per folded group), ``digest_headline`` and ``digest_total``;
the event fields then describe the digest (reason ``Digest``, ``count`` = events folded, ``message`` = the
digest text), so a template that knows nothing of digests still shows them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from eventrouter import (
    ChatFlow,
    ChatLayout,
    Digest,
    Event,
    EventTemplate,
    InvolvedObject,
    Notice,
    PermanentError,
    Rate,
    use_rates,
)

DEFAULT_RATE = "20/min"
DEFAULT_REPEAT_INTERVAL = 1800.0


class WebhookChat:
    """The chat flow of one webhook sink and the bodies of its messages."""

    def __init__(self, rates: tuple[Rate, ...], repeat_interval: float, tz: str, clock: Callable[[], float]) -> None:
        self.flow = ChatFlow(rate_limit=rates[0].limit, repeat_interval=repeat_interval, window=rates[0].window,
                             clock=clock, sink="webhook")
        use_rates(self.flow, rates)
        self.layout = ChatLayout("webhook", {"msg_type": "text", "label": [], "tz": tz})

    def event_body(self, template: EventTemplate | None, event: Event, notice: Notice) -> bytes:
        extra = {"reminder": notice.reminder, "suppressed": notice.suppressed}
        if template is None:
            return orjson.dumps({**event.to_dict(), **extra})
        return _render(template, event, extra)

    def digest_body(self, template: EventTemplate | None, digest: Digest) -> bytes:
        text = self.layout.digest(digest, self.flow.rate_limit)
        headline = digest.headline()
        if template is None:
            return orjson.dumps({"digest": True, "total": digest.total, "headline": headline, "text": text,
                                 "first_timestamp": _iso(digest.since), "last_timestamp": _iso(digest.until)})
        extra = {"digest": text, "digest_headline": headline, "digest_total": digest.total,
                 "reminder": False, "suppressed": 0}
        return _render(template, digest_event(digest, text), extra)


def digest_event(digest: Digest, text: str) -> Event:
    """An Event that describes a digest, for templates written for single events."""
    types = getattr(digest, "types", None)
    kind = types.most_common(1)[0][0] if types else "Warning"
    first = digest.first
    now = datetime.now(UTC)
    return Event(uid="", resource_version="", namespace="", name="", type=kind, reason="Digest", message=text,
                 count=digest.total, first_timestamp=digest.since or now, last_timestamp=digest.until or now,
                 involved_object=InvolvedObject(name=f"{digest.total} events"),
                 cluster=first.cluster if first is not None else "")


def _render(template: EventTemplate, event: Event, extra: dict[str, Any]) -> bytes:
    try:
        return template.render(event, **extra).encode()
    except Exception as exc:  # the template passed the start-up check; this message breaks it
        raise PermanentError(f"the template failed on this message: {type(exc).__name__}: {exc}") from None


def _iso(when: datetime | None) -> str | None:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if when else None
