"""jsonfile: append each event as one JSON line to a local file (an example eventrouter plugin).

URL form::

    --sink=jsonfile:/var/lib/events/events.jsonl?level=Warning&fsync=true
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from eventrouter import Event, Option, RetryableError, Sink, SinkConfigError


class JsonFileSink(Sink):
    """Append events as JSON lines to a file."""

    name = "jsonfile"
    options = (Option("fsync", bool, default=False, help="fsync after every batch"),)
    delivery_defaults = {"batch_size": 100, "flush_interval": 0.5}

    def __init__(self, url, opts):  # type: ignore[no-untyped-def]
        super().__init__(url, opts)
        self.path = url.path
        if not self.path:
            raise SinkConfigError(self.name, "give a file path: jsonfile:/path/to/events.jsonl")
        self._file = None

    def open(self) -> None:
        try:
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise RetryableError(f"cannot open {self.path}: {exc.strerror}") from exc

    def send(self, batch: Sequence[Event]) -> None:
        if self._file is None:
            self.open()
        assert self._file is not None
        try:
            self._file.write("".join(json.dumps(e.to_dict()) + "\n" for e in batch))
            self._file.flush()
            if self.opts["fsync"]:
                os.fsync(self._file.fileno())
        except OSError as exc:
            raise RetryableError(f"cannot write {self.path}: {exc.strerror}") from exc

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
