"""Log sink: one line per event on standard output.

kube-eventer's ``log`` sink, with a format you can parse: by default one JSON object per event,
normalized fields in a stable order, times in UTC (``...Z``). ``format=text`` prints one readable
line per event for people watching a terminal (``make demo`` uses it).

URL forms::

    --sink=log                 (kube-eventer)
    --sink=stdout
    --sink=log:?format=text&level=Warning
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import ClassVar

import orjson

from eventrouter import Event, Option, PermanentError, RetryableError, Sink, format_time


class LogSink(Sink):
    name = "log"
    options: ClassVar = (
        Option("format", str, default="json", choices=("json", "text"), help="json lines or one text line"),
        Option("raw", bool, default=False, help="json: add the original Kubernetes object as 'raw'"),
    )
    delivery_defaults: ClassVar = {"batch_size": 500, "flush_interval": 0.2}

    def __init__(self, url, opts, stream=None) -> None:  # type: ignore[no-untyped-def]
        super().__init__(url, opts)
        self._stream = stream

    def send(self, batch: Sequence[Event]) -> None:
        stream = self._stream or sys.stdout.buffer
        if self.opts["format"] == "text":
            data = "".join(_text_line(e) for e in batch).encode()
        else:
            raw = self.opts["raw"]
            data = b"".join(orjson.dumps(e.to_dict(raw=raw)) + b"\n" for e in batch)
        try:
            stream.write(data)
            stream.flush()
        except BrokenPipeError as exc:
            raise PermanentError("standard output is closed") from exc
        except OSError as exc:
            raise RetryableError(f"cannot write to standard output: {exc}") from exc


def _text_line(event: Event) -> str:
    obj = event.involved_object
    kind = obj.kind or "Event"
    name = obj.name or event.name  # a few real events (cluster bootstrap) name no object
    namespace = obj.namespace or ("" if obj.name else event.namespace)
    where = f"{namespace}/" if namespace else ""
    count = f" x{event.count}" if event.count > 1 else ""
    message = event.message.replace("\n", " ")
    owner = event.owner  # with --enrich=owner: the workload, when it is not the object itself
    by = f" ({owner.kind} {owner.name})" if owner is not None and (owner.kind, owner.name) != (kind, name) else ""
    return (
        f"{format_time(event.last_timestamp)} {event.type or '-':7} {kind}/{where}{name}{by} "
        f"{event.reason or '-'}{count}: {message}\n"
    )
