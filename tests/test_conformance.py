"""Every registered sink, plugins included, follows the Sink contract (STYLE.md §12)."""

import socket

import pytest

from eventrouter import Sink, SinkURL, registry
from eventrouter.config import build_sink
from eventrouter.sink import CORE_OPTION_NAMES

# one valid flag per sink; every secret value contains SECRET so a leak is easy to spot
EXAMPLES = {
    "log": "log",
    "stdout": "stdout",
    "jsonfile": "jsonfile:/tmp/eventrouter-conformance.jsonl",
    "dingtalk": "dingtalk:https://oapi.dingtalk.com/robot/send?access_token=tok-SECRET-1&sign=SEC-SECRET-2",
    "wechat": "wechat:?corp_id=ww1&corp_secret=cs-SECRET-3&agent_id=1000002&to_user=a,b",
    "webhook": "webhook:https://hooks.example.com/in?password=pw-SECRET-4&username=u&level=Warning",
    "kafka": "kafka:?brokers=127.0.0.1:1&user=u&password=pw-SECRET-5&eventstopic=t",
    "elasticsearch": "elasticsearch:http://127.0.0.1:1?esUserName=u&esUserSecret=pw-SECRET-6&ver=7",
    "mysql": "mysql:?root:pw-SECRET-7@tcp(127.0.0.1:1)/kube?charset=utf8mb4&table=kube_event",
    "influxdb": "influxdb:http://127.0.0.1:1?user=u&pw=pw-SECRET-8&db=k8s",
    "s3": "s3:s3://bucket/prefix?region=us-east-1&access_key_id=AK&secret_access_key=sk-SECRET-9&store_dir=/tmp/x",
    "otlp": "otlp:https://otlp.example.com/otlp?header=Authorization=Bearer%20tok-SECRET-10&encoding=json",
    "loki": "loki:https://logs.example.net?username=123&password=pw-SECRET-11&tenant=t&static_label=job=er",
    "firehose": "firehose:k8s-events?region=us-east-1&access_key_id=AK&secret_access_key=sk-SECRET-12",
    "slack": "slack:https://hooks.slack.com/services/T000/B000/SECRET13xyzSECRET13xyz",
    "teams": "teams:https://prod-01.westus.logic.azure.com:443/workflows/0a1b/triggers/manual/paths/invoke"
             "?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=SECRET-14sig",
    "feishu": "feishu:https://open.feishu.cn/open-apis/bot/v2/hook/SECRET-15-token?secret=SECRET-16",
}

ENTRIES = registry.discover()


def test_every_registered_sink_has_an_example_here():
    assert set(ENTRIES) <= set(EXAMPLES), set(ENTRIES) - set(EXAMPLES)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("from_url must not do network I/O")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_sink_contract(name, no_network, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cls = ENTRIES[name].load()
    assert issubclass(cls, Sink)
    assert cls.name and cls.name == cls.name.lower()
    for option in cls.options:
        assert option.help, f"{name}: option {option.name} has no help"
        assert option.name not in CORE_OPTION_NAMES, f"{name} redeclares the core option {option.name}"
    sink = build_sink(EXAMPLES[name])  # validates and builds with the network refused
    shown = " ".join([cls.redact(SinkURL.parse(EXAMPLES[name])), repr(sink), sink.describe(), repr(sink.opts)])
    assert "SECRET" not in shown
    sink.close()
    sink.close()  # idempotent


@pytest.mark.parametrize("name", sorted(n for n in ENTRIES if n not in ("stdout", "jsonfile")))
def test_builtin_sinks_are_documented(name):
    import pathlib

    doc = pathlib.Path(__file__).resolve().parent.parent / "docs" / "sinks" / f"{ENTRIES[name].load().name}.md"
    assert doc.exists(), f"{doc} is missing"
    text = doc.read_text()
    for option in ENTRIES[name].load().options:
        assert option.name in text, f"{doc.name} does not document option {option.name}"
