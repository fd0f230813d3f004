"""A local Loki push endpoint that decodes the real wire formats and answers as Loki (2.9, 3.x) does.

``POST /loki/api/v1/push`` takes a snappy-compressed (block format) protobuf ``logproto.PushRequest``
(decoded here by a small wire-format reader, independently of the sink's own message declaration) or the
JSON form (optionally gzip). Stored entries are kept in :attr:`FakeLoki.entries`. What it models, after
Loki's source (pkg/distributor/distributor.go, validator.go, pkg/ingester/instance.go, stream.go):

- 204 on success; ``X-Scope-OrgID`` is required when ``tenants`` is set (401 ``no org id``), basic/bearer
  credentials are checked when ``auth`` is set (401); error bodies are ``text/plain`` with a final newline;
- the distributor validates every entry on its own, whatever the others: older than ``max_age`` before now
  (``reject_old_samples``), newer than now + ``grace`` (``creation_grace_period``, 10 minutes), a line longer
  than ``max_line_size`` bytes; a stream without labels is skipped whole. The refused entries are dropped,
  the others go on; its answer lists every refusal, grouped (``N errors like: ...``, joined by ``; ``,
  in Go's random map order);
- the ingester, per stream: an entry identical (time and line) to the stream's last one is skipped; an entry
  older than the stream's newest minus ``max_chunk_age / 2`` is ignored ("entry too far behind"); the others
  are stored, an identical entry only once (Loki dedupes it in its head block, and queries dedupe the rest).
  Ignored entries give ``entry with timestamp ... ignored, reason: '...'`` lines, at most ``max_listed``
  (``max_returned_stream_errors``, 10), then ``user 'T', total ignored: N out of M for stream: {...}`` with
  the labels Loki shows (``service_name`` added);
- the ingester answers with the outcome of the push's LAST stream only (``instance.Push`` keeps one error,
  overwritten by each stream, nil included), and the distributor answers with the ingester's error if there
  is one, dropping its own validation errors, else with those: refusals in other streams go unreported;
- scripted answers (:class:`Reply`): a 429 with Loki's rate-limit text, 5xx, ...
"""

from __future__ import annotations

import base64
import gzip
import random
import re
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import cramjam
import orjson

RATE_LIMITED = ("Ingestion rate limit exceeded for user fake (limit: 4194304 bytes/sec) while attempting to ingest "
                "'{lines}' lines totaling '{bytes}' bytes, reduce log volume or contact your Loki administrator to "
                "see if the limit can be increased")
_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass
class Reply:
    """A scripted answer to the next push. ``stored=True``: Loki handles the push first (stores what it
    accepts), then this answer is what the client gets (a gateway timing out after the write, say)."""
    status: int
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    stored: bool = False


PASS = None  # in FakeLoki.replies: answer this push as Loki would


@dataclass
class Entry:
    labels: dict[str, str]
    ns: int
    line: str
    tenant: str


# ---- protobuf wire format, read by hand --------------------------------------------------------
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def wire_fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) for each field of a message: varints as int, length-delimited as bytes."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            out.append((number, value))
        elif wire == 2:
            length, pos = _varint(buf, pos)
            out.append((number, buf[pos:pos + length]))
            pos += length
        elif wire == 1:
            out.append((number, int.from_bytes(buf[pos:pos + 8], "little")))
            pos += 8
        elif wire == 5:
            out.append((number, int.from_bytes(buf[pos:pos + 4], "little")))
            pos += 4
        else:
            raise ValueError(f"wire type {wire}")
    return out


def decode_push(buf: bytes) -> list[tuple[str, list[tuple[int, str]]]]:
    """PushRequest -> [(labels string, [(ns, line)])]."""
    streams = []
    for number, stream in wire_fields(buf):
        if number != 1 or not isinstance(stream, bytes):
            continue
        labels, entries = "", []
        for field_number, value in wire_fields(stream):
            if field_number == 1 and isinstance(value, bytes):
                labels = value.decode()
            elif field_number == 2 and isinstance(value, bytes):
                ns, line = 0, ""
                for entry_field, entry_value in wire_fields(value):
                    if entry_field == 1 and isinstance(entry_value, bytes):
                        parts = dict(wire_fields(entry_value))
                        ns = int(parts.get(1, 0)) * 1_000_000_000 + int(parts.get(2, 0))
                    elif entry_field == 2 and isinstance(entry_value, bytes):
                        line = entry_value.decode()
                entries.append((ns, line))
        streams.append((labels, entries))
    return streams


def parse_labels(text: str) -> dict[str, str]:
    return {k: re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), v)
            for k, v in _PAIR.findall(text)}


def label_text(labels: dict[str, str]) -> str:
    """Loki's printed form: sorted, ``{a="x", b="y"}``."""
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def go_time(ns: int) -> str:
    """Go's time.Time.String() of a UTC time: fraction without trailing zeros."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")
    if nanos:
        text += "." + f"{nanos:09d}".rstrip("0")
    return text + " +0000 UTC"


def rfc3339(ns: int) -> str:
    return datetime.fromtimestamp(ns // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# the labels Loki 3 looks at, in order, for the service_name it adds (limits_config.discover_service_name)
_SERVICE_LABELS = ("service", "app", "application", "app_name", "name", "app_kubernetes_io_name", "container",
                   "container_name", "k8s_container_name", "component", "workload", "job", "k8s_job_name")


def with_service_name(labels: dict[str, str]) -> dict[str, str]:
    if "service_name" in labels:
        return labels
    found = next((labels[name] for name in _SERVICE_LABELS if labels.get(name)), "unknown_service")
    return {**labels, "service_name": found}


def _grouped(errors: list[str]) -> str:
    """util.GroupedErrors: each distinct message once, with its count unless it is the only one, in Go's
    random map order, joined by '; '."""
    counts = Counter(errors)
    texts = [f"{n} errors like: {text}" if len(counts) > 1 or n > 1 else text for text, n in counts.items()]
    random.shuffle(texts)
    return "; ".join(texts)


@dataclass
class _Stream:
    newest: int = 0
    last: tuple[int, str] = (0, "")
    stored: set[tuple[int, str]] = field(default_factory=set)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class FakeLoki:
    def __init__(self, *, max_age: float | None = None, max_chunk_age: float = 7200.0, max_listed: int = 10,
                 max_line_size: int = 0, grace: float = 600.0, tenants: bool = False, auth: str | None = None) -> None:
        self.entries: list[Entry] = []
        self.requests: list[dict[str, str]] = []  # headers of every push (lower-case names)
        self.pushes: list[list[tuple[dict[str, str], int]]] = []  # per push: (labels, entries) of each stream
        self.replies: deque[Reply | None] = deque()
        self.max_age, self.max_chunk_age, self.max_listed = max_age, max_chunk_age, max_listed
        self.max_line_size, self.grace = max_line_size, grace
        self.tenants, self.auth = tenants, auth
        self._streams: dict[tuple[str, str], _Stream] = {}  # (tenant, labels) -> the ingester's stream
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            # keep-alive, and no Nagle delay between the headers and the body, as Loki (Go's net/http) answers
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, text = owner._push(headers, body)
                self.send_response(status)
                reply_headers = {}
                if status != 204:
                    reply_headers["Content-Type"] = "text/plain; charset=utf-8"
                if isinstance(text, Reply):
                    reply_headers.update(text.headers)
                    text = text.body
                out = (text + "\n").encode() if text else b""
                for key, value in reply_headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self._server = _Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> FakeLoki:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ---- Loki's push handling ------------------------------------------------------------------
    def _push(self, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        with self._lock:
            self.requests.append(headers)
            reply = self.replies.popleft() if self.replies else PASS
        if reply is not None and not reply.stored:
            return reply.status, reply
        status, text = self._handle(headers, body)
        return (reply.status, reply) if reply is not None else (status, text)

    def _handle(self, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        tenant = headers.get("x-scope-orgid", "")
        if self.tenants and not tenant:
            return 401, "no org id"
        if self.auth is not None and headers.get("authorization") != self.auth:
            return 401, "Unauthorized"
        try:
            streams = self._decode(headers, body)
        except Exception as exc:
            return 400, f"loghttp.PushRequest.Streams: {exc}"
        with self._lock:
            self.pushes.append([(labels, len(entries)) for labels, entries in streams])
            valid, errors = self._validate(streams, time.time_ns())
            ingester_error = ""
            for labels, entries in valid:  # instance.Push: each stream's outcome replaces the last one's
                ingester_error = self._ingest(tenant, labels, entries)
        if ingester_error:
            return 400, ingester_error
        return (400, _grouped(errors)) if errors else (204, "")

    def _validate(self, streams: list[tuple[dict[str, str], list[tuple[int, str]]]],
                  now: int) -> tuple[list[tuple[dict[str, str], list[tuple[int, str]]]], list[str]]:
        """The distributor: each entry checked on its own; the refused ones dropped, each with its message."""
        valid, errors = [], []
        oldest = now - int(self.max_age * 1e9) if self.max_age is not None else None
        for labels, entries in streams:
            if not entries:
                continue
            if not labels:
                errors.append("error at least one label pair is required per stream")
                continue
            shown = label_text(with_service_name(labels))
            kept = []
            for ns, line in entries:
                if oldest is not None and ns < oldest:
                    errors.append(f"entry for stream '{shown}' has timestamp too old: {rfc3339(ns)}, "
                                  f"oldest acceptable timestamp is: {rfc3339(oldest)}")
                elif ns > now + int(self.grace * 1e9):
                    errors.append(f"entry for stream '{shown}' has timestamp too new: {rfc3339(ns)}")
                elif self.max_line_size and len(line.encode()) > self.max_line_size:
                    errors.append(f"max entry size '{self.max_line_size}' bytes exceeded for stream '{shown}' while "
                                  f"adding an entry with length '{len(line.encode())}' bytes")
                else:
                    kept.append((ns, line))
            if kept:
                valid.append((labels, kept))
        return valid, errors

    def _ingest(self, tenant: str, labels: dict[str, str], entries: list[tuple[int, str]]) -> str:
        """One stream's push in the ingester: its error text, or "" if no entry failed."""
        stream = self._streams.setdefault((tenant, label_text(labels)), _Stream())
        window = int(self.max_chunk_age / 2 * 1e9)
        ignored: list[tuple[int, int]] = []  # (entry time, the oldest time acceptable then)
        for ns, line in entries:
            if (ns, line) == stream.last:
                continue  # the same as the stream's last entry: already there
            cutoff = stream.newest - window
            if stream.newest and ns < cutoff:
                ignored.append((ns, cutoff))
                continue
            stream.last, stream.newest = (ns, line), max(stream.newest, ns)
            if (ns, line) not in stream.stored:
                stream.stored.add((ns, line))
                self.entries.append(Entry(labels, ns, line, tenant))
        if not ignored:
            return ""
        listed = ignored[: self.max_listed] if self.max_listed else ignored
        lines = [f"entry with timestamp {go_time(ns)} ignored, reason: 'entry too far behind, entry timestamp is: "
                 f"{rfc3339(ns)}, oldest acceptable timestamp is: {rfc3339(cutoff)}'," for ns, cutoff in listed]
        return "\n".join([*lines, f"user '{tenant or 'fake'}', total ignored: {len(ignored)} out of {len(entries)} "
                                   f"for stream: {label_text(with_service_name(labels))}"])

    @staticmethod
    def _decode(headers: dict[str, str], body: bytes) -> list[tuple[dict[str, str], list[tuple[int, str]]]]:
        content_type = headers.get("content-type", "")
        if content_type.startswith("application/x-protobuf"):
            raw = bytes(cramjam.snappy.decompress_raw(body))
            return [(parse_labels(labels), entries) for labels, entries in decode_push(raw)]
        if headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        doc = orjson.loads(body)
        return [(dict(s["stream"]), [(int(ns), line) for ns, line, *_ in s["values"]]) for s in doc["streams"]]


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
