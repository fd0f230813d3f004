"""Firehose sink: events as JSON Lines records into Amazon Data Firehose (Kinesis Data Firehose).

Talks to Firehose's ``PutRecordBatch`` API with botocore, boto3's core (``pip install 'eventrouter[firehose]'``).
Each event is one record: the normalized event as JSON and a newline, byte for byte the line the ``s3`` sink writes
(``eventrouter.json_line``), so the objects a Firehose stream with an S3 destination writes are JSON Lines that
the same Athena table reads (``eventrouter athena-ddl``; point its LOCATION at the stream's prefix).

A send splits its batch into calls of at most 500 records and 4 MiB; a record over 1,000 KiB (a huge message)
is rejected and counted. Firehose reports failures per record (``FailedPutCount``, each response's
``ErrorCode``): only the failed records are sent again, never the whole batch, so nothing it accepted is
written twice.

Credentials: boto3's default chain when no option is given (EKS IRSA, Pod Identity, instance profiles,
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``~/.aws``), or ``access_key_id`` + ``secret_access_key``
(secret). The role needs ``firehose:PutRecordBatch`` (and ``firehose:DescribeDeliveryStream`` for
``eventrouter check``) on the stream.

URL forms (kube-eventer has no Firehose sink)::

    --sink=firehose:STREAM_NAME?region=eu-west-1
    --sink=firehose:STREAM_NAME?endpoint_url=http://localhost:4566&access_key_id=K&secret_access_key=$SECRET

Example::

    --sink=firehose:k8s-events?region=eu-west-1
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any, ClassVar

from eventrouter import (
    URL,
    Event,
    Option,
    Options,
    PartialError,
    PermanentError,
    RetryableError,
    Secret,
    Sink,
    SinkConfigError,
    SinkError,
    SinkURL,
    json_line,
    redact_text,
)

from ._aws import aws_client, classify_aws_error

log = logging.getLogger("eventrouter.sinks.firehose")

# PutRecordBatch quotas (Amazon Data Firehose "Quota"): per call and per record
MAX_RECORDS = 500
MAX_CALL_BYTES = 4 * 1024 * 1024
MAX_RECORD_BYTES = 1000 * 1024
_STREAM_NAME = re.compile(r"^[a-zA-Z0-9_.-]{1,64}$")
# whole-call errors worth retrying; every other client error is permanent
class FirehoseSink(Sink):
    """Amazon Data Firehose: PutRecordBatch of JSON Lines records (the s3 sink's lines).  firehose:STREAM"""

    name = "firehose"
    extra = "firehose"
    options: ClassVar = (
        Option("region", str, default="", help="AWS region (default: boto3's chain, e.g. AWS_REGION)"),
        Option("endpoint_url", URL, default="", help="Firehose-compatible endpoint, e.g. http://localstack:4566"),
        Option("access_key_id", str, default="", help="static access key id (default: boto3's credential chain)"),
        Option("secret_access_key", str, secret=True, default=None, help="static secret key, with access_key_id"),
        Option("session_token", str, secret=True, default=None, help="session token of temporary static keys"),
    )
    delivery_defaults: ClassVar = {"batch_size": 500, "flush_interval": 1.0}

    def __init__(self, url: SinkURL, opts: Options, *, client: Any = None) -> None:
        """``client``: a boto3 Firehose client to use instead of building one (tests, custom sessions)."""
        super().__init__(url, opts)
        self.require("botocore")  # a missing client library is a start-up error, not a failed send
        stream = url.path.strip("/") if not url.scheme else ""
        if not _STREAM_NAME.match(stream):
            raise SinkConfigError(self.name, "give the delivery stream name (1-64 letters, digits, _ . -), "
                                  "for example firehose:k8s-events?region=eu-west-1")
        if bool(opts["access_key_id"]) != bool(opts["secret_access_key"]):
            raise SinkConfigError(self.name, "give access_key_id and secret_access_key together", "access_key_id")
        self.stream = stream
        self._client = client

    # ---- delivery -----------------------------------------------------------------------------
    def open(self) -> None:
        """Check that the stream exists and takes records."""
        try:
            description = self._firehose().describe_delivery_stream(DeliveryStreamName=self.stream)
        except Exception as exc:
            raise self._classify(exc, "DescribeDeliveryStream") from None
        status = description["DeliveryStreamDescription"].get("DeliveryStreamStatus", "")
        if status not in ("ACTIVE", "UPDATING"):
            log.warning("firehose: delivery stream %s is %s", self.stream, status or "in an unknown state")

    def send(self, batch: Sequence[Event]) -> None:
        records = [(event, json_line(event)) for event in batch]
        rejected = [event for event, data in records if len(data) > MAX_RECORD_BYTES]
        if rejected:
            log.warning("firehose: %d events over Firehose's 1,000 KiB record limit are not sent", len(rejected))
            records = [(event, data) for event, data in records if len(data) <= MAX_RECORD_BYTES]
        retry: list[Event] = []
        codes: dict[str, int] = {}
        calls = list(_calls(records))
        for index, call in enumerate(calls):
            try:
                response = self._firehose().put_record_batch(
                    DeliveryStreamName=self.stream, Records=[{"Data": data} for _, data in call])
            except Exception as exc:
                error = self._classify(exc, "PutRecordBatch")
                later = [event for pending in calls[index:] for event, _ in pending]
                if isinstance(error, PermanentError):
                    rejected += later
                    if len(rejected) == len(batch):
                        raise error from None
                    raise PartialError(f"{error}", retry=retry, rejected=rejected) from None
                retry += later
                break
            if response.get("FailedPutCount", 0):
                for (event, _), result in zip(call, response["RequestResponses"], strict=True):
                    if result.get("ErrorCode"):
                        retry.append(event)  # only this record: the others of the call are stored
                        codes[result["ErrorCode"]] = codes.get(result["ErrorCode"], 0) + 1
        if not retry and not rejected:
            return
        detail = ", ".join(f"{code} x{n}" for code, n in sorted(codes.items())) or "the call failed"
        message = f"{len(retry)} of {len(batch)} records to retry ({detail})"
        if rejected:
            message += f", {len(rejected)} over the record size limit"
        if len(retry) == len(batch):
            raise RetryableError(message)
        raise PartialError(message, retry=retry, rejected=rejected)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and hasattr(client, "close"):
            client.close()

    def _firehose(self) -> Any:
        if self._client is None:
            self._client = aws_client("firehose", self.opts, connect_timeout=5, read_timeout=30,
                                      retries={"mode": "standard", "total_max_attempts": 1})  # the router retries
        return self._client

    # ---- errors -------------------------------------------------------------------------------
    def _classify(self, exc: BaseException, what: str) -> SinkError:
        error = classify(exc)
        return type(error)(redact_text(f"{what}: {error}", [v for v in self.opts.values() if isinstance(v, Secret)]))


def _calls(records: list[tuple[Event, bytes]]) -> list[list[tuple[Event, bytes]]]:
    """The records cut into PutRecordBatch calls of at most 500 records and 4 MiB."""
    calls: list[list[tuple[Event, bytes]]] = []
    size = 0
    for record in records:
        if not calls or len(calls[-1]) == MAX_RECORDS or size + len(record[1]) > MAX_CALL_BYTES:
            calls.append([])
            size = 0
        calls[-1].append(record)
        size += len(record[1])
    return calls


def classify(exc: BaseException) -> SinkError:
    """A boto3/botocore exception of a whole call -> RetryableError (network, throttling, 5xx, credentials not
    there yet) or PermanentError (the stream does not exist, access denied, invalid request)."""
    # missing credentials are retried: IRSA/Pod Identity credentials can appear after start-up
    known = classify_aws_error(exc, missing_credentials_retryable=True)
    if known is not None:
        return known
    return RetryableError(f"{type(exc).__name__}: {exc}")  # connection refused, timeouts, STS failures
