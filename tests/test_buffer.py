"""The disk buffer: order, restart, crash safety (torn tail, corrupted record), size bound, and the runner on it."""

import os
import threading
import time
from itertools import accumulate

import pytest

from eventrouter import RetryableError
from eventrouter.buffer import DiskBuffer, encode_event, encode_record, parse_size, size_problem
from eventrouter.event import Event
from eventrouter.positions import event_key
from eventrouter.router import Router, SinkRunner
from tests.helpers import make_event, real_objects
from tests.test_router import BlockingSink, RecordingSink, build, wait_for


def events(n=200):
    """Real Kubernetes objects (re-created from their object) and hand-made ones (from their fields)."""
    objs = real_objects()
    real = [Event.from_object(objs[i % len(objs)], "prod") for i in range(n // 2)]
    return real + [make_event(i) for i in range(n - len(real))]


def append_all(buffer, evs, first_seq=1):
    for seq, e in enumerate(evs, first_seq):
        assert buffer.append(seq, e.last_timestamp.timestamp(), event_key(e), encode_event(e))


def read_all(buffer, batch=37):
    out = []
    while (read := buffer.read(batch)) is not None:
        out.extend(read.events)
        buffer.commit(read)
    return out


def segments(path):
    return sorted(n for n in os.listdir(path) if n.endswith(".seg"))


def test_events_come_back_in_order_and_equal(tmp_path):
    evs = events()
    buffer = DiskBuffer(str(tmp_path / "b"), 1 << 30, segment_bytes=16 << 10)
    buffer.open()
    append_all(buffer, evs)
    assert buffer.pending == len(evs)
    got = read_all(buffer)
    assert [e.to_dict(raw=True) for e in got] == [e.to_dict(raw=True) for e in evs]
    assert buffer.pending == 0
    assert len(segments(tmp_path / "b")) == 1  # delivered segments are deleted (the tail stays open)
    buffer.close()
    assert segments(tmp_path / "b") == []


def test_enrichment_survives_the_disk(tmp_path):
    from eventrouter.event import FrozenDict, Owner

    real = Event.from_object(real_objects()[0], "prod")
    made = make_event(1)
    for e in (real, made):
        object.__setattr__(e, "labels", FrozenDict({"team": "a"}))
        object.__setattr__(e, "owner", Owner("Deployment", "default", "web", "apps/v1"))
    buffer = DiskBuffer(str(tmp_path / "b"), 1 << 30)
    buffer.open()
    append_all(buffer, [real, made])
    got = read_all(buffer)
    assert [e.to_dict(raw=True) for e in got] == [e.to_dict(raw=True) for e in (real, made)]
    assert got[0].labels == {"team": "a"} and got[1].owner == made.owner


def test_a_restart_resumes_after_what_was_delivered(tmp_path):
    evs = events(100)
    buffer = DiskBuffer(str(tmp_path / "b"), 1 << 30, segment_bytes=8 << 10)
    buffer.open()
    append_all(buffer, evs)
    first = buffer.read(40)
    buffer.commit(first)
    buffer.read(10)  # read but not delivered when the process stops
    buffer.close()

    again = DiskBuffer(str(tmp_path / "b"), 1 << 30, segment_bytes=8 << 10)
    again.open()
    assert again.restored == 60 and again.id == buffer.id
    got = read_all(again)
    assert [e.key for e in got] == [e.key for e in evs[40:]]
    assert again.contains(event_key(evs[99])) and not again.contains(event_key(evs[0]))


def written_segment(tmp_path, evs):
    """The path of the one segment of a buffer in tmp_path/b holding ``evs``, synced to disk."""
    buffer = DiskBuffer(str(tmp_path / "b"), 1 << 30)
    buffer.open()
    append_all(buffer, evs)
    buffer.sync(force=True)
    (seg,) = segments(tmp_path / "b")
    return tmp_path / "b" / seg


def test_a_torn_tail_is_cut_and_the_records_before_it_are_kept(tmp_path):
    evs = events(20)
    path = written_segment(tmp_path, evs)
    whole = path.read_bytes()
    record = whole[: len(whole) // 20]
    with open(path, "ab") as fh:  # a crash in the middle of writing a record
        fh.write(record[: len(record) // 2])
    # (no close: the process is gone)

    again = DiskBuffer(str(tmp_path / "b"), 1 << 30)
    again.open()
    assert again.restored == 20 and again.corrupted == 0
    assert path.stat().st_size == len(whole)
    append_all(again, [make_event(99)], first_seq=21)
    assert [e.key for e in read_all(again)] == [e.key for e in evs] + [make_event(99).key]


def test_a_corrupted_record_is_skipped_and_counted_not_fatal(tmp_path, caplog):
    evs = [make_event(i) for i in range(10)]
    path = written_segment(tmp_path, evs)
    data = bytearray(path.read_bytes())
    size = len(data) // 10  # the records have the same length
    data[5 * size + size // 2] ^= 0xFF  # one bit rot in record 5's payload
    path.write_bytes(bytes(data))

    again = DiskBuffer(str(tmp_path / "b"), 1 << 30)
    again.open()
    assert again.restored == 9 and again.corrupted == 1
    assert [e.key for e in read_all(again)] == [e.key for i, e in enumerate(evs) if i != 5]
    assert "1 corrupted records skipped" in caplog.text


def test_a_full_buffer_refuses_the_record(tmp_path):
    buffer = DiskBuffer(str(tmp_path / "b"), 4096)
    buffer.open()
    e = make_event(1)
    payload = encode_event(e)
    accepted = 0
    while buffer.append(accepted, 0.0, event_key(e), payload):
        accepted += 1
    assert 0 < accepted == 4096 // len(encode_record(0, 0.0, event_key(e), payload))
    assert buffer.size <= 4096


def test_sizes_are_parsed_with_units():
    assert parse_size("2GiB") == 2 << 30 and parse_size("500MB") == 500 * 10**6 and parse_size("4096") == 4096
    assert size_problem("2 gigs") == "'2 gigs' is not a size such as 512MiB, 2GiB or a number of bytes"


# ---- the runner on a disk buffer ------------------------------------------------------------
def test_a_stalled_sink_spills_to_disk_and_delivers_everything_once_in_order(tmp_path):
    stalled = build(BlockingSink, "queue_size=50&batch_size=100")
    stalled.release = threading.Event()
    healthy = build(RecordingSink, "batch_size=100")
    runners = [SinkRunner.build(stalled, label="stalled", data_dir=str(tmp_path)),
               SinkRunner.build(healthy, label="healthy", data_dir=str(tmp_path))]
    router = Router(runners)
    router.start()
    evs = events(3000)
    for e in evs:
        router.dispatch(e)
    assert wait_for(lambda: len(healthy.received) == 3000)
    slow = runners[0]
    assert len(slow._queue) == 0 and slow.buffer.pending >= 2900  # on disk, not in memory
    assert slow.depth == 3000  # every undelivered event counts, the batch in flight included
    # the batch the stalled worker holds came from memory (it pins accepted_seq); the rest is on disk, fsynced
    assert router.accepted_seq() == slow._inflight_first - 1 and router.settled_seq() == 0
    stalled.release.set()
    assert wait_for(lambda: len(stalled.received) == 3000)
    for e in evs[:10]:  # the worker is back on memory afterwards
        router.dispatch(e)
    assert wait_for(lambda: len(stalled.received) == 3010)
    assert router.stop(5.0)
    assert [e.key for e in stalled.received] == [e.key for e in evs + evs[:10]]
    assert [e.key for e in healthy.received] == [e.key for e in evs + evs[:10]]
    assert segments(tmp_path / "buffer" / "stalled") == []


class DownSink(RecordingSink):
    name = "down"
    up = False

    def send(self, batch):
        if not self.up:
            raise RetryableError("connection refused", retry_after=0.05)
        super().send(batch)


def test_what_is_left_at_the_shutdown_deadline_is_delivered_first_after_a_restart(tmp_path, caplog):
    down = build(DownSink, "queue_size=10&batch_size=5")
    runner = SinkRunner.build(down, label="s", data_dir=str(tmp_path))
    router = Router([runner])
    router.start()
    evs = [make_event(i) for i in range(30)]
    for e in evs[:25]:
        router.dispatch(e)
    assert not router.stop(0.3)
    assert runner.stats.buffered_at_exit == 25 and runner.stats.dropped_shutdown == 0
    assert "25 events not delivered before the shutdown deadline; kept in the disk buffer" in caplog.text

    sink = build(RecordingSink)
    runner2 = SinkRunner.build(sink, label="s", data_dir=str(tmp_path))
    router2 = Router([runner2])
    assert runner2.depth == 25
    router2.start()
    for e in evs:  # the source lists everything again: what the buffer holds is not sent twice
        router2.dispatch(e, relisted=True)
    assert wait_for(lambda: len(sink.received) == 30)
    assert router2.stop(5.0)
    assert sorted(e.key for e in sink.received) == sorted(e.key for e in evs)  # each once
    assert [e.key for e in sink.received[25:]] == [e.key for e in evs[25:]]
    assert runner2.stats.relist_skipped == 25


def test_a_batch_stuck_in_send_at_the_deadline_is_not_kept_and_comes_again_from_the_source(tmp_path, caplog):
    stalled = build(BlockingSink, "queue_size=10&batch_size=5")
    stalled.release = threading.Event()
    runner = SinkRunner.build(stalled, label="s", data_dir=str(tmp_path))
    router = Router([runner])
    router.start()
    evs = [make_event(i) for i in range(25)]
    for e in evs[:3]:
        router.dispatch(e)
    assert wait_for(lambda: runner._inflight)  # a batch of 3 from memory, stuck in send
    for e in evs[3:]:
        router.dispatch(e)
    assert not router.stop(0.2)
    assert runner.stats.buffered_at_exit == 22 and runner.stats.dropped_shutdown == 3
    assert "3 events not delivered before the shutdown deadline (in a send that did not return" in caplog.text
    stalled.release.set()

    sink = build(RecordingSink)
    router2 = Router([SinkRunner.build(sink, label="s", data_dir=str(tmp_path))])
    router2.start()
    for e in evs:
        router2.dispatch(e, relisted=True)
    assert wait_for(lambda: len(sink.received) == 25)
    assert router2.stop(5.0)
    assert sorted(e.key for e in sink.received) == sorted(e.key for e in evs)


def test_a_relisted_event_already_in_the_disk_buffer_is_skipped(tmp_path):
    stalled = build(BlockingSink, "queue_size=5")
    stalled.release = threading.Event()
    runner = SinkRunner.build(stalled, label="s", data_dir=str(tmp_path))
    router = Router([runner])
    router.start()
    evs = [make_event(i) for i in range(40)]
    for e in evs:
        router.dispatch(e)
    for e in evs:
        router.dispatch(e, relisted=True)
    assert runner.stats.relist_skipped == 40
    stalled.release.set()
    assert wait_for(lambda: len(stalled.received) == 40)
    assert router.stop(5.0)
    assert [e.key for e in stalled.received] == [e.key for e in evs]


def test_a_buffer_of_another_lineage_is_discarded_on_restore(tmp_path, caplog):
    stalled = build(BlockingSink, "queue_size=5")
    stalled.release = threading.Event()
    runner = SinkRunner.build(stalled, label="s", data_dir=str(tmp_path))
    router = Router([runner])
    router.start()
    for i in range(20):
        router.dispatch(make_event(i))
    router.stop(0.2)

    sink = build(RecordingSink)
    runner2 = SinkRunner.build(sink, label="s", data_dir=str(tmp_path))
    router2 = Router([runner2])
    router2.restore_positions({"s": {"floor": None, "max": None, "keys": "", "buffer": "0" * 32}})
    assert runner2.depth == 0
    assert "discarded 20 buffered events" in caplog.text
    router2.start()
    assert router2.stop(5.0)
    assert sink.received == []


@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest"])
def test_only_a_full_disk_buffer_drops_and_it_says_so(tmp_path, caplog, policy):
    stalled = build(BlockingSink, f"queue_size=5&buffer_max_bytes=64KiB&overflow={policy}")
    stalled.release = threading.Event()
    runner = SinkRunner.build(stalled, label="s", data_dir=str(tmp_path))
    router = Router([runner])  # not started: nothing is delivered
    evs = [make_event(i) for i in range(500)]
    for e in evs:
        router.dispatch(e)
    dropped = runner.stats.dropped_overflow
    assert dropped > 0 and runner.depth + dropped == 500
    assert f"disk buffer full (65536 bytes); {dropped} events dropped so far" in caplog.text or \
        "disk buffer full (65536 bytes)" in caplog.text
    stalled.release.set()
    router.start()
    assert wait_for(lambda: len(stalled.received) == 500 - dropped)
    router.stop(5.0)
    got = [e.key for e in stalled.received]
    assert len(set(got)) == len(got)
    if policy == "drop_newest":
        assert got == [e.key for e in evs[: len(got)]]
    else:
        assert got[-1] == evs[-1].key


def test_the_delivery_position_reaches_disk_within_a_sync_interval_without_more_traffic(tmp_path):
    """What a crash (no close) can repeat is bounded by sync_interval, even when the sink then goes quiet."""
    evs = [make_event(i) for i in range(30)]
    buffer = DiskBuffer(str(tmp_path / "b"), 1 << 30, sync_interval=0.05)
    buffer.open()
    append_all(buffer, evs)
    for _ in range(3):  # delivered in three batches, quicker than the interval
        buffer.commit(buffer.read(10))
    time.sleep(0.1)
    buffer.sync()  # the router's periodic call (Router.settled_seq)
    # a SIGKILL now: no close()
    again = DiskBuffer(str(tmp_path / "b"), 1 << 30)
    again.open()
    assert again.restored == 0 and again.read(10) is None


def test_a_sink_that_refuses_moves_its_memory_window_to_disk_at_once(tmp_path):
    """A down sink holds no events in RAM but the batch being retried: the rest waits on disk."""
    down = build(DownSink, "queue_size=1000&batch_size=5&flush_interval=10ms")
    runner = SinkRunner.build(down, label="s", data_dir=str(tmp_path))
    router = Router([runner])
    router.start()
    evs = [make_event(i) for i in range(5)]
    for e in evs:
        router.dispatch(e)
    assert wait_for(lambda: runner.stats.retried > 0 or runner._inflight)
    more = [make_event(i) for i in range(5, 200)]
    for e in more:
        router.dispatch(e)
    assert wait_for(lambda: runner._spilling and not runner._queue)
    assert runner.depth == 200 and runner.buffer.pending == 195
    down.up = True
    assert wait_for(lambda: len(down.received) == 200)
    assert router.stop(5.0)
    assert [e.key for e in down.received] == [e.key for e in evs + more]


# ---- the memory window's encoded events meet the disk buffer; bounded reads --------------------------------
def test_encoded_events_of_the_window_spill_as_they_are_and_come_back_in_order(tmp_path):
    stalled = build(BlockingSink, "queue_size=1000&batch_size=50")  # 50 + 256 Events, the rest encoded
    stalled.release = threading.Event()
    runner = SinkRunner.build(stalled, label="stalled", data_dir=str(tmp_path))
    router = Router([runner])
    evs = events(3000)
    for e in evs[:1000]:
        router.dispatch(e)
    assert runner.stats.packed == 1000 - 50 - 256 and runner.buffer.pending == 0
    for e in evs[1000:]:  # the window is full: it goes to disk first, then the rest behind it
        router.dispatch(e)
    assert len(runner._queue) == 0 and runner.buffer.pending == 3000 and runner.depth == 3000
    router.start()
    stalled.release.set()
    assert wait_for(lambda: len(stalled.received) == 3000)
    assert router.stop(5.0)
    assert [e.to_dict(raw=True) for e in stalled.received] == [e.to_dict(raw=True) for e in evs]


def test_encoded_events_left_at_the_shutdown_deadline_are_kept_and_delivered_after_a_restart(tmp_path, caplog):
    down = build(DownSink, "queue_size=2000&batch_size=50")
    runner = SinkRunner.build(down, label="s", data_dir=str(tmp_path))
    router = Router([runner])
    evs = events(1200)
    for e in evs:
        router.dispatch(e)
    assert runner.stats.packed == 1200 - 50 - 256
    router.start()
    assert not router.stop(0.3)
    assert runner.stats.buffered_at_exit == 1200 and runner.stats.dropped_shutdown == 0

    sink = build(RecordingSink, "batch_size=50")
    runner2 = SinkRunner.build(sink, label="s", data_dir=str(tmp_path))
    router2 = Router([runner2])
    router2.start()
    assert wait_for(lambda: len(sink.received) == 1200)
    assert router2.stop(5.0)
    assert sorted(e.key for e in sink.received) == sorted(e.key for e in evs)  # each once
    # the window went to disk at the first refusal; the batch given up at the deadline was written behind it
    assert [e.to_dict(raw=True) for e in sink.received] == [e.to_dict(raw=True) for e in evs[50:] + evs[:50]]


def test_reads_go_in_bounded_chunks_and_a_record_larger_than_a_chunk_still_comes_back(tmp_path, monkeypatch):
    import eventrouter.buffer as buffer_module

    monkeypatch.setattr(buffer_module, "READ_CHUNK", 3000)  # a few records per read
    evs = events(60)
    big = make_event(500, message=os.urandom(10_000).hex())  # larger than a chunk, compressed or not
    evs.insert(30, big)
    buffer = DiskBuffer(str(tmp_path / "b"), 1 << 30)
    buffer.open()
    append_all(buffer, evs)
    total = buffer.size
    sizes = []
    real_read = buffer._read_bytes

    def counted_read(seg, offset, size):
        sizes.append(size)
        return real_read(seg, offset, size)

    monkeypatch.setattr(buffer, "_read_bytes", counted_read)
    got = read_all(buffer, batch=7)
    assert [e.to_dict(raw=True) for e in got] == [e.to_dict(raw=True) for e in evs]
    # a chunk at a time, or the one record larger than a chunk; not the rest of the segment per batch
    assert max(sizes) == len(encode_record(31, big.last_timestamp.timestamp(), event_key(big), encode_event(big)))
    assert sum(sizes) < 3 * total


def test_a_corrupted_record_across_a_read_boundary_costs_only_itself(tmp_path, monkeypatch):
    import eventrouter.buffer as buffer_module

    evs = [make_event(i) for i in range(40)]
    path = written_segment(tmp_path, evs)
    data = bytearray(path.read_bytes())
    ends = list(accumulate(len(encode_record(seq, e.last_timestamp.timestamp(), event_key(e), encode_event(e)))
                           for seq, e in enumerate(evs, 1)))
    assert ends[-1] == len(data)
    data[ends[9]] ^= 0xFF  # record 10's magic: the reader must search for the next record
    path.write_bytes(bytes(data))
    # a chunk ends inside record 11: the search for the next record crosses it
    monkeypatch.setattr(buffer_module, "READ_CHUNK", (ends[10] + ends[11]) // 2)

    again = DiskBuffer(str(tmp_path / "b"), 1 << 30)
    again.open()
    assert again.restored == 39 and again.corrupted == 1
    assert [e.key for e in read_all(again, batch=100)] == [e.key for i, e in enumerate(evs) if i != 10]


def test_compressed_and_plain_records_are_both_read(tmp_path):
    import zlib

    from eventrouter.buffer import BODY, MAGIC, PREFIX

    evs = events(80)[:40]  # real objects
    old = tmp_path / "b"
    old.mkdir()
    plain = b""
    for seq, e in enumerate(evs[:20], 1):  # as a spill writes them
        payload = encode_event(e)
        body = BODY.pack(seq, e.last_timestamp.timestamp(), event_key(e)) + payload
        plain += PREFIX.pack(MAGIC, len(payload), zlib.crc32(body)) + body
    (old / "000000000001.seg").write_bytes(plain)
    buffer = DiskBuffer(str(old), 1 << 30)
    buffer.open()
    assert buffer.restored == 20 and buffer.corrupted == 0
    before = buffer.size
    for seq, e in enumerate(evs[20:], 21):  # as a sink's held window spills them
        record = encode_record(seq, e.last_timestamp.timestamp(), event_key(e), encode_event(e), compress=True)
        assert buffer.append_record(record, seq, e.last_timestamp.timestamp(), event_key(e))
    json_size = sum(len(encode_event(e)) for e in evs[20:])
    assert buffer.size - before < 0.75 * json_size  # compressed (headers included)
    assert [e.to_dict(raw=True) for e in read_all(buffer)] == [e.to_dict(raw=True) for e in evs]
