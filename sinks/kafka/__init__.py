"""Kafka sink: one message per event, produced by an idempotent confluent-kafka (librdkafka) producer.

Talks to any Kafka-protocol broker (Apache Kafka, Redpanda, MSK, tansu, ...). An event counts as
delivered only when its delivery report says the broker stored it, so the router's checkpoint
never passes an event the broker did not confirm. An event not confirmed within ``delivery_timeout``
stays with the same producer (which retries it with its producer id and sequence, deduplicated by the
broker); the router's retry waits for its report instead of producing it again. Only after
``message_timeout`` or a fatal producer error is it sent again by a new producer, and may then repeat.

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
_GRACE = 5.0  # without idempotence librdkafka reports every message within message.timeout.ms; the last poll


class KafkaSink(Sink):
    """Kafka: one message per event; also librdkafka.<property>=<value>.  kafka:?brokers=H:9092&eventstopic=T"""

    name = "kafka"
    contacts_on_open = True  # open() raises unless the brokers answered (eventrouter check reports it)
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
               help="how long one send waits for the broker to confirm every event; unconfirmed ones stay "
                    "with the producer and the retry waits for them"),
        Option("message_timeout", Duration, default=Duration(300.0), min=1,
               help="how long the producer itself keeps trying one event (idempotent, acks=all); an event not "
                    "confirmed by then is sent again and may repeat"),
        Option("timeseriestopic", str, help="kube-eventer (heapster) metrics topic; accepted and unused"),
    )
    delivery_defaults: ClassVar = {"batch_size": 500, "flush_interval": 0.2}

    def __init__(self, url: SinkURL, opts: Any, producer_factory: Any = None) -> None:
        super().__init__(url, opts)
        self._kafka = self.require("confluent_kafka")
        self._key_mode, self._tls_key = _split_key(opts["key"], opts["cert"])
        self._topic = _topic_template(opts["eventstopic"])
        self._encode = kafka_message if opts["format"] == "kube-eventer" else _json_message
        idempotent = opts["acks"] in ("all", "-1")
        self._wait = float(opts["delivery_timeout"]) + (0.0 if idempotent else _GRACE)
        self._passthrough = {k[len(PASSTHROUGH):]: v[0] for k, v in url.query.items() if k.startswith(PASSTHROUGH)}
        self._secrets = [opts["password"], *(v for k, v in self._passthrough.items() if _SENSITIVE.search(k))]
        self._librdkafka_log = _LibrdkafkaLog(self._secrets)
        self._config = self._producer_config()
        self._factory = producer_factory or self._kafka.Producer
        self._producer: Any = None
        # messages handed to the producer whose delivery report has not been seen by a send yet
        self._inflight: dict[tuple[str, ...], _Pending] = {}
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
            # A message timed out locally may have reached the broker and could only be sent again as a
            # new one (a possible duplicate). Until message_timeout librdkafka retries it itself with the
            # same producer id and sequence, which the broker deduplicates, while sends only wait.
            "message.timeout.ms": int(float(opts["message_timeout"] if idempotent else opts["delivery_timeout"])
                                      * 1000),
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
                raise SinkConfigError(self.name, "is set by the sink; use brokers=, delivery_timeout= or "
                                      "message_timeout=", PASSTHROUGH + key)
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
        keys = [_occurrence(event) for event in batch]
        pending: list[_Pending | None] = [None] * len(batch)  # None: not handed to librdkafka (retried)
        deadline = time.monotonic() + self._wait
        try:
            for index, (event, key) in enumerate(zip(batch, keys, strict=True)):
                held = self._inflight.get(key)
                if held is not None and (not held.done or held.error is None):
                    # handed to this producer by an earlier send whose wait ran out: never produce it
                    # again, its delivery report (stored, or librdkafka's own idempotent retries) decides
                    pending[index] = held
                    continue
                slot = self._produce(producer, event, deadline)
                if slot is None:
                    break  # librdkafka's queue stayed full until the deadline: the rest are retried
                pending[index] = self._inflight[key] = slot
                producer.poll(0)
            while self._producer is producer and not all(p is not None and p.done for p in pending) \
                    and time.monotonic() < deadline:
                producer.flush(min(1.0, max(0.0, deadline - time.monotonic())))
        except Exception as exc:  # a fatal producer error surfaces from produce/poll/flush as an exception
            _serve_remaining_reports(producer, min(deadline, time.monotonic() + _GRACE))
            self._discard_producer(f"producer failed: {_error_text(exc)}")
        outcome = [_outcome(slot) for slot in pending]
        for slot in pending:
            if slot is not None and slot.done and slot.error is not None and _needs_new_producer(slot.error):
                self._discard_producer(f"producer failed: {slot.error.str()}")
        timed_out = sum(1 for slot in pending if slot is not None and slot.done and slot.error is not None
                        and slot.error.name() == "_MSG_TIMED_OUT")
        if timed_out and self._producer is producer:
            # the producer could not deliver for message_timeout: those events' outcome is unknown
            # whatever sends them again, and a fresh producer id gets past a broker that lost ours
            self._discard_producer(f"{timed_out} events not confirmed within message_timeout "
                                   f"({float(self.opts['message_timeout']):g}s); they are sent again and may repeat")
        for key, result in zip(keys, outcome, strict=True):
            if result in ("delivered", "rejected", "retry"):
                self._inflight.pop(key, None)  # settled by its report; a "retry" is produced anew
        # reports for events of batches the router gave up on: nothing waits for them any more
        for key in [k for k, slot in self._inflight.items() if slot.done]:
            del self._inflight[key]
        errors = [slot.error for slot in pending if slot is not None and slot.done and slot.error is not None]
        retry = [e for e, result in zip(batch, outcome, strict=True) if result in ("retry", "pending", "stop")]
        rejected = [e for e, result in zip(batch, outcome, strict=True) if result == "rejected"]
        if not retry and not rejected:
            return
        waiting = outcome.count("pending")
        message = redact_text(self._failure_text(len(batch), retry, rejected, errors, waiting), self._secrets)
        if len(retry) == len(batch):
            raise RetryableError(message)
        if len(rejected) == len(batch):
            raise PermanentError(message)
        raise PartialError(message, retry=retry, rejected=rejected)

    def _produce(self, producer: Any, event: Event, deadline: float) -> _Pending | None:
        """Queue one message, or record why librdkafka refused it at once (a done slot with its
        error); None when its queue stayed full until the deadline. A fatal error propagates."""
        topic, key, value = self._topic(event), self._key(event), self._encode(event)
        slot = _Pending()
        callback = functools.partial(_store_report, slot)
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=callback)
                return slot
            except BufferError:
                # librdkafka's queue is full: serve delivery reports to make room, never drop
                if time.monotonic() >= deadline:
                    return None
                producer.poll(0.1)
            except self._kafka.KafkaException as exc:
                if _needs_new_producer(exc.args[0]):
                    raise
                slot.error, slot.done = exc.args[0], True  # e.g. larger than message.max.bytes
                return slot

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

    def _failure_text(self, total: int, retry: list[Event], rejected: list[Event], errors: list[Any],
                      waiting: int) -> str:
        reasons: dict[str, int] = {}
        for err in errors:
            reasons[err.str()] = reasons.get(err.str(), 0) + 1
        detail = "; ".join(f"{text} (x{n})" for text, n in reasons.items()) or "no delivery report"
        if waiting:
            detail += (f"; {waiting} not confirmed within {self._wait:g}s stay with the producer, which keeps "
                       "trying: the retry waits for their reports and does not send them again")
        if self._last_error and self._last_error not in detail:
            detail += f"; last client error: {self._last_error}"
        return f"{len(retry)} to retry, {len(rejected)} rejected of {total} events: {detail}"

    def _discard_producer(self, why: str) -> None:
        producer, self._producer = self._producer, None
        unknown = sum(1 for slot in self._inflight.values() if not slot.done)
        self._inflight.clear()
        if producer is None:
            return
        # only a fatal error gets here: the idempotent producer cannot go on, so its sequence numbers
        # are lost and what it held may be in the topic already
        log.warning("kafka: %s; a new producer is used for the retry%s", redact_text(why, self._secrets),
                    f" ({unknown} events whose outcome is unknown are sent again and may repeat)" if unknown else "")
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

class _Pending:
    """One message handed to librdkafka: ``done`` once its delivery report came (``error`` None: stored)."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = False
        self.error: Any = None


def _store_report(slot: _Pending, err: Any, _msg: Any) -> None:
    # Runs inside poll()/flush(). It calls no method on err or msg: after a fatal error the client
    # has an exception pending, and any C method call would turn it into a SystemError.
    slot.error, slot.done = err, True


def _outcome(slot: _Pending | None) -> str:
    """``stop`` (never handed over), ``pending`` (no report yet), or the report's classification."""
    if slot is None:
        return "stop"
    if not slot.done:
        return "pending"
    return _classify(slot.error)


def _occurrence(event: Event) -> tuple[str, ...]:
    """What tells one occurrence from another: the same event in a retried batch has the same key."""
    obj = event.involved_object
    return (event.uid, event.resource_version, str(event.count), event.last_timestamp.isoformat(),
            event.namespace, event.name, obj.kind, obj.name)


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
