"""Who owns this event: the involved object's labels, selected annotations and top owning workload.

Off by default. ``--enrich=labels,annotations,owner`` (or a sink filter that needs it) turns it on.
For each event's involved object the enricher reads the object's *metadata only* (the
PartialObjectMetadata form, so no Secret data or Pod spec is ever read) and follows controller
``ownerReferences`` up to the top workload (Pod -> ReplicaSet -> Deployment, Pod -> Job -> CronJob, ...).

Bounded by design, so an event storm cannot flood the API server:
- a cache of object metadata, LRU by count and by age (a deleted object (404) is cached as deleted);
- one background lookup per object at a time, at most ``qps`` requests a second with bursts of
  ``burst`` (a token bucket, like client-go's);
- the watch is never held for long: an event whose object is not cached waits at most ``timeout``,
  and only when its lookup could start at once (a free token); otherwise it goes on unenriched and is
  counted (``eventrouter_enrich_events_total{result="late"}``). Its lookup still runs in the background,
  so the next events of the same object are enriched from the cache.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from eventrouter.errors import ConfigError

if TYPE_CHECKING:
    from prometheus_client.core import Metric
from eventrouter.event import NO_LABELS, Event, FrozenDict, Owner
from eventrouter.logutil import ThrottledLog

log = logging.getLogger("eventrouter.enrich")

FEATURES = ("labels", "annotations", "owner")
# The Accept header that makes the API server answer with metadata only (no spec, no data).
METADATA_ACCEPT = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"
METADATA_LIST_ACCEPT = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
# listed at start-up to warm the cache, owners first: (apiVersion, kind, resource, namespaced)
WARM_KINDS = (
    ("apps/v1", "Deployment", "deployments", True), ("apps/v1", "StatefulSet", "statefulsets", True),
    ("apps/v1", "DaemonSet", "daemonsets", True), ("batch/v1", "CronJob", "cronjobs", True),
    ("batch/v1", "Job", "jobs", True), ("apps/v1", "ReplicaSet", "replicasets", True),
    ("v1", "Node", "nodes", False), ("v1", "Pod", "pods", True),
)
WARM_PAGE = 500
MAX_OWNER_DEPTH = 5  # Pod -> ReplicaSet -> Deployment is 3; a loop in ownerReferences must end
WAIT_SHARE = 0.1  # at most this share of the wall time is spent by the watch waiting for lookups
MAX_PENDING = 10_000  # lookups queued at once (a storm of new objects); past it, events go on unenriched

# (group, kind) -> (resource, namespaced) for the kinds events usually name; other kinds fall back to
# kubectl's naive plural (lowercase kind + "s") and namespaced when the reference has a namespace.
_RESOURCES: dict[tuple[str, str], tuple[str, bool]] = {
    ("", "Pod"): ("pods", True),
    ("", "Node"): ("nodes", False),
    ("", "Service"): ("services", True),
    ("", "PersistentVolumeClaim"): ("persistentvolumeclaims", True),
    ("", "PersistentVolume"): ("persistentvolumes", False),
    ("", "Namespace"): ("namespaces", False),
    ("", "ConfigMap"): ("configmaps", True),
    ("", "ReplicationController"): ("replicationcontrollers", True),
    ("", "Endpoints"): ("endpoints", True),
    ("apps", "ReplicaSet"): ("replicasets", True),
    ("apps", "Deployment"): ("deployments", True),
    ("apps", "StatefulSet"): ("statefulsets", True),
    ("apps", "DaemonSet"): ("daemonsets", True),
    ("batch", "Job"): ("jobs", True),
    ("batch", "CronJob"): ("cronjobs", True),
    ("autoscaling", "HorizontalPodAutoscaler"): ("horizontalpodautoscalers", True),
    ("policy", "PodDisruptionBudget"): ("poddisruptionbudgets", True),
    ("networking.k8s.io", "Ingress"): ("ingresses", True),
}


def resource_path(api_version: str, kind: str, namespace: str, name: str) -> str:
    """The REST path of one object: ``/api/v1/namespaces/NS/pods/NAME``, ``/apis/apps/v1/...``."""
    group, _, version = api_version.rpartition("/")
    version = version or "v1"
    resource, namespaced = _RESOURCES.get((group, kind), (kind.lower() + "s", bool(namespace)))
    base = f"/apis/{group}/{version}" if group else f"/api/{version}"
    if namespaced and namespace:
        return f"{base}/namespaces/{namespace}/{resource}/{name}"
    return f"{base}/{resource}/{name}"


def rbac_rule(api_version: str, kind: str) -> str:
    """The RBAC rule a 403 on this kind asks for, in the words of a ClusterRole."""
    group = api_version.rpartition("/")[0]
    resource = _RESOURCES.get((group, kind), (kind.lower() + "s", True))[0]
    return f'apiGroups: ["{group}"], resources: ["{resource}"], verbs: ["get"]'


_Answer = tuple[float, str, Mapping[str, str], Mapping[str, str], Owner | None]


class ObjectKey(NamedTuple):
    api_version: str
    kind: str
    namespace: str
    name: str


class ObjectMeta(NamedTuple):
    """What the enricher keeps of one object (a few hundred bytes)."""

    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    controller: ObjectKey | None  # the controlling owner (ownerReferences with controller: true)
    deleted: bool = False


DELETED = ObjectMeta(NO_LABELS, NO_LABELS, None, deleted=True)


@dataclass
class EnrichSettings:
    features: frozenset[str] = frozenset()
    annotations: tuple[str, ...] = ()  # glob patterns of the annotation keys kept (empty: none)
    qps: float = 20.0
    burst: int = 40
    timeout: float = 0.25  # seconds an event may wait for its object's first lookup
    cache_size: int = 20_000
    cache_ttl: float = 600.0  # seconds; labels change rarely, owners never
    workers: int = 4

    @property
    def enabled(self) -> bool:
        return bool(self.features)


def parse_features(flag: str) -> frozenset[str]:
    """``--enrich=labels,annotations,owner`` (or ``all``; empty or ``none``: off)."""
    words = {w.strip() for w in flag.split(",") if w.strip()}
    if words in ({"none"}, set()):
        return frozenset()
    if "all" in words:
        words = (words - {"all"}) | set(FEATURES)
    unknown = sorted(words - set(FEATURES))
    if unknown:
        raise ConfigError(f"--enrich={flag}: unknown {', '.join(unknown)}; use a list of labels, annotations, "
                          "owner (or all, none)")
    return frozenset(words)


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up (client-go's QPS/burst limiter)."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._tokens = float(self.burst)
        self._clock = clock
        self._stamp = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def try_take(self) -> bool:
        """Take a token if one is there now."""
        with self._lock:
            self._refill()
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False

    def take(self, stop: threading.Event) -> bool:
        """Wait for a token; False if ``stop`` was set meanwhile."""
        while True:
            with self._lock:
                self._refill()
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return True
                wait = (1.0 - self._tokens) / self.rate
            if stop.wait(wait):
                return False


class WaitBudget:
    """Seconds the watch may still spend waiting for lookups: WAIT_SHARE of the wall time, saved up to
    ``cap`` (one event's timeout)."""

    def __init__(self, cap: float, share: float = WAIT_SHARE, clock: Callable[[], float] = time.monotonic) -> None:
        self.cap = cap
        self.share = share
        self._clock = clock
        self._left = cap
        self._stamp = clock()

    def budget(self) -> float:
        now = self._clock()
        self._left = min(self.cap, self._left + (now - self._stamp) * self.share)
        self._stamp = now
        return self._left

    def spend(self, seconds: float) -> None:
        self._left -= seconds


class MetaCache:
    """Object metadata by key: LRU by count, entries older than ``ttl`` are looked up again."""

    def __init__(self, size: int, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.size = size
        self.ttl = ttl
        self._clock = clock
        self._items: OrderedDict[ObjectKey, tuple[float, ObjectMeta]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: ObjectKey) -> ObjectMeta | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            if self._clock() - item[0] > self.ttl:
                del self._items[key]
                return None
            self._items.move_to_end(key)
            return item[1]

    def put(self, key: ObjectKey, meta: ObjectMeta) -> None:
        with self._lock:
            self._items[key] = (self._clock(), meta)
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class EnrichStats:
    """Counters for /metrics."""

    events: dict[str, int] = field(default_factory=lambda: {"enriched": 0, "late": 0, "not_found": 0,
                                                            "failed": 0})
    requests: dict[str, int] = field(default_factory=lambda: {"ok": 0, "not_found": 0, "forbidden": 0,
                                                              "error": 0})


class Enricher:
    """Adds labels, selected annotations and the top owner to events, from a bounded metadata cache."""

    def __init__(self, api: Any, settings: EnrichSettings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.api = api
        self.settings = settings
        self._clock = clock
        self.cache = MetaCache(settings.cache_size, settings.cache_ttl, clock)
        # per involved object, the finished answer: (valid until, result, labels, annotations, owner)
        self._answers: dict[tuple[str, str, str, str], _Answer] = {}
        self.bucket = TokenBucket(settings.qps, settings.burst, clock)
        self.waits = WaitBudget(settings.timeout, clock=clock)
        self.stats = EnrichStats()
        self._want_labels = "labels" in settings.features
        self._want_annotations = "annotations" in settings.features and bool(settings.annotations)
        self._want_owner = "owner" in settings.features
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="enrich")
        self._inflight: dict[ObjectKey, Future[ObjectMeta]] = {}
        self._lock = threading.Lock()
        self._errors = ThrottledLog(log, 60.0)
        self._forbidden_logged: set[tuple[str, str]] = set()

    # ---- the source thread ------------------------------------------------------------------
    def enrich(self, event: Event) -> Event:
        """The same Event with labels/annotations/owner set when its object's metadata is at hand."""
        ref = event.involved_object
        # hot path: the finished answer for this object (most events name an object seen before)
        memo_key = (ref.api_version, ref.kind, ref.namespace, ref.name)
        done = self._answers.get(memo_key)
        if done is not None and done[0] > self._clock():
            return self._apply(event, done)
        if not ref.kind or not ref.name:
            return event
        key = ObjectKey(ref.api_version or "v1", ref.kind, ref.namespace, ref.name)
        meta = self._resolve(key)
        if meta is None:
            self.stats.events["late"] += 1
            return event
        if meta.deleted:
            answer: _Answer = (self._clock() + self.settings.cache_ttl, "not_found", NO_LABELS, NO_LABELS, None)
        else:
            owner, complete = self._top_owner(key, meta) if self._want_owner else (None, True)
            answer = (self._clock() + self.settings.cache_ttl if complete else 0.0, "enriched",
                      meta.labels if self._want_labels else NO_LABELS,
                      meta.annotations if self._want_annotations else NO_LABELS, owner)
        if answer[0]:
            if len(self._answers) >= self.settings.cache_size:
                self._answers.clear()
            self._answers[memo_key] = answer
        return self._apply(event, answer)

    def _apply(self, event: Event, answer: _Answer) -> Event:
        _, result, labels, annotations, owner = answer
        self.stats.events[result] += 1
        # The event was just built by the source and no sink has seen it yet: setting its slots here is
        # part of its construction (dataclasses.replace would copy all 20 fields per event).
        if labels:
            object.__setattr__(event, "labels", labels)
        if annotations:
            object.__setattr__(event, "annotations", annotations)
        if owner is not None:
            object.__setattr__(event, "owner", owner)
        return event

    def _resolve(self, key: ObjectKey) -> ObjectMeta | None:
        """The metadata of ``key``: from the cache, or from a lookup awaited briefly.

        The source thread waits only for a lookup that starts at once (it takes the rate limiter's token
        itself), at most ``timeout``, and within a waiting budget of WAIT_SHARE of the wall time: a cold
        start or a storm of new objects costs the watch at most that share. Everything else goes on
        without enrichment while its lookup fills the cache in the background."""
        meta = self.cache.get(key)
        if meta is not None:
            return meta
        with self._lock:
            future = self._inflight.get(key)
        if future is None:
            if len(self._inflight) >= MAX_PENDING:
                return None
            token = self.bucket.try_take()
            future = self._lookup(key, token)
            if not token:
                return None
        budget = self.waits.budget()
        if budget <= 0:
            return None
        started = time.monotonic()
        try:
            return future.result(timeout=min(self.settings.timeout, budget))
        except Exception:  # timed out, 403, transport error: counted where it happened
            return None
        finally:
            self.waits.spend(time.monotonic() - started)

    def _top_owner(self, key: ObjectKey, meta: ObjectMeta) -> tuple[Owner, bool]:
        """The top of the ownership chain (controller references), or the object itself; and whether the
        chain was followed to its end (False: a link is still being looked up)."""
        top = key
        current = meta
        for _ in range(MAX_OWNER_DEPTH):
            ref = current.controller
            if ref is None:
                break
            top = ref
            parent = self._resolve(ref)
            if parent is None:
                return _owner(top), False  # not at hand yet: name the owner known so far
            if parent.deleted:
                break  # gone: it is the top
            current = parent
        return _owner(top), True

    # ---- lookups (pool threads) -------------------------------------------------------------
    def _lookup(self, key: ObjectKey, token: bool = False) -> Future[ObjectMeta]:
        """The lookup of ``key`` (one at a time per object); ``token``: the caller took its rate token."""
        with self._lock:
            future = self._inflight.get(key)
            if future is not None:
                return future
            future = self._pool.submit(self._fetch, key, token)
            self._inflight[key] = future
        # outside the lock: a future that is already done runs the callback here, at once
        future.add_done_callback(lambda _f, k=key: self._done(k))  # type: ignore[misc]
        return future

    def _done(self, key: ObjectKey) -> None:
        with self._lock:
            self._inflight.pop(key, None)

    def _fetch(self, key: ObjectKey, token: bool) -> ObjectMeta:
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        if not token and not self.bucket.take(self._stop):
            raise RuntimeError("stopped")
        path = resource_path(*key)
        try:
            resp = self.api.request("GET", path, headers={"Accept": METADATA_ACCEPT}, timeout=10.0)
        except Exception as exc:
            if self._stop.is_set():
                raise  # shutting down: the connection was closed under this lookup, nothing to report
            self.stats.requests["error"] += 1
            self._errors.log(logging.WARNING, "transport", "enrich: GET %s failed: %s", path, type(exc).__name__)
            raise
        status = resp.status_code
        if status == 404:
            self.stats.requests["not_found"] += 1
            self.cache.put(key, DELETED)
            return DELETED
        if status == 403:
            self.stats.requests["forbidden"] += 1
            rule = (key.api_version, key.kind)
            if rule not in self._forbidden_logged:
                self._forbidden_logged.add(rule)
                log.error("enrich: the API server forbids reading %s metadata (403); add to the ClusterRole: %s",
                          key.kind, rbac_rule(*rule))
            raise PermissionError(path)
        if status != 200:
            self.stats.requests["error"] += 1
            self._errors.log(logging.WARNING, f"http{status}", "enrich: GET %s answered %d", path, status)
            raise RuntimeError(f"HTTP {status}")
        self.stats.requests["ok"] += 1
        meta = self._meta(orjson.loads(resp.content))
        self.cache.put(key, meta)
        if self._want_owner and meta.controller is not None and self.cache.get(meta.controller) is None:
            self._lookup(meta.controller)  # walk up the chain now: the next event finds its owner cached
        return meta

    def _meta(self, obj: Any) -> ObjectMeta:
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        if not isinstance(meta, dict):
            return ObjectMeta(NO_LABELS, NO_LABELS, None)
        labels = _frozen(meta.get("labels"))
        annotations = _select(meta.get("annotations"), self.settings.annotations)
        controller = None
        for ref in meta.get("ownerReferences") or ():
            if isinstance(ref, dict) and ref.get("controller") and ref.get("kind") and ref.get("name"):
                controller = ObjectKey(str(ref.get("apiVersion") or "v1"), str(ref["kind"]),
                                       str(meta.get("namespace") or ""), str(ref["name"]))
                break
        return ObjectMeta(labels, annotations, controller)

    # ---- start-up ----------------------------------------------------------------------------
    def warm(self, namespaces: Iterable[str] = (), deadline: float = 10.0) -> int:
        """List the metadata of the usual kinds (owners first) into the cache before the first events, so
        a start or a re-list is enriched from the first event instead of after a per-object warm-up. Pages
        take rate tokens like lookups; stops at ``deadline`` seconds or a full cache. A kind the RBAC does
        not let us list is skipped (per-object lookups then fill in). Returns the objects cached."""
        stop_at = time.monotonic() + deadline
        cached = 0
        scopes = list(namespaces) or [""]
        for api_version, kind, resource, namespaced in WARM_KINDS:
            for namespace in scopes if namespaced else [""]:
                group = api_version.rpartition("/")[0]
                base = f"/apis/{api_version}" if group else f"/api/{api_version}"
                path = f"{base}/namespaces/{namespace}/{resource}" if namespace else f"{base}/{resource}"
                params: dict[str, Any] = {"limit": WARM_PAGE}
                while True:
                    if time.monotonic() >= stop_at or len(self.cache) >= self.settings.cache_size:
                        log.info("enrich: cache warmed with %d objects (stopped early: %s)", cached,
                                 "time" if time.monotonic() >= stop_at else "cache full")
                        return cached
                    if not self.bucket.take(self._stop):
                        return cached
                    try:
                        resp = self.api.request("GET", path, params=params,
                                                headers={"Accept": METADATA_LIST_ACCEPT}, timeout=10.0)
                    except Exception as exc:
                        log.info("enrich: listing %s for the cache failed (%s); per-object lookups instead",
                                 resource, type(exc).__name__)
                        break
                    if resp.status_code != 200:
                        log.info("enrich: listing %s metadata answered %d%s; per-object lookups instead", resource,
                                 resp.status_code, f" (grant list: {rbac_rule(api_version, kind)} with "
                                 f'"list")' if resp.status_code == 403 else "")
                        break
                    doc = orjson.loads(resp.content)
                    for item in doc.get("items") or ():
                        meta = item.get("metadata") if isinstance(item, dict) else None
                        if isinstance(meta, dict) and meta.get("name"):
                            key = ObjectKey(api_version, kind, str(meta.get("namespace") or ""), str(meta["name"]))
                            self.cache.put(key, self._meta(item))
                            cached += 1
                    token = (doc.get("metadata") or {}).get("continue")
                    if not token:
                        break
                    params["continue"] = token
        log.info("enrich: cache warmed with %d objects", cached)
        return cached

    def metrics(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily  # at scrape time: start-up

        events = CounterMetricFamily("eventrouter_enrich_events", "Events by enrichment result: enriched, late "
                                     "(went on without: lookup slow or rate-limited), not_found (object deleted), "
                                     "failed", labels=["result"])
        for result, value in self.stats.events.items():
            events.add_metric([result], value)
        yield events
        requests = CounterMetricFamily("eventrouter_enrich_requests", "Metadata requests to the API server by "
                                       "result: ok, not_found, forbidden, error", labels=["result"])
        for result, value in self.stats.requests.items():
            requests.add_metric([result], value)
        yield requests
        yield GaugeMetricFamily("eventrouter_enrich_cache_objects", "Objects in the enrichment cache",
                                value=len(self.cache))

    def close(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)


_OWNERS: dict[ObjectKey, Owner] = {}


def _owner(key: ObjectKey) -> Owner:
    owner = _OWNERS.get(key)
    if owner is None:
        if len(_OWNERS) >= 20_000:
            _OWNERS.clear()
        owner = _OWNERS[key] = Owner(key.kind, key.namespace, key.name, key.api_version)
    return owner


def _frozen(mapping: Any) -> Mapping[str, str]:
    if not isinstance(mapping, dict) or not mapping:
        return NO_LABELS
    return FrozenDict({str(k): str(v) for k, v in mapping.items()})


def _select(annotations: Any, patterns: Iterable[str]) -> Mapping[str, str]:
    """Only the annotations whose keys match one of the patterns (annotations can be large:
    kubectl's last-applied-configuration holds a whole manifest)."""
    patterns = tuple(patterns)
    if not patterns or not isinstance(annotations, dict):
        return NO_LABELS
    kept = {str(k): str(v) for k, v in annotations.items() if any(fnmatch.fnmatchcase(str(k), p) for p in patterns)}
    return FrozenDict(kept) if kept else NO_LABELS


def attach_enricher(router: Any, source: Any, settings: EnrichSettings) -> Enricher | None:
    """Turn enrichment on for what ``--enrich`` asks and what the sinks' filters need; None when off."""
    needed: set[str] = set()
    for runner in router.runners:
        for feature in runner.filter.needs:
            if feature not in settings.features:
                needed.add(feature)
                log.info("sink %s: its filters need --enrich=%s: turned on", runner.label, feature)
    features = settings.features | needed
    if not features:
        return None
    api = getattr(source, "api", None)
    if api is None:
        raise ConfigError(f"--enrich={','.join(sorted(features))} (or a labels=/owner_kinds= filter) needs "
                          "--source=kubernetes: the labels and owners are read from the API server")
    enricher = Enricher(api, EnrichSettings(**{**settings.__dict__, "features": frozenset(features)}))
    enricher.warm(getattr(getattr(source, "settings", None), "namespaces", None) or ())
    router.prepare = enricher.enrich
    router.enricher = enricher
    log.info("enrichment on: %s (at most %g requests/s, burst %d; cache %d objects, %gs)",
             ",".join(sorted(features)), settings.qps, settings.burst, settings.cache_size, settings.cache_ttl)
    return enricher
