"""Elasticsearch / OpenSearch sink: events written with the ``_bulk`` REST API.

Talks plain HTTP (httpx) to Elasticsearch 5 to 9 and OpenSearch 1 to 3, so one sink covers every
server the official clients split between them (elasticsearch-py 8/9 refuses OpenSearch and other
majors). The version comes from ``ver=`` or from the ``GET /`` banner (unknown, e.g. 403: typeless, then the
format the server asks for): ``ver`` 5/6 put a mapping
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
import logging
import os
import re
from collections.abc import Sequence
from typing import Any, ClassVar

import httpx
import orjson

from eventrouter import (
    HTTP_OPTIONS,
    URL,
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
    http_client,
    raise_for_status,
    redact_text,
    transport_error,
)

from ._bulk import REJECT, RETRY, Outcome, TooLarge, classify, doc_id, document, item_error, item_outcome
from ._index import (
    IndexFields,
    Version,
    check_index_name,
    check_ver,
    parse_banner,
    parse_index,
    template_request,
    template_target,
    typed,
)
from ._nodes import Nodes, split_userinfo

log = logging.getLogger("eventrouter.sinks.elasticsearch")

# what a server answers (HTTP 400) to the bulk format of another major version
TYPE_REFUSED = "unknown parameter [_type]"  # Elasticsearch 8+
TYPE_MISSING = "type is missing"  # Elasticsearch 5 and 6
# stand-ins for an unknown version, one per template form
GUESSES: dict[str, Version] = {"8": ("elasticsearch", 8, 0), "7.0": ("elasticsearch", 7, 0),
                               "6": ("elasticsearch", 6, 0), "5": ("elasticsearch", 5, 0)}
_TEMPLATE_FORM_REFUSED = ("no handler found", "Root mapping definition has unsupported parameters",
                          "mapper_parsing_exception", "is missing", "unknown key", "cannot be nested under a type")


def _format_refused(response: httpx.Response) -> bool:
    """A template answer that says this form is not the server's (not a privilege or load problem)."""
    if response.status_code in (404, 405):
        return True
    return response.status_code == 400 and any(marker in response.text for marker in _TEMPLATE_FORM_REFUSED)


def _mapping_roots(body: dict[str, Any]) -> list[Any]:
    return [body.get("mappings"), (body.get("template") or {}).get("mappings") if isinstance(body.get("template"),
                                                                                            dict) else None]


class ElasticsearchSink(Sink):
    """Elasticsearch / OpenSearch: _bulk writes, idempotent ids.  elasticsearch:http://es:9200?index=heapster"""

    name = "elasticsearch"
    options: ClassVar = (
        Option("nodes", list, item=URL, default=[], help="node URLs (repeat or comma-separate); override the URL host"),
        Option("index", str, default="heapster",
               help="index prefix (<index>-YYYY.MM.DD), or a pattern with {YYYY.MM.DD}, {namespace}, {cluster}"),
        Option("use_namespace", str, help="any value: <index>-<namespace>-YYYY.MM.DD (kube-eventer)"),
        Option("data_stream", str, help="write to this data stream (op_type create, @timestamp) instead"),
        Option("format", str, default="json", choices=("json", "kube-eventer"),
               help="json: the normalized event; kube-eventer: its Go document (Count, Metadata, EventTags...)"),
        Option("ver", int, validate=check_ver, help="server major version 5-9 (default: read from GET /)"),
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
            base, password = split_userinfo(node)
            nodes.append(base)
            if password:
                self._url_secrets.append(password)
        self._nodes = Nodes(nodes)
        self._secrets = [*self._url_secrets, opts["esUserSecret"], opts["api_key"]]
        self._check_auth(opts)
        for option in ("ca_file", "cert_file", "key_file"):
            if opts[option] and not os.path.isfile(opts[option]):
                raise SinkConfigError(self.name, f"{opts[option]!r} is not a readable file", option)
        self._data_stream = opts["data_stream"] or ""
        self._format = opts["format"]
        self._use_namespace = "use_namespace" in opts.given
        self._index, self._index_no_ns = parse_index(self.name, opts["index"], self._use_namespace)
        if self._data_stream:
            check_index_name(self.name, self._data_stream, "data_stream")
            if opts["ver"] is not None and opts["ver"] < 7:
                raise SinkConfigError(self.name, "data streams need Elasticsearch 7.9 or later", "data_stream")
        self._op = "create" if self._data_stream else "index"
        self._version: Version | None = None  # None: not read yet, or GET / did not say (see _version_read)
        self._version_read = False
        self._with_type = False  # the bulk format in use: a mapping type in each action (5 and 6) or none
        self._format_switches = 0
        if opts["ver"] is not None:
            self._version = ("elasticsearch", opts["ver"], 0)
            self._version_read = True
            self._with_type = typed(self._version)
        # kube-eventer added the alias <index>-events to every index it wrote; with its index options
        # (a plain prefix) the index template gives each new index that alias
        self._alias = "" if self._data_stream or "{" in opts["index"] else f"{opts['index']}-events"
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
                password = split_userinfo(part)[1]
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

    def index_for(self, event: Event) -> str:
        if self._data_stream:
            return self._data_stream
        fields = IndexFields(event, self._cluster(event))
        pattern = self._index_no_ns if self._index_no_ns and not fields["namespace"] else self._index
        return pattern.format_map(fields)

    def _cluster(self, event: Event) -> str:
        """cluster_name when given, else --cluster-name (the event's cluster), else kube-eventer's "default"."""
        if "cluster_name" in self.opts.given:
            return str(self.opts["cluster_name"])
        return event.cluster or self.opts["cluster_name"]

    def _template_target(self) -> tuple[str, str]:
        """(template name, index pattern) for the indices this sink writes."""
        return template_target(self._data_stream, self._index)

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
    def _detect_version(self) -> Version | None:
        response = self._request("GET", "/", timeout=float(self.opts["startupHealthcheckTimeout"]))
        if response.status_code == 401 or response.status_code == 429 or response.status_code >= 500:
            self._raise(response, "GET /")  # bad credentials, or try again later
        version = parse_banner(response.content)
        if version is None:
            # e.g. 403: an API key without the monitor privilege may write but not read the banner.
            # Never guess a format modern servers refuse: start typeless, switch if the server asks.
            log.warning("GET / answered HTTP %d without a version (an API key without the monitor privilege?); "
                        "writing the typeless format of Elasticsearch 7+ and OpenSearch, switching to mapping "
                        "types if the server asks for them (ver= sets the version)", response.status_code)
            return None
        dist, major, minor = version
        if dist == "elasticsearch" and major < 5:
            raise PermanentError(f"Elasticsearch {major}.{minor} is not supported (5 to 9 are)")
        return version

    def _ensure_version(self) -> None:
        if not self._version_read:
            self._set_version(self._detect_version())

    def _set_version(self, version: Version | None) -> None:
        self._version, self._version_read = version, True
        if version is not None:
            self._with_type = typed(version)
            log.info("connected to %s %d.%d", *version)

    @property
    def _doc_type(self) -> str:
        return "events" if self._format == "kube-eventer" else "_doc"

    def template_request(self) -> tuple[str, dict[str, Any]]:
        """The PUT path and body of the index template, for this server version (unknown: the newest form)."""
        return self._template_requests()[0]

    def _template_requests(self) -> list[tuple[str, dict[str, Any]]]:
        """The index template in each form the server may take, the most likely first: one when the
        version is known; else composable (7.8+, OpenSearch), legacy typeless (7.0-7.7), typed (6, 5)."""
        self._ensure_version()
        versions = [self._version] if self._version else [GUESSES[name] for name in ("8", "7.0", "6", "5")]
        return [template_request(v, self._format, self._data_stream, self._index, self._doc_type, self._alias)
                for v in versions if v is not None]

    def _ensure_template(self, strict: bool) -> None:
        if self._template_done:
            return
        candidates = self._template_requests()
        for number, (path, body) in enumerate(candidates, 1):
            response = self._request("PUT", path, content=orjson.dumps(body),
                                     headers={"Content-Type": "application/json"})
            if 200 <= response.status_code < 300:
                self._template_done = True
                if self._version is None and number > 1:
                    log.info("the server took the index template as %s", path)
                    if any(isinstance(m, dict) and self._doc_type in m for m in _mapping_roots(body)):
                        self._with_type = True  # it wants mapping types: Elasticsearch 5 or 6
                return
            if number < len(candidates) and _format_refused(response):
                continue  # this server version does not take this form: try the next
            if response.status_code == 429 or response.status_code >= 500 or strict:
                self._raise(response, f"PUT {path}")
            # 4xx (e.g. no manage_index_templates privilege): write anyway, with the server's dynamic mappings
            self._template_done = True
            log.warning("could not install the index template (%s): HTTP %d %s; continuing without it "
                        "(template=false hides this)%s", path, response.status_code,
                        redact_text(response.text[:300], self._secrets),
                        f"; no index gets the alias {self._alias}" if self._alias else "")
            return

    # ---- Sink API ----------------------------------------------------------------------------
    def open(self) -> None:
        if self.opts["healthCheck"] or not self._version_read:
            version = self._detect_version()
            if not self._version_read:
                self._set_version(version)
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
        self._ensure_version()
        with_type = self._with_type
        lines = []
        for event in batch:
            action: dict[str, Any] = {"_index": self.index_for(event)}
            if with_type:
                action["_type"] = self._doc_type
            action["_id"] = doc_id(event)
            lines.append(orjson.dumps({self._op: action}))
            lines.append(orjson.dumps(document(event, self._format, self._cluster(event), bool(self._data_stream))))
        return b"\n".join(lines) + b"\n"

    def _write(self, events: list[Event]) -> Outcome:
        """One bulk request; on 413 the halves are sent separately (a single document: rejected)."""
        params = {"pipeline": self.opts["pipeline"]} if self.opts["pipeline"] else None
        response = self._request("POST", "/_bulk", content=self.bulk_body(events), params=params,
                                 headers={"Content-Type": "application/x-ndjson"})
        if response.status_code == 400 and self._switch_format(response.text):
            return self._write(events)  # the same events in the format the server asked for
        outcome = Outcome()
        try:
            items = classify(response.status_code, response.content, response.headers)
        except TooLarge as exc:
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
            result = item_outcome(self._op, item)
            if result == RETRY:
                outcome.retry.append(event)
            elif result == REJECT:
                outcome.rejected.append(event)
                if not outcome.samples:
                    outcome.samples.append(redact_text(item_error(item), self._secrets))
        return outcome

    def _switch_format(self, answer: str) -> bool:
        """Whether the server refused the bulk for the sink's own format (a mapping type where it takes
        none, or none where it needs one) and the sink switched; refusing both formats is permanent."""
        refused = TYPE_REFUSED if self._with_type else TYPE_MISSING
        if refused not in answer:
            return False
        if self._format_switches >= 2:
            raise PermanentError("Elasticsearch refuses both bulk formats (with and without a mapping type): "
                                 + redact_text(answer[:300], self._secrets))
        self._format_switches += 1
        self._with_type = not self._with_type
        log.warning("Elasticsearch refused the bulk format %s a mapping type (%s); sending it %s one from now "
                    "on%s", "with" if not self._with_type else "without", refused,
                    "with" if self._with_type else "without",
                    " (ver= names a version this server is not)" if self.opts["ver"] is not None else "")
        return True

    def _write_part(self, events: list[Event]) -> Outcome:
        """A half of a split batch: a request-level failure applies to this half only."""
        try:
            return self._write(events)
        except RetryableError as exc:
            outcome = Outcome()
            outcome.retry = list(events)
            outcome.retry_after = exc.retry_after
            outcome.samples.append(str(exc))
            return outcome
        except PermanentError as exc:
            outcome = Outcome()
            outcome.rejected = list(events)
            outcome.samples.append(str(exc))
            return outcome

