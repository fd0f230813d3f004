"""Process-wide state read by /healthz, /readyz and /metrics: what the source has done.

Liveness and readiness are decided here (``metrics.py`` serves the answers):

- **live** while the source can reach the API server: each watch stream (one per namespace) got an
  answer from it (a list page, a watch opened, bytes read) within ``--healthz-window``. A quiet
  cluster sends no event and, for Events, no bookmark either; its watches are re-opened every
  ``stall_timeout``/``watch_timeout`` and each re-open is an answer, so a quiet cluster stays live.
- **ready** once the first list succeeded (at once on a standby replica) and while the checkpoint can
  be written: a checkpoint that fails (RBAC, a bad path) makes the pod not ready, loudly.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field


@dataclass
class SourceState:
    """Counters and flags a source updates; plain attributes, cheap to write on the hot path."""

    received: dict[str, int] = field(default_factory=dict)  # by watch type: ADDED, MODIFIED, ...
    malformed: int = 0
    watch_restarts: int = 0
    relists: int = 0
    duplicates_suppressed: int = 0
    unchanged_suppressed: int = 0
    last_progress: float = field(default_factory=time.monotonic)  # event or bookmark seen
    ready: bool = False  # first list done (or standby replica)
    leader: bool = True  # False while a --leader-elect replica waits
    checkpoint_written: float | None = None  # wall-clock time of the stored position (see checkpoint_age)
    checkpoint_error: str | None = None  # why the last checkpoint write failed; None once one succeeds
    # stream ("" = all namespaces) -> monotonic time the API server last answered on it; empty for
    # sources that do not talk to an API server (file replay)
    contact: dict[str, float] = field(default_factory=dict)
    finished: threading.Event = field(default_factory=threading.Event)  # a finite source is done

    def progress(self) -> None:
        self.last_progress = time.monotonic()

    def count(self, watch_type: str) -> None:
        self.received[watch_type] = self.received.get(watch_type, 0) + 1

    def reached(self, stream: str) -> None:
        """The API server answered on ``stream`` (a list page, a watch opened, bytes read)."""
        self.contact[stream] = time.monotonic()

    def liveness_problem(self, window: float) -> str | None:
        """Why the process should be restarted, as far as the source knows, or None."""
        if not self.leader or self.finished.is_set() or not window or not self.contact:
            return None  # a standby and a finished replay do not watch, on purpose
        now = time.monotonic()
        stream, last = min(self.contact.items(), key=lambda item: item[1])
        silent = now - last
        if silent > window:
            where = f"namespace {stream}" if stream else "all namespaces"
            return (f"no answer from the API server on the watch of {where} for {silent:.0f}s "
                    f"(--healthz-window={window:g}s)")
        return None

    def readiness_problem(self) -> str | None:
        if not self.leader:
            return None  # a standby replica is ready: it only waits for the Lease
        if not self.ready:
            return "waiting for the first list of events"
        if self.checkpoint_error:
            return self.checkpoint_error
        return None
