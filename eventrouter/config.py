"""Builds sinks from ``--sink`` flags: parse the URL, find the class, validate every option."""

from __future__ import annotations

from eventrouter import registry
from eventrouter.errors import SinkConfigError
from eventrouter.filters import EventFilter
from eventrouter.sink import Sink
from eventrouter.sinkurl import SinkURL


def build_sink(flag: str) -> Sink:
    """A ready (not yet opened) sink for one ``--sink`` value; ConfigError explains any problem."""
    url = SinkURL.parse(flag)
    cls = registry.load(url.name)
    sink = cls.from_url(url)
    if not isinstance(sink, Sink):
        raise SinkConfigError(url.name, f"{cls.__name__}.from_url returned {type(sink).__name__}, not a Sink")
    EventFilter(url.name, sink.opts)  # compile the filters now: a bad regex fails at start-up
    return sink
