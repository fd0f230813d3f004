"""Where the Kubernetes source stores its resume position: a local file or a ConfigMap.

The stored document (JSON), well under 256 KB after an hour of a busy cluster::

    {"version": 2, "server": "https://10.0.0.1", "api": "v1", "namespaces": [],
     "positions": {"": "123456"},      # per watch ("" = all namespaces): resourceVersion every sink settled
     "shown": "<base64 of 8-byte digests>",  # what users saw of the last settled occurrences (bounded)
     "sinks": {"log": {...}, ...},     # each sink's own position (Router.positions(); opaque here)
     "written": "2026-04-14T09:30:00Z"}

``positions`` is where the watches resume; the router's per-sink positions (``sinks``) tell each sink
which of the replayed or re-listed events it already has, so no sink gets one twice and none misses
one. ``shown`` only lets a restart drop an update nobody would see (a MODIFIED with the same count and
time as an occurrence already delivered): digests of (uid, count, lastTimestamp), at most
:data:`SHOWN_CAP`. Version 1 documents (with a per-uid ``delivered`` record) are read and upgraded.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import tempfile
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from eventrouter.errors import ConfigError

log = logging.getLogger("eventrouter.sources.kubernetes")

CONFIGMAP_KEY = "checkpoint.json"
FILE_DEFAULT = os.path.join(".eventrouter", "checkpoint.json")
# unsettled positions tracked while a sink lags; past it the oldest are forgotten (the checkpoint then moves
# to the next remembered one once settled; nothing is claimed early). Kept small: these notes are made among
# the events of a stall and pinned CPython's arenas after it; at 100 000 the stall benchmark's RSS stayed
# 20 MB above a router that never had a backlog, at 10 000 it is level with it.
PENDING_CAP = 10_000
SHOWN_CAP = 4096  # occurrences in "shown": 4096 * 8 bytes = 44 KB of base64


class CheckpointStore(Protocol):
    def load(self) -> dict[str, Any] | None: ...

    def save(self, doc: dict[str, Any], still_leading: Callable[[], bool] = ...) -> None: ...


class FileCheckpoint:
    def __init__(self, path: str) -> None:
        self.path = path

    def describe(self) -> str:
        return f"file:{self.path}"

    def load(self) -> dict[str, Any] | None:
        try:
            with open(self.path, "rb") as fh:
                doc: dict[str, Any] = orjson.loads(fh.read())
                return doc
        except FileNotFoundError:
            return None
        except (OSError, orjson.JSONDecodeError) as exc:
            log.warning("checkpoint %s is unreadable (%s); starting as if there were none", self.path, exc)
            return None

    def save(self, doc: dict[str, Any], still_leading: Callable[[], bool] = lambda: True) -> None:
        """Write a temp file in the same directory, fsync, rename: a crash leaves the old or the new."""
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", dir=directory)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(orjson.dumps(doc))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        try:
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:
            pass


class ConfigMapCheckpoint:
    """One ConfigMap, key ``checkpoint.json``; updates carry the resourceVersion read last."""

    def __init__(self, api: Any, namespace: str, name: str) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self._rv: str | None = None

    def describe(self) -> str:
        return f"configmap:{self.namespace}/{self.name}"

    @property
    def _path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/configmaps"

    def load(self) -> dict[str, Any] | None:
        resp = self.api.request("GET", f"{self._path}/{self.name}")
        if resp.status_code == 404:
            self._rv = None
            return None
        if resp.status_code != 200:
            raise CheckpointError(f"reading {self.describe()}: HTTP {resp.status_code}", resp.status_code,
                                  _status_message(resp), "get")
        try:
            obj = resp.json()
            self._rv = obj["metadata"].get("resourceVersion")
            text = (obj.get("data") or {}).get(CONFIGMAP_KEY)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise CheckpointError(f"reading {self.describe()}: the API server's answer is not a ConfigMap") from None
        if not text:
            return None
        try:
            doc: dict[str, Any] = orjson.loads(text)
            return doc
        except orjson.JSONDecodeError:
            log.warning("checkpoint %s is unreadable; starting as if there were none", self.describe())
            return None

    def save(self, doc: dict[str, Any], still_leading: Callable[[], bool] = lambda: True) -> None:
        """Write the checkpoint. On a conflict (someone wrote since we last did), overwrite only while
        ``still_leading()``: a deposed leader must not clobber its successor's newer position."""
        text = orjson.dumps(doc).decode()
        if len(text) > CONFIGMAP_WARN_BYTES:
            log.warning("checkpoint %s is %d KiB, close to the 1 MiB a ConfigMap can hold: writes will fail past it; "
                        "use --checkpoint=file:PATH on a volume", self.describe(), len(text) // 1024)
        body: dict[str, Any] = {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": self.name, "namespace": self.namespace,
                         "labels": {"app.kubernetes.io/managed-by": "eventrouter"}},
            "data": {CONFIGMAP_KEY: text},
        }
        for _ in range(3):
            if self._rv is None:
                verb = "create"
                resp = self.api.request("POST", self._path, json=body)
            else:
                verb = "update"
                body["metadata"]["resourceVersion"] = self._rv
                resp = self.api.request("PUT", f"{self._path}/{self.name}", json=body)
            try:
                if resp.status_code in (200, 201):
                    self._rv = resp.json()["metadata"]["resourceVersion"]
                    return
                if resp.status_code in (404, 409):
                    if not still_leading():
                        raise CheckpointError(f"writing {self.describe()}: not the leader any more", resp.status_code)
                    # created or changed by someone else (a previous leader): take its version and write ours
                    current = self.api.request("GET", f"{self._path}/{self.name}")
                    self._rv = current.json()["metadata"]["resourceVersion"] if current.status_code == 200 else None
                    continue
            except (ValueError, KeyError, TypeError, AttributeError):
                raise CheckpointError(f"writing {self.describe()}: the answer is not a ConfigMap") from None
            raise CheckpointError(f"writing {self.describe()}: HTTP {resp.status_code}", resp.status_code,
                                  _status_message(resp), verb)
        raise CheckpointError(f"writing {self.describe()}: conflicting writers")


class CheckpointError(Exception):
    def __init__(self, message: str, status: int | None = None, server_message: str = "", verb: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.server_message = server_message  # the API server's Status message (names the ServiceAccount)
        self.verb = verb  # the RBAC verb of the refused request: get, create, update


CONFIGMAP_WARN_BYTES = 900 * 1024  # a ConfigMap holds at most 1 MiB


def _status_message(resp: Any) -> str:
    try:
        body = resp.json()
        return str(body.get("message") or "") if isinstance(body, dict) else ""
    except ValueError:
        return ""


def failure_message(store: Any, exc: BaseException, verb: str = "write") -> str:
    """One line that says why the checkpoint cannot be read or written and what to do about it: for a
    403 the exact RBAC rule to add (verb, resource, name, namespace, ServiceAccount)."""
    where = store.describe()
    verb = getattr(exc, "verb", "") or verb
    if isinstance(exc, CheckpointError) and exc.status == 403 and isinstance(store, ConfigMapCheckpoint):
        found = re.search(r'system:serviceaccount:([^:"]+):([^"]+)"', exc.server_message)
        account = f"ServiceAccount {found.group(1)}/{found.group(2)}" if found else "the router's ServiceAccount"
        return (f"checkpoint {where}: access denied (HTTP 403 on {verb}): {account} may not {verb} configmaps in "
                f"namespace {store.namespace}. Add a Role in namespace {store.namespace} with the rules "
                f"{{apiGroups: [\"\"], resources: [configmaps], resourceNames: [{store.name}], verbs: [get, update]}} "
                f"and {{apiGroups: [\"\"], resources: [configmaps], verbs: [create]}}, bound to {account} "
                f"(deploy/rbac.yaml; docs/source.md#rbac), or run with --checkpoint=none")
    if isinstance(exc, OSError):
        return (f"checkpoint {where}: cannot {verb} it: {exc.strerror or exc} ({exc.filename or where}); give the "
                "router a writable path (the image's volume /var/lib/eventrouter) or run with --checkpoint=none")
    return f"checkpoint {where}: cannot {verb} it: {type(exc).__name__}: {exc}"


def parse_checkpoint_flag(flag: str | None, *, in_cluster: bool, namespace: str) -> tuple[str, str]:
    """``('file', PATH)``, ``('configmap', 'NS/NAME')`` or ``('none', '')`` from ``--checkpoint``."""
    if flag is None:
        return ("configmap", f"{namespace}/eventrouter-checkpoint") if in_cluster else ("file", FILE_DEFAULT)
    kind, _, where = flag.partition(":")
    if flag == "none":
        return "none", ""
    if kind == "file" and where:
        return "file", where
    if kind == "configmap" and where:
        ns, _, name = where.rpartition("/")
        if not name:
            raise ConfigError(f"--checkpoint={flag}: give configmap:NAMESPACE/NAME (or configmap:NAME)")
        return "configmap", f"{ns or namespace}/{name}"
    raise ConfigError(f"--checkpoint={flag}: use configmap:NAMESPACE/NAME, file:PATH or none")


def shown_key(uid: str, count: int, last_timestamp: Any) -> bytes:
    """What a user saw of an occurrence, as 8 bytes stable across processes: uid, count, lastTimestamp (s)."""
    return hashlib.blake2b(f"{uid}\x00{count}\x00{int(last_timestamp.timestamp())}".encode(),
                           digest_size=8).digest()


@dataclass
class Progress:
    """Tracks what may be written: the newest position whose events every sink has settled.

    The source thread calls :meth:`note_entry` after each dispatch (``seq`` from ``Router.dispatch``)
    and for positions reached without dispatching (bookmarks, suppressed events, end of a list, with
    the router's current seq). The housekeeping thread calls :meth:`advance` with
    ``Router.settled_seq()``; entries at or below it move into ``positions`` and ``shown``.
    """

    positions: dict[str, str] = field(default_factory=dict)
    # settled occurrences' shown_key, oldest first: read it through ``shown``. advance() only queues the
    # (uid, count, lastTimestamp) of each settled occurrence in ``_recent``; the hashing happens when the
    # digests are needed (a checkpoint write, a restarted watch's check), not for every settled event.
    _shown: dict[bytes, None] = field(default_factory=dict, repr=False)
    _recent: deque[tuple[str, int, datetime]] = field(default_factory=lambda: deque(maxlen=SHOWN_CAP), repr=False)
    shown_max: datetime | None = None  # the newest lastTimestamp among them: nothing newer can be in ``shown``
    # The unsettled notes, as parallel deques rather than a tuple per note (one object less per event for
    # the garbage collector): ``pending`` holds their seqs; each seq is appended after its other fields,
    # so whoever sees a seq finds the rest. ``entry`` is the occurrence's (count, lastTimestamp).
    pending: deque[int] = field(default_factory=deque)
    _streams: deque[str] = field(default_factory=deque, repr=False)
    _positions: deque[str | None] = field(default_factory=deque, repr=False)
    _uids: deque[str | None] = field(default_factory=deque, repr=False)
    _entries: deque[tuple[int, datetime] | None] = field(default_factory=deque, repr=False)
    # held by advance and by the (rare) cap drop in note: the two may not pop at once; appends need no lock
    _pop_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    changed: bool = False

    def note(self, seq: int, stream: str, position: str | None) -> None:
        """A resume point reached without an occurrence to record (a bookmark, a DELETED, a list's end)."""
        self.note_entry(seq, stream, position, None, None)

    def note_entry(self, seq: int, stream: str, position: str | None, uid: str | None,
                   entry: tuple[int, datetime] | None) -> None:
        """``position`` None: no new resume point (a listed item); ``entry``: the occurrence's
        ``(count, lastTimestamp)``, from which :attr:`shown` is made once every sink settled it."""
        self._streams.append(stream)
        self._positions.append(position)
        self._uids.append(uid)
        self._entries.append(entry)
        pending = self.pending
        pending.append(seq)
        if len(pending) > PENDING_CAP:
            # a sink that never settles pins the checkpoint; forgetting the oldest unsettled entries keeps
            # memory flat and stays safe: the position only ever moves to a settled entry's position
            with self._pop_lock:
                if pending:
                    self._pop()

    def _pop(self) -> tuple[str, str | None, str | None, tuple[int, datetime] | None]:
        self.pending.popleft()
        return self._streams.popleft(), self._positions.popleft(), self._uids.popleft(), self._entries.popleft()

    def advance(self, settled: int) -> None:
        pending = self.pending
        recent = self._recent
        positions = self.positions
        pop = self._pop
        with self._pop_lock:
            while pending and pending[0] <= settled:
                stream, position, uid, entry = pop()
                if position is not None:
                    positions[stream] = position
                if uid is not None and entry is not None:
                    count, when = entry
                    recent.append((uid, count, when))
                    if self.shown_max is None or when > self.shown_max:
                        self.shown_max = when
                self.changed = True

    @property
    def shown(self) -> dict[bytes, None]:
        """The digests of the settled occurrences (at most SHOWN_CAP, the newest kept)."""
        shown = self._shown
        with self._pop_lock:
            recent = self._recent
            while recent:
                uid, count, when = recent.popleft()
                key = shown_key(uid, count, when)
                shown.pop(key, None)
                shown[key] = None
        excess = len(shown) - SHOWN_CAP
        if excess > 0:
            for key in _first(shown, excess):
                del shown[key]
        return shown

    def load(self, doc: dict[str, Any]) -> None:
        self.positions.update(doc.get("positions") or {})
        blob = doc.get("shown")
        if isinstance(blob, str):
            raw = base64.b64decode(blob)
            for i in range(0, len(raw) - 7, 8):
                self.shown[raw[i:i + 8]] = None
        newest = doc.get("shown_max")
        if isinstance(newest, (int, float)):
            self.shown_max = datetime.fromtimestamp(newest, UTC)
        for uid, value in (doc.get("delivered") or {}).items():  # version 1: [rv, count, lastTimestamp (s)]
            if isinstance(value, list) and len(value) == 3:
                when = datetime.fromtimestamp(int(value[2]), UTC)
                self.shown[shown_key(uid, int(value[1]), when)] = None
                if self.shown_max is None or when > self.shown_max:
                    self.shown_max = when

    def document(self, server: str, api: str, namespaces: list[str], sinks: dict[str, Any]) -> dict[str, Any]:
        return {
            "version": 2, "server": server, "api": api, "namespaces": namespaces,
            "positions": dict(self.positions),
            "shown": base64.b64encode(b"".join(list(self.shown))).decode("ascii"),
            "shown_max": self.shown_max.timestamp() if self.shown_max is not None else None,
            "sinks": sinks,
            "written": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }


def _first(mapping: dict[Any, Any], n: int) -> list[Any]:
    out: list[Any] = []
    for key in mapping:
        if len(out) >= n:
            break
        out.append(key)
    return out
