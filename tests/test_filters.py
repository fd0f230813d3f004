"""Per-sink filters: kube-eventer's level threshold and the namespace/kind/reason/count filters."""

from dataclasses import replace

import pytest

from eventrouter import SinkConfigError, SinkURL
from eventrouter.event import InvolvedObject
from eventrouter.filters import EventFilter
from sinks.log import LogSink
from tests.helpers import make_event


def flt(query):
    return EventFilter("log", LogSink.parse_options(SinkURL.parse(f"log:?{query}")))


NORMAL = make_event(1, type="Normal", reason="Pulled")
WARNING = make_event(2, type="Warning", reason="BackOff")
OTHER = make_event(3, type="Error", reason="Custom")
NODE = make_event(4, reason="NodeNotReady", involved_object=InvolvedObject(kind="Node", name="node-1"))
IN_KUBE_SYSTEM = make_event(5, involved_object=InvolvedObject(kind="Pod", namespace="kube-system", name="dns"))


@pytest.mark.parametrize(
    ("query", "passes"),
    [
        ("", {NORMAL, WARNING, OTHER}),
        ("level=Warning", {WARNING}),
        ("level=Normal", {NORMAL, WARNING}),  # kube-eventer: Normal passes Normal and Warning
        ("level=Normal,Warning", {NORMAL, WARNING}),  # kube-eventer #255: users mean both
    ],
)
def test_level_threshold(query, passes):
    f = flt(query)
    assert {e for e in (NORMAL, WARNING, OTHER) if f.accepts(e)} == passes


def test_namespaces_keep_cluster_scoped_objects():
    f = flt("namespaces=default")
    assert f.accepts(WARNING)
    assert f.accepts(NODE)  # kube-eventer #238 dropped Node events here
    assert not f.accepts(IN_KUBE_SYSTEM)


def test_exclude_namespaces_with_empty_entry_drops_cluster_scoped_objects():
    f = flt("exclude_namespaces=kube-system,")
    assert not f.accepts(NODE) and not f.accepts(IN_KUBE_SYSTEM) and f.accepts(WARNING)


def test_kinds_and_exclude_kinds():
    assert [flt("kinds=Node").accepts(e) for e in (WARNING, NODE)] == [False, True]
    assert [flt("exclude_kinds=Node,Service").accepts(e) for e in (WARNING, NODE)] == [True, False]


def test_reasons_are_unanchored_regexes_and_reason_is_an_alias():
    assert flt("reasons=Back").accepts(WARNING)
    assert flt("reason=^NodeNot").accepts(NODE) and not flt("reason=^NodeNot").accepts(WARNING)
    assert not flt("exclude_reasons=BackOff|Pulled").accepts(WARNING)
    assert flt("exclude_reasons=BackOff|Pulled").accepts(NODE)


def test_min_count():
    f = flt("min_count=3")
    assert not f.accepts(WARNING)
    assert f.accepts(replace(WARNING, count=3))


def test_filters_combine_with_and():
    f = flt("level=Warning&namespaces=default&kinds=Pod&reasons=Back")
    assert f.accepts(WARNING)
    assert not f.accepts(replace(WARNING, type="Normal"))
    assert not f.accepts(replace(WARNING, reason="Failed"))


def test_bad_regex_is_a_config_error():
    with pytest.raises(SinkConfigError, match="option 'reasons': not a valid regular expression"):
        flt("reasons=Back(")
