"""Bulk requests and their answers: the document of each event (normalized JSON or kube-eventer's Go
struct), its idempotent ``_id``, and the classification of a ``_bulk`` response, whole and per item."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

from eventrouter import Event, PermanentError, format_time, raise_for_status

# kube-eventer marshals Go structs: fields in declaration order, empty ones omitted (omitempty).
_META_ORDER = ("name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
               "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations",
               "ownerReferences", "finalizers", "managedFields")
REF_ORDER = ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")


def go_time(value: datetime) -> str:
    """Go's time.Time JSON (RFC 3339 with trailing zeros of the fraction removed), in UTC."""
    text = value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".")
    return text + "Z"


def go_ordered(obj: dict[str, Any], order: Sequence[str], keep: str = "") -> dict[str, Any]:
    """The fields in Go's order, empty ones left out except ``keep`` (Go writes a zero metav1.Time as null)."""
    return {k: obj.get(k) for k in order if k == keep or obj.get(k) not in (None, "", [], {}, 0)}


def kube_eventer_doc(event: Event, cluster_name: str) -> dict[str, Any]:
    """kube-eventer's EsSinkPoint (sinks/elasticsearch/driver.go), Go field names and order."""
    raw = event.raw if isinstance(event.raw, dict) else {}
    meta = raw.get("metadata") or {"name": event.name, "namespace": event.namespace, "uid": event.uid,
                                    "resourceVersion": event.resource_version}
    obj = event.involved_object
    ref = raw.get("involvedObject") or raw.get("regarding") or {
        "kind": obj.kind, "namespace": obj.namespace, "name": obj.name, "uid": obj.uid,
        "apiVersion": obj.api_version, "fieldPath": obj.field_path}
    tags = {"cluster_name": cluster_name, "eventID": event.uid, "hostname": event.source_host}
    if obj.kind == "Pod":
        tags.update(pod_id=obj.uid, pod_name=obj.name)
    return {
        "Count": event.count,
        "Metadata": go_ordered(meta, _META_ORDER, keep="creationTimestamp"),
        "InvolvedObject": go_ordered(ref, REF_ORDER),
        "Source": go_ordered({"component": event.source_component, "host": event.source_host},
                              ("component", "host")),
        "FirstOccurrenceTimestamp": go_time(event.first_timestamp),
        "LastOccurrenceTimestamp": go_time(event.last_timestamp),
        "Message": event.message,
        "Reason": event.reason,
        "Type": event.type,
        "EventTags": dict(sorted(tags.items())),  # Go sorts map keys
    }


def doc_id(event: Event) -> str:
    """The same occurrence always gets the same _id, so a retried bulk overwrites, never duplicates."""
    if event.uid:
        return f"{event.uid}-{event.resource_version}-{event.count}"
    key = f"{event.namespace}/{event.name}/{event.resource_version}/{event.count}/{format_time(event.last_timestamp)}"
    return hashlib.sha256(key.encode()).hexdigest()[:40]

def document(event: Event, fmt: str, cluster: str, data_stream: bool) -> dict[str, Any]:
    """The source line of one event: kube-eventer's document or the normalized event with its cluster;
    a data stream's needs ``@timestamp`` first."""
    if fmt == "kube-eventer":
        source = kube_eventer_doc(event, cluster)
    else:
        source = event.to_dict()
        source["cluster"] = cluster
    if data_stream:
        source = {"@timestamp": format_time(event.last_timestamp), **source}
    return source


DELIVERED, RETRY, REJECT = "delivered", "retry", "reject"


class TooLarge(PermanentError):
    """HTTP 413: the bulk body is over http.max_content_length; send it in halves."""


def classify(status: int, body: bytes, headers: httpx.Headers | None = None) -> list[dict[str, Any]]:
    """A bulk response: the per-item results, or RetryableError / PermanentError for the whole request."""
    if status == 413:
        raise TooLarge("the server answered HTTP 413 (request body too large)")
    if not 200 <= status < 300:
        raise_for_status(httpx.Response(status, content=body, headers=headers), "Elasticsearch")
    try:
        result = orjson.loads(body)
        items = result["items"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise PermanentError(f"Elasticsearch answered HTTP {status} without bulk items: {body[:200]!r}") from None
    return [next(iter(item.values())) for item in items]


def item_outcome(op: str, item: dict[str, Any]) -> str:
    """One bulk item: delivered, retry (429/5xx) or reject (other 4xx); a create's 409 was written before."""
    status = int(item.get("status", 500))
    if 200 <= status < 300 or (status == 409 and op == "create"):
        return DELIVERED
    if status == 429 or status >= 500:
        return RETRY
    return REJECT


def item_error(item: dict[str, Any]) -> str:
    error = item.get("error") or {}
    if isinstance(error, dict):
        return f"{item.get('status')} {error.get('type', '')}: {str(error.get('reason', ''))[:300]}"
    return f"{item.get('status')} {str(error)[:300]}"


class Outcome:
    def __init__(self) -> None:
        self.retry: list[Event] = []
        self.rejected: list[Event] = []
        self.samples: list[str] = []
        self.retry_after: float | None = None

    def add(self, other: Outcome) -> None:
        self.retry += other.retry
        self.rejected += other.rejected
        self.samples += other.samples
        if other.retry_after is not None:
            self.retry_after = max(self.retry_after or 0.0, other.retry_after)
