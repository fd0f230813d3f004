"""Elasticsearch / OpenSearch sink: events written with the ``_bulk`` REST API.

Talks plain HTTP (httpx) to Elasticsearch 5 to 9 and OpenSearch 1 to 3, so one sink covers every
server the official clients split between them (elasticsearch-py 8/9 refuses OpenSearch and other
majors). The version comes from ``ver=`` or from the ``GET /`` banner: ``ver`` 5/6 put a mapping
type in each action (``events`` for ``format=kube-eventer``, ``_doc`` otherwise); 7 and later none.

Credentials: basic auth with ``esUserName`` + ``esUserSecret`` (or ``http://user:pass@host`` in a
node URL), or an API key (``api_key=ID:KEY`` or the base64 ``encoded`` value Kibana shows; on
Elastic Cloud: Stack Management > API keys). Pass secrets through env: ``esUserSecret=$ES_PASSWORD``.

URL forms::

    --sink=elasticsearch:http://es:9200                               (kube-eventer)
    --sink=elasticsearch:?nodes=http://a:9200&nodes=http://b:9200     (kube-eventer: nodes override)
    --sink=elasticsearch:https://es:9200?esUserName=elastic&esUserSecret=$ES_PASSWORD&ca_file=/ca.pem
    --sink=elasticsearch:https://es:9200?api_key=$ES_API_KEY&data_stream=logs-k8s.events-default

Writes are idempotent: each document ``_id`` is ``<uid>-<resourceVersion>-<count>``, so a retried
bulk overwrites instead of duplicating; data streams take ``create`` only, so a 409 conflict there
means "already written". Per item, 429/5xx are retried, other 4xx rejected (counted as failed).

Example::

    --sink=elasticsearch:http://elasticsearch.logging:9200?index=k8s-events&use_namespace=true
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

import httpx
import orjson

from eventrouter import (
    HTTP_OPTIONS,
    Duration,
    Event,
    Option,
    Options,
    PartialError,
    PermanentError,
    RetryableError,
    Sink,
    SinkConfigError,
    SinkURL,
    format_time,
    http_client,
    raise_for_status,
    redact_text,
    transport_error,
)

log = logging.getLogger("eventrouter.sinks.elasticsearch")

NODE_COOLDOWN = 30.0  # seconds a node that failed is skipped while another one is available
_INDEX_FORBIDDEN = re.compile(r'[\\/*?"<>| ,#:A-Z]')
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_DATE_TOKEN = re.compile(r"YYYY|MM|DD|HH")
_DATE_FORMAT = re.compile(r"^(?:YYYY|MM|DD|HH)(?:[._-]?(?:YYYY|MM|DD|HH))*$")

# ---- documents -------------------------------------------------------------------------------
# kube-eventer marshals Go structs: fields in declaration order, empty ones omitted (omitempty).
_META_ORDER = ("name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
               "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations",
               "ownerReferences", "finalizers", "managedFields")
_REF_ORDER = ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")


def _go_time(value: datetime) -> str:
    """Go's time.Time JSON (RFC 3339 with trailing zeros of the fraction removed), in UTC."""
    text = value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".")
    return text + "Z"


def _go_ordered(obj: dict[str, Any], order: Sequence[str], keep: str = "") -> dict[str, Any]:
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
        "Metadata": _go_ordered(meta, _META_ORDER, keep="creationTimestamp"),
        "InvolvedObject": _go_ordered(ref, _REF_ORDER),
        "Source": _go_ordered({"component": event.source_component, "host": event.source_host},
                              ("component", "host")),
        "FirstOccurrenceTimestamp": _go_time(event.first_timestamp),
        "LastOccurrenceTimestamp": _go_time(event.last_timestamp),
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


def _mappings(fmt: str, data_stream: bool) -> dict[str, Any]:
    """Mappings for the fields we write: keyword for identifiers, date for times, text for the message."""
    kw = {"type": "keyword"}
    date = {"type": "date"}
    message = {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 1024}}}
    if fmt == "kube-eventer":
        ref = {k: kw for k in _REF_ORDER}
        props: dict[str, Any] = {
            "Count": {"type": "long"},
            "Metadata": {"properties": {"name": kw, "namespace": kw, "uid": kw, "resourceVersion": kw,
                                        "creationTimestamp": date}},
            "InvolvedObject": {"properties": ref},
            "Source": {"properties": {"component": kw, "host": kw}},
            "FirstOccurrenceTimestamp": date,
            "LastOccurrenceTimestamp": date,
            "Message": message,
            "Reason": kw,
            "Type": kw,
            "EventTags": {"properties": {k: kw for k in ("cluster_name", "eventID", "hostname", "pod_id",
                                                            "pod_name")}},
        }
    else:
        props = {k: kw for k in ("uid", "resource_version", "cluster", "namespace", "name", "type", "reason")}
        props.update(message=message, count={"type": "long"}, first_timestamp=date, last_timestamp=date)
        props["involved_object"] = {"properties": {k: kw for k in ("kind", "namespace", "name", "uid",
                                                                    "api_version", "field_path")}}
        props.update({k: kw for k in ("source_component", "source_host", "reporting_controller",
                                      "reporting_instance", "action")})
    if data_stream:
        props = {"@timestamp": date, **props}
    strings = {"strings": {"match_mapping_type": "string", "mapping": {"type": "keyword", "ignore_above": 1024}}}
    return {"dynamic_templates": [strings], "properties": props}


# ---- responses -------------------------------------------------------------------------------
DELIVERED, RETRY, REJECT = "delivered", "retry", "reject"


class _TooLarge(PermanentError):
    """HTTP 413: the bulk body is over http.max_content_length; send it in halves."""


def _classify(status: int, body: bytes, headers: httpx.Headers | None = None) -> list[dict[str, Any]]:
    """A bulk response: the per-item results, or RetryableError / PermanentError for the whole request."""
    if status == 413:
        raise _TooLarge("the server answered HTTP 413 (request body too large)")
    if not 200 <= status < 300:
        raise_for_status(httpx.Response(status, content=body, headers=headers), "Elasticsearch")
    try:
        result = orjson.loads(body)
        items = result["items"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise PermanentError(f"Elasticsearch answered HTTP {status} without bulk items: {body[:200]!r}") from None
    return [next(iter(item.values())) for item in items]


def _item_outcome(op: str, item: dict[str, Any]) -> str:
    """One bulk item: delivered, retry (429/5xx) or reject (other 4xx); a create's 409 was written before."""
    status = int(item.get("status", 500))
    if 200 <= status < 300 or (status == 409 and op == "create"):
        return DELIVERED
    if status == 429 or status >= 500:
        return RETRY
    return REJECT


def _item_error(item: dict[str, Any]) -> str:
    error = item.get("error") or {}
    if isinstance(error, dict):
        return f"{item.get('status')} {error.get('type', '')}: {str(error.get('reason', ''))[:300]}"
    return f"{item.get('status')} {str(error)[:300]}"


class _Outcome:
    def __init__(self) -> None:
        self.retry: list[Event] = []
        self.rejected: list[Event] = []
        self.samples: list[str] = []
        self.retry_after: float | None = None

    def add(self, other: _Outcome) -> None:
        self.retry += other.retry
        self.rejected += other.rejected
        self.samples += other.samples
        if other.retry_after is not None:
            self.retry_after = max(self.retry_after or 0.0, other.retry_after)


class _Nodes:
    """Round robin over the node URLs, skipping a node that failed in the last NODE_COOLDOWN seconds."""

    def __init__(self, urls: Sequence[str], clock: Any = time.monotonic) -> None:
        self.urls = list(urls)
        self._failed: dict[str, float] = {}
        self._next = 0
        self._clock = clock

    def pick(self) -> str:
        now = self._clock()
        for step in range(len(self.urls)):
            url = self.urls[(self._next + step) % len(self.urls)]
            if now - self._failed.get(url, -NODE_COOLDOWN) >= NODE_COOLDOWN:
                self._next = (self._next + step + 1) % len(self.urls)
                return url
        # every node failed recently: try the one that failed longest ago
        return min(self.urls, key=lambda u: self._failed[u])

    def failed(self, url: str) -> None:
        self._failed[url] = self._clock()

    def ok(self, url: str) -> None:
        self._failed.pop(url, None)

    def any_healthy(self) -> bool:
        now = self._clock()
        return any(now - self._failed.get(u, -NODE_COOLDOWN) >= NODE_COOLDOWN for u in self.urls)


def _check_ver(value: int) -> str | None:
    if value not in (5, 6, 7, 8, 9):
        return (f"version {value} is not supported; use 5, 6, 7, 8 or 9, or leave ver out to detect it "
                "(OpenSearch: leave it out)")
    return None


def _split_userinfo(url: str) -> tuple[str, str | None]:
    """``http://user:pass@h:9200/`` -> (``http://user:pass@h:9200``, ``pass``): httpx sends the userinfo as
    basic auth; the password is kept aside to mask it in messages."""
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    password = None
    if "@" in authority:
        userinfo, _, authority = authority.rpartition("@")
        password = userinfo.partition(":")[2] or None
        url = f"{scheme}{sep}{userinfo}@{authority}{slash}{path}"
    return url.rstrip("/"), password


class ElasticsearchSink(Sink):
    """Elasticsearch / OpenSearch: _bulk writes, idempotent ids.  elasticsearch:http://es:9200?index=heapster"""

    name = "elasticsearch"
    options: ClassVar = (
        Option("nodes", list, default=[], help="node URLs (repeat or comma-separate); override the URL host"),
        Option("index", str, default="heapster",
               help="index prefix (<index>-YYYY.MM.DD), or a pattern with {YYYY.MM.DD}, {namespace}, {cluster}"),
        Option("use_namespace", str, help="any value: <index>-<namespace>-YYYY.MM.DD (kube-eventer)"),
        Option("data_stream", str, help="write to this data stream (op_type create, @timestamp) instead"),
        Option("format", str, default="json", choices=("json", "kube-eventer"),
               help="json: the normalized event; kube-eventer: its Go document (Count, Metadata, EventTags...)"),
        Option("ver", int, validate=_check_ver, help="server major version 5-9 (default: read from GET /)"),
        Option("esUserName", str, help="basic auth user"),
        Option("esUserSecret", str, secret=True, help="basic auth password"),
        Option("api_key", str, secret=True, help="API key: ID:KEY or its base64 'encoded' form"),
        Option("pipeline", str, help="ingest pipeline for every document"),
        Option("cluster_name", str, default="default", help="cluster name stored with each event"),
        Option("template", bool, default=True, help="install an index template with the mappings at start"),
        Option("maxRetries", int, min=0, help="kube-eventer: retries of a failed bulk (sets max_retries)"),
        Option("healthCheck", bool, default=True, help="check GET / when the sink opens (eventrouter check)"),
        Option("startupHealthcheckTimeout", Duration, default=Duration(5.0), min=0.001,
               help="timeout of the GET / version and health check (plain number: seconds)"),
        Option("sniff", bool, default=True, help="kube-eventer: accepted; nodes are used as given"),
        Option("bulkWorkers", int, min=1, help="kube-eventer: accepted; one bulk request at a time per sink"),
        *HTTP_OPTIONS,
    )
    delivery_defaults: ClassVar = {"batch_size": 500, "flush_interval": 1.0}

    def __init__(self, url: SinkURL, opts: Options) -> None:
        super().__init__(url, opts)
        if opts["nodes"]:
            raw_nodes = opts["nodes"]
        elif url.scheme and url.host:
            raw_nodes = [f"{url.scheme}://{url.userinfo + '@' if url.userinfo else ''}{url.host}{url.path}"]
        else:
            raise SinkConfigError(self.name, "no Elasticsearch node: give http://HOST:9200 or nodes=http://HOST:9200",
                                  "nodes")
        nodes, self._url_secrets = [], []
        for node in raw_nodes:
            if not re.match(r"^https?://[^/?#]+", node):
                shown = re.sub(r"^([^@/]*//)?[^@/]*@", lambda m: (m.group(1) or "") + "***@", node)
                raise SinkConfigError(self.name, f"{shown!r} is not an http:// or https:// URL", "nodes")
            base, password = _split_userinfo(node)
            nodes.append(base)
            if password:
                self._url_secrets.append(password)
        self._nodes = _Nodes(nodes)
        self._secrets = [*self._url_secrets, opts["esUserSecret"], opts["api_key"]]
        self._check_auth(opts)
        for option in ("ca_file", "cert_file", "key_file"):
            if opts[option] and not os.path.isfile(opts[option]):
                raise SinkConfigError(self.name, f"{opts[option]!r} is not a readable file", option)
        self._data_stream = opts["data_stream"] or ""
        self._format = opts["format"]
        self._use_namespace = "use_namespace" in opts.given
        self._index_no_ns = ""
        self._index = self._parse_index(opts["index"])
        if self._data_stream:
            self._check_index_name(self._data_stream, "data_stream")
            if opts["ver"] is not None and opts["ver"] < 7:
                raise SinkConfigError(self.name, "data streams need Elasticsearch 7.9 or later", "data_stream")
        self._op = "create" if self._data_stream else "index"
        self._version: tuple[str, int, int] | None = None  # (distribution, major, minor)
        if opts["ver"] is not None:
            self._version = ("elasticsearch", opts["ver"], 0)
        self._template_done = not opts["template"]
        self._client: httpx.Client | None = None

    @classmethod
    def from_url(cls, url: SinkURL) -> ElasticsearchSink:
        opts = cls.parse_options(url)
        if opts["maxRetries"] is not None and "max_retries" not in opts.given:
            # kube-eventer's maxRetries bounded the client's retries; here the router retries
            opts = Options({**opts, "max_retries": opts["maxRetries"]}, opts.given)
        return cls(url, opts)

    @classmethod
    def redact(cls, url: SinkURL) -> str:
        text = url.redacted(cls.secret_keys())
        for node in url.query.get("nodes", ()):
            for part in node.split(","):
                password = _split_userinfo(part)[1]
                if password:
                    text = redact_text(text, [password])
        return text

    # ---- configuration checks --------------------------------------------------------------
    def _check_auth(self, opts: Options) -> None:
        if bool(opts["esUserName"]) != bool(opts["esUserSecret"]):
            missing = "esUserSecret" if opts["esUserName"] else "esUserName"
            raise SinkConfigError(self.name, "basic auth needs both esUserName and esUserSecret", missing)
        if opts["api_key"] and opts["esUserName"]:
            raise SinkConfigError(self.name, "use either api_key or esUserName/esUserSecret, not both", "api_key")

    def _check_index_name(self, name: str, option: str) -> None:
        if not name or _INDEX_FORBIDDEN.search(name) or name[0] in "-_+" or name in (".", ".."):
            raise SinkConfigError(self.name, f"{name!r} is not a valid index name: lowercase, no spaces and none "
                                  'of \\ / * ? " < > | , # : and not starting with - _ +', option)

    def _parse_index(self, index: str) -> str:
        """Turn ``index`` into a str.format pattern over date, namespace and cluster."""
        if "{" not in index:
            self._check_index_name(index, "index")
            # kube-eventer: <index>-<ns>-<date> with use_namespace, <index>-<date> when ns is empty
            self._index_no_ns = index + "-{date:YYYY.MM.DD}"
            return index + ("-{namespace}" if self._use_namespace else "") + "-{date:YYYY.MM.DD}"
        parts, last = [], 0
        for match in _PLACEHOLDER.finditer(index):
            literal = index[last:match.start()]
            parts.append(literal.replace("{", "{{").replace("}", "}}"))
            token = match.group(1)
            if token in ("namespace", "cluster"):
                parts.append("{" + token + "}")
            elif _DATE_FORMAT.match(token):
                parts.append("{date:" + token + "}")
            elif token:
                raise SinkConfigError(self.name, f"unknown placeholder {{{token}}} in the index pattern; use "
                                      "{YYYY.MM.DD} (any of YYYY MM DD HH), {namespace}, {cluster} or {}", "index")
            last = match.end()
        parts.append(index[last:])
        pattern = "".join(parts)
        self._check_index_name(re.sub(r"\{[^{}]*\}", "x", pattern) or "x", "index")
        return pattern

    def index_for(self, event: Event) -> str:
        if self._data_stream:
            return self._data_stream
        fields = _IndexFields(event, self._cluster(event))
        pattern = self._index_no_ns if self._index_no_ns and not fields["namespace"] else self._index
        return pattern.format_map(fields)

    def _cluster(self, event: Event) -> str:
        """cluster_name when given, else --cluster-name (the event's cluster), else kube-eventer's "default"."""
        if "cluster_name" in self.opts.given:
            return str(self.opts["cluster_name"])
        return event.cluster or self.opts["cluster_name"]

    def _template_target(self) -> tuple[str, str]:
        """(template name, index pattern) for the indices this sink writes."""
        if self._data_stream:
            return self._data_stream, self._data_stream
        prefix = self._index.split("{", 1)[0].rstrip("-_.") or "eventrouter"
        return prefix, self._index.split("{", 1)[0] + "*"

    # ---- HTTP --------------------------------------------------------------------------------
    def _http(self) -> httpx.Client:
        if self._client is None:
            headers = {"Accept": "application/json"}
            auth = None
            if self.opts["api_key"]:
                key = self.opts["api_key"].reveal()
                if ":" in key:
                    key = base64.b64encode(key.encode()).decode()
                headers["Authorization"] = f"ApiKey {key}"
            elif self.opts["esUserName"]:
                auth = httpx.BasicAuth(self.opts["esUserName"], self.opts["esUserSecret"].reveal())
            self._client = http_client(self.name, self.opts, headers=headers, auth=auth)
        return self._client

    def _request(self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any) -> httpx.Response:
        node = self._nodes.pick()
        try:
            response = self._http().request(method, node + path, timeout=timeout or httpx.USE_CLIENT_DEFAULT,
                                            **kwargs)
        except httpx.HTTPError as exc:
            self._nodes.failed(node)
            error = transport_error(exc, f"Elasticsearch node {redact_text(node, self._secrets)}")
            error.args = (redact_text(str(error), self._secrets),)
            if self._nodes.any_healthy():
                error.retry_after = 0.0  # another node is up: fail over at once
            raise error from None
        if response.status_code in (502, 503, 504):
            self._nodes.failed(node)
        else:
            self._nodes.ok(node)
        return response

    def _raise(self, response: httpx.Response, what: str) -> None:
        try:
            raise_for_status(response, f"Elasticsearch ({what})")
        except (RetryableError, PermanentError) as exc:
            exc.args = (redact_text(str(exc), self._secrets),)
            raise

    # ---- set-up: version and template --------------------------------------------------------
    def _detect_version(self) -> tuple[str, int, int]:
        response = self._request("GET", "/", timeout=float(self.opts["startupHealthcheckTimeout"]))
        if response.status_code == 401 or response.status_code == 429 or response.status_code >= 500:
            self._raise(response, "GET /")  # bad credentials, or try again later
        try:
            version = orjson.loads(response.content)["version"]
            distribution = version.get("distribution", "elasticsearch")
            major, minor = (int(x) for x in str(version["number"]).split(".")[:2])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            # e.g. 403: an API key without the monitor privilege may write but not read the banner
            log.warning("GET / answered HTTP %d without a version; assuming Elasticsearch 5 as kube-eventer does "
                        "(set ver= to choose)", response.status_code)
            return ("elasticsearch", 5, 0)
        if distribution == "opensearch":
            return ("opensearch", major, minor)
        if major < 5:
            raise PermanentError(f"Elasticsearch {major}.{minor} is not supported (5 to 9 are)")
        return ("elasticsearch", major, minor)

    def _ensure_version(self) -> tuple[str, int, int]:
        if self._version is None:
            self._version = self._detect_version()
            log.info("connected to %s %d.%d", *self._version)
        return self._version

    @property
    def _typed(self) -> bool:
        """Elasticsearch 5 and 6 need a mapping type; 7+ and OpenSearch take none."""
        dist, major, _ = self._ensure_version()
        return dist == "elasticsearch" and major <= 6

    @property
    def _doc_type(self) -> str:
        return "events" if self._format == "kube-eventer" else "_doc"

    def template_request(self) -> tuple[str, dict[str, Any]]:
        """The PUT path and body of the index template, for this server version."""
        dist, major, minor = self._ensure_version()
        name, pattern = self._template_target()
        mappings = _mappings(self._format, bool(self._data_stream))
        composable = dist == "opensearch" or (major, minor) >= (7, 8)
        if self._data_stream or composable:
            body: dict[str, Any] = {"index_patterns": [pattern], "priority": 200, "template": {"mappings": mappings}}
            if self._data_stream:
                body["data_stream"] = {}
            return f"/_index_template/{name}", body
        if self._typed:
            mappings = {self._doc_type: mappings}
        if major <= 5 and dist == "elasticsearch":
            return f"/_template/{name}", {"template": pattern, "order": 1, "mappings": mappings}
        return f"/_template/{name}", {"index_patterns": [pattern], "order": 1, "mappings": mappings}

    def _ensure_template(self, strict: bool) -> None:
        if self._template_done:
            return
        path, body = self.template_request()
        response = self._request("PUT", path, content=orjson.dumps(body),
                                 headers={"Content-Type": "application/json"})
        if 200 <= response.status_code < 300:
            self._template_done = True
            return
        if response.status_code == 429 or response.status_code >= 500 or strict:
            self._raise(response, f"PUT {path}")
        # 4xx (e.g. no manage_index_templates privilege): write anyway, with the server's dynamic mappings
        self._template_done = True
        log.warning("could not install the index template (%s): HTTP %d %s; continuing without it (template=false "
                    "hides this)", path, response.status_code, redact_text(response.text[:300], self._secrets))

    # ---- Sink API ----------------------------------------------------------------------------
    def open(self) -> None:
        if self.opts["healthCheck"] or self._version is None:
            version = self._detect_version()
            if self._version is None:
                self._version = version
        self._ensure_template(strict=True)

    def send(self, batch: Sequence[Event]) -> None:
        if not batch:
            return
        self._ensure_version()
        self._ensure_template(strict=False)
        outcome = self._write(list(batch))
        if outcome.retry or outcome.rejected:
            written = len(batch) - len(outcome.retry) - len(outcome.rejected)
            sample = f"; first error: {outcome.samples[0]}" if outcome.samples else ""
            raise PartialError(
                f"{written} of {len(batch)} documents written, {len(outcome.retry)} to retry, "
                f"{len(outcome.rejected)} rejected{sample}",
                retry=outcome.retry, rejected=outcome.rejected, retry_after=outcome.retry_after)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # ---- bulk --------------------------------------------------------------------------------
    def bulk_body(self, batch: Sequence[Event]) -> bytes:
        """The NDJSON body: an action line and a source line per event, ending with a newline."""
        typed = self._typed
        lines = []
        for event in batch:
            action: dict[str, Any] = {"_index": self.index_for(event)}
            if typed:
                action["_type"] = self._doc_type
            action["_id"] = doc_id(event)
            if self._format == "kube-eventer":
                source = kube_eventer_doc(event, self._cluster(event))
            else:
                source = event.to_dict()
                source["cluster"] = self._cluster(event)
            if self._data_stream:
                source = {"@timestamp": format_time(event.last_timestamp), **source}
            lines.append(orjson.dumps({self._op: action}))
            lines.append(orjson.dumps(source))
        return b"\n".join(lines) + b"\n"

    def _write(self, events: list[Event]) -> _Outcome:
        """One bulk request; on 413 the halves are sent separately (a single document: rejected)."""
        params = {"pipeline": self.opts["pipeline"]} if self.opts["pipeline"] else None
        response = self._request("POST", "/_bulk", content=self.bulk_body(events), params=params,
                                 headers={"Content-Type": "application/x-ndjson"})
        outcome = _Outcome()
        try:
            items = _classify(response.status_code, response.content, response.headers)
        except _TooLarge as exc:
            if len(events) == 1:
                outcome.rejected.append(events[0])
                outcome.samples.append(str(exc))
                return outcome
            middle = len(events) // 2
            for half in (events[:middle], events[middle:]):
                outcome.add(self._write_part(half))
            return outcome
        except (RetryableError, PermanentError) as exc:
            exc.args = (redact_text(str(exc), self._secrets),)
            raise
        if len(items) != len(events):
            raise PermanentError(f"Elasticsearch answered {len(items)} bulk items for {len(events)} documents")
        for event, item in zip(events, items, strict=True):
            result = _item_outcome(self._op, item)
            if result == RETRY:
                outcome.retry.append(event)
            elif result == REJECT:
                outcome.rejected.append(event)
                if not outcome.samples:
                    outcome.samples.append(redact_text(_item_error(item), self._secrets))
        return outcome

    def _write_part(self, events: list[Event]) -> _Outcome:
        """A half of a split batch: a request-level failure applies to this half only."""
        try:
            return self._write(events)
        except RetryableError as exc:
            outcome = _Outcome()
            outcome.retry = list(events)
            outcome.retry_after = exc.retry_after
            outcome.samples.append(str(exc))
            return outcome
        except PermanentError as exc:
            outcome = _Outcome()
            outcome.rejected = list(events)
            outcome.samples.append(str(exc))
            return outcome


class _IndexFields(dict):  # type: ignore[type-arg]
    """Fields of the index pattern for one event; the date is the event's last time in UTC."""

    def __init__(self, event: Event, cluster: str) -> None:
        super().__init__(namespace=event.namespace, cluster=cluster.lower(),
                         date=_IndexDate(event.last_timestamp.astimezone(UTC)))


class _IndexDate:
    def __init__(self, when: datetime) -> None:
        self.when = when

    def __format__(self, spec: str) -> str:
        values = {"YYYY": f"{self.when.year:04d}", "MM": f"{self.when.month:02d}", "DD": f"{self.when.day:02d}",
                  "HH": f"{self.when.hour:02d}"}
        return _DATE_TOKEN.sub(lambda m: values[m.group(0)], spec)
