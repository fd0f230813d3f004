"""``--source=file:PATH``: replay recorded events (``-`` reads stdin).

Accepted input, detected per line or for the whole file:

- JSON lines of Event objects (core/v1 or events.k8s.io/v1);
- JSON lines of watch events ``{"type": "ADDED", "object": {...}}`` (DELETED, BOOKMARK are skipped);
- one ``kubectl get events -o json`` document (an ``EventList`` or ``List``), pretty-printed or not.

A malformed line is counted and logged with its line number (the first 10 per 10 s; then the number
held back), the rest is processed, and a summary line at the end gives the totals. Invalid UTF-8 in a
line is replaced by U+FFFD: the event is kept.
"""

from __future__ import annotations

import logging
import os
import select
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from eventrouter.errors import ConfigError
from eventrouter.event import Event, MalformedEvent
from eventrouter.health import SourceState
from eventrouter.logutil import ThrottledLog
from eventrouter.router import Router
from eventrouter.sinkurl import SinkURL

log = logging.getLogger("eventrouter.sources.file")

_SKIPPED_TYPES = frozenset({"DELETED", "BOOKMARK"})
_BAD = object()


def _loads(data: bytes) -> Any:
    """The JSON value, or _BAD. Invalid UTF-8 (a truncated multi-byte character in a message) is
    replaced by U+FFFD and the event kept: one bad byte must not lose the event."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:
        return orjson.loads(data.decode("utf-8", "replace"))
    except orjson.JSONDecodeError:
        return _BAD


def _stdin_lines(stop: threading.Event, fd: int = 0) -> Iterator[bytes]:
    """Lines of stdin, read with os.read on the raw descriptor, waking every 0.2 s to check ``stop``.

    Not sys.stdin.buffer: a thread blocked in its readline holds the buffer's lock, and when SIGTERM
    ends the process the interpreter's shutdown aborts on that lock (``Fatal Python error ...
    <stdin>``). Here the thread is never blocked for long and holds no lock."""
    pending = b""
    while not stop.is_set():
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        pending += chunk
        if b"\n" in pending:
            *complete, pending = pending.split(b"\n")
            for line in complete:
                yield line + b"\n"
    if pending and not stop.is_set():
        yield pending


class ReplaySource:
    def __init__(self, path: str, cluster: str = "", state: SourceState | None = None) -> None:
        self.path = path
        self.cluster = cluster
        self.state = state or SourceState()
        self._bad = ThrottledLog(log, 10.0, burst=10)
        self._malformed_count = self._events = 0

    @classmethod
    def from_url(cls, url: SinkURL, ctx: Any) -> ReplaySource:
        path = url.rest.partition("?")[0]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise ConfigError("--source=file: give a path (file:/var/log/events.jsonl) or file:- for stdin")
        if url.query:
            raise ConfigError(f"--source=file: takes no options, got {', '.join(url.query)}")
        if path != "-":
            try:
                open(path, "rb").close()
            except OSError as exc:
                raise ConfigError(f"--source=file:{path}: cannot read: {exc.strerror}") from None
        return cls(path, ctx.cluster, ctx.state)

    def run(self, router: Router, stop: threading.Event) -> None:
        self.state.ready = True
        self._malformed_count = self._events = 0
        try:
            if self.path == "-":
                lines: Iterable[bytes] = _stdin_lines(stop)
                for number, obj in self._objects(iter(lines)):
                    if stop.is_set():
                        break
                    self._dispatch(router, number, obj)
            else:
                with open(self.path, "rb") as stream:
                    for number, obj in self._objects(iter(stream)):
                        if stop.is_set():
                            break
                        self._dispatch(router, number, obj)
        finally:
            self._summary()
            self.state.finished.set()

    def finish(self, router: Router) -> None:
        """Nothing to store: a replay has no resume position."""

    def _summary(self) -> None:
        """One line with the totals: the per-line warnings are throttled (the first 10 per 10 s)."""
        self._bad.flush()
        if self._malformed_count:
            log.warning("file:%s: %d events read, %d malformed lines or objects skipped", self.path, self._events,
                        self._malformed_count)
        else:
            log.info("file:%s: %d events read, none malformed", self.path, self._events)

    def _objects(self, lines: Iterator[bytes]) -> Iterator[tuple[int, Any]]:
        number = 0
        for number, line in enumerate(lines, start=1):  # noqa: B007
            if line.strip():
                head = line
                break
        else:
            return
        first_obj = _loads(head)
        if first_obj is _BAD:
            if head.lstrip()[:1] in (b"{", b"["):
                # a pretty-printed document (kubectl -o json): read it whole
                doc = _loads(head + b"".join(lines))
                if doc is _BAD:
                    self._malformed(number, "not JSON")
                else:
                    yield from self._document_items(doc)
                return
            self._malformed(number, "not JSON")
        elif isinstance(first_obj, dict) and first_obj.get("kind") in ("EventList", "List"):
            yield from self._document_items(first_obj)
        elif isinstance(first_obj, list):
            yield from ((number, item) for item in first_obj)
        else:
            yield number, first_obj
        for later, line in enumerate(lines, start=number + 1):
            if not line.strip():
                continue
            obj = _loads(line)
            if obj is _BAD:
                self._malformed(later, "not JSON")
            else:
                yield later, obj

    @staticmethod
    def _document_items(doc: Any) -> Iterator[tuple[int, Any]]:
        items = doc.get("items") if isinstance(doc, dict) else doc
        yield from enumerate(items or [], start=1)

    def _dispatch(self, router: Router, number: int, obj: Any) -> None:
        if isinstance(obj, dict) and "object" in obj and "type" in obj and "metadata" not in obj:
            watch_type = obj.get("type")
            if watch_type in _SKIPPED_TYPES:
                return
            obj = obj["object"]
        else:
            watch_type = "ADDED"
        try:
            event = Event.from_object(obj, self.cluster)
        except MalformedEvent as exc:
            self._malformed(number, str(exc))
            return
        self.state.count(str(watch_type))
        self.state.progress()
        self._events += 1
        router.dispatch(event)

    def _malformed(self, number: int, why: str) -> None:
        self.state.malformed += 1
        self._malformed_count += 1
        self._bad.log(logging.WARNING, "malformed", "%s line %d: skipped a malformed event: %s", self.path, number, why)
