"""Local fakes for the webhook sink tests: an HTTP(S) receiver that records requests, and a tiny
Kubernetes API server that serves ConfigMaps (for kube-eventer's custom_body_configmap).

Both bind 127.0.0.1 on a free port and run on a daemon thread. TLS certificates come from
``trustme`` (a throw-away CA); the receiver can require a client certificate (mutual TLS).
"""

from __future__ import annotations

import ssl
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import orjson
import trustme


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes
    client_cert_cn: str | None = None

    def json(self):  # type: ignore[no-untyped-def]
        return orjson.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class FakeWebhook:
    """Records every request; answers from a script of replies, then with ``default``."""

    def __init__(self, *, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[Request] = []
        self.replies: deque[Reply] = deque()
        self.default = Reply()
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                split = urlsplit(self.path)
                cn = None
                if isinstance(self.connection, ssl.SSLSocket):
                    peer = self.connection.getpeercert()
                    if peer:
                        cn = next((v for rdn in peer.get("subject", ()) for k, v in rdn if k == "commonName"), None)
                request = Request(self.command, split.path, parse_qs(split.query, keep_blank_values=True),
                                  {k.lower(): v for k, v in self.headers.items()}, body, cn)
                with owner._lock:
                    owner.requests.append(request)
                    reply = owner.replies.popleft() if owner.replies else owner.default
                self.send_response(reply.status)
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            do_GET = do_POST = do_PUT = do_PATCH = _handle

        self._server = _Server(("127.0.0.1", 0), Handler)
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-webhook", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def url(self, path: str = "/hook") -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def reply(self, *replies: Reply) -> None:
        with self._lock:
            self.replies.extend(replies)

    def start(self) -> FakeWebhook:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class TLSFiles:
    """A throw-away CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""

    ca: trustme.CA
    ca_file: str
    client_cert_file: str
    client_key_file: str

    @classmethod
    def create(cls, directory: Path) -> TLSFiles:
        ca = trustme.CA()
        ca_file = directory / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        client = ca.issue_cert("eventrouter-client@example.com", common_name="eventrouter-client")
        cert_file, key_file = directory / "client.pem", directory / "client-key.pem"
        for blob in client.cert_chain_pems:
            blob.write_to_path(str(cert_file), append=True)
        client.private_key_pem.write_to_path(str(key_file))
        return cls(ca, str(ca_file), str(cert_file), str(key_file))

    def server_context(self, *, require_client_cert: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        if require_client_cert:
            self.ca.configure_trust(context)
            context.verify_mode = ssl.CERT_REQUIRED
        return context


class FakeKubeAPI:
    """Serves ``GET /api/v1/namespaces/NS/configmaps/NAME`` for the ConfigMaps it holds.

    Requests without ``Authorization: Bearer <token>`` get 401, unknown ConfigMaps 404, like the API server.
    """

    def __init__(self, token: str = "kube-test-token") -> None:
        self.token = token
        self.configmaps: dict[tuple[str, str], dict[str, str]] = {}
        self.requests: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
                pass

            def do_GET(self) -> None:
                owner.requests.append(self.path)
                parts = urlsplit(self.path).path.strip("/").split("/")
                if self.headers.get("Authorization") != f"Bearer {owner.token}":
                    return self._status(401, "Unauthorized")
                if len(parts) != 6 or parts[:2] != ["api", "v1"] or parts[2] != "namespaces" \
                        or parts[4] != "configmaps" or (parts[3], parts[5]) not in owner.configmaps:
                    return self._status(404, "NotFound")
                ns, name = parts[3], parts[5]
                obj = {"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": name, "namespace": ns}, "data": owner.configmaps[(ns, name)]}
                self._send(200, orjson.dumps(obj))

            def _status(self, code: int, reason: str) -> None:
                self._send(code, orjson.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                               "reason": reason, "code": code}))

            def _send(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-kube-api", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def kubeconfig(self, path: Path) -> str:
        """Write a kubeconfig pointing at this server; return its path (for KUBECONFIG)."""
        path.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\n"
            f"clusters:\n- name: test\n  cluster:\n    server: {self.url}\n"
            "contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n"
            f"users:\n- name: test\n  user:\n    token: {self.token}\n"
        )
        return str(path)

    def start(self) -> FakeKubeAPI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
