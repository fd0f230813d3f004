"""S3 sink: flags, redaction, classification, and real uploads to moto's S3 server.

Each test uses its own bucket and spool directory; a fake clock (``Clock``) drives rotation by age
and the upload backoff, so no test sleeps for them.
"""

from __future__ import annotations

import gzip
import itertools
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, ReadTimeoutError

from eventrouter import Event, PermanentError, RetryableError, SinkConfigError, SinkURL
from eventrouter.cli import main as cli_main
from eventrouter.router import Router, SinkRunner
from sinks.s3 import S3Sink, _classify, athena_ddl
from tests.helpers import make_event, real_events, real_objects
from tests.servers.moto_s3 import ENV, MotoS3

START = datetime(2026, 4, 14, 10, 0, 0, tzinfo=UTC)  # the sink's wall clock: {start} in keys
_buckets = itertools.count(1)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def moto():
    server = MotoS3().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch):
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def bucket(moto):
    name = f"bkt-{next(_buckets)}-{os.getpid()}"
    moto.client().create_bucket(Bucket=name)
    return name


def build(flag: str, clock: Clock | None = None) -> S3Sink:
    url = SinkURL.parse(flag)
    return S3Sink(url, S3Sink.parse_options(url), clock=clock or Clock(), now=lambda: START)


def flag_for(moto: MotoS3, bucket: str, store: object, extra: str = "") -> str:
    return f"s3:s3://{bucket}/k8s-events?region=us-east-1&endpoint_url={moto.endpoint}&store_dir={store}{extra}"


def jsonl(events) -> bytes:
    return b"".join(orjson.dumps(e.to_dict()) + b"\n" for e in events)


def writer_of(store) -> str:
    return orjson.loads((store / "state.json").read_bytes())["writer"]


def spool_files(store) -> list[str]:
    return sorted(n for n in os.listdir(store) if n[0].isdigit())


# ---- flags ------------------------------------------------------------------------------------
FLAGS = [
    # the form
    ("s3:s3://bkt/k8s-events?region=eu-west-1",
     {"bucket": "bkt", "prefix": "k8s-events/", "region": "eu-west-1", "total_file_size": 16 * 1024 * 1024,
      "upload_timeout": 60.0, "store_dir": ".eventrouter/s3-spool/bkt-k8s-events"}),
    ("s3:s3://bkt", {"bucket": "bkt", "prefix": "", "region": "", "store_dir": ".eventrouter/s3-spool/bkt"}),
    ("s3:s3://bkt/a/b/?endpoint_url=http://minio:9000&force_path_style=true&access_key_id=K&secret_access_key=S",
     {"prefix": "a/b/", "endpoint_url": "http://minio:9000", "force_path_style": True, "access_key_id": "K"}),
    ("s3:s3://bkt/x?total_file_size=1M&upload_timeout=5m&store_dir=/var/lib/er&store_dir_limit_size=2G",
     {"total_file_size": 1024 * 1024, "upload_timeout": 300.0, "store_dir": "/var/lib/er",
      "store_dir_limit": 2 * 1024**3}),
    ("s3:s3://bkt/x?key_format=dt=%25Y-%25m-%25d/{cluster}-{writer}-{seq}.json.gz",
     {"key_format": "dt=%Y-%m-%d/{cluster}-{writer}-{seq}.json.gz"}),
    ("s3:s3://bkt/x?sse=aws:kms&sse_kms_key_id=alias/k8s&storage_class=STANDARD_IA&level=Warning",
     {"sse": "aws:kms", "sse_kms_key_id": "alias/k8s", "storage_class": "STANDARD_IA", "level": ["Warning"]}),
]


@pytest.mark.parametrize(("flag", "expected"), FLAGS)
def test_flags(flag, expected):
    sink = build(flag)
    for name, value in expected.items():
        got = getattr(sink, name) if hasattr(sink, name) else sink.opts[name]
        assert got == value, name


BAD_FLAGS = [
    ("s3:bkt/x", None, "give the bucket as s3:s3://BUCKET/PREFIX"),
    ("s3:https://bkt/x", None, "give the bucket as s3:s3://BUCKET/PREFIX"),
    ("s3:s3://Bad_Bucket", None, "is not an S3 bucket name"),
    ("s3:s3://user:pw@bkt", None, "credentials do not go in the URL"),
    ("s3:s3://bkt?access_key_id=K", "secret_access_key", "give both access_key_id and secret_access_key"),
    ("s3:s3://bkt?secret_access_key=S", "access_key_id", "give both"),
    ("s3:s3://bkt?key_format=year=%25Y/{seq}.json.gz", "key_format", "must contain {writer} and {seq}"),
    ("s3:s3://bkt?key_format=%25Y/{cluster}/{writer}-{seq}.json.gz", "key_format", "placeholders belong"),
    ("s3:s3://bkt?key_format=year=%25Y/{writer}-{seq}.json", "key_format", "must end with .gz"),
    ("s3:s3://bkt?key_format=%25S/{writer}-{seq}.json.gz", "key_format", "%S is not supported"),
    ("s3:s3://bkt?key_format=%25Y/{uuid}-{writer}-{seq}.json.gz", "key_format", "{uuid} is not a placeholder"),
    ("s3:s3://bkt?total_file_size=lots", "total_file_size", "is not a size such as 16M"),
    ("s3:s3://bkt?total_file_size=10", "total_file_size", "use 1K or more"),
    ("s3:s3://bkt?upload_timeout=0s", "upload_timeout", "out of range"),
    ("s3:s3://bkt?upload_chunk_size=1M", "upload_chunk_size", "5M or more"),
    ("s3:s3://bkt?sse=des", "sse", "use one of"),
    ("s3:s3://bkt?sse_kms_key_id=k", "sse_kms_key_id", "needs sse=aws:kms"),
    ("s3:s3://bkt?regoin=eu-west-1", "regoin", "unknown option; did you mean 'region'? allowed options are:"),
]


@pytest.mark.parametrize(("flag", "option", "message"), BAD_FLAGS)
def test_bad_flags(flag, option, message):
    with pytest.raises(SinkConfigError) as info:
        build(flag)
    assert info.value.sink == "s3"
    assert info.value.option == option
    assert message in str(info.value)


def test_from_url_does_no_io(tmp_path):
    store = tmp_path / "spool"
    S3Sink.from_url(SinkURL.parse(f"s3:s3://bkt?store_dir={store}&endpoint_url=http://127.0.0.1:9"))
    assert not store.exists()


def test_key_format_takes_strftime_codes_bare_or_escaped():
    # a % that starts no URL escape stays literal, so %Y works; %25Y is the same code, escaped
    bare = build("s3:s3://bkt?key_format=year=%Y/{writer}-{seq}.json.gz")
    escaped = build("s3:s3://bkt?key_format=year=%25Y/{writer}-{seq}.json.gz")
    assert bare.opts["key_format"] == escaped.opts["key_format"] == "year=%Y/{writer}-{seq}.json.gz"


# ---- secrets ----------------------------------------------------------------------------------
SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"


def test_secret_access_key_is_redacted(tmp_path, caplog):
    flag = (f"s3:s3://bkt/x?endpoint_url=http://127.0.0.1:9&access_key_id=AKIAEXAMPLE"
            f"&secret_access_key={SECRET}&session_token=tok-{SECRET}&store_dir={tmp_path}")
    sink = build(flag)
    redacted = S3Sink.redact(sink.url)
    assert SECRET not in redacted and SECRET not in repr(sink)
    assert "secret_access_key=***" in redacted and "session_token=***" in redacted
    assert "access_key_id=AKIAEXAMPLE" in redacted
    assert SECRET not in repr(sink.opts)
    with pytest.raises(SinkConfigError) as info:
        build(f"s3:s3://bkt?secret_access_key={SECRET}")
    assert SECRET not in str(info.value)
    # a failing upload (nothing listens on port 9): errors and logs carry no secret
    caplog.set_level(logging.DEBUG, logger="eventrouter")  # run -v 4 (botocore stays at WARNING)
    sink.send([make_event(1)])
    sink._clock.t += 3600
    with pytest.raises(RetryableError) as failure:
        sink.tick()
    sink.close()
    assert SECRET not in str(failure.value)
    assert SECRET not in caplog.text
    assert "stay in" in caplog.text  # close said where the events wait


# ---- classification -----------------------------------------------------------------------------
def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": f"{code} happened"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


def upload_failed(inner: Exception) -> S3UploadFailedError:
    try:
        try:
            raise inner
        except ClientError as exc:
            raise S3UploadFailedError(f"Failed to upload: {exc}")  # noqa: B904 (boto3 does the same)
    except S3UploadFailedError as wrapped:
        return wrapped


CLASSIFY = [
    (client_error("SlowDown", 503), RetryableError),
    (client_error("ServiceUnavailable", 503), RetryableError),
    (client_error("InternalError", 500), RetryableError),
    (client_error("RequestTimeout", 400), RetryableError),
    (client_error("TooManyRequests", 429), RetryableError),
    (client_error("ExpiredToken", 400), RetryableError),
    (client_error("AccessDenied", 403), PermanentError),
    (client_error("InvalidAccessKeyId", 403), PermanentError),
    (client_error("SignatureDoesNotMatch", 403), PermanentError),
    (client_error("NoSuchBucket", 404), PermanentError),
    (client_error("InvalidStorageClass", 400), PermanentError),
    (upload_failed(client_error("AccessDenied", 403)), PermanentError),
    (upload_failed(client_error("SlowDown", 503)), RetryableError),
    (EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), RetryableError),
    (ReadTimeoutError(endpoint_url="http://127.0.0.1:9"), RetryableError),
    (NoCredentialsError(), PermanentError),
    (OSError(28, "No space left on device"), RetryableError),
]


@pytest.mark.parametrize(("exc", "expected"), CLASSIFY, ids=[f"{type(e).__name__}-{i}" for i, (e, _) in
                                                             enumerate(CLASSIFY)])
def test_classify(exc, expected):
    assert type(_classify(exc)) is expected


def test_classify_names_the_code():
    assert "NoSuchBucket" in str(_classify(client_error("NoSuchBucket", 404)))
    assert "IRSA" in str(_classify(NoCredentialsError()))


# ---- uploads ----------------------------------------------------------------------------------
def test_objects_keys_and_gzip_content_exactly(moto, bucket, tmp_path):
    store = tmp_path / "spool"
    sink = build(flag_for(moto, bucket, store))
    nine = [make_event(i) for i in range(3)]
    ten = [make_event(i, last_timestamp=datetime(2026, 4, 14, 10, 5, i, tzinfo=UTC), cluster="prod eu")
           for i in range(3, 5)]
    sink.send(nine + ten)
    assert moto.keys(bucket) == []  # spooled, not uploaded yet
    sink.close()
    writer = writer_of(store)
    assert re.fullmatch(r"[0-9a-f]{8}", writer)
    assert moto.keys(bucket) == [
        f"k8s-events/year=2026/month=04/day=14/hour=09/events-20260414T100000Z-{writer}-00000001.json.gz",
        f"k8s-events/year=2026/month=04/day=14/hour=10/prod_eu-20260414T100000Z-{writer}-00000002.json.gz",
    ]
    first, second = moto.keys(bucket)
    assert gzip.decompress(moto.body(bucket, first)) == jsonl(nine)
    assert gzip.decompress(moto.body(bucket, second)) == jsonl(ten)
    assert moto.lines(bucket, first)[0]["last_timestamp"] == "2026-04-14T09:30:00Z"
    assert spool_files(store) == []


def test_rotation_by_age(moto, bucket, tmp_path):
    clock = Clock()
    store = tmp_path / "spool"
    sink = build(flag_for(moto, bucket, store, "&upload_timeout=60s"), clock)
    sink.send([make_event(1)])
    clock.t += 30
    sink.send([make_event(2)])
    clock.t += 29
    sink.tick()
    assert moto.keys(bucket) == []
    clock.t += 2
    sink.tick()
    [key] = moto.keys(bucket)
    assert gzip.decompress(moto.body(bucket, key)) == jsonl([make_event(1), make_event(2)])
    assert spool_files(store) == []
    sink.send([make_event(3)])  # a new chunk, with its own age
    sink.tick()
    assert len(moto.keys(bucket)) == 1
    clock.t += 61
    sink.tick()
    assert len(moto.keys(bucket)) == 2
    sink.close()


def test_rotation_by_size(moto, bucket, tmp_path):
    store = tmp_path / "spool"
    sink = build(flag_for(moto, bucket, store, "&total_file_size=4K&upload_timeout=1h"))
    events = [make_event(i) for i in range(40)]
    for start in range(0, 40, 7):
        sink.send(events[start:start + 7])
    sink.tick()  # sealed chunks go up; the last one keeps filling
    uploaded = moto.keys(bucket)
    assert len(uploaded) >= 4
    sink.close()
    keys = moto.keys(bucket)
    bodies = [gzip.decompress(moto.body(bucket, k)) for k in keys]
    assert all(len(b) <= 4096 for b in bodies)
    assert all(len(b) > 4096 - 700 for b in bodies[:-1])  # filled up before sealing
    assert b"".join(bodies) == jsonl(events)  # keys sort by seq: order kept, each event once


def test_multipart_upload_for_large_objects(moto, bucket, tmp_path):
    store = tmp_path / "spool"
    sink = build(flag_for(moto, bucket, store, "&total_file_size=64M&upload_chunk_size=5M"))
    noise = os.urandom(6 * 1024 * 1024).hex()  # hex of random bytes: gzip halves it, no better
    events = [make_event(i, message=noise[i * 2048:(i + 1) * 2048]) for i in range(6000)]
    for start in range(0, len(events), 500):
        sink.send(events[start:start + 500])
    sink.close()
    [key] = moto.keys(bucket)
    head = moto.client().head_object(Bucket=bucket, Key=key)
    assert head["ContentLength"] > 5 * 1024 * 1024
    assert re.search(r"-\d+\"?$", head["ETag"]), head["ETag"]  # a multipart ETag ends with -<parts>
    assert gzip.decompress(moto.body(bucket, key)) == jsonl(events)


def test_upload_failure_then_recovery(moto, tmp_path):
    clock = Clock()
    store = tmp_path / "spool"
    name = f"later-{os.getpid()}"
    sink = build(flag_for(moto, name, store, "&upload_timeout=60s&retry_backoff_max=30s"), clock)
    sink.send([make_event(1)])
    clock.t += 61
    with pytest.raises(PermanentError, match="NoSuchBucket"):
        sink.tick()
    # new events are still accepted while the upload waits
    sink.send([make_event(2), make_event(3)])
    moto.client().create_bucket(Bucket=name)
    sink.tick()  # still backing off: no request
    assert moto.keys(name) == []
    clock.t += 31
    sink.tick()  # retry due: the sealed chunk goes up
    assert len(moto.keys(name)) == 1
    clock.t += 30
    sink.tick()  # the chunk that filled meanwhile, by age
    lines = moto.all_lines(name)
    assert [line["uid"] for line in lines] == [make_event(n).uid for n in (1, 2, 3)]
    assert spool_files(store) == []
    sink.close()


def test_full_spool_refuses_until_uploads_work(moto, tmp_path):
    clock = Clock()
    store = tmp_path / "spool"
    name = f"full-{os.getpid()}"
    sink = build(flag_for(moto, name, store, "&store_dir_limit_size=3K&retry_backoff_max=5s"), clock)
    accepted = []
    with pytest.raises(RetryableError, match="is full") as info:
        for n in range(100):
            sink.send([make_event(n)])
            accepted.append(n)
    assert 3 <= len(accepted) < 20
    assert info.value.retry_after is not None and info.value.retry_after >= 1
    assert "NoSuchBucket" in str(info.value)
    moto.client().create_bucket(Bucket=name)
    clock.t += 6
    refused = len(accepted)
    sink.send([make_event(refused)])  # the router's retry: uploads make room, then the batch is spooled
    sink.close()
    assert [line["uid"] for line in moto.all_lines(name)] == [make_event(n).uid for n in [*accepted, refused]]


def test_disk_error_mid_batch_takes_the_partial_batch_back(moto, bucket, tmp_path):
    store = tmp_path / "spool"
    sink = build(flag_for(moto, bucket, store))
    sink.send([make_event(0)])  # chunk 1 (hour 09) exists and holds one event
    (store / "00000002.open").mkdir()  # the next chunk file cannot be created: a disk error
    batch = [make_event(1), make_event(2, last_timestamp=datetime(2026, 4, 14, 10, 1, tzinfo=UTC))]
    with pytest.raises(RetryableError, match="cannot write the spool"):
        sink.send(batch)
    (store / "00000002.open").rmdir()
    sink.send(batch)  # the router's retry of the same batch
    sink.close()
    assert [line["uid"] for line in moto.all_lines(bucket)] == [make_event(n).uid for n in (0, 1, 2)]


def test_crash_before_upload_then_restart_uploads_leftovers_first(moto, bucket, tmp_path):
    store = tmp_path / "spool"
    crashed = build(flag_for(moto, bucket, store, "&upload_timeout=1h"))
    old = [make_event(i) for i in range(5)]
    crashed.send(old)
    # the process dies here: no tick, no close; the disk keeps what send fsync'ed
    disk = tmp_path / "after-crash"
    shutil.copytree(store, disk)
    (disk / "00000001.open").open("ab").write(b'{"uid": "torn')  # a write cut short by the crash
    restarted = build(flag_for(moto, bucket, disk, "&upload_timeout=1h"))
    new = [make_event(i) for i in range(5, 8)]
    restarted.send(new)  # first use uploads the leftovers before anything else
    assert len(moto.keys(bucket)) == 1
    restarted.close()
    keys = moto.keys(bucket)
    assert [k.rsplit("-", 1)[1] for k in keys] == ["00000001.json.gz", "00000002.json.gz"]
    assert gzip.decompress(moto.body(bucket, keys[0])) == jsonl(old)
    assert gzip.decompress(moto.body(bucket, keys[1])) == jsonl(new)


def test_crash_between_upload_and_spool_delete_reuploads_to_the_same_key(moto, bucket, tmp_path):
    store = tmp_path / "spool"
    sink = build(flag_for(moto, bucket, store, "&upload_timeout=1s"))
    sink.send([make_event(i) for i in range(4)])
    sink._clock.t += 2
    for group in list(sink._open):
        sink._seal(group)
    disk = tmp_path / "after-crash"
    shutil.copytree(store, disk)  # the spool as it was when the upload finished
    sink.tick()
    [key] = moto.keys(bucket)
    first_etag = moto.client().head_object(Bucket=bucket, Key=key)["ETag"]
    restarted = build(flag_for(moto, bucket, disk))
    restarted.tick()
    restarted.close()
    assert moto.keys(bucket) == [key]  # the same object again, not a second one
    assert moto.client().head_object(Bucket=bucket, Key=key)["ETag"] == first_etag
    assert gzip.decompress(moto.body(bucket, key)) == jsonl([make_event(i) for i in range(4)])
    sink.close()


def test_open_checks_the_bucket(moto, bucket, tmp_path):
    build(flag_for(moto, bucket, tmp_path / "a")).open()
    with pytest.raises(PermanentError, match="does not exist"):
        build(flag_for(moto, "no-such-bucket-here", tmp_path / "b")).open()
    with pytest.raises(RetryableError, match="HeadBucket"):
        build(f"s3:s3://{bucket}?endpoint_url=http://127.0.0.1:9&store_dir={tmp_path / 'c'}").open()


def test_one_spool_one_writer(moto, bucket, tmp_path):
    store = tmp_path / "spool"
    first = build(flag_for(moto, bucket, store))
    first.send([make_event(1)])
    second = build(flag_for(moto, bucket, store))
    with pytest.raises(RetryableError, match="in use by another"):
        second.send([make_event(2)])
    first.close()
    second.send([make_event(2)])  # the lock is free again
    second.close()
    assert [line["uid"] for line in moto.all_lines(bucket)] == [make_event(1).uid, make_event(2).uid]


def test_close_twice_is_safe(moto, bucket, tmp_path):
    sink = build(flag_for(moto, bucket, tmp_path / "spool"))
    sink.close()
    sink.close()


# ---- through the router and the CLI -------------------------------------------------------------
def test_router_end_to_end_with_real_events(moto, bucket, tmp_path):
    events = real_events(300, cluster="kind")
    store = tmp_path / "spool"
    sink = S3Sink.from_url(SinkURL.parse(flag_for(moto, bucket, store, "&flush_interval=0.05")))
    router = Router([SinkRunner.build(sink)])
    router.start()
    for event in events:
        router.dispatch(event)
    assert router.stop(30)
    lines = moto.all_lines(bucket)
    assert sorted((x["uid"], x["resource_version"]) for x in lines) == sorted(e.key for e in events)
    for key in moto.keys(bucket):
        hour = re.search(r"year=(\d{4})/month=(\d\d)/day=(\d\d)/hour=(\d\d)/kind-", key)
        assert hour, key
        for line in moto.lines(bucket, key):  # partitioned by the event's UTC last_timestamp
            assert line["last_timestamp"].startswith("{}-{}-{}T{}:".format(*hour.groups()))
    assert spool_files(store) == []


def test_check_send_test_uploads_one_event(moto, bucket, tmp_path, capsys):
    flag = flag_for(moto, bucket, tmp_path / "spool")
    assert cli_main(["check", f"--sink={flag}", "--send-test", "--cluster-name=dev"]) == 0
    assert "send-test: delivered" in capsys.readouterr().out
    [line] = moto.all_lines(bucket)
    assert line["reason"] == "EventrouterTest" and line["cluster"] == "dev"


def _spooled_events(store) -> int:
    if not store.exists():
        return 0
    return sum(max(0, (store / n).read_bytes().count(b"\n") - 1) for n in spool_files(store))


def test_sigkill_between_spool_and_upload_then_restart(moto, bucket, tmp_path):
    """A real router process killed with SIGKILL after spooling: the restart uploads every event once."""
    objects = [orjson.dumps(e.raw) for e in real_events(200)]
    store = tmp_path / "spool"
    flag = flag_for(moto, bucket, store, "&upload_timeout=1h&flush_interval=0.1")
    env = {**os.environ, **ENV}
    cmd = [sys.executable, "-m", "eventrouter", "--source=file:-", f"--sink={flag}", "--healthz-port=0",
           "--cluster-name=c1"]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        proc.stdin.write(b"\n".join(objects[:150]) + b"\n")
        proc.stdin.flush()  # stdin stays open: the router keeps running, waiting for more
        deadline = time.monotonic() + 30
        while _spooled_events(store) < 150:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the router did not spool the events"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert moto.keys(bucket) == []  # killed before any upload
    rest = tmp_path / "rest.jsonl"
    rest.write_bytes(b"\n".join(objects[150:]) + b"\n")
    done = subprocess.run([*cmd[:3], f"--source=file:{rest}", *cmd[4:]], env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    lines = moto.all_lines(bucket)
    assert len(lines) == 200
    assert sorted((x["uid"], x["resource_version"]) for x in lines) == sorted(
        (o["metadata"]["uid"], o["metadata"]["resourceVersion"]) for o in map(orjson.loads, objects))
    assert spool_files(store) == []


# ---- Athena DDL -----------------------------------------------------------------------------------
def _ddl_columns(ddl: str) -> dict[str, str]:
    body = ddl.split("(\n", 1)[1].split("\n)\n", 1)[0]
    return dict(re.match(r"\s*`(\w+)` (.+?),?$", line).groups() for line in body.splitlines())


def test_ddl_matches_what_the_sink_writes(moto, bucket, tmp_path, capsys):
    flag = flag_for(moto, bucket, tmp_path / "spool")
    sink = build(flag)
    sink.send(real_events(20, cluster="kind"))
    sink.close()
    assert cli_main(["athena-ddl", f"--sink={flag}", "--table=k8s.events"]) == 0
    ddl = capsys.readouterr().out
    assert ddl.startswith("CREATE EXTERNAL TABLE IF NOT EXISTS k8s.events (")
    columns = _ddl_columns(ddl)
    key = moto.keys(bucket)[0]
    line = moto.lines(bucket, key)[0]
    # one column per field, in the written order; the enrichment columns last (those fields are written
    # only with --enrich: test_enriched_fields_are_columns_athena_can_query)
    assert list(columns) == [*line, "labels", "annotations", "owner"]
    struct = re.findall(r"(\w+):string", columns["involved_object"])
    assert struct == list(line["involved_object"])
    assert columns["count"] == "bigint" and isinstance(line["count"], int)
    assert "PARTITIONED BY (`year` int, `month` int, `day` int, `hour` int)" in ddl
    assert "'org.openx.data.jsonserde.JsonSerDe'" in ddl
    assert f"LOCATION 's3://{bucket}/k8s-events/'" in ddl
    template = re.search(r"'storage.location.template'='([^']+)'", ddl).group(1)
    # the template with the key's partition values is the folder the object is in
    values = dict(re.findall(r"(\w+)=(\d+)/", key))
    folder = re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], template)
    assert f"s3://{bucket}/{key}".startswith(folder) and "/" not in f"s3://{bucket}/{key}"[len(folder):]
    for col, digits in (("month", 2), ("day", 2), ("hour", 2)):
        assert f"'projection.{col}.digits'='{digits}'" in ddl
        assert len(values[col]) == digits
    assert int(values["year"]) in range(2014, 2100)


def _projected_years(ddl: str) -> range:
    low, high = re.search(r"'projection.year.range'='(\d+),(\d+)'", ddl).groups()
    return range(int(low), int(high) + 1)


def test_ddl_projection_covers_every_real_event_and_outliers_go_under_arrival_time(moto, bucket, tmp_path, capsys,
                                                                                  caplog):
    flag = flag_for(moto, bucket, tmp_path / "spool")
    sink = build(flag)
    events = real_events(cluster="kind")
    wrong_clock = replace(events[0], uid="wrong-clock", last_timestamp=datetime(2009, 1, 2, tzinfo=UTC))
    with caplog.at_level(logging.WARNING):
        sink.send([*events, wrong_clock])
    sink.close()
    assert cli_main(["athena-ddl", f"--sink={flag}"]) == 0
    projected = _projected_years(capsys.readouterr().out)
    keys = moto.keys(bucket)
    years = {int(re.search(r"year=(\d+)/", key).group(1)) for key in keys}
    assert {2018, 2019} <= years  # the corpus has archived events from before 2020
    assert all(year in projected for year in years)
    # the wrong clock's event is filed under its arrival time (the test clock's START), with a warning
    [key] = [k for k in keys if any(line["uid"] == "wrong-clock" for line in moto.lines(bucket, k))]
    assert f"year={START.year}/month={START.month:02d}/day={START.day:02d}/hour={START.hour:02d}/" in key
    assert "outside partition_years 2014,2099: filed under its arrival time (1 such events so far)" in caplog.text
    assert sink.out_of_range == 1
    assert sum(len(moto.lines(bucket, k)) for k in keys) == len(events) + 1
    # a narrower --years than the sink writes is said loudly
    assert cli_main(["athena-ddl", f"--sink={flag}", "--years=2020,2050"]) == 0
    assert "does not cover the sink's partition_years 2014,2099" in capsys.readouterr().err


def _doc_queries() -> list[str]:
    text = (Path(__file__).parents[2] / "docs" / "sinks" / "s3.md").read_text()
    section = text.split("### Counting problems and occurrences", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sql\n(.*?)```", section, re.S)


def _duckdb_table(root: Path) -> Any:
    """DuckDB over the downloaded objects, with the Athena DDL's columns and Athena's time functions."""
    import duckdb

    from sinks.s3._athena import COLUMNS

    def duck_type(athena: str) -> str:
        if athena.startswith("struct<"):
            fields = re.findall(r"(\w+):(\w+)", athena)
            return "STRUCT(" + ", ".join(f"{name} VARCHAR" for name, _ in fields) + ")"
        return {"string": "VARCHAR", "bigint": "BIGINT", "map<string,string>": "MAP(VARCHAR, VARCHAR)"}[athena]

    columns = "{" + ", ".join(f"'{name}': '{duck_type(kind)}'" for name, kind in COLUMNS) + "}"
    con = duckdb.connect()
    con.execute("CREATE MACRO from_iso8601_timestamp(text) AS CAST(text AS TIMESTAMPTZ)")
    con.execute("CREATE MACRO date_format(day, fmt) AS strftime(day, fmt)")
    con.execute("CREATE SCHEMA k8s")
    con.execute(f"CREATE VIEW k8s.events AS SELECT * FROM read_json('{root}/**/*.json.gz', "
                f"format='newline_delimited', hive_partitioning=true, columns={columns})")
    return con


def test_doc_queries_count_problems_and_occurrences_on_the_real_objects(moto, bucket, tmp_path):
    flag = flag_for(moto, bucket, tmp_path / "spool")
    sink = build(flag)
    objs = real_objects()
    events = [Event.from_object(o, "kind") for o in objs]
    sink.send(events)
    sink.close()
    root = tmp_path / "objects"
    for key in moto.keys(bucket):
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(moto.body(bucket, key))
    con = _duckdb_table(root)
    assert con.execute("SELECT count(*) FROM k8s.events").fetchone()[0] == len(events)
    problems_query, per_problem_query, history_query = _doc_queries()

    # expected, from the events themselves: a problem is one Event (uid); its occurrences in the rows
    # are the count increase they cover
    counts: dict[tuple[str, str], dict[str, list[int]]] = {}
    for e in events:
        if e.type == "Warning":
            counts.setdefault((e.namespace, e.reason), {}).setdefault(e.uid, []).append(e.count)
    expected = sorted(
        ((ns, reason, len(by_uid), sum(max(c) - min(c) + 1 for c in by_uid.values()))
         for (ns, reason), by_uid in counts.items()),
        key=lambda row: (-row[3], -row[2], row[0], row[1]))[:20]
    got = [tuple(row) for row in con.execute(problems_query).fetchall()]
    assert got == expected
    naive = con.execute("SELECT sum(\"count\") FROM k8s.events WHERE type = 'Warning'").fetchone()[0]
    assert naive > sum(row[3] for row in expected)  # what the old doc's sum("count") gave: too much

    top = con.execute(per_problem_query).fetchall()
    totals: dict[str, int] = {}
    rows: dict[str, int] = {}
    for e in events:
        totals[e.uid] = max(totals.get(e.uid, 0), e.count)
        rows[e.uid] = rows.get(e.uid, 0) + 1
    assert len(top) == 20
    for uid, _ns, _kind, _obj, _reason, total, archived, _last in top:
        assert (total, archived) == (totals[uid], rows[uid])
    assert [r[5] for r in top] == sorted((r[5] for r in top), reverse=True)
    assert con.execute(history_query).fetchall() == []  # runs as written (no such pod in the corpus)


def test_ddl_for_a_date_partition():
    ddl = athena_ddl("bkt", "ev/", "dt=%Y-%m-%d/{writer}-{seq}.json.gz", table="t", years=(2025, 2030))
    assert "PARTITIONED BY (`dt` string)" in ddl
    assert "'projection.dt.type'='date'" in ddl and "'projection.dt.format'='yyyy-MM-dd'" in ddl
    assert "'projection.dt.range'='2025-01-01,2030-12-31'" in ddl and "'projection.dt.interval.unit'='DAYS'" in ddl
    assert "'storage.location.template'='s3://bkt/ev/dt=${dt}/'" in ddl
    # the sink writes the same folder
    sink = build("s3:s3://bkt/ev?key_format=dt=%25Y-%25m-%25d/{writer}-{seq}.json.gz")
    from sinks.s3._keys import group_of

    assert group_of(sink._template, datetime(2026, 4, 14, 9, tzinfo=UTC)).startswith("ev/dt=2026-04-14/")


@pytest.mark.parametrize(("key_format", "message"), [
    ("{writer}-{seq}.json.gz", "no partition folders"),
    ("%Y%m/{writer}-{seq}.json.gz", "name it"),
    ("name=%Y/{writer}-{seq}.json.gz", "name of an event field"),
    ("Year=%Y/{writer}-{seq}.json.gz", "is not a column name"),
])
def test_ddl_refuses_key_formats_athena_cannot_project(key_format, message, capsys):
    flag = "s3:s3://bkt?key_format=" + key_format.replace("%", "%25")
    assert cli_main(["athena-ddl", f"--sink={flag}"]) == 2
    assert message in capsys.readouterr().err


def test_ddl_command_errors():
    assert cli_main(["athena-ddl", "--sink=log:stdout"]) == 2
    assert cli_main(["athena-ddl", "--sink=s3:s3://bkt?regoin=x"]) == 2
    with pytest.raises(SystemExit) as info:
        cli_main(["athena-ddl", "--sink=s3:s3://bkt", "--table=x; DROP TABLE y"])
    assert info.value.code == 2


def test_check_send_test_reports_a_failed_upload_instead_of_delivered(moto, bucket, tmp_path, capsys):
    """open() passes (the bucket exists) but S3 refuses the object: check must say so, not "delivered"."""
    flag = flag_for(moto, bucket, tmp_path / "spool", "&storage_class=BOGUS")
    assert cli_main(["check", f"--sink={flag}", "--send-test"]) == 1
    out = capsys.readouterr().out
    assert "open: ok" in out and "send-test: delivered" not in out
    assert "failed: PermanentError: upload of s3://" in out and "InvalidStorageClass" in out
    assert moto.keys(bucket) == []


def test_enriched_fields_are_columns_athena_can_query(moto, bucket, tmp_path):
    """With --enrich the JSON lines carry labels, annotations and owner: the DDL's columns read them (and
    read NULL for events written without enrichment)."""
    from eventrouter.event import FrozenDict, Owner

    sink = build(flag_for(moto, bucket, tmp_path / "spool"))
    enriched = make_event(1, labels=FrozenDict({"team": "payments"}), owner=Owner("Deployment", "default", "api"))
    sink.send([enriched, make_event(2)])
    sink.close()
    root = tmp_path / "objects"
    for key in moto.keys(bucket):
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(moto.body(bucket, key))
    con = _duckdb_table(root)
    rows = con.execute("SELECT uid, labels['team'], owner.kind, owner.name FROM k8s.events ORDER BY uid").fetchall()
    assert rows == [(enriched.uid, "payments", "Deployment", "api"), (make_event(2).uid, None, None, None)]
