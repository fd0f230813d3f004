"""Loki sink: events as log lines in Grafana Loki, through its push API.

Talks to Loki's distributor (or a gateway in front of it, or Grafana Cloud Logs): ``POST
/loki/api/v1/push`` with a snappy-compressed protobuf ``PushRequest`` (default; ``pip install
'eventrouter[loki]'`` for ``protobuf`` and ``cramjam``) or the JSON form (``encoding=json``).

Streams: each event goes to the stream named by a small, bounded set of labels (``stream_labels=``, by
default cluster, namespace, kind, type and reason) plus fixed ``static_label=NAME=VALUE`` pairs (by default
``job=eventrouter``). Labels that are unique per object (uid, name, message, ...) are refused: each value
would create a new stream, which is what makes a Loki slow and expensive. Those fields are in the log
line, a JSON object of the normalized event, for LogQL's ``| json``. Each stream of a batch goes in its own push,
its entries sorted by time (the entry time is the event's ``last_timestamp``), so that Loki's answer accounts for
every entry: each event is stored, or counted as failed and logged with the reason Loki gives.

Credentials: ``username``/``password`` (basic auth; Grafana Cloud: the instance id and an access policy
token) or ``bearer_token``; ``tenant`` sets ``X-Scope-OrgID`` for a multi-tenant Loki. Secrets are masked in
logs, errors and ``eventrouter check``.

URL forms (kube-eventer has no Loki sink)::

    --sink=loki:http://loki:3100                                POST http://loki:3100/loki/api/v1/push
    --sink=loki:https://logs-prod-eu-west-0.grafana.net?username=123456&password=$GRAFANA_CLOUD_TOKEN
    --sink=loki:http://loki-gateway/loki/api/v1/push?tenant=team-a&stream_labels=namespace,reason&encoding=json

Example::

    --sink=loki:http://loki.monitoring:3100?tenant=prod&static_label=env=prod
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, ClassVar

import httpx
import orjson

from eventrouter import (
    HTTP_OPTIONS,
    Event,
    Option,
    Options,
    PartialError,
    PermanentError,
    RetryableError,
    Sink,
    SinkConfigError,
    SinkError,
    SinkURL,
    __version__,
    http_client,
    raise_for_status,
    redact_text,
    transport_error,
)

from ._answers import (
    INGESTER_REASONS,
    Hidden,
    Refusal,
    StreamEntry,
    ingester_refusals,
    read_refusals,
    refusal_summary,
    unaccounted,
)

log = logging.getLogger("eventrouter.sinks.loki")

PUSH_PATH = "/loki/api/v1/push"
# the labels a stream may be named by: each has few distinct values in a cluster
LABELS: dict[str, Callable[[Event], str]] = {
    "cluster": lambda e: e.cluster,
    "namespace": lambda e: e.involved_object.namespace,  # as the filters: none for Node, PersistentVolume, ...
    "kind": lambda e: e.involved_object.kind,
    "type": lambda e: e.type,
    "reason": lambda e: e.reason,
    "component": lambda e: e.source_component,
}
DEFAULT_LABELS = ["cluster", "namespace", "kind", "type", "reason"]
# one value per object or occurrence: a stream each, so never a label (they stay in the line)
HIGH_CARDINALITY = frozenset({
    "uid", "name", "message", "count", "resource_version", "first_timestamp", "last_timestamp", "involved_object",
    "object", "pod", "host", "node", "source_host", "reporting_instance", "field_path", "api_version",
})
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# stream (its sorted label pairs) -> entries, sorted by time
Streams = dict[tuple[tuple[str, str], ...], list[StreamEntry]]


def _check_labels(values: list[str]) -> str | None:
    allowed = ", ".join(LABELS)
    for value in filter(None, values):  # stream_labels= (empty) leaves only the static labels
        if value in HIGH_CARDINALITY:
            return (f"{value!r} has a value per object, so each event would make a new Loki stream; it is in the "
                    f"log line (query it with | json). Labels allowed: {allowed}")
        if value not in LABELS:
            return f"{value!r} is not a label this sink makes; use some of {allowed}"
    return None


def _check_static_labels(values: list[str]) -> str | None:
    for value in filter(None, values):
        name, sep, _ = value.partition("=")
        if not sep or not _LABEL_NAME.match(name):
            return "expected static_label=NAME=VALUE with a Loki label name ([a-zA-Z_][a-zA-Z0-9_]*)"
    return None


class LokiSink(Sink):
    """Grafana Loki: push API, snappy protobuf or JSON, bounded stream labels.  loki:http://loki:3100"""

    name = "loki"
    extra = "loki"
    options: ClassVar = (
        Option("stream_labels", list, default=DEFAULT_LABELS, validate=_check_labels,
               help=f"stream labels, from {', '.join(LABELS)} (empty values are left out)"),
        Option("static_label", list, default=["job=eventrouter"], split_commas=False, validate=_check_static_labels,
               help="a fixed stream label NAME=VALUE; repeat for more; static_label= (empty) for none"),
        Option("encoding", str, default="protobuf", choices=("protobuf", "json"),
               help="request body: snappy-compressed protobuf or JSON"),
        Option("line_format", str, default="json", choices=("json", "message"),
               help="log line: the normalized event as JSON, or the message alone"),
        Option("tenant", str, default="", help="tenant id, sent as X-Scope-OrgID (multi-tenant Loki)"),
        Option("username", str, default="", help="basic auth user (Grafana Cloud: the instance id)"),
        Option("password", str, secret=True, default=None, help="basic auth password or token"),
        Option("bearer_token", str, secret=True, default=None, help="sent as 'Authorization: Bearer TOKEN'"),
        *HTTP_OPTIONS,
    )
    delivery_defaults: ClassVar = {"batch_size": 500, "flush_interval": 1.0}

    def __init__(self, url: SinkURL, opts: Options) -> None:
        super().__init__(url, opts)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise SinkConfigError(self.name, "needs Loki's URL as http:// or https://, for example loki:http://loki:3100")
        self.target = _push_url(url)
        self.label_names: list[str] = list(dict.fromkeys(filter(None, opts["stream_labels"])))
        self.static_labels = dict(v.partition("=")[::2] for v in opts["static_label"] if v)
        clash = set(self.static_labels) & set(self.label_names)
        if clash:
            raise SinkConfigError(self.name, f"{sorted(clash)[0]!r} is both in stream_labels and a static_label",
                                  "static_label")
        if not self.label_names and not self.static_labels:
            raise SinkConfigError(self.name, "Loki needs at least one stream label: give stream_labels or static_label",
                                  "stream_labels")
        if opts["encoding"] == "protobuf":
            self.require("cramjam")
            self.require("google.protobuf")
        self.headers = {"User-Agent": f"eventrouter/{__version__}",
                        "Content-Type": "application/x-protobuf" if opts["encoding"] == "protobuf"
                        else "application/json"}
        if opts["tenant"]:
            self.headers["X-Scope-OrgID"] = opts["tenant"]
        self.auth: httpx.Auth | None = None
        password, token = opts["password"], opts["bearer_token"]
        if token and (opts["username"] or password):
            raise SinkConfigError(self.name, "give either bearer_token or username/password, not both", "bearer_token")
        if password and not opts["username"]:
            raise SinkConfigError(self.name, "password= needs username=", "password")
        if token:
            self.headers["Authorization"] = f"Bearer {token.reveal()}"
        elif opts["username"]:
            self.auth = httpx.BasicAuth(opts["username"], password.reveal() if password else "")
        self._secrets = [s for s in (password, token) if s]
        self._client: httpx.Client | None = self._new_client()  # TLS files are read now

    # ---- encoding ---------------------------------------------------------------------------
    def streams(self, batch: Sequence[Event]) -> Streams:
        """Events by stream (its sorted label pairs), each stream's entries sorted by time."""
        found: Streams = {}
        for event in batch:
            found.setdefault(self.stream_labels(event), []).append((_nanos(event.last_timestamp), self.line(event),
                                                                     event))
        for entries in found.values():
            entries.sort(key=lambda entry: entry[0])  # stable: same-time events keep their order
        return found

    def stream_labels(self, event: Event) -> tuple[tuple[str, str], ...]:
        labels = dict(self.static_labels)
        for name in self.label_names:
            value = LABELS[name](event)
            if value:  # Loki drops empty labels anyway; a stream is named by the non-empty ones
                labels[name] = value
        return tuple(sorted(labels.items()))

    def line(self, event: Event) -> str:
        if self.opts["line_format"] == "message":
            return event.message
        return orjson.dumps(event.to_dict()).decode()

    def encode(self, streams: Streams) -> bytes:
        if self.opts["encoding"] == "json":
            return orjson.dumps({"streams": [
                {"stream": dict(labels), "values": [[str(ns), line] for ns, line, _ in entries]}
                for labels, entries in streams.items()
            ]})
        import cramjam

        push = _messages()["PushRequest"]()
        for labels, entries in streams.items():
            stream = push.streams.add()
            stream.labels = label_string(labels)
            for ns, line, _ in entries:
                entry = stream.entries.add()
                entry.timestamp.seconds, entry.timestamp.nanos = divmod(ns, 1_000_000_000)
                entry.line = line
        return bytes(cramjam.snappy.compress_raw(push.SerializeToString()))

    # ---- delivery ---------------------------------------------------------------------------
    def send(self, batch: Sequence[Event]) -> None:
        """One push per stream. Loki answers a push of several streams with the refusals of one stream at most
        (its ingester keeps the outcome of the last stream it appended), so a 204 can hide refused entries of the
        others; the answer to a one-stream push accounts for each of its entries."""
        if self._client is None:
            self._client = self._new_client()
        streams = self.streams(batch)
        refused: list[Refusal] = []
        unlabelled = streams.pop((), [])  # Loki refuses a stream without labels
        if unlabelled:
            why = (f"no value for any stream label ({', '.join(self.label_names)}) and no static_label, and Loki "
                   "refuses a stream without labels")
            refused += [Refusal(event, "without any label", why) for _, _, event in unlabelled]
        pending = list(streams.items())
        for done, (labels, entries) in enumerate(pending):
            try:
                refused += self._push_stream(labels, entries)
            except (RetryableError, PermanentError) as exc:
                rest = [event for _, more in pending[done:] for _, _, event in more]
                raise self._outcome(batch, refused, exc, rest) from None
        if refused:
            raise self._outcome(batch, refused, None, [])

    def _outcome(self, batch: Sequence[Event], refused: list[Refusal], error: SinkError | None,
                 rest: list[Event]) -> SinkError:
        """What the router is told: Loki's refusals are failed (logged here, once per batch, with the reasons);
        after an error, the streams not pushed yet (``rest``) are retried or failed with it; the others are sent."""
        summary = refusal_summary(refused)
        if refused:
            log.warning("loki: Loki refused %d of %d events, counted as failed: %s", len(refused), len(batch), summary)
        rejected = [refusal.event for refusal in refused]
        if isinstance(error, RetryableError):
            if not refused and len(rest) == len(batch):
                return error
            return PartialError(f"{error}" + (f"; refused {summary}" if refused else ""), retry=rest,
                                rejected=rejected, retry_after=error.retry_after)
        message = f"Loki refused {len(refused)} of {len(batch)} events: {summary}"
        if error is not None:  # credentials, tenant, URL: every push would be refused alike
            message = f"{error}" + (f"; refused {summary}" if refused else "")
            rejected += rest
        if len(rejected) == len(batch):
            return PermanentError(message)
        return PartialError(message, rejected=rejected)

    def _push_stream(self, labels: tuple[tuple[str, str], ...], entries: list[StreamEntry]) -> list[Refusal]:
        """Push one stream; the entries Loki refused (the others are stored)."""
        answer = self.classify(self._post({labels: entries}), entries)
        if isinstance(answer, Hidden):
            return self._probe(labels, entries, answer)
        return answer

    def _probe(self, labels: tuple[tuple[str, str], ...], entries: list[StreamEntry], hidden: Hidden) -> list[Refusal]:
        """The ingester answered, so the distributor's refusals went unreported: push each entry alone to learn
        which ones the distributor refuses (it checks each entry on its own, whatever Loki holds, so its verdict
        is the same as before). The ingester ignored the oldest of the others. Entries already stored are not
        stored again (Loki drops an entry identical to one it holds)."""
        passed: list[int] = []
        refused: list[Refusal] = []
        for index, entry in enumerate(entries):
            answer = self.classify(self._post({labels: [entry]}), [entry])
            if isinstance(answer, Hidden) or (answer and answer[0].reason not in INGESTER_REASONS):
                refused += answer if isinstance(answer, list) else unaccounted([entry], hidden.first)
            else:
                passed.append(index)  # stored, or ignored by the ingester: past the distributor either way
        found = None
        if len(passed) == hidden.reached:
            found = ingester_refusals(entries, passed, hidden.ignored, hidden.listed, hidden.first)
        return refused + found if found is not None else unaccounted(entries, hidden.first)

    def _post(self, streams: Streams) -> httpx.Response:
        assert self._client is not None
        try:
            return self._client.post(self.target, content=self.encode(streams), headers=self.headers)
        except httpx.HTTPError as exc:
            raise RetryableError(self._redact(str(transport_error(exc, "Loki server")))) from None

    def classify(self, response: httpx.Response, entries: list[StreamEntry]) -> list[Refusal] | Hidden:
        """Loki's answer to the push of one stream (``entries``, sorted by time). 2xx: all stored. 400 (and 413,
        422): the entries it refused, the others are stored (see :func:`read_refusals`). 429 and 5xx:
        RetryableError. Any other 4xx (401, 403, 404): PermanentError, as every push would get it."""
        status = response.status_code
        if 200 <= status < 300:
            return []
        text = response.text if response.content else ""
        if text:
            log.debug("loki: HTTP %d: %s", status, self._redact(text[:2048]))
        if status in (400, 413, 422):
            return read_refusals(self._redact(text), entries, status)
        try:
            raise_for_status(response, "Loki")
        except RetryableError as exc:
            raise RetryableError(self._redact(str(exc)), exc.retry_after) from None
        except PermanentError as exc:
            raise PermanentError(self._redact(str(exc))) from None
        return []  # not reached: raise_for_status raises for every status that is not 2xx

    def _new_client(self) -> httpx.Client:
        if self.auth is None:
            return http_client(self.name, self.opts)
        return http_client(self.name, self.opts, auth=self.auth)

    def _redact(self, text: str) -> str:
        return redact_text(text, self._secrets)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()


def _push_url(url: SinkURL) -> str:
    path = url.path.rstrip("/")
    if not path.endswith(PUSH_PATH):
        path += PUSH_PATH
    return f"{url.scheme}://{url.host}{path}"


def label_string(labels: tuple[tuple[str, str], ...]) -> str:
    """Loki's stream selector form ``{a="x", b="y"}`` with Go-quoted values."""
    return "{" + ", ".join(f"{name}={_quote(value)}" for name, value in labels) + "}"


def _quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped.replace(chr(9), chr(92) + "t")}"'


def _nanos(when: datetime) -> int:
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000


_MESSAGES: dict[str, Any] = {}


def _messages() -> dict[str, Any]:
    """Loki's push messages (pkg/push/push.proto): PushRequest{streams}, StreamAdapter{labels, entries},
    EntryAdapter{timestamp, line}; Loki publishes no Python package for them (see sinks/_protobuf.py)."""
    if not _MESSAGES:
        from .._protobuf import MESSAGE, STRING, UINT64, message_classes

        _MESSAGES.update(message_classes("eventrouter/loki_push.proto", "logproto", {
            "PushRequest": [("streams", 1, MESSAGE, True, ".logproto.StreamAdapter")],
            "StreamAdapter": [("labels", 1, STRING, False, ""), ("entries", 2, MESSAGE, True, ".logproto.EntryAdapter"),
                              ("hash", 3, UINT64, False, "")],
            "EntryAdapter": [("timestamp", 1, MESSAGE, False, ".google.protobuf.Timestamp"),
                             ("line", 2, STRING, False, "")],
        }, dependencies=("google/protobuf/timestamp.proto",)))
    return _MESSAGES
