"""The --sink/--source grammar: kube-eventer's flags.go semantics, $VAR expansion, masking."""

import pytest

from eventrouter.errors import ConfigError
from eventrouter.options import Secret
from eventrouter.sinkurl import SinkURL, expand_env, parse_query, redact_text


@pytest.mark.parametrize(
    ("flag", "name", "scheme", "host", "path", "query"),
    [
        # common/flags/flags.go examples (kube-eventer-compat.md §0)
        (
            "dingtalk:https://oapi.dingtalk.com/robot/send?access_token=X&level=Warning",
            "dingtalk", "https", "oapi.dingtalk.com", "/robot/send", {"access_token": ["X"], "level": ["Warning"]},
        ),
        ("kafka:?brokers=a:9092&brokers=b:9092", "kafka", "", "", "", {"brokers": ["a:9092", "b:9092"]}),
        ("gcm", "gcm", "", "", "", {}),
        ("gcm:", "gcm", "", "", "", {}),
        ("log", "log", "", "", "", {}),
        # every sink example of kube-eventer-compat.md §2
        (
            "elasticsearch:http://h:9200?nodes=http://a:9200&nodes=http://b:9200&index=k8s&ver=7",
            "elasticsearch", "http", "h:9200", "",
            {"nodes": ["http://a:9200", "http://b:9200"], "index": ["k8s"], "ver": ["7"]},
        ),
        (
            "influxdb:http://host:8086?user=root&pw=root&db=k8s&withfields=false&insecuressl=false&cluster_name=default",
            "influxdb", "http", "host:8086", "",
            {"user": ["root"], "pw": ["root"], "db": ["k8s"], "withfields": ["false"], "insecuressl": ["false"],
             "cluster_name": ["default"]},
        ),
        (
            "wechat:?corp_id=c1&corp_secret=s1&agent_id=1000002&to_user=a,b&level=Normal",
            "wechat", "", "", "",
            {"corp_id": ["c1"], "corp_secret": ["s1"], "agent_id": ["1000002"], "to_user": ["a,b"],
             "level": ["Normal"]},
        ),
        (
            "webhook:http://hook.example/h?level=Warning&namespaces=a,b&kinds=Pod&reason=BackOff&method=POST"
            "&header=Content-Type=application/json&header=X-A=1",
            "webhook", "http", "hook.example", "/h",
            {"level": ["Warning"], "namespaces": ["a,b"], "kinds": ["Pod"], "reason": ["BackOff"], "method": ["POST"],
             "header": ["Content-Type=application/json", "X-A=1"]},
        ),
        (
            "kafka:?brokers=h:9092&brokers=h2:9092&eventstopic=t&compression=gzip&user=u&password=p",
            "kafka", "", "", "",
            {"brokers": ["h:9092", "h2:9092"], "eventstopic": ["t"], "compression": ["gzip"], "user": ["u"],
             "password": ["p"]},
        ),
        (
            "dingtalk:https://oapi.dingtalk.com/robot/send?access_token=T&label=a&label=b&sign=S&msg_type=markdown",
            "dingtalk", "https", "oapi.dingtalk.com", "/robot/send",
            {"access_token": ["T"], "label": ["a", "b"], "sign": ["S"], "msg_type": ["markdown"]},
        ),
        ("kubernetes:https://kubernetes.default", "kubernetes", "https", "kubernetes.default", "", {}),
        (
            "kubernetes:https://kubernetes.default?inClusterConfig=false&auth=/etc/kubeconfig",
            "kubernetes", "https", "kubernetes.default", "",
            {"inClusterConfig": ["false"], "auth": ["/etc/kubeconfig"]},
        ),
        # quotes kept by a manifest's args (kube-eventer #12) are stripped
        ('"kafka:?brokers=a:9092"', "kafka", "", "", "", {"brokers": ["a:9092"]}),
        # Go's QueryUnescape: + is a space, %XX decoded
        ("webhook:http://h/?header=X-Note=a+b%21", "webhook", "http", "h", "/", {"header": ["X-Note=a b!"]}),
    ],
)
def test_flag_parses_as_kube_eventer_sees_it(flag, name, scheme, host, path, query):
    url = SinkURL.parse(flag)
    assert (url.name, url.scheme, url.host, url.path, url.query) == (name, scheme, host, path, query)


def test_mysql_dsn_form_keeps_the_raw_query_intact():
    url = SinkURL.parse("mysql:?root:secret@tcp(db.local:3306)/kube_event?charset=utf8&table=kube_event")
    assert url.name == "mysql"
    assert url.raw_query == "root:secret@tcp(db.local:3306)/kube_event?charset=utf8&table=kube_event"
    assert url.query["table"] == ["kube_event"]


@pytest.mark.parametrize("flag", ["", ":", ":foo", "key:incorrecturl/%gh&%ij", "web hook:http://x"])
def test_bad_flags_are_errors(flag):
    with pytest.raises(ConfigError) as err:
        SinkURL.parse(flag)
    assert "--sink" in str(err.value)


def test_a_percent_that_is_no_escape_stays_literal_and_is_never_echoed():
    url = SinkURL.parse("s3:s3://b/p?key_format=%Y/%m/x-%25d.gz")
    assert url.query["key_format"] == ["%Y/%m/x-%d.gz"]
    url = SinkURL.parse("mysql:?root:p%zz@tcp(h:3306)/db?charset=utf8")
    assert url.raw_query == "root:p%zz@tcp(h:3306)/db?charset=utf8"


def test_env_expansion_like_go_expandenv():
    env = {"TOKEN": "t0k", "HOST": "h.example", "EMPTY": ""}
    url = SinkURL.parse("dingtalk:https://${HOST}/robot/send?access_token=$TOKEN&x=$EMPTY", environ=env)
    assert url.host == "h.example"
    assert url.query["access_token"] == ["t0k"]
    assert url.query["x"] == [""]  # set but empty is the user's choice
    assert expand_env("price: 5$", {}) == "price: 5$"


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        # Go would expand these to "" and start the sink with an empty token: here start-up stops
        ("dingtalk:https://h/robot/send?access_token=$DT_TOKEN",
         "--sink=dingtalk: environment variable $DT_TOKEN is not set"),
        ("dingtalk:https://h/robot/send?access_token=${DT_TOKEN}",
         "--sink=dingtalk: environment variable $DT_TOKEN is not set"),
        ("dingtalk:https://h/robot/send?access_token=${DT_TOKEN",
         "--sink=dingtalk: unterminated '${' in the flag; write ${NAME} or $NAME"),
        ("webhook:http://h/?header=X=${}", "--sink=webhook: '${}' is not an environment variable name"),
        ("webhook:http://h/?header=X=${A B}", "--sink=webhook: '${A B}' is not an environment variable name"),
    ],
)
def test_an_unset_or_unterminated_variable_is_an_error_naming_it_and_the_flag(flag, message):
    with pytest.raises(ConfigError) as err:
        SinkURL.parse(flag, environ={"OTHER": "x"})
    assert str(err.value) == message


def test_a_source_flag_names_itself_in_env_errors():
    with pytest.raises(ConfigError) as err:
        SinkURL.parse("kubernetes:https://$APISERVER", environ={}, what="--source")
    assert str(err.value) == "--source=kubernetes: environment variable $APISERVER is not set"


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("webhook:http://h:99999/x", "--sink=webhook: 'h:99999': the port '99999' is not a number from 1 to 65535"),
        ("webhook:http://h:0/x", "--sink=webhook: 'h:0': the port '0' is not a number from 1 to 65535"),
        ("webhook:http://h:http/x", "--sink=webhook: 'h:http': the port 'http' is not a number from 1 to 65535"),
        ("kubernetes:http://[bad", "--sink=kubernetes: '[bad' is not a valid host ('[' without ']')"),
        ("influxdb:http://[::1]x:8086", "--sink=influxdb: '[::1]x:8086' is not a valid host:port"),
        ("influxdb:http://a:b:8086", "--sink=influxdb: 'a:b:8086' is not a valid host:port (write an IPv6"),
        ("influxdb:http://a b:8086", "--sink=influxdb: 'a b:8086' is not a valid host"),
    ],
)
def test_a_bad_host_or_port_in_the_url_is_an_error(flag, message):
    with pytest.raises(ConfigError) as err:
        SinkURL.parse(flag)
    assert str(err.value).startswith(message)
    assert str(err.value).endswith(" in the URL")


@pytest.mark.parametrize("host", ["h", "h:8080", "h:", "10.0.0.1:1", "[::1]", "[::1]:65535", "[fe80::1%25eth0]:80",
                                  "my-host.example.com:443"])
def test_good_hosts_are_accepted(host):
    assert SinkURL.parse(f"webhook:http://{host}/x").host == host


def test_repeated_keys_keep_order():
    assert parse_query("a=1&b=2&a=3") == {"a": ["1", "3"], "b": ["2"]}


def test_redacted_masks_secret_values_and_url_passwords():
    url = SinkURL.parse("kafka:https://user:pw123@h/p?brokers=a&password=hunter22&user=u")
    text = url.redacted({"password"})
    assert text == "kafka:https://user:***@h/p?brokers=a&password=***&user=u"
    assert "hunter22" not in text and "pw123" not in text


def test_redact_text_masks_plain_and_url_encoded_forms():
    secret = Secret("a+b/c=d")
    text = redact_text("GET /send?access_token=a%2Bb%2Fc%3Dd failed; token a+b/c=d", [secret])
    assert "a+b/c=d" not in text and "a%2Bb%2Fc%3Dd" not in text
    assert text.count("***") == 2


def test_host_and_port_properties():
    url = SinkURL.parse("influxdb:http://[::1]:8086")
    assert (url.hostname, url.port) == ("::1", 8086)
    url = SinkURL.parse("influxdb:http://localhost:8086/")
    assert (url.hostname, url.port, url.base_url()) == ("localhost", 8086, "http://localhost:8086/")


def test_query_without_strips_only_named_keys():
    url = SinkURL.parse("webhook:https://h/p?token=abc&level=Warning&x=1&header=A=B")
    assert url.query_without({"level", "header"}) == "token=abc&x=1"


def test_repr_never_shows_query_values_or_url_passwords():
    url = SinkURL.parse("dingtalk:https://u:pw-SECRET@h/robot/send?access_token=tok-SECRET&level=Warning")
    text = repr(url)
    assert "SECRET" not in text
    assert text == "SinkURL('dingtalk:https://u:***@h/robot/send?access_token=***&level=***')"
    assert "SECRET" not in repr([url]) and "SECRET" not in f"{url!r}"


def test_repr_hides_a_mysql_dsn_password():
    url = SinkURL.parse("mysql:?root:pw-SECRET@tcp(h:3306)/db?charset=utf8&table=t")
    assert "SECRET" not in repr(url)


def test_an_error_body_that_echoes_the_request_credentials_is_masked_by_raise_for_status():
    import base64

    import httpx

    from eventrouter import PermanentError, raise_for_status

    basic = base64.b64encode(b"admin:pw-SECRET-7").decode()
    for header, echoed in [(f"Basic {basic}", f"got Basic {basic} for admin:pw-SECRET-7"),
                           ("tok-SECRET-8", "bad key tok-SECRET-8")]:
        request = httpx.Request("POST", "http://127.0.0.1:1/x", headers={"X-Api-Key": header})
        response = httpx.Response(403, text=echoed, request=request)
        with pytest.raises(PermanentError) as err:
            raise_for_status(response, "receiver")
        assert "SECRET" not in str(err.value) and basic not in str(err.value)
        assert str(err.value).startswith("receiver answered HTTP 403: ")
