"""The Python API of the simulator: start a fake cluster on 127.0.0.1, feed it, break it, stop it.

    sim = Simulator(events="builtin", token="t0ken").start()
    sim.write_kubeconfig(path)        # the router connects exactly as to a real cluster
    sim.add_event(obj); sim.repeat(uid); sim.expire(uid); sim.compact()
    sim.faults.gone_after = 3         # the next watch sends ERROR 410 after 3 events
    sim.advance(3600, rate=30)        # an hour of 30 events/s on the store's clock, in seconds of real time
    sim.request_log                   # [Request(method, path, verb, status), ...]
    sim.terminate(grace=60)           # as SIGTERM: the listener closes at once, open watches last up to 60 s
    sim.stop()

By default it behaves as a real kube-apiserver (v1.36) serving Events: no BOOKMARKs on Event watches
(Events have no watch cache; ``faults.bookmark_interval`` turns them on), nothing at all on a quiet
watch, etcd compaction every 5 minutes (``compaction_interval``), Events deleted 1 hour after their
last write (``event_ttl``), an expired ``continue`` token answered with 410 and a fresh token.
"""

from __future__ import annotations

import base64
import itertools
import os
import random
import ssl
import threading
import time
import uuid
from datetime import datetime
from importlib.resources import files
from pathlib import Path
from typing import Any

import orjson

from eventrouter.simulator.server import Faults, Handler, Request, _Server
from eventrouter.simulator.store import Store, restamp
from eventrouter.simulator.workloads import Workloads

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
        compaction_interval: float = 300.0,
        event_ttl: float = 3600.0,
        service_account: str = "default:eventrouter",
        clock_offset: float = 0.0,
    ) -> None:
        # opaque: start just below 0x1000 so string order and number order soon disagree ("rv-fff" > "rv-1000")
        self.store = Store(opaque=opaque_rvs, rv=0xFF0 if opaque_rvs else 1000,
                           compaction_interval=compaction_interval, event_ttl=event_ttl, offset=clock_offset)
        self.service_account = service_account  # NAMESPACE:NAME, named in 403 answers as the real server does
        self.listening = False
        self.watches_end_at: float | None = None  # monotonic deadline of open watches after terminate()
        self.open_watches = 0
        self.faults = Faults()
        self.token = token
        self.port = port
        self.rate = rate
        self.request_log: list[Request] = []
        self.tls = tls
        self.ca_pem: bytes | None = None  # with tls: the CA that signed the server certificate
        self.snapshots: dict[tuple[int, str | None], list[dict[str, Any]]] = {}  # (rv, namespace) -> a list's items
        self.stopping = False
        self._request_log_file = open(request_log_path, "a", encoding="utf-8") if request_log_path else None  # noqa: SIM115
        self.lock = threading.Lock()
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []
        self._pool: list[dict[str, Any]] = []
        self.workloads = Workloads()  # Pod/ReplicaSet/Deployment/... metadata, for --enrich
        if events is not None:
            objs = load_events(events) if isinstance(events, str) else list(events)
            self._pool = objs
            self.workloads.infer(objs)
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
        self.listening = True
        keeper = threading.Thread(target=self._maintain, name="simulator-ttl-compaction", daemon=True)
        keeper.start()
        self._threads.append(keeper)
        if self.rate > 0:
            gen = threading.Thread(target=self._generate, name="simulator-gen", daemon=True)
            gen.start()
            self._threads.append(gen)
        return self

    def stop(self) -> None:
        self.stopping = True
        with self.store.cond:
            self.store.cond.notify_all()
        self._close_listener()
        if self._request_log_file is not None:
            self._request_log_file.close()
            self._request_log_file = None

    def terminate(self, grace: float = 60.0) -> None:
        """What kube-apiserver does on SIGTERM: stop accepting connections at once (new ones are
        refused), keep the open watches streaming for up to ``grace`` seconds, then end them."""
        self.watches_end_at = time.monotonic() + grace
        self._close_listener()

    def _close_listener(self) -> None:
        if self._server is not None and self.listening:
            self.listening = False
            self._server.shutdown()
            self._server.server_close()

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
        # written whole, then renamed: whoever waits for the file (make demo, a test) never reads it half-written
        partial = path.with_name(f".{path.name}.partial")
        partial.write_bytes(orjson.dumps(config, option=orjson.OPT_INDENT_2))
        os.replace(partial, path)
        return path

    # ---- feeding ------------------------------------------------------------------------------
    def add_event(self, obj: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        """Create an Event (ADDED). Without ``obj``, a Warning BackOff event for a new pod."""
        if obj is None:
            obj = new_event(**fields, at=self.store.now_dt())
        return self.store.add_event(obj)

    def advance(self, seconds: float, rate: float = 0.0, repeat_share: float = 0.0,
                namespaces: tuple[str, ...] = ("default",)) -> int:
        """Fast-forward the store's clock by ``seconds`` while ``rate`` Events per second happen (a
        ``repeat_share`` of them count bumps of live Events, the rest new ones, spread over
        ``namespaces``); TTL expiry and compaction happen on the way exactly as in real time. Their
        timestamps are those of the virtual moment they happened. Returns the number of changes made.

        ``Simulator(clock_offset=-3600).advance(3600, rate=30)`` is the past hour of a busy cluster, made in
        a few seconds of real time, ending now."""
        store = self.store
        total = int(seconds * rate)
        step = seconds / total if total else seconds
        pick = random.Random(len(store.events))
        for n in range(total):
            with store.cond:  # the maintenance thread expires Events meanwhile
                store.advance_clock(step)
                live = store.written  # oldest write first
                if repeat_share and live and pick.random() < repeat_share:
                    # a recent Event repeats (one of the newest thousand), as a crash-looping pod's do
                    recent = list(itertools.islice(reversed(live), 0, 1000))
                    self.repeat(pick.choice(recent))
                else:
                    self.add_event(namespace=namespaces[n % len(namespaces)])
        if not total:
            store.advance_clock(seconds)
        return total
    def repeat(self, uid: str, message: str | None = None) -> dict[str, Any]:
        return self.store.repeat(uid, message)

    def touch(self, uid: str) -> dict[str, Any]:
        return self.store.touch(uid)

    def expire(self, uid: str) -> None:
        self.store.expire(uid)

    def compact(self, rv: int | None = None) -> None:
        self.store.compact(rv)
        with self.lock:
            self.snapshots.clear()

    @property
    def resource_version(self) -> str:
        return self.store.rv_text(self.store.rv)

    def uids(self) -> list[str]:
        with self.store.cond:
            return list(self.store.events)

    # ---- server helpers -----------------------------------------------------------------------
    def take_snapshot(self, namespace: str | None) -> tuple[int, list[dict[str, Any]]]:
        """The Events now (for a list); kept so that continue tokens at this revision find them."""
        rv, items = self.store.snapshot(namespace)
        with self.lock:
            self.snapshots[(rv, namespace)] = items
            while len(self.snapshots) > 64:
                self.snapshots.pop(next(iter(self.snapshots)))
        return rv, items

    def snapshot_at(self, rv: int, namespace: str | None) -> list[dict[str, Any]] | None:
        with self.lock:
            return self.snapshots.get((rv, namespace))

    def log_request(self, request: Request) -> None:
        self.request_log.append(request)
        if len(self.request_log) > 100_000:
            del self.request_log[:50_000]
        if self._request_log_file is not None:
            self._request_log_file.write(f"{request.verb} {request.method} {request.path} {request.status}\n")
            self._request_log_file.flush()

    def _maintain(self) -> None:
        """TTL expiry and compaction on the real clock; ends open watches after ``terminate``."""
        while not self.stopping:
            time.sleep(0.2)
            self.store.maintain()
            if self.watches_end_at is not None and time.monotonic() >= self.watches_end_at:
                self.stopping = True
                with self.store.cond:
                    self.store.cond.notify_all()

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
              message: str | None = None, type: str = "Warning", count: int = 1,
              at: datetime | None = None) -> dict[str, Any]:
    """A core/v1 Event object as the kubelet writes it, stamped ``at`` (default now)."""
    from eventrouter.simulator.store import now_text

    pod = name or f"app-{uuid.uuid4().hex[:6]}"
    stamp = now_text(now=at)
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
