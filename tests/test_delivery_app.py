"""The app's data directory: each sink's state_dir, the --data-dir flag."""

import os

import orjson

from eventrouter import app
from eventrouter.app import RunConfig, run
from eventrouter.cli import run_config, run_parser
from eventrouter.sources import SourceContext
from tests.helpers import real_objects


def test_each_sink_gets_its_own_state_dir_under_the_data_dir_before_it_opens(tmp_path, monkeypatch):
    opened = []
    real_open = app._open

    def record_open(sink, label):
        opened.append((label, sink.state_dir, os.path.isdir(sink.state_dir)))
        real_open(sink, label)

    monkeypatch.setattr(app, "_open", record_open)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(orjson.dumps(o) + b"\n" for o in real_objects()[:3]))
    out = tmp_path / "out.jsonl"
    data = tmp_path / "data"
    config = RunConfig(source=f"file:{path}", sinks=[f"jsonfile:{out}", f"jsonfile:{out}.2"],
                       context=SourceContext(), healthz_port=0, data_dir=str(data))
    assert run(config) == 0
    assert opened == [("jsonfile", str(data / "sinks" / "jsonfile"), True),
                      ("jsonfile-2", str(data / "sinks" / "jsonfile-2"), True)]
    assert len(out.read_bytes().splitlines()) == 3


def test_the_data_dir_flag_defaults_to_eventrouter_in_the_working_directory(monkeypatch):
    monkeypatch.delenv("EVENTROUTER_DATA_DIR")
    assert run_config(run_parser().parse_args(["--source=file:x"])).data_dir == ".eventrouter"
    monkeypatch.setenv("EVENTROUTER_DATA_DIR", "/var/lib/eventrouter")
    assert run_config(run_parser().parse_args(["--source=file:x"])).data_dir == "/var/lib/eventrouter"
    assert run_config(run_parser().parse_args(["--source=file:x", "--data-dir=/var/lib/x"])).data_dir == "/var/lib/x"


def test_metrics_count_every_undelivered_event_and_the_disk_buffer(tmp_path):
    """Issue 15: the queue depth counted a batch in flight as one event; now memory, batch and disk all count."""
    import threading

    from eventrouter.health import SourceState
    from eventrouter.metrics import RouterCollector
    from eventrouter.router import Router, SinkRunner
    from tests.helpers import make_event
    from tests.test_router import BlockingSink, build, wait_for

    stalled = build(BlockingSink, "queue_size=20&batch_size=7&buffer_max_bytes=64MiB")
    stalled.release = threading.Event()
    runner = SinkRunner.build(stalled, label="slow", data_dir=str(tmp_path))
    router = Router([runner])
    router.start()
    for i in range(3):
        router.dispatch(make_event(i))
    assert wait_for(lambda: runner._inflight)  # a batch of 3 from memory, stuck in send
    for i in range(3, 500):
        router.dispatch(make_event(i))
    samples = {(s.name, s.labels.get("sink")): s.value
               for family in RouterCollector(router, SourceState()).collect() for s in family.samples}
    stalled.release.set()
    router.stop(5.0)
    assert samples[("eventrouter_sink_queue_depth", "slow")] == 500
    assert samples[("eventrouter_sink_events_spilled_total", "slow")] == 497
    assert samples[("eventrouter_sink_buffer_capacity_bytes", "slow")] == 64 << 20
    assert 0 < samples[("eventrouter_sink_buffer_bytes", "slow")] < 64 << 20


def test_a_data_dir_that_cannot_be_used_stops_start_up_with_one_line(tmp_path, capsys):
    from eventrouter.cli import main

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    source = tmp_path / "events.jsonl"
    source.write_bytes(b"")
    code = main([f"--source=file:{source}", "--sink=log", f"--data-dir={blocker}", "--healthz-port=0"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"eventrouter: error: --data-dir={blocker}: cannot ") and len(err.splitlines()) == 1
