"""``--source=kubernetes:URL?opts``: list and watch Events, losing nothing and repeating nothing.

Talks to the Kubernetes API server (core/v1 or events.k8s.io/v1 Events; a Lease and a ConfigMap
with ``--leader-elect`` and the ConfigMap checkpoint). Credentials come from the ``kubernetes``
client's loaders: the pod's service account (default), a kubeconfig (``auth=``, ``localKubeConfig=``,
``kubeconfig=`` with ``context=``; exec plugins work) or a bare URL. URL forms::

    kubernetes:https://kubernetes.default                  kube-eventer's in-cluster form
    kubernetes:?inClusterConfig=false&auth=/etc/kubeconfig  kube-eventer's kubeconfig form
    kubernetes:?kubeconfig=~/.kube/config&context=prod&namespaces=team-a,team-b&api=events.k8s.io/v1

How it works: a paginated list (``limit``/``continue``; an expired token goes on with the fresh
one), then a watch from the list's resourceVersion, read as raw chunked lines and decoded once with
orjson. Each occurrence is identified by uid + resourceVersion; a MODIFIED that changes nothing a user
sees is dropped, a DELETED (TTL expiry) frees the uid. Listed objects are dispatched as ``relisted``:
each sink skips what its own position says it has. The checkpoint (``--checkpoint``) holds, per watch,
the resourceVersion every sink has *settled* (where the watch resumes) and the router's per-sink
positions, so a restart, a 410 re-list or a handover neither repeats nor misses events at any sink.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx

from eventrouter.errors import ConfigError
from eventrouter.logutil import ThrottledLog
from eventrouter.router import Router
from eventrouter.sinkurl import SinkURL
from eventrouter.sources.k8s_checkpoint import (
    CheckpointError,
    ConfigMapCheckpoint,
    FileCheckpoint,
    Progress,
    failure_message,
    parse_checkpoint_flag,
)
from eventrouter.sources.k8s_client import SA_NAMESPACE, SA_TOKEN, ApiClient, in_cluster, load_configuration
from eventrouter.sources.k8s_kubeconfig import context_namespace, read_kubeconfig
from eventrouter.sources.k8s_leader import LeaderElector
from eventrouter.sources.k8s_options import SourceSettings, parse_settings
from eventrouter.sources.k8s_watch import BACKOFF_MAX, Backoff, ListWatch

__all__ = ["BACKOFF_MAX", "Backoff", "KubernetesSource"]

log = logging.getLogger("eventrouter.sources.kubernetes")

# seconds between checkpoint writes while something moved (and one more on finish): the first write
# follows the first settled event within this, which bounds what a crash (SIGKILL) can repeat
CHECKPOINT_INTERVAL = 1.0
HOUSEKEEPING_TICK = 0.1  # while events flow (or a leader may lose its Lease): the look at stop and positions
WRITE_RETRY_MAX = 30.0  # a failing checkpoint is retried at most this far apart (RBAC errors: no API storm)
# uids remembered in memory to drop updates nobody sees (~130 B each); DELETED frees them, the oldest go
# first past this. Not needed for correctness across re-lists: the router's per-sink positions are. Kept
# small because these records live long among short-lived events and pin CPython's arenas: at 100 000 the
# stall benchmark's RSS stayed at 99 MB after the drain, at 20 000 at 80 MB (start 35).
SEEN_CAP = 20_000


class KubernetesSource(ListWatch):
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
        self.seen: dict[int, int] = {}  # uid_key(uid) -> seen_record(rv, event): see k8s_watch
        self.progress: Progress | None = None
        self._halted: Callable[[], bool] = lambda: False
        self._done = threading.Event()
        self._write_lock = threading.Lock()
        self._last_write = 0.0
        self._write_failures = 0
        self._errors = ThrottledLog(log, 30.0)
        self._dispatch_lock = threading.Lock()
        self._listing: set[str] = set()
        self._restored_until: datetime | None = None
        self._listing_lock = threading.Lock()
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
            # kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION, without importing kubernetes
            kubeconfig = os.path.expanduser(os.environ.get("KUBECONFIG", "~/.kube/config").split(":")[0])
        if kubeconfig is not None and not os.path.exists(kubeconfig):
            raise ConfigError(f"--source=kubernetes: kubeconfig {kubeconfig} does not exist")
        if kubeconfig is not None:
            _check_kubeconfig(kubeconfig)
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
        keeper = threading.Thread(target=self._housekeeping, args=(router, stop), name="source-housekeeping",
                                  daemon=True)
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
        progress = Progress()
        resume: dict[str, str] = {}
        if doc:
            progress.load(doc)
            # a stream whose list was cut short in an earlier term lists again (see ListWatch._list)
            resume = {k: v for k, v in progress.positions.items() if k in self._paths and k not in self._listing}
            if router.seq == 0 and isinstance(doc.get("sinks"), dict):
                # each sink's own position: what a replayed or re-listed event it already has, it skips
                # (a later term in this process keeps the router's own, newer positions)
                router.restore_positions(doc["sinks"])
        router.positions()  # the baseline of position_changed(): write only once something moves
        self.seen = {}
        self._restored_until = progress.shown_max
        self.progress = progress
        if self.checkpoint is not None and self.state.checkpoint_written is None:
            # the age of the stored position: the loaded one's, else none stored since we started
            self.state.checkpoint_written = _written_at(doc) or time.time()
        first_start = doc is None
        streams = list(self._paths)
        for stream in streams:  # liveness counts from here: each stream must reach the API server in time
            self.state.reached(stream)
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
                if isinstance(exc, CheckpointError) and exc.status == 403:
                    # missing RBAC must not stop the events, and must not go unnoticed: start as on a first
                    # start, keep trying to write (readiness fails and the checkpoint age grows until it works)
                    message = failure_message(self.checkpoint, exc)
                    log.error("%s; until then every restart delivers the listed events again", message)
                    self.state.checkpoint_error = message
                    return None
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

    # ---- checkpoint and stop (housekeeping thread) --------------------------------------------
    def _housekeeping(self, router: Router, stop: threading.Event) -> None:
        moved: tuple[int, int] | None = None
        while not self._done.is_set():
            seen = (router.seq, router.settled_seq())
            if seen == moved and self.elector is None and not stop.is_set():
                # a quiet cluster: nothing dispatched or settled since the last look, so sleep until the
                # next checkpoint write is due (or the stop), not ten wake-ups a second
                stop.wait(max(HOUSEKEEPING_TICK, self._last_write + self.checkpoint_interval - time.monotonic()))
            elif self._done.wait(HOUSEKEEPING_TICK):
                break
            moved = seen
            if self._halted():
                self.api.abort()  # wake a watch blocked in a read
            if not self._may_write():
                continue
            if time.monotonic() - self._last_write >= self._write_delay():
                self._write_checkpoint(router, force=False)
            else:
                with self._write_lock:  # keep the pending queue short between writes
                    self.progress.advance(router.settled_seq())  # type: ignore[union-attr]

    def _write_checkpoint(self, router: Router, force: bool) -> None:
        progress = self.progress
        if progress is None or self.checkpoint is None:
            return
        with self._write_lock:
            progress.advance(router.settled_seq())
            if self._listing:
                # not while a list is dispatched or after one was cut short (see ListWatch._list), not even
                # the final write: after a restart the list runs again from the last checkpoint (repeats are
                # possible, losses not)
                return
            self._last_write = time.monotonic()
            if not (progress.changed or router.position_changed() or force):
                return  # nothing moved: no write (a ConfigMap write is an API call)
            if not progress.positions and not router.position_changed():
                # no resume point yet (the first list is not settled), and no sink position to keep either
                # (when one sink lags from the start, the others' positions are kept: a restart lists again)
                return
            progress.changed = False
            doc = progress.document(self.api.host, self.settings.api, self.settings.namespaces, router.positions())
            try:
                self.checkpoint.save(doc, self._may_write)
            except Exception as exc:  # an odd API answer too: a dead housekeeping thread would never write again
                progress.changed = True
                self._write_failed(exc)
                return
            self._write_failures = 0
            self.state.checkpoint_written = time.time()
            if self.state.checkpoint_error is not None:
                log.info("checkpoint %s written again", self.checkpoint.describe())
                self.state.checkpoint_error = None

    def _write_delay(self) -> float:
        """Seconds between write attempts: the interval, stretched while writes keep failing."""
        if not self._write_failures:
            return self.checkpoint_interval
        return float(min(WRITE_RETRY_MAX, self.checkpoint_interval * 2 ** min(self._write_failures, 10)))

    def _write_failed(self, exc: Exception) -> None:
        """Loud: an ERROR naming the fix, and readiness fails (at once for RBAC or a bad path; after three
        failures in a row for anything else, which may pass); the checkpoint age keeps growing."""
        self._write_failures += 1
        if isinstance(exc, CheckpointError) and exc.status == 409 and not self._may_write():
            log.info("checkpoint %s: not written, this replica is not the leader any more", self.checkpoint_name)
            return
        message = failure_message(self.checkpoint, exc)
        self._errors.log(logging.ERROR, "ckpt-save", "%s", message)
        permanent = isinstance(exc, OSError) or (isinstance(exc, CheckpointError) and exc.status in (401, 403, 404))
        if permanent or self._write_failures >= 3:
            self.state.checkpoint_error = message

    @property
    def checkpoint_name(self) -> str:
        return self.checkpoint.describe() if self.checkpoint is not None else "none"



def _written_at(doc: dict[str, Any] | None) -> float | None:
    """The wall-clock time a loaded checkpoint was written (its ``written`` field), if it says."""
    try:
        return datetime.strptime(str((doc or {})["written"]), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except (KeyError, ValueError):
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
        try:  # read here, not with the kubernetes package: importing it costs 0.3 s of start-up
            return context_namespace(kubeconfig, context) or "default"
        except Exception:
            return "default"
    return "default"


def _check_kubeconfig(path: str) -> None:
    """A file that is not a kubeconfig (``/etc/passwd``) is one clear ConfigError, not the loader's TypeError."""
    try:
        doc = read_kubeconfig(path)
    except OSError as exc:
        raise ConfigError(f"--source=kubernetes: cannot read the kubeconfig {path}: {exc.strerror}") from None
    if doc is None or not any(k in doc for k in ("clusters", "contexts", "users")):
        raise ConfigError(f"--source=kubernetes: {path} is not a kubeconfig file (YAML with clusters, users and "
                          "contexts)")
