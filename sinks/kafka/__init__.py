"""Kafka sink: one message per event, produced by an idempotent confluent-kafka (librdkafka) producer.

Talks to any Kafka-protocol broker (Apache Kafka, Redpanda, MSK, tansu, ...). An event counts as
delivered only when its delivery report says the broker stored it, so the router's checkpoint
never passes an event the broker did not confirm.

Credentials: SASL (``user`` + ``password``, mechanism PLAIN by default, or SCRAM-SHA-256/512)
and/or TLS (``cacert``; ``cert`` + ``key`` for mutual TLS). Pass the password through an
environment variable from a Secret: ``password=$KAFKA_PASSWORD``.

URL forms::

    --sink=kafka:?brokers=h1:9092&brokers=h2:9092&eventstopic=k8s-events     (kube-eventer)
    --sink=kafka:?brokers=h1:9092,h2:9092&eventstopic=k8s-{namespace}&format=kube-eventer
    --sink=kafka:?brokers=h:9093&user=u&password=$KAFKA_PASSWORD&sasl_mechanism=SCRAM-SHA-512&cacert=/ca.pem
    --sink=kafka:?brokers=h:9092&librdkafka.linger.ms=50                     (any librdkafka property)

Formats: ``json`` (default) is the normalized event (``Event.to_dict()``, UTC times);
``kube-eventer`` is kube-eventer's ``{"EventValue","EventTimestamp","EventTags"}`` message,
byte for byte, for existing consumers. ``key`` is kube-eventer's TLS key file when it is a path,
and the message key when it is ``uid`` (default: the involved object's uid, so one object's events
stay in order), ``namespace``, ``object`` or ``none``.

Example::

    --sink=kafka:?brokers=kafka-0.kafka:9092&eventstopic=k8s-{namespace}&compression=lz4
"""

from __future__ import annotations

import functools
import logging
import re
import string
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import orjson

from eventrouter import (
    Duration,
    Event,
    HostPort,
    Option,
    PartialError,
    PermanentError,
    RetryableError,
    Sink,
    SinkConfigError,
    SinkURL,
    redact_text,
)

from .._kube_eventer import kafka_message

log = logging.getLogger("eventrouter.sinks.kafka")

PASSTHROUGH = "librdkafka."
KEY_MODES = ("uid", "namespace", "object", "none")
TOPIC_FIELDS = ("namespace", "kind", "type", "reason", "cluster")
_TOPIC_CHARS = re.compile(r"[^A-Za-z0-9._-]")
# names of librdkafka properties whose values are masked (sasl.oauthbearer.config may carry a client secret)
_SENSITIVE = re.compile(r"password|secret|key\.pem|private|oauthbearer\.config", re.IGNORECASE)
# properties the sink sets itself; a librdkafka.* override of these would break its guarantees
_RESERVED = frozenset({"bootstrap.servers", "logger", "error_cb", "on_delivery", "message.timeout.ms",
                       "delivery.timeout.ms"})
# librdkafka property -> the option that sets it, to name the option in a configuration error
_PROPERTY_OPTIONS = {"cacert": "ssl.ca.location", "cert": "ssl.certificate.location", "key": "ssl.key.location"}
_OPEN_TIMEOUT = 10.0
_GRACE = 5.0  # librdkafka reports every message within message.timeout.ms; this covers the last poll


class KafkaSink(Sink):
    """Kafka: one message per event; also librdkafka.<property>=<value>.  kafka:?brokers=H:9092&eventstopic=T"""

    name = "kafka"
    extra = "kafka"
    options: ClassVar = (
        Option("brokers", list, item=HostPort, required=True, validate=lambda v: None if any(b.strip() for b in v) else
               "give at least one host:port", help="bootstrap brokers host:port (repeat or separate with commas)"),
        Option("eventstopic", str, default="heapster-events", aliases=("topic",),
               help="topic; may name event fields: k8s-{namespace} (" + ", ".join(TOPIC_FIELDS) + ")"),
        Option("format", str, default="json", choices=("json", "kube-eventer"),
               help="json: the normalized event; kube-eventer: kube-eventer's EventValue message"),
        Option("key", list, default=[], split_commas=False,
               help="message key: uid (involved object, default), namespace, object or none; "
                    "a file path is kube-eventer's TLS client key (with cert=)"),
        Option("compression", str, default="none", choices=("none", "gzip", "snappy", "lz4", "zstd"),
               help="compression codec"),
        Option("acks", str, default="all", choices=("all", "-1", "1", "0"),
               help="broker acknowledgement; all keeps the producer idempotent"),
        Option("user", str, help="SASL user name"),
        Option("password", str, secret=True, help="SASL password"),
        Option("sasl_mechanism", str, default="PLAIN", choices=("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
               help="SASL mechanism"),
        Option("security_protocol", str, choices=("plaintext", "ssl", "sasl_plaintext", "sasl_ssl"),
               help="default: from user/password and cacert/cert"),
        Option("cacert", str, help="PEM file of the CA that signed the broker certificates (enables TLS)"),
        Option("cert", str, help="client certificate PEM file for mutual TLS (with key=)"),
        Option("insecuressl", bool, default=False, help="TLS: do not verify the broker certificate"),
        Option("delivery_timeout", Duration, default=Duration(30.0), min=1,
               help="how long one send waits for the broker to confirm every event"),
        Option("timeseriestopic", str, help="kube-eventer (heapster) metrics topic; accepted and unused"),
    )
    delivery_defaults: ClassVar = {"batch_size": 500, "flush_interval": 0.2}

    def __init__(self, url: SinkURL, opts: Any, producer_factory: Any = None) -> None:
        super().__init__(url, opts)
        self._kafka = self.require("confluent_kafka")
        self._key_mode, self._tls_key = _split_key(opts["key"], opts["cert"])
        self._topic = _topic_template(opts["eventstopic"])
        self._encode = kafka_message if opts["format"] == "kube-eventer" else _json_message
        self._wait = float(opts["delivery_timeout"]) + _GRACE
        self._passthrough = {k[len(PASSTHROUGH):]: v[0] for k, v in url.query.items() if k.startswith(PASSTHROUGH)}
        self._secrets = [opts["password"], *(v for k, v in self._passthrough.items() if _SENSITIVE.search(k))]
        self._librdkafka_log = _LibrdkafkaLog(self._secrets)
        self._config = self._producer_config()
        self._factory = producer_factory or self._kafka.Producer
        self._producer: Any = None
        self._last_error = ""
        self._validate_config()

    # ---- configuration -----------------------------------------------------------------------
    @classmethod
    def option_query(cls, url: SinkURL) -> Mapping[str, Sequence[str]]:
        # librdkafka.<property>=<value> go straight to the producer; the rest are declared options
        return {k: v for k, v in url.query.items() if not k.startswith(PASSTHROUGH)}

    @classmethod
    def redact(cls, url: SinkURL) -> str:
        hidden = {k for k in url.query if k.startswith(PASSTHROUGH) and _SENSITIVE.search(k)}
        return url.redacted(cls.secret_keys() | hidden)

    def _producer_config(self) -> dict[str, Any]:
        opts = self.opts
        sasl = bool(opts["user"] or opts["password"])
        if sasl and not (opts["user"] and opts["password"]):
            missing = "password" if opts["user"] else "user"
            raise SinkConfigError(self.name, "SASL needs both user= and password=", missing)
        if opts["cert"] and not self._tls_key:
            raise SinkConfigError(self.name, "mutual TLS needs key=<client key file> with cert=", "cert")
        tls = bool(opts["cacert"] or opts["cert"])
        protocol = opts["security_protocol"] or ("sasl_" if sasl else "") + ("ssl" if tls else "plaintext")
        idempotent = opts["acks"] in ("all", "-1")
        config: dict[str, Any] = {
            "client.id": "eventrouter",
            "enable.idempotence": idempotent,
            "acks": opts["acks"],
            "compression.codec": opts["compression"],
            "message.timeout.ms": int(float(opts["delivery_timeout"]) * 1000),
            "security.protocol": protocol,
        }
        if sasl:
            config.update({"sasl.mechanisms": opts["sasl_mechanism"], "sasl.username": opts["user"]})
        if opts["cacert"]:
            config["ssl.ca.location"] = opts["cacert"]
        if opts["cert"]:
            config.update({"ssl.certificate.location": opts["cert"], "ssl.key.location": self._tls_key})
        if opts["insecuressl"]:
            config["enable.ssl.certificate.verification"] = False
            config["ssl.endpoint.identification.algorithm"] = "none"
        for key, value in self._passthrough.items():
            if key in _RESERVED:
                raise SinkConfigError(self.name, "is set by the sink; use brokers= or delivery_timeout=",
                                      PASSTHROUGH + key)
            config[key] = value
        return config

    def _full_config(self, with_brokers: bool = True) -> dict[str, Any]:
        config = dict(self._config, logger=self._librdkafka_log, error_cb=self._on_error)
        if self.opts["password"]:
            config["sasl.password"] = self.opts["password"].reveal()
        if with_brokers:
            config["bootstrap.servers"] = self._brokers()
        return config

    def _brokers(self) -> str:
        return ",".join(b.strip() for b in self.opts["brokers"] if b.strip())

    def _validate_config(self) -> None:
        """librdkafka checks every property (and loads TLS files) when a client is built; without
        brokers it opens no connection, so a typo in librdkafka.* fails at start-up."""
        if self._factory is not self._kafka.Producer:
            return
        try:
            probe = self._factory(self._full_config(with_brokers=False))
        except self._kafka.KafkaException as exc:
            text = redact_text(_error_text(exc), self._secrets)
            option = self._option_named_in(text)
            raise SinkConfigError(self.name, f"librdkafka rejects the configuration: {text}", option) from None
        del probe

    def _option_named_in(self, text: str) -> str | None:
        """The flag option behind the librdkafka property an error names, if any."""
        names = {**{PASSTHROUGH + k: k for k in self._passthrough}, **_PROPERTY_OPTIONS}
        found = []
        for option, prop in names.items():
            match = re.search(rf"(?<![\w.]){re.escape(prop)}(?![\w.])", text) if prop else None
            if match:
                found.append((match.start(), option))
        return min(found)[1] if found else None  # the property the message names first

    # ---- delivery ----------------------------------------------------------------------------
    def _connect(self) -> Any:
        if self._producer is None:
            self._producer = self._factory(self._full_config())
        return self._producer

    def open(self) -> None:
        producer = self._connect()
        brokers = self._brokers()
        timeout = min(_OPEN_TIMEOUT, float(self.opts["delivery_timeout"]))
        try:
            metadata = producer.list_topics(timeout=timeout)
        except self._kafka.KafkaException as exc:
            err = exc.args[0]
            producer.poll(0)  # serve error_cb: it says why (refused, unknown host, auth failed)
            detail = self._last_error or _error_text(exc)
            text = redact_text(f"cannot reach the Kafka brokers {brokers} within {timeout:g}s: {detail}", self._secrets)
            if _classify(err) == "rejected":
                raise PermanentError(text) from None
            raise RetryableError(text) from None
        log.debug("kafka: %d brokers, %d topics", len(metadata.brokers), len(metadata.topics))

    def send(self, batch: Sequence[Event]) -> None:
        producer = self._connect()
        reports: dict[int, Any] = {}  # index -> None (stored) or the KafkaError of its delivery report
        outcome: dict[int, str] = {}
        deadline = time.monotonic() + self._wait
        try:
            for index, event in enumerate(batch):
                if self._produce(producer, index, event, reports, deadline) == "stop":
                    break  # the rest stay without an outcome: retried
                producer.poll(0)
            while self._producer is producer and len(reports) + len(outcome) < len(batch) \
                    and time.monotonic() < deadline:
                producer.flush(min(1.0, max(0.0, deadline - time.monotonic())))
        except Exception as exc:  # a fatal producer error surfaces from produce/poll/flush as an exception
            _serve_remaining_reports(producer, min(deadline, time.monotonic() + _GRACE))
            self._discard_producer(f"producer failed: {_error_text(exc)}")
        for index, err in list(reports.items()):
            outcome[index] = _classify(err)
            if err is not None and _needs_new_producer(err):
                self._discard_producer(f"producer failed: {err.str()}")
        errors = [e for e in reports.values() if e is not None]
        unconfirmed = [i for i in range(len(batch)) if outcome.get(i, "stop") == "stop"]
        if unconfirmed and self._producer is not None:
            # still inside librdkafka after the deadline: start a fresh producer for the retry
            self._discard_producer(f"{len(unconfirmed)} events not confirmed within {self._wait:g}s")
        retry = [batch[i] for i in range(len(batch)) if outcome.get(i, "stop") in ("retry", "stop")]
        rejected = [batch[i] for i in range(len(batch)) if outcome.get(i) == "rejected"]
        if not retry and not rejected:
            return
        message = redact_text(self._failure_text(len(batch), retry, rejected, errors), self._secrets)
        if len(retry) == len(batch):
            raise RetryableError(message)
        if len(rejected) == len(batch):
            raise PermanentError(message)
        raise PartialError(message, retry=retry, rejected=rejected)

    def _produce(self, producer: Any, index: int, event: Event, reports: dict[int, Any], deadline: float) -> str:
        """Queue one message (``queued``), record why librdkafka refused it at once (``refused``),
        or ``stop`` when its queue stayed full until the deadline. A fatal error propagates."""
        topic, key, value = self._topic(event), self._key(event), self._encode(event)
        callback = functools.partial(_store_report, reports, index)
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=callback)
                return "queued"
            except BufferError:
                # librdkafka's queue is full: serve delivery reports to make room, never drop
                if time.monotonic() >= deadline:
                    return "stop"
                producer.poll(0.1)
            except self._kafka.KafkaException as exc:
                if _needs_new_producer(exc.args[0]):
                    raise
                reports[index] = exc.args[0]  # e.g. larger than message.max.bytes
                return "refused"

    def _key(self, event: Event) -> bytes | None:
        mode = self._key_mode
        obj = event.involved_object
        if mode == "none":
            return None
        if mode == "namespace":
            return (event.namespace or obj.namespace).encode()
        if mode == "uid" and obj.uid:
            return obj.uid.encode()
        # object, or uid of an object without one: the same object still maps to the same key
        return f"{obj.kind}/{obj.namespace}/{obj.name}".encode()

    def _on_error(self, err: Any) -> None:
        # client-wide errors (brokers down, auth failed): kept to explain the next failed send
        self._last_error = redact_text(err.str(), self._secrets)
        log.debug("kafka: %s", self._last_error)

    def _failure_text(self, total: int, retry: list[Event], rejected: list[Event], errors: list[Any]) -> str:
        reasons: dict[str, int] = {}
        for err in errors:
            reasons[err.str()] = reasons.get(err.str(), 0) + 1
        detail = "; ".join(f"{text} (x{n})" for text, n in reasons.items()) or "no delivery report"
        if self._last_error and self._last_error not in detail:
            detail += f"; last client error: {self._last_error}"
        return f"{len(retry)} to retry, {len(rejected)} rejected of {total} events: {detail}"

    def _discard_producer(self, why: str) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        log.warning("kafka: %s; a new producer is used for the retry", redact_text(why, self._secrets))
        try:
            producer.purge()
            producer.flush(0)
        except Exception:
            pass  # a fatal producer may refuse even this; it is dropped anyway

    def tick(self) -> None:
        # librdkafka queues its logs and client errors until someone polls: serve them while idle,
        # or a sink whose brokers are down would pile up reconnect messages in memory
        producer = self._producer
        if producer is None:
            return
        try:
            producer.poll(0)
        except Exception as exc:  # fatal while idle: nothing is in flight, so a new producer is safe
            self._discard_producer(f"producer failed: {_error_text(exc)}")

    def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            left = producer.flush(float(self.opts["delivery_timeout"]))
        except Exception as exc:
            log.warning("kafka: close: %s", redact_text(_error_text(exc), self._secrets))
            return
        if left:
            log.warning("kafka: %d messages were not confirmed by the broker at close", left)


# ---- delivery reports ------------------------------------------------------------------------

def _store_report(reports: dict[int, Any], index: int, err: Any, _msg: Any) -> None:
    # Runs inside poll()/flush(). It calls no method on err or msg: after a fatal error the client
    # has an exception pending, and any C method call would turn it into a SystemError.
    reports[index] = err


def _serve_remaining_reports(producer: Any, deadline: float) -> None:
    """After a fatal error the client stops serving reports at the first exception; the reports
    still queued may say "stored", so serve them before the producer is dropped (else those
    events would be sent twice)."""
    while time.monotonic() < deadline:
        try:
            if not producer.flush(max(0.0, min(1.0, deadline - time.monotonic()))):
                return
        except Exception:
            continue


# error names, not numbers: they are stable across librdkafka versions
_RETRY = frozenset({
    "_MSG_TIMED_OUT", "_TIMED_OUT", "_TRANSPORT", "_ALL_BROKERS_DOWN", "_RESOLVE", "_PURGE_QUEUE",
    "_PURGE_INFLIGHT", "_FATAL", "_DESTROY", "_QUEUE_FULL", "_UNKNOWN_PARTITION", "_WAIT_COORD", "_PREV_IN_PROGRESS",
    "UNKNOWN_PRODUCER_ID", "OUT_OF_ORDER_SEQUENCE_NUMBER", "INVALID_PRODUCER_EPOCH", "PRODUCER_FENCED",
    "REQUEST_TIMED_OUT", "NETWORK_EXCEPTION", "NOT_LEADER_FOR_PARTITION", "LEADER_NOT_AVAILABLE",
    "BROKER_NOT_AVAILABLE", "NOT_ENOUGH_REPLICAS", "NOT_ENOUGH_REPLICAS_AFTER_APPEND", "KAFKA_STORAGE_ERROR",
    "THROTTLING_QUOTA_EXCEEDED", "NOT_CONTROLLER",
})
_NEW_PRODUCER = frozenset({"_FATAL", "UNKNOWN_PRODUCER_ID", "OUT_OF_ORDER_SEQUENCE_NUMBER", "INVALID_PRODUCER_EPOCH",
                           "PRODUCER_FENCED"})


def _classify(err: Any) -> str:
    """A delivery report's error -> ``delivered``, ``retry`` or ``rejected``.

    Retry: the broker may take the message later (timeouts, brokers down, leader moves, a producer
    id the broker forgot). Rejected: it never will (too large, topic missing or not allowed, bad
    credentials, invalid record).
    """
    if err is None:
        return "delivered"
    if err.fatal() or err.retriable() or err.name() in _RETRY:
        return "retry"
    return "rejected"


def _needs_new_producer(err: Any) -> bool:
    """The idempotent producer cannot go on (its id or sequence is out of step with the broker)."""
    return bool(err.fatal()) or err.name() in _NEW_PRODUCER


def _error_text(exc: BaseException) -> str:
    for candidate in (exc, exc.__cause__, exc.__context__):
        args = getattr(candidate, "args", ())
        if args and hasattr(args[0], "str"):
            return f"{args[0].name()}: {args[0].str()}"
    return f"{type(exc).__name__}: {exc}"


class _LibrdkafkaLog:
    """librdkafka's log lines (``logger=``) into Python logging instead of stderr, secrets masked.

    They are debug detail (each reconnect attempt logs an error); what a user must see arrives as
    a failed send, which the router logs. Fatal lines are warnings.
    """

    def __init__(self, secrets: Sequence[Any]) -> None:
        self._secrets = secrets
        self._log = logging.getLogger("eventrouter.sinks.kafka.librdkafka")

    def log(self, level: int, fmt: str, *args: Any) -> None:
        level = logging.WARNING if level >= logging.CRITICAL else logging.DEBUG
        if self._log.isEnabledFor(level):
            self._log.log(level, "%s", redact_text(fmt % args, self._secrets))


# ---- topic and key ---------------------------------------------------------------------------

def _split_key(values: list[str], cert: str | None) -> tuple[str, str | None]:
    """``key`` is both kube-eventer's TLS key file and the message key mode; tell them apart."""
    modes = [v for v in values if v in KEY_MODES]
    files = [v for v in values if v not in KEY_MODES]
    if len(modes) > 1 or len(files) > 1:
        allowed = ", ".join(KEY_MODES)
        raise SinkConfigError("kafka", f"give at most one message key ({allowed}) and one TLS key file", "key")
    if files and not cert:
        raise SinkConfigError("kafka", f"{files[0]!r} is not a message key ({', '.join(KEY_MODES)}); "
                              "as a TLS client key file it needs cert=", "key")
    return (modes[0] if modes else "uid"), (files[0] if files else None)


def _topic_template(template: str) -> Any:
    """A function event -> topic. ``{field}`` takes an event field; anything not allowed in a
    topic name (letters, digits, ``.``, ``_``, ``-``) becomes ``_``, an empty field ``_``."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise SinkConfigError("kafka", f"{template!r} is not a topic template: {exc}", "eventstopic") from None
    fields = [name for _, name, _, _ in parts if name is not None]
    for _, name, spec, conv in parts:
        if name is not None and (name not in TOPIC_FIELDS or spec or conv):
            raise SinkConfigError("kafka", f"{{{name}}} is not a topic field; use " +
                                  ", ".join(f"{{{f}}}" for f in TOPIC_FIELDS), "eventstopic")
    literal = "".join(text for text, *_ in parts)
    if not template or _TOPIC_CHARS.search(literal) or len(template) > 249:
        raise SinkConfigError("kafka", f"{template!r} is not a topic name (letters, digits, '.', '_', '-'; "
                              "at most 249)", "eventstopic")
    if not fields:
        return lambda event: template

    def topic(event: Event) -> str:
        values = {
            "namespace": event.namespace or event.involved_object.namespace,
            "kind": event.involved_object.kind,
            "type": event.type,
            "reason": event.reason,
            "cluster": event.cluster,
        }
        clean = {k: _TOPIC_CHARS.sub("_", v) or "_" for k, v in values.items()}
        return template.format(**clean)[:249]

    return topic


# ---- message formats -------------------------------------------------------------------------

def _json_message(event: Event) -> bytes:
    return orjson.dumps(event.to_dict())
