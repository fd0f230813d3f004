"""S3 sink: an Athena-ready archive of events, gzip JSON Lines under Hive-style partition keys.

Talks to Amazon S3, or any S3-compatible store through ``endpoint_url`` (MinIO, Ceph, R2), with
boto3 (``pip install 'eventrouter[s3]'``).

Credentials: boto3's default chain when no option is given, so EKS IRSA (``AWS_ROLE_ARN`` +
``AWS_WEB_IDENTITY_TOKEN_FILE``), EKS Pod Identity, instance profiles, ``AWS_ACCESS_KEY_ID``/
``AWS_SECRET_ACCESS_KEY`` and ``~/.aws`` all work. Static keys can also be given with
``access_key_id`` and ``secret_access_key`` (secret; use ``$VAR`` to read it from the environment).
The role needs ``s3:PutObject`` on ``arn:aws:s3:::BUCKET/PREFIX*`` (``s3:ListBucket`` only for
``eventrouter check``).

Objects: ``s3://BUCKET/PREFIX/year=2026/month=04/day=14/hour=09/<cluster>-<start>-<writer>-<seq>.json.gz``,
one ``Event.to_dict()`` per line (times UTC ``...Z``). The partition folders use the event's UTC
``last_timestamp`` (so a query on a partition finds every event that happened in it, even one
delivered late); ``eventrouter athena-ddl --sink=...`` prints the matching Athena table, whose
projection covers ``partition_years`` (default 2014,2099). An event whose year is outside (a node with a
wrong clock) is filed under its arrival time instead, with a warning, so Athena still sees it.

Durability: ``send`` appends to a spool file under ``store_dir`` and fsyncs before it returns;
``tick`` seals chunks by size (``total_file_size``) or age (``upload_timeout``) and uploads them,
backing off after a failure while new events keep flowing into the spool (up to
``store_dir_limit_size``, then ``send`` refuses and the router's queue holds or drops events).
Chunks left by a crash are uploaded first on the next start, to the key they were given at
creation, so a re-upload replaces an object instead of duplicating it.

URL forms (kube-eventer has no S3 sink)::

    --sink=s3:s3://BUCKET                         objects at the bucket root
    --sink=s3:s3://BUCKET/PREFIX?region=eu-west-1
    --sink=s3:s3://BUCKET/PREFIX?endpoint_url=http://minio:9000&access_key_id=K&secret_access_key=$S3_SECRET

Example::

    --sink=s3:s3://acme-k8s-archive/events?region=eu-west-1&store_dir=/var/lib/eventrouter/s3
"""

from __future__ import annotations

import logging
import math
import os
import random
import re
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

from eventrouter import (
    URL,
    Duration,
    Event,
    Option,
    Options,
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

from .._aws import aws_client, classify_aws_error
from ._athena import athena_ddl, athena_ddl_command
from ._keys import DEFAULT_KEY_FORMAT, DEFAULT_YEARS, check_key_format, check_years, group_of, parse_years, render_key
from ._spool import Chunk, Spool, SpoolBusy

__all__ = ["S3Sink", "athena_ddl", "athena_ddl_command"]

log = logging.getLogger("eventrouter.sinks.s3")

MAX_OPEN_CHUNKS = 32  # partitions filled at once (a replay of old events spans many hours)
CLOSE_BUDGET = 10.0  # seconds close() spends uploading; the rest waits in the spool
TICK_BUDGET = 10.0  # seconds one tick spends uploading before the worker takes new events again
BACKOFF_INITIAL = 1.0
MIN_PART = 5 * 1024 * 1024  # S3's smallest multipart part
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
def parse_size(text: str) -> int:
    """``16M``, ``512KiB``, ``1G``, ``1048576`` -> bytes (K, M, G, T are powers of 1024)."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(text)
    return int(float(match.group(1)) * 1024 ** " kmgt".index(match.group(2).lower() or " "))


def _check_size(text: str) -> str | None:
    try:
        parse_size(text)
    except ValueError:
        return f"{text!r} is not a size such as 16M, 512K, 1G or a number of bytes"
    return None


class S3Sink(Sink):
    """S3: gzip JSON Lines under Hive-style keys, spooled to disk first.  s3:s3://BUCKET/PREFIX"""

    name = "s3"
    extra = "s3"
    options: ClassVar = (
        Option("region", str, default="", help="AWS region (default: boto3's chain, e.g. AWS_REGION)"),
        Option("endpoint_url", URL, default="", help="S3-compatible endpoint, e.g. http://minio:9000"),
        Option("force_path_style", bool, default=False, help="address buckets as ENDPOINT/BUCKET (MinIO)"),
        Option("access_key_id", str, default="", help="static access key id (default: boto3's credential chain)"),
        Option("secret_access_key", str, secret=True, default=None, help="static secret key, with access_key_id"),
        Option("session_token", str, secret=True, default=None, help="session token of temporary static keys"),
        Option("key_format", str, default=DEFAULT_KEY_FORMAT, validate=check_key_format,
               help="object key under the prefix: strftime codes (event UTC time) and {cluster} {start} "
                    "{writer} {seq}"),
        Option("partition_years", str, default=DEFAULT_YEARS, validate=check_years,
               help="FIRST,LAST: years the partition folders take (athena-ddl projects them); an event "
                    "whose time is outside is filed under its arrival time, with a warning"),
        Option("total_file_size", str, default="16M", validate=_check_size,
               help="seal a chunk at this many bytes of JSON Lines (before gzip)"),
        Option("upload_timeout", Duration, default=Duration(60), min=1,
               help="seal and upload a chunk at this age"),
        Option("store_dir", str, default="", help="spool directory (default .eventrouter/s3-spool/BUCKET[-PREFIX])"),
        Option("store_dir_limit_size", str, default="1G", validate=_check_size,
               help="largest spool; when full, send waits for uploads"),
        Option("upload_chunk_size", str, default="8M", validate=_check_size,
               help="objects above this go up in multipart parts of this size (5M or more)"),
        Option("storage_class", str, default="", help="S3 storage class, e.g. STANDARD_IA"),
        Option("sse", str, default="", choices=("AES256", "aws:kms"), help="server-side encryption"),
        Option("sse_kms_key_id", str, default="", help="KMS key for sse=aws:kms"),
    )
    delivery_defaults: ClassVar = {"batch_size": 500, "flush_interval": 1.0}

    def __init__(
        self,
        url: SinkURL,
        opts: Options,
        *,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        super().__init__(url, opts)
        self.require("boto3")  # a missing client library is a start-up error, not a failed upload
        if url.scheme != "s3" or not url.host:
            raise SinkConfigError(self.name, "give the bucket as s3:s3://BUCKET/PREFIX?region=...")
        if url.userinfo:
            raise SinkConfigError(self.name, "credentials do not go in the URL; use access_key_id and "
                                             "secret_access_key (or the default AWS credential chain)")
        if not _BUCKET.match(url.host):
            raise SinkConfigError(self.name, f"{url.host!r} is not an S3 bucket name (3-63 characters: a-z 0-9 . -)")
        if bool(opts["access_key_id"]) != bool(opts["secret_access_key"]):
            raise SinkConfigError(self.name, "give both access_key_id and secret_access_key, or neither",
                                  "secret_access_key" if opts["access_key_id"] else "access_key_id")
        if opts["sse_kms_key_id"] and opts["sse"] != "aws:kms":
            raise SinkConfigError(self.name, "needs sse=aws:kms", "sse_kms_key_id")
        self.bucket = url.host
        prefix = url.path.strip("/")
        if "{" in prefix or "}" in prefix:
            raise SinkConfigError(self.name, "the prefix may not contain { or }")
        self.prefix = f"{prefix}/" if prefix else ""
        self.total_file_size = parse_size(opts["total_file_size"])
        self.store_dir_limit = parse_size(opts["store_dir_limit_size"])
        self.upload_chunk_size = parse_size(opts["upload_chunk_size"])
        if self.upload_chunk_size < MIN_PART:
            raise SinkConfigError(self.name, "use 5M or more (S3's smallest multipart part)", "upload_chunk_size")
        if self.total_file_size < 1024:
            raise SinkConfigError(self.name, "use 1K or more", "total_file_size")
        self.store_dir = opts["store_dir"] or os.path.join(
            ".eventrouter", "s3-spool", self.bucket + ("-" + re.sub(r"[^A-Za-z0-9._-]", "_", prefix) if prefix else "")
        )
        # the prefix is literal text: escape % so strftime leaves it alone
        self._template = self.prefix.replace("%", "%%") + opts["key_format"]
        self._clock = clock
        self._now = now
        self.years = parse_years(opts["partition_years"])
        self.out_of_range = 0  # events filed under their arrival time (their own year is outside the projection)
        self._out_of_range_logged = -math.inf
        self._spool = Spool(self.store_dir)
        self._open: dict[str, Chunk] = {}
        self._started = False
        self._closed = False
        self._client: Any = None
        self._failures = 0
        self._next_attempt = 0.0
        self._last_error: SinkError | None = None

    # ---- lifecycle ----------------------------------------------------------------------------
    def open(self) -> None:
        """Check the spool and that the bucket exists (a 403 is not fatal: PutObject may be allowed)."""
        self._start()
        client = self._s3()
        try:
            client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            error = self._classify(exc, "HeadBucket")
            status = getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404:
                raise PermanentError(f"bucket {self.bucket} does not exist (HeadBucket: 404)") from None
            if status != 403:
                raise error from None
            log.debug("s3 sink: cannot check bucket %s (403); uploads may still be allowed", self.bucket)

    def send(self, batch: Sequence[Event]) -> None:
        """Append the batch to the spool (fsync'ed); the events are safe once this returns."""
        self._start()
        groups: dict[str, list[tuple[bytes, Event, datetime]]] = {}
        size = 0
        for event in batch:
            line = json_line(event)  # the firehose sink writes the same records
            size += len(line)
            when = self._key_time(event)
            groups.setdefault(group_of(self._template, when), []).append((line, event, when))
        if self._spool.used and self._spool.used + size > self.store_dir_limit:
            self._make_room(size)
        written: list[tuple[Chunk, int, int]] = []  # (chunk, size, events) before this batch, to undo
        try:
            for group, lines in groups.items():
                self._append(group, lines, written)
        except OSError as exc:
            # the router sends the whole batch again: take back what part of it reached the disk
            try:
                for chunk, size, events in reversed(written):
                    self._spool.truncate(chunk, size, events)
            except OSError:
                log.warning("s3 sink: could not take back a partly spooled batch; its retry may repeat events")
            raise RetryableError(f"cannot write the spool in {self.store_dir}: {exc.strerror or exc}") from None

    def tick(self) -> None:
        """Seal chunks that reached upload_timeout, then upload sealed chunks unless backing off."""
        self._start()
        now = self._clock()
        for group, chunk in list(self._open.items()):
            if now - chunk.opened_at >= float(self.opts["upload_timeout"]):
                self._seal(group)
        self._upload(budget=TICK_BUDGET)

    def flush(self) -> None:
        """Seal every chunk and upload now, raising the upload's error (``eventrouter check --send-test``:
        "delivered" means in S3, not only in the spool)."""
        self._start()
        for group in list(self._open):
            self._seal(group)
        self._upload(budget=CLOSE_BUDGET, ignore_backoff=True)
        if self._spool.ready:
            raise RetryableError(f"{len(self._spool.ready)} chunks still wait in the spool {self.store_dir} "
                                 f"after {CLOSE_BUDGET:g}s of uploads")

    def close(self) -> None:
        """Seal everything and upload for up to CLOSE_BUDGET seconds; what is left stays spooled."""
        if self._closed or not self._started:
            self._closed = True
            return
        self._closed = True
        try:
            for group in list(self._open):
                self._seal(group)
            self._upload(budget=CLOSE_BUDGET, ignore_backoff=True)
        except (SinkError, OSError) as exc:
            log.warning("s3 sink: %d chunks (%d bytes) stay in %s and are uploaded at the next start: %s",
                        len(self._spool.ready), self._spool.used, self.store_dir, self._redact(str(exc)))
        finally:
            self._spool.release()

    # ---- spool --------------------------------------------------------------------------------
    def _start(self) -> None:
        """First use: lock the spool, seal what a previous run left and upload it before new data."""
        if self._closed:
            raise PermanentError("the s3 sink is closed")
        if self._started:
            return
        try:
            self._spool.start(self._clock())
        except SpoolBusy as exc:
            raise RetryableError(str(exc)) from None
        except OSError as exc:
            raise RetryableError(f"cannot use store_dir {self.store_dir}: {exc.strerror or exc}") from None
        self._started = True
        left = self._spool.ready
        if left:
            log.info("s3 sink: %d chunks (%d events) left from an earlier run in %s; uploading them first",
                     len(left), sum(c.events for c in left), self.store_dir)
            try:
                self._upload(budget=TICK_BUDGET)
            except SinkError as exc:
                log.warning("s3 sink: upload of earlier chunks failed, retrying later: %s", self._redact(str(exc)))

    def _key_time(self, event: Event) -> datetime:
        """The time the partition folders are filled from: the event's own (UTC ``last_timestamp``),
        unless its year is outside ``partition_years``, where Athena's projection would not see it."""
        when = event.last_timestamp
        if self.years[0] <= when.astimezone(UTC).year <= self.years[1]:
            return when
        self.out_of_range += 1
        if self._clock() - self._out_of_range_logged >= 60:
            self._out_of_range_logged = self._clock()
            log.warning("s3 sink: event %s/%s has time %s, outside partition_years %d,%d: filed under its arrival "
                        "time (%d such events so far)", event.namespace, event.name, when.isoformat(),
                        *self.years, self.out_of_range)
        return self._now()

    def _append(self, group: str, lines: list[tuple[bytes, Event, datetime]],
                written: list[tuple[Chunk, int, int]]) -> None:
        chunk = self._open.get(group)
        pending: list[bytes] = []
        pending_size = 0
        for line, event, when in lines:
            if chunk is None:
                chunk = self._new_chunk(group, event, when)
            elif chunk.size + pending_size + len(line) > self.total_file_size and (chunk.events or pending):
                if pending:
                    written.append((chunk, chunk.size, chunk.events))
                    self._spool.append(chunk, b"".join(pending), len(pending))
                    pending, pending_size = [], 0
                self._seal(group)
                chunk = self._new_chunk(group, event, when)
            pending.append(line)
            pending_size += len(line)
        if chunk is not None and pending:
            written.append((chunk, chunk.size, chunk.events))
            self._spool.append(chunk, b"".join(pending), len(pending))

    def _new_chunk(self, group: str, event: Event, when: datetime) -> Chunk:
        if len(self._open) >= MAX_OPEN_CHUNKS:
            self._seal(min(self._open, key=lambda g: self._open[g].opened_at))
        started = self._now()
        chunk = self._spool.create(
            lambda seq: render_key(self._template, when, cluster=event.cluster, start=started,
                                   writer=self._spool.writer, seq=seq),
            self._clock(),
        )
        self._open[group] = chunk
        return chunk

    def _seal(self, group: str) -> None:
        chunk = self._open.pop(group)
        if chunk.events:
            self._spool.seal(chunk)
        else:
            self._spool.discard(chunk)

    def _make_room(self, needed: int) -> None:
        """The spool is full: seal and upload now if a retry is due, else refuse the batch."""
        for group in list(self._open):
            self._seal(group)
        try:
            self._upload(budget=TICK_BUDGET)
        except SinkError:
            pass
        if self._spool.used and self._spool.used + needed > self.store_dir_limit:
            wait = max(1.0, self._next_attempt - self._clock())
            why = f": {self._last_error}" if self._last_error else ""
            raise RetryableError(f"spool {self.store_dir} is full ({self._spool.used} of {self.store_dir_limit} "
                                 f"bytes) while uploads fail{why}", retry_after=wait)

    # ---- upload -------------------------------------------------------------------------------
    def _upload(self, *, budget: float, ignore_backoff: bool = False) -> None:
        """Upload sealed chunks, oldest first, until done, the budget is spent or one fails."""
        start = self._clock()
        if not ignore_backoff and start < self._next_attempt:
            return
        while self._spool.ready and self._clock() - start < budget:
            chunk = self._spool.ready[0]
            try:
                self._put(chunk)
            except Exception as exc:
                self._failures += 1
                cap = float(self.opts["retry_backoff_max"])
                delay = min(cap, BACKOFF_INITIAL * 2 ** min(self._failures - 1, 20)) * random.uniform(0.5, 1.0)
                self._next_attempt = self._clock() + delay
                error = self._classify(exc, f"upload of s3://{self.bucket}/{chunk.key}")
                self._last_error = error
                raise type(error)(f"{error}; {len(self._spool.ready)} chunks wait in the spool, "
                                  f"next try in {delay:.0f}s") from None
            self._spool.remove(chunk)
            self._failures = 0
            self._next_attempt = 0.0
            self._last_error = None
            log.debug("s3 sink: uploaded s3://%s/%s (%d events)", self.bucket, chunk.key, chunk.events)

    def _put(self, chunk: Chunk) -> None:
        transfer = self.require("boto3.s3.transfer")
        body = self._spool.gzip_body(chunk)
        try:
            # boto3's managed upload (multipart above upload_chunk_size), as boto3's client.upload_file does
            with transfer.S3Transfer(self._s3(), self._transfer_config()) as uploader:
                uploader.upload_file(body, self.bucket, chunk.key, extra_args=self._extra_args())
        finally:
            os.unlink(body)

    def _extra_args(self) -> dict[str, str]:
        extra = {"ContentType": "application/gzip"}
        if self.opts["storage_class"]:
            extra["StorageClass"] = self.opts["storage_class"]
        if self.opts["sse"]:
            extra["ServerSideEncryption"] = self.opts["sse"]
        if self.opts["sse_kms_key_id"]:
            extra["SSEKMSKeyId"] = self.opts["sse_kms_key_id"]
        return extra

    def _transfer_config(self) -> Any:
        transfer = self.require("boto3.s3.transfer")
        # use_threads=False: parts go up one by one on the worker thread (a sink starts no threads)
        return transfer.TransferConfig(multipart_threshold=self.upload_chunk_size,
                                       multipart_chunksize=self.upload_chunk_size, use_threads=False)

    def _s3(self) -> Any:
        if self._client is None:
            self._client = aws_client(
                "s3", self.opts, connect_timeout=5, read_timeout=60,
                retries={"mode": "standard", "total_max_attempts": 1},  # the sink's backoff retries
                s3={"addressing_style": "path" if self.opts["force_path_style"] else "auto"},
            )
        return self._client

    # ---- errors -------------------------------------------------------------------------------
    def _classify(self, exc: BaseException, what: str) -> SinkError:
        error = _classify(exc)
        return type(error)(self._redact(f"{what}: {error}"))

    def _redact(self, text: str) -> str:
        return redact_text(text, [v for v in self.opts.values() if isinstance(v, Secret)])


def _classify(exc: BaseException) -> SinkError:
    """botocore/boto3 exception -> RetryableError (network, throttling, 5xx) or PermanentError."""
    if type(exc).__name__ == "S3UploadFailedError" and exc.__context__ is not None:
        return _classify(exc.__context__)  # boto3 wraps the ClientError of the failed request
    known = classify_aws_error(exc, missing_credentials_retryable=False)
    if known is not None:
        return known
    if isinstance(exc, OSError):
        return RetryableError(f"spool file: {exc.strerror or exc}")
    # connection refused, timeouts, credential refresh (STS) failures: try again later
    return RetryableError(f"{type(exc).__name__}: {exc}")
