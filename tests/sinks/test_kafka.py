"""Kafka sink: flags, redaction, classification, kube-eventer's message bytes, and delivery to a real
Kafka-wire broker (tansu) including a broker restart in the middle of a stream."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
import trustme
from confluent_kafka import KafkaError

from eventrouter import PartialError, PermanentError, RetryableError, SinkConfigError, SinkURL
from eventrouter.cli import main as cli_main
from eventrouter.config import build_sink
from eventrouter.event import Event
from eventrouter.router import Router, SinkRunner
from sinks._kube_eventer import go_json
from sinks._kube_eventer import kafka_message as kube_eventer_message
from sinks.kafka import KafkaSink, _classify
from tests.helpers import make_event, real_events, real_objects
from tests.servers.tansu import Tansu, free_port

PASSWORD = "s3cr3t-Pa55word"
OTHER_SECRET = "0auth-cl1ent-s3cret"


@pytest.fixture(scope="module")
def broker() -> Iterator[Tansu]:
    server = Tansu().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    client = ca.issue_cert("eventrouter.client")
    ca.cert_pem.write_to_path(str(base / "ca.pem"))
    client.cert_chain_pems[0].write_to_path(str(base / "client.pem"))
    client.private_key_pem.write_to_path(str(base / "client.key"))
    return {"ca": str(base / "ca.pem"), "cert": str(base / "client.pem"), "key": str(base / "client.key")}


def kafka(flag: str) -> KafkaSink:
    sink = build_sink(flag)
    assert isinstance(sink, KafkaSink)
    return sink


def wait_until(condition: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# ---- flags -----------------------------------------------------------------------------------

FLAGS = [
    # every kube-eventer example (docs/en/kafka-sink.md, compat catalogue §0 and §2.4)
    ("kafka:?brokers=localhost:9092&brokers=localhost:9093&timeseriestopic=testseries",
     {"bootstrap.servers": "localhost:9092,localhost:9093", "topic": "heapster-events",
      "security.protocol": "plaintext", "compression.codec": "none"}),
    ("kafka:?brokers=localhost:9092&brokers=localhost:9093&eventstopic=testtopic",
     {"bootstrap.servers": "localhost:9092,localhost:9093", "topic": "testtopic"}),
    ("kafka:?brokers=a:9092&brokers=b:9092", {"bootstrap.servers": "a:9092,b:9092"}),
    ("kafka:?brokers=h:9092&brokers=h2:9092&eventstopic=k8s&compression=gzip&user=u&password=pw"
     "&cacert={ca}&cert={cert}&key={key}&insecuressl=true",
     {"bootstrap.servers": "h:9092,h2:9092", "topic": "k8s", "compression.codec": "gzip",
      "security.protocol": "sasl_ssl", "sasl.mechanisms": "PLAIN", "sasl.username": "u",
      "ssl.ca.location": "{ca}", "ssl.certificate.location": "{cert}", "ssl.key.location": "{key}",
      "enable.ssl.certificate.verification": False, "key_mode": "uid"}),
    ("kafka:?brokers=h:9092&compression=snappy", {"compression.codec": "snappy"}),
    ("kafka:?brokers=h:9092&compression=lz4", {"compression.codec": "lz4"}),
    ("kafka:?brokers=h:9092&cacert={ca}", {"security.protocol": "ssl", "ssl.ca.location": "{ca}"}),
    ("kafka:?brokers=h:9092&user=u&password=pw", {"security.protocol": "sasl_plaintext", "sasl.username": "u"}),
    # insecuressl without TLS files does not turn TLS on (kube-eventer getTlsConfiguration)
    ("kafka:?brokers=h:9092&insecuressl=true", {"security.protocol": "plaintext"}),
    # additions
    ("kafka:?brokers=h1:9092,h2:9092", {"bootstrap.servers": "h1:9092,h2:9092"}),
    ("kafka:?brokers=h1:9092,&brokers= h2:9092", {"bootstrap.servers": "h1:9092,h2:9092"}),
    ("kafka:?brokers=h:9092", {"enable.idempotence": True, "acks": "all", "message.timeout.ms": 300000,
                               "key_mode": "uid", "format": "json", "batch_size": 500}),
    ("kafka:?brokers=h:9092&acks=1", {"enable.idempotence": False, "acks": "1"}),
    ("kafka:?brokers=h:9092&user=u&password=pw&sasl_mechanism=SCRAM-SHA-512&security_protocol=sasl_ssl",
     {"sasl.mechanisms": "SCRAM-SHA-512", "security.protocol": "sasl_ssl"}),
    ("kafka:?brokers=h:9092&key=namespace", {"key_mode": "namespace"}),
    ("kafka:?brokers=h:9092&key=none&cert={cert}&key={key}", {"key_mode": "none", "ssl.key.location": "{key}"}),
    ("kafka:?brokers=h:9092&topic=k8s-{namespace}&format=kube-eventer", {"topic": "k8s-default",
                                                                         "format": "kube-eventer"}),
    ("kafka:?brokers=h:9092&eventstopic={cluster}.{kind}.{type}.{reason}", {"topic": "lab.Pod.Warning.BackOff"}),
    ("kafka:?brokers=h:9092&delivery_timeout=5s&librdkafka.linger.ms=50&librdkafka.partitioner=murmur2_random",
     {"message.timeout.ms": 300000, "linger.ms": "50", "partitioner": "murmur2_random"}),
    # the producer keeps trying an event for message_timeout; without idempotence, for delivery_timeout
    ("kafka:?brokers=h:9092&message_timeout=10m", {"message.timeout.ms": 600000}),
    ("kafka:?brokers=h:9092&acks=1&delivery_timeout=5s", {"message.timeout.ms": 5000, "enable.idempotence": False}),
]


@pytest.mark.parametrize(("flag", "expected"), FLAGS, ids=[f[0][:70] for f in FLAGS])
def test_flags(flag: str, expected: dict, tls_files: dict[str, str]) -> None:
    sink = kafka(flag.format(**tls_files) if "{ca}" in flag or "{cert}" in flag else flag)
    config = sink._full_config()
    event = make_event(1, cluster="lab")
    seen = {
        **config,
        "topic": sink._topic(event),
        "key_mode": sink._key_mode,
        "format": sink.opts["format"],
        "batch_size": sink.opts["batch_size"],
    }
    wanted = {k: v.format(**tls_files) if isinstance(v, str) and "{" in v else v for k, v in expected.items()}
    assert {k: seen.get(k) for k in wanted} == wanted


BAD_FLAGS = [
    ("kafka:", "brokers", "is required"),
    ("kafka:?brokers=", "brokers", "give at least one host:port"),
    ("kafka:?brokers=h:9092&compression=zip", "compression", "use one of none, gzip, snappy, lz4, zstd"),
    ("kafka:?brokers=h:9092&user=u", "password", "SASL needs both user= and password="),
    ("kafka:?brokers=h:9092&password=pw", "user", "SASL needs both"),
    ("kafka:?brokers=h:9092&cert=/c.pem", "cert", "needs key="),
    ("kafka:?brokers=h:9092&key=partition", "key", "'partition' is not a message key (uid, namespace, object, none)"),
    ("kafka:?brokers=h:9092&key=uid&key=none", "key", "at most one message key"),
    ("kafka:?brokers=h:9092&eventstopic=k8s-{pod}", "eventstopic", "{pod} is not a topic field; use {namespace}"),
    ("kafka:?brokers=h:9092&eventstopic=k8s events", "eventstopic", "is not a topic name"),
    ("kafka:?brokers=h:9092&eventstopic=k8s-{namespace", "eventstopic", "is not a topic template"),
    ("kafka:?brokers=h:9092&acks=2", "acks", "use one of all, -1, 1, 0"),
    ("kafka:?brokers=h:9092&sasl_mechanism=GSSAPI", "sasl_mechanism", "use one of PLAIN, SCRAM-SHA-256"),
    ("kafka:?brokers=h:9092&format=avro", "format", "use one of json, kube-eventer"),
    ("kafka:?brokers=h:9092&delivery_timeout=0s", "delivery_timeout", "out of range"),
    ("kafka:?brokers=h:9092&topics=x", "topics", "unknown option; allowed options are: "),
    ("kafka:?brokers=h:9092&librdkafka.bootstrap.servers=x:1", "librdkafka.bootstrap.servers", "is set by the sink"),
    ("kafka:?brokers=h:9092&librdkafka.no.such.property=1", "librdkafka.no.such.property",
     'librdkafka rejects the configuration: _INVALID_ARG: No such configuration property: "no.such.property"'),
    ("kafka:?brokers=h:9092&librdkafka.batch.num.messages=lots", "librdkafka.batch.num.messages",
     'Invalid value for configuration property "batch.num.messages"'),
    ("kafka:?brokers=h:9092&cacert=/nonexistent/ca.pem", "cacert", "ssl.ca.location failed"),
    ("kafka:?brokers=h:9092&acks=all&librdkafka.enable.idempotence=true&librdkafka.max.in.flight=50",
     "librdkafka.max.in.flight",
     "max.in.flight"),
]


@pytest.mark.parametrize(("flag", "option", "message"), BAD_FLAGS, ids=[f[0][:70] for f in BAD_FLAGS])
def test_bad_flags(flag: str, option: str | None, message: str) -> None:
    with pytest.raises(SinkConfigError) as info:
        build_sink(flag)
    assert info.value.sink == "kafka"
    assert info.value.option == option
    assert message in str(info.value)


def test_flags_do_no_io() -> None:
    # nothing listens on this port: building (and validating librdkafka properties) must not connect
    sink = kafka(f"kafka:?brokers=127.0.0.1:{free_port()}")
    assert sink._producer is None
    sink.close()
    sink.close()


# ---- secrets ---------------------------------------------------------------------------------

def test_redacted_round_trip() -> None:
    flag = (f"kafka:?brokers=h:9092&user=alice&password={PASSWORD}"
            f"&librdkafka.sasl.oauthbearer.client.secret={OTHER_SECRET}&eventstopic=t")
    sink = kafka(flag)
    shown = [KafkaSink.redact(SinkURL.parse(flag)), sink.describe(), repr(sink), repr(sink.opts)]
    for text in shown:
        assert PASSWORD not in text and OTHER_SECRET not in text
    assert sink.describe() == ("kafka:?brokers=h:9092&user=alice&password=***"
                               "&librdkafka.sasl.oauthbearer.client.secret=***&eventstopic=t")
    assert sink._full_config()["sasl.password"] == PASSWORD  # revealed only where librdkafka needs it


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
def test_password_never_in_errors_logs_or_stderr(mechanism: str, caplog: pytest.LogCaptureFixture,
                                                 capfd: pytest.CaptureFixture[str]) -> None:
    """A real SASL exchange that fails (tansu requires authentication and knows no user), with
    every librdkafka debug context on: the password appears nowhere a user could see it."""
    broker = Tansu(authentication=True).start()
    try:
        sink = kafka(f"kafka:?brokers={broker.bootstrap}&user=alice&password={PASSWORD}&sasl_mechanism={mechanism}"
                     "&delivery_timeout=1s&librdkafka.debug=all")
        caplog.set_level(logging.DEBUG, logger="eventrouter.sinks.kafka")
        with pytest.raises(RetryableError) as info:
            sink.open()
        with pytest.raises(RetryableError) as sent:
            sink.send([make_event(1)])
        sink.close()
    finally:
        broker.stop()
    out, err = capfd.readouterr()
    assert "SASL" in str(info.value) and "SASL" in str(sent.value)  # the cause is named
    assert "sasl.password = [redacted]" in caplog.text  # librdkafka's own lines went through Python logging ...
    assert "rdkafka" not in err  # ... not to stderr
    for text in (str(info.value), str(sent.value), caplog.text, out, err):
        assert PASSWORD not in text


# ---- classification --------------------------------------------------------------------------

CLASSIFY = [
    (None, "delivered"),
    (KafkaError(KafkaError._MSG_TIMED_OUT), "retry"),
    (KafkaError(KafkaError._TRANSPORT), "retry"),
    (KafkaError(KafkaError._ALL_BROKERS_DOWN), "retry"),
    (KafkaError(KafkaError._PURGE_QUEUE), "retry"),
    (KafkaError(KafkaError.REQUEST_TIMED_OUT), "retry"),
    (KafkaError(KafkaError.NOT_ENOUGH_REPLICAS), "retry"),
    (KafkaError(KafkaError.LEADER_NOT_AVAILABLE), "retry"),
    (KafkaError(KafkaError.UNKNOWN_PRODUCER_ID), "retry"),
    (KafkaError(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER), "retry"),
    (KafkaError(KafkaError._FATAL, fatal=True), "retry"),
    (KafkaError(KafkaError.INVALID_RECORD, retriable=True), "retry"),
    (KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), "rejected"),
    (KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED), "rejected"),
    (KafkaError(KafkaError.SASL_AUTHENTICATION_FAILED), "rejected"),
    (KafkaError(KafkaError._AUTHENTICATION), "rejected"),
    (KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART), "rejected"),
    (KafkaError(KafkaError.INVALID_RECORD), "rejected"),
    (KafkaError(KafkaError.POLICY_VIOLATION), "rejected"),
]


@pytest.mark.parametrize(("err", "outcome"), CLASSIFY, ids=[e.name() if e else "ok" for e, _ in CLASSIFY])
def test_classify(err: KafkaError | None, outcome: str) -> None:
    assert _classify(err) == outcome


# ---- kube-eventer message bytes --------------------------------------------------------------

GO_STRINGS = [
    ("plain", '"plain"'),
    ('a "q" \\ b', '"a \\"q\\" \\\\ b"'),
    ("<b>&</b>", '"\\u003cb\\u003e\\u0026\\u003c/b\\u003e"'),
    ("l1\nl2\r\tx\b\f", '"l1\\nl2\\r\\tx\\b\\f"'),
    ("\x01\x1f\x7f", '"\\u0001\\u001f\x7f"'),
    ("\u2028\u2029", '"\\u2028\\u2029"'),
    ("中文 é", '"中文 é"'),
]


@pytest.mark.parametrize(("text", "go"), GO_STRINGS)
def test_go_string_escapes(text: str, go: str) -> None:
    assert go_json(text) == go


def test_go_indent_layout() -> None:
    value = {"a": {}, "b": [], "c": [1, {"d": None, "e": True}], "f": "x"}
    assert go_json(value) == '{"a":{},"b":[],"c":[1,{"d":null,"e":true}],"f":"x"}'
    assert go_json(value, indent=" ") == (
        '{\n "a": {},\n "b": [],\n "c": [\n  1,\n  {\n   "d": null,\n   "e": true\n  }\n ],\n "f": "x"\n}')


RAW = {
    "kind": "Event",
    "apiVersion": "v1",
    "metadata": {
        "name": "web-0.17a", "namespace": "shop", "uid": "u-1", "resourceVersion": "42",
        "creationTimestamp": "2026-04-14T09:30:00Z", "deletionGracePeriodSeconds": 0,
        "labels": {"b": "2", "a": "1"}, "annotations": {"note": "<b>&</b>"},
        "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "web-0", "uid": "p-1", "controller": True}],
    },
    "involvedObject": {"kind": "Pod", "namespace": "shop", "name": "web-0", "uid": "p-1", "apiVersion": "v1",
                       "fieldPath": "spec.containers{web}"},
    "reason": "BackOff",
    "message": 'line1\nline2\t"q" \u2028 中文 \x01',
    "source": {"component": "kubelet", "host": "node-1"},
    "firstTimestamp": "2026-04-14T17:29:00+08:00",
    "lastTimestamp": "2026-04-14T09:30:05.123Z",
    "count": 3,
    "type": "Warning",
    "eventTime": None,
    "related": {"kind": "Node", "name": "node-1"},
    "reportingComponent": "",
    "someFutureField": "dropped: kube-eventer's Go struct does not know it",
}

# What kube-eventer writes for RAW: Go's v1.Event field order, no kind/apiVersion, metav1.Time in
# whole UTC seconds, null for a zero time, maps sorted, HTML characters escaped, reporting* present.
EVENT_VALUE = """{
 "metadata": {
  "name": "web-0.17a",
  "namespace": "shop",
  "uid": "u-1",
  "resourceVersion": "42",
  "creationTimestamp": "2026-04-14T09:30:00Z",
  "deletionGracePeriodSeconds": 0,
  "labels": {
   "a": "1",
   "b": "2"
  },
  "annotations": {
   "note": "\\u003cb\\u003e\\u0026\\u003c/b\\u003e"
  },
  "ownerReferences": [
   {
    "apiVersion": "v1",
    "kind": "Pod",
    "name": "web-0",
    "uid": "p-1",
    "controller": true
   }
  ]
 },
 "involvedObject": {
  "kind": "Pod",
  "namespace": "shop",
  "name": "web-0",
  "uid": "p-1",
  "apiVersion": "v1",
  "fieldPath": "spec.containers{web}"
 },
 "reason": "BackOff",
 "message": "line1\\nline2\\t\\"q\\" \\u2028 中文 \\u0001",
 "source": {
  "component": "kubelet",
  "host": "node-1"
 },
 "firstTimestamp": "2026-04-14T09:29:00Z",
 "lastTimestamp": "2026-04-14T09:30:05Z",
 "count": 3,
 "type": "Warning",
 "eventTime": null,
 "related": {
  "kind": "Node",
  "name": "node-1"
 },
 "reportingComponent": "",
 "reportingInstance": ""
}"""


def test_kube_eventer_message_bytes() -> None:
    message = kube_eventer_message(Event.from_object(RAW))
    outer = json.loads(message)
    assert list(outer) == ["EventValue", "EventTimestamp", "EventTags"]
    assert outer["EventValue"] == EVENT_VALUE
    assert message.startswith(b'{"EventValue":"{\\n \\"metadata\\": {\\n  \\"name\\": \\"web-0.17a\\",')
    assert message.endswith(b'","EventTimestamp":"2026-04-14T09:30:05Z","EventTags":{"eventID":"u-1",'
                            b'"hostname":"node-1","pod_id":"p-1","pod_name":"web-0"}}')
    # Go escapes HTML characters again in the outer json.Marshal; non-ASCII stays UTF-8
    assert b"\\\\u003cb\\\\u003e" in message and b"<" not in message and "中文".encode() in message


def test_kube_eventer_message_of_a_scheduler_event() -> None:
    """eventTime-only events (the scheduler's): EventTimestamp comes from eventTime, in microseconds."""
    raw = real_objects()[0]
    assert raw["lastTimestamp"] is None and raw["reportingComponent"] == "default-scheduler"
    outer = json.loads(kube_eventer_message(Event.from_object(raw)))
    assert outer["EventTimestamp"] == "2023-07-10T05:31:39.694297Z"
    value = outer["EventValue"]
    assert value.startswith('{\n "metadata": {\n  "name": "crashpod-f9b59484-7828f.17706aa0ee99e24f",')
    assert '\n "firstTimestamp": null,\n "lastTimestamp": null,\n "type": "Normal",' in value
    assert '\n "eventTime": "2023-07-10T05:31:39.694297Z",\n "action": "Binding",' in value
    assert '"kind"' not in value.split('"involvedObject"')[0]  # no TypeMeta
    assert json.loads(value)["metadata"]["managedFields"][0]["fieldsV1"] == raw["metadata"]["managedFields"][0][
        "fieldsV1"]


def test_kube_eventer_message_of_an_events_k8s_io_event() -> None:
    raw = real_objects("events-k8s-io-v1")[0]
    value = json.loads(json.loads(kube_eventer_message(Event.from_object(raw)))["EventValue"])
    assert value["involvedObject"] == {k: v for k, v in raw["regarding"].items()}
    assert value["message"] == raw["note"]
    assert list(value)[:3] == ["metadata", "involvedObject", "reason"]


def test_kube_eventer_message_of_an_event_without_its_object() -> None:
    """``check --send-test`` builds an Event with no original object: the message is still complete."""
    event = make_event(7)
    outer = json.loads(kube_eventer_message(event))
    value = json.loads(outer["EventValue"])
    assert value["metadata"]["uid"] == event.uid and value["involvedObject"]["name"] == "app-7"
    assert value["lastTimestamp"] == "2026-04-14T09:30:07Z" and value["eventTime"] is None
    assert outer["EventTags"] == {"eventID": event.uid, "hostname": "node-1", "pod_id": event.involved_object.uid,
                                  "pod_name": "app-7"}


# ---- delivery to a real broker ---------------------------------------------------------------

def test_every_real_event_arrives_once_json(broker: Tansu) -> None:
    events = real_events(cluster="lab")
    sink = kafka(f"kafka:?brokers={broker.bootstrap}&eventstopic=json-all")
    sink.open()
    for start in range(0, len(events), 500):
        sink.send(events[start:start + 500])
    sink.close()
    records = broker.read("json-all")
    assert len(records) == len(events)
    by_key = {(e.uid, e.resource_version): e for e in events}
    seen = Counter()
    for record in records:
        value = orjson.loads(record.value)
        event = by_key[(value["uid"], value["resource_version"])]
        seen[event.key] += 1
        assert value == event.to_dict()
        assert value["cluster"] == "lab" and value["last_timestamp"].endswith("Z")
        obj = event.involved_object
        expected_key = obj.uid or f"{obj.kind}/{obj.namespace}/{obj.name}"
        assert record.key == expected_key.encode()
    assert set(seen.values()) == {1}
    # one object's events share a key, hence a partition: their order is kept
    for uid in {e.involved_object.uid for e in events if e.involved_object.uid}:
        partitions = {r.partition for r in records if r.key == uid.encode()}
        assert len(partitions) == 1


def test_every_real_event_arrives_once_kube_eventer(broker: Tansu) -> None:
    events = real_events(400)
    sink = kafka(f"kafka:?brokers={broker.bootstrap}&eventstopic=ke-all&format=kube-eventer&key=none")
    sink.send(events)
    sink.close()
    records = broker.read("ke-all")
    assert Counter(r.value for r in records) == Counter(kube_eventer_message(e) for e in events)
    assert {r.key for r in records} == {None}
    first = json.loads(next(r.value for r in records if json.loads(r.value)["EventTags"]["eventID"] == events[1].uid))
    assert first["EventTags"] == {"eventID": events[1].uid, "hostname": "minikube",
                                  "pod_id": events[1].involved_object.uid, "pod_name": events[1].involved_object.name}
    assert json.loads(first["EventValue"])["message"] == events[1].message


def test_topic_template_routes_each_event(broker: Tansu) -> None:
    events = real_events(300)
    sink = kafka(f"kafka:?brokers={broker.bootstrap}&eventstopic=route-{{type}}-{{namespace}}&key=namespace")
    sink.send(events)
    sink.close()
    expected: dict[str, Counter] = {}
    for e in events:
        topic = f"route-{e.type or '_'}-{e.namespace}"
        expected.setdefault(topic, Counter())[e.key] += 1
    topics = {t for t in broker.topics() if t.startswith("route-")}
    assert topics == set(expected)
    for topic, wanted in expected.items():
        records = broker.read(topic)
        got = Counter((v["uid"], v["resource_version"]) for v in (orjson.loads(r.value) for r in records))
        assert got == wanted
        assert {r.key for r in records} == {topic.split("-", 2)[2].encode()}


def test_full_librdkafka_queue_is_waited_for_not_dropped(broker: Tansu) -> None:
    events = real_events(200)
    sink = kafka(f"kafka:?brokers={broker.bootstrap}&eventstopic=tiny-queue"
                 "&librdkafka.queue.buffering.max.messages=5")
    sink.send(events)  # 40 times more than librdkafka may hold: produce hits BufferError and polls
    sink.close()
    assert Counter(r.value for r in broker.read("tiny-queue")) == Counter(orjson.dumps(e.to_dict()) for e in events)


def test_too_large_event_is_rejected_the_rest_delivered(broker: Tansu) -> None:
    small = real_events(3)
    big = replace(small[1], message="x" * 5000)
    sink = kafka(f"kafka:?brokers={broker.bootstrap}&eventstopic=sizes&librdkafka.message.max.bytes=2000")
    with pytest.raises(PartialError) as info:
        sink.send([small[0], big, small[2]])
    sink.close()
    assert info.value.rejected == [big] and info.value.retry == []
    assert str(info.value) == ("0 to retry, 1 rejected of 3 events: "
                               "Unable to produce message: Broker: Message size too large (x1)")
    delivered = sorted(r.value for r in broker.read("sizes"))
    assert delivered == sorted(orjson.dumps(e.to_dict()) for e in (small[0], small[2]))
    with pytest.raises(PermanentError):
        kafka(f"kafka:?brokers={broker.bootstrap}&eventstopic=sizes&librdkafka.message.max.bytes=2000").send([big])


def test_unreachable_broker_is_retryable_and_nothing_is_acked() -> None:
    sink = kafka(f"kafka:?brokers=127.0.0.1:{free_port()}&delivery_timeout=1s")
    events = real_events(5)
    with pytest.raises(RetryableError) as info:
        sink.send(events)
    sink.close()
    assert "5 to retry, 0 rejected of 5 events" in str(info.value)
    assert "Connection refused" in str(info.value)


def test_broker_restart_mid_stream_loses_and_duplicates_nothing() -> None:
    broker = Tansu().start()
    try:
        sink = kafka(f"kafka:?brokers={broker.bootstrap}&eventstopic=restart&delivery_timeout=1s&message_timeout=3s"
                     "&retry_backoff_max=0.3s&batch_size=50&flush_interval=0.05s")
        runner = SinkRunner.build(sink)
        router = Router([runner])
        router.start()
        events = real_events(600)
        before, during, after = events[:200], events[200:400], events[400:]
        for event in before:
            router.dispatch(event)
        wait_until(lambda: router.settled_seq() == 200, what="the first 200 events")
        assert Counter(r.value for r in broker.read("restart")) == Counter(orjson.dumps(e.to_dict()) for e in before)

        broker.stop()
        for event in during:
            router.dispatch(event)
        wait_until(lambda: runner.stats.retried >= 50, what="the router retrying while the broker is down")
        assert router.settled_seq() == 200  # nothing sent while the broker was down is acked

        broker.start()  # same port; memory storage: the new broker holds nothing of the first 200
        for event in after:
            router.dispatch(event)
        wait_until(lambda: router.settled_seq() == 600, what="every event settled after the restart")
        assert router.stop(10)
        assert runner.stats.failed == 0 and runner.stats.sent == 600
        records = broker.read("restart")
        assert Counter(r.value for r in records) == Counter(orjson.dumps(e.to_dict()) for e in during + after)
    finally:
        broker.stop()


@pytest.mark.parametrize("request_timeout", [None, 1500], ids=["broker-stalled", "librdkafka-retries-too"])
def test_broker_stall_past_the_delivery_timeout_writes_each_event_once(request_timeout: int | None) -> None:
    """Issue 14.6: a batch whose wait ran out had in fact reached the broker. The retry must not send
    it again through a new producer: each message is in the topic exactly once."""
    broker = Tansu().start()
    extra = f"&librdkafka.request.timeout.ms={request_timeout}" if request_timeout else ""
    try:
        sink = kafka(f"kafka:?brokers={broker.bootstrap}&eventstopic=stall&delivery_timeout=1s"
                     f"&retry_backoff_max=0.3s&batch_size=50&flush_interval=0.05s{extra}")
        created = []
        real_factory = sink._factory
        sink._factory = lambda config: created.append(real_factory(config)) or created[-1]
        runner = SinkRunner.build(sink)
        router = Router([runner])
        router.start()
        events = real_events(300)
        for event in events[:100]:
            router.dispatch(event)
        wait_until(lambda: router.settled_seq() == 100, what="the first 100 events")
        assert broker.proc is not None
        os.kill(broker.proc.pid, signal.SIGSTOP)  # the broker stalls: requests sit in its socket
        try:
            for event in events[100:]:
                router.dispatch(event)
            wait_until(lambda: runner.stats.retried >= 3, what="sends timing out while the broker is stalled")
            assert router.settled_seq() == 100
        finally:
            os.kill(broker.proc.pid, signal.SIGCONT)
        wait_until(lambda: router.settled_seq() == 300, what="every event settled after the stall")
        assert router.stop(10)
        assert runner.stats.failed == 0
        assert len(created) == 1  # one producer (one producer id) throughout: no new one for the retry
        records = broker.read("stall")
        assert Counter(r.value for r in records) == Counter(orjson.dumps(e.to_dict()) for e in events)
    finally:
        broker.stop()


# ---- eventrouter check and the CLI -----------------------------------------------------------

def test_check_fails_clearly_on_a_bad_broker_address(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    status = cli_main(["check", f"--sink=kafka:?brokers=127.0.0.1:{port}&delivery_timeout=2s&password={PASSWORD}"
                                "&user=u"])
    out = capsys.readouterr().out
    assert status == 1
    assert f"failed: RetryableError: cannot reach the Kafka brokers 127.0.0.1:{port} within 2s" in out
    assert "Connection refused" in out
    assert PASSWORD not in out


def test_check_send_test_delivers(broker: Tansu, capsys: pytest.CaptureFixture[str]) -> None:
    status = cli_main(["check", "--send-test", f"--sink=kafka:?brokers={broker.bootstrap}&eventstopic=check"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "open: ok" in out and "send-test: delivered" in out
    [record] = broker.read("check")
    assert orjson.loads(record.value)["reason"] == "EventrouterTest"


def test_real_events_end_to_end_through_the_cli(broker: Tansu, tmp_path: Path) -> None:
    objs = real_objects()[:300]
    source = tmp_path / "events.jsonl"
    source.write_bytes(b"".join(orjson.dumps(o) + b"\n" for o in objs))
    status = cli_main([f"--source=file:{source}", "--healthz-port=0", f"--checkpoint=file:{tmp_path / 'cp'}",
                       f"--sink=kafka:?brokers={broker.bootstrap}&eventstopic=cli-{{namespace}}&format=kube-eventer"])
    assert status == 0
    expected = Counter(kube_eventer_message(Event.from_object(o)) for o in objs)
    got: Counter[bytes] = Counter()
    for topic in {f"cli-{o['metadata']['namespace']}" for o in objs}:
        got.update(r.value for r in broker.read(topic))
    assert got == expected


def test_tick_serves_librdkafka_while_idle(caplog: pytest.LogCaptureFixture) -> None:
    """Between sends nobody else polls the producer: tick drains its log and error queue."""
    sink = kafka(f"kafka:?brokers=127.0.0.1:{free_port()}&delivery_timeout=1s&librdkafka.debug=broker")
    with pytest.raises(RetryableError):
        sink.open()
    caplog.set_level(logging.DEBUG, logger="eventrouter.sinks.kafka")
    caplog.clear()

    def ticked() -> bool:
        sink.tick()
        return "Connect to ipv4#127.0.0.1" in caplog.text

    wait_until(ticked, timeout=20, what="librdkafka's reconnect lines served by tick")
    sink.close()
    sink.tick()  # closed: nothing to serve


def test_close_reports_what_was_left(caplog: pytest.LogCaptureFixture) -> None:
    class StuckProducer:
        def flush(self, timeout: float) -> int:
            return 3

    sink = kafka("kafka:?brokers=h:9092")
    sink._producer = StuckProducer()
    with caplog.at_level(logging.WARNING, logger="eventrouter.sinks.kafka"):
        sink.close()
        sink.close()
    assert caplog.messages == ["kafka: 3 messages were not confirmed by the broker at close"]


def test_oauthbearer_config_passthrough_is_masked_everywhere() -> None:
    value = "principal=eventrouter clientSecret=oauth-SECRET-1"
    flag = f"kafka:?brokers=h:9092&librdkafka.sasl.oauthbearer.config={value.replace(' ', '%20')}"
    sink = kafka(flag)
    shown = [KafkaSink.redact(SinkURL.parse(flag)), sink.describe(), repr(sink)]
    assert all("oauth-SECRET-1" not in text for text in shown)
    assert sink.describe() == "kafka:?brokers=h:9092&librdkafka.sasl.oauthbearer.config=***"
    assert value in sink._librdkafka_log._secrets  # masked in librdkafka's log lines too
    assert sink._full_config()["sasl.oauthbearer.config"] == value
