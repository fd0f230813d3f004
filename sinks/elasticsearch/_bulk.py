"""Bulk requests and their answers: the document of each event (normalized JSON or kube-eventer's Go
struct), its idempotent ``_id``, and the classification of a ``_bulk`` response, whole and per item."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import orjson

from eventrouter import Event, PermanentError, format_time, raise_for_status

from .._kube_eventer import es_document

REF_ORDER = ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")

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
        source = es_document(event, cluster)
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
