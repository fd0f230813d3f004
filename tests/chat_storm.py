"""The storm every chat sink is tested with (issue 16): 300 pods in CrashLoopBackOff, each bumping its count
5 times, and one NodeNotReady 21 s in. Driven second by second on a fake clock shared with the sink and
the fake service: ``send`` what happened in that second, then ``tick``; after the storm, ticks until the
flow is idle, then ``close``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from eventrouter import Event, InvolvedObject

START = datetime(2026, 4, 14, 9, 0, 0, tzinfo=UTC)
NODE_AT = 21  # seconds into the storm


@dataclass
class Storm:
    events: list[tuple[int, Event]]  # (second, event)
    pods: int
    problems: int  # distinct object+reason: pods + the node

    def seconds(self) -> int:
        return max(s for s, _ in self.events) + 1


def crashloop_storm(pods: int = 300, bumps: int = 5, namespaces: int = 30, spread: int = 10) -> Storm:
    """Each round, every pod bumps its BackOff count; a round takes ``spread`` seconds. Pods are spread over
    ``namespaces`` namespaces. NodeNotReady for node-7 comes at NODE_AT seconds."""
    events: list[tuple[int, Event]] = []
    for round_ in range(bumps):
        for pod in range(pods):
            second = round_ * spread + pod * spread // pods
            when = START + timedelta(seconds=second)
            ns = f"shop-{pod % namespaces}"
            events.append((second, Event(
                uid=f"00000000-0000-4000-8000-{pod:012d}", resource_version=str(10000 + round_ * pods + pod),
                namespace=ns, name=f"api-{pod}.17a0b0c0d0e0f000", type="Warning", reason="BackOff",
                message=f"Back-off restarting failed container api in pod api-{pod}", count=round_ + 1,
                first_timestamp=START, last_timestamp=when,
                involved_object=InvolvedObject(kind="Pod", namespace=ns, name=f"api-{pod}", api_version="v1"),
                source_component="kubelet", source_host=f"node-{pod % 10}")))
    node_time = START + timedelta(seconds=NODE_AT)
    node = Event(uid="00000000-0000-4000-9000-000000000007", resource_version="99999", namespace="default",
                 name="node-7.17a0b0c0d0e0f111", type="Warning", reason="NodeNotReady",
                 message="Node node-7 status is now: NodeNotReady", count=1, first_timestamp=node_time,
                 last_timestamp=node_time, involved_object=InvolvedObject(kind="Node", name="node-7"),
                 source_component="node-controller")
    events.append((NODE_AT, node))
    events.sort(key=lambda item: item[0])
    return Storm(events, pods, pods + 1)


def run_storm(storm: Storm, sink: Any, clock: Any, after: int = 300,
              on_second: Callable[[int], None] | None = None) -> None:
    """Feed the storm to ``sink`` second by second (``clock.advance(1)`` between), then ``after`` quiet
    seconds of ticks, then close the sink."""
    by_second: dict[int, list[Event]] = {}
    for second, event in storm.events:
        by_second.setdefault(second, []).append(event)
    for second in range(storm.seconds() + after):
        batch = by_second.get(second, [])
        if batch:
            sink.send(batch)
        sink.tick()
        if on_second is not None:
            on_second(second)
        clock.advance(1.0)
    sink.close()


def node_event(storm: Storm) -> Event:
    return next(e for _, e in storm.events if e.reason == "NodeNotReady")


def shifted(event: Event, seconds: int) -> Event:
    return replace(event, last_timestamp=event.last_timestamp + timedelta(seconds=seconds))
