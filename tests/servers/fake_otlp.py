"""A local OTLP/HTTP logs receiver that answers as the Collector's ``otlphttp`` receiver does.

``POST /v1/logs`` with ``Content-Type: application/x-protobuf`` or ``application/json`` (optionally
``Content-Encoding: gzip``) is decoded with the ``opentelemetry-proto`` classes into an
``ExportLogsServiceRequest`` and kept in :attr:`FakeOTLP.requests`. Answers follow the OTLP/HTTP spec:

- success: 200 with an ``ExportLogsServiceResponse`` in the request's encoding (``partial_success``
  filled in when the test scripts a :class:`Reply` with ``rejected``);
- failure: the scripted status with a ``google.rpc.Status`` body in the request's encoding (encoded
  here on the wire by hand, independently of the sink's own declaration) and ``Retry-After`` if given;
- an unsupported content type: 415; a body that does not decode: 400 (as the Collector).

Binds 127.0.0.1 on a free port (HTTPS with ``tls=``); :meth:`stop` shuts it down.
"""

from __future__ import annotations

import gzip
import ssl
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2

PROTOBUF, JSON = "application/x-protobuf", "application/json"


@dataclass
class Reply:
    status: int = 200
    rejected: int = 0  # with status 200: partial_success.rejected_log_records
    message: str = ""  # partial_success.error_message, or the google.rpc.Status message
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Received:
    path: str
    headers: dict[str, str]  # lower-case names
    decoded: Any  # ExportLogsServiceRequest, or None until first read (decode_later)
    body: bytes = b""  # the uncompressed OTLP/JSON body, kept when decoding is left for later

    @property
    def request(self) -> Any:
        if self.decoded is None:
            self.decoded = logs_service_pb2.ExportLogsServiceRequest()
            json_format.Parse(self.body, self.decoded)
        return self.decoded

    def records(self) -> list[tuple[dict[str, Any], Any]]:
        """(resource attributes, LogRecord) for every record of the request, in order."""
        found = []
        for resource_logs in self.request.resource_logs:
            resource = attributes(resource_logs.resource.attributes)
            for scope_logs in resource_logs.scope_logs:
                found.extend((resource, record) for record in scope_logs.log_records)
        return found


def attributes(key_values: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in key_values:
        kind = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, kind) if kind else None
    return out


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def status_body(code: int, message: str, content_type: str) -> bytes:
    """A google.rpc.Status (field 1: code, field 2: message) in the given encoding."""
    if content_type == JSON:
        return orjson.dumps({"code": code, "message": message})
    text = message.encode()
    return b"\x08" + _varint(code) + b"\x12" + _varint(len(text)) + text


# google.rpc.Code the Collector pairs with an HTTP status
_RPC_CODE = {400: 3, 401: 16, 403: 7, 404: 5, 413: 8, 429: 8, 500: 13, 502: 14, 503: 14, 504: 4}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class FakeOTLP:
    """``tls``: serve HTTPS with this server context (see ``tests.servers.fake_webhook.TLSFiles``).
    ``decode_later``: an OTLP/JSON body is only checked to be JSON when it arrives and decoded into the
    request when read: protobuf's JSON parser costs ~200 us per record, and the benchmark runs this server
    inside its own process, where that time would be counted as the sink's."""

    def __init__(self, *, tls: ssl.SSLContext | None = None, decode_later: bool = False) -> None:
        self.received: list[Received] = []
        self.replies: deque[Reply] = deque()
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
                if content_type not in (PROTOBUF, JSON):
                    return self._answer(415, b"", "text/plain")
                try:
                    if (self.headers.get("Content-Encoding") or "").lower() == "gzip":
                        body = gzip.decompress(body)
                    request: Any = logs_service_pb2.ExportLogsServiceRequest()
                    if content_type == JSON and decode_later:
                        orjson.loads(body)
                        request = None
                    elif content_type == JSON:
                        json_format.Parse(body, request)
                    else:
                        request.ParseFromString(body)
                except Exception as exc:
                    return self._answer(400, status_body(3, f"failed to decode: {exc}", content_type), content_type)
                with owner._lock:
                    reply = owner.replies.popleft() if owner.replies else Reply()
                    if reply.status == 200:
                        owner.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()},
                                                       request, body if request is None else b""))
                if reply.status == 200:
                    response = logs_service_pb2.ExportLogsServiceResponse()
                    if reply.rejected or reply.message:
                        response.partial_success.rejected_log_records = reply.rejected
                        response.partial_success.error_message = reply.message
                    out = (json_format.MessageToJson(response).encode() if content_type == JSON
                           else response.SerializeToString())
                    return self._answer(200, out, content_type, reply.headers)
                out = status_body(_RPC_CODE.get(reply.status, 2), reply.message, content_type)
                return self._answer(reply.status, out, content_type, reply.headers)

            def _answer(self, status: int, body: bytes, content_type: str,
                        headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = _Server(("127.0.0.1", 0), Handler)
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> FakeOTLP:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def records(self) -> list[tuple[dict[str, Any], Any]]:
        with self._lock:
            return [pair for received in self.received for pair in received.records()]
