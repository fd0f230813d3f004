"""The Python API of the simulator: start a fake cluster on 127.0.0.1, feed it, break it, stop it.

    sim = Simulator(events="builtin", token="t0ken").start()
    sim.write_kubeconfig(path)        # the router connects exactly as to a real cluster
    sim.add_event(obj); sim.repeat(uid); sim.expire(uid); sim.compact()
    sim.faults.gone_after = 3         # the next watch sends ERROR 410 after 3 events
    sim.request_log                   # [Request(method, path, verb, status), ...]
    sim.stop()
"""

from __future__ import annotations

import base64
import itertools
import random
import ssl
import threading
import time
import uuid
from importlib.resources import files
from pathlib import Path
from typing import Any

import orjson

from eventrouter.simulator.server import Faults, Handler, Request, _Server
from eventrouter.simulator.store import Store, restamp

BUILTIN = "builtin"


def load_events(source: str) -> list[dict[str, Any]]:
    """Event objects from ``builtin`` (the recorded real events) or a JSON-lines file."""
    if source == BUILTIN:
        data = (files("eventrouter.simulator") / "data" / "core-v1.jsonl").read_bytes()
    else:
        data = Path(source).read_bytes()
    objs = []
    for number, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"line {number}: not JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"line {number}: not an Event object (a JSON object per line)")
        objs.append(obj)
    return objs


class Simulator:
    def __init__(
        self,
        events: str | list[dict[str, Any]] | None = None,
        *,
        port: int = 0,
        token: str | None = "simulator-token",
        multiply: int = 1,
        fresh_times: bool = False,
        rate: float = 0.0,
        request_log_path: str | None = None,
        tls: bool = False,
        opaque_rvs: bool = False,
    ) -> None:
        # opaque: start just below 0x1000 so string order and number order soon disagree ("rv-fff" > "rv-1000")
        self.store = Store(opaque=opaque_rvs, rv=0xFF0 if opaque_rvs else 1000)
        self.faults = Faults()
        self.token = token
        self.port = port
        self.rate = rate
        self.request_log: list[Request] = []
        self.tls = tls
        self.ca_pem: bytes | None = None  # with tls: the CA that signed the server certificate
        self.snapshots: dict[str, list[dict[str, Any]]] = {}
        self.stopping = False
        self._request_log_file = open(request_log_path, "a", encoding="utf-8") if request_log_path else None  # noqa: SIM115
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []
        self._pool: list[dict[str, Any]] = []
        if events is not None:
            objs = load_events(events) if isinstance(events, str) else list(events)
            self._pool = objs
            self.store.add_events(restamp(objs, max(1, multiply), fresh_times or multiply > 1))

    # ---- lifecycle --------------------------------------------------------------------------
    def start(self) -> Simulator:
        server = _Server(("127.0.0.1", self.port), Handler)
        server.sim = self
        if self.tls:
            server.socket = self._tls_context().wrap_socket(server.socket, server_side=True)
        self._server = server
        self.port = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                  name="simulator", daemon=True)
        thread.start()
        self._threads.append(thread)
        if self.rate > 0:
            gen = threading.Thread(target=self._generate, name="simulator-gen", daemon=True)
            gen.start()
            self._threads.append(gen)
        return self

    def stop(self) -> None:
        self.stopping = True
        with self.store.cond:
            self.store.cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._request_log_file is not None:
            self._request_log_file.close()
            self._request_log_file = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def _tls_context(self) -> ssl.SSLContext:
        """A throw-away CA and a server certificate for 127.0.0.1 (needs the ``trustme`` package)."""
        import trustme

        ca = trustme.CA()
        self.ca_pem = ca.cert_pem.bytes()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
        return ctx

    def write_kubeconfig(self, path: str | Path, context: str = "simulator", namespace: str = "default") -> Path:
        """A kubeconfig (JSON is valid YAML) whose current context points at this simulator."""
        user: dict[str, Any] = {"token": self.token} if self.token else {}
        cluster: dict[str, Any] = {"server": self.url}
        if self.ca_pem:
            cluster["certificate-authority-data"] = base64.b64encode(self.ca_pem).decode()
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": context, "preferences": {},
            "clusters": [{"name": context, "cluster": cluster}],
            "users": [{"name": context, "user": user}],
            "contexts": [{"name": context, "context": {"cluster": context, "user": context, "namespace": namespace}}],
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(orjson.dumps(config, option=orjson.OPT_INDENT_2))
        return path

    # ---- feeding ------------------------------------------------------------------------------
    def add_event(self, obj: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        """Create an Event (ADDED). Without ``obj``, a Warning BackOff event for a new pod."""
        if obj is None:
            obj = new_event(**fields)
        return self.store.add_event(obj)

    def repeat(self, uid: str, message: str | None = None) -> dict[str, Any]:
        return self.store.repeat(uid, message)

    def touch(self, uid: str) -> dict[str, Any]:
        return self.store.touch(uid)

    def expire(self, uid: str) -> None:
        self.store.expire(uid)

    def compact(self, rv: int | None = None) -> None:
        self.store.compact(rv)
        with self._lock:
            self.snapshots.clear()

    @property
    def resource_version(self) -> str:
        return self.store.rv_text(self.store.rv)

    def uids(self) -> list[str]:
        with self.store.cond:
            return list(self.store.events)

    # ---- server helpers -----------------------------------------------------------------------
    def keep_snapshot(self, items: list[dict[str, Any]]) -> str:
        key = uuid.uuid4().hex
        with self._lock:
            self.snapshots[key] = items
            while len(self.snapshots) > 64:
                self.snapshots.pop(next(iter(self.snapshots)))
        return key

    def log_request(self, request: Request) -> None:
        self.request_log.append(request)
        if len(self.request_log) > 100_000:
            del self.request_log[:50_000]
        if self._request_log_file is not None:
            self._request_log_file.write(f"{request.verb} {request.method} {request.path} {request.status}\n")
            self._request_log_file.flush()

    def _generate(self) -> None:
        """Create (3 of 4) or repeat (1 of 4) events at ``rate`` per second, as a live cluster does."""
        counter = itertools.count(1)
        pool = self._pool or [new_event()]
        tick = 0.1
        carry = 0.0
        while not self.stopping:
            time.sleep(tick)
            carry += self.rate * tick
            todo, carry = int(carry), carry - int(carry)
            for _ in range(todo):
                uids = self.uids()
                if uids and random.random() < 0.25:
                    try:
                        self.repeat(random.choice(uids))
                    except Exception:  # expired meanwhile
                        pass
                    continue
                template = restamp([random.choice(pool)], 2, True)[1]
                template["metadata"]["name"] = f"{template['metadata']['name']}.{next(counter)}"
                self.store.add_event(template)


def new_event(namespace: str = "default", name: str | None = None, reason: str = "BackOff",
              message: str | None = None, type: str = "Warning", count: int = 1) -> dict[str, Any]:
    """A core/v1 Event object as the kubelet writes it, stamped now."""
    from eventrouter.simulator.store import now_text

    pod = name or f"app-{uuid.uuid4().hex[:6]}"
    stamp = now_text()
    return {
        "kind": "Event", "apiVersion": "v1",
        "metadata": {"name": f"{pod}.{uuid.uuid4().hex[:16]}", "namespace": namespace, "uid": str(uuid.uuid4()),
                     "creationTimestamp": stamp},
        "involvedObject": {"kind": "Pod", "namespace": namespace, "name": pod, "uid": str(uuid.uuid4()),
                           "apiVersion": "v1", "fieldPath": "spec.containers{app}"},
        "reason": reason, "message": message or f"Back-off restarting failed container app in pod {pod}",
        "source": {"component": "kubelet", "host": "node-1"}, "firstTimestamp": stamp, "lastTimestamp": stamp,
        "count": count, "type": type, "reportingComponent": "kubelet", "reportingInstance": "node-1",
    }
