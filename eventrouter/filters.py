"""Per-sink filters, applied by the core before an event enters a sink's queue.

``level`` keeps kube-eventer's threshold: Warning scores 2, Normal 1, any other type 0; ``Warning``
passes Warning only, ``Normal`` passes Normal and Warning. ``namespaces``, ``kinds`` and their
``exclude_`` forms match exactly; ``reasons``/``exclude_reasons`` are unanchored regexes (Go's
``regexp.Match``). Objects with no namespace (Node, PersistentVolume, ...) pass a ``namespaces``
filter, so a namespace filter never silences node problems (kube-eventer #238).

With enrichment (eventrouter/enrich.py): ``labels``/``exclude_labels`` are Kubernetes label selectors on
the involved object's labels (repeat ``labels=`` to add requirements; an event whose labels are not
known does not match), ``owner_kinds`` matches the kind of the top owning workload, and ``message`` is
an unanchored regex on the message.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from eventrouter.errors import SinkConfigError
from eventrouter.event import Event
from eventrouter.selectors import LabelSelector, SelectorError

_SCORE = {"Warning": 2, "Normal": 1}


def _regex(sink: str, option: str, patterns: list[str]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    try:
        return re.compile("|".join(f"(?:{p})" for p in patterns))
    except re.error as exc:
        raise SinkConfigError(sink, f"not a valid regular expression: {exc}", option) from None


def _selectors(sink: str, option: str, values: list[str]) -> tuple[LabelSelector, ...] | None:
    try:
        return tuple(LabelSelector(value) for value in values) or None
    except SelectorError as exc:
        raise SinkConfigError(sink, f"not a label selector: {exc}", option) from None


# the filters that need enrichment, by the enrichment feature they need
NEEDS = {"labels": "labels", "exclude_labels": "labels", "owner_kinds": "owner"}
# the filters that read more than the router's route key (type, namespace, kind, reason, count)
UNKEYED = ("labels", "exclude_labels", "owner_kinds", "message")


class EventFilter:
    """Compiled filter options of one sink. ``accepts`` is on the hot path: keep it lean."""

    __slots__ = (
        "exclude_kinds",
        "exclude_labels",
        "exclude_namespaces",
        "exclude_reasons",
        "kinds",
        "labels",
        "message",
        "min_count",
        "namespaces",
        "owner_kinds",
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
        self.labels = _selectors(sink, "labels", list(opts.get("labels") or ()))
        self.exclude_labels = _selectors(sink, "exclude_labels", list(opts.get("exclude_labels") or ()))
        self.owner_kinds = frozenset(opts.get("owner_kinds") or ()) or None
        self.message = _regex(sink, "message", list(opts.get("message") or ()))

    @property
    def route_keyed(self) -> bool:
        """True when the verdict depends only on type, namespace, kind, reason and count (the router's
        route key): no label, owner or message filter."""
        return all(getattr(self, name) is None for name in UNKEYED)

    @property
    def needs(self) -> frozenset[str]:
        """The enrichment features (labels, owner) this filter needs."""
        return frozenset(feature for option, feature in NEEDS.items() if getattr(self, option) is not None)

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
            or not self.route_keyed
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
        if event.count < self.min_count:
            return False
        if self.labels is not None and not all(s.matches(event.labels) for s in self.labels):
            return False
        if self.exclude_labels is not None and any(s.matches(event.labels) for s in self.exclude_labels):
            return False
        if self.owner_kinds is not None and (event.owner is None or event.owner.kind not in self.owner_kinds):
            return False
        return self.message is None or self.message.search(event.message) is not None
