"""Loki sink: events as log lines in Grafana Loki, through its push API.

Talks to Loki's distributor (or a gateway in front of it, or Grafana Cloud Logs): ``POST
/loki/api/v1/push`` with a snappy-compressed protobuf ``PushRequest`` (default; ``pip install
'eventrouter[loki]'`` for ``protobuf`` and ``cramjam``) or the JSON form (``encoding=json``).

Streams: each event goes to the stream named by a small, bounded set of labels (``stream_labels=``, by
default cluster, namespace, kind, type and reason) plus fixed ``static_label=NAME=VALUE`` pairs (by default
``job=eventrouter``). Labels that are unique per object (uid, name, message, ...) are refused: each value
would create a new stream, which is what makes a Loki slow and expensive. Those fields are in the log
line, a JSON object of the normalized event, for LogQL's ``| json``. Entries within a stream are sent
sorted by time; the entry time is the event's time (``last_timestamp``).

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
from datetime import UTC, datetime
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
    SinkURL,
    __version__,
    http_client,
    raise_for_status,
    redact_text,
    transport_error,
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
# stream (its sorted label pairs) -> entries (ns since the epoch, line, event), sorted by time
Streams = dict[tuple[tuple[str, str], ...], list[tuple[int, str, Event]]]


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
        if self._client is None:
            self._client = self._new_client()
        streams = self.streams(batch)
        # Loki refuses a stream without labels, and with it the whole push: such events fail alone
        unlabelled = [event for _, _, event in streams.pop((), [])]
        why = (f"{len(unlabelled)} events have no value for any stream label ({', '.join(self.label_names)}) "
               "and there is no static_label")
        if not streams:
            raise PermanentError(why)
        sent = [event for entries in streams.values() for _, _, event in entries]
        try:
            try:
                response = self._client.post(self.target, content=self.encode(streams), headers=self.headers)
            except httpx.HTTPError as exc:
                raise RetryableError(self._redact(str(transport_error(exc, "Loki server")))) from None
            self.classify(response, streams)
        except RetryableError as exc:
            if not unlabelled:
                raise
            raise PartialError(f"{exc}; {why}", retry=sent, rejected=unlabelled, retry_after=exc.retry_after) from None
        except PartialError as exc:
            if not unlabelled:
                raise
            raise PartialError(f"{exc}; {why}", retry=exc.retry, rejected=[*exc.rejected, *unlabelled]) from None
        except PermanentError as exc:
            if not unlabelled:
                raise
            raise PermanentError(f"{exc}; {why}") from None
        if unlabelled:
            raise PartialError(why, rejected=unlabelled)

    def classify(self, response: httpx.Response,
                 streams: Streams) -> None:
        """2xx: delivered. 429 and 5xx: RetryableError. 400 naming entries that are too old, too far behind or
        out of order: Loki stored the others, so those entries are rejected (PartialError) and the rest is
        delivered. Any other 4xx: PermanentError."""
        status = response.status_code
        if 200 <= status < 300:
            return
        text = response.text if response.content else ""
        if text:
            log.debug("loki: HTTP %d: %s", status, self._redact(text[:2048]))
        if status == 400 and _TIME_REJECTIONS.search(text):
            events = [event for entries in streams.values() for _, _, event in entries]
            rejected = _rejected_entries(text, streams)
            detail = self._redact(f"Loki refused entries for their time: {_first_line(text)}")
            if rejected is None or len(rejected) >= len(events):
                # the answer does not say which entries (or names them all): nothing was kept
                raise PermanentError(detail)
            raise PartialError(f"{len(rejected)} of {len(events)} events: {detail}", rejected=rejected)
        try:
            raise_for_status(response, "Loki")
        except RetryableError as exc:
            raise RetryableError(self._redact(str(exc)), exc.retry_after) from None
        except PermanentError as exc:
            raise PermanentError(self._redact(str(exc))) from None

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


# ---- Loki's time rejections (docs: "Troubleshoot log ingestion", out-of-order / too old) -----------
_TIME_REJECTIONS = re.compile(r"entry too far behind|entry out of order|has timestamp too old")
# ingester: "entry with timestamp 2024-05-06 15:58:50 +0000 UTC ignored, reason: 'entry too far behind, ...'",
# each entry on its own line, then "user 'fake', total ignored: 1 out of 2 for stream: {app="x"}" (Loki 3), or
# "... ignored, reason: 'entry out of order' for stream: {app="x"}," on every line (Loki 2)
_IGNORED = re.compile(r"entry with timestamp (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) ([+-]\d{4}) \S+ ignored")
_FOR_STREAM = re.compile(r"for stream: (\{.*?\})(?:,|$)", re.M)
_TOTAL = re.compile(r"total ignored: (\d+) out of \d+")
# distributor (reject_old_samples): "entry for stream '{app="x"}' has timestamp too old: 2024-05-06T15:58:50Z,
# oldest acceptable timestamp is: 2024-05-07T10:25:30Z" -- the same bound for every stream
_TOO_OLD = re.compile(r"has timestamp too old: \S+, oldest acceptable timestamp is: (\S+?Z)")
_LABEL_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_UNQUOTE = {"n": "\n", "r": "\r", "t": "\t"}


def _rejected_entries(text: str, streams: Streams) -> list[Event] | None:
    """The events whose entries Loki refused, or None if its answer does not account for each one."""
    oldest = max((_parse_rfc3339(m.group(1)) for m in _TOO_OLD.finditer(text)), default=0)
    named: list[tuple[dict[str, str], int]] = []  # (stream labels as Loki printed them, entry time)
    pending: list[int] = []
    totals = 0
    for line in text.splitlines():
        pending.extend(_parse_go_time(m.group(1), m.group(2)) for m in _IGNORED.finditer(line))
        total = _TOTAL.search(line)
        totals += int(total.group(1)) if total else 0
        stream = _FOR_STREAM.search(line)
        if stream and pending:
            labels = _parse_labels(stream.group(1))
            named.extend((labels, ns) for ns in pending)
            pending = []
    if pending or (not named and not oldest):
        return None
    too_old: list[Event] = []
    ignored: list[Event] = []
    for ours, entries in streams.items():
        mine = dict(ours)
        # Loki may print more labels than we sent (service_name): ours must be a subset
        times = {ns for labels, ns in named if mine.items() <= labels.items()}
        for ns, _, event in entries:
            if ns < oldest:
                too_old.append(event)  # refused by the distributor, whatever the stream
            elif ns in times:
                ignored.append(event)
    if totals and len(ignored) != totals:
        return None  # Loki listed only some of the entries it ignored: which others is unknown
    return too_old + ignored


def _parse_labels(text: str) -> dict[str, str]:
    return {name: re.sub(r"\\(.)", lambda m: _UNQUOTE.get(m.group(1), m.group(1)), value)
            for name, value in _LABEL_PAIR.findall(text)}


def _parse_go_time(text: str, offset: str) -> int:
    """``2024-05-06 15:58:50.80086913`` and ``+0000`` (Go's time.String()) -> ns since the epoch."""
    whole, _, fraction = text.partition(".")
    local = datetime.strptime(f"{whole} {offset}", "%Y-%m-%d %H:%M:%S %z")
    return int(local.timestamp()) * 1_000_000_000 + int((fraction or "0").ljust(9, "0")[:9])


def _parse_rfc3339(text: str) -> int:
    whole, _, rest = text.rstrip("Z").partition(".")
    seconds = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return int(seconds.timestamp()) * 1_000_000_000 + int((rest or "0").ljust(9, "0")[:9])


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:300] if text.strip() else ""


_MESSAGES: dict[str, Any] = {}


def _messages() -> dict[str, Any]:
    """Loki's push messages (pkg/push/push.proto): PushRequest{streams}, StreamAdapter{labels, entries},
    EntryAdapter{timestamp, line}; Loki publishes no Python package for them (see sinks/_protobuf.py)."""
    if not _MESSAGES:
        from ._protobuf import MESSAGE, STRING, UINT64, message_classes

        _MESSAGES.update(message_classes("eventrouter/loki_push.proto", "logproto", {
            "PushRequest": [("streams", 1, MESSAGE, True, ".logproto.StreamAdapter")],
            "StreamAdapter": [("labels", 1, STRING, False, ""), ("entries", 2, MESSAGE, True, ".logproto.EntryAdapter"),
                              ("hash", 3, UINT64, False, "")],
            "EntryAdapter": [("timestamp", 1, MESSAGE, False, ".google.protobuf.Timestamp"),
                             ("line", 2, STRING, False, "")],
        }, dependencies=("google/protobuf/timestamp.proto",)))
    return _MESSAGES
