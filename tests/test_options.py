"""Typed sink options: defaults, conversions and the errors a user sees."""

import pytest

from eventrouter import URL, Duration, HostPort, Option, Secret, Sink, SinkConfigError, SinkURL


class DemoSink(Sink):
    name = "demo"
    options = (
        Option("brokers", list, required=True, help="bootstrap host:port"),
        Option("topic", str, default="heapster-events", help="topic"),
        Option("password", str, secret=True, help="SASL password"),
        Option("retries", int, default=3, min=0, max=10, help="retries"),
        Option("insecuressl", bool, default=False, help="skip TLS verification"),
        Option("linger", Duration, default=Duration(0.5), help="linger"),
        Option("compression", str, default="none", choices=("none", "gzip", "snappy", "lz4"), help="codec"),
        Option("label", list, split_commas=False, help="labels"),
        Option("eventstopic", str, aliases=("events_topic",), help="alias test"),
    )


def parse(rest):
    return DemoSink.parse_options(SinkURL.parse(f"demo:{rest}"))


def test_defaults_and_types():
    opts = parse("?brokers=a:9092,b:9092&brokers=c:9092&password=s3cret&retries=5&insecuressl=true&linger=250ms")
    assert opts["brokers"] == ["a:9092", "b:9092", "c:9092"]
    assert opts["topic"] == "heapster-events"
    assert isinstance(opts["password"], Secret) and opts["password"].reveal() == "s3cret"
    assert str(opts["password"]) == "***" and "s3cret" not in repr(opts)
    assert opts["retries"] == 5 and opts["insecuressl"] is True and opts["linger"] == 0.25
    assert opts["level"] == [] and opts["batch_size"] == 1  # core options with their defaults
    assert opts.given == {"brokers", "password", "retries", "insecuressl", "linger"}


def test_label_keeps_commas_and_choice_is_case_insensitive():
    opts = parse("?brokers=a&label=team,infra&label=b&compression=GZIP&events_topic=t")
    assert opts["label"] == ["team,infra", "b"]
    assert opts["compression"] == "gzip"
    assert opts["eventstopic"] == "t"


@pytest.mark.parametrize(
    ("rest", "message"),
    [
        ("?topic=x", "--sink=demo: option 'brokers': is required (bootstrap host:port)"),
        ("?brokers=a&bokers=b",
         "--sink=demo: option 'bokers': unknown option; did you mean 'brokers'? allowed options are: "),
        ("?brokers=a&retries=many", "--sink=demo: option 'retries': 'many' is not an integer from 0 to 10"),
        ("?brokers=a&retries=11", "--sink=demo: option 'retries': '11' is out of range; use an integer from 0 to 10"),
        ("?brokers=a&insecuressl=yes", "--sink=demo: option 'insecuressl': 'yes' is not true or false"),
        ("?brokers=a&compression=zstd", "--sink=demo: option 'compression': 'zstd' is not allowed; "
                                        "use one of none, gzip, snappy, lz4"),
        ("?brokers=a&linger=soon", "--sink=demo: option 'linger': 'soon' is not a duration such as 500ms, 30s"),
        ("?brokers=a&level=Error", "--sink=demo: option 'level': 'Error' is not a level; use Normal"),
        ("?brokers=a&batch_size=0", "--sink=demo: option 'batch_size': '0' is out of range"),
        ("?brokers=a&overflow=block", "--sink=demo: option 'overflow': 'block' is not allowed; "
                                      "use one of drop_oldest, drop_newest"),
    ],
)
def test_errors_name_the_sink_the_option_and_what_is_allowed(rest, message):
    with pytest.raises(SinkConfigError) as err:
        parse(rest)
    assert str(err.value).startswith(message)


def test_unknown_option_suggests_the_closest_and_lists_the_allowed_ones_including_core_options():
    with pytest.raises(SinkConfigError) as err:
        parse("?brokers=a&levle=Warning")
    text = str(err.value)
    assert "option 'levle': unknown option; did you mean 'level'? allowed options are: " in text
    assert "brokers" in text and "exclude_reasons" in text


def test_a_bad_secret_value_is_not_echoed():
    class S(Sink):
        name = "s"
        options = (Option("token", int, secret=True, help="numeric token"),)

    with pytest.raises(SinkConfigError) as err:
        S.parse_options(SinkURL.parse("s:?token=abc-very-secret"))
    assert "abc-very-secret" not in str(err.value) and "***" in str(err.value)


def test_redact_masks_declared_secrets():
    url = SinkURL.parse("demo:?brokers=a&password=s3cret&topic=t")
    assert DemoSink.redact(url) == "demo:?brokers=a&password=***&topic=t"


def test_level_accepts_kube_eventer_combinations():
    assert parse("?brokers=a&level=Normal,Warning")["level"] == ["Normal", "Warning"]


def test_host_port_and_url_items_are_checked_by_the_option_layer():
    class Net(Sink):
        name = "net"
        options = (
            Option("brokers", list, item=HostPort, help="host:port"),
            Option("nodes", list, item=URL, help="node URLs"),
            Option("endpoint", URL, default="", help="endpoint"),
        )

    opts = Net.parse_options(SinkURL.parse("net:?brokers=a:9092,[::1]:9093,&nodes=http://u:p@h:9200/x&endpoint="))
    assert opts["brokers"] == ["a:9092", "[::1]:9093"]  # a trailing comma adds nothing
    assert opts["nodes"] == ["http://u:p@h:9200/x"] and opts["endpoint"] == ""
    for rest, message in [
        ("brokers=k:notaport", "option 'brokers': 'k:notaport': the port 'notaport' is not a number from 1 to 65535"),
        ("brokers=k", "option 'brokers': 'k' has no port; use host:port"),
        ("brokers=:9092", "option 'brokers': ':9092' has no host; use host:port"),
        ("brokers=k:70000", "option 'brokers': 'k:70000': the port '70000' is not a number from 1 to 65535"),
        ("nodes=ftp://u:pw-SECRET@h", "option 'nodes': 'ftp://***@h' is not an http:// or https:// URL"),
        ("nodes=http://h:99999", "option 'nodes': 'h:99999': the port '99999' is not a number from 1 to 65535"),
        ("endpoint=http://", "option 'endpoint': 'http://' has no host"),
    ]:
        with pytest.raises(SinkConfigError) as err:
            Net.parse_options(SinkURL.parse(f"net:?{rest}"))
        assert str(err.value) == f"--sink=net: {message}", rest
        assert "SECRET" not in str(err.value)


# malformed values per declared type: every registered sink's options are run through these, so a new
# sink (or a new option) is covered without a new row
BAD_BY_TYPE = {
    int: ["many", "1.5", "", "0x10"],
    float: ["fast", ""],
    bool: ["yes", "2", "", "on"],
    Duration: ["soon", "-1s", "5 parsecs", "", "1w"],
    HostPort: ["k:notaport", "k:99999", "k", "[bad:1"],
    URL: ["ftp://h", "http://h:0", "h:80", "http://[bad"],
}


def _declared_options():
    from eventrouter import registry

    for name, entry in sorted(registry.discover().items()):
        cls = entry.load()
        for option in cls.all_options():
            yield pytest.param(cls, option, id=f"{name}-{option.name}")


@pytest.mark.parametrize(("cls", "option"), list(_declared_options()))
def test_every_declared_option_of_every_sink_rejects_malformed_values(cls, option):
    """One clear error naming the sink and the option, never a traceback or a silent acceptance."""
    from eventrouter.options import parse_options

    kind = option.item if option.type is list else option.type
    bad = list(BAD_BY_TYPE.get(kind, []))
    if option.choices:
        bad.append("no-such-choice")
    if option.min is not None and kind in (int, float, Duration):
        bad.append(str(int(option.min) - 1) if kind is int else f"{option.min - 1:g}")
    if option.max is not None and kind in (int, float, Duration):
        bad.append(str(int(option.max) + 1) if kind is int else f"{option.max + 1:g}")
    if option.validate is not None and not bad:
        bad.append("?? not a value \x00")  # a validate= hook: at least garbage must not pass
    if not bad:
        assert kind is str or kind is list, f"{cls.name}.{option.name}: no malformed values known for {kind}"
        return  # any string is a valid value of a plain str/list option
    rejected = 0
    for value in bad:
        try:
            parse_options(cls.name, cls.all_options(), {option.name: [value]})
        except SinkConfigError as exc:
            text = str(exc)
            assert text.startswith(f"--sink={cls.name}: option '{option.name}': "), text
            assert "\n" not in text
            rejected += 1
        else:
            raise AssertionError(f"{cls.name}.{option.name}={value!r} was accepted")
    assert rejected == len(bad)
