"""Where the Kubernetes source stores its resume position: a local file or a ConfigMap.

The stored document (JSON)::

    {"version": 1, "server": "https://10.0.0.1", "api": "v1", "namespaces": [],
     "positions": {"": "123456"},              # per watch ("" = all namespaces): resourceVersion
     "delivered": {"<uid>": ["<resourceVersion>", count, lastTimestamp (unix s)], ...},  # newest last, bounded
     "written": "2026-04-14T09:30:00Z"}

Only settled events are in it (see :class:`Progress`). ``delivered`` lets a re-list after a
too-old position (410) skip what was already delivered.
"""

from __future__ import annotations

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
DELIVERED_CAP_FILE = 100_000
PENDING_CAP = 100_000  # unsettled positions tracked while a sink lags
DELIVERED_CAP_CONFIGMAP = 10_000  # a ConfigMap holds at most 1 MiB


class CheckpointStore(Protocol):
    cap: int

    def load(self) -> dict[str, Any] | None: ...

    def save(self, doc: dict[str, Any], still_leading: Callable[[], bool] = ...) -> None: ...


class FileCheckpoint:
    def __init__(self, path: str) -> None:
        self.path = path
        self.cap = DELIVERED_CAP_FILE

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
        self.cap = DELIVERED_CAP_CONFIGMAP
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


@dataclass
class Progress:
    """Tracks what may be written: the newest position whose events every sink has settled.

    The source thread calls :meth:`note` after each dispatch (``seq`` from ``Router.dispatch``) and
    for positions reached without dispatching (bookmarks, suppressed events, end of a list, with
    the router's current seq). The housekeeping thread calls :meth:`advance` with
    ``Router.settled_seq()``; entries at or below it move into ``positions`` and ``delivered``.
    """

    cap: int = DELIVERED_CAP_FILE
    positions: dict[str, str] = field(default_factory=dict)
    # uid -> the source's dedupe record: (rv, count, lastTimestamp, text hash), or (rv, seen_as) from note()
    # and from a loaded checkpoint (seen_as: a Seen, a seen_key tuple or None)
    delivered: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    # The unsettled notes, as parallel deques rather than a tuple per note (one object less per event for
    # the garbage collector): ``pending`` holds their seqs; each seq is appended after its other fields,
    # so whoever sees a seq finds the rest. ``entry`` is the record that goes into ``delivered``.
    pending: deque[int] = field(default_factory=deque)
    _streams: deque[str] = field(default_factory=deque, repr=False)
    _positions: deque[str | None] = field(default_factory=deque, repr=False)
    _uids: deque[str | None] = field(default_factory=deque, repr=False)
    _entries: deque[tuple[Any, ...] | None] = field(default_factory=deque, repr=False)
    # held by advance and by the (rare) cap drop in note: the two may not pop at once; appends need no lock
    _pop_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    changed: bool = False

    def note(self, seq: int, stream: str, position: str | None, uid: str | None = None, rv: str | None = None,
             seen_as: Any = None) -> None:
        """``position`` None: no new resume point (a listed item); ``rv`` None with a uid: forget it.
        ``seen_as`` is what the user saw of that occurrence (count, lastTimestamp, ...)."""
        self.note_entry(seq, stream, position, uid, None if rv is None else (rv, seen_as))

    def note_entry(self, seq: int, stream: str, position: str | None, uid: str | None,
                   entry: tuple[Any, ...] | None) -> None:
        """:meth:`note` for the hot path: ``entry`` is the source's dedupe record itself (``(rv, count,
        lastTimestamp, text hash)``; None: forget the uid), shared with ``delivered``, not copied."""
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

    def _pop(self) -> tuple[str, str | None, str | None, tuple[Any, ...] | None]:
        self.pending.popleft()
        return self._streams.popleft(), self._positions.popleft(), self._uids.popleft(), self._entries.popleft()

    def advance(self, settled: int) -> None:
        pending = self.pending
        delivered = self.delivered
        positions = self.positions
        pop = self._pop
        with self._pop_lock:
            while pending and pending[0] <= settled:
                stream, position, uid, entry = pop()
                if position is not None:
                    positions[stream] = position
                if uid is not None:
                    if entry is None:
                        delivered.pop(uid, None)
                    else:
                        delivered[uid] = entry  # an update keeps its place: eviction goes by first sight
                self.changed = True
        excess = len(delivered) - self.cap
        if excess > 0:
            for uid in list(_first(delivered, excess)):
                del delivered[uid]

    def load(self, doc: dict[str, Any]) -> None:
        self.positions.update(doc.get("positions") or {})
        for uid, value in (doc.get("delivered") or {}).items():
            self.delivered[uid] = Seen.restore(value)

    def document(self, server: str, api: str, namespaces: list[str]) -> dict[str, Any]:
        """The JSON document; the ``delivered`` values are compacted here, once per write."""
        return {
            "version": 1, "server": server, "api": api, "namespaces": namespaces,
            "positions": dict(self.positions),
            "delivered": {uid: _compact(record) for uid, record in self.delivered.items()},
            "written": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }


class Seen:
    """What a user saw of a delivered occurrence, as the checkpoint keeps it: count and lastTimestamp.

    Compares equal to the source's full ``(count, last_timestamp, message, type, reason)`` tuple
    when count and time match, so an invisible update made while the router was down is not
    forwarded after a restart.
    """

    __slots__ = ("count", "ts")

    def __init__(self, count: int, ts: int) -> None:
        self.count, self.ts = count, ts

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Seen):
            return (self.count, self.ts) == (other.count, other.ts)
        if isinstance(other, tuple) and len(other) >= 2:
            return other[0] == self.count and int(other[1].timestamp()) == self.ts
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    @staticmethod
    def compact(seen_as: Any) -> tuple[int, int] | tuple[()]:
        if isinstance(seen_as, Seen):
            return (seen_as.count, seen_as.ts)
        if isinstance(seen_as, tuple):
            return (seen_as[0], int(seen_as[1].timestamp()))
        return ()

    @staticmethod
    def restore(value: Any) -> tuple[str, Seen | None]:
        """A ``delivered`` value (``rv`` or ``[rv, count, ts]``) as the source's seen-map entry."""
        if isinstance(value, list) and len(value) == 3:
            return str(value[0]), Seen(int(value[1]), int(value[2]))
        if isinstance(value, list) and value:
            return str(value[0]), None
        return str(value), None


def _compact(record: tuple[Any, ...]) -> list[Any]:
    """A ``delivered`` record as the checkpoint stores it: ``[rv, count, lastTimestamp (unix s)]`` or ``[rv]``."""
    if len(record) == 4:  # the source's flat record
        return [record[0], record[1], int(record[2].timestamp())]
    return [record[0], *Seen.compact(record[1])]


def _first(mapping: dict[str, Any], n: int) -> list[str]:
    out: list[str] = []
    for key in mapping:
        if len(out) >= n:
            break
        out.append(key)
    return out
