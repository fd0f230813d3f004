"""eventrouter.testing, the public helpers plugin tests use (the example plugin's end-to-end test uses them too)."""

from __future__ import annotations

from pathlib import Path

import pytest

from eventrouter.testing import FakeCluster, run_eventrouter, sample_event, wait_until


def test_an_event_reaches_a_sink_and_nothing_is_left_outside_workdir(tmp_path: Path, monkeypatch) -> None:
    cwd = tmp_path / "plugin-source"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    out = tmp_path / "events.jsonl"
    with FakeCluster() as cluster:
        created = cluster.add_event(type="Warning", reason="FailedMount", message="volume not found")
        with run_eventrouter(cluster, f"--sink=jsonfile:{out}", workdir=tmp_path / "run"):
            wait_until(lambda: out.exists() and out.read_text().count("\n") == 1, what="one line")
    assert created["metadata"]["uid"] in out.read_text() and "volume not found" in out.read_text()
    assert list(cwd.iterdir()) == []
    assert (tmp_path / "run" / "checkpoint.json").exists()


def test_a_failing_run_fails_the_test_with_its_log(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match=r"status 2:[\s\S]*fsnyc"), \
            run_eventrouter(None, "--source=file:/dev/null", "--sink=jsonfile:/tmp/x.jsonl?fsnyc=1",
                            workdir=tmp_path) as proc:
        proc.wait(30)


def test_wait_until_says_what_did_not_happen() -> None:
    with pytest.raises(AssertionError, match=r"the reply did not hold within 0\.1s"):
        wait_until(lambda: False, timeout=0.1, what="the reply")


def test_sample_event_fields_can_be_overridden() -> None:
    event = sample_event(2, type="Normal", message="Started")
    assert (event.type, event.message, event.involved_object.name, event.uid) == (
        "Normal", "Started", "app-2", "00000000-0000-4000-8000-000000000002")
