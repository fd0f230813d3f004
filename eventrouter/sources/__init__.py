"""Sources feed the router: ``kubernetes:`` (list+watch) and ``file:`` (replay of recorded events).

A source is built from the ``--source`` flag and a :class:`SourceContext`, then ``run`` blocks,
calling ``router.dispatch(event)`` for each event, until ``stop`` is set or the input ends.
``finish`` runs after the sinks drained at shutdown (the Kubernetes source writes its checkpoint).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Protocol

from eventrouter.errors import ConfigError
from eventrouter.health import SourceState
from eventrouter.router import Router
from eventrouter.sinkurl import SinkURL


@dataclass
class SourceContext:
    cluster: str = ""
    checkpoint: str | None = None  # configmap:NS/NAME | file:PATH | None (the source's default)
    max_event_age: float | None = None  # seconds; first start without a checkpoint
    leader_elect: bool = False
    leader_elect_namespace: str | None = None
    leader_elect_name: str = "eventrouter"
    leader_elect_lease_duration: float = 15.0
    leader_elect_renew_deadline: float = 10.0
    leader_elect_retry_period: float = 2.0
    state: SourceState = field(default_factory=SourceState)


class Source(Protocol):
    state: SourceState

    def run(self, router: Router, stop: threading.Event) -> None: ...

    def finish(self, router: Router) -> None: ...


def build_source(flag: str, ctx: SourceContext) -> Source:
    url = SinkURL.parse(flag, what="--source")
    if url.name == "kubernetes":
        from eventrouter.sources.kubernetes import KubernetesSource

        return KubernetesSource.from_url(url, ctx)
    if url.name == "file":
        from eventrouter.sources.replay import ReplaySource

        return ReplaySource.from_url(url, ctx)
    raise ConfigError(f"--source={url.name}: unknown source {url.name!r}; use kubernetes:URL or file:PATH")
