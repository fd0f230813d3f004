"""A sink's durable backlog: append-only segment files of checksummed records, one directory per sink.

Layout of ``DATA_DIR/buffer/<sink label>/``::

    id                  a random name of this buffer (the checkpoint keeps it: see Router.restore_positions)
    ack                 {"segment": N, "offset": BYTES}: where the undelivered records start
    000000000001.seg    records, appended; a segment is deleted once every record in it is delivered
    000000000002.seg

A record is a 34-byte header and the payload::

    magic u16 | payload length u32 | CRC-32 of everything after it u32 | seq i64 | event time f64 |
    key 8 bytes (BLAKE2b of uid + resourceVersion) | payload (JSON: the Kubernetes object and cluster)

The magic says how the payload is stored: ``0xE7B1`` the JSON as it is, ``0xE7B2`` the JSON as one LZ4
block with its size first (cramjam's ``lz4.compress_block``; ~65 % of the JSON, ~2 µs to make and ~1 µs to
read back for an event). Spilled events are written plain; a sink's held window is compressed (see
router.SinkRunner) and goes to disk as it is when that window spills. Both are read.

Writes go through a buffered file and are flushed and fsynced at most every ``sync_interval`` (1 s) and
when a segment is sealed; :attr:`DiskBuffer.synced_seq` says what is durable. On open every segment is
scanned: a torn tail (a record cut short by a crash) is cut off, a record whose checksum does not match
is skipped and counted, and reading resumes at the saved ``ack`` (so a SIGKILL repeats at most the
records delivered in the last ``sync_interval``).
"""

from __future__ import annotations

import logging
import math
import os
import re
import struct
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

from eventrouter.event import Event, FrozenDict, InvolvedObject, MalformedEvent, Owner, parse_time

log = logging.getLogger("eventrouter.router")

MAGIC = 0xE7B1  # the payload is JSON
MAGIC_LZ4 = 0xE7B2  # the payload is JSON in one LZ4 block, its size first
PREFIX = struct.Struct("<HII")  # magic, payload length, crc
BODY = struct.Struct("<qd8s")  # seq, event time, key
HEADER_SIZE = PREFIX.size + BODY.size
MAX_PAYLOAD = 64 << 20
SEGMENT_BYTES = 8 << 20
SYNC_INTERVAL = 1.0
# Bytes read from a segment at a time: about 300 records of a typical event. A batch reads only what it
# decodes (plus the rest of one chunk), not megabytes it then throws away, and no large block is allocated.
READ_CHUNK = 256 << 10
# The writer's buffer, held while the tail segment is open (for good, once a sink has spilled): 128 KiB
# is one write call per ~140 events; 1 MiB (as before) held 0.9 MB more per sink.
WRITE_BUFFER = 128 << 10


_SIZE = re.compile(r"^\s*(\d+)\s*(|B|KiB|MiB|GiB|TiB|KB|MB|GB|TB)\s*$")
_SIZE_UNITS = {"": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
               "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


def parse_size(text: str) -> int:
    """Bytes from ``2GiB``, ``512MiB``, ``500MB`` or a plain number."""
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(text)
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


def size_problem(text: str) -> str | None:
    try:
        parse_size(text)
    except ValueError:
        return f"{text!r} is not a size such as 512MiB, 2GiB or a number of bytes"
    return None


# ---- events as payloads -------------------------------------------------------------------------
def encode_event(event: Event) -> bytes:
    """The event as the buffer stores it: its Kubernetes object (normalized again on reading) and what
    enrichment added, or its fields when it was built without an object."""
    raw = event.raw
    if isinstance(raw, dict):
        doc: dict[str, Any] = {"c": event.cluster, "o": raw}
        if event.labels:
            doc["labels"] = event.labels
        if event.annotations:
            doc["annotations"] = event.annotations
        if event.owner is not None:
            doc["owner"] = event.owner.to_dict()
        return orjson.dumps(doc)
    return orjson.dumps({"f": event.to_dict()})


def decode_event(payload: bytes | memoryview) -> Event:
    doc = orjson.loads(payload)
    if "o" in doc:
        event = Event.from_object(doc["o"], doc.get("c") or "")
        _enrich(event, doc)
        return event
    fields = doc["f"]
    first, last = parse_time(fields.pop("first_timestamp")), parse_time(fields.pop("last_timestamp"))
    if first is None or last is None:
        raise MalformedEvent("a buffered event without its times")
    enrichment = {k: fields.pop(k) for k in ("labels", "annotations", "owner") if k in fields}
    event = Event(first_timestamp=first, last_timestamp=last,
                  involved_object=InvolvedObject(**fields.pop("involved_object")), **fields)
    _enrich(event, enrichment)
    return event


def _enrich(event: Event, doc: dict[str, Any]) -> None:
    """Put back what the enricher had set (it sets the slots of the new Event the same way)."""
    if doc.get("labels"):
        object.__setattr__(event, "labels", FrozenDict(doc["labels"]))
    if doc.get("annotations"):
        object.__setattr__(event, "annotations", FrozenDict(doc["annotations"]))
    if doc.get("owner"):
        object.__setattr__(event, "owner", Owner(**doc["owner"]))


def encode_record(seq: int, t: float, key: bytes, payload: bytes, *, compress: bool = False) -> bytes:
    """A record of ``payload`` (JSON: :func:`encode_event`); with ``compress``, as an LZ4 block when that
    makes it smaller (a sink's held window: see router.SinkRunner; a spill writes plain records, which costs
    the source less per event)."""
    magic = MAGIC
    if compress:
        packed = bytes(_lz4().compress_block(payload))
        if len(packed) < len(payload):
            magic, payload = MAGIC_LZ4, packed
    body = BODY.pack(seq, t, key) + payload
    return PREFIX.pack(magic, len(payload), zlib.crc32(body)) + body


def _payload_json(buf: bytes | memoryview, start: int, stop: int, compressed: bool) -> bytes | memoryview:
    view = memoryview(buf)[start:stop]
    if not compressed:
        return view
    lz4 = _lz4()
    try:
        return bytes(lz4.decompress_block(view))
    except _cramjam().DecompressionError as exc:
        raise ValueError(f"not an LZ4 block ({exc})") from None


def _cramjam() -> Any:
    """cramjam, imported when a first record is encoded or read: ~2 MB of RSS a router whose sinks never
    fall behind does not need."""
    import cramjam

    return cramjam


def _lz4() -> Any:
    return _cramjam().lz4


# A record is also how a sink's memory window holds the events behind its next batch (router.SinkRunner):
# one bytes object of about the size of the event's JSON, instead of the decoded object tree (~5 KB).
def record_fields(record: bytes) -> tuple[int, float, bytes]:
    """(seq, event time, key) of an encoded record."""
    fields: tuple[int, float, bytes] = BODY.unpack_from(record, PREFIX.size)
    return fields


def record_event(record: bytes) -> Event:
    """The event an encoded record holds (a new Event, equal to the one encoded)."""
    compressed = PREFIX.unpack_from(record, 0)[0] == MAGIC_LZ4
    return decode_event(_payload_json(record, HEADER_SIZE, len(record), compressed))


_OK, _INCOMPLETE, _CORRUPT = 0, 1, 2


_Record = tuple[int, float, bytes, int, int, bool]


def _parse(buf: bytes | memoryview, pos: int) -> tuple[int, int, _Record | None]:
    """(status, end, (seq, time, key, payload start, payload end, compressed)) of the record at ``pos``."""
    if len(buf) - pos < HEADER_SIZE:
        return _INCOMPLETE, pos, None
    magic, length, crc = PREFIX.unpack_from(buf, pos)
    if (magic != MAGIC and magic != MAGIC_LZ4) or length > MAX_PAYLOAD:
        return _CORRUPT, pos, None
    end = pos + HEADER_SIZE + length
    if end > len(buf):
        return _INCOMPLETE, pos, None
    if zlib.crc32(buf[pos + PREFIX.size:end]) != crc:
        return _CORRUPT, pos, None
    seq, t, key = BODY.unpack_from(buf, pos + PREFIX.size)
    return _OK, end, (seq, t, key, pos + HEADER_SIZE, end, magic == MAGIC_LZ4)


_MAGIC_BYTES = (PREFIX.pack(MAGIC, 0, 0)[:2], PREFIX.pack(MAGIC_LZ4, 0, 0)[:2])


def _next_magic(buf: bytes, pos: int) -> int:
    found = [at for at in (buf.find(magic, pos) for magic in _MAGIC_BYTES) if at >= 0]
    return min(found) if found else -1


def _records(buf: bytes, pos: int) -> Iterator[tuple[int, int, _Record | None]]:
    """Every record from ``pos``: (start, end, record), with record None for a corrupted stretch that was
    skipped (the scan resumes at the next place a valid record starts). Stops at a torn tail."""
    while True:
        status, end, rec = _parse(buf, pos)
        if status == _OK:
            yield pos, end, rec
            pos = end
            continue
        if status == _INCOMPLETE:
            return
        start = pos  # corrupted: find the next record that checks out
        probe = pos + 1
        while True:
            probe = _next_magic(buf, probe)
            if probe < 0:
                yield start, len(buf), None
                return
            if _parse(buf, probe)[0] == _OK:
                break
            probe += 1
        yield start, probe, None
        pos = probe


def _needs_more(chunk: bytes) -> bool:
    """Whether a chunk read from a segment holds no complete record (nor a corrupted stretch that ends in
    it) at its start: the record there is larger than the chunk, or garbage runs past it."""
    for _, end, rec in _records(chunk, 0):
        return rec is None and end == len(chunk)
    return True


@dataclass(eq=False)
class Segment:
    id: int
    path: str
    size: int = 0  # bytes written (flushed or not)
    count: int = 0  # records written
    first_seq: int = 0  # a lower bound of its records' seqs (0: written by an earlier process)
    min_time: float = math.inf  # the earliest event time in it
    max_time: float = -math.inf  # the latest
    keys: set[bytes] | None = field(default=None, repr=False)  # built when a re-list asks (contains)


@dataclass
class ReadBatch:
    events: list[Event]
    first_seq: int
    segment: int  # index into the segment list at the end of the batch
    offset: int
    count: int  # records consumed (corrupted ones included)


class DiskBuffer:
    """The on-disk part of one sink's queue. One writer thread (the source; the app at shutdown) and one
    reader thread (the sink's worker)."""

    def __init__(self, path: str, max_bytes: int, *, segment_bytes: int = SEGMENT_BYTES,
                 sync_interval: float = SYNC_INTERVAL) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.segment_bytes = max(4096, min(segment_bytes, max_bytes // 8))
        self.sync_interval = sync_interval
        self.id = ""
        self.corrupted = 0  # records skipped because their checksum did not match
        self.restored = 0  # records found on open
        self._segments: list[Segment] = []
        self._lock = threading.Lock()
        self._writer: IO[bytes] | None = None
        self._flushed = 0  # bytes of the tail segment the reader may read
        self._unsynced = 0  # records appended since the last fsync
        self._last_seq = 0
        self.synced_seq = 0  # every record up to this seq is on disk (fsynced)
        self._synced_at = time.monotonic()
        self._pending = 0  # records not yet committed (in flight included)
        self._bytes = 0
        self._read_index = 0  # segment index and offset of the next record to read
        self._read_offset = 0
        self._read_seq = 0  # a lower bound of the next unread record's seq
        self._ack_written = (0, 0)
        self._ack_at = time.monotonic()
        self._reader: IO[bytes] | None = None
        self._reader_id = -1
        self._commit_point = (0, 0)  # segment index and offset where the undelivered records start
        self._ack_dirty = False  # the commit point moved since the ack file was written
        self._read_lock = threading.Lock()  # read() against drop_oldest(): both move through the segments
        self._last_restored_id = -1  # records in segments up to this one are an earlier run's (seq 0 here)

    # ---- open ------------------------------------------------------------------------------
    def open(self) -> None:
        os.makedirs(self.path, exist_ok=True)
        self.id = self._read_or_create_id()
        ack_segment, ack_offset = self._read_ack()
        for name in sorted(n for n in os.listdir(self.path) if n.endswith(".seg")):
            seg_id = int(name[:-4])
            seg_path = os.path.join(self.path, name)
            if seg_id < ack_segment:
                os.unlink(seg_path)  # delivered before the last run ended
                continue
            start = ack_offset if seg_id == ack_segment else 0
            self._segments.append(self._scan(seg_id, seg_path, start))
        if self._segments and self._segments[0].id == ack_segment:
            self._read_offset = ack_offset
        self._commit_point = (0, self._read_offset)
        if self._segments:
            self._last_restored_id = self._segments[-1].id
        self.restored = self._pending
        if self.restored or self.corrupted:
            log.log(logging.WARNING if self.corrupted else logging.INFO,
                    "buffer %s: %d undelivered events from the last run%s", self.path, self.restored,
                    f"; {self.corrupted} corrupted records skipped" if self.corrupted else "")
        self._ack_written = (self._segments[0].id, self._read_offset) if self._segments else (ack_segment, ack_offset)

    def _scan(self, seg_id: int, seg_path: str, start: int) -> Segment:
        with open(seg_path, "rb") as fh:
            data = fh.read()
        seg = Segment(seg_id, seg_path, first_seq=0, keys=set())
        good_end = 0
        for begin, end, rec in _records(data, 0):
            good_end = end
            if rec is None:
                if begin >= start:
                    self.corrupted += 1
                continue
            seg.count += 1
            if begin < start:
                continue
            self._pending += 1
            seg.min_time = min(seg.min_time, rec[1])
            seg.max_time = max(seg.max_time, rec[1])
            seg.keys.add(rec[2])  # type: ignore[union-attr]
        if good_end < len(data):  # a torn tail: the crash cut the last record short
            log.warning("buffer %s: cut a torn record (%d bytes) off the end of %s", self.path,
                        len(data) - good_end, os.path.basename(seg_path))
            with open(seg_path, "r+b") as fh:
                fh.truncate(good_end)
        seg.size = good_end
        self._bytes += good_end
        return seg

    def _read_or_create_id(self) -> str:
        id_path = os.path.join(self.path, "id")
        try:
            with open(id_path, encoding="ascii") as fh:
                existing = fh.read().strip()
            if existing:
                return existing
        except FileNotFoundError:
            pass
        new = uuid.uuid4().hex
        _write_atomic(id_path, new.encode())
        return new

    def _read_ack(self) -> tuple[int, int]:
        try:
            with open(os.path.join(self.path, "ack"), "rb") as fh:
                doc = orjson.loads(fh.read())
            return int(doc["segment"]), int(doc["offset"])
        except FileNotFoundError:
            return 0, 0
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("buffer %s: the ack file is unreadable (%s); reading every segment from its start",
                        self.path, exc)
            return 0, 0

    def discard(self) -> int:
        """Delete every record (they belong to another lineage: see Router.restore_positions). Returns how many."""
        with self._lock:
            dropped = self._pending
            self._close_writer()
            self._close_reader()
            for seg in self._segments:
                _unlink(seg.path)
            self._segments.clear()
            self._pending = self._bytes = 0
            self._read_index = self._read_offset = 0
            self._write_ack_locked(force=True)
            return dropped

    # ---- state -----------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Records not yet delivered (the batch being delivered included)."""
        return self._pending

    @property
    def size(self) -> int:
        """Bytes on disk."""
        return self._bytes

    @property
    def unread(self) -> bool:
        seg_count = len(self._segments)
        if self._read_index < seg_count - 1:
            return True
        if self._read_index >= seg_count:
            return False
        return self._read_offset < self._segments[self._read_index].size

    def oldest_seq(self) -> int | None:
        """A lower bound of the seq of the oldest unread record (0: one from an earlier run)."""
        if not self._pending:
            return None
        segments = list(self._segments)
        index = self._read_index
        if index < len(segments):
            return max(self._read_seq, segments[index].first_seq)
        return self._read_seq

    def min_time(self) -> float | None:
        """A lower bound of the event time of the undelivered records."""
        if not self._pending:
            return None
        times = [seg.min_time for seg in list(self._segments)]
        low = min(times, default=math.inf)
        return None if low == math.inf else low

    def restored_max_time(self) -> float | None:
        """The latest event time among the records an earlier run left."""
        times = [seg.max_time for seg in self._segments if seg.id <= self._last_restored_id]
        newest = max(times, default=-math.inf)
        return None if newest == -math.inf else newest

    def contains(self, key: bytes) -> bool:
        """Whether an undelivered (or recently delivered) record has this key. The first call per segment
        reads its headers; the tail segment keeps its key set up to date from then on."""
        for seg in list(self._segments):
            keys = seg.keys
            if keys is None:
                keys = self._segment_keys(seg)
            if key in keys:
                return True
        return False

    def _segment_keys(self, seg: Segment) -> set[bytes]:
        with self._lock:
            if self._writer is not None and self._segments and seg is self._segments[-1]:
                self._writer.flush()
            try:
                with open(seg.path, "rb") as fh:
                    data = fh.read()
            except FileNotFoundError:
                data = b""
            keys = {rec[2] for _, _, rec in _records(data, 0) if rec is not None}
            seg.keys = keys
            return keys

    # ---- writer ----------------------------------------------------------------------------
    def append(self, seq: int, t: float, key: bytes, payload: bytes) -> bool:
        """Add a record; False (and nothing written) when the buffer is full."""
        return self.append_record(encode_record(seq, t, key, payload), seq, t, key)

    def append_record(self, record: bytes, seq: int, t: float, key: bytes) -> bool:
        """:meth:`append` of a record already encoded (:func:`encode_record`) with these seq, time and key."""
        with self._lock:
            if self._bytes + len(record) > self.max_bytes and self._bytes:
                return False
            seg = self._tail_segment(seq)
            writer = self._writer
            assert writer is not None
            writer.write(record)
            seg.size += len(record)
            seg.count += 1
            if t < seg.min_time:
                seg.min_time = t
            if seg.keys is not None:
                seg.keys.add(key)
            self._bytes += len(record)
            self._pending += 1
            self._unsynced += 1
            self._last_seq = seq
            if time.monotonic() - self._synced_at >= self.sync_interval:
                self._sync_locked()
        return True

    def _tail_segment(self, seq: int) -> Segment:
        segments = self._segments
        if segments and self._writer is not None and segments[-1].size < self.segment_bytes:
            return segments[-1]
        if self._writer is not None:
            self._sync_locked()
            self._close_writer()
        seg_id = segments[-1].id + 1 if segments else self._ack_written[0] + 1
        seg = Segment(seg_id, os.path.join(self.path, f"{seg_id:012d}.seg"), first_seq=seq)
        if segments and segments[-1].keys is not None:
            seg.keys = set()
        self._writer = open(seg.path, "ab", buffering=WRITE_BUFFER)  # noqa: SIM115 (open until sealed)
        seg.size = self._writer.tell()
        segments.append(seg)
        self._flushed = seg.size
        return seg

    def sync(self, *, force: bool = False) -> None:
        """Flush and fsync what was appended, if ``sync_interval`` passed since the last time (or ``force``)."""
        if not self._unsynced and not force and not self._ack_dirty:
            return
        with self._lock:
            if force or time.monotonic() - self._synced_at >= self.sync_interval:
                self._sync_locked()
            self._write_ack_locked(force=force)  # a delivery position not yet written (due after a second)

    def _sync_locked(self) -> None:
        writer = self._writer
        if writer is not None and self._unsynced:
            writer.flush()
            os.fsync(writer.fileno())
            self._flushed = self._segments[-1].size
        self._unsynced = 0
        self.synced_seq = self._last_seq
        self._synced_at = time.monotonic()

    @property
    def unsynced(self) -> int:
        return self._unsynced

    def drop_oldest(self) -> tuple[int, float | None]:
        """Delete the oldest segment not being read (overflow=drop_oldest when full): (records, their earliest time)."""
        with self._read_lock, self._lock:
            first = self._read_index + 1
            if first >= len(self._segments) - 1:  # only the segment being read and the tail: nothing to drop
                return 0, None
            seg = self._segments.pop(first)
            _unlink(seg.path)
            self._bytes -= seg.size
            self._pending -= seg.count
            return seg.count, (seg.min_time if seg.min_time != math.inf else None)

    # ---- reader ----------------------------------------------------------------------------
    def read(self, limit: int) -> ReadBatch | None:
        """Up to ``limit`` undelivered records, oldest first (after the batch read last, even if that one is
        not committed yet). None when everything written has been read."""
        with self._read_lock:
            return self._read(limit)

    def _read(self, limit: int) -> ReadBatch | None:
        index, offset = self._read_index, self._read_offset
        events: list[Event] = []
        consumed = 0
        first_seq = -1
        while len(events) < limit:
            with self._lock:
                if index >= len(self._segments):
                    break
                seg = self._segments[index]
                is_tail = index == len(self._segments) - 1
                if is_tail and self._writer is not None and self._flushed < seg.size:
                    self._writer.flush()
                    self._flushed = seg.size
                end_of_data = seg.size
            if offset >= end_of_data:
                if is_tail:
                    break
                index, offset = index + 1, 0
                continue
            data, partial = self._read_chunk(seg, offset, end_of_data)
            pos = 0
            for begin, end, rec in _records(data, 0):
                if rec is None and partial and end == len(data):
                    break  # a corrupted stretch up to the chunk's end: read on from its start
                pos = end
                if rec is None:
                    if seg.id <= self._last_restored_id:
                        continue  # counted and logged by the scan at open
                    self.corrupted += 1
                    log.warning("buffer %s: skipped a corrupted record in %s (%d so far)", self.path,
                                os.path.basename(seg.path), self.corrupted)
                    continue
                del begin
                consumed += 1
                seq, _, _, start, stop, compressed = rec
                if seg.id <= self._last_restored_id:
                    seq = 0  # numbered by an earlier run: older than anything of this one
                try:
                    events.append(decode_event(_payload_json(data, start, stop, compressed)))
                except (ValueError, TypeError, KeyError, MalformedEvent) as exc:
                    self.corrupted += 1
                    log.warning("buffer %s: skipped an unreadable record (%s)", self.path, exc)
                    continue
                if first_seq < 0:
                    first_seq = seq
                self._read_seq = seq + 1
                if len(events) >= limit:
                    break
            if pos == 0:  # nothing complete here: a torn tail at the end of sealed data
                if is_tail:
                    break
                index, offset = index + 1, 0
                continue
            offset += pos
        if not consumed and (index, offset) == (self._read_index, self._read_offset):
            return None
        self._read_index, self._read_offset = index, offset
        return ReadBatch(events, max(first_seq, 0), index, offset, consumed)

    def _read_chunk(self, seg: Segment, offset: int, end: int) -> tuple[bytes, bool]:
        """Up to READ_CHUNK bytes of ``seg`` from ``offset`` (more only when a record there is larger, or a
        corrupted stretch runs past it), and whether data is left after them."""
        left = end - offset
        data = self._read_bytes(seg, offset, min(left, READ_CHUNK))
        if len(data) == left or not _needs_more(data):
            return data, len(data) < left
        if len(data) >= PREFIX.size:  # a record larger than a chunk: read that record
            magic, length, _ = PREFIX.unpack_from(data, 0)
            if magic in (MAGIC, MAGIC_LZ4) and HEADER_SIZE + length <= left:
                data = self._read_bytes(seg, offset, HEADER_SIZE + length)
                if _parse(data, 0)[0] == _OK:
                    return data, len(data) < left
        return self._read_bytes(seg, offset, left), False  # a corrupted stretch: the rest of the segment

    def _read_bytes(self, seg: Segment, offset: int, size: int) -> bytes:
        if self._reader_id != seg.id:
            self._close_reader()
            self._reader = open(seg.path, "rb")  # noqa: SIM115 (kept open while reading this segment)
            self._reader_id = seg.id
        reader = self._reader
        assert reader is not None
        reader.seek(offset)
        return reader.read(size)

    def commit(self, batch: ReadBatch) -> None:
        """The batch is settled: its records will not be read again, even after a restart."""
        with self._lock:
            self._pending = max(0, self._pending - batch.count)
            index = batch.segment
            # segments wholly before the batch's end are delivered: delete them
            while index > 0 and self._segments:
                seg = self._segments.pop(0)
                if seg.id == self._reader_id:
                    self._close_reader()
                _unlink(seg.path)
                self._bytes -= seg.size
                index -= 1
                self._read_index -= 1
            self._commit_point = (index, batch.offset)
            self._write_ack_locked(force=False)

    def _write_ack_locked(self, *, force: bool) -> None:
        index, offset = self._commit_point
        if index < len(self._segments):
            ack = (self._segments[index].id, offset)
        else:
            ack = (self._segments[-1].id + 1 if self._segments else self._ack_written[0] + 1, 0)
        if ack == self._ack_written:
            self._ack_dirty = False
            return
        now = time.monotonic()
        if not force and now - self._ack_at < self.sync_interval:
            self._ack_dirty = True
            return
        _write_atomic(os.path.join(self.path, "ack"), orjson.dumps({"segment": ack[0], "offset": ack[1]}))
        self._ack_written = ack
        self._ack_at = now
        self._ack_dirty = False

    # ---- close -----------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            self._sync_locked()
            self._write_ack_locked(force=True)
            self._close_writer()
            self._close_reader()
            if not self._pending:
                for seg in self._segments:
                    _unlink(seg.path)
                self._segments.clear()
                self._bytes = 0

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
            self._reader_id = -1

    def describe(self) -> dict[str, Any]:
        return {"path": self.path, "pending": self._pending, "bytes": self._bytes, "corrupted": self.corrupted}


def _write_atomic(path: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}-", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
