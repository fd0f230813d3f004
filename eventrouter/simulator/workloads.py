"""Workload metadata for the simulator: Pods, ReplicaSets, Deployments, Jobs, CronJobs, StatefulSets,
DaemonSets and Nodes, served as a real API server serves them to a metadata-only client.

``GET /api/v1/namespaces/NS/pods/NAME``, ``/apis/apps/v1/namespaces/NS/deployments/NAME``, ... answer
``PartialObjectMetadata`` when the client asks for it in ``Accept`` (``as=PartialObjectMetadata;
g=meta.k8s.io;v=v1``) and the full object (with a ``spec``) otherwise; a missing or deleted object
answers 404 with a Status body. :meth:`Workloads.infer` builds the owner chains that the recorded
events imply (a Pod ``api-7d9f8c6b5-xk2p2`` -> ReplicaSet ``api-7d9f8c6b5`` -> Deployment ``api``), so
the demo and the tests see realistic owners.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

# resource (as in the URL) -> (apiVersion, kind, namespaced)
RESOURCES: dict[str, tuple[str, str, bool]] = {
    "pods": ("v1", "Pod", True),
    "nodes": ("v1", "Node", False),
    "replicasets": ("apps/v1", "ReplicaSet", True),
    "deployments": ("apps/v1", "Deployment", True),
    "statefulsets": ("apps/v1", "StatefulSet", True),
    "daemonsets": ("apps/v1", "DaemonSet", True),
    "jobs": ("batch/v1", "Job", True),
    "cronjobs": ("batch/v1", "CronJob", True),
}
_KIND_RESOURCE = {kind: resource for resource, (_, kind, _) in RESOURCES.items()}
_GROUP_VERSIONS = {"v1": ("api", "v1"), "apps/v1": ("apis", "apps", "v1"), "batch/v1": ("apis", "batch", "v1")}

_POD_OF_DEPLOYMENT = re.compile(r"^(?P<rs>(?P<deploy>.+)-[a-z0-9]{6,10})-[a-z0-9]{5}$")
_RS_OF_DEPLOYMENT = re.compile(r"^(?P<deploy>.+)-[a-z0-9]{6,10}$")
_POD_SUFFIX = re.compile(r"^(?P<owner>.+)-[a-z0-9]{5}$")
_POD_ORDINAL = re.compile(r"^(?P<owner>.+)-\d+$")
_JOB_OF_CRONJOB = re.compile(r"^(?P<cron>.+)-\d{8,}$")


class Workloads:
    """Object metadata by (kind, namespace, name); thread-safe."""

    def __init__(self) -> None:
        self._objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.answered: list[tuple[float, str]] = []  # (time.monotonic(), path) of each object GET answered
        self.full_reads = 0  # objects answered in full (a metadata-only client gets none)
        self.lists = 0  # list requests answered

    def add(self, kind: str, namespace: str, name: str, *, labels: dict[str, str] | None = None,
            annotations: dict[str, str] | None = None, owner: tuple[str, str] | None = None) -> dict[str, Any]:
        """Add (or replace) an object; ``owner`` is the (kind, name) of its controller, same namespace."""
        if kind not in _KIND_RESOURCE:
            raise ValueError(f"the simulator serves no {kind} metadata; use one of {', '.join(sorted(_KIND_RESOURCE))}")
        meta: dict[str, Any] = {"name": name, "uid": str(uuid.uuid4()), "resourceVersion": "1",
                                "creationTimestamp": "2024-01-01T00:00:00Z", "labels": dict(labels or {}),
                                "annotations": dict(annotations or {})}
        if namespace:
            meta["namespace"] = namespace
        if owner is not None:
            owner_kind, owner_name = owner
            meta["ownerReferences"] = [{"apiVersion": RESOURCES[_KIND_RESOURCE[owner_kind]][0], "kind": owner_kind,
                                        "name": owner_name, "uid": str(uuid.uuid4()), "controller": True,
                                        "blockOwnerDeletion": True}]
        obj = {"apiVersion": RESOURCES[_KIND_RESOURCE[kind]][0], "kind": kind, "metadata": meta,
               "spec": {"note": "a full object: a metadata-only client never reads this"}}
        with self._lock:
            self._objects[(kind, namespace, name)] = obj
        return obj

    def delete(self, kind: str, namespace: str, name: str) -> None:
        with self._lock:
            self._objects.pop((kind, namespace, name), None)

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._objects.get((kind, namespace, name))

    def __len__(self) -> int:
        return len(self._objects)

    # ---- the HTTP side --------------------------------------------------------------------------
    def answer(self, parts: list[str], accept: str, query: dict[str, str] | None = None,
               ) -> tuple[int, dict[str, Any]] | None:
        """(status, body) for a GET of one served object or a list of one kind, or None if the path is
        not a workload path."""
        listed = list_path(parts)
        if listed is not None:
            return self._list(*listed, accept, query or {})
        found = _parse(parts)
        if found is None:
            return None
        kind, namespace, name, resource = found
        with self._lock:
            self.answered.append((time.monotonic(), "/" + "/".join(parts)))
        obj = self.get(kind, namespace, name)
        if obj is None:
            group = RESOURCES[resource][0].rpartition("/")[0]
            what = f"{resource}.{group}" if group else resource
            return 404, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                         "message": f'{what} "{name}" not found', "reason": "NotFound",
                         "details": {"name": name, "group": group, "kind": resource}, "code": 404}
        if "as=PartialObjectMetadata" in accept:
            return 200, {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}
        self.full_reads += 1
        return 200, obj

    def _list(self, kind: str, namespace: str | None, accept: str, query: dict[str, str],
              ) -> tuple[int, dict[str, Any]]:
        """A list of one kind (all namespaces when ``namespace`` is None), paged by ``limit``/``continue``."""
        with self._lock:
            self.lists += 1
            objs = [o for (k, ns, _), o in sorted(self._objects.items())
                    if k == kind and (namespace is None or ns == namespace)]
        start = int(query.get("continue") or 0)
        limit = int(query.get("limit") or 0) or len(objs) or 1
        page = objs[start:start + limit]
        meta: dict[str, Any] = {"resourceVersion": "1"}
        if start + limit < len(objs):
            meta["continue"] = str(start + limit)
        if "as=PartialObjectMetadataList" in accept:
            items = [{"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}
                     for o in page]
            return 200, {"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": meta,
                         "items": items}
        self.full_reads += len(page)
        return 200, {"kind": f"{kind}List", "apiVersion": RESOURCES[_KIND_RESOURCE[kind]][0], "metadata": meta,
                     "items": page}

    # ---- the owner chains the recorded events imply -------------------------------------------------
    def infer(self, events: Iterable[dict[str, Any]]) -> None:
        """Create metadata for every workload and Pod the events name, with owners inferred from names."""
        refs: set[tuple[str, str, str]] = set()
        for obj in events:
            ref = obj.get("involvedObject") or obj.get("regarding") or {}
            kind, name = ref.get("kind"), ref.get("name")
            if kind in _KIND_RESOURCE and name:
                refs.add((kind, ref.get("namespace") or "", name))
        known = {(kind, ns, name) for kind, ns, name in refs}
        for kind, ns, name in sorted(refs, key=lambda r: _ORDER.index(r[0])):
            self._infer_one(kind, ns, name, known)

    def _infer_one(self, kind: str, ns: str, name: str, known: set[tuple[str, str, str]]) -> None:
        if self.get(kind, ns, name) is not None:
            return
        owner: tuple[str, str] | None = None
        if kind == "Pod":
            owner = self._pod_owner(ns, name, known)
        elif kind == "ReplicaSet":
            match = _RS_OF_DEPLOYMENT.match(name)
            if match:
                owner = ("Deployment", match["deploy"])
        elif kind == "Job":
            match = _JOB_OF_CRONJOB.match(name)
            if match and ("CronJob", ns, match["cron"]) in known:
                owner = ("CronJob", match["cron"])
        if owner is not None:
            self._infer_one(owner[0], ns, owner[1], known)
        top = self.top(kind, ns, name, owner)
        labels = {"app.kubernetes.io/name": top} if kind != "Node" else {"kubernetes.io/hostname": name}
        self.add(kind, ns, name, labels=labels, owner=owner)

    def _pod_owner(self, ns: str, name: str, known: set[tuple[str, str, str]]) -> tuple[str, str] | None:
        match = _POD_OF_DEPLOYMENT.match(name)
        if match and (("ReplicaSet", ns, match["rs"]) in known or ("Deployment", ns, match["deploy"]) in known):
            return ("ReplicaSet", match["rs"])
        match = _POD_SUFFIX.match(name)
        if match:
            for kind in ("Job", "DaemonSet", "ReplicaSet"):
                if (kind, ns, match["owner"]) in known:
                    return (kind, match["owner"])
        match = _POD_ORDINAL.match(name)
        if match and ("StatefulSet", ns, match["owner"]) in known:
            return ("StatefulSet", match["owner"])
        if _POD_OF_DEPLOYMENT.match(name):  # the usual Deployment pod name even without its owners' events
            return ("ReplicaSet", name.rsplit("-", 1)[0])
        return None

    def top(self, kind: str, ns: str, name: str, owner: tuple[str, str] | None) -> str:
        """The name of the top of the chain (for the demo's ``app.kubernetes.io/name`` label)."""
        seen = 0
        while owner is not None and seen < 5:
            kind, name = owner
            obj = self.get(kind, ns, name)
            refs = (obj or {}).get("metadata", {}).get("ownerReferences") or []
            owner = (refs[0]["kind"], refs[0]["name"]) if refs else None
            seen += 1
        return name


_ORDER = ["CronJob", "Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet", "Node", "Pod"]


def list_path(parts: list[str]) -> tuple[str, str | None] | None:
    """(kind, namespace or None for all) of a list path of a served kind, else None."""
    for prefix in _GROUP_VERSIONS.values():
        n = len(prefix)
        if tuple(parts[:n]) != prefix:
            continue
        rest = parts[n:]
        if len(rest) == 3 and rest[0] == "namespaces":
            namespace: str | None = rest[1]
            resource = rest[2]
        elif len(rest) == 1:
            namespace, resource = None, rest[0]
        else:
            return None
        spec = RESOURCES.get(resource)
        if spec is None or "/".join(prefix[1:]) != spec[0] or (namespace is not None and not spec[2]):
            return None
        return spec[1], namespace
    return None


def _parse(parts: list[str]) -> tuple[str, str, str, str] | None:
    """(kind, namespace, name, resource) of a GET path of one served object."""
    for prefix in _GROUP_VERSIONS.values():
        n = len(prefix)
        if tuple(parts[:n]) != prefix:
            continue
        rest = parts[n:]
        if len(rest) == 4 and rest[0] == "namespaces":
            namespace, resource, name = rest[1], rest[2], rest[3]
        elif len(rest) == 2:
            namespace, resource, name = "", rest[0], rest[1]
        else:
            return None
        spec = RESOURCES.get(resource)
        if spec is None or "/".join(prefix[1:]) != spec[0] or spec[2] != bool(namespace):
            return None
        return spec[1], namespace, name, resource
    return None
