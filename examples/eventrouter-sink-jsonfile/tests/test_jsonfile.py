"""Tests of the jsonfile plugin: what a plugin author writes for their own sink.

1. a table of flags and the options or the error each gives;
2. the classification of failures (delivered / retry / give up);
3. sends into a temporary file;
4. the real ``eventrouter`` command against a fake cluster (``eventrouter.testing``), stopped with SIGTERM.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from eventrouter_sink_jsonfile import JsonFileSink, _classify
from eventrouter_sink_jsonfile import _cut_torn_line as _cut

from eventrouter import Event, InvolvedObject, PermanentError, RetryableError, SinkConfigError, SinkURL
from eventrouter.testing import FakeCluster, run_eventrouter, wait_until


def build(flag: str) -> JsonFileSink:
    sink = JsonFileSink.from_url(SinkURL.parse(flag))
    assert isinstance(sink, JsonFileSink)
    return sink


def event(n: int = 1, type: str = "Warning") -> Event:
    from datetime import UTC, datetime

    when = datetime(2026, 4, 14, 9, 30, n, tzinfo=UTC)
    return Event(
        uid=f"uid-{n}",
        resource_version=str(n),
        namespace="default",
        name=f"app-{n}.1",
        type=type,
        reason="BackOff",
        message=f"back-off {n}",
        count=1,
        first_timestamp=when,
        last_timestamp=when,
        involved_object=InvolvedObject(kind="Pod", namespace="default", name=f"app-{n}"),
        raw={"metadata": {"uid": f"uid-{n}"}},
    )


@pytest.mark.parametrize(
    ("flag", "path", "fsync", "level"),
    [
        ("jsonfile:/var/lib/eventrouter/events.jsonl", "/var/lib/eventrouter/events.jsonl", False, []),
        ("jsonfile:///tmp/e.jsonl?fsync=true", "/tmp/e.jsonl", True, []),
        ("jsonfile:file:///tmp/e.jsonl?level=Warning", "/tmp/e.jsonl", False, ["Warning"]),
        ("jsonfile:events.jsonl?fsync=1&batch_size=10", "events.jsonl", True, []),
    ],
)
def test_flags(flag: str, path: str, fsync: bool, level: list[str]) -> None:
    sink = build(flag)
    assert (sink.path, sink.opts["fsync"], sink.opts["level"]) == (path, fsync, level)


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("jsonfile:", "give a file path"),
        ("jsonfile:/var/lib/", "give a file path"),
        ("jsonfile:https://example.com/x", "expected a local path"),
        ("jsonfile:/tmp/e.jsonl?fsync=maybe", "option 'fsync'"),
        ("jsonfile:/tmp/e.jsonl?fsnyc=true", "fsnyc"),  # a typo is an error, never ignored
    ],
)
def test_bad_flags(flag: str, message: str) -> None:
    with pytest.raises(SinkConfigError, match=message) as info:
        build(flag)
    assert str(info.value).startswith("--sink=jsonfile")


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (errno.ENOSPC, RetryableError),
        (errno.EIO, RetryableError),
        (errno.EACCES, PermanentError),
        (errno.ENOENT, PermanentError),
        (errno.EISDIR, PermanentError),
        (errno.EROFS, PermanentError),
    ],
)
def test_classify(code: int, kind: type) -> None:
    assert type(_classify(OSError(code, os.strerror(code)), "write x")) is kind


def test_send_appends_json_lines(tmp_path: Path) -> None:
    target = tmp_path / "events.jsonl"
    sink = build(f"jsonfile:{target}?raw=true")
    sink.send([event(1), event(2)])
    sink.send([event(3)])
    sink.close()
    sink.close()  # twice is safe
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert [line["uid"] for line in lines] == ["uid-1", "uid-2", "uid-3"]
    assert lines[0]["last_timestamp"] == "2026-04-14T09:30:01Z"
    assert lines[0]["raw"] == {"metadata": {"uid": "uid-1"}}


@pytest.mark.parametrize("chunk", [65536, 7])  # 7: the torn line spans several backward reads
def test_a_line_torn_by_a_crash_is_cut_before_the_next_batch(tmp_path: Path, chunk: int,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import eventrouter_sink_jsonfile

    monkeypatch.setattr(eventrouter_sink_jsonfile, "_cut_torn_line",
                        lambda path: _cut(path, chunk))  # the same function, a smaller read size
    target = tmp_path / "events.jsonl"
    sink = build(f"jsonfile:{target}")
    sink.send([event(1), event(2)])
    sink.close()
    whole = target.read_bytes()
    target.write_bytes(whole + whole.splitlines(keepends=True)[1][:40])  # SIGKILL while writing uid-2 again
    sink = build(f"jsonfile:{target}")
    sink.send([event(2), event(3)])  # the router sends the unacknowledged batch again
    sink.close()
    assert [json.loads(line)["uid"] for line in target.read_text().splitlines()] == ["uid-1", "uid-2", "uid-2", "uid-3"]


def test_a_file_of_one_torn_line_is_emptied(tmp_path: Path) -> None:
    target = tmp_path / "events.jsonl"
    target.write_bytes(b'{"uid": "uid-1", "na')
    sink = build(f"jsonfile:{target}")
    sink.send([event(2)])
    sink.close()
    assert [json.loads(line)["uid"] for line in target.read_text().splitlines()] == ["uid-2"]


def test_a_missing_directory_is_permanent(tmp_path: Path) -> None:
    sink = build(f"jsonfile:{tmp_path}/missing/events.jsonl")
    with pytest.raises(PermanentError, match="No such file or directory"):
        sink.send([event()])


def test_end_to_end_against_a_fake_cluster(tmp_path: Path) -> None:
    """The real command, a fake cluster: 3 Warnings and 2 Normals; level=Warning writes the 3."""
    target = tmp_path / "warnings.jsonl"
    with FakeCluster() as cluster:
        for n in range(5):
            cluster.add_event(type="Warning" if n % 2 == 0 else "Normal", reason="BackOff" if n % 2 == 0 else "Pulled")
        with run_eventrouter(cluster, f"--sink=jsonfile:{target}?level=Warning", workdir=tmp_path / "run"):
            wait_until(lambda: target.exists() and len(target.read_text().splitlines()) >= 3, what="3 lines written")
    # leaving run_eventrouter stopped it with SIGTERM and checked it exited with status 0
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert [line["type"] for line in lines] == ["Warning"] * 3
