"""A local HTTP server that answers like Elasticsearch (5 to 9) or OpenSearch (1 to 3).

It implements what the sink uses, with the real servers' rules and response shapes:

- ``GET /``: the version banner (OpenSearch adds ``"distribution": "opensearch"``; Elasticsearch
  7.14+ sends ``X-Elastic-Product: Elasticsearch``);
- ``POST /_bulk`` (and ``/<target>/_bulk``): NDJSON that must end with ``\\n``; 5/6 need ``_type``,
  8+ refuse it; per-item statuses with ``"errors": true``; data streams take ``create`` only and
  need ``@timestamp``; ``create`` of an existing ``_id`` is a 409 ``version_conflict_engine_exception``;
- ``PUT /_index_template/<name>`` (7.8+ and OpenSearch) and ``PUT /_template/<name>`` (typed
  mappings on 5/6, ``template`` instead of ``index_patterns`` on 5);
- basic auth / API key checks (401 ``security_exception``) and ``http.max_content_length`` (413).

Tests inject failures (``fail_items``, ``fail_requests``) and read what arrived: ``requests``,
``docs[index][_id]`` (the stored sources), ``templates``.
"""

from __future__ import annotations

import base64
import threading
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

ERROR_REASONS = {
    429: ("es_rejected_execution_exception", "rejected execution of coordinating operation [shard_detail=[x][0]]"),
    400: ("document_parsing_exception", "[1:42] failed to parse field [count] of type [long] in document"),
    409: ("version_conflict_engine_exception", "version conflict, document already exists (current version [1])"),
    500: ("internal_server_error", "internal error"),
    503: ("unavailable_shards_exception", "primary shard is not active"),
}


@dataclass
class Recorded:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


class FakeElasticsearch:
    """Start with :meth:`start` (127.0.0.1, a free port), stop with :meth:`stop`."""

    def __init__(self, version: str = "8.13.4", distribution: str = "elasticsearch", *,
                 user: str | None = None, password: str | None = None, api_key: str | None = None,
                 max_content_length: int = 100 * 1024 * 1024, ssl_context: Any = None) -> None:
        self.version = version
        self.distribution = distribution
        self.major, self.minor = (int(x) for x in version.split(".")[:2])
        self.user, self.password, self.api_key = user, password, api_key
        self.max_content_length = max_content_length
        self.ssl_context = ssl_context
        self.requests: list[Recorded] = []
        self.docs: dict[str, dict[str, dict[str, Any]]] = {}
        self.templates: dict[str, dict[str, Any]] = {}  # path -> body
        self.writes: dict[tuple[str, str], int] = {}  # (index, _id) -> times written
        # injected failures: _id -> deque of statuses for its next items; request-level statuses
        self.fail_items: dict[str, deque[int]] = {}
        self.fail_requests: deque[tuple[int, dict[str, str]]] = deque()
        self.banner_status = 200
        self.template_status = 200  # e.g. 403: the user may not manage templates
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # ---- control -----------------------------------------------------------------------------
    def start(self) -> FakeElasticsearch:
        fake = self

        class Handler(_Handler):
            server_fake = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if self.ssl_context is not None:
            self._server.socket = self.ssl_context.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True, name="fake-es").start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        assert self._server is not None
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}"

    def fail_item(self, doc_id: str, *statuses: int) -> None:
        """The next items for ``doc_id`` answer these statuses (not stored), one per bulk."""
        self.fail_items.setdefault(doc_id, deque()).extend(statuses)

    def fail_request(self, status: int, times: int = 1, headers: dict[str, str] | None = None) -> None:
        """The next ``times`` bulk requests answer ``status`` as a whole."""
        self.fail_requests.extend([(status, headers or {})] * times)

    def bulk_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith("/_bulk")]

    def all_docs(self) -> list[dict[str, Any]]:
        return [doc for index in self.docs.values() for doc in index.values()]

    # ---- behaviour ---------------------------------------------------------------------------
    @property
    def typed(self) -> bool:
        return self.distribution == "elasticsearch" and self.major <= 6

    def banner(self) -> dict[str, Any]:
        version: dict[str, Any] = {"number": self.version}
        if self.distribution == "opensearch":
            version = {"distribution": "opensearch", "number": self.version, "build_type": "tar",
                       "build_hash": "6adc0bf476e1624190564d7fbe4aba00ccf49ad8",
                       "build_date": "2023-10-13T02:55:55.511945994Z", "build_snapshot": False,
                       "lucene_version": "9.7.0", "minimum_wire_compatibility_version": "7.10.0",
                       "minimum_index_compatibility_version": "7.0.0"}
            tagline = "The OpenSearch Project: https://opensearch.org/"
        else:
            if self.major >= 6:
                version.update(build_flavor="default")
            version.update(build_type="docker", build_hash="48a287ab9497e852de30327444b0809e55d46466",
                           build_date="2024-05-06T22:04:45.107454559Z", build_snapshot=False,
                           lucene_version="9.10.0", minimum_wire_compatibility_version="7.17.0",
                           minimum_index_compatibility_version="7.0.0")
            tagline = "You Know, for Search"
        return {"name": "node-1", "cluster_name": "docker-cluster", "cluster_uuid": "dA5bxh0dT4mYyGJ0yR1sZw",
                "version": version, "tagline": tagline}

    def authorized(self, headers: dict[str, str]) -> bool:
        if self.user is None and self.api_key is None:
            return True
        auth = headers.get("authorization", "")
        if self.api_key is not None and auth == f"ApiKey {self.api_key}":
            return True
        if self.user is not None:
            expected = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            return auth == f"Basic {expected}"
        return False

    def is_data_stream(self, name: str) -> bool:
        for path, body in self.templates.items():
            if path.startswith("/_index_template/") and "data_stream" in body:
                for pattern in body.get("index_patterns", ()):
                    if name == pattern or (pattern.endswith("*") and name.startswith(pattern[:-1])):
                        return True
        return False

    def put_template(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if self.template_status != 200:
            return self.template_status, _error("security_exception", "action [indices:admin/index_template/put] "
                                                "is unauthorized for user [writer]")
        composable = path.startswith("/_index_template/")
        if composable and self.distribution == "elasticsearch" and (self.major, self.minor) < (7, 8):
            return 405 if self.major >= 7 else 400, {"error": f"no handler found for uri [{path}] and method [PUT]"}
        patterns_key = "template" if (not composable and self.major <= 5 and self.distribution == "elasticsearch") \
            else "index_patterns"
        if patterns_key not in body:
            return 400, _error("action_request_validation_exception",
                               f"Validation Failed: 1: {patterns_key.replace('_', ' ')} is missing;")
        mappings = (body.get("template") or {}).get("mappings") if composable else body.get("mappings")
        if mappings is not None:
            nested = "properties" not in mappings and len(mappings) == 1
            if self.typed and not nested:
                return 400, _error("mapper_parsing_exception", "Root mapping definition has unsupported parameters")
            if not self.typed and nested:
                return 400, _error("illegal_argument_exception", "The mapping definition cannot be nested under a "
                                   "type [_doc] unless include_type_name is set to true.")
        self.templates[path] = body
        return 200, {"acknowledged": True}

    def bulk(self, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        if not body.endswith(b"\n"):
            return 400, _error("illegal_argument_exception", "The bulk request must be terminated by a newline [\\n]")
        default_index = path[: -len("/_bulk")].strip("/") or None
        lines = body.split(b"\n")[:-1]
        actions: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        i = 0
        while i < len(lines):  # the whole request is parsed and validated before any item is written
            action = orjson.loads(lines[i])
            ((op, meta),) = action.items()
            if op not in ("index", "create"):
                return 400, _error("illegal_argument_exception", f"Malformed action/metadata line [{i + 1}]")
            if "_type" in meta and self.distribution == "elasticsearch" and self.major >= 8:
                return 400, _error("illegal_argument_exception",
                                   f"Action/metadata line [{i + 1}] contains an unknown parameter [_type]")
            if "_type" not in meta and self.typed:
                return 400, _error("action_request_validation_exception", "Validation Failed: 1: type is missing;")
            actions.append((op, meta, orjson.loads(lines[i + 1])))
            i += 2
        items = [{op: self.write(op, meta.get("_index") or default_index, meta, source)}
                 for op, meta, source in actions]
        errors = any(not 200 <= next(iter(it.values()))["status"] < 300 for it in items)
        return 200, {"took": 3, "errors": errors, "items": items}

    def write(self, op: str, index: str, meta: dict[str, Any], source: dict[str, Any]) -> dict[str, Any]:
        doc_id = meta.get("_id") or f"auto-{len(self.writes)}"
        head: dict[str, Any] = {"_index": index}
        if self.typed:
            head["_type"] = meta["_type"]
        head["_id"] = doc_id
        injected = self.fail_items.get(doc_id)
        if injected:
            return {**head, **_item_error(injected.popleft())}
        if self.is_data_stream(index):
            if op != "create":
                return {**head, "status": 400, "error": {
                    "type": "illegal_argument_exception",
                    "reason": "only write ops with an op_type of create are allowed in data streams"}}
            if "@timestamp" not in source:
                return {**head, "status": 400, "error": {
                    "type": "document_parsing_exception",
                    "reason": "[1:2] failed to parse: data stream timestamp field [@timestamp] is missing"}}
            head["_index"] = f".ds-{index}-2026.04.14-000001"
        stored = self.docs.setdefault(index, {})
        if op == "create" and doc_id in stored:
            return {**head, **_item_error(409, f"[{doc_id}]: ")}
        existed = doc_id in stored
        stored[doc_id] = source
        self.writes[(index, doc_id)] = self.writes.get((index, doc_id), 0) + 1
        version = self.writes[(index, doc_id)]
        return {**head, "_version": version, "result": "updated" if existed else "created",
                "_shards": {"total": 2, "successful": 1, "failed": 0}, "_seq_no": len(self.writes) - 1,
                "_primary_term": 1, "status": 200 if existed else 201}


def _error(kind: str, reason: str) -> dict[str, Any]:
    cause = {"type": kind, "reason": reason}
    return {"error": {"root_cause": [cause], **cause}, "status": 400}


def _item_error(status: int, prefix: str = "") -> dict[str, Any]:
    kind, reason = ERROR_REASONS.get(status, ("exception", "failure"))
    return {"status": status, "error": {"type": kind, "reason": prefix + reason}}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_fake: FakeElasticsearch

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        fake = self.server_fake
        data = b"" if body is None else orjson.dumps(body)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if fake.distribution == "elasticsearch" and (fake.major, fake.minor) >= (7, 14):
            self.send_header("X-Elastic-Product", "Elasticsearch")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        fake = self.server_fake
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path, _, query = self.path.partition("?")
        headers = {k.lower(): v for k, v in self.headers.items()}
        with fake.lock:
            fake.requests.append(Recorded(self.command, path, query, headers, body))
            if not fake.authorized(headers):
                cause = {"type": "security_exception",
                         "reason": f"missing authentication credentials for REST request [{path}]"}
                self._reply(401, {"error": {"root_cause": [cause], **cause}, "status": 401},
                            {"WWW-Authenticate": 'Basic realm="security" charset="UTF-8"'})
                return
            if self.command == "GET" and path == "/":
                if fake.banner_status != 200:
                    self._reply(fake.banner_status, _error("security_exception", "action [cluster:monitor/main] "
                                                           "is unauthorized"))
                    return
                self._reply(200, fake.banner())
                return
            if self.command == "PUT" and (path.startswith("/_index_template/") or path.startswith("/_template/")):
                self._reply(*fake.put_template(path, orjson.loads(body)))
                return
            if self.command in ("POST", "PUT") and path.endswith("/_bulk"):
                if length > fake.max_content_length:
                    self._reply(413, None)
                    return
                if fake.fail_requests:
                    status, extra = fake.fail_requests.popleft()
                    kind, reason = ERROR_REASONS.get(status, ("exception", "failure"))
                    cause = {"type": kind, "reason": reason}
                    self._reply(status, {"error": {"root_cause": [cause], **cause}, "status": status}, extra)
                    return
                if not headers.get("content-type", "").startswith(("application/x-ndjson", "application/json")):
                    self._reply(406, {"error": f"Content-Type header [{headers.get('content-type')}] is not "
                                      "supported", "status": 406})
                    return
                self._reply(*fake.bulk(path, body))
                return
            self._reply(400, {"error": f"no handler found for uri [{self.path}] and method [{self.command}]"})

    do_GET = do_POST = do_PUT = _handle
