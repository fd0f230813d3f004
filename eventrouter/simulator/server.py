"""A fake Kubernetes API server for Events, Leases and ConfigMaps, speaking the real wire protocol.

Endpoints (JSON only, bearer-token auth when a token is set; 401 without it):

- ``GET /api/v1/events``, ``/api/v1/namespaces/NS/events``, ``/apis/events.k8s.io/v1[/namespaces/NS]/events``:
  list with ``limit``/``continue`` (a consistent snapshot; the token expires on compaction: 410),
  or watch (``watch=1``, ``resourceVersion``, ``allowWatchBookmarks``, ``timeoutSeconds``) as a chunked
  stream of one JSON watch event per line, with BOOKMARKs while idle and ``ERROR`` 410 for a
  compacted resourceVersion (HTTP 200 first, as the real server does).
- ``/apis/coordination.k8s.io/v1/namespaces/NS/leases[/NAME]`` and ``/api/v1/namespaces/NS/configmaps[/NAME]``:
  GET, POST (409 if it exists), PUT (409 on a resourceVersion conflict, 404 if missing).
- ``GET /version``.

Faults are injected through :class:`Faults` (one-shot counters, safe to set while clients run).
"""

from __future__ import annotations

import base64
import bisect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import orjson

from eventrouter.simulator.store import Conflict, Expired, NotFound, list_key, to_events_v1
from eventrouter.simulator.workloads import list_path

if TYPE_CHECKING:
    from eventrouter.simulator.sim import Simulator

log = logging.getLogger("eventrouter.simulator")


@dataclass
class Faults:
    """What goes wrong next. Each counter is consumed by the requests it affects."""

    # taken by one open (or the next) watch, counting from the moment it is set:
    gone_after: int | None = None  # send ERROR 410 after this many more events, then close
    drop_after: int | None = None  # close mid-line after this many more events
    stall_after: int | None = None  # after this many more events, send nothing for stall_seconds
    stall_seconds: float = 30.0
    http_gone: int = 0  # the next N watch requests get HTTP 410
    errors: list[int] = field(default_factory=list)  # statuses for the next requests (429, 500, ...)
    retry_after: int | None = None  # Retry-After seconds sent with 429/5xx
    # seconds of idle watch between BOOKMARKs; 0 (the default): never, as kube-apiserver for Events, which
    # are watched from etcd without a watch cache and get no bookmarks even with allowWatchBookmarks=true
    bookmark_interval: float = 0.0
    forbid: list[str] = field(default_factory=list)  # 403 for paths containing any of these (missing RBAC)
    # run before answering the next list requests that carry a continue token, one each (None: nothing);
    # e.g. changes and a compaction between two pages, as a list slower than etcd's history
    on_continue: list[Callable[[], object] | None] = field(default_factory=list)

    def take_error(self) -> int | None:
        return self.errors.pop(0) if self.errors else None


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    verb: str  # the RBAC verb: get, list, watch, create, update
    status: int
    query: dict[str, str] = field(default_factory=dict)


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


_REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed",
            409: "Conflict", 410: "Expired", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    sim: Any


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    # ---- plumbing ----------------------------------------------------------------------------
    def _send_json(self, code: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = orjson.dumps(body)
        self._log(code)  # before the answer leaves: a client that got it finds it in the request log
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _fail(self, code: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._send_json(code, status_body(code, _REASONS.get(code, "Unknown"), message), headers)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        return orjson.loads(self.rfile.read(length)) if length else {}

    def _route(self, method: str) -> None:
        sim = self.server.sim
        if not sim.listening:
            # stopped or terminating: like a server that closed its idle keep-alive connections, answer
            # nothing on them (only watches already open stream on until the grace period ends)
            self.close_connection = True
            return
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        parts = [p for p in url.path.split("/") if p]
        verb = _verb(method, parts, query)
        self._logged = False
        self._request = (method, url.path, verb, query)
        status = 0
        try:
            status = self._handle(sim, method, parts, query)
        finally:
            self._log(status)

    def _log(self, status: int) -> None:
        """Log once, when the status is known (a watch logs when its stream starts)."""
        if not self._logged:
            self._logged = True
            self.server.sim.log_request(Request(*self._request[:3], status, self._request[3]))

    def _handle(self, sim: Simulator, method: str, parts: list[str], query: dict[str, str]) -> int:
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        if sim.token and (scheme.lower() != "bearer" or token.strip() != sim.token):
            self._fail(401, "Unauthorized")
            return 401
        path = "/" + "/".join(parts)
        if any(part in path for part in sim.faults.forbid):
            self._fail(403, _forbidden(sim.service_account, self._request[2], parts))
            return 403
        error = sim.faults.take_error()
        if error is not None:
            headers = {"Retry-After": str(sim.faults.retry_after)} if sim.faults.retry_after is not None else {}
            self._fail(error, "injected fault", headers)
            return error
        if parts == ["version"]:
            self._send_json(200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0-eventrouter-simulator"})
            return 200
        events = _events_path(parts)
        if events is not None:
            if method != "GET":
                self._fail(405, "the simulator serves Events read-only")
                return 405
            api, namespace = events
            if query.get("watch") in ("1", "true", "True"):
                with sim.lock:
                    sim.open_watches += 1
                try:
                    return self._watch(sim, api, namespace, query)
                finally:
                    with sim.lock:
                        sim.open_watches -= 1
            return self._list(sim, api, namespace, query)
        if method == "GET":  # Pods, Deployments, ... metadata (for --enrich): simulator/workloads.py
            served = sim.workloads.answer(parts, self.headers.get("Accept") or "", query)
            if served is not None:
                self._send_json(*served)
                return served[0]
        obj = _object_path(parts)
        if obj is not None:
            return self._object(sim, method, *obj)
        self._fail(404, f"the server could not find the requested resource ({'/'.join(parts)})")
        return 404

    # ---- list ---------------------------------------------------------------------------------
    def _list(self, sim: Simulator, api: str, namespace: str | None, query: dict[str, str]) -> int:
        """A list page in etcd's key order. The continue token is the real one's shape (base64 JSON of the
        revision and the key to start after); once compaction passed its revision, 410 Expired with a
        fresh token that continues from the same key at the newest revision (an inconsistent list)."""
        store = sim.store
        limit = int(query.get("limit") or 0)
        token = query.get("continue")
        after = ""
        if token and sim.faults.on_continue:
            action = sim.faults.on_continue.pop(0)
            if action is not None:
                action()
        if token:
            try:
                state = orjson.loads(base64.urlsafe_b64decode(token))
                rv, after = int(state["rv"]), str(state["start"])
            except (ValueError, KeyError, TypeError):
                self._fail(400, "continue key is not valid: invalid continue token")
                return 400
            items = None if rv == -1 else sim.snapshot_at(rv, namespace)
            if rv != -1 and (items is None or rv < store.floor):
                fresh = _continue_token(-1, after)
                body = status_body(410, "Expired", EXPIRED_CONTINUE)
                body["metadata"] = {"continue": fresh}
                self._send_json(410, body)
                return 410
            if items is None:
                rv, items = sim.take_snapshot(namespace)
        else:
            asked = query.get("resourceVersion") or ""
            if asked not in ("", "0"):
                try:
                    too_old = store.rv_int(asked) < store.floor
                except ValueError:
                    self._fail(400, f"invalid resource version {asked!r}")
                    return 400
                if too_old:
                    self._fail(410, "The resourceVersion for the provided list is too old.")
                    return 410
            rv, items = sim.take_snapshot(namespace)
        start = bisect.bisect_left(items, after, key=list_key) if after else 0
        end = len(items) if not limit else min(len(items), start + limit)
        meta: dict[str, Any] = {"resourceVersion": store.rv_text(rv)}
        if end < len(items):
            meta["continue"] = _continue_token(rv, list_key(items[end - 1]) + "\x00")
            meta["remainingItemCount"] = len(items) - end
        page = items[start:end]
        if api == "v1":
            body = {"kind": "EventList", "apiVersion": "v1", "metadata": meta, "items": page}
        else:
            body = {"kind": "EventList", "apiVersion": "events.k8s.io/v1", "metadata": meta,
                    "items": [to_events_v1(o) for o in page]}
        self._send_json(200, body)
        return 200

    # ---- watch --------------------------------------------------------------------------------
    def _watch(self, sim: Simulator, api: str, namespace: str | None, query: dict[str, str]) -> int:
        faults = sim.faults
        if faults.http_gone > 0:
            faults.http_gone -= 1
            self._fail(410, "too old resource version")
            return 410
        store = sim.store
        rv_text = query.get("resourceVersion") or ""
        bookmarks = query.get("allowWatchBookmarks") in ("1", "true", "True")
        timeout = float(query.get("timeoutSeconds") or 1800)
        deadline = time.monotonic() + timeout
        gone_after = drop_after = stall_after = None
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._log(200)
        kind = "v1" if api == "v1" else "events.k8s.io/v1"
        abrupt = False  # a dropped or stalled stream ends without the closing chunk
        try:
            if rv_text in ("", "0"):
                with store.cond:
                    position = store.rv
                    initial = [o for o in store.events.values()
                               if namespace is None or o["metadata"]["namespace"] == namespace]
                lines = [orjson.dumps({"type": "ADDED", "object": o if api == "v1" else to_events_v1(o)}) + b"\n"
                         for o in initial]
                if lines:
                    self._chunk(b"".join(lines))
            else:
                try:
                    position = store.rv_int(rv_text)
                except ValueError:
                    self._chunk(orjson.dumps({"type": "ERROR", "object": status_body(
                        400, "BadRequest", f"invalid resource version {rv_text!r}")}) + b"\n")
                    return 200
            sent = 0
            last_write = time.monotonic()
            while not sim.stopping:
                with store.cond:
                    try:
                        changes = store.changes_after(position, namespace)
                        if not changes and position == store.rv:
                            store.cond.wait(0.1)
                            changes = store.changes_after(position, namespace)
                        newest = store.rv if not changes else changes[-1].rv
                    except Expired:  # Events are watched from etcd (no watch cache): etcd's message
                        self._chunk(orjson.dumps({"type": "ERROR", "object": status_body(
                            410, "Expired", "The resourceVersion for the provided watch is too old.")}) + b"\n")
                        return 200
                now = time.monotonic()
                # a fault set now applies to the next K events of one open watch (this one, if first)
                if faults.gone_after is not None and gone_after is None:
                    gone_after, faults.gone_after = sent + faults.gone_after, None
                if faults.drop_after is not None and drop_after is None:
                    drop_after, faults.drop_after = sent + faults.drop_after, None
                if faults.stall_after is not None and stall_after is None:
                    stall_after, faults.stall_after = sent + faults.stall_after, None
                if changes:
                    lines = [c.line(api) for c in changes]
                    for limit, action in ((gone_after, "gone"), (drop_after, "drop"), (stall_after, "stall")):
                        if limit is not None and sent + len(lines) > limit:
                            cut = max(0, limit - sent)
                            if cut:
                                self._chunk(b"".join(lines[:cut]))
                            if action == "gone":
                                self._chunk(orjson.dumps({"type": "ERROR", "object": status_body(
                                    410, "Expired", f"too old resource version: {store.rv_text(position)}")})
                                    + b"\n")
                                return 200
                            if action == "drop":
                                half = lines[cut][: len(lines[cut]) // 2]
                                self._chunk(half)
                                abrupt = self.close_connection = True
                                return 200
                            time.sleep(faults.stall_seconds)
                            abrupt = self.close_connection = True
                            return 200
                    self._chunk(b"".join(lines))
                    sent += len(lines)
                    position = changes[-1].rv
                    last_write = now
                else:
                    position = newest  # nothing for this namespace up to here
                    if bookmarks and faults.bookmark_interval and now - last_write >= faults.bookmark_interval:
                        meta = {"resourceVersion": store.rv_text(position)}
                        self._chunk(orjson.dumps({"type": "BOOKMARK", "object": {
                            "kind": "Event", "apiVersion": kind, "metadata": meta}}) + b"\n")
                        last_write = now
                if now >= deadline:
                    break
        except OSError:  # the client went away
            abrupt = self.close_connection = True
        finally:
            if not abrupt:
                try:
                    self._chunk(b"")
                except OSError:
                    self.close_connection = True
        return 200

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    # ---- Lease and ConfigMap ------------------------------------------------------------------
    def _object(self, sim: Simulator, method: str, kind: str, namespace: str, name: str | None) -> int:
        store = sim.store
        api_version = "coordination.k8s.io/v1" if kind == "Lease" else "v1"
        try:
            if method == "GET" and name:
                self._send_json(200, store.get_object(kind, namespace, name))
                return 200
            if method == "POST" and not name:
                body = self._body()
                body.setdefault("kind", kind)
                body.setdefault("apiVersion", api_version)
                self._send_json(201, store.create_object(kind, namespace, body))
                return 201
            if method == "PUT" and name:
                body = self._body()
                body.setdefault("kind", kind)
                body.setdefault("apiVersion", api_version)
                self._send_json(200, store.update_object(kind, namespace, name, body))
                return 200
        except NotFound:
            self._fail(404, f'{kind.lower()}s "{name}" not found')
            return 404
        except Conflict as exc:
            self._fail(409, str(exc))
            return 409
        except ValueError as exc:
            self._fail(400, str(exc))
            return 400
        self._fail(405, f"{method} is not supported here")
        return 405

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")


EXPIRED_CONTINUE = (
    "The provided continue parameter is too old to display a consistent list result. You can start a new list "
    "without the continue parameter, or use the continue token in this response to retrieve the remainder of the "
    "results. Continuing with the provided token results in an inconsistent list - objects that were created, "
    "modified, or deleted between the time the first chunk was returned and now may show up in the list.")


def _continue_token(rv: int, start: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start})).decode()


def _events_path(parts: list[str]) -> tuple[str, str | None] | None:
    """('v1' | 'events.k8s.io/v1', namespace or None) for an Events path."""
    if parts[:2] == ["api", "v1"]:
        rest, api = parts[2:], "v1"
    elif parts[:3] == ["apis", "events.k8s.io", "v1"]:
        rest, api = parts[3:], "events.k8s.io/v1"
    else:
        return None
    if rest == ["events"]:
        return api, None
    if len(rest) == 3 and rest[0] == "namespaces" and rest[2] == "events":
        return api, rest[1]
    return None


def _object_path(parts: list[str]) -> tuple[str, str, str | None] | None:
    lease = parts[:4] == ["apis", "coordination.k8s.io", "v1", "namespaces"] and len(parts) in (6, 7)
    if lease and parts[5] == "leases":
        return "Lease", parts[4], parts[6] if len(parts) == 7 else None
    if parts[:3] == ["api", "v1", "namespaces"] and len(parts) >= 5 and parts[4] == "configmaps" and len(parts) <= 6:
        return "ConfigMap", parts[3], parts[5] if len(parts) == 6 else None
    return None


def _forbidden(service_account: str, verb: str, parts: list[str]) -> str:
    """kube-apiserver's RBAC refusal, word for word in its shape."""
    group = parts[1] if parts[:1] == ["apis"] else ""
    namespace = parts[parts.index("namespaces") + 1] if "namespaces" in parts[:-1] else ""
    rest = parts[parts.index("namespaces") + 2:] if namespace else parts[(3 if group else 2):]
    resource = rest[0] if rest else ""
    name = rest[1] if len(rest) > 1 else ""
    who = f"system:serviceaccount:{service_account}"
    where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
    subject = f'{resource} "{name}" is forbidden' if name else f"{resource} is forbidden"
    return f'{subject}: User "{who}" cannot {verb} resource "{resource}" in API group "{group}"{where}'


def _verb(method: str, parts: list[str], query: dict[str, str]) -> str:
    if method == "POST":
        return "create"
    if method == "PUT":
        return "update"
    if query.get("watch") in ("1", "true", "True"):
        return "watch"
    if (_events_path(parts) is not None or list_path(parts) is not None
            or (_object_path(parts) or ("", "", "x"))[2] is None):
        return "list"
    return "get"

