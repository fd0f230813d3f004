"""Fixtures shared by several test modules (a module may override one with its own of the same name)."""

from collections.abc import Iterator

import pytest

from eventrouter.simulator import Simulator


@pytest.fixture
def sim() -> Iterator[Simulator]:
    """An empty simulated cluster on 127.0.0.1 with frequent bookmarks; tests add the events they need."""
    s = Simulator([]).start()
    s.faults.bookmark_interval = 0.2
    yield s
    s.stop()
