"""The elasticsearch sink against a local server that answers like Elasticsearch 5-9 / OpenSearch 1-3."""

from __future__ import annotations

import base64
import logging
import socket
import ssl
from dataclasses import replace
from datetime import UTC, datetime

import httpx
import orjson
import pytest
import trustme

from eventrouter import PartialError, PermanentError, RetryableError, SinkConfigError, SinkURL
from eventrouter.cli import main as cli_main
from eventrouter.router import Router, SinkRunner
from sinks.elasticsearch import ElasticsearchSink
from sinks.elasticsearch._bulk import DELIVERED, REJECT, RETRY, TooLarge, classify, doc_id, item_outcome
from sinks.elasticsearch._nodes import Nodes
from tests.helpers import make_event, real_events
from tests.servers.fake_elasticsearch import FakeElasticsearch


@pytest.fixture
def start_es():
    started: list[FakeElasticsearch] = []

    def start(version: str = "8.13.4", distribution: str = "elasticsearch", **kwargs) -> FakeElasticsearch:
        server = FakeElasticsearch(version, distribution, **kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def es(start_es) -> FakeElasticsearch:
    return start_es()


def build(flag: str) -> ElasticsearchSink:
    sink = ElasticsearchSink.from_url(SinkURL.parse(flag))
    assert isinstance(sink, ElasticsearchSink)
    return sink


def lines(body: bytes) -> list[dict]:
    assert body.endswith(b"\n")
    return [orjson.loads(line) for line in body.split(b"\n")[:-1]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- flags ----------------------------------------------------------------------------------------
FLAGS = [
    # kube-eventer docs/en/elasticsearch-sink.md
    ("elasticsearch:?nodes=http://foo.com:9200&nodes=http://bar.com:9200",
     {"nodes": ["http://foo.com:9200", "http://bar.com:9200"], "index": "heapster", "ver": None}),
    ("elasticsearch:http://elasticsearch.example.com:9200?sniff=false&ver=6",
     {"sniff": False, "ver": 6, "nodes": []}),
    ("elasticsearch:http://es:9200?index=k8s&esUserName=elastic&esUserSecret=s3cret&maxRetries=3&healthCheck=false"
     "&startupHealthcheckTimeout=10&ver=7&bulkWorkers=5&cluster_name=prod&pipeline=events&use_namespace=true",
     {"index": "k8s", "esUserName": "elastic", "maxRetries": 3, "max_retries": 3, "healthCheck": False,
      "startupHealthcheckTimeout": 10.0, "ver": 7, "bulkWorkers": 5, "cluster_name": "prod", "pipeline": "events",
      "use_namespace": "true"}),
    # compat §2.5: ver 5 is kube-eventer's default; use_namespace with any value
    ("elasticsearch:http://es:9200?ver=5&use_namespace=false", {"ver": 5, "use_namespace": "false"}),
    ("elasticsearch:http://es:9200?ver=8", {"ver": 8, "template": True, "format": "json"}),
    ("elasticsearch:http://es:9200?ver=9&template=false&format=kube-eventer",
     {"ver": 9, "template": False, "format": "kube-eventer"}),
    ("elasticsearch:https://es:9200?api_key=id:key&data_stream=logs-k8s.events-default"
     "&ca_file=/etc/ssl/certs/ca-certificates.crt",
     {"data_stream": "logs-k8s.events-default", "ca_file": "/etc/ssl/certs/ca-certificates.crt"}),
    ("elasticsearch:https://es:9200?insecure_skip_verify=true&nodes=https://a:9200,https://b:9200",
     {"insecure_skip_verify": True, "nodes": ["https://a:9200", "https://b:9200"]}),
    ("elasticsearch:http://es:9200?index=k8s-{namespace}-{YYYY.MM}", {"index": "k8s-{namespace}-{YYYY.MM}"}),
    ("elasticsearch:http://es:9200", {"batch_size": 500, "flush_interval": 1.0, "max_retries": -1}),
    ("elasticsearch:http://es:9200?maxRetries=2&max_retries=7", {"maxRetries": 2, "max_retries": 7}),
]

BAD_FLAGS = [
    ("elasticsearch:?index=x", "nodes", "no Elasticsearch node"),
    ("elasticsearch:http://es:9200?ver=2", "ver", "version 2 is not supported; use 5, 6, 7, 8 or 9"),
    ("elasticsearch:http://es:9200?ver=seven", "ver", "is not an integer"),
    ("elasticsearch:http://es:9200?esUserName=elastic", "esUserSecret", "needs both"),
    ("elasticsearch:http://es:9200?esUserSecret=pw123", "esUserName", "needs both"),
    ("elasticsearch:http://es:9200?api_key=a:b&esUserName=u&esUserSecret=pw123", "api_key", "either"),
    ("elasticsearch:http://es:9200?index=Heapster", "index", "not a valid index name"),
    ("elasticsearch:http://es:9200?index=_x", "index", "not a valid index name"),
    ("elasticsearch:http://es:9200?index=k8s-{weekday}", "index", "unknown placeholder {weekday}"),
    ("elasticsearch:http://es:9200?format=logstash", "format", "one of json, kube-eventer"),
    ("elasticsearch:http://es:9200?data_stream=k8s&ver=6", "data_stream", "7.9 or later"),
    ("elasticsearch:?nodes=es:9200", "nodes", "not an http:// or https:// URL"),
    ("elasticsearch:https://es:9200?ca_file=/nonexistent/ca.pem", "ca_file", "not a readable file"),
    ("elasticsearch:http://es:9200?healthCheck=maybe", "healthCheck", "true or false"),
    ("elasticsearch:http://es:9200?sniffing=false", "sniffing", "unknown option"),
]


@pytest.mark.parametrize(("flag", "expected"), FLAGS)
def test_flags(flag, expected):
    sink = build(flag)
    for key, value in expected.items():
        assert sink.opts[key] == value, key


@pytest.mark.parametrize(("flag", "option", "text"), BAD_FLAGS)
def test_bad_flags(flag, option, text):
    with pytest.raises(SinkConfigError) as info:
        build(flag)
    assert info.value.sink == "elasticsearch"
    assert info.value.option == option
    assert text in str(info.value)


def test_from_url_does_no_io():
    port = free_port()  # nothing listens: building must not connect
    build(f"elasticsearch:http://127.0.0.1:{port}?ver=8").close()


# ---- secrets --------------------------------------------------------------------------------------
def test_redacted_round_trip(start_es, caplog):
    server = start_es(user="elastic", password="pw-basic-1")
    flag = (f"elasticsearch:?nodes=http://elastic:pw-url-2@127.0.0.1:{free_port()}&nodes={server.url}"
            "&esUserName=elastic&esUserSecret=pw-basic-1&ver=8")
    sink = build(flag)
    redacted = ElasticsearchSink.redact(SinkURL.parse(flag))
    assert "esUserSecret=***" in redacted and "elastic:***@127.0.0.1" in redacted
    caplog.set_level(logging.DEBUG)
    with pytest.raises(RetryableError) as info:  # the first node is down
        sink.send([make_event(1)])
    sink.send([make_event(1)])  # fails over to the second node
    assert len(server.all_docs()) == 1
    bad = build(f"elasticsearch:{server.url}?api_key=id:pw-key-3&ver=8")
    with pytest.raises(PermanentError) as denied:
        bad.send([make_event(2)])
    api = build("elasticsearch:http://u:pw-url-4@es:9200?api_key=pw-key-5")
    texts = [redacted, repr(sink), str(info.value), str(denied.value), repr(bad), repr(api), api.describe(),
             caplog.text]
    for secret in ("pw-basic-1", "pw-url-2", "pw-key-3", "pw-url-4", "pw-key-5"):
        for text in texts:
            assert secret not in text
    sink.close()
    bad.close()


def test_bad_node_url_error_hides_the_password():
    with pytest.raises(SinkConfigError) as info:
        build("elasticsearch:?nodes=elastic:pw-hidden-9@es:9200")
    assert "pw-hidden-9" not in str(info.value) and "***@es:9200" in str(info.value)


# ---- classification -------------------------------------------------------------------------------
OK_BODY = b'{"took":3,"errors":false,"items":[{"index":{"_index":"x","_id":"1","status":201,"result":"created"}}]}'
CLASSIFY = [
    (200, OK_BODY, {}, "items"),
    (200, b'{"took":1,"errors":true,"items":[{"index":{"status":429}}]}', {}, "items"),
    (429, b'{"error":{"type":"es_rejected_execution_exception"},"status":429}', {"Retry-After": "7"}, RetryableError),
    (500, b"{}", {}, RetryableError),
    (502, b"bad gateway", {}, RetryableError),
    (503, b'{"error":{"type":"unavailable_shards_exception"},"status":503}', {}, RetryableError),
    (504, b"", {}, RetryableError),
    (400, b'{"error":{"type":"illegal_argument_exception","reason":"terminated by a newline"}}', {}, PermanentError),
    (401, b'{"error":{"type":"security_exception"}}', {}, PermanentError),
    (403, b'{"error":{"type":"security_exception"}}', {}, PermanentError),
    (404, b'{"error":"index_not_found_exception"}', {}, PermanentError),
    (413, b"", {}, TooLarge),
    (200, b"<html>proxy</html>", {}, PermanentError),
]


@pytest.mark.parametrize(("status", "body", "headers", "expected"), CLASSIFY)
def test_classify(status, body, headers, expected):
    if expected == "items":
        assert classify(status, body, httpx.Headers(headers))
        return
    with pytest.raises(expected) as info:
        classify(status, body, httpx.Headers(headers))
    if headers.get("Retry-After"):
        assert info.value.retry_after == 7.0


ITEMS = [
    ("index", {"status": 201, "result": "created"}, DELIVERED),
    ("index", {"status": 200, "result": "updated"}, DELIVERED),
    ("create", {"status": 409, "error": {"type": "version_conflict_engine_exception"}}, DELIVERED),
    ("index", {"status": 409, "error": {"type": "version_conflict_engine_exception"}}, REJECT),
    ("index", {"status": 429, "error": {"type": "es_rejected_execution_exception"}}, RETRY),
    ("index", {"status": 500, "error": {"type": "exception"}}, RETRY),
    ("index", {"status": 503, "error": {"type": "unavailable_shards_exception"}}, RETRY),
    ("index", {"status": 400, "error": {"type": "document_parsing_exception"}}, REJECT),
    ("index", {"status": 404, "error": {"type": "index_not_found_exception"}}, REJECT),
]


@pytest.mark.parametrize(("op", "item", "expected"), ITEMS)
def test_item_outcome(op, item, expected):
    assert item_outcome(op, item) == expected


# ---- exact request bodies -------------------------------------------------------------------------
def test_json_body_es8(es):
    sink = build(f"elasticsearch:{es.url}")
    event = make_event(3)
    sink.send([event])
    request = es.bulk_requests()[-1]
    assert request.headers["content-type"] == "application/x-ndjson"
    assert lines(request.body) == [
        {"index": {"_index": "heapster-2026.04.14", "_id": "00000000-0000-4000-8000-000000000003-1003-1"}},
        {"uid": "00000000-0000-4000-8000-000000000003", "resource_version": "1003", "cluster": "default",
         "namespace": "default", "name": "app-3.17a0b0c0d0e0f000", "type": "Warning", "reason": "BackOff",
         "message": "Back-off restarting failed container app in pod app-3", "count": 1,
         "first_timestamp": "2026-04-14T09:30:03Z", "last_timestamp": "2026-04-14T09:30:03Z",
         "involved_object": {"kind": "Pod", "namespace": "default", "name": "app-3",
                             "uid": "11111111-0000-4000-8000-000000000003", "api_version": "v1", "field_path": ""},
         "source_component": "kubelet", "source_host": "node-1", "reporting_controller": "",
         "reporting_instance": "", "action": ""},
    ]
    assert request.body == sink.bulk_body([event])
    assert es.docs["heapster-2026.04.14"][doc_id(event)]["uid"] == event.uid


def test_typed_actions_es6_and_kube_eventer_format(start_es):
    es6 = start_es("6.8.23")
    sink = build(f"elasticsearch:{es6.url}?format=kube-eventer&cluster_name=prod")
    event = make_event(4)
    sink.send([event])
    action, _ = lines(es6.bulk_requests()[-1].body)
    assert action == {"index": {"_index": "heapster-2026.04.14", "_type": "events",
                                "_id": "00000000-0000-4000-8000-000000000004-1004-1"}}
    expected = (
        '{"Count":1,"Metadata":{"name":"app-4.17a0b0c0d0e0f000","namespace":"default",'
        '"uid":"00000000-0000-4000-8000-000000000004","resourceVersion":"1004","creationTimestamp":"2026-04-14T09:30:04Z"},'
        '"InvolvedObject":{"kind":"Pod","namespace":"default","name":"app-4",'
        '"uid":"11111111-0000-4000-8000-000000000004","apiVersion":"v1"},'
        '"Source":{"component":"kubelet","host":"node-1"},'
        '"FirstOccurrenceTimestamp":"2026-04-14T09:30:04Z","LastOccurrenceTimestamp":"2026-04-14T09:30:04Z",'
        '"Message":"Back-off restarting failed container app in pod app-4","Reason":"BackOff","Type":"Warning",'
        '"EventTags":{"cluster_name":"prod","eventID":"00000000-0000-4000-8000-000000000004","hostname":"node-1",'
        '"pod_id":"11111111-0000-4000-8000-000000000004","pod_name":"app-4"}}'
    )
    assert es6.bulk_requests()[-1].body.split(b"\n")[1].decode() == expected
    # json format on 6 uses the _doc type
    json_sink = build(f"elasticsearch:{es6.url}?index=k8s")
    json_sink.send([make_event(5)])
    assert lines(es6.bulk_requests()[-1].body)[0]["index"]["_type"] == "_doc"


def test_kube_eventer_doc_of_a_real_event_keeps_go_shapes(es):
    event = real_events(2)[1]
    build(f"elasticsearch:{es.url}?format=kube-eventer").send([event])
    doc = lines(es.bulk_requests()[-1].body)[1]
    assert list(doc) == ["Count", "Metadata", "InvolvedObject", "Source", "FirstOccurrenceTimestamp",
                         "LastOccurrenceTimestamp", "Message", "Reason", "Type", "EventTags"]
    assert doc["Metadata"] == event.raw["metadata"]
    assert doc["InvolvedObject"] == event.raw["involvedObject"]
    assert doc["InvolvedObject"]["fieldPath"] == "spec.containers{crashpod}"
    assert doc["Source"] == {"component": "kubelet", "host": "minikube"}
    assert doc["LastOccurrenceTimestamp"] == "2023-07-10T05:31:45Z"
    assert doc["EventTags"]["hostname"] == "minikube"


def test_fraction_of_seconds_as_go_writes_it(es):
    when = datetime(2026, 4, 14, 9, 30, 0, 694000, tzinfo=UTC)
    build(f"elasticsearch:{es.url}?format=kube-eventer").send([make_event(1, last_timestamp=when)])
    assert lines(es.bulk_requests()[-1].body)[1]["LastOccurrenceTimestamp"] == "2026-04-14T09:30:00.694Z"


# ---- versions and templates -----------------------------------------------------------------------
VERSIONS = [
    ("5.6.16", "elasticsearch", "/_template/heapster", True),
    ("6.8.23", "elasticsearch", "/_template/heapster", True),
    ("7.5.2", "elasticsearch", "/_template/heapster", False),
    ("7.17.21", "elasticsearch", "/_index_template/heapster", False),
    ("8.13.4", "elasticsearch", "/_index_template/heapster", False),
    ("9.0.1", "elasticsearch", "/_index_template/heapster", False),
    ("1.3.14", "opensearch", "/_index_template/heapster", False),
    ("2.11.0", "opensearch", "/_index_template/heapster", False),
]


@pytest.mark.parametrize(("version", "distribution", "template", "typed"), VERSIONS)
def test_versions_detected_from_banner(start_es, version, distribution, template, typed):
    server = start_es(version, distribution)
    sink = build(f"elasticsearch:{server.url}")
    events = real_events(40)
    sink.send(events)
    assert [r.path for r in server.requests] == ["/", template, "/_bulk"]
    body = server.templates[template]
    mappings = body["template"]["mappings"] if "_index_template" in template else body["mappings"]
    if typed:
        mappings = mappings["_doc"]
    assert mappings["properties"]["message"]["type"] == "text"
    assert mappings["properties"]["last_timestamp"] == {"type": "date"}
    assert mappings["properties"]["namespace"] == {"type": "keyword"}
    assert ("template" if version.startswith("5") else "index_patterns") in body
    assert all(("_type" in a["index"]) == typed for a in lines(server.bulk_requests()[0].body)[::2])
    assert sum(len(v) for v in server.docs.values()) == 40
    sink.send(events)  # set-up happens once; the same events overwrite the same documents
    assert [r.path for r in server.requests][3:] == ["/_bulk"]
    assert sum(len(v) for v in server.docs.values()) == 40


def test_explicit_ver_skips_detection_and_template_false_skips_put(es):
    sink = build(f"elasticsearch:{es.url}?ver=8&template=false&healthCheck=false")
    sink.open()
    sink.send([make_event(1)])
    assert [r.path for r in es.requests] == ["/_bulk"]
    build(f"elasticsearch:{es.url}?ver=8&template=false").open()  # healthCheck (default): GET / must answer
    assert [r.path for r in es.requests] == ["/_bulk", "/"]


@pytest.mark.parametrize("version", ["8.13.4", "9.0.1"])
@pytest.mark.parametrize("fmt", ["json", "kube-eventer"])
def test_banner_forbidden_on_es8_and_9_writes_typeless_and_loses_nothing(start_es, caplog, version, fmt):
    server = start_es(version)
    server.banner_status = 403  # an API key without the monitor privilege
    sink = build(f"elasticsearch:{server.url}?format={fmt}")
    sink.open()
    events = real_events(60)
    sink.send(events)
    assert "GET / answered HTTP 403 without a version" in caplog.text
    assert [r.path for r in server.requests[:2]] == ["/", "/_index_template/heapster"]
    body = server.templates["/_index_template/heapster"]
    assert body["template"]["aliases"] == {"heapster-events": {}}  # kube-eventer's alias on every new index
    actions = lines(server.bulk_requests()[0].body)[::2]
    assert all("_type" not in a["index"] for a in actions)
    assert len(server.bulk_requests()) == 1
    assert sorted(server.writes.values()) == [1] * len({doc_id(e) for e in events})


@pytest.mark.parametrize(("version", "template_path"), [("6.8.23", "/_template/heapster"),
                                                          ("5.6.16", "/_template/heapster")])
def test_banner_forbidden_on_es5_and_6_learns_the_type_from_the_template(start_es, version, template_path):
    server = start_es(version)
    server.banner_status = 403
    sink = build(f"elasticsearch:{server.url}?format=kube-eventer")
    sink.send([make_event(1), make_event(2)])
    assert list(server.templates) == [template_path]
    assert server.templates[template_path]["mappings"]["events"]["properties"]["Count"] == {"type": "long"}
    assert server.templates[template_path]["aliases"] == {"heapster-events": {}}
    assert [a["index"]["_type"] for a in lines(server.bulk_requests()[0].body)[::2]] == ["events", "events"]
    assert len(server.all_docs()) == 2


def test_banner_forbidden_on_es6_without_template_switches_when_the_bulk_asks_for_a_type(start_es, caplog):
    server = start_es("6.8.23")
    server.banner_status = 403
    sink = build(f"elasticsearch:{server.url}?template=false")
    sink.send([make_event(1)])
    first, second = server.bulk_requests()
    assert "_type" not in lines(first.body)[0]["index"]  # refused: "type is missing"
    assert lines(second.body)[0]["index"]["_type"] == "_doc"
    assert "refused the bulk format without a mapping type" in caplog.text
    assert len(server.all_docs()) == 1
    sink.send([make_event(2)])  # from then on in the server's format at once
    assert len(server.bulk_requests()) == 3 and len(server.all_docs()) == 2


def test_wrong_ver_is_corrected_by_the_server_answer_not_dropped(start_es, caplog):
    server = start_es("8.13.4")
    sink = build(f"elasticsearch:{server.url}?ver=5&template=false&healthCheck=false")
    sink.send([make_event(1)])
    assert "_type" in lines(server.bulk_requests()[0].body)[0]["index"]
    assert "_type" not in lines(server.bulk_requests()[1].body)[0]["index"]
    assert "unknown parameter [_type]" in caplog.text and "ver= names a version" in caplog.text
    assert len(server.all_docs()) == 1


def test_a_server_refusing_both_formats_is_a_loud_permanent_error(start_es):
    class Contrary(FakeElasticsearch):
        typed = True  # wants a mapping type, yet refuses _type as 8 does: neither format can pass

    server = Contrary("8.13.4").start()
    try:
        sink = build(f"elasticsearch:{server.url}?template=false")
        with pytest.raises(PermanentError, match="refuses both bulk formats"):
            sink.send([make_event(1)])
        assert len(server.bulk_requests()) == 3 and server.all_docs() == []
    finally:
        server.stop()


def test_no_alias_for_patterns_and_data_streams(es):
    build(f"elasticsearch:{es.url}?index=k8s-{{YYYY.MM}}").open()
    build(f"elasticsearch:{es.url}?data_stream=logs-k8s-default").open()
    assert all("aliases" not in body.get("template", {}) for body in es.templates.values())


def test_old_elasticsearch_is_refused(start_es):
    server = start_es("2.4.6")
    with pytest.raises(PermanentError, match=r"Elasticsearch 2\.4 is not supported"):
        build(f"elasticsearch:{server.url}").send([make_event(1)])


def test_open_checks_and_installs_template(es):
    sink = build(f"elasticsearch:{es.url}?format=kube-eventer&index=k8s")
    sink.open()
    body = es.templates["/_index_template/k8s"]
    assert body["index_patterns"] == ["k8s-*"]
    assert body["template"]["mappings"]["properties"]["LastOccurrenceTimestamp"] == {"type": "date"}
    assert body["template"]["mappings"]["properties"]["Message"]["type"] == "text"
    sink.send([make_event(1)])
    assert [r.path for r in es.requests] == ["/", "/_index_template/k8s", "/_bulk"]


def test_template_refused_in_send_is_logged_and_writes_go_on(es, caplog):
    es.template_status = 403  # e.g. a user without the manage_index_templates privilege
    sink = build(f"elasticsearch:{es.url}")
    with pytest.raises(PermanentError, match="403"):
        sink.open()  # eventrouter check shows the problem
    sink.send([make_event(1)])
    assert "could not install the index template" in caplog.text
    assert len(es.all_docs()) == 1


# ---- auth -----------------------------------------------------------------------------------------
def test_basic_auth_header(start_es):
    server = start_es(user="elastic", password="changeme")
    build(f"elasticsearch:{server.url}?esUserName=elastic&esUserSecret=changeme").send([make_event(1)])
    expected = "Basic " + base64.b64encode(b"elastic:changeme").decode()
    assert {r.headers["authorization"] for r in server.requests} == {expected}
    assert len(server.all_docs()) == 1


def test_userinfo_in_node_url_is_basic_auth(start_es):
    server = start_es(user="elastic", password="changeme")
    host = server.url.removeprefix("http://")
    build(f"elasticsearch:?nodes=http://elastic:changeme@{host}").send([make_event(1)])
    assert len(server.all_docs()) == 1


@pytest.mark.parametrize("given", ["VnVpQ2ZHOkJlQ3ZHVFJTWWQ=", "VuiCfG:BeCvGTRSYd"])
def test_api_key_header(start_es, given):
    server = start_es(api_key="VnVpQ2ZHOkJlQ3ZHVFJTWWQ=")
    build(f"elasticsearch:{server.url}?api_key={given}").send([make_event(1)])
    assert {r.headers["authorization"] for r in server.requests} == {"ApiKey VnVpQ2ZHOkJlQ3ZHVFJTWWQ="}


def test_wrong_password_is_permanent(start_es):
    server = start_es(user="elastic", password="changeme")
    with pytest.raises(PermanentError, match="401"):
        build(f"elasticsearch:{server.url}?esUserName=elastic&esUserSecret=wrong").send([make_event(1)])


# ---- index names ----------------------------------------------------------------------------------
INDEX_NAMES = [
    ("", make_event(1), "heapster-2026.04.14"),
    ("index=k8s-events", make_event(1), "k8s-events-2026.04.14"),
    ("use_namespace=1", make_event(1, namespace="kube-system"), "heapster-kube-system-2026.04.14"),
    ("use_namespace=", make_event(1, namespace=""), "heapster-2026.04.14"),
    ("index=k8s-{YYYY.MM}", make_event(1), "k8s-2026.04"),
    ("index=k8s-{namespace}-{YYYY-MM-DD}", make_event(1, namespace="prod"), "k8s-prod-2026-04-14"),
    ("index=k8s-{cluster}-{YYYY.MM.DD.HH}&cluster_name=East", make_event(1), "k8s-east-2026.04.14.09"),
    ("index=k8s-events{}", make_event(1), "k8s-events"),
    ("data_stream=k8s-events", make_event(1), "k8s-events"),
]


@pytest.mark.parametrize(("query", "event", "expected"), INDEX_NAMES)
def test_index_names(es, query, event, expected):
    # the date is the event's last time in UTC, not the local time or now
    event = replace(event, last_timestamp=datetime.fromisoformat("2026-04-14T11:30:00+02:00"))
    sink = build(f"elasticsearch:{es.url}?{query}")
    assert sink.index_for(event) == expected
    sink.send([event])
    assert doc_id(event) in es.docs[expected]


@pytest.mark.parametrize(("query", "cluster", "expected"), [
    ("", "", "default"),  # kube-eventer's default
    ("", "lab", "lab"),  # --cluster-name
    ("cluster_name=prod", "lab", "prod"),  # the sink's own option wins
])
def test_cluster_name(es, query, cluster, expected):
    event = make_event(1, cluster=cluster)
    build(f"elasticsearch:{es.url}?{query}").send([event])
    build(f"elasticsearch:{es.url}?format=kube-eventer&index=ke&{query}").send([event])
    assert es.docs["heapster-2026.04.14"][doc_id(event)]["cluster"] == expected
    assert es.docs["ke-2026.04.14"][doc_id(event)]["EventTags"]["cluster_name"] == expected


def test_pipeline_query(es):
    build(f"elasticsearch:{es.url}?pipeline=k8s-enrich").send([make_event(1)])
    assert es.bulk_requests()[-1].query == "pipeline=k8s-enrich"


# ---- data streams ---------------------------------------------------------------------------------
def test_data_stream_create_and_conflict_is_success(es):
    sink = build(f"elasticsearch:{es.url}?data_stream=logs-k8s.events-default")
    sink.send([make_event(1)])
    template = es.templates["/_index_template/logs-k8s.events-default"]
    assert template["data_stream"] == {} and template["index_patterns"] == ["logs-k8s.events-default"]
    assert template["template"]["mappings"]["properties"]["@timestamp"] == {"type": "date"}
    sink.send([make_event(1), make_event(2)])  # event 1 again: 409 from the data stream = already written
    action, source = lines(es.bulk_requests()[0].body)
    assert action == {"create": {"_index": "logs-k8s.events-default",
                                 "_id": "00000000-0000-4000-8000-000000000001-1001-1"}}
    assert list(source)[:2] == ["@timestamp", "uid"] and source["@timestamp"] == "2026-04-14T09:30:01Z"
    assert sorted(es.docs["logs-k8s.events-default"]) == [doc_id(make_event(1)), doc_id(make_event(2))]


def test_data_stream_refuses_index_op(es):
    # the rule the sink follows: index ops are 400 on a data stream
    sink = build(f"elasticsearch:{es.url}?data_stream=k8s")
    sink.open()
    _, body = es.bulk("/_bulk", b'{"index":{"_index":"k8s"}}\n{"@timestamp":"2026-01-01T00:00:00Z"}\n')
    assert body["errors"] is True
    assert body["items"][0]["index"]["error"]["reason"] == (
        "only write ops with an op_type of create are allowed in data streams")


# ---- failures -------------------------------------------------------------------------------------
def test_partial_failure_retries_only_429_and_5xx_items(es):
    sink = build(f"elasticsearch:{es.url}")
    events = [make_event(n) for n in range(6)]
    es.fail_item(doc_id(events[1]), 429)
    es.fail_item(doc_id(events[2]), 503)
    es.fail_item(doc_id(events[4]), 400)
    with pytest.raises(PartialError) as info:
        sink.send(events)
    assert info.value.retry == [events[1], events[2]]
    assert info.value.rejected == [events[4]]
    assert "3 of 6 documents written, 2 to retry, 1 rejected" in str(info.value)
    assert "400 document_parsing_exception: [1:42] failed to parse field [count]" in str(info.value)
    sink.send(info.value.retry)
    assert sorted(es.docs["heapster-2026.04.14"]) == sorted(doc_id(e) for i, e in enumerate(events) if i != 4)


def test_request_level_429_and_503_are_retryable(es):
    sink = build(f"elasticsearch:{es.url}?ver=8&template=false")
    es.fail_request(429, headers={"Retry-After": "3"})
    with pytest.raises(RetryableError) as info:
        sink.send([make_event(1)])
    assert info.value.retry_after == 3.0
    es.fail_request(503)
    with pytest.raises(RetryableError, match="503"):
        sink.send([make_event(1)])
    sink.send([make_event(1)])
    assert len(es.all_docs()) == 1


def test_request_too_large_is_split(start_es):
    events = [make_event(n) for n in range(8)]
    one = len(build("elasticsearch:http://x?ver=8").bulk_body(events[:1]))
    server = start_es(max_content_length=one * 3)
    sink = build(f"elasticsearch:{server.url}?ver=8&template=false")
    sink.send(events)
    sizes = [len(lines(r.body)) // 2 for r in server.bulk_requests() if r.body.count(b"\n") <= 6]
    assert sorted(sizes) == [2, 2, 2, 2]
    assert sorted(server.docs["heapster-2026.04.14"]) == sorted(doc_id(e) for e in events)


def test_single_document_too_large_is_rejected(start_es):
    small = make_event(1, message="x")
    big = make_event(2, message="x" * 500)
    server = start_es(max_content_length=len(build("elasticsearch:http://x?ver=8").bulk_body([small])) + 10)
    sink = build(f"elasticsearch:{server.url}?ver=8&template=false")
    with pytest.raises(PartialError) as info:
        sink.send([small, big])
    assert info.value.rejected == [big] and info.value.retry == []
    assert list(server.docs["heapster-2026.04.14"]) == [doc_id(small)]


def test_connection_refused_is_retryable():
    sink = build(f"elasticsearch:http://127.0.0.1:{free_port()}?ver=8")
    with pytest.raises(RetryableError, match="cannot reach") as info:
        sink.send([make_event(1)])
    assert info.value.retry_after is None  # no other node to fail over to


def test_node_failover_and_round_robin(start_es):
    a, b = start_es(), start_es()
    dead = f"http://127.0.0.1:{free_port()}"
    sink = build(f"elasticsearch:?nodes={dead}&nodes={a.url}&nodes={b.url}&ver=8&template=false")
    with pytest.raises(RetryableError) as info:
        sink.send([make_event(0)])
    assert info.value.retry_after == 0.0  # other nodes are up: the router retries at once
    for n in range(1, 5):
        sink.send([make_event(n)])
    # the dead node is skipped; a and b take turns
    assert len(a.bulk_requests()) == 2 and len(b.bulk_requests()) == 2


def test_nodes_cooldown():
    now = [100.0]
    nodes = Nodes(["a", "b"], clock=lambda: now[0])
    assert [nodes.pick() for _ in range(3)] == ["a", "b", "a"]
    nodes.failed("a")
    assert [nodes.pick() for _ in range(3)] == ["b", "b", "b"]
    nodes.failed("b")
    assert nodes.pick() == "a"  # all failed: the one that failed longest ago
    now[0] += 31
    assert nodes.any_healthy()


# ---- end to end -----------------------------------------------------------------------------------
def test_router_end_to_end_every_event_indexed_exactly_once(es, caplog):
    events = real_events(300)
    es.fail_item(doc_id(events[5]), 429, 429)
    es.fail_item(doc_id(events[77]), 503)
    es.fail_item(doc_id(events[200]), 400)
    es.fail_request(503)
    sink = build(f"elasticsearch:{es.url}?batch_size=100&flush_interval=50ms&retry_backoff_max=50ms")
    runner = SinkRunner.build(sink)
    router = Router([runner])
    router.start()
    for event in events:
        router.dispatch(event)
    assert router.stop(20)
    stored = {i: d for index in es.docs.values() for i, d in index.items()}
    expected = {doc_id(e) for n, e in enumerate(events) if n != 200}
    assert set(stored) == expected
    assert all(count == 1 for count in es.writes.values())  # nothing written twice
    assert runner.stats.sent == 299 and runner.stats.failed == 1
    assert "first error: 400 document_parsing_exception" in caplog.text  # one sample of the rejected item
    assert router.settled_seq() == 300


def test_cli_end_to_end(es, tmp_path, capsys):
    path = tmp_path / "events.jsonl"
    objs = [e.raw for e in real_events(50)]
    path.write_bytes(b"".join(orjson.dumps(o) + b"\n" for o in objs))
    status = cli_main([f"--source=file:{path}", "--healthz-port=0", "--cluster-name=lab",
                       f"--sink=elasticsearch:{es.url}?index=k8s&use_namespace=true&level=Warning"])
    assert status == 0
    warnings = [e for e in real_events(50) if e.type == "Warning"]
    docs = es.all_docs()
    assert len(docs) == len(warnings) > 0
    assert {d["cluster"] for d in docs} == {"lab"}
    assert set(es.docs) == {f"k8s-{e.namespace}-{e.last_timestamp:%Y.%m.%d}" for e in warnings}


def test_tls_with_ca_file(start_es, tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    server = start_es(ssl_context=context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    build(f"elasticsearch:{server.url}?ca_file={ca_file}").send([make_event(1)])
    build(f"elasticsearch:{server.url}?insecure_skip_verify=true").send([make_event(2)])
    with pytest.raises(RetryableError):
        build(f"elasticsearch:{server.url}").send([make_event(3)])  # unknown CA
    assert len(server.all_docs()) == 2
