"""A local Loki push endpoint that decodes the real wire formats and answers as Loki does.

``POST /loki/api/v1/push`` takes a snappy-compressed (block format) protobuf ``logproto.PushRequest``
(decoded here by a small wire-format reader, independently of the sink's own message declaration) or the
JSON form (optionally gzip). Stored entries are kept in :attr:`FakeLoki.entries`. Loki's behaviour that
the sink relies on:

- 204 on success;
- streams must have at least one label (400 otherwise), ``X-Scope-OrgID`` is required when
  ``tenants`` is set (401 ``no org id``), basic/bearer credentials are checked when ``auth`` is set (401);
- ``reject_old_samples``: entries older than ``max_age`` before now are refused by the distributor with
  ``entry for stream '{...}' has timestamp too old: ...`` (400); the other entries are stored;
- unordered writes: per stream, an entry older than the newest one minus ``max_chunk_age / 2`` is
  ignored by the ingester with Loki 3's ``entry with timestamp ... ignored, reason: 'entry too far
  behind, ...'`` lines and ``user '...', total ignored: N out of M for stream: {...}`` (400); the others
  are stored. Loki prints the stream with the labels it added (``service_name``), lists at most
  ``max_listed`` entries, and answers with the outcome of the push's last stream only (its
  ``instance.Push`` keeps the last stream's error, or none if the last stream was fine);
- scripted answers (:class:`Reply`): a 429 with Loki's rate-limit text, 5xx, ...
"""

from __future__ import annotations

import base64
import gzip
import re
import threading
import time
from collections import deque
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
    status: int
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)


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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class FakeLoki:
    def __init__(self, *, max_age: float | None = None, max_chunk_age: float = 7200.0, max_listed: int = 1000,
                 tenants: bool = False, auth: str | None = None) -> None:
        self.entries: list[Entry] = []
        self.requests: list[dict[str, str]] = []  # headers of every push (lower-case names)
        self.replies: deque[Reply] = deque()
        self.max_age, self.max_chunk_age, self.max_listed = max_age, max_chunk_age, max_listed
        self.tenants, self.auth = tenants, auth
        self._newest: dict[tuple[str, str], int] = {}  # (tenant, stream) -> newest entry time
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
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
            if self.replies:
                reply = self.replies.popleft()
                return reply.status, reply
        tenant = headers.get("x-scope-orgid", "")
        if self.tenants and not tenant:
            return 401, "no org id"
        if self.auth is not None and headers.get("authorization") != self.auth:
            return 401, "Unauthorized"
        try:
            streams = self._decode(headers, body)
        except Exception as exc:
            return 400, f"loghttp.PushRequest.Streams: {exc}"
        if any(not labels for labels, _ in streams):
            return 400, "error at least one label pair is required per stream"
        now = time.time_ns()
        errors: list[str] = []  # the distributor's validation errors: all of them
        ingester_error = ""  # the ingester's answer: the outcome of the LAST stream only (Loki's instance.Push)
        with self._lock:
            for labels, entries in streams:
                key = (tenant, label_text(labels))
                kept: list[tuple[int, str]] = []
                for ns, line in entries:  # the distributor's validation
                    if self.max_age is not None and ns < now - int(self.max_age * 1e9):
                        errors.append(f"entry for stream '{label_text(labels)}' has timestamp too old: {rfc3339(ns)}, "
                                      f"oldest acceptable timestamp is: {rfc3339(now - int(self.max_age * 1e9))}")
                    else:
                        kept.append((ns, line))
                ignored: list[int] = []
                for ns, line in kept:  # the ingester's unordered-writes window
                    newest = self._newest.get(key, 0)
                    bound = newest - int(self.max_chunk_age / 2 * 1e9)
                    if newest and ns < bound:
                        ignored.append(ns)
                        continue
                    self._newest[key] = max(newest, ns)
                    self.entries.append(Entry(labels, ns, line, tenant))
                if kept:  # a stream the distributor emptied never reaches the ingester
                    ingester_error = ""
                if ignored:
                    shown = {**labels, "service_name": labels.get("service_name", "unknown_service")}
                    listed = [f"entry with timestamp {go_time(ns)} ignored, reason: 'entry too far behind, entry "
                              f"timestamp is: {rfc3339(ns)}, oldest acceptable timestamp is: "
                              f"{rfc3339(self._newest[key] - int(self.max_chunk_age / 2 * 1e9))}',"
                              for ns in ignored[: self.max_listed]]
                    ingester_error = ("\n".join(listed) + f"\nuser '{tenant or 'fake'}', total ignored: "
                                      f"{len(ignored)} out of {len(entries)} for stream: {label_text(shown)}")
        errors += [ingester_error] if ingester_error else []
        return (400, "\n".join(errors)) if errors else (204, "")

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
