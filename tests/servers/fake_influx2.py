"""A local HTTP server that answers InfluxDB 2.x/3.x ``POST /api/v2/write`` like the real one.

It records each request (path, query, headers, body), checks the token, org and bucket, parses
nothing else, and answers 204. ``responses`` can queue other answers (status, headers, body) to
test retries: a 429 with ``Retry-After``, a 503, a 400.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeInflux2:
    token: str = "tok-ABC123-secret"
    org: str = "my-org"
    bucket: str = "k8s"
    requests: list[Request] = field(default_factory=list)
    responses: list[tuple[int, dict[str, str], bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                fake._record(self, b"")
                if self.path.startswith(("/ping", "/health")):
                    self._answer(204 if self.path.startswith("/ping") else 200, {}, b"")
                else:
                    self._answer(404, {}, b'{"code":"not found","message":"path not found"}')

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                request = fake._record(self, body)
                self._answer(*fake._answer_for(request))

            def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                if body:
                    self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeInflux2:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def writes(self) -> list[Request]:
        return [r for r in self.requests if r.path == "/api/v2/write"]

    def _record(self, handler: BaseHTTPRequestHandler, body: bytes) -> Request:
        parts = urlsplit(handler.path)
        query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        request = Request(handler.command, parts.path, query, dict(handler.headers.items()), body)
        self.requests.append(request)
        return request

    def _answer_for(self, request: Request) -> tuple[int, dict[str, str], bytes]:
        if request.path != "/api/v2/write":
            return 404, {}, b'{"code":"not found","message":"path not found"}'
        if self.responses:
            return self.responses.pop(0)
        if request.headers.get("Authorization") != f"Token {self.token}":
            return 401, {}, b'{"code":"unauthorized","message":"unauthorized access"}'
        if request.query.get("org") != self.org:
            return (
                404,
                {},
                b'{"code":"not found","message":"organization name \\"%s\\" not found"}'
                % (request.query.get("org", "").encode()),
            )
        if request.query.get("bucket") != self.bucket:
            return 404, {}, b'{"code":"not found","message":"bucket not found"}'
        return 204, {}, b""
