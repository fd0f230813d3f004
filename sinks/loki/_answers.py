"""What Loki's answer to a one-stream push says about each entry: stored, or refused and why.

Facts from Loki's source (v2.9 and v3.x): the distributor checks each entry on its own
(pkg/distributor/validator.go) and lists every refusal, grouped; the ingester ignores entries older than
its window (pkg/ingester/stream.go) and lists at most ten, then a total. See docs/sinks/loki.md.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from eventrouter import Event

# an entry of a stream: (ns since the epoch, line, event)
StreamEntry = tuple[int, str, Event]


# ---- Loki's refusals (pkg/distributor/validator.go, pkg/ingester/stream.go, pkg/validation/validate.go) ------
@dataclass(frozen=True)
class Refusal:
    event: Event
    reason: str  # short: "too old", "too far behind", ...
    detail: str  # Loki's own words, one line


@dataclass(frozen=True)
class Hidden:
    """An ingester's answer that covers fewer entries than were pushed: the distributor refused the others
    without saying so (the ingester's error replaces the distributor's)."""
    ignored: int  # "total ignored: N ...
    reached: int  # ... out of M": the entries the ingester got
    listed: list[tuple[int, str]]  # (entry time, reason) of the first ones it ignored
    first: str


# the ingester: one line per ignored entry (at most max_returned_stream_errors, 10), then the total; Loki 3:
#   entry with timestamp 2024-05-06 15:58:50.8 +0000 UTC ignored, reason: 'entry too far behind, entry timestamp
#   is: 2024-05-06T15:58:50Z, oldest acceptable timestamp is: 2024-05-07T10:25:30Z',
#   user 'fake', total ignored: 1 out of 2 for stream: {app="x", service_name="x"}
# (Loki 2.9: "reason: 'entry too far behind, oldest acceptable timestamp is: ...'"; before 2.4: "reason: 'entry out
# of order' for stream: {...}," and "total ignored: 1 out of 2")
_IGNORED = re.compile(r"^entry with timestamp (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) ([+-]\d{4}) \S+ ignored, "
                      r"reason: '(.*)'", re.M)
_TOTAL = re.compile(r"total ignored: (\d+) out of (\d+)")
INGESTER_REASONS = frozenset({"too far behind", "out of order", "per-stream rate limit", "ignored"})
# the distributor checks each entry on its own and lists every refusal, grouped ("3 errors like: ...", "; ")
_TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)"
_VALIDATION = re.compile(
    r"(?:(?P<n>\d+) errors like: )?(?P<text>"
    rf"entry for stream '.*?' has timestamp too old: (?P<old>{_TIME}), oldest acceptable timestamp is: {_TIME}"
    rf"|entry for stream '.*?' has timestamp too new: (?P<new>{_TIME})"
    r"|max entry size '(?P<max>\d+)' bytes exceeded for stream '.*?' while adding an entry with length '\d+' bytes"
    # a stream Loki skips whole (its labels): nothing of it is stored
    r"|(?P<stream>error at least one label pair is required per stream|error parsing labels '.*?' with error: [^;]*"
    r"|stream '.*?' has (?:label name too long|label value too long|duplicate label name): '.*?'"
    r"|entry for stream '.*?' has \d+ label names; limit \d+"
    r"|missing required labels '.*?' for user .*?\(policy: '.*?'\)))")


def read_refusals(text: str, entries: list[StreamEntry], status: int) -> list[Refusal] | Hidden:
    """The entries of a one-stream push that Loki refused, from its 4xx answer.

    The ingester ignores entries older than its window (the stream's newest minus max_chunk_age / 2): pushed in
    time order, those are the oldest N ("total ignored: N out of M"). The distributor refuses entries too old
    (reject_old_samples), too new or too long and lists each; the others are stored. Any other 4xx is about the
    request or the stream's labels: nothing was stored. An answer that does not add up fails the whole stream
    (counted, never guessed as sent)."""
    first = _first_line(text) or f"HTTP {status} without a body"
    total = _TOTAL.search(text)
    if total:
        ignored, reached = int(total.group(1)), int(total.group(2))
        listed = [(_parse_go_time(m.group(1), m.group(2)), m.group(3)) for m in _IGNORED.finditer(text)]
        if reached < len(entries):
            return Hidden(ignored, reached, listed, first)
        found = ingester_refusals(entries, range(len(entries)), ignored, listed, first) \
            if reached == len(entries) else None
        return found if found is not None else unaccounted(entries, first)
    matches = list(_VALIDATION.finditer(text))
    if not matches:
        detail = f"HTTP {status}: {first}" if text.strip() else first
        return [Refusal(event, "refused", detail) for _, _, event in entries]
    if _VALIDATION.sub("", text).strip("; \n"):
        return unaccounted(entries, first)  # a refusal this sink does not know: which entry is unknown
    if any(m.group("stream") for m in matches):
        return [Refusal(event, "invalid stream", matches[0].group("text")[:300]) for _, _, event in entries]
    old = sorted(_epoch(m.group("old")) for m in matches if m.group("old") for _ in range(int(m.group("n") or 1)))
    new = sorted(_epoch(m.group("new")) for m in matches if m.group("new") for _ in range(int(m.group("n") or 1)))
    long = [m for m in matches if m.group("max")]
    order = list(range(len(entries)))  # oldest first: Loki's time bounds cut off the oldest and the newest
    too_old, order = order[:len(old)], order[len(old):]
    too_new, order = order[len(order) - len(new):] if new else [], order[:len(order) - len(new)]
    too_long = [i for i in order if long and len(entries[i][1].encode()) > int(long[0].group("max"))]
    if (sorted(entries[i][0] // 1_000_000_000 for i in too_old) != old
            or sorted(entries[i][0] // 1_000_000_000 for i in too_new) != new
            or len(too_long) != sum(int(m.group("n") or 1) for m in long)):
        return unaccounted(entries, first)

    def example(group: str) -> str:
        return next(m.group("text") for m in matches if m.group(group))[:300]

    return ([Refusal(entries[i][2], "too old", example("old")) for i in too_old]
            + [Refusal(entries[i][2], "too new", example("new")) for i in too_new]
            + [Refusal(entries[i][2], "line too long", example("max")) for i in too_long])


def ingester_refusals(entries: list[StreamEntry], reached: Sequence[int], ignored: int,
                       listed: list[tuple[int, str]], first: str) -> list[Refusal] | None:
    """The first ``ignored`` of the entries that reached the ingester (indexes, in time order), if Loki's listing
    of the first ones it ignored matches them; None if it does not."""
    if ignored > len(reached) or len(listed) > ignored or (ignored and not listed):
        return None
    if any(entries[index][0] != ns for (ns, _), index in zip(listed, reached, strict=False)):
        return None
    reasons = [_ingester_reason(reason) for _, reason in listed]
    return [Refusal(entries[index][2], reasons[min(n, len(reasons) - 1)], first)
            for n, index in enumerate(reached[:ignored])]


def _ingester_reason(text: str) -> str:
    for key, reason in (("too far behind", "too far behind"), ("out of order", "out of order"),
                        ("rate limit", "per-stream rate limit")):
        if key in text:
            return reason
    return "ignored"


def unaccounted(entries: list[StreamEntry], first: str) -> list[Refusal]:
    detail = f"Loki's answer does not say which of the {len(entries)} entries of the stream it stored: {first}"
    return [Refusal(event, "unaccounted", detail[:400]) for _, _, event in entries]


def refusal_summary(refused: list[Refusal]) -> str:
    """'3 too old (entry for stream ...), 1 too far behind (...)': a count and Loki's words for each reason."""
    counts = Counter(refusal.reason for refusal in refused)
    details = {refusal.reason: refusal.detail for refusal in reversed(refused)}
    return ", ".join(f"{n} {reason} ({details[reason]})" for reason, n in counts.items())


def _parse_go_time(text: str, offset: str) -> int:
    """``2024-05-06 15:58:50.80086913`` and ``+0000`` (Go's time.String()) -> ns since the epoch."""
    whole, _, fraction = text.partition(".")
    local = datetime.strptime(f"{whole} {offset}", "%Y-%m-%d %H:%M:%S %z")
    return int(local.timestamp()) * 1_000_000_000 + int((fraction or "0").ljust(9, "0")[:9])


def _epoch(text: str) -> int:
    """Go's RFC3339 (``2024-05-06T15:58:50Z``, seconds, any offset) -> seconds since the epoch."""
    return int(datetime.fromisoformat(text).timestamp())


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:300] if text.strip() else ""
