"""OTLP sink: events as OpenTelemetry log records, over OTLP/HTTP to a Collector or any OTLP backend.

Talks to an OpenTelemetry Collector's ``otlphttp`` receiver (port 4318) or a backend that speaks
OTLP/HTTP logs (Grafana Cloud, Honeycomb, Elastic, Datadog, ...): ``POST /v1/logs`` with an
``ExportLogsServiceRequest``, binary protobuf by default (``encoding=json`` for OTLP/JSON), gzip
compressed by default. The messages come from the ``opentelemetry-proto`` package
(``pip install 'eventrouter[otlp]'``); no SDK pipeline is involved.

Each event becomes one LogRecord shaped like the Collector's own ``k8s_events`` receiver makes it, so
queries and dashboards work on both: severity from the event type (Normal -> INFO, Warning -> WARN),
body = the message, time = the event's time (``last_timestamp``), observed time = when eventrouter
sent it, ``k8s.event.*`` and ``k8s.namespace.name`` log attributes, the involved object as ``k8s.object.*``
resource attributes, and the event name ``k8s.event`` (docs/sinks/otlp.md has the whole table).

Credentials: whatever the backend wants, as request headers: ``header=Authorization=Bearer%20$TOKEN``
(repeat ``header=`` for more). Header values are secret: masked in logs, errors and ``eventrouter check``.

URL forms (kube-eventer has no OTLP sink)::

    --sink=otlp:http://otel-collector:4318                    POST http://otel-collector:4318/v1/logs
    --sink=otlp:https://otlp.example.com/otlp                 POST https://otlp.example.com/otlp/v1/logs
    --sink=otlp:https://otlp.example.com/v1/logs?encoding=json&compression=none

Example::

    --sink=otlp:https://otlp-gateway.example.com/otlp?header=Authorization=Basic%20$OTLP_AUTH&ca_file=/etc/ca.pem
"""

from __future__ import annotations

import gzip
import logging
import re
import time
from collections.abc import Sequence
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
    format_time,
    http_client,
    raise_for_status,
    redact_text,
    transport_error,
)

log = logging.getLogger("eventrouter.sinks.otlp")

LOGS_PATH = "/v1/logs"
EVENT_NAME = "k8s.event"  # the semantic conventions' name of a Kubernetes Event
# OTLP/HTTP: only these are retryable; every other 4xx and 5xx must not be retried (OTLP spec, "Failures")
RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
# SeverityNumber by event type, as the Collector's k8s_events receiver maps them (case-insensitive)
SEVERITY = {"normal": 9, "warning": 13, "error": 17, "critical": 21}  # INFO, WARN, ERROR, FATAL
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
CONTENT_TYPE = {"protobuf": "application/x-protobuf", "json": "application/json"}


def _check_header(values: list[Any]) -> str | None:
    for value in values:
        name, sep, _ = str(value).partition("=")
        if not sep or not _HEADER_NAME.match(name.strip()):
            return "expected header=Name=Value (for example header=Authorization=Bearer%20$TOKEN)"
    return None


class OTLPSink(Sink):
    """OpenTelemetry: OTLP/HTTP log records (protobuf or JSON, gzip).  otlp:http://collector:4318"""

    name = "otlp"
    extra = "otlp"
    options: ClassVar = (
        Option("encoding", str, default="protobuf", choices=("protobuf", "json"),
               help="request body: binary protobuf or OTLP/JSON"),
        Option("compression", str, default="gzip", choices=("gzip", "none"), help="request body compression"),
        Option("header", list, default=[], split_commas=False, secret=True, validate=_check_header,
               help="request header Name=Value, e.g. Authorization=Bearer%20$TOKEN; repeat for more (secret)"),
        *HTTP_OPTIONS,
    )
    delivery_defaults: ClassVar = {"batch_size": 500, "flush_interval": 1.0}

    def __init__(self, url: SinkURL, opts: Options) -> None:
        super().__init__(url, opts)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise SinkConfigError(self.name, "needs the OTLP/HTTP endpoint as an http:// or https:// URL, "
                                  "for example otlp:http://otel-collector:4318")
        self._pb = self.require("opentelemetry.proto.collector.logs.v1.logs_service_pb2")
        self.target = _logs_url(url)
        self.headers = {"Content-Type": CONTENT_TYPE[opts["encoding"]], "User-Agent": f"eventrouter/{__version__}"}
        if opts["compression"] == "gzip":
            self.headers["Content-Encoding"] = "gzip"
        self._secrets: list[str] = []
        for item in opts["header"]:
            name, _, value = item.reveal().partition("=")
            self.headers[name.strip()] = value
            self._secrets.append(value)
        self._client: httpx.Client | None = http_client(self.name, opts)  # TLS files are read now

    # ---- encoding ---------------------------------------------------------------------------
    def encode(self, batch: Sequence[Event]) -> bytes:
        """The request body: one ExportLogsServiceRequest, one ResourceLogs per involved object."""
        observed = time.time_ns()
        if self.opts["encoding"] == "json":
            body = orjson.dumps(_json_request(batch, observed))
        else:
            body = self._protobuf_request(batch, observed).SerializeToString()
        return gzip.compress(body, compresslevel=5) if self.opts["compression"] == "gzip" else body

    def _protobuf_request(self, batch: Sequence[Event], observed: int) -> Any:
        request = self._pb.ExportLogsServiceRequest()
        by_resource: dict[tuple[tuple[str, str], ...], Any] = {}
        for event in batch:
            attrs = resource_attributes(event)
            scope_logs = by_resource.get(attrs)
            if scope_logs is None:
                resource_logs = request.resource_logs.add()
                for key, value in attrs:
                    _put(resource_logs.resource.attributes.add(), key, value)
                scope_logs = resource_logs.scope_logs.add()
                scope_logs.scope.name = "eventrouter"
                scope_logs.scope.version = __version__
                by_resource[attrs] = scope_logs
            _fill_record(scope_logs.log_records.add(), event, observed)
        return request

    # ---- delivery ---------------------------------------------------------------------------
    def send(self, batch: Sequence[Event]) -> None:
        if self._client is None:
            self._client = http_client(self.name, self.opts)
        body = self.encode(batch)
        try:
            response = self._client.post(self.target, content=body, headers=self.headers)
        except httpx.HTTPError as exc:
            raise RetryableError(self._redact(str(transport_error(exc, "OTLP endpoint")))) from None
        rejected, message = self.classify(response)
        if rejected:
            # OTLP: a partial success is final, never retried (the accepted records would be written twice).
            # The server gives a count, not which records: the count goes to the sink's failed events.
            rejected = min(rejected, len(batch))
            detail = (f"the server rejected {rejected} of {len(batch)} log records (OTLP partial success; it does "
                      f"not say which): {self._redact(message) or '(no message)'}")
            if rejected == len(batch):
                raise PermanentError(detail)
            raise PartialError(detail, rejected=batch[len(batch) - rejected:])

    def classify(self, response: httpx.Response) -> tuple[int, str]:
        """One answer -> (records rejected, server message) for a 2xx, else raise.

        2xx: delivered; its ExportLogsServiceResponse may report ``partial_success``. 429, 502, 503, 504:
        RetryableError (Retry-After honoured). Any other status: PermanentError (OTLP forbids retrying it).
        """
        status, content = response.status_code, response.content
        content_type = response.headers.get("Content-Type", "").lower()
        if 200 <= status < 300:
            return self._partial_success(content, content_type)
        message = _status_message(content, content_type)
        detail = self._redact(f"OTLP endpoint answered HTTP {status}" + (f": {message}" if message else ""))
        if content:
            log.debug("otlp: HTTP %d: %s", status, self._redact(content[:2048].decode("utf-8", "replace")))
        if status not in RETRYABLE_STATUS:
            raise PermanentError(detail)
        try:
            raise_for_status(response)  # the core's reading of Retry-After (seconds or an HTTP date)
        except RetryableError as exc:
            raise RetryableError(detail, exc.retry_after) from None
        raise RetryableError(detail)  # pragma: no cover (raise_for_status raises for every retryable status)

    def _partial_success(self, content: bytes, content_type: str) -> tuple[int, str]:
        if not content:
            return 0, ""
        response = self._pb.ExportLogsServiceResponse()
        try:
            if "json" in content_type:
                from google.protobuf import json_format

                json_format.Parse(content, response, ignore_unknown_fields=True)
            else:
                response.ParseFromString(content)
        except Exception:  # a 2xx is a success whatever its body; the body only adds detail
            log.debug("otlp: 2xx answer with an undecodable body (%d bytes)", len(content))
            return 0, ""
        partial = response.partial_success
        if partial.error_message and not partial.rejected_log_records:
            log.warning("otlp: the server accepted the batch with a warning: %s", self._redact(partial.error_message))
        return int(partial.rejected_log_records), partial.error_message

    def _redact(self, text: str) -> str:
        return redact_text(text, self._secrets)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()


def _logs_url(url: SinkURL) -> str:
    """The base URL gets ``/v1/logs`` appended (as OTEL_EXPORTER_OTLP_ENDPOINT); a URL that already ends
    in it is used as it is (as OTEL_EXPORTER_OTLP_LOGS_ENDPOINT)."""
    path = url.path.rstrip("/")
    if not path.endswith(LOGS_PATH):
        path += LOGS_PATH
    return f"{url.scheme}://{url.host}{path}"


def resource_attributes(event: Event) -> tuple[tuple[str, str], ...]:
    """The resource of an event's log record: its cluster, the node that reported it, the involved object."""
    involved = event.involved_object
    attrs = []
    if event.cluster:
        attrs.append(("k8s.cluster.name", event.cluster))
    attrs += [
        ("k8s.node.name", event.source_host),
        ("k8s.object.kind", involved.kind),
        ("k8s.object.name", involved.name),
        ("k8s.object.uid", involved.uid),
        ("k8s.object.fieldpath", involved.field_path),
        ("k8s.object.api_version", involved.api_version),
        ("k8s.object.resource_version", _raw_involved(event).get("resourceVersion") or ""),
    ]
    if event.labels or event.annotations or event.owner is not None:
        attrs += _enrichment_attributes(event)
    return tuple(attrs)


# workload kinds whose name has a semantic-conventions attribute (k8s.deployment.name, ...)
_SEMCONV_KINDS = frozenset({"Pod", "Node", "Namespace", "Deployment", "ReplicaSet", "StatefulSet", "DaemonSet",
                            "Job", "CronJob"})


def _enrichment_attributes(event: Event) -> list[tuple[str, str]]:
    """With --enrich: the involved object's labels and annotations as ``k8s.<kind>.label.<key>`` /
    ``k8s.<kind>.annotation.<key>`` (as the semantic conventions name a Pod's), and the owning workload
    as ``k8s.<kind>.name`` (``k8s.deployment.name``) plus ``k8s.owner.kind``/``k8s.owner.name``."""
    kind = event.involved_object.kind.lower() or "object"
    attrs = [(f"k8s.{kind}.label.{key}", value) for key, value in sorted(event.labels.items())]
    attrs += [(f"k8s.{kind}.annotation.{key}", value) for key, value in sorted(event.annotations.items())]
    owner = event.owner
    if owner is not None:
        if owner.kind in _SEMCONV_KINDS and owner.kind != event.involved_object.kind:
            attrs.append((f"k8s.{owner.kind.lower()}.name", owner.name))
        attrs += [("k8s.owner.kind", owner.kind), ("k8s.owner.name", owner.name)]
    return attrs


def log_attributes(event: Event) -> list[tuple[str, str | int]]:
    """The log record's attributes, named as the Collector's k8s_events receiver names them."""
    attrs: list[tuple[str, str | int]] = [
        ("k8s.event.reason", event.reason),
        ("k8s.event.action", event.action),
        ("k8s.event.start_time", _creation_time(event)),
        ("k8s.event.name", event.name),
        ("k8s.event.uid", event.uid),
        ("k8s.namespace.name", event.involved_object.namespace),
    ]
    if event.count:
        attrs.append(("k8s.event.count", event.count))
    return attrs


def _fill_record(record: Any, event: Event, observed_ns: int) -> None:
    record.time_unix_nano = _nanos(event)
    record.observed_time_unix_nano = observed_ns
    severity = SEVERITY.get(event.type.lower())
    if severity is not None:
        record.severity_number = severity
        record.severity_text = event.type
    record.body.string_value = event.message
    record.event_name = EVENT_NAME
    for key, value in log_attributes(event):
        _put(record.attributes.add(), key, value)


def _json_request(batch: Sequence[Event], observed: int) -> dict[str, Any]:
    """The same request in OTLP/JSON (the protobuf JSON mapping with OTLP's rules: lowerCamelCase names,
    enums as numbers, 64-bit integers as decimal strings), built directly: protobuf's json_format is ~5x
    slower. The two encodings are tested to decode to the same message."""
    by_resource: dict[tuple[tuple[str, str], ...], list[dict[str, Any]]] = {}
    resource_logs = []
    for event in batch:
        attrs = resource_attributes(event)
        records = by_resource.get(attrs)
        if records is None:
            records = by_resource[attrs] = []
            resource_logs.append({
                "resource": {"attributes": [_json_kv(k, v) for k, v in attrs]},
                "scopeLogs": [{"scope": {"name": "eventrouter", "version": __version__}, "logRecords": records}],
            })
        record: dict[str, Any] = {"timeUnixNano": str(_nanos(event)), "observedTimeUnixNano": str(observed)}
        severity = SEVERITY.get(event.type.lower())
        if severity is not None:
            record["severityNumber"] = severity
            record["severityText"] = event.type
        record["body"] = {"stringValue": event.message}
        record["attributes"] = [_json_kv(k, v) for k, v in log_attributes(event)]
        record["eventName"] = EVENT_NAME
        records.append(record)
    return {"resourceLogs": resource_logs}


def _json_kv(key: str, value: str | int) -> dict[str, Any]:
    return {"key": key, "value": {"intValue": str(value)} if isinstance(value, int) else {"stringValue": value}}


def _put(key_value: Any, key: str, value: str | int) -> None:
    key_value.key = key
    if isinstance(value, int):
        key_value.value.int_value = value
    else:
        key_value.value.string_value = value


def _nanos(event: Event) -> int:
    when = event.last_timestamp
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000


def _raw_involved(event: Event) -> dict[str, Any]:
    raw = event.raw if isinstance(event.raw, dict) else {}
    involved = raw.get("involvedObject") or raw.get("regarding") or {}
    return involved if isinstance(involved, dict) else {}


def _creation_time(event: Event) -> str:
    """The Event object's creation time (what the Collector reports as start time), UTC ISO 8601."""
    raw = event.raw if isinstance(event.raw, dict) else {}
    meta = raw.get("metadata")
    created = meta.get("creationTimestamp") if isinstance(meta, dict) else None
    return str(created) if created else format_time(event.first_timestamp)


def _status_message(content: bytes, content_type: str) -> str:
    """The ``message`` of the google.rpc.Status an OTLP/HTTP server answers a failure with."""
    if not content:
        return ""
    if "protobuf" in content_type:
        try:
            status = _status_class()()
            status.ParseFromString(content)
            return str(status.message)
        except Exception:
            return ""
    if "json" in content_type:
        try:
            import orjson

            found = orjson.loads(content)
            return str(found.get("message", "")) if isinstance(found, dict) else ""
        except ValueError:
            return ""
    return content[:300].decode("utf-8", "replace").strip()


_STATUS: list[Any] = []


def _status_class() -> Any:
    if not _STATUS:
        from ._protobuf import INT32, STRING, message_classes

        _STATUS.append(message_classes("eventrouter/google_rpc_status.proto", "google.rpc", {
            "Status": [("code", 1, INT32, False, ""), ("message", 2, STRING, False, "")],
        })["Status"])
    return _STATUS[0]
