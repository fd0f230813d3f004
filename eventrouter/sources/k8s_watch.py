"""List + watch of one stream (all namespaces, or one namespace) for the Kubernetes source.

The hot path is :meth:`ListWatch._handle_watched`: one decoded watch line → Event → dedupe check →
``router.dispatch`` → one ``Progress.note``. Everything else here (lists, reconnects, backoff)
runs once per page or per connection.

:class:`ListWatch` is a mixin of ``KubernetesSource``; it uses these attributes of it: ``api``
(ApiClient), ``settings``, ``ctx``, ``state``, ``cluster``, ``seen``, ``seen_cap``, ``progress``,
``_paths`` (stream → events path), ``_errors`` (ThrottledLog), ``_dispatch_lock``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from eventrouter.event import Event, MalformedEvent
from eventrouter.health import SourceState
from eventrouter.logutil import ThrottledLog
from eventrouter.router import Router
from eventrouter.sources.k8s_checkpoint import shown_key

if TYPE_CHECKING:
    from eventrouter.sources.k8s_checkpoint import Progress
    from eventrouter.sources.k8s_client import ApiClient
    from eventrouter.sources.k8s_options import SourceSettings


_LOW = (1 << 64) - 1  # the low 64 bits of a dedupe record: what a user sees; the high 64: the resourceVersion


def seen_key(event: Event) -> int:
    """What a user sees of an occurrence, as one 64-bit hash: count, last time and the text.

    One of these is remembered per live Event (the dedupe memory), so it must not hold the message itself.
    A collision could only make an update that changed nothing look changed (it is then forwarded)."""
    return hash((event.count, event.last_timestamp, event.message, event.type, event.reason)) & _LOW


def version_key(rv: str) -> int:
    """The resourceVersion part of a dedupe record, in its place (the high 64 bits)."""
    return (hash(rv) & _LOW) << 64


def seen_record(rv: str, event: Event) -> int:
    """The in-memory dedupe record of an occurrence (a ``seen`` value): one int of 128 bits, the
    resourceVersion's hash above what the user sees. ~130 bytes per live Event with its key, where a
    tuple of the strings took ~290: the map holds up to ``seen_cap`` (100 000) of them for good."""
    return version_key(rv) | seen_key(event)


def same_version(prev: int, rv: str) -> bool:
    """Whether ``prev`` records this resourceVersion (the same occurrence, seen again)."""
    return prev >> 64 == hash(rv) & _LOW


def unchanged(prev: int, record: int) -> bool:
    """Whether the user would see nothing new in ``record`` after ``prev``."""
    return (prev ^ record) & _LOW == 0


def uid_key(uid: str) -> int:
    """The dedupe map's key for a uid: its hash (an int is 32 bytes, the uid's string 85)."""
    return hash(uid)

log = logging.getLogger("eventrouter.sources.kubernetes")

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



class ListWatch:
    """List, watch, dedupe and dispatch (see the module docstring for what it needs)."""

    # provided by KubernetesSource (declared here for the type checker)
    api: ApiClient
    settings: SourceSettings
    ctx: Any
    state: SourceState
    cluster: str
    seen: dict[int, int]
    seen_cap: int
    progress: Progress | None
    _paths: dict[str, str]
    _errors: ThrottledLog
    _dispatch_lock: threading.Lock
    _listing: set[str]  # streams whose list started and has not completed yet
    _restored_until: datetime | None  # the loaded checkpoint's newest shown occurrence time
    _listing_lock: threading.Lock

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
        """List every Event of the stream (in pages) and dispatch each as ``relisted``: each sink skips
        what it already has. Returns the resourceVersion to watch from, or None to try again.

        An expired ``continue`` token (the list took longer than etcd keeps history) is answered with 410
        and a fresh token that lists the rest at the newest revision: the list goes on with it. What was
        listed before the cut may have changed meanwhile, so those keys are listed once more (a second
        pass that stops at the cut key), and the watch starts from the revision of the first fresh page:
        nothing is missed, and what was already dispatched is recognized (same uid and resourceVersion)."""
        path = self._paths[stream]
        cutoff = None
        if first_start and self.ctx.max_event_age:
            cutoff = datetime.now(UTC) - timedelta(seconds=self.ctx.max_event_age)
        handle = self._locked(self._handle_listed) if locked else self._handle_listed
        listed: set[int] = set()
        # From the start of a list until one completes, no checkpoint is written (not even at shutdown): a
        # list comes in key order, not time order, and a sink's position taken meanwhile (a floor on event
        # times) would claim listed events still to come. An interrupted list is listed again.
        with self._listing_lock:
            self._listing.add(stream)
        with router.relisting():  # the sinks' floors wait for the list's end (it is not in time order)
            outcome = self._list_pass(router, stream, path, handle, cutoff, listed, None, halted, backoff)
            if outcome is None:
                return None
            list_rv, cut_key = outcome
            if cut_key is not None:
                log.info("list %s: the keys before %s are listed again (the list was continued after a 410)",
                         path, cut_key)
                if self._list_pass(router, stream, path, handle, cutoff, listed, cut_key, halted, backoff) is None:
                    return None
        with self._listing_lock:
            self._listing.discard(stream)
        if len(self._paths) == 1 and cut_key is None:
            # a full, consistent list: every uid not in it is gone; forget it (bounded memory)
            for key in [k for k in self.seen if k not in listed]:
                del self.seen[key]
        self.progress.note(router.seq, stream, list_rv)  # type: ignore[union-attr]
        backoff.reset()
        return list_rv

    def _list_pass(self, router: Router, stream: str, path: str, handle: Callable[..., Any],
                   cutoff: datetime | None, listed: set[int], stop_key: str | None,
                   halted: Callable[[], bool], backoff: Backoff) -> tuple[str, str | None] | None:
        """One paginated pass, up to ``stop_key`` (etcd's key order, ``namespace/name``) if given.
        Returns (resourceVersion to watch from, the key listed last before a continue expired, or None)."""
        params: dict[str, Any] = {"limit": self.settings.page_size}
        cut_key: str | None = None
        watch_rv: str | None = None
        last_key = ""
        while not halted():
            try:
                resp = self.api.request("GET", path, params=params)
            except httpx.TransportError as exc:
                self._errors.log(logging.WARNING, "list", "list %s failed: %s; retrying", path, type(exc).__name__)
                self._sleep(backoff.next(), halted)
                return None
            if resp.status_code == 410 and "continue" in params:
                fresh = _fresh_continue(resp)
                if fresh is None:
                    log.info("list %s: the continue token expired (410) and no fresh one came: listing again", path)
                    params.pop("continue")
                    cut_key, watch_rv, last_key = None, None, ""
                    continue
                log.info("list %s: the continue token expired (410); continuing with the fresh token", path)
                if cut_key is None and stop_key is None:
                    cut_key = last_key
                params["continue"] = fresh
                continue
            if resp.status_code != 200:
                self._http_failure("list", path, resp, backoff, halted)
                return None
            self.state.reached(stream)
            doc = orjson.loads(resp.content)
            meta = doc.get("metadata") or {}
            page_rv = str(meta.get("resourceVersion") or "")
            if cut_key is not None and watch_rv is None:
                watch_rv = page_rv  # the first page after the cut: everything from here on is at least this new
            for obj in doc.get("items") or ():
                key = _list_key(obj)
                if stop_key is not None and key > stop_key:
                    return page_rv, None
                last_key = key
                key = handle(router, stream, obj, cutoff)
                if key is not None:
                    listed.add(key)
            token = meta.get("continue")
            if not token:
                return (watch_rv or page_rv), cut_key
            params["continue"] = token
        return None

    def _handle_listed(self, router: Router, stream: str, obj: Any, cutoff: datetime | None) -> int | None:
        """One listed object. Returns its uid's key in the dedupe map (None if it has no metadata)."""
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        if not isinstance(meta, dict):
            self.state.malformed += 1
            return None
        uid, rv = meta.get("uid") or "", str(meta.get("resourceVersion") or "")
        key = uid_key(uid)
        prev = self.seen.get(key)
        if prev is not None and same_version(prev, rv):
            self.state.duplicates_suppressed += 1
            return key
        try:
            event = Event.from_object(obj, self.cluster)
        except MalformedEvent as exc:
            self._malformed(exc)
            return key
        self.state.count("ADDED")
        self.seen[key] = record = seen_record(rv, event)
        progress = self.progress
        shown = (event.count, event.last_timestamp)
        if self._unchanged(prev, record, uid, shown) or (cutoff is not None and event.last_timestamp < cutoff):
            progress.note_entry(router.seq, stream, None, uid, shown)  # type: ignore[union-attr]
            return key
        seq = router.dispatch(event, relisted=True)  # each sink skips what its position says it has
        progress.note_entry(seq, stream, None, uid, shown)  # type: ignore[union-attr]
        return key

    def _unchanged(self, prev: int | None, record: int, uid: str, shown: tuple[int, datetime]) -> bool:
        """An update nobody would see: same count, time and text as the occurrence before it (in memory),
        or, after a restart, as an occurrence every sink settled before it (the checkpoint's ``shown``).
        ``shown``: the occurrence's (count, lastTimestamp)."""
        if prev is not None:
            same = unchanged(prev, record)
        else:
            until = self._restored_until  # nothing newer than the loaded checkpoint's occurrences can match
            settled = self.progress.shown if self.progress is not None else None
            same = (until is not None and shown[1] <= until and settled is not None
                    and shown_key(uid, *shown) in settled)
        if same:
            self.state.unchanged_suppressed += 1
        return same

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
                contact = state.contact
                contact[stream] = time.monotonic()  # the watch is open: the API server is reachable
                rest = b""
                for chunk in resp.iter_bytes():
                    contact[stream] = state.last_progress = time.monotonic()
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
                            progress.note(router.seq, stream, rv)  # type: ignore[union-attr]
                        elif kind == "ERROR":
                            return self._watch_error(stream, obj, backoff, halted), rv
                        else:
                            rv = handle(router, stream, kind, obj) or rv
                    if halted():
                        return "halted", rv
        except httpx.ReadTimeout:
            # a real API server sends nothing at all on a quiet Event watch (no bookmarks): silence is
            # normal, and a half-open connection looks the same; re-opening is cheap and tells them apart
            log.debug("watch %s: nothing for %.0fs: re-opening from %s", stream or "*", s.stall_timeout, rv)
            return "quiet", rv
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
        received = state.received  # state.count(kind), inlined
        received[kind] = received.get(kind, 0) + 1
        try:
            meta = obj["metadata"]
            uid = meta["uid"]
            rv: str = meta["resourceVersion"]
        except (KeyError, TypeError):
            self._malformed("watch event without metadata.uid/resourceVersion")
            return None
        seen = self.seen
        progress = self.progress
        key = hash(uid)  # uid_key(uid), inlined
        if kind == "DELETED":  # TTL expiry: nothing to tell anyone; forget the uid
            seen.pop(key, None)
            progress.note(router.seq, stream, rv)  # type: ignore[union-attr]
            return rv
        prev = seen.get(key)
        version = (hash(rv) & _LOW) << 64  # version_key(rv), inlined
        if prev is not None and prev >> 64 << 64 == version:
            state.duplicates_suppressed += 1
            progress.note(router.seq, stream, rv)  # type: ignore[union-attr]
            return rv
        try:
            event = Event.from_object(obj, self.cluster)
        except MalformedEvent as exc:
            self._malformed(exc)
            return rv
        # seen_record(rv, event), inlined
        when = event.last_timestamp
        record = version | hash((event.count, when, event.message, event.type, event.reason)) & _LOW
        seen[key] = record
        shown = (event.count, when)
        until = self._restored_until  # after a restart: the checkpoint's "shown" (a datetime compare, cheap)
        if (prev is not None and (prev ^ record) & _LOW == 0) or (
                prev is None and until is not None and when <= until and self._unchanged(None, record, uid, shown)):
            if prev is not None:
                state.unchanged_suppressed += 1
            progress.note_entry(router.seq, stream, rv, uid, shown)  # type: ignore[union-attr]
            return rv
        if len(seen) > self.seen_cap:
            self._trim_seen()
        progress.note_entry(router.dispatch(event), stream, rv, uid, shown)  # type: ignore[union-attr]
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
        for key in [k for _, k in zip(range(drop), self.seen, strict=False)]:
            del self.seen[key]

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



def _list_key(obj: Any) -> str:
    """Where etcd keeps the object (``namespace/name``): lists come in this order."""
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    if not isinstance(meta, dict):
        return ""
    return f"{meta.get('namespace') or ''}/{meta.get('name') or ''}"


def _fresh_continue(resp: httpx.Response) -> str | None:
    """The fresh continue token of a 410 "continue parameter is too old" Status, if it has one."""
    try:
        body = resp.json()
        token = (body.get("metadata") or {}).get("continue")
    except (ValueError, AttributeError):
        return None
    return token if isinstance(token, str) and token else None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, min(float(value), 300.0))
    except ValueError:
        return None

