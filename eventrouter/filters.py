"""Per-sink filters, applied by the core before an event enters a sink's queue.

``level`` keeps kube-eventer's threshold: Warning scores 2, Normal 1, any other type 0; ``Warning``
passes Warning only, ``Normal`` passes Normal and Warning. ``namespaces``, ``kinds`` and their
``exclude_`` forms match exactly; ``reasons``/``exclude_reasons`` are unanchored regexes (Go's
``regexp.Match``). Objects with no namespace (Node, PersistentVolume, ...) pass a ``namespaces``
filter, so a namespace filter never silences node problems (kube-eventer #238).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from eventrouter.errors import SinkConfigError
from eventrouter.event import Event

_SCORE = {"Warning": 2, "Normal": 1}


def _regex(sink: str, option: str, patterns: list[str]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    try:
        return re.compile("|".join(f"(?:{p})" for p in patterns))
    except re.error as exc:
        raise SinkConfigError(sink, f"not a valid regular expression: {exc}", option) from None


class EventFilter:
    """Compiled filter options of one sink. ``accepts`` is on the hot path: keep it lean."""

    __slots__ = (
        "exclude_kinds",
        "exclude_namespaces",
        "exclude_reasons",
        "kinds",
        "min_count",
        "namespaces",
        "reasons",
        "threshold",
    )

    def __init__(self, sink: str, opts: Mapping[str, Any]) -> None:
        levels = opts.get("level") or []
        self.threshold = min((_SCORE[level] for level in levels), default=0)
        self.namespaces = frozenset(opts.get("namespaces") or ()) or None
        self.kinds = frozenset(opts.get("kinds") or ()) or None
        self.exclude_namespaces = frozenset(opts.get("exclude_namespaces") or ()) or None
        self.exclude_kinds = frozenset(opts.get("exclude_kinds") or ()) or None
        self.reasons = _regex(sink, "reasons", list(opts.get("reasons") or ()))
        self.exclude_reasons = _regex(sink, "exclude_reasons", list(opts.get("exclude_reasons") or ()))
        self.min_count = int(opts.get("min_count") or 0)

    @property
    def passes_everything(self) -> bool:
        return not (
            self.threshold
            or self.namespaces
            or self.kinds
            or self.exclude_namespaces
            or self.exclude_kinds
            or self.reasons
            or self.exclude_reasons
            or self.min_count > 1
        )

    def accepts(self, event: Event) -> bool:
        if self.threshold and _SCORE.get(event.type, 0) < self.threshold:
            return False
        obj = event.involved_object
        if self.namespaces is not None and obj.namespace and obj.namespace not in self.namespaces:
            return False
        if self.exclude_namespaces is not None and obj.namespace in self.exclude_namespaces:
            return False
        if self.kinds is not None and obj.kind not in self.kinds:
            return False
        if self.exclude_kinds is not None and obj.kind in self.exclude_kinds:
            return False
        if self.reasons is not None and not self.reasons.search(event.reason):
            return False
        if self.exclude_reasons is not None and self.exclude_reasons.search(event.reason):
            return False
        return event.count >= self.min_count
