"""The firehose sink against moto's Firehose with an S3 destination: the objects hold exactly the events."""

from __future__ import annotations

import gzip
import itertools
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from eventrouter import PartialError, PermanentError, RetryableError, SinkConfigError, SinkURL, json_line
from sinks.firehose import FirehoseSink, classify
from sinks.s3 import S3Sink
from tests.helpers import DATA, make_event, real_events, real_objects
from tests.servers.moto_firehose import AwsFirehose, create_stream, stored_lines
from tests.servers.moto_s3 import ENV, REGION, MotoS3

_names = itertools.count()


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoS3]:
    server = MotoS3().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def stream(moto: MotoS3) -> tuple[str, str]:
    """A fresh delivery stream and its destination bucket."""
    n = next(_names)
    name, bucket = f"k8s-events-{n}", f"firehose-dest-{n}"
    create_stream(moto, name, bucket)
    return name, bucket


def build(flag: str, client: AwsFirehose | None = None) -> FirehoseSink:
    url = SinkURL.parse(flag)
    if client is None:
        sink = FirehoseSink.from_url(url)
        assert isinstance(sink, FirehoseSink)
        return sink
    return FirehoseSink(url, FirehoseSink.parse_options(url), client=client)


# ---- flags ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("flag", "stream", "region"),
    [
        ("firehose:k8s-events?region=eu-west-1", "k8s-events", "eu-west-1"),
        ("firehose:k8s.events_v2", "k8s.events_v2", ""),
        ("firehose:k8s-events?endpoint_url=http://localstack:4566&access_key_id=K&secret_access_key=S",
         "k8s-events", ""),
    ],
)
def test_flags(flag: str, stream: str, region: str) -> None:
    sink = build(flag)
    assert (sink.stream, sink.opts["region"], sink.opts["batch_size"]) == (stream, region, 500)


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("firehose:", "give the delivery stream name"),
        ("firehose:https://firehose.eu-west-1.amazonaws.com", "give the delivery stream name"),
        ("firehose:a/b", "give the delivery stream name"),
        ("firehose:s?access_key_id=K", "access_key_id and secret_access_key together"),
        ("firehose:s?endpoint_url=localstack:4566", "option 'endpoint_url'"),
        ("firehose:s?regoin=eu-west-1", "did you mean 'region'"),
    ],
)
def test_bad_flags(flag: str, message: str) -> None:
    with pytest.raises(SinkConfigError, match=message):
        build(flag)


def test_secrets_are_masked() -> None:
    flag = "firehose:s?access_key_id=AK&secret_access_key=sk-SECRET&session_token=st-SECRET"
    assert "SECRET" not in FirehoseSink.redact(SinkURL.parse(flag)) + repr(build(flag)) + repr(build(flag).opts)


# ---- classification of whole-call errors ----------------------------------------------------------
def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "PutRecordBatch")


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (client_error("ServiceUnavailableException", 503), RetryableError),
        (client_error("ThrottlingException", 400), RetryableError),
        (client_error("LimitExceededException", 400), RetryableError),
        (client_error("InternalFailure", 500), RetryableError),
        (client_error("ExpiredTokenException", 400), RetryableError),
        (client_error("ResourceNotFoundException", 400), PermanentError),
        (client_error("AccessDeniedException", 400), PermanentError),
        (client_error("InvalidArgumentException", 400), PermanentError),
        (client_error("ValidationException", 400), PermanentError),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), RetryableError),
        (NoCredentialsError(), RetryableError),
    ],
)
def test_classification(exc: Exception, kind: type) -> None:
    assert type(classify(exc)) is kind


# ---- what reaches S3 ------------------------------------------------------------------------------
def test_the_objects_hold_exactly_the_events(moto: MotoS3, stream: tuple[str, str]) -> None:
    name, bucket = stream
    events = real_events(cluster="prod")
    aws = AwsFirehose(moto)
    sink = build(f"firehose:{name}", client=aws)
    sink.open()
    sink.send(events)  # 1,219 events: three calls of at most 500 records
    assert [len(call) for call in aws.calls] == [500, 500, len(events) - 1000]
    lines = stored_lines(moto, bucket)
    assert Counter(lines) == Counter(json_line(e) for e in events)
    sink.close()
    sink.close()


def test_the_records_are_the_s3_sinks_lines(moto: MotoS3, stream: tuple[str, str], tmp_path: Path) -> None:
    """One Athena table reads both: the same events give byte-identical lines in both sinks' objects."""
    name, bucket = stream
    events = real_events(200, cluster="prod")
    build(f"firehose:{name}", client=AwsFirehose(moto)).send(events)
    archive = f"s3-archive-{next(_names)}"
    moto.client().create_bucket(Bucket=archive)
    s3 = S3Sink.from_url(SinkURL.parse(f"s3:s3://{archive}/events?region={REGION}&endpoint_url={moto.endpoint}"
                                       f"&store_dir={tmp_path / 'spool'}"))
    s3.open()
    s3.send(events)
    s3.close()
    archived = [line for key in moto.keys(archive) for line in gzip.decompress(moto.body(archive, key))
                .splitlines(keepends=True)]
    assert sorted(stored_lines(moto, bucket)) == sorted(archived)
    assert len(archived) == len(events)


def test_calls_stay_under_4_mib_and_an_oversized_record_is_rejected(moto: MotoS3, stream: tuple[str, str]) -> None:
    name, bucket = stream
    big = [make_event(n, message="x" * 600_000) for n in range(10)]  # 10 x ~600 KB: at most 6 per 4 MiB call
    huge = make_event(99, message="y" * (1000 * 1024))  # over the 1,000 KiB record limit
    aws = AwsFirehose(moto)
    with pytest.raises(PartialError) as info:
        build(f"firehose:{name}", client=aws).send([*big[:5], huge, *big[5:]])
    assert info.value.rejected == [huge] and info.value.retry == []
    assert all(sum(len(d) for d in call) <= 4 * 1024 * 1024 for call in aws.calls)
    assert [len(call) for call in aws.calls] == [6, 4]
    assert Counter(stored_lines(moto, bucket)) == Counter(json_line(e) for e in big)


def test_only_the_failed_records_are_sent_again(moto: MotoS3, stream: tuple[str, str]) -> None:
    name, bucket = stream
    events = [make_event(n) for n in range(20)]
    flaky = {json_line(events[n]) for n in (3, 7, 15)}
    aws = AwsFirehose(moto)
    aws.fail_record = lambda data: data in flaky
    sink = build(f"firehose:{name}", client=aws)
    with pytest.raises(PartialError, match="3 of 20 records to retry \\(ServiceUnavailableException x3\\)") as info:
        sink.send(events)
    assert info.value.retry == [events[3], events[7], events[15]] and info.value.rejected == []
    sink.send(info.value.retry)  # what the router does with PartialError.retry
    assert [len(call) for call in aws.calls] == [20, 3]
    assert Counter(stored_lines(moto, bucket)) == Counter(json_line(e) for e in events)  # each exactly once


def test_a_throttled_call_retries_it_and_the_calls_after_it(moto: MotoS3, stream: tuple[str, str]) -> None:
    name, bucket = stream
    events = [make_event(n) for n in range(1200)]
    aws = AwsFirehose(moto)
    aws.fail_call = lambda index: index == 1
    sink = build(f"firehose:{name}", client=aws)
    with pytest.raises(PartialError, match="700 of 1200 records to retry") as info:
        sink.send(events)
    assert info.value.retry == events[500:]
    aws.fail_call = lambda index: False
    sink.send(info.value.retry)
    assert Counter(stored_lines(moto, bucket)) == Counter(json_line(e) for e in events)


def test_a_throttled_first_call_retries_the_batch(moto: MotoS3, stream: tuple[str, str]) -> None:
    name, bucket = stream
    aws = AwsFirehose(moto)
    aws.fail_call = lambda index: True
    with pytest.raises(RetryableError, match="records to retry"):
        build(f"firehose:{name}", client=aws).send([make_event(1)])
    assert stored_lines(moto, bucket) == []


def test_a_missing_stream_is_permanent(moto: MotoS3) -> None:
    sink = build(f"firehose:no-such-stream?endpoint_url={moto.endpoint}&region={REGION}")
    with pytest.raises(PermanentError, match="ResourceNotFoundException"):
        sink.open()
    with pytest.raises(PermanentError, match="PutRecordBatch: ResourceNotFoundException"):
        sink.send([make_event(1)])


def test_through_the_command_line(moto: MotoS3, stream: tuple[str, str], tmp_path: Path) -> None:
    name, bucket = stream
    exe = str(Path(sys.executable).parent / "eventrouter")
    flag = (f"--sink=firehose:{name}?endpoint_url={moto.endpoint}&region={REGION}"
            f"&access_key_id={ENV['AWS_ACCESS_KEY_ID']}&secret_access_key={ENV['AWS_SECRET_ACCESS_KEY']}")
    proc = subprocess.run([exe, f"--source=file:{DATA / 'core-v1.jsonl'}", flag, "--healthz-port=0"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert ENV["AWS_SECRET_ACCESS_KEY"] not in proc.stderr
    uids = Counter(line.split(b'"uid":"', 1)[1].split(b'"', 1)[0].decode() for line in stored_lines(moto, bucket))
    assert uids == Counter(o["metadata"]["uid"] for o in real_objects())
