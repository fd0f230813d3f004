"""Shared test helpers: the real recorded events and a quick Event factory."""

from __future__ import annotations

import functools
from dataclasses import replace
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any

import orjson

from eventrouter.event import Event, InvolvedObject

DATA = files("eventrouter.simulator") / "data"


@functools.cache
def real_objects(api: str = "core-v1") -> tuple[dict[str, Any], ...]:
    """Every recorded real Event object of one API (``core-v1`` or ``events-k8s-io-v1``)."""
    text = (DATA / f"{api}.jsonl").read_bytes()
    return tuple(orjson.loads(line) for line in text.splitlines() if line.strip())


def real_events(limit: int | None = None, cluster: str = "") -> list[Event]:
    objs = real_objects()[:limit] if limit else real_objects()
    return [Event.from_object(o, cluster) for o in objs]


def make_event(n: int = 0, **overrides: Any) -> Event:
    """A Warning event for Pod ``app-<n>`` in namespace ``default``; override any field."""
    when = datetime(2026, 4, 14, 9, 30, n % 60, tzinfo=UTC)
    base = Event(
        uid=f"00000000-0000-4000-8000-{n:012d}",
        resource_version=str(1000 + n),
        namespace="default",
        name=f"app-{n}.17a0b0c0d0e0f000",
        type="Warning",
        reason="BackOff",
        message=f"Back-off restarting failed container app in pod app-{n}",
        count=1,
        first_timestamp=when,
        last_timestamp=when,
        involved_object=InvolvedObject(kind="Pod", namespace="default", name=f"app-{n}",
                                       uid=f"11111111-0000-4000-8000-{n:012d}", api_version="v1"),
        source_component="kubelet",
        source_host="node-1",
    )
    return replace(base, **overrides) if overrides else base
