"""Typed sink options: defaults, conversions and the errors a user sees."""

import pytest

from eventrouter import Duration, Option, Secret, Sink, SinkConfigError, SinkURL


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
