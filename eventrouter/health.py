"""Process-wide state read by /healthz, /readyz and /metrics: what the source has done."""

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
    checkpoint_written: float | None = None  # wall-clock time of the last checkpoint write
    finished: threading.Event = field(default_factory=threading.Event)  # a finite source is done

    def progress(self) -> None:
        self.last_progress = time.monotonic()

    def count(self, watch_type: str) -> None:
        self.received[watch_type] = self.received.get(watch_type, 0) + 1
