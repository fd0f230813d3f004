"""The on-disk spool: events are safe here before they reach S3.

Layout of ``store_dir``::

    .lock               flock'ed while a sink uses the directory (one writer at a time)
    state.json          {"writer": "<8 hex>", "next_seq": N}, so keys stay unique across restarts
    00000042.open       a chunk being filled: a header line {"key": ...}, then JSON Lines of events
    00000041.ready      a sealed chunk, waiting for its upload (same content)
    00000041.gz.tmp     the gzip body of a chunk during its upload (rebuilt if lost)

Every append is fsync'ed before ``send`` returns, so an event the router counts as delivered
survives a crash. The object key is chosen when a chunk is created and stored in its header:
a crash between the upload and the deletion of the chunk uploads the same bytes to the same key
again, which replaces the object instead of duplicating it.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import logging
import os
import secrets
import shutil
from dataclasses import dataclass

import orjson

log = logging.getLogger("eventrouter.sinks.s3")

STATE = "state.json"
LOCK = ".lock"


class SpoolBusy(OSError):
    """Another sink or process holds the spool directory."""


@dataclass
class Chunk:
    seq: int
    path: str
    key: str
    size: int  # bytes on disk, header included
    events: int
    opened_at: float  # monotonic time of the first event (age rotation)


class Spool:
    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.writer = ""
        self.used = 0
        self.ready: list[Chunk] = []  # sealed chunks, oldest first
        self._next_seq = 1
        self._lock_fd: int | None = None

    # ---- start and stop -----------------------------------------------------------------------
    def start(self, now: float) -> None:
        """Lock the directory, load the writer id and seal what a previous run left behind."""
        os.makedirs(self.directory, exist_ok=True)
        fd = os.open(self._path(LOCK), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolBusy(f"store_dir {self.directory} is in use by another s3 sink or process") from None
        self._lock_fd = fd
        self._load_state()
        for name in sorted(os.listdir(self.directory)):
            stem, _, suffix = name.partition(".")
            if not stem.isdigit():
                continue
            path = self._path(name)
            if suffix == "gz.tmp":
                os.unlink(path)
            elif suffix in ("open", "ready"):
                chunk = self._recover(int(stem), path, now)
                if chunk is not None:
                    self.ready.append(chunk)
                    self.used += chunk.size
            self._next_seq = max(self._next_seq, int(stem) + 1)
        self.ready.sort(key=lambda c: c.seq)

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    # ---- chunks -------------------------------------------------------------------------------
    def create(self, key_for_seq, now: float) -> Chunk:  # type: ignore[no-untyped-def]
        """A new, empty chunk whose key is fixed now (``key_for_seq(seq) -> key``)."""
        seq = self._next_seq
        self._next_seq += 1
        self._save_state()
        key = key_for_seq(seq)
        header = orjson.dumps({"key": key}) + b"\n"
        path = self._path(f"{seq:08d}.open")
        with open(path, "xb") as f:
            f.write(header)
            f.flush()
            os.fsync(f.fileno())
        self._sync_dir()
        self.used += len(header)
        return Chunk(seq, path, key, len(header), 0, now)

    def append(self, chunk: Chunk, data: bytes, events: int) -> None:
        """Write and fsync; on failure cut the file back so no half line stays behind."""
        with open(chunk.path, "ab") as f:
            try:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            except OSError:
                with contextlib.suppress(OSError):
                    f.truncate(chunk.size)
                raise
        chunk.size += len(data)
        chunk.events += events
        self.used += len(data)

    def truncate(self, chunk: Chunk, size: int, events: int) -> None:
        """Cut a chunk back to an earlier size (undo a batch); a sealed chunk left empty is dropped."""
        with open(chunk.path, "r+b") as f:
            f.truncate(size)
            f.flush()
            os.fsync(f.fileno())
        self.used -= chunk.size - size
        chunk.size, chunk.events = size, events
        if not events and chunk in self.ready:
            self.ready.remove(chunk)
            os.unlink(chunk.path)
            self.used -= size

    def seal(self, chunk: Chunk) -> None:
        ready = chunk.path[: -len(".open")] + ".ready"
        os.replace(chunk.path, ready)
        self._sync_dir()
        chunk.path = ready
        self.ready.append(chunk)

    def discard(self, chunk: Chunk) -> None:
        """Remove an open chunk that holds no events."""
        os.unlink(chunk.path)
        self.used -= chunk.size

    def gzip_body(self, chunk: Chunk) -> str:
        """Write the chunk's events as one gzip member (mtime 0: the same bytes every time)."""
        target = self._path(f"{chunk.seq:08d}.gz.tmp")
        with open(chunk.path, "rb") as src, open(target, "wb") as raw:
            src.readline()  # the header
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
                shutil.copyfileobj(src, gz, 1 << 20)
        return target

    def remove(self, chunk: Chunk) -> None:
        """The chunk is in S3: forget it."""
        os.unlink(chunk.path)
        self._sync_dir()
        self.ready.remove(chunk)
        self.used -= chunk.size

    # ---- internals ----------------------------------------------------------------------------
    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def _load_state(self) -> None:
        try:
            with open(self._path(STATE), "rb") as f:
                state = orjson.loads(f.read())
            self.writer = str(state["writer"])
            self._next_seq = int(state["next_seq"])
        except (OSError, ValueError, KeyError, TypeError):
            self.writer = secrets.token_hex(4)
            self._save_state()

    def _save_state(self) -> None:
        tmp = self._path(STATE + ".tmp")
        with open(tmp, "wb") as f:
            f.write(orjson.dumps({"writer": self.writer, "next_seq": self._next_seq}))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path(STATE))
        self._sync_dir()

    def _sync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _recover(self, seq: int, path: str, now: float) -> Chunk | None:
        """A chunk from an earlier run: drop a torn last line, seal it, or delete it if empty."""
        with open(path, "r+b") as f:
            data = f.read()
            end = data.rfind(b"\n") + 1
            if end < len(data):
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())
        header, _, body = data[:end].partition(b"\n")
        try:
            key = orjson.loads(header)["key"]
        except (ValueError, KeyError, TypeError):
            key = None
        if not key or not body:
            os.unlink(path)
            return None
        if path.endswith(".open"):
            ready = path[: -len(".open")] + ".ready"
            os.replace(path, ready)
            path = ready
        return Chunk(seq, path, key, end, body.count(b"\n"), now)
