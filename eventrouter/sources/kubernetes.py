"""``--source=kubernetes:URL?opts``: list and watch Events, losing nothing and repeating nothing.

Talks to the Kubernetes API server (core/v1 or events.k8s.io/v1 Events; a Lease and a ConfigMap
with ``--leader-elect`` and the ConfigMap checkpoint). Credentials come from the ``kubernetes``
client's loaders: the pod's service account (default), a kubeconfig (``auth=``, ``localKubeConfig=``,
``kubeconfig=`` with ``context=``; exec plugins work) or a bare URL. URL forms::

    kubernetes:https://kubernetes.default                  kube-eventer's in-cluster form
    kubernetes:?inClusterConfig=false&auth=/etc/kubeconfig  kube-eventer's kubeconfig form
    kubernetes:?kubeconfig=~/.kube/config&context=prod&namespaces=team-a,team-b&api=events.k8s.io/v1

How it works: a paginated list (``limit``/``continue``), then a watch from the list's
resourceVersion with bookmarks, read as raw chunked lines and decoded once with orjson. Each
occurrence is identified by uid + resourceVersion; a MODIFIED that changes nothing a user sees is
dropped, a DELETED (TTL expiry) frees the uid. A 410 re-lists and skips what was already forwarded.
The checkpoint (``--checkpoint``) holds the resourceVersion of the newest *settled* event and a
bounded uid→resourceVersion record, so a restart neither repeats nor misses events.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson

from eventrouter.errors import ConfigError
from eventrouter.event import Event, MalformedEvent
from eventrouter.logutil import ThrottledLog
from eventrouter.router import Router
from eventrouter.sinkurl import SinkURL
from eventrouter.sources.k8s_checkpoint import (
    CheckpointError,
    ConfigMapCheckpoint,
    FileCheckpoint,
    Progress,
    Seen,
    parse_checkpoint_flag,
)
from eventrouter.sources.k8s_client import SA_NAMESPACE, SA_TOKEN, ApiClient, in_cluster, load_configuration
from eventrouter.sources.k8s_leader import LeaderElector
from eventrouter.sources.k8s_options import SourceSettings, parse_settings

log = logging.getLogger("eventrouter.sources.kubernetes")

CHECKPOINT_INTERVAL = 5.0  # seconds between checkpoint writes (and one more on finish)
SEEN_CAP = 500_000  # uids remembered for dedupe; DELETED frees them, the oldest go first past this
BACKOFF_MAX = 30.0


class Backoff:
    """Exponential backoff with full jitter; ``Retry-After`` wins when the server sends it."""

    def __init__(self, initial: float = 0.5, cap: float = BACKOFF_MAX) -> None:
        self.initial, self.cap, self.attempt = initial, cap, 0

    def next(self, retry_after: float | None = None) -> float:
        self.attempt += 1
        if retry_after is not None:
            return retry_after
        base = min(self.cap, self.initial * 2 ** min(self.attempt - 1, 20))
        return random.uniform(base / 2, base)

    def reset(self) -> None:
        self.attempt = 0


class KubernetesSource:
    def __init__(self, settings: SourceSettings, ctx: Any, api: ApiClient, namespace: str) -> None:
        self.settings = settings
        self.ctx = ctx
        self.api = api
        self.state = ctx.state
        self.cluster = ctx.cluster
        self.namespace = namespace  # our own namespace: default home of the Lease and ConfigMap
        kind, where = parse_checkpoint_flag(ctx.checkpoint, in_cluster=settings.in_cluster and in_cluster(),
                                            namespace=namespace)
        if kind == "file":
            self.checkpoint: FileCheckpoint | ConfigMapCheckpoint | None = FileCheckpoint(os.path.expanduser(where))
        elif kind == "configmap":
            ns, _, name = where.partition("/")
            self.checkpoint = ConfigMapCheckpoint(api, ns, name)
        else:
            self.checkpoint = None
        self.elector: LeaderElector | None = None
        if ctx.leader_elect:
            self.elector = LeaderElector(
                api, ctx.leader_elect_namespace or namespace, ctx.leader_elect_name,
                lease_duration=ctx.leader_elect_lease_duration, renew_deadline=ctx.leader_elect_renew_deadline,
                retry_period=ctx.leader_elect_retry_period)
            self.state.leader = False  # until the Lease is ours
            if isinstance(self.checkpoint, FileCheckpoint):
                log.warning("--leader-elect with a file checkpoint: a new leader in another pod cannot read it; "
                            "use --checkpoint=configmap:NAMESPACE/NAME")
        self.checkpoint_interval = CHECKPOINT_INTERVAL
        self.seen_cap = SEEN_CAP
        self.seen: dict[str, tuple[str, Any]] = {}  # uid -> (resourceVersion, what the user sees | None)
        self.progress: Progress | None = None
        self._halted: Callable[[], bool] = lambda: False
        self._done = threading.Event()
        self._write_lock = threading.Lock()
        self._last_write = 0.0
        self._errors = ThrottledLog(log, 30.0)
        self._dispatch_lock = threading.Lock()
        prefix = "/api/v1" if settings.api == "v1" else "/apis/events.k8s.io/v1"
        self._paths = {ns: f"{prefix}/namespaces/{ns}/events" for ns in settings.namespaces} or {"": f"{prefix}/events"}

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_url(cls, url: SinkURL, ctx: Any) -> KubernetesSource:
        s = parse_settings(url)
        kubeconfig = os.path.expanduser(s.kubeconfig) if s.kubeconfig else None
        if s.in_cluster and not in_cluster():
            if s.in_cluster_given:
                raise ConfigError("--source=kubernetes: inClusterConfig=true but this is not a pod (no "
                                  "KUBERNETES_SERVICE_HOST or service account token); "
                                  "use inClusterConfig=false&auth=PATH")
            s.in_cluster = False  # outside a cluster without options: the default kubeconfig, as kubectl
        if not s.in_cluster and kubeconfig is None and not s.host:
            from kubernetes.config.kube_config import KUBE_CONFIG_DEFAULT_LOCATION

            kubeconfig = os.path.expanduser(os.environ.get("KUBECONFIG", KUBE_CONFIG_DEFAULT_LOCATION).split(":")[0])
        if kubeconfig is not None and not os.path.exists(kubeconfig):
            raise ConfigError(f"--source=kubernetes: kubeconfig {kubeconfig} does not exist")
        loader = load_configuration(kubeconfig=kubeconfig, context=s.context, in_cluster_mode=s.in_cluster)
        try:
            api = ApiClient(loader, host=s.host or None, insecure=s.insecure,
                            token_file=SA_TOKEN if s.use_service_account else None)
        except ConfigError:
            raise
        except Exception as exc:  # the loaders raise ConfigException, KeyError, OSError...
            raise ConfigError(f"--source=kubernetes: cannot load credentials: {type(exc).__name__}: {exc}") from None
        return cls(s, ctx, api, _own_namespace(kubeconfig, s.context))

    def describe(self) -> str:
        where = ",".join(self.settings.namespaces) or "all namespaces"
        ckpt = self.checkpoint.describe() if self.checkpoint else "none"
        return f"kubernetes {self.api.host} ({self.settings.api} Events, {where}; checkpoint {ckpt})"

    # ---- run ----------------------------------------------------------------------------------
    def run(self, router: Router, stop: threading.Event) -> None:
        log.info("source: %s", self.describe())
        keeper = threading.Thread(target=self._housekeeping, args=(router,), name="source-housekeeping", daemon=True)
        keeper.start()
        try:
            if self.elector is None:
                self._term(router, stop.is_set)
                return
            elector = self.elector
            self.state.leader = False
            self.state.ready = True  # a standby is ready: it is doing its job
            log.info("leader election on lease %s/%s as %s", elector.namespace, elector.name, elector.identity)
            elector.start()
            while not stop.is_set():
                if not elector.leading.wait(0.2):
                    continue
                self.state.leader = True
                self._term(router, lambda: stop.is_set() or not elector.leading.is_set())
                self.state.leader = False
        finally:
            self._halted = lambda: True
            self._done.set()
            keeper.join(2.0)

    def finish(self, router: Router, *, release: bool = True) -> None:
        """After the sinks drained: write the final checkpoint, then release the Lease."""
        self._done.set()
        if self._may_write():
            self._write_checkpoint(router, force=True)
        if self.elector is not None:
            self.elector.stop(release=release)
        self.api.close()

    def _may_write(self) -> bool:
        return self.checkpoint is not None and self.progress is not None and (
            self.elector is None or self.elector.leading.is_set())

    # ---- one leadership term (the whole run without --leader-elect) ---------------------------
    def _term(self, router: Router, halted: Callable[[], bool]) -> None:
        self._halted = halted
        doc = self._load_checkpoint(halted)
        if halted():
            return
        progress = Progress(cap=self.checkpoint.cap if self.checkpoint else 0)
        resume: dict[str, str] = {}
        if doc:
            progress.positions.update(doc.get("positions") or {})
            progress.delivered.update(doc.get("delivered") or {})
            resume = {k: v for k, v in progress.positions.items() if k in self._paths}
        self.seen = {uid: Seen.restore(value) for uid, value in progress.delivered.items()}
        self.progress = progress
        first_start = doc is None
        streams = list(self._paths)
        if len(streams) == 1:
            self._stream(router, streams[0], resume.get(streams[0]), first_start, halted, locked=False)
            return
        threads = [threading.Thread(target=self._stream, name=f"watch-{ns}", daemon=True,
                                    args=(router, ns, resume.get(ns), first_start, halted, True)) for ns in streams]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _load_checkpoint(self, halted: Callable[[], bool]) -> dict[str, Any] | None:
        if self.checkpoint is None:
            return None
        backoff = Backoff()
        while not halted():
            try:
                doc = self.checkpoint.load()
            except (CheckpointError, httpx.HTTPError, ValueError) as exc:
                self._errors.log(logging.WARNING, "ckpt-load", "reading checkpoint %s failed (%s); retrying",
                                 self.checkpoint.describe(), exc)
                self._sleep(backoff.next(), halted)
                continue
            if doc and isinstance(self.checkpoint, FileCheckpoint) and doc.get("server") != self.api.host:
                log.warning("checkpoint %s is for %s, not %s: ignored", self.checkpoint.describe(),
                            doc.get("server"), self.api.host)
                return None
            if doc:
                log.info("resuming from checkpoint %s (written %s)", self.checkpoint.describe(), doc.get("written"))
            return doc
        return None

    # ---- list + watch loop for one stream (all namespaces, or one) ----------------------------
    def _stream(self, router: Router, stream: str, rv: str | None, first_start: bool,
                halted: Callable[[], bool], locked: bool) -> None:
        backoff = Backoff()
        state = self.state
        while not halted():
            if rv is None:
                rv = self._list(router, stream, first_start, halted, backoff, locked)
                if rv is None:
                    continue
                first_start = False
            state.ready = True
            outcome, rv = self._watch(router, stream, rv, halted, backoff, locked)
            if halted():
                return
            if outcome == "gone":
                log.info("watch %s: resourceVersion %s is too old (410): re-listing", stream or "*", rv)
                state.relists += 1
                rv = None
            else:
                state.watch_restarts += 1

    def _list(self, router: Router, stream: str, first_start: bool, halted: Callable[[], bool],
              backoff: Backoff, locked: bool) -> str | None:
        path = self._paths[stream]
        params: dict[str, Any] = {"limit": self.settings.page_size}
        cutoff = None
        if first_start and self.ctx.max_event_age:
            cutoff = datetime.now(UTC) - timedelta(seconds=self.ctx.max_event_age)
        handle = self._locked(self._handle_listed) if locked else self._handle_listed
        listed: set[str] = set()
        while not halted():
            try:
                resp = self.api.request("GET", path, params=params)
            except httpx.TransportError as exc:
                self._errors.log(logging.WARNING, "list", "list %s failed: %s; retrying", path, type(exc).__name__)
                self._sleep(backoff.next(), halted)
                return None
            if resp.status_code == 410 and "continue" in params:
                log.info("list %s: the continue token expired (410); listing again", path)
                params.pop("continue")
                continue
            if resp.status_code != 200:
                self._http_failure("list", path, resp, backoff, halted)
                return None
            doc = orjson.loads(resp.content)
            for obj in doc.get("items") or ():
                uid = handle(router, stream, obj, cutoff)
                if uid:
                    listed.add(uid)
            meta = doc.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                list_rv = str(meta.get("resourceVersion") or "")
                if len(self._paths) == 1:
                    # a full list: every uid not in it is gone; forget it (bounded memory)
                    for uid in [u for u in self.seen if u not in listed]:
                        del self.seen[uid]
                self.progress.note(router.seq, stream, list_rv, None, None)  # type: ignore[union-attr]
                backoff.reset()
                return list_rv
            params["continue"] = token
        return None

    def _handle_listed(self, router: Router, stream: str, obj: Any, cutoff: datetime | None) -> str | None:
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        if not isinstance(meta, dict):
            self.state.malformed += 1
            return None
        uid, rv = meta.get("uid") or "", str(meta.get("resourceVersion") or "")
        prev = self.seen.get(uid)
        if prev is not None and prev[0] == rv:
            self.state.duplicates_suppressed += 1
            return uid
        try:
            event = Event.from_object(obj, self.cluster)
        except MalformedEvent as exc:
            self._malformed(exc)
            return uid
        self.state.count("ADDED")
        seen_as = (event.count, event.last_timestamp, event.message, event.type, event.reason)
        self.seen[uid] = (rv, seen_as)
        progress = self.progress
        if (prev is not None and prev[1] == seen_as) or (cutoff is not None and event.last_timestamp < cutoff):
            if prev is not None:
                self.state.unchanged_suppressed += 1
            progress.note(router.seq, stream, None, uid, rv, seen_as)  # type: ignore[union-attr]
            return uid
        seq = router.dispatch(event)
        progress.note(seq, stream, None, uid, rv, seen_as)  # type: ignore[union-attr]
        return uid

    def _watch(self, router: Router, stream: str, rv: str, halted: Callable[[], bool],
               backoff: Backoff, locked: bool) -> tuple[str, str]:
        """Watch from ``rv`` until the stream ends. Returns (outcome, newest resourceVersion)."""
        s = self.settings
        params = {"watch": "1", "resourceVersion": rv, "allowWatchBookmarks": "true",
                  "timeoutSeconds": str(int(s.watch_timeout))}
        handle = self._locked(self._handle_watched) if locked else self._handle_watched
        state = self.state
        progress = self.progress
        loads = orjson.loads
        try:
            with self.api.stream(self._paths[stream], params, read_timeout=s.stall_timeout) as resp:
                if resp.status_code != 200:
                    resp.read()
                    if resp.status_code == 410:
                        return "gone", rv
                    self._http_failure("watch", self._paths[stream], resp, backoff, halted)
                    return "error", rv
                backoff.reset()
                rest = b""
                for chunk in resp.iter_bytes():
                    state.last_progress = time.monotonic()
                    lines = (rest + chunk).split(b"\n") if rest else chunk.split(b"\n")
                    rest = lines.pop()
                    for line in lines:
                        if not line:
                            continue
                        try:
                            item = loads(line)
                            kind = item["type"]
                            obj = item["object"]
                        except (orjson.JSONDecodeError, KeyError, TypeError):
                            self._malformed(f"undecodable watch line ({len(line)} bytes)")
                            continue
                        if kind == "BOOKMARK":
                            rv = obj["metadata"]["resourceVersion"]
                            progress.note(router.seq, stream, rv, None, None)  # type: ignore[union-attr]
                        elif kind == "ERROR":
                            return self._watch_error(stream, obj, backoff, halted), rv
                        else:
                            rv = handle(router, stream, kind, obj) or rv
                    if halted():
                        return "halted", rv
        except httpx.ReadTimeout:
            if not halted():
                log.warning("watch %s: no bytes for %.0fs (stalled): reconnecting from %s",
                            stream or "*", s.stall_timeout, rv)
            return "stalled", rv
        except httpx.TransportError as exc:
            if not halted():
                self._errors.log(logging.WARNING, "watch", "watch %s: connection lost (%s): reconnecting from %s",
                                 stream or "*", type(exc).__name__, rv)
                self._sleep(backoff.next(), halted)
            return "reset", rv
        return "closed", rv

    def _handle_watched(self, router: Router, stream: str, kind: str, obj: Any) -> str | None:
        """The hot path: one ADDED/MODIFIED/DELETED object. Returns its resourceVersion."""
        state = self.state
        state.count(kind)
        try:
            meta = obj["metadata"]
            uid = meta["uid"]
            rv = meta["resourceVersion"]
        except (KeyError, TypeError):
            self._malformed("watch event without metadata.uid/resourceVersion")
            return None
        seen = self.seen
        progress = self.progress
        if kind == "DELETED":  # TTL expiry: nothing to tell anyone; forget the uid
            seen.pop(uid, None)
            progress.note(router.seq, stream, rv, uid, None)  # type: ignore[union-attr]
            return rv
        prev = seen.get(uid)
        if prev is not None and prev[0] == rv:
            state.duplicates_suppressed += 1
            progress.note(router.seq, stream, rv, None, None)  # type: ignore[union-attr]
            return rv
        try:
            event = Event.from_object(obj, self.cluster)
        except MalformedEvent as exc:
            self._malformed(exc)
            return rv
        seen_as = (event.count, event.last_timestamp, event.message, event.type, event.reason)
        seen[uid] = (rv, seen_as)
        if prev is not None and prev[1] == seen_as:
            state.unchanged_suppressed += 1
            progress.note(router.seq, stream, rv, uid, rv, seen_as)  # type: ignore[union-attr]
            return rv
        if len(seen) > self.seen_cap:
            self._trim_seen()
        progress.note(router.dispatch(event), stream, rv, uid, rv, seen_as)  # type: ignore[union-attr]
        return rv

    def _watch_error(self, stream: str, status: Any, backoff: Backoff, halted: Callable[[], bool]) -> str:
        code = status.get("code") if isinstance(status, dict) else None
        if code == 410:
            return "gone"
        message = status.get("message") if isinstance(status, dict) else status
        self._errors.log(logging.WARNING, "watch-error", "watch %s: ERROR %s: %s", stream or "*", code, message)
        self._sleep(backoff.next(), halted)
        return "error"

    def _http_failure(self, what: str, path: str, resp: httpx.Response, backoff: Backoff,
                      halted: Callable[[], bool]) -> None:
        retry_after = _retry_after(resp.headers.get("Retry-After"))
        delay = backoff.next(retry_after)
        code = resp.status_code
        hint = ""
        if code == 401:
            hint = " (credentials refused)"
        elif code == 403:
            hint = " (RBAC: the service account needs get/list/watch on events)"
        self._errors.log(logging.WARNING, f"{what}-{code}", "%s %s: HTTP %d%s; retrying in %.1fs",
                         what, path, code, hint, delay)
        self._sleep(delay, halted)

    # ---- helpers ------------------------------------------------------------------------------
    def _locked(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        lock = self._dispatch_lock

        def locked(*args: Any) -> Any:
            with lock:
                return fn(*args)

        return locked

    def _trim_seen(self) -> None:
        """Past the cap, forget the oldest tenth (by first sight): bounded memory on huge clusters."""
        drop = max(1, len(self.seen) // 10)
        for uid in [u for _, u in zip(range(drop), self.seen, strict=False)]:
            del self.seen[uid]

    def _malformed(self, why: object) -> None:
        self.state.malformed += 1
        self._errors.log(logging.WARNING, "malformed", "skipped a malformed event: %s", why)

    @staticmethod
    def _sleep(seconds: float, halted: Callable[[], bool]) -> None:
        end = time.monotonic() + seconds
        while not halted():
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.1))

    # ---- checkpoint and stop (housekeeping thread) --------------------------------------------
    def _housekeeping(self, router: Router) -> None:
        while not self._done.wait(0.1):
            if self._halted():
                self.api.abort()  # wake a watch blocked in a read
            if self._may_write() and time.monotonic() - self._last_write >= self.checkpoint_interval:
                self._write_checkpoint(router, force=False)

    def _write_checkpoint(self, router: Router, force: bool) -> None:
        progress = self.progress
        if progress is None or self.checkpoint is None:
            return
        with self._write_lock:
            progress.advance(router.settled_seq())
            self._last_write = time.monotonic()
            if not progress.changed and not force:
                return
            if not progress.positions and not progress.delivered:
                return
            progress.changed = False
            doc = progress.document(self.api.host, self.settings.api, self.settings.namespaces)
            try:
                self.checkpoint.save(doc)
            except (CheckpointError, OSError, httpx.HTTPError) as exc:
                progress.changed = True
                self._errors.log(logging.WARNING, "ckpt-save", "writing checkpoint %s failed: %s",
                                 self.checkpoint.describe(), exc)
                return
            self.state.checkpoint_written = time.time()


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, min(float(value), 300.0))
    except ValueError:
        return None


def _own_namespace(kubeconfig: str | None, context: str | None) -> str:
    """Where our Lease and ConfigMap live: $POD_NAMESPACE, the pod's namespace, the kubeconfig context's."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        with open(SA_NAMESPACE, encoding="utf-8") as fh:
            return fh.read().strip() or "default"
    except OSError:
        pass
    if kubeconfig:
        try:
            from kubernetes.config import list_kube_config_contexts

            contexts, active = list_kube_config_contexts(config_file=kubeconfig)
            chosen = next((c for c in contexts if c["name"] == context), active) if context else active
            return (chosen or {}).get("context", {}).get("namespace") or "default"
        except Exception:
            return "default"
    return "default"
