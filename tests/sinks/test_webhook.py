"""Webhook sink: flags, redaction, classification, real requests to a local HTTP(S) receiver, templates
(incl. the Slack and Feishu examples in docs/templates), the kube-eventer ConfigMap, and the router."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

import httpx
import orjson
import pytest

from eventrouter import PartialError, PermanentError, RetryableError, SinkConfigError, SinkURL
from eventrouter.cli import main as cli_main
from eventrouter.router import Router, SinkRunner
from sinks.webhook import WebhookSink
from sinks.webhook._reply import SuccessField
from tests.helpers import make_event, real_objects
from tests.servers.fake_webhook import FakeKubeAPI, FakeWebhook, Reply, TLSFiles

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "docs" / "templates"
TRICKY = 'Back-off "restarting" failed container\nline 2\ttab \\ backslash <b>&</b> ✓ 中文 😀'
KUBE_EVENTER_DEFAULT = (
    '\n{\n\t"EventType": "{{ .Type }}",\n\t"EventKind": "{{ .InvolvedObject.Kind }}",\n'
    '\t"EventReason": "{{ .Reason }}",\n\t"EventTime": "{{ .LastTimestamp }}",\n'
    '\t"EventMessage": "{{ .Message }}"\n}'
)


def build(flag: str, environ: dict[str, str] | None = None) -> WebhookSink:
    sink = WebhookSink.from_url(SinkURL.parse(flag, environ=environ or {}))
    assert isinstance(sink, WebhookSink)
    return sink


@pytest.fixture
def hook():
    server = FakeWebhook().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return TLSFiles.create(tmp_path_factory.mktemp("tls"))


# ---- flags ------------------------------------------------------------------------------------

DINGTALK_TOKEN = "a5c19f3e02feba7bd5dfc22bfb04afa212359acfe86fd80eb159187097b7d014"
CM = "&custom_body_configmap=custom-body&custom_body_configmap_namespace=kube-system"
FLAGS = [
    # every webhook example of kube-eventer's docs/en/webhook-sink.md
    (
        f"webhook:https://oapi.dingtalk.com/robot/send?access_token={DINGTALK_TOKEN}&level=Normal&namespaces=a,b"
        "&kinds=c,d&header=contentType=customContentType&header=customHeaderKey=customHeaderValue",
        {"target": f"https://oapi.dingtalk.com/robot/send?access_token={DINGTALK_TOKEN}", "method": "POST",
         "level": ["Normal"], "namespaces": ["a", "b"], "kinds": ["c", "d"],
         "headers": {"Content-Type": "application/json", "contentType": "customContentType",
                     "customHeaderKey": "customHeaderValue"}},
    ),
    (
        "webhook:https://oapi.dingtalk.com/robot/send?access_token=token&level=Normal&kinds=Pod"
        f"&header=Content-Type=application/json{CM}&method=POST",
        {"target": "https://oapi.dingtalk.com/robot/send?access_token=token", "method": "POST", "kinds": ["Pod"],
         "custom_body_configmap": "custom-body", "custom_body_configmap_namespace": "kube-system"},
    ),
    (
        "webhook:http://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=633a31f6-7f9c-4bc4-97a0-0ec1eefa5898"
        f"&level=Normal&kinds=Pod&header=Content-Type=application/json{CM}&method=POST",
        {"target": "http://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=633a31f6-7f9c-4bc4-97a0-0ec1eefa5898",
         "level": ["Normal"]},
    ),
    (
        "webhook:https://hooks.slack.com/services/d/B00000000/XXX?&level=Normal&kinds=Pod"
        f"&header=Content-Type=application/json{CM}&method=POST",
        {"target": "https://hooks.slack.com/services/d/B00000000/XXX", "method": "POST"},
    ),
    (
        "webhook:https://hook.bearychat.com/=bwIsS/incoming/xxxxxxxxxxxxxxxxxxxxxx?&level=Normal&kinds=Pod"
        f"&header=Content-Type=application/json{CM}&method=POST",
        {"target": "https://hook.bearychat.com/=bwIsS/incoming/xxxxxxxxxxxxxxxxxxxxxx"},
    ),
    (
        "webhook:https://open.feishu.cn/open-apis/bot/hook/xxxxxxxxxxxxxxxxxxxxxxxxxx?level=Warning&method=POST"
        f"&header=Content-Type=application/json{CM}",
        {"target": "https://open.feishu.cn/open-apis/bot/hook/xxxxxxxxxxxxxxxxxxxxxxxxxx", "level": ["Warning"]},
    ),
    (
        "webhook:https://open.feishu.cn/open-apis/bot/v2/hook/xxxxxxxxxxxxxxxxxxxxxxxxxx?level=Warning&method=POST"
        f"&header=Content-Type=application/json{CM}",
        {"target": "https://open.feishu.cn/open-apis/bot/v2/hook/xxxxxxxxxxxxxxxxxxxxxxxxxx"},
    ),
    # kube-eventer's reason= is the core's reasons=; method is case-insensitive
    ("webhook:http://h/x?reason=OOM&reason=BackOff&method=put", {"reasons": ["OOM", "BackOff"], "method": "PUT"}),
    # ours
    ("webhook:https://h:8443/p?a=1&b=2&timeout=2s&batch=true",
     {"target": "https://h:8443/p?a=1&b=2", "timeout": 2.0, "batch": True, "batch_size": 100}),
    ("webhook:https://h/p?batch=true&batch_size=7", {"batch_size": 7}),
    ("webhook:https://h/p", {"batch": False, "batch_size": 1, "method": "POST", "target": "https://h/p"}),
    ("webhook:https://h/p?content_type=text/plain&template=hi", {"headers": {"Content-Type": "text/plain",
                                                                               "User-Agent": "eventrouter"}}),
    ("webhook:https://h/p?header=content-type=application/x-ndjson",
     {"headers": {"content-type": "application/x-ndjson", "User-Agent": "eventrouter"}}),
    ("webhook:https://h/p?header=X-Query=a=b,c", {"headers": {"X-Query": "a=b,c"}}),
    ("webhook:https://h/p?header=X-Key=$KEY", {"headers": {"X-Key": "from-env"}}),
    ("webhook:https://$HOOK_HOST/p", {"target": "https://hooks.internal/p"}),
    ("webhook:https://h/p?bearer_token=$TOKEN", {"headers": {"Authorization": "Bearer from-env"}}),
    ("webhook:https://h/p?success_field=code:0", {"success": SuccessField("code", "0")}),
    ("webhook:https://h/p?success_field=ok", {"success": SuccessField("ok", "true")}),
    ("webhook:https://h/p?success_field=status:OK:done", {"success": SuccessField("status", "OK:done")}),
    ("webhook:https://h/p", {"success": None}),
]
ENVIRON = {"KEY": "from-env", "TOKEN": "from-env", "HOOK_HOST": "hooks.internal"}


@pytest.mark.parametrize(("flag", "expected"), FLAGS)
def test_flags(flag, expected):
    sink = build(flag, ENVIRON)
    for key, value in expected.items():
        if key == "target":
            assert sink.target == value
        elif key == "method":
            assert sink.method == value
        elif key == "headers":
            assert {k: v for k, v in sink.headers.items() if k in value} == value
        elif key == "success":
            assert sink.success == value
        else:
            assert sink.opts[key] == value, key


BAD_FLAGS = [
    ("webhook:", None, "needs an http:// or https:// URL"),
    ("webhook:?method=POST", None, "needs an http:// or https:// URL"),
    ("webhook:ftp://h/p", None, "needs an http:// or https:// URL"),
    ("webhook:https://h/p?method=DELETE", "method", "one of POST, PUT, PATCH, GET"),
    ("webhook:https://h/p?header=novalue", "header", "expected header=Name=Value"),
    ("webhook:https://h/p?header==v", "header", "expected header=Name=Value"),
    ("webhook:https://h/p?header=Bad Name=v", "header", "expected header=Name=Value"),
    ("webhook:https://h/p?batch=maybe", "batch", "true or false"),
    ("webhook:https://h/p?timeout=soon", "timeout", "duration"),
    ("webhook:https://h/p?tz=Mars/Base", "tz", "not a time zone"),
    ("webhook:https://h/p?level=Error", "level", "not a level"),
    ("webhook:https://h/p?template=x&template_file=/y", "template_file", "not both"),
    ("webhook:https://h/p?template_file=/nonexistent/t.j2", "template_file", "cannot read"),
    ("webhook:https://h/p?template={}&custom_body_configmap=cm", "custom_body_configmap", "not both"),
    ("webhook:https://h/p?template={{ oops", "template", "template error"),
    ('webhook:https://h/p?template={"a": {{ message }}}', "template", "does not render valid JSON"),
    ("webhook:https://h/p?username=u&bearer_token=t", "bearer_token", "not both"),
    ("webhook:https://h/p?password=p", "password", "needs username"),
    ("webhook:https://u:p@h/p?username=v", "username", "not both"),
    ("webhook:https://h/p?bearer_token=t&header=Authorization=x", "bearer_token", "both set"),
    ("webhook:https://h/p?ca_file=/nonexistent/ca.pem", "ca_file", "cannot load the TLS files"),
    ("webhook:https://h/p?success_field=:0", "success_field", "expected NAME[:VALUE]"),
]


@pytest.mark.parametrize(("flag", "option", "text"), BAD_FLAGS)
def test_bad_flags(flag, option, text):
    with pytest.raises(SinkConfigError) as info:
        build(flag)
    assert info.value.sink == "webhook"
    assert info.value.option == option
    assert text in str(info.value)
    assert str(info.value).startswith("--sink=webhook")


def test_from_url_does_no_io_even_with_a_configmap(monkeypatch):
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/kubeconfig")
    sink = build("webhook:https://h/p?custom_body_configmap=cm")  # nothing read yet
    assert sink._template is None
    sink.close()
    sink.close()


def test_near_miss_query_parameter_is_forwarded_with_a_warning(caplog):
    caplog.set_level(logging.WARNING, "eventrouter.sinks.webhook")
    sink = build("webhook:https://h/p?namespace=prod&methd=PUT")
    assert sink.target == "https://h/p?namespace=prod&methd=PUT"
    assert "'namespace'" in caplog.text and "did you mean 'namespaces'" in caplog.text
    assert "did you mean 'method'" in caplog.text


# ---- redaction --------------------------------------------------------------------------------

SECRETS = {
    "pw": "hunter2-basic-pw",
    "bearer": "bearer-s3cr3t-value",
    "apikey": "x-api-key-s3cr3t",
    "auth": "Token auth-header-s3cr3t",
    "access": "dingtalk-access-token-s3cr3t",
    "userpw": "url-user-password-s3cr3t",
}


@pytest.mark.parametrize(
    ("flag", "shown", "hidden"),
    [
        (f"webhook:https://h/p?username=bob&password={SECRETS['pw']}", "username=bob&password=***", "pw"),
        (f"webhook:https://h/p?bearer_token={SECRETS['bearer']}", "bearer_token=***", "bearer"),
        (f"webhook:https://h/p?header=X-Api-Key={SECRETS['apikey']}&header=X-Team=ops",
         "header=X-Api-Key=***&header=X-Team=ops", "apikey"),
        (f"webhook:https://h/p?header=Authorization={SECRETS['auth'].replace(' ', '%20')}",
         "header=Authorization=***", "auth"),
        (f"webhook:https://h/robot/send?access_token={SECRETS['access']}&level=Warning",
         "access_token=***&level=Warning", "access"),
        (f"webhook:https://bob:{SECRETS['userpw']}@h/p", "https://bob:***@h/p", "userpw"),
    ],
)
def test_redaction(flag, shown, hidden):
    url = SinkURL.parse(flag)
    sink = build(flag)
    text = WebhookSink.redact(url)
    assert shown in text
    for shown_text in (text, repr(sink), sink.describe()):
        assert SECRETS[hidden] not in shown_text


@pytest.mark.parametrize(
    ("flag", "redacted"),
    [
        ("webhook:https://hooks.slack.com/services/T0AB12CD3/B0AB12CD3/abcdefghijklmnopqrstuvwx?level=Warning",
         "webhook:https://hooks.slack.com/services/T0AB12CD3/B0AB12CD3/***?level=Warning"),
        ("webhook:https://open.feishu.cn/open-apis/bot/v2/hook/0f6a1b2c-3d4e-5f60-7a8b-9c0d1e2f3a4b",
         "webhook:https://open.feishu.cn/open-apis/bot/v2/hook/***"),
        ("webhook:https://mm.example.com/hooks/x7pb3gkq9fbu8c1s5mz4yw6n2e",
         "webhook:https://mm.example.com/hooks/***"),
        ("webhook:https://alerts.example.com/api/v1/events", "webhook:https://alerts.example.com/api/v1/events"),
    ],
)
def test_redaction_of_hook_tokens_in_the_path(flag, redacted):
    assert WebhookSink.redact(SinkURL.parse(flag)) == redacted


def test_secrets_stay_out_of_errors_and_logs(hook, caplog):
    caplog.set_level(logging.DEBUG)
    # a receiver that echoes what it got: the sink must not pass the secrets on to the log
    hook.default = Reply(401, f"bad credentials {SECRETS['bearer']} {SECRETS['apikey']}".encode())
    flag = (f"webhook:{hook.url()}?bearer_token={SECRETS['bearer']}&header=X-Api-Key={SECRETS['apikey']}"
            "&max_retries=0")
    sink = build(flag)
    with pytest.raises(PermanentError) as info:
        sink.send([make_event(1)])
    assert "HTTP 401" in str(info.value)
    runner = SinkRunner.build(sink)
    router = Router([runner])
    router.start()
    router.dispatch(make_event(2))
    assert router.stop(10)
    assert runner.stats.failed == 1
    assert hook.requests[0].headers["authorization"] == f"Bearer {SECRETS['bearer']}"
    logged = caplog.text + str(info.value)
    assert "bad credentials ***" in logged
    assert SECRETS["bearer"] not in logged and SECRETS["apikey"] not in logged


# ---- classification ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("status", "headers", "body", "outcome", "retry_after"),
    [
        (200, {}, b"ok", None, None),
        (201, {}, b"", None, None),
        (204, {}, b"", None, None),
        (408, {}, b"timeout", RetryableError, None),
        (429, {"Retry-After": "7"}, b"slow down", RetryableError, 7.0),
        (429, {}, b"", RetryableError, None),
        (500, {}, b"boom", RetryableError, None),
        (502, {}, b"", RetryableError, None),
        (503, {"Retry-After": "2"}, b"", RetryableError, 2.0),
        (301, {"Location": "/elsewhere"}, b"", PermanentError, None),
        (400, {}, b'{"error":"invalid_payload"}', PermanentError, None),
        (401, {}, b"", PermanentError, None),
        (403, {}, b"", PermanentError, None),
        (404, {}, b"no_service", PermanentError, None),
        (413, {}, b"", PermanentError, None),
    ],
)
def test_classify(status, headers, body, outcome, retry_after):
    sink = build("webhook:https://h/p")
    response = httpx.Response(status, headers=headers, content=body)
    if outcome is None:
        sink._classify(response)
        return
    with pytest.raises(outcome) as info:
        sink._classify(response)
    assert f"HTTP {status}" in str(info.value)
    if body:
        assert body.decode() in str(info.value)
    if outcome is RetryableError:
        assert info.value.retry_after == retry_after


FEISHU_OK = b'{"StatusCode":0,"StatusMessage":"success","code":0,"data":{},"msg":"success"}'


@pytest.mark.parametrize(
    ("option", "status", "body", "outcome", "text"),
    [
        # Feishu/Lark: code 0 is success, anything else an error with msg
        ("code:0", 200, FEISHU_OK, None, ""),
        ("code:0", 200, b'{"code":"0"}', None, ""),
        ("code:0", 200, b'{"code":19021,"data":{},"msg":"sign match fail or timestamp is not within one hour"}',
         PermanentError, "HTTP 200 with code=19021 (expected 0): sign match fail"),
        ("code:0", 200, b'{"code":19024,"msg":"Key Words Not Found"}', PermanentError, "Key Words Not Found"),
        ("code:0", 200, b'{"code":11232,"msg":"frequency limited psm[lark.oapi.app_platform_runtime]"}',
         RetryableError, "code=11232"),
        ("code:0", 200, b'{"code":9499,"msg":"too many request"}', RetryableError, "too many request"),
        ("code:0", 200, b'{"data":{}}', PermanentError, "without the field 'code'"),
        ("code:0", 200, b"ok", PermanentError, "did not answer JSON"),
        ("code:0", 204, b"", PermanentError, "did not answer JSON"),
        ("code:0", 200, b"[0]", PermanentError, "not an object"),
        # the HTTP status is still checked first
        ("code:0", 503, b'{"code":0}', RetryableError, "HTTP 503"),
        ("code:0", 400, b'{"code":9499,"msg":"Bad Request"}', PermanentError, "HTTP 400"),
        # DingTalk-style errcode/errmsg
        ("errcode:0", 200, b'{"errcode":0,"errmsg":"ok"}', None, ""),
        ("errcode:0", 200, b'{"errcode":310000,"errmsg":"keywords not in content"}', PermanentError,
         "errcode=310000 (expected 0): keywords not in content"),
        ("errcode:0", 200, b'{"errcode":130101,"errmsg":"send too fast"}', RetryableError, "send too fast"),
        ("errcode:0", 200, b'{"errcode":45009,"errmsg":"api freq out of limit"}', RetryableError, "45009"),
        # Slack Web API style ok/error; a bare NAME means NAME:true
        ("ok", 200, b'{"ok":true}', None, ""),
        ("ok:true", 200, b'{"ok":false,"error":"invalid_auth"}', PermanentError, "ok=false (expected true): "
         "invalid_auth"),
        ("ok:true", 200, b'{"ok":false,"error":"rate_limited"}', RetryableError, "rate_limited"),
        ("ok:true", 200, b'{"ok":"false","message":"Rate limit exceeded"}', RetryableError, "Rate limit"),
        ("status:success", 200, b'{"status":"success"}', None, ""),
        ("status:success", 200, b'{"status":"failed","error":{"reason":"quota"}}', PermanentError, "quota"),
    ],
)
def test_classify_success_field(option, status, body, outcome, text):
    sink = build(f"webhook:https://h/p?success_field={option}")
    response = httpx.Response(status, content=body)
    if outcome is None:
        sink._classify(response)
        return
    with pytest.raises(outcome) as info:
        sink._classify(response)
    assert type(info.value) is outcome
    assert text in str(info.value)


def test_success_field_message_is_truncated_and_redacted():
    sink = build("webhook:https://h/p?success_field=code:0&bearer_token=tok-s3cr3t-value")
    body = orjson.dumps({"code": 1, "msg": "bad token tok-s3cr3t-value " + "x" * 5000})
    with pytest.raises(PermanentError) as info:
        sink._classify(httpx.Response(200, content=body))
    assert "tok-s3cr3t-value" not in str(info.value)
    assert "bad token ***" in str(info.value)
    assert len(str(info.value)) < 450


def test_classify_truncates_a_long_body():
    sink = build("webhook:https://h/p")
    with pytest.raises(PermanentError) as info:
        sink._classify(httpx.Response(400, content=b"x" * 10000))
    assert 300 <= len(str(info.value)) < 400


def test_connection_refused_is_retryable():
    hook = FakeWebhook().start()
    url = hook.url()
    hook.stop()
    with pytest.raises(RetryableError) as info:
        build(f"webhook:{url}").send([make_event()])
    assert "cannot reach the webhook receiver" in str(info.value)


# ---- bodies -----------------------------------------------------------------------------------

def test_default_body_is_the_normalized_event(hook):
    event = make_event(5, message=TRICKY, cluster="prod")
    build(f"webhook:{hook.url('/k8s/events')}?token_kind=x&level=Warning&kinds=Pod").send([event])
    (request,) = hook.requests
    assert request.method == "POST"
    assert request.path == "/k8s/events"
    assert request.query == {"token_kind": ["x"]}  # the receiver's parameter kept, ours stripped
    assert request.headers["content-type"] == "application/json"
    assert request.json() == event.to_dict()
    assert request.json()["message"] == TRICKY
    assert request.json()["last_timestamp"] == "2026-04-14T09:30:05Z"


def test_default_body_of_every_real_event_is_valid_json(hook):
    from eventrouter.event import Event

    events = [Event.from_object(o) for o in real_objects()[:40]]
    sink = build(f"webhook:{hook.url()}?batch=true")
    sink.send(events)
    (request,) = hook.requests
    assert request.json() == [e.to_dict() for e in events]


def test_custom_template_body_is_exact_and_valid_json(hook, tmp_path):
    template = '{"who": "{{ involved_object.kind }}/{{ involved_object.name }}", "msg": "{{ message }}", ' \
               '"n": {{ count }}, "at": "{{ last_timestamp }}", "obj": {{ involved_object | tojson }}}'
    (tmp_path / "t.j2").write_text(template)
    event = make_event(7, message=TRICKY, count=3)
    build(f"webhook:{hook.url()}?template_file={tmp_path / 't.j2'}").send([event])
    body = hook.requests[0].body.decode()
    expected_msg = orjson.dumps(TRICKY).decode()
    assert body == ('{"who": "Pod/app-7", "msg": ' + expected_msg + ', "n": 3, "at": "2026-04-14T09:30:07Z", '
                    '"obj": ' + orjson.dumps(event.involved_object.to_dict()).decode() + "}")
    assert orjson.loads(body)["msg"] == TRICKY


def test_kube_eventer_default_template_shape(hook):
    sink = build(f"webhook:{hook.url()}?tz=Asia/Shanghai&template={quote(KUBE_EVENTER_DEFAULT, safe='')}")
    event = make_event(9, message='pod "demo-1rare3" OOMKilled')
    sink.send([event])
    assert hook.requests[0].json() == {
        "EventType": "Warning",
        "EventKind": "Pod",
        "EventReason": "BackOff",
        "EventTime": "2026-04-14 17:30:09 +0800 CST",
        "EventMessage": 'pod "demo-1rare3" OOMKilled',  # kube-eventer stripped the quotes; we escape them
    }


def test_non_json_content_type_is_not_escaped(hook):
    flag = f"webhook:{hook.url()}?content_type=text/plain&template={{{{ reason }}}}: {{{{ message }}}}"
    build(flag).send([make_event(1, message='say "hi"\nbye')])
    assert hook.requests[0].headers["content-type"] == "text/plain"
    assert hook.requests[0].body.decode() == 'BackOff: say "hi"\nbye'


# ---- headers, methods, auth -------------------------------------------------------------------

def test_headers_and_env_expansion(hook):
    flag = (f"webhook:{hook.url()}?header=X-Team=ops&header=X-Api-Key=$API_KEY&header=X-List=a,b"
            "&header=Content-Type=application/vnd.alert%2Bjson")  # + is a space in a query, as in Go
    build(flag, {"API_KEY": "k-123"}).send([make_event()])
    headers = hook.requests[0].headers
    assert headers["x-team"] == "ops"
    assert headers["x-api-key"] == "k-123"
    assert headers["x-list"] == "a,b"
    assert headers["content-type"] == "application/vnd.alert+json"
    assert headers["user-agent"] == "eventrouter"


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "POST"])
def test_methods_all_carry_the_body(hook, method):
    event = make_event(2)
    build(f"webhook:{hook.url()}?method={method}").send([event])
    assert hook.requests[0].method == method
    assert hook.requests[0].json() == event.to_dict()


def test_basic_auth_from_options_and_from_the_url(hook):
    import base64

    build(f"webhook:{hook.url()}?username=bob&password=pw%26x").send([make_event()])
    url = hook.url().replace("http://", "http://alice:s%40cret@")
    build(f"webhook:{url}").send([make_event()])
    expected = [base64.b64encode(b"bob:pw&x").decode(), base64.b64encode(b"alice:s@cret").decode()]
    assert [r.headers["authorization"] for r in hook.requests] == [f"Basic {e}" for e in expected]


# ---- TLS --------------------------------------------------------------------------------------

def test_https_with_the_ca(tls):
    server = FakeWebhook(tls=tls.server_context()).start()
    try:
        build(f"webhook:{server.url()}?ca_file={tls.ca_file}").send([make_event()])
        assert len(server.requests) == 1
        with pytest.raises(RetryableError) as info:
            build(f"webhook:{server.url()}").send([make_event()])
        assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)
        assert len(server.requests) == 1  # nothing reached the receiver without trust
        build(f"webhook:{server.url()}?insecure_skip_verify=true").send([make_event()])
        assert len(server.requests) == 2
    finally:
        server.stop()


def test_mutual_tls(tls):
    server = FakeWebhook(tls=tls.server_context(require_client_cert=True)).start()
    try:
        flag = f"webhook:{server.url()}?ca_file={tls.ca_file}&cert_file={tls.client_cert_file}" \
               f"&key_file={tls.client_key_file}"
        build(flag).send([make_event()])
        assert [r.client_cert_cn for r in server.requests] == ["eventrouter-client"]
        with pytest.raises(RetryableError):
            build(f"webhook:{server.url()}?ca_file={tls.ca_file}").send([make_event()])
        assert len(server.requests) == 1
    finally:
        server.stop()


# ---- batching and partial delivery ------------------------------------------------------------

def test_batch_sends_one_json_array(hook):
    events = [make_event(i) for i in range(3)]
    build(f"webhook:{hook.url()}?batch=true").send(events)
    build(f"webhook:{hook.url()}?batch=true&template={{\"r\": \"{{{{ reason }}}}-{{{{ count }}}}\"}}").send(events)
    assert len(hook.requests) == 2
    assert hook.requests[0].json() == [e.to_dict() for e in events]
    assert hook.requests[1].json() == [{"r": "BackOff-1"}] * 3


def test_batches_through_the_router(hook):
    sink = build(f"webhook:{hook.url()}?batch=true&batch_size=2&flush_interval=50ms")
    router = Router([SinkRunner.build(sink)])
    router.start()
    events = [make_event(i) for i in range(5)]
    for event in events:
        router.dispatch(event)
    assert router.stop(10)
    bodies = [r.json() for r in hook.requests]
    assert all(isinstance(b, list) and 1 <= len(b) <= 2 for b in bodies)
    assert [item["uid"] for body in bodies for item in body] == [e.uid for e in events]


def test_one_request_per_event_without_batch_keeps_what_was_delivered(hook):
    sink = build(f"webhook:{hook.url()}?batch_size=4")
    events = [make_event(i) for i in range(4)]
    hook.reply(Reply(200), Reply(400, b"bad"), Reply(200), Reply(503, b"", {"Retry-After": "3"}))
    with pytest.raises(PartialError) as info:
        sink.send(events)
    assert info.value.rejected == [events[1]]
    assert info.value.retry == [events[3]]
    assert info.value.retry_after == 3.0
    assert len(hook.requests) == 4


# ---- retries through the router ---------------------------------------------------------------

def run_router(sink: WebhookSink, events) -> SinkRunner:
    runner = SinkRunner.build(sink)
    router = Router([runner])
    router.start()
    for event in events:
        router.dispatch(event)
    assert router.stop(15)
    return runner


def test_retry_on_503_then_success_without_duplicates(hook):
    hook.reply(Reply(503, b"busy"))
    events = [make_event(1), make_event(2)]
    runner = run_router(build(f"webhook:{hook.url()}"), events)
    bodies = [r.json()["uid"] for r in hook.requests]
    assert bodies == [events[0].uid, events[0].uid, events[1].uid]  # the failed one again, then the next
    assert (runner.stats.sent, runner.stats.retried, runner.stats.failed) == (2, 1, 0)


def test_429_retry_after_is_honoured(hook):
    sink = build(f"webhook:{hook.url()}")
    hook.reply(Reply(429, b"rate limited", {"Retry-After": "7"}))
    with pytest.raises(RetryableError) as info:
        sink.send([make_event()])
    assert info.value.retry_after == 7.0
    hook.reply(Reply(429, b"rate limited", {"Retry-After": "1"}))
    runner = run_router(sink, [make_event(3)])
    assert [r.json()["uid"] for r in hook.requests[1:]] == [make_event(3).uid] * 2
    assert (runner.stats.sent, runner.stats.retried) == (1, 1)


def test_permanent_400_is_not_retried(hook, caplog):
    caplog.set_level(logging.WARNING)
    hook.default = Reply(400, b'{"error":"no_text"}')
    runner = run_router(build(f"webhook:{hook.url()}"), [make_event(1)])
    assert len(hook.requests) == 1
    assert (runner.stats.sent, runner.stats.failed, runner.stats.retried) == (0, 1, 0)
    assert 'HTTP 400: {"error":"no_text"}' in caplog.text


def test_success_field_feishu_success(hook):
    hook.default = Reply(200, FEISHU_OK, {"Content-Type": "application/json"})
    runner = run_router(build(f"webhook:{hook.url()}?success_field=code:0"), [make_event(1), make_event(2)])
    assert len(hook.requests) == 2
    assert (runner.stats.sent, runner.stats.failed, runner.stats.retried) == (2, 0, 0)


def test_success_field_feishu_rejection_is_logged_not_retried(hook, caplog):
    caplog.set_level(logging.WARNING)
    hook.default = Reply(200, b'{"code":19021,"data":{},"msg":"sign match fail or timestamp is not within one hour '
                              b'from current time"}')
    runner = run_router(build(f"webhook:{hook.url()}?success_field=code:0"), [make_event(1)])
    assert len(hook.requests) == 1
    assert (runner.stats.sent, runner.stats.failed, runner.stats.retried) == (0, 1, 0)
    assert "code=19021 (expected 0): sign match fail" in caplog.text


def test_success_field_rate_limit_code_is_retried(hook):
    hook.reply(Reply(200, b'{"code":11232,"data":{},"msg":"frequency limited psm[lark.oapi.app_platform_runtime]"}'))
    hook.default = Reply(200, FEISHU_OK)
    events = [make_event(1), make_event(2)]
    runner = run_router(build(f"webhook:{hook.url()}?success_field=code:0"), events)
    assert [r.json()["uid"] for r in hook.requests] == [events[0].uid, events[0].uid, events[1].uid]
    assert (runner.stats.sent, runner.stats.failed, runner.stats.retried) == (2, 0, 1)


def test_success_field_non_json_answer_is_permanent(hook):
    hook.default = Reply(200, b"<html>accepted</html>")
    sink = build(f"webhook:{hook.url()}?success_field=code:0")
    with pytest.raises(PermanentError) as info:
        sink.send([make_event(1)])
    assert "did not answer JSON" in str(info.value)
    assert "<html>accepted</html>" in str(info.value)


def test_success_field_in_a_batch_rejects_the_batch(hook):
    hook.default = Reply(200, b'{"code":19024,"msg":"Key Words Not Found"}')
    sink = build(f"webhook:{hook.url()}?success_field=code:0&batch=true")
    with pytest.raises(PermanentError, match="Key Words Not Found"):
        sink.send([make_event(1), make_event(2)])
    assert len(hook.requests) == 1


def test_without_success_field_any_2xx_is_delivered(hook):
    hook.default = Reply(200, b'{"code":19021,"msg":"sign match fail"}')
    hook.reply(Reply(200, b"not json"))
    runner = run_router(build(f"webhook:{hook.url()}"), [make_event(1), make_event(2)])
    assert len(hook.requests) == 2
    assert (runner.stats.sent, runner.stats.failed, runner.stats.retried) == (2, 0, 0)


def test_cli_end_to_end(hook, tmp_path, capfd, monkeypatch):
    objects = real_objects()[:5]
    source = tmp_path / "events.jsonl"
    source.write_bytes(b"\n".join(orjson.dumps(o) for o in objects) + b"\n")
    monkeypatch.setenv("HOOK_TOKEN", "cli-s3cr3t-hook-token")
    status = cli_main([f"--source=file:{source}", f"--sink=webhook:{hook.url()}?batch=true&bearer_token=$HOOK_TOKEN",
                       "--healthz-port=0", "--cluster-name=prod", "-v", "5"])
    assert status == 0
    output = capfd.readouterr()
    assert "bearer_token=***" in output.err
    assert "cli-s3cr3t-hook-token" not in output.out + output.err
    assert {r.headers["authorization"] for r in hook.requests} == {"Bearer cli-s3cr3t-hook-token"}
    delivered = [item for r in hook.requests for item in r.json()]
    assert [d["uid"] for d in delivered] == [o["metadata"]["uid"] for o in objects]
    assert {d["cluster"] for d in delivered} == {"prod"}


# ---- kube-eventer's custom_body_configmap -------------------------------------------------------

FEISHU_V2_CONTENT = (
    '{\n   "msg_type": "interactive",\n   "card": {\n      "config": {\n         "wide_screen_mode": true,\n'
    '         "enable_forward": true\n      },\n      "header": {\n         "title": {\n'
    '            "tag": "plain_text",\n            "content": "Kube-eventer"\n         },\n'
    '         "template": "Red"\n      },\n      "elements": [\n         {\n            "tag": "div",\n'
    '            "text": {\n               "tag": "lark_md",\n'
    '               "content":  "**EventType:**  {{ .Type }}\\n**EventKind:**  {{ .InvolvedObject.Kind }}\\n'
    '**EventReason:**  {{ .Reason }}\\n**EventTime:**  {{ .LastTimestamp }}\\n**EventMessage:**  {{ .Message }}"\n'
    '            }\n        \t}\n      \t]\n   \t\t}\n\t\t}'
)


@pytest.fixture
def kube(tmp_path, monkeypatch):
    api = FakeKubeAPI().start()
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", api.kubeconfig(tmp_path / "kubeconfig"))
    yield api
    api.stop()


def test_configmap_template_read_once(hook, kube):
    kube.configmaps[("kube-system", "custom-body")] = {"content": FEISHU_V2_CONTENT}
    sink = build(f"webhook:{hook.url()}?level=Warning&method=POST&header=Content-Type=application/json{CM}")
    assert kube.requests == []  # no I/O before open
    sink.open()
    sink.open()
    event = make_event(4, message=TRICKY)
    sink.send([event])
    sink.send([event])
    assert kube.requests == ["/api/v1/namespaces/kube-system/configmaps/custom-body"]
    card = hook.requests[0].json()
    assert card["msg_type"] == "interactive"
    assert card["card"]["header"] == {"title": {"tag": "plain_text", "content": "Kube-eventer"}, "template": "Red"}
    assert card["card"]["elements"][0]["text"]["content"] == (
        "**EventType:**  Warning\n**EventKind:**  Pod\n**EventReason:**  BackOff\n"
        f"**EventTime:**  2026-04-14 09:30:04 +0000 UTC\n**EventMessage:**  {TRICKY}"
    )


def test_configmap_read_lazily_when_not_opened(hook, kube):
    kube.configmaps[("default", "body")] = {"content": '{"m": "{{ .Message }}"}'}
    build(f"webhook:{hook.url()}?custom_body_configmap=body").send([make_event(1, message="x")])
    assert hook.requests[0].json() == {"m": "x"}


@pytest.mark.parametrize(
    ("configmaps", "text"),
    [
        ({}, "HTTP 404 (it does not exist)"),
        ({("default", "body"): {"template": "{}"}}, "has no key 'content'"),
        ({("default", "body"): {"content": '"text": "{{ .Message }}"'}}, "does not render valid JSON"),
    ],
)
def test_configmap_errors(hook, kube, configmaps, text):
    kube.configmaps.update(configmaps)
    sink = build(f"webhook:{hook.url()}?custom_body_configmap=body")
    with pytest.raises(SinkConfigError) as info:
        sink.open()
    assert info.value.option == "custom_body_configmap"
    assert text in str(info.value)
    with pytest.raises(RetryableError):  # a running sink keeps the events until the ConfigMap is readable
        sink.send([make_event()])
    assert hook.requests == []


def test_configmap_without_any_kubernetes_config(hook, tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(SinkConfigError) as info:
        build(f"webhook:{hook.url()}?custom_body_configmap=body").open()
    assert "no in-cluster service account and no usable kubeconfig" in str(info.value)


def test_configmap_unauthorized(hook, kube, tmp_path, monkeypatch):
    kube.configmaps[("default", "body")] = {"content": "{}"}
    kube.token = "another-token"
    with pytest.raises(SinkConfigError) as info:
        build(f"webhook:{hook.url()}?custom_body_configmap=body").open()
    assert "HTTP 401" in str(info.value)


# ---- the example templates in docs/templates ------------------------------------------------------

def render_example(hook, name: str, event, extra: str = "") -> dict:
    build(f"webhook:{hook.url()}?template_file={TEMPLATES / name}{extra}").send([event])
    return hook.requests[-1].json()


def test_slack_template(hook):
    event = make_event(3, message=TRICKY, count=4, cluster="prod")
    payload = render_example(hook, "slack.json.j2", event, "&tz=Asia/Shanghai")
    assert set(payload) == {"text", "attachments"}
    assert payload["text"] == ":warning: Warning: BackOff on Pod default/app-3"
    (attachment,) = payload["attachments"]
    assert set(attachment) == {"color", "blocks"}
    assert attachment["color"] == "#d93f0b"
    header, fields, message, context = attachment["blocks"]
    assert header == {"type": "header", "text": {"type": "plain_text", "text": "BackOff on Pod default/app-3",
                                                 "emoji": True}}
    assert fields == {"type": "section", "fields": [
        {"type": "mrkdwn", "text": "*Type:*\n:warning: Warning"},
        {"type": "mrkdwn", "text": "*Object:*\nPod `default/app-3`"},
        {"type": "mrkdwn", "text": "*Count:*\n4"},
        {"type": "mrkdwn", "text": "*Last seen:*\n2026-04-14 17:30:03 CST"},
    ]}
    escaped = TRICKY.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    assert message == {"type": "section", "text": {"type": "mrkdwn", "text": escaped}}
    assert context == {"type": "context", "elements": [{"type": "mrkdwn", "text": "kubelet on node-1 | cluster prod"}]}


def test_slack_template_normal_cluster_scoped_and_long(hook):
    event = make_event(1, type="Normal", reason="NodeReady", message="m" * 5000, source_host="", cluster="",
                       involved_object=replace(make_event(1).involved_object, kind="Node", namespace="", name="n1"))
    payload = render_example(hook, "slack.json.j2", event)
    assert payload["text"] == ":information_source: Normal: NodeReady on Node n1"
    attachment = payload["attachments"][0]
    assert attachment["color"] == "#1d76db"
    assert attachment["blocks"][1]["fields"][3]["text"] == "*Last seen:*\n2026-04-14 09:30:01 UTC"
    assert len(attachment["blocks"][2]["text"]["text"]) == 2900
    assert attachment["blocks"][3]["elements"][0]["text"] == "kubelet"


def test_feishu_template(hook):
    event = make_event(8, message=TRICKY, count=2, cluster="prod")
    payload = render_example(hook, "feishu.json.j2", event, "&tz=Asia/Shanghai")
    assert set(payload) == {"msg_type", "card"}
    assert payload["msg_type"] == "interactive"
    card = payload["card"]
    assert set(card) == {"config", "header", "elements"}
    assert card["config"] == {"wide_screen_mode": True}
    assert card["header"] == {"template": "red",
                              "title": {"tag": "plain_text", "content": "Warning: BackOff on Pod default/app-8"}}
    fields, message, rule, note = card["elements"]
    assert fields == {"tag": "div", "fields": [
        {"is_short": True, "text": {"tag": "lark_md", "content": "**Kind**\nPod"}},
        {"is_short": True, "text": {"tag": "lark_md", "content": "**Object**\ndefault/app-8"}},
        {"is_short": True, "text": {"tag": "lark_md", "content": "**Count**\n2"}},
        {"is_short": True, "text": {"tag": "lark_md", "content": "**Last seen**\n2026-04-14 17:30:08 CST"}},
    ]}
    assert message == {"tag": "div", "text": {"tag": "plain_text", "content": TRICKY}}
    assert rule == {"tag": "hr"}
    assert note == {"tag": "note", "elements": [{"tag": "plain_text", "content": "kubelet on node-1 | cluster prod"}]}


def test_feishu_template_normal(hook):
    payload = render_example(hook, "feishu.json.j2", make_event(1, type="Normal", reason="Pulled"))
    assert payload["card"]["header"]["template"] == "blue"
    assert payload["card"]["header"]["title"]["content"] == "Normal: Pulled on Pod default/app-1"
    assert payload["card"]["elements"][3]["elements"][0]["content"] == "kubelet on node-1"


def test_example_templates_render_every_real_event(hook):
    from eventrouter.event import Event

    events = [Event.from_object(o) for o in real_objects()[:200]]
    for name in ("slack.json.j2", "feishu.json.j2"):
        build(f"webhook:{hook.url()}?batch=true&template_file={TEMPLATES / name}").send(events)
    slack, feishu = (r.json() for r in hook.requests)
    headers = [p["attachments"][0]["blocks"][0]["text"]["text"] for p in slack]
    assert [h.split(" on ")[0] for h in headers] == [e.reason for e in events]
    assert [p["card"]["elements"][1]["text"]["content"] for p in feishu] == [e.message[:4000] for e in events]


def test_check_command(hook, tmp_path, monkeypatch, capsys):
    from eventrouter.commands import check_command

    assert check_command([f"--sink=webhook:{hook.url()}?bearer_token=chk-s3cr3t-token", "--send-test"]) == 0
    assert hook.requests[0].json()["reason"] == "EventrouterTest"
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    assert check_command([f"--sink=webhook:{hook.url()}?custom_body_configmap=body"]) == 1
    out = capsys.readouterr().out
    assert "send-test: delivered" in out
    assert "failed: SinkConfigError: --sink=webhook: option 'custom_body_configmap'" in out
    assert "chk-s3cr3t-token" not in out


@pytest.mark.parametrize("batch", ["true", "false"])
def test_an_event_the_template_cannot_render_is_rejected_alone(hook, batch):
    # renders for the start-up samples (count 1 and 2), divides by zero for count 5
    template = quote('{"x": {{ 10 // (count - 5) }}}')
    sink = build(f"webhook:{hook.url()}?batch={batch}&template={template}")
    events = [make_event(1, count=2), make_event(2, count=5), make_event(3, count=7)]
    with pytest.raises(PartialError) as info:
        sink.send(events)
    assert info.value.rejected == [events[1]] and info.value.retry == []
    assert "ZeroDivisionError" in str(info.value)
    bodies = [r.json() for r in hook.requests]
    assert bodies == ([[{"x": -4}, {"x": 5}]] if batch == "true" else [{"x": -4}, {"x": 5}])


# every body template of kube-eventer's docs/en/webhook-sink.md, as users have them in ConfigMaps
KE_TEXT = ('EventType:{{ .Type }}\\nEventKind:{{ .InvolvedObject.Kind }}\\nEventReason:{{ .Reason }}'
           '\\nEventTime:{{ .LastTimestamp }}\\nEventMessage:{{ .Message }}')
KE_TEXT_RENDERED = f"EventType:Warning\nEventKind:Pod\nEventReason:BackOff\nEventTime:2026-04-14 09:30:06 +0000 UTC" \
                   f"\nEventMessage:{TRICKY}"
KE_SLACK_ATTACHMENTS = (
    '{\n    "channel": "testing",\n    "icon_emoji": ":k8s:",\n    "username": "eventer",\n    "attachments": [\n'
    '        {\n            "color": "warning",\n            "text": "*Type*: `{{.Type}}`\\n*Namespace*: '
    '`{{.InvolvedObject.Namespace}}`\\n*Object*: `{{ .InvolvedObject.Kind }}/{{ .InvolvedObject.Name }}`\\n'
    '*Reason*: `{{ .Reason }}`\\n*Meaasge*: `{{ .Message }}`\\n*Time*: `{{ .LastTimestamp }}`"\n        }\n    ]\n  }'
)


@pytest.mark.parametrize(
    ("content", "path", "expected"),
    [
        ('{\t"msgtype": "text",\n\t"text": {"content":"' + KE_TEXT + '"},\n\t"markdown": {"title":"","text":""}\n}',
         ("text", "content"), KE_TEXT_RENDERED),
        ('{"msgtype": "text","text": {"content": "' + KE_TEXT + '"}}', ("text", "content"), KE_TEXT_RENDERED),
        ('{"channel": "testing",\n"username": "Eventer",\n"text":"' + KE_TEXT + '"}', ("text",), KE_TEXT_RENDERED),
        ('{\n   "title": "Kube-eventer",\n   "text":  "' + KE_TEXT.replace(":", ":  ") + '"\n   }', ("title",),
         "Kube-eventer"),
        (KE_SLACK_ATTACHMENTS, ("attachments", 0, "text"),
         f"*Type*: `Warning`\n*Namespace*: `default`\n*Object*: `Pod/app-6`\n*Reason*: `BackOff`\n"
         f"*Meaasge*: `{TRICKY}`\n*Time*: `2026-04-14 09:30:06 +0000 UTC`"),
        (FEISHU_V2_CONTENT, ("card", "elements", 0, "text", "content"),
         f"**EventType:**  Warning\n**EventKind:**  Pod\n**EventReason:**  BackOff\n"
         f"**EventTime:**  2026-04-14 09:30:06 +0000 UTC\n**EventMessage:**  {TRICKY}"),
    ],
    ids=["dingtalk", "wechat", "slack", "feishu", "slack-attachments", "feishu-v2"],
)
def test_kube_eventer_documented_templates(hook, content, path, expected):
    build(f"webhook:{hook.url()}?template={quote(content, safe='')}").send([make_event(6, message=TRICKY)])
    value = hook.requests[0].json()
    for step in path:
        value = value[step]
    assert value == expected


def test_kube_eventer_bearychat_example_is_not_json():
    # the docs' BearyChat body lacks its braces; kube-eventer sent it anyway, we refuse it at start-up
    with pytest.raises(SinkConfigError, match="does not render valid JSON"):
        build(f"webhook:https://h/p?template={quote(chr(34) + 'text' + chr(34) + ':' + chr(34) + KE_TEXT + chr(34))}")


def test_a_run_whose_configmap_cannot_be_read_exits_2_naming_it(hook, kube, tmp_path, capsys):
    """docs/sinks/webhook.md: an unreadable ConfigMap stops the start (kube-eventer fell back silently)."""
    from eventrouter.cli import main as cli_main

    events = tmp_path / "events.jsonl"
    events.write_bytes(orjson.dumps(real_objects()[0]) + b"\n")
    status = cli_main([f"--source=file:{events}", "--healthz-port=0",
                       f"--sink=webhook:{hook.url()}?custom_body_configmap=body&custom_body_configmap_namespace=ops"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and hook.requests == []
    assert "ConfigMap ops/body: HTTP 404 (it does not exist)" in err[-1]
