"""Leader election on a ``coordination.k8s.io/v1`` Lease, over raw HTTP (get/create/update).

As client-go's leaderelection: a replica takes the Lease when it is free (no holder) or when the
record has not changed for ``lease_duration`` *as observed locally* (no clock comparison across
machines); the holder renews every ``retry_period`` and gives up leading when it could not renew
for ``renew_deadline``. Every write carries the resourceVersion read last, so two replicas racing
for the same Lease get one 200 and one 409. A clean shutdown releases the Lease (empty holder).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from eventrouter.logutil import ThrottledLog

log = logging.getLogger("eventrouter.sources.leader")


def micro_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def default_identity() -> str:
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


class LeaderElector:
    def __init__(self, api: Any, namespace: str, name: str, *, lease_duration: float = 15.0,
                 renew_deadline: float = 10.0, retry_period: float = 2.0, identity: str | None = None) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.identity = identity or default_identity()
        self.leading = threading.Event()
        self.changed = threading.Event()  # set whenever leading flips
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0
        self._last_renew = 0.0
        self._rv: str | None = None
        self._transitions = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._errors = ThrottledLog(log, 60.0)

    @property
    def _path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases"

    # ---- loop ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ok = self.try_acquire_or_renew()
            except Exception as exc:  # API server unreachable or access denied: a failed round
                self._errors.log(logging.WARNING, "lease", "lease %s/%s: %s", self.namespace, self.name, exc)
                ok = False
            now = time.monotonic()
            if ok:
                self._last_renew = now
                if not self.leading.is_set():
                    log.info("lease %s/%s: %s is now the leader", self.namespace, self.name, self.identity)
                    self.leading.set()
                    self.changed.set()
            elif self.leading.is_set() and now - self._last_renew > self.renew_deadline:
                log.error("lease %s/%s: could not renew for %.0fs; no longer the leader",
                          self.namespace, self.name, self.renew_deadline)
                self.leading.clear()
                self.changed.set()
            self._stop.wait(self.retry_period)

    def stop(self, release: bool = True) -> None:
        """Stop renewing; with ``release``, give the Lease up so a standby takes over at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        if release and self.leading.is_set():
            try:
                self._release()
            except Exception as exc:
                log.warning("lease %s/%s: release failed: %s", self.namespace, self.name, exc)
        self.leading.clear()

    # ---- one round ----------------------------------------------------------------------------
    def _spec(self, acquire: str | None) -> dict[str, Any]:
        now = micro_time()
        return {"holderIdentity": self.identity, "leaseDurationSeconds": max(1, round(self.lease_duration)),
                "acquireTime": acquire or now, "renewTime": now, "leaseTransitions": self._transitions}

    def try_acquire_or_renew(self) -> bool:
        resp = self.api.request("GET", f"{self._path}/{self.name}")
        if resp.status_code == 404:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace}, "spec": self._spec(None)}
            created = self.api.request("POST", self._path, json=body)
            if created.status_code in (200, 201):
                self._rv = created.json()["metadata"]["resourceVersion"]
                return True
            if created.status_code != 409:  # 409: another replica created it first
                raise RuntimeError(f"creating the Lease: HTTP {created.status_code}")
            return False
        if resp.status_code != 200:
            hint = " (RBAC: get/create/update on leases needed)" if resp.status_code == 403 else ""
            raise RuntimeError(f"reading the Lease: HTTP {resp.status_code}{hint}")
        lease = resp.json()
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, str(spec.get("renewTime") or ""))
        now = time.monotonic()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        self._transitions = int(spec.get("leaseTransitions") or 0)
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
        if holder and holder != self.identity and now - self._observed_at < duration:
            return False  # someone else holds a live lease
        acquire = spec.get("acquireTime") if holder == self.identity else None
        if holder != self.identity:
            self._transitions += 1
        lease["spec"] = self._spec(acquire)
        updated = self.api.request("PUT", f"{self._path}/{self.name}", json=lease)
        if updated.status_code == 200:
            self._rv = updated.json()["metadata"]["resourceVersion"]
            self._observed = (self.identity, lease["spec"]["renewTime"])
            self._observed_at = now
            return True
        if updated.status_code != 409:  # 409: lost the race
            raise RuntimeError(f"updating the Lease: HTTP {updated.status_code}")
        return False

    def _release(self) -> None:
        resp = self.api.request("GET", f"{self._path}/{self.name}")
        if resp.status_code != 200:
            return
        lease = resp.json()
        if (lease.get("spec") or {}).get("holderIdentity") != self.identity:
            return
        lease["spec"].update(holderIdentity="", leaseDurationSeconds=1, renewTime=micro_time())
        self.api.request("PUT", f"{self._path}/{self.name}", json=lease)
        log.info("lease %s/%s released by %s", self.namespace, self.name, self.identity)
