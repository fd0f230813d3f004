"""jsonfile: append each event as one JSON line to a local file (an example eventrouter plugin).

Talks to: the local filesystem only. Credentials: none; the process needs write access to the
file's directory (in the container image, use the writable volume /var/lib/eventrouter).

URL forms (the path is the URL path; a relative path is relative to the working directory)::

    jsonfile:/var/lib/eventrouter/events.jsonl
    jsonfile:///var/lib/eventrouter/events.jsonl
    jsonfile:file:///var/lib/eventrouter/events.jsonl
    jsonfile:events.jsonl

Example flag::

    --sink=jsonfile:/var/lib/eventrouter/events.jsonl?level=Warning&fsync=true

Each line is ``Event.to_dict()`` (the normalized event, UTC ``...Z`` times); ``raw=true`` adds the
original Kubernetes object under ``"raw"``. The router batches (``batch_size``, default 100) and
retries; this sink only writes, and says whether a failure is worth retrying.

A process killed in the middle of a write (SIGKILL, OOM) leaves a torn last line. Its batch was not
acknowledged, so the router sends it again; opening the file cuts the torn line off first, so the file
holds only whole lines and the next batch does not start in the middle of one.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Sequence
from typing import IO

from eventrouter import Event, Option, Options, PermanentError, RetryableError, Sink, SinkConfigError, SinkURL

__version__ = "0.1.0"

# errors that a retry cannot fix: the path itself is wrong or forbidden
_PERMANENT = {errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.ENOENT, errno.EROFS, errno.ENAMETOOLONG}


def _classify(exc: OSError, what: str) -> PermanentError | RetryableError:
    """A full disk or an I/O error may pass; a missing directory or a denied write will not."""
    text = f"cannot {what}: {exc.strerror or exc}"
    return PermanentError(text) if exc.errno in _PERMANENT else RetryableError(text)


class JsonFileSink(Sink):
    """Append events as JSON lines to a local file."""

    name = "jsonfile"
    options = (
        Option("fsync", bool, default=False, help="fsync the file after every batch (survives a power loss)"),
        Option("raw", bool, default=False, help='also write the original Kubernetes object as "raw"'),
    )
    delivery_defaults = {"batch_size": 100, "flush_interval": 0.5}

    def __init__(self, url: SinkURL, opts: Options) -> None:
        super().__init__(url, opts)  # validation only: no file is touched before open()/send()
        if url.scheme not in ("", "file") or url.host:
            where = url.scheme or url.host
            raise SinkConfigError(self.name, f"expected a local path (jsonfile:/var/lib/events.jsonl), got {where!r}")
        if not url.path or url.path.endswith("/"):
            raise SinkConfigError(self.name, "give a file path: jsonfile:/var/lib/eventrouter/events.jsonl")
        self.path = url.path
        self._file: IO[str] | None = None

    def open(self) -> None:
        if self._file is None:
            try:
                _cut_torn_line(self.path)
                self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open between batches)
            except OSError as exc:
                raise _classify(exc, f"open {self.path}") from exc

    def send(self, batch: Sequence[Event]) -> None:
        self.open()
        assert self._file is not None
        raw = self.opts["raw"]
        lines = "".join(json.dumps(event.to_dict(raw=raw), ensure_ascii=False) + "\n" for event in batch)
        try:
            self._file.write(lines)
            self._file.flush()
            if self.opts["fsync"]:
                os.fsync(self._file.fileno())
        except OSError as exc:
            self.close()  # reopen on the retry: the file may have been rotated or the disk freed
            raise _classify(exc, f"write {self.path}") from exc

    def close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()


def _cut_torn_line(path: str, chunk: int = 65536) -> None:
    """Truncate the file after its last newline (a write cut short by a crash left a partial line)."""
    try:
        fh = open(path, "r+b")  # noqa: SIM115
    except FileNotFoundError:
        return
    with fh:
        end = fh.seek(0, os.SEEK_END)
        if end == 0:
            return
        fh.seek(end - 1)
        if fh.read(1) == b"\n":
            return
        pos = end
        while pos > 0:
            start = max(0, pos - chunk)
            fh.seek(start)
            newline = fh.read(pos - start).rfind(b"\n")
            if newline >= 0:
                fh.truncate(start + newline + 1)
                return
            pos = start
        fh.truncate(0)
