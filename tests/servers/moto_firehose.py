"""moto's Firehose, with an S3 destination, on the moto server of :mod:`tests.servers.moto_s3`.

moto's ``PutRecordBatch`` writes each call's records, concatenated, as one S3 object under the stream's
prefix (``PREFIX/YYYY/MM/DD/HH/STREAM-1-...``), as a real stream does per buffer. It neither enforces
Firehose's quotas nor fails single records, so :class:`AwsFirehose` wraps a moto client to add what the
real service does there:

- a call of more than 500 records, or a record over 1,000 KiB, fails with ``ValidationException``, and a
  call over 4 MiB with ``InvalidArgumentException`` (before anything is stored);
- records chosen by the test fail one by one (``ErrorCode`` ``ServiceUnavailableException`` and
  ``FailedPutCount``) while the others of the call are stored;
- a whole call can be made to fail (``ThrottlingException``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from tests.servers.moto_s3 import ENV, REGION, MotoS3

MAX_RECORDS, MAX_CALL_BYTES, MAX_RECORD_BYTES = 500, 4 * 1024 * 1024, 1000 * 1024


def firehose_client(moto: MotoS3) -> Any:
    import boto3

    return boto3.client("firehose", endpoint_url=moto.endpoint, region_name=REGION,
                        aws_access_key_id=ENV["AWS_ACCESS_KEY_ID"], aws_secret_access_key=ENV["AWS_SECRET_ACCESS_KEY"])


def create_stream(moto: MotoS3, name: str, bucket: str, prefix: str = "events/") -> None:
    moto.client().create_bucket(Bucket=bucket)
    firehose_client(moto).create_delivery_stream(
        DeliveryStreamName=name,
        DeliveryStreamType="DirectPut",
        ExtendedS3DestinationConfiguration={
            "RoleARN": "arn:aws:iam::123456789012:role/firehose-delivery",
            "BucketARN": f"arn:aws:s3:::{bucket}",
            "Prefix": prefix,
            "BufferingHints": {"SizeInMBs": 5, "IntervalInSeconds": 60},
        },
    )


def stored_lines(moto: MotoS3, bucket: str, prefix: str = "events/") -> list[bytes]:
    """Every line of every object the stream wrote, newline kept (so a missing newline shows)."""
    return [line for key in moto.keys(bucket, prefix) for line in moto.body(bucket, key).splitlines(keepends=True)]


def _error(code: str, message: str, status: int = 400) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "PutRecordBatch")


class AwsFirehose:
    """A moto Firehose client with the real service's quotas and injectable failures."""

    def __init__(self, moto: MotoS3) -> None:
        self._client = firehose_client(moto)
        self.calls: list[list[bytes]] = []  # the records of every call that reached the service
        self.fail_record: Callable[[bytes], bool] = lambda data: False  # this record fails, once
        self.fail_call: Callable[[int], bool] = lambda index: False  # this call (0-based) is throttled
        self._failed: set[bytes] = set()

    def describe_delivery_stream(self, **kwargs: Any) -> Any:
        return self._client.describe_delivery_stream(**kwargs)

    def put_record_batch(self, *, DeliveryStreamName: str, Records: list[dict[str, bytes]]) -> Any:
        data = [r["Data"] for r in Records]
        index = len(self.calls)
        self.calls.append(data)
        if len(data) > MAX_RECORDS:
            raise _error("ValidationException", "1 validation error detected: Value at 'records' failed to satisfy "
                         "constraint: Member must have length less than or equal to 500")
        if any(len(d) > MAX_RECORD_BYTES for d in data):
            raise _error("ValidationException", "1 validation error detected: Value at 'records.1.member.data' "
                         "failed to satisfy constraint: Member must have length less than or equal to 1024000")
        if sum(len(d) for d in data) > MAX_CALL_BYTES:
            raise _error("InvalidArgumentException", "Records size exceeds 4 MB limit")
        if self.fail_call(index):
            raise _error("ThrottlingException", "Rate exceeded", 400)
        failing = [d for d in data if d not in self._failed and self.fail_record(d)]
        self._failed.update(failing)
        accepted = [d for d in data if d not in failing]
        if accepted:
            self._client.put_record_batch(DeliveryStreamName=DeliveryStreamName,
                                          Records=[{"Data": d} for d in accepted])
        responses = [{"ErrorCode": "ServiceUnavailableException", "ErrorMessage": "Slow down."} if d in failing
                     else {"RecordId": f"rec-{index}-{n}"} for n, d in enumerate(data)]
        return {"FailedPutCount": len(failing), "Encrypted": False, "RequestResponses": responses}

    def close(self) -> None:
        self._client.close()
