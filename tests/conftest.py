"""Fixtures shared by several test modules (a module may override one with its own of the same name)."""

from collections.abc import Iterator

import pytest

from eventrouter.simulator import Simulator


@pytest.fixture
def sim() -> Iterator[Simulator]:
    """An empty simulated cluster on 127.0.0.1 that behaves as a real API server (no bookmarks on Event
    watches, nothing sent on a quiet watch); tests add the events they need and turn faults on."""
    s = Simulator([]).start()
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def _data_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """``eventrouter.app.run`` keeps disk buffers and sink state in a data directory: a fresh one per test,
    never the repository's ``.eventrouter`` (a buffer left by one test would be replayed by the next)."""
    import eventrouter.app

    data = str(tmp_path_factory.mktemp("data"))
    monkeypatch.setattr(eventrouter.app, "DEFAULT_DATA_DIR", data)
    monkeypatch.setenv("EVENTROUTER_DATA_DIR", data)  # the default of --data-dir, also in a child process
