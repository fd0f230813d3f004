"""InfluxDB sink: one point per event, in kube-eventer's measurement, tag and field layout.

Talks HTTP (httpx) to InfluxDB 1.x (``POST /write``, line protocol) or to InfluxDB 2.x/3.x and
1.8+'s compatibility API (``POST /api/v2/write``), at nanosecond precision.

Credentials:

- 1.x: ``user=`` and ``pw=`` (sent as HTTP basic auth; kube-eventer's defaults ``root``/``root``, which a
  server without authentication ignores). The user needs WRITE on the database, and
  ALL PRIVILEGES (admin) if eventrouter should create it (``CREATE DATABASE``, done once).
- 2.x/3.x: an API token with write access to the bucket (``influx auth create --write-bucket ID``),
  ``token=$INFLUX_TOKEN``; on 1.8 the token is ``user:password`` and the bucket ``db/rp``.

URL forms::

    --sink=influxdb:http://influxdb:8086?user=root&pw=root&db=k8s&withfields=false&insecuressl=false&cluster_name=default
                                                                     (kube-eventer, InfluxDB 1.x)
    --sink=influxdb:https://influx.example:8086?db=k8s&withfields=true&retention=30d
    --sink=influxdb:http://influxdb:8086?org=my-org&bucket=k8s&token=$INFLUX_TOKEN   (2.x/3.x)

Points (kube-eventer's layout, time = the event's last timestamp):

- default: measurement ``log/events``, field ``value`` = kube-eventer's JSON of the Event, byte for byte,
  tags ``uid``, ``pod_id`` and ``pod_name`` (Pod events only), ``hostname``, ``cluster_name``;
- ``withfields=true``: measurement ``events``, field ``message``, tags ``uid``, ``pod_id`` (Pod),
  ``object_name``, ``type``, ``kind``, ``component``, ``reason``, ``namespace_name``, ``hostname``,
  ``cluster_name``.

Empty tags are left out. A retried batch rewrites the same points (same series and time), so it
never duplicates. A batch is cut into writes of ``points_per_write`` points, ``concurrency`` of them in
flight while the next are built; bodies are gzipped when the server is not on loopback. Example::

    --sink=influxdb:http://influxdb.monitoring:8086?user=eventer&pw=$INFLUX_PW&db=k8s
"""

from __future__ import annotations

import gzip
import ipaddress
import json
import logging
import re
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, ClassVar

import httpx

from eventrouter import (
    HTTP_OPTIONS,
    Event,
    Option,
    PartialError,
    PermanentError,
    RetryableError,
    Sink,
    SinkConfigError,
    SinkError,
    http_client,
    redact_text,
    transport_error,
)

from ._kube_eventer import event_json

log = logging.getLogger("eventrouter.sinks.influxdb")

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DEFAULT_HOST = "localhost:8086"
DEFAULT_USER = DEFAULT_PASSWORD = "root"  # kube-eventer's (heapster's) 1.x defaults; ignored without auth
DEFAULT_CONCURRENCY = 2
POINTS_PER_WRITE = 2_000
GZIP_MIN_BYTES = 64 * 1024


# ---- line protocol -------------------------------------------------------------------------------
# Tag values escape ',', '=' and ' '. Line protocol has no escape for a newline (it ends the line) and
# InfluxDB 1.x keeps '\\n' as two characters, so CR and LF become a space. A tag value cannot end with
# '\\' either: 1.x's parser reads it as escaping the ',' or ' ' after it. Such a value gets a zero-width
# space (U+200B) after the backslash, so the backslash itself survives.
_TAG = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\ ", "\r": r"\ "})
TRAILING_BACKSLASH_GUARD = "\u200b"


def tag_value(text: str) -> str:
    # most values need no escape: five C-level scans cost a tenth of translate's per-character lookups
    if "," in text or "=" in text or " " in text or "\n" in text or "\r" in text:
        text = text.translate(_TAG)
    return text + TRAILING_BACKSLASH_GUARD if text.endswith("\\") else text


def field_string(text: str) -> str:
    # str.replace rather than str.translate: the same result, ~20x faster on the long event JSON
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def tag_set(tags: dict[str, str]) -> str:
    """``,k=v`` for each non-empty tag, sorted by key (the keys here need no escaping)."""
    return "".join(f",{key}={tag_value(value)}" for key, value in sorted(tags.items()) if value)


def nanoseconds(value: datetime) -> int:
    delta = value.astimezone(UTC) - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def cluster_tag(cluster_name: str) -> str:
    """The ``,cluster_name=`` tag (nothing when empty), the first tag of both layouts in key order."""
    return f",cluster_name={tag_value(cluster_name)}" if cluster_name else ""


def point(event: Event, *, with_fields: bool, cluster_name: str) -> str:
    """One line: kube-eventer's measurement, tags and field for this event, at its last time."""
    return (fields_point if with_fields else value_point)(event, cluster_tag(cluster_name))


def value_point(event: Event, cluster: str) -> str:
    """kube-eventer's default layout: ``log/events`` with the Event JSON in ``value``. ``cluster`` is
    :func:`cluster_tag`'s text. The tags are written in key order (InfluxDB's own), empty ones left out;
    this runs once per event, so it spells the tags out rather than sorting a dict."""
    obj = event.involved_object
    tags = cluster
    if event.source_host:
        tags += ",hostname=" + tag_value(event.source_host)
    if obj.kind == "Pod":
        if obj.uid:
            tags += ",pod_id=" + tag_value(obj.uid)
        if obj.name:
            tags += ",pod_name=" + tag_value(obj.name)
    if event.uid:
        tags += ",uid=" + tag_value(event.uid)
    return f"log/events{tags} value={field_string(event_json(event))} {nanoseconds(event.last_timestamp)}"


def fields_point(event: Event, cluster: str) -> str:
    """``withfields=true``: measurement ``events`` with the message field and more tags."""
    obj = event.involved_object
    tags = {"uid": event.uid, "hostname": event.source_host, "object_name": obj.name, "type": event.type,
            "kind": obj.kind, "component": event.source_component, "reason": event.reason,
            "namespace_name": event.namespace}
    if obj.kind == "Pod":
        tags["pod_id"] = obj.uid
    return (f"events{cluster}{tag_set(tags)} message={field_string(event.message)} "
            f"{nanoseconds(event.last_timestamp)}")


# ---- responses ------------------------------------------------------------------------------------
def _retry_after(value: str | None) -> float | None:
    if value and value.strip().isdigit():
        return float(value.strip())
    return None


def _classify(status: int, body: str, retry_after: str | None = None) -> SinkError | None:
    """What a /write or /api/v2/write answer means: None (delivered), retry, or give up."""
    if 200 <= status < 300:
        return None
    message = body.strip()[:300]
    try:
        parsed = json.loads(body)
        message = str(parsed.get("error") or parsed.get("message") or message)[:300]
    except (ValueError, AttributeError):
        pass
    if status == 400 and message.startswith("partial write: points beyond retention policy dropped="):
        # the other points were written; these would have expired anyway (old events replayed)
        log.debug("influxdb: %s", message)
        return None
    text = f"InfluxDB answered HTTP {status}" + (f": {message}" if message else "")
    if status == 429 or status >= 500:
        return RetryableError(text, _retry_after(retry_after))
    if status == 404 and "database not found" in message:
        return DatabaseMissing(text)
    if status in (401, 403):
        return PermanentError(f"{text} (check user/pw or token, and the write permission)")
    if status == 413:
        return PermanentError(f"{text} (lower batch_size)")
    return PermanentError(text)


class DatabaseMissing(RetryableError):
    """The 1.x database was dropped: create it again on the next send."""


# ---- the sink ------------------------------------------------------------------------------------
_RETENTION = re.compile(r"^(?:\d+(?:ns|u|µ|ms|s|m|h|d|w))+$|^(?:INF|inf)$")


def _check_retention(value: str) -> str | None:
    if value and not _RETENTION.match(value):
        return f"{value!r} is not an InfluxQL duration such as 720h, 30d, 4w or INF"
    return None


def _quote_ident(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


class InfluxDBSink(Sink):
    """InfluxDB 1.x, 2.x, 3.x: one point per event.  influxdb:http://h:8086?db=k8s (or org=&bucket=&token=)"""

    name = "influxdb"
    options: ClassVar = (
        Option("user", str, default=DEFAULT_USER, help="1.x user (kube-eventer's default: root)"),
        Option("pw", str, secret=True, aliases=("password",), help="1.x password (kube-eventer's default: root)"),
        Option("db", str, default="k8s", help="1.x database; created if missing"),
        Option(
            "retention",
            str,
            default="",
            validate=_check_retention,
            help="1.x: duration of the default retention policy when eventrouter creates the database (720h, 30d, INF)",
        ),
        Option(
            "withfields",
            bool,
            default=False,
            help="measurement 'events' with field 'message' and more tags, instead of 'log/events'",
        ),
        Option(
            "cluster_name",
            str,
            default="default",
            help="the cluster_name tag (default: --cluster-name, else 'default')",
        ),
        Option("insecuressl", bool, default=False, help="do not verify the server certificate (kube-eventer)"),
        Option("org", str, default="", help="2.x organization (name); 3.x ignores it"),
        Option("bucket", str, default="", help="2.x/3.x bucket or database; on 1.8 'db/retention_policy'"),
        Option("token", str, secret=True, help="2.x/3.x API token; on 1.8 'user:password'"),
        Option("concurrency", int, default=DEFAULT_CONCURRENCY, min=1, max=16,
               help="write requests in flight at once, each of up to points_per_write points"),
        Option("points_per_write", int, default=POINTS_PER_WRITE, min=1, help="points in one write request"),
        Option("gzip", str, default="auto", choices=("auto", "true", "false"),
               help="gzip request bodies; auto: only when the server is not on this host (loopback)"),
        Option("disable_counter_metrics", bool, default=False, help="kube-eventer option, accepted (no effect)"),
        *HTTP_OPTIONS,
    )
    # a large batch is cut into writes of points_per_write, `concurrency` of them in flight at once
    delivery_defaults: ClassVar = {"batch_size": 10_000, "flush_interval": 1.0}

    def __init__(self, url, opts, *, transport: httpx.BaseTransport | None = None) -> None:  # type: ignore[no-untyped-def]
        super().__init__(url, opts)
        self.v2 = bool(opts["bucket"] or opts["org"] or opts["token"])
        if self.v2:
            if not opts["bucket"]:
                raise SinkConfigError(self.name, "InfluxDB 2.x/3.x needs the bucket (with org= and token=)", "bucket")
            for name in ("db", "retention", "user", "pw"):
                if name in opts.given:
                    raise SinkConfigError(
                        self.name,
                        "is an InfluxDB 1.x option; with bucket= use org= and token= "
                        "(on 1.8: token=user:password, bucket=db/retention_policy)",
                        name,
                    )
        if url.scheme and url.scheme not in ("http", "https"):
            raise SinkConfigError(self.name, f"scheme {url.scheme!r} is not supported; use http:// or https://")
        if url.userinfo:
            raise SinkConfigError(self.name, "put credentials in user= and pw= (or token=), not in the URL")
        if not url.scheme and url.path:
            raise SinkConfigError(self.name, "expected http://host:8086 (or https://) before '?'")
        self.base_url = f"{url.scheme or 'http'}://{url.host or DEFAULT_HOST}{url.path.rstrip('/')}"
        self.with_fields: bool = opts["withfields"]
        tls_opts = {**opts, "insecure_skip_verify": opts["insecuressl"] or opts["insecure_skip_verify"]}
        self._transport = transport
        self._client_opts = tls_opts
        self._client: httpx.Client | None = None
        self._db_ready = self.v2
        self._secrets = [opts["pw"], opts["token"]]
        self._gzip = opts["gzip"] == "true" or (opts["gzip"] == "auto" and not _is_loopback(url.host or DEFAULT_HOST))
        self._pool: ThreadPoolExecutor | None = None

    # ---- HTTP ----------------------------------------------------------------------------------
    def _http(self) -> httpx.Client:
        if self._client is None:
            kwargs: dict[str, Any] = {"base_url": self.base_url}
            if self._transport is not None:
                kwargs["transport"] = self._transport
            if self.v2:
                if self.opts["token"]:
                    kwargs["headers"] = {"Authorization": f"Token {self.opts['token'].reveal()}"}
            else:
                kwargs["auth"] = (self.opts["user"], self._password())
            self._client = http_client(self.name, self._client_opts, **kwargs)
        return self._client

    def _password(self) -> str:
        pw = self.opts["pw"]
        return pw.reveal() if pw is not None else DEFAULT_PASSWORD

    def _post(self, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http().post(path, **kwargs)
        except httpx.HTTPError as exc:
            error = transport_error(exc, f"InfluxDB at {self.base_url}")
            raise RetryableError(redact_text(str(error), self._secrets)) from None

    def _ensure_database(self) -> None:
        """1.x: CREATE DATABASE (a no-op when it exists). A non-admin user is allowed to skip it."""
        if self._db_ready:
            return
        db = self.opts["db"]
        # kube-eventer's statement: a new database gets the retention policy "default" (its default one),
        # so points land where kube-eventer put them; an existing database keeps its own default policy
        duration = f" DURATION {self.opts['retention']}" if self.opts["retention"] else ""
        statement = f'CREATE DATABASE {_quote_ident(db)} WITH{duration} NAME "default"'
        response = self._post("/query", data={"q": statement})
        error = _classify(response.status_code, response.text)
        if error is None:
            try:
                results = response.json().get("results") or [{}]
                problem = str(results[0].get("error") or "")
            except (ValueError, AttributeError, LookupError, TypeError):  # not InfluxDB's shape: take it as done
                problem = ""
            if "conflicts with an existing policy" in problem:
                if self.opts["retention"]:
                    log.warning("influxdb: database %r exists with another retention policy; retention= is ignored",
                                db)
                else:
                    log.info("influxdb: database %r exists; points go to its default retention policy", db)
            elif problem and "already exists" not in problem:
                if "admin" not in problem and "not authorized" not in problem:
                    raise PermanentError(f"cannot create database {db!r}: {problem}")
                log.warning("influxdb: user %r may not create databases; database %r must exist", self.opts["user"], db)
        elif isinstance(error, PermanentError) and response.status_code == 403:
            log.warning("influxdb: user %r may not create databases; database %r must exist", self.opts["user"], db)
        else:
            raise self._explained(error, response.status_code)
        self._db_ready = True

    def _write_params(self) -> dict[str, str]:
        opts = self.opts
        if self.v2:
            params = {"bucket": opts["bucket"], "precision": "ns"}
            if opts["org"]:
                params["org"] = opts["org"]
            return params
        # no rp=: points go to the database's default retention policy: "default" on a database
        # eventrouter (or kube-eventer) created, the user's choice on one that existed
        return {"db": opts["db"], "precision": "ns"}

    # ---- Sink API ------------------------------------------------------------------------------
    def open(self) -> None:
        self._ensure_database()
        if self.v2:
            try:
                response = self._http().get("/ping")
            except httpx.HTTPError as exc:
                raise RetryableError(
                    redact_text(str(transport_error(exc, f"InfluxDB at {self.base_url}")), self._secrets)
                ) from None
            if response.status_code >= 500:
                raise RetryableError(f"InfluxDB answered HTTP {response.status_code} to /ping")

    def send(self, batch: Sequence[Event]) -> None:
        if not batch:
            return
        self._ensure_database()
        size = int(self.opts["points_per_write"])
        chunks = [batch[i:i + size] for i in range(0, len(batch), size)]
        if len(chunks) == 1:
            self._write(self._body(chunks[0]))
            return
        # encode the next chunk while earlier ones are written (influxd works on the other cores)
        pool = self._executor()
        in_flight: list[tuple[Future[None], Sequence[Event]]] = []
        failed: list[tuple[BaseException, Sequence[Event]]] = []
        for chunk in chunks:
            body = self._body(chunk)
            if len(in_flight) >= int(self.opts["concurrency"]):
                failed += _failure(*in_flight.pop(0))
            in_flight.append((pool.submit(self._write, body), chunk))
        for future, chunk in in_flight:
            failed += _failure(future, chunk)
        if not failed:
            return
        rejected = [e for error, chunk in failed if not isinstance(error, RetryableError) for e in chunk]
        if not rejected:
            # every chunk is retried with the batch: the points already written are rewritten as they were
            raise failed[0][0]
        retry = [e for error, chunk in failed if isinstance(error, RetryableError) for e in chunk]
        written = len(batch) - len(rejected) - len(retry)
        raise PartialError(f"{written} of {len(batch)} points written, {len(retry)} to retry, {len(rejected)} "
                           f"rejected: {failed[0][0]}", retry=retry, rejected=rejected)

    def _body(self, events: Sequence[Event]) -> bytes:
        cluster = self.opts["cluster_name"]
        encode = fields_point if self.with_fields else value_point
        if "cluster_name" in self.opts.given:
            tag = cluster_tag(cluster)
            lines = [encode(e, tag) for e in events]
        else:  # each event's own cluster (--cluster-name), else the default
            lines = [encode(e, cluster_tag(e.cluster or cluster)) for e in events]
        return "\n".join(lines).encode("utf-8")

    def _write(self, body: bytes) -> None:
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if self._gzip and len(body) >= GZIP_MIN_BYTES:
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        path = "/api/v2/write" if self.v2 else "/write"
        response = self._post(path, params=self._write_params(), content=body, headers=headers)
        error = _classify(response.status_code, response.text, response.headers.get("Retry-After"))
        if isinstance(error, DatabaseMissing):
            self._db_ready = False  # dropped under us: create it again before the retry
        if error is not None:
            raise self._explained(error, response.status_code)

    def _explained(self, error: SinkError, status: int) -> SinkError:
        if status == 401 and not self.v2 and not {"user", "pw"} & set(self.opts.given):
            return PermanentError(f"{error} (user and pw default to kube-eventer's root/root; give user= and pw=)")
        return error

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(int(self.opts["concurrency"]), thread_name_prefix="influxdb-write")
        return self._pool

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        client, self._client = self._client, None
        if client is not None:
            client.close()


def _failure(future: Future[None], chunk: Sequence[Event]) -> list[tuple[BaseException, Sequence[Event]]]:
    error = future.exception()
    return [(error, chunk)] if error is not None else []


def _is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0].strip("[]") if host.count(":") <= 1 or host.startswith("[") else host
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
