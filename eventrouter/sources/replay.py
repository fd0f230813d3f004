"""``--source=file:PATH``: replay recorded events (``-`` reads stdin).

Accepted input, detected per line or for the whole file:

- JSON lines of Event objects (core/v1 or events.k8s.io/v1);
- JSON lines of watch events ``{"type": "ADDED", "object": {...}}`` (DELETED, BOOKMARK are skipped);
- one ``kubectl get events -o json`` document (an ``EventList`` or ``List``), pretty-printed or not.

A malformed line is counted and logged with its line number; the rest is processed.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator
from typing import IO, Any

import orjson

from eventrouter.errors import ConfigError
from eventrouter.event import Event, MalformedEvent
from eventrouter.health import SourceState
from eventrouter.logutil import ThrottledLog
from eventrouter.router import Router
from eventrouter.sinkurl import SinkURL

log = logging.getLogger("eventrouter.sources.file")

_SKIPPED_TYPES = frozenset({"DELETED", "BOOKMARK"})


class ReplaySource:
    def __init__(self, path: str, cluster: str = "", state: SourceState | None = None) -> None:
        self.path = path
        self.cluster = cluster
        self.state = state or SourceState()
        self._bad = ThrottledLog(log, 10.0, burst=10)

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
        stream: IO[bytes] = sys.stdin.buffer if self.path == "-" else open(self.path, "rb")  # noqa: SIM115
        try:
            for number, obj in self._objects(stream):
                if stop.is_set():
                    break
                self._dispatch(router, number, obj)
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()
            self.state.finished.set()

    def finish(self, router: Router) -> None:
        """Nothing to store: a replay has no resume position."""

    def _objects(self, stream: IO[bytes]) -> Iterator[tuple[int, Any]]:
        first = stream.read(1)
        while first and first.isspace():
            first = stream.read(1)
        if not first:
            return
        rest_of_line = stream.readline()
        head = first + rest_of_line
        try:
            first_obj = orjson.loads(head)
        except orjson.JSONDecodeError:
            if first == b"{" or first == b"[":
                # a pretty-printed document (kubectl -o json): read it whole
                whole = head + stream.read()
                try:
                    yield from self._document_items(orjson.loads(whole))
                except orjson.JSONDecodeError as exc:
                    self._malformed(1, f"not JSON: {exc}")
                return
            self._malformed(1, "not JSON")
            first_obj = None
        if first_obj is not None:
            if isinstance(first_obj, dict) and first_obj.get("kind") in ("EventList", "List"):
                yield from self._document_items(first_obj)
            elif isinstance(first_obj, list):
                yield from ((1, item) for item in first_obj)
            else:
                yield 1, first_obj
        for number, line in enumerate(stream, start=2):
            if not line.strip():
                continue
            try:
                yield number, orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                self._malformed(number, f"not JSON: {exc}")

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
        router.dispatch(event)

    def _malformed(self, number: int, why: str) -> None:
        self.state.malformed += 1
        self._bad.log(logging.WARNING, "malformed", "%s line %d: skipped a malformed event: %s", self.path, number, why)
