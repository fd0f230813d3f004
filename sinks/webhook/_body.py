"""Request bodies: the normalized event as JSON, or the template rendered per event; a batch joined into
one JSON array (or newline-separated text for a non-JSON content type)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import orjson

from eventrouter import Event, EventTemplate, InvolvedObject, PermanentError

# renders templates at start-up; the message holds what breaks hand-made JSON
SAMPLE = Event(
    uid="00000000-0000-4000-8000-000000000000", resource_version="1", namespace="default", name="web-0.1",
    type="Warning", reason="BackOff", message='Back-off restarting "app"\n\tin pod web-0 \\ ✓', count=2,
    first_timestamp=datetime(2024, 1, 1, tzinfo=UTC), last_timestamp=datetime(2024, 1, 1, 0, 5, tzinfo=UTC),
    involved_object=InvolvedObject(kind="Pod", namespace="default", name="web-0", api_version="v1"),
    source_component="kubelet", source_host="node-1",
)


def event_body(template: EventTemplate | None, event: Event) -> bytes:
    """The body for one event; PermanentError when the template fails on it."""
    if template is None:
        return orjson.dumps(event.to_dict())
    try:
        return template.render(event).encode()
    except Exception as exc:  # the template passed the start-up check; this event breaks it
        raise PermanentError(f"the template failed on this event: {type(exc).__name__}: {exc}") from None


def default_batch_body(batch: Sequence[Event]) -> bytes:
    """The default body of a batch: a JSON array of normalized events."""
    return orjson.dumps([event.to_dict() for event in batch])


def join_bodies(items: Sequence[bytes], json_body: bool) -> bytes:
    """Rendered events in one body: a JSON array, or one per line for a non-JSON content type."""
    if json_body:
        return b"[" + b",".join(item.strip() for item in items) + b"]"
    return b"\n".join(item.rstrip(b"\n") for item in items) + b"\n"
