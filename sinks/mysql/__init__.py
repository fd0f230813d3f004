"""MySQL / MariaDB sink: one row per Kubernetes Event, updated in place when the Event repeats.

Talks to a MySQL 5.7+/8.x or MariaDB 10.3+ server with PyMySQL (``pip install 'eventrouter[mysql]'``).

Credentials: a user with ``SELECT, INSERT, UPDATE`` on the table (and ``CREATE`` if eventrouter
should create it), for example::

    CREATE USER 'eventrouter'@'%' IDENTIFIED BY '...';
    GRANT SELECT, INSERT, UPDATE, CREATE ON k8s.* TO 'eventrouter'@'%';

Put the password in an environment variable fed from a Kubernetes Secret and write ``$MYSQL_PW``
in the flag (the flag is expanded like kube-eventer's), or pass it as ``password=``.

URL forms (the part after ``mysql:?`` is a Go MySQL driver DSN, as in kube-eventer)::

    --sink=mysql:?user:pw@tcp(host:3306)/db?charset=utf8mb4&table=kube_event     (kube-eventer)
    --sink=mysql:?user:pw@tcp(host:3306)/db                                       (table kube_event)
    --sink=mysql:?user@unix(/run/mysqld/mysqld.sock)/db&password=$MYSQL_PW
    --sink=mysql:?user:$MYSQL_PW@tcp(db.example:3306)/k8s?charset=utf8&parseTime=true&table=k8s_event&level=Warning

The table (``table=``, default ``kube_event``) is created if missing with kube-eventer's columns
(``namespace, kind, name, type, reason, message, event_id, first_occurrence_time,
last_occurrence_time``) plus ``count, cluster, source_host, resource_version``, times as
``DATETIME(6)`` in UTC and a unique key on ``event_id``: a repeat of an Event (count bumped)
updates its row (``count``, ``last_occurrence_time``, ``message``), and a retried batch never adds a
duplicate. An existing table, such as one made from kube-eventer's ``shema.sql``, is used as it is
(never altered): only the columns it has are written, values are cut to fit its column sizes. Without a
unique key on ``event_id`` (kube-eventer's tables) every occurrence is its own row, as with
kube-eventer, and writes stay idempotent: in the same transaction as the insert, the rows of the
batch's event ids are read and an occurrence already there is skipped (see ``occurrence_key``), so a
replay, a restart or a retried batch whose COMMIT answer was lost adds no row.

Example::

    --sink=mysql:?eventrouter:$MYSQL_PW@tcp(mysql.db:3306)/k8s?charset=utf8mb4&table=kube_event
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from eventrouter import (
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
    redact_text,
)

from ._dsn import DSN, parse_dsn, split_host
from ._pymysql import import_pymysql_lazily
from ._schema import (
    COLUMNS,
    Column,
    create_table_sql,
    event_id_is_unique,
    insert_sql,
    occurrence_key,
    row_alias_supported,
    table_columns,
    upsert_sql,
)

log = logging.getLogger("eventrouter.sinks.mysql")

DEFAULT_TABLE = "kube_event"

# ---- error classification ------------------------------------------------------------------------
# Server or network trouble that a later attempt (on a new connection) can get past.
RETRYABLE_CODES: dict[int, str] = {
    0: "PyMySQL: the connection is already closed",
    1040: "too many connections",
    1053: "server shutdown in progress",
    1152: "aborted connection",
    1158: "network read error",
    1159: "network read timeout",
    1160: "network write error",
    1161: "network write timeout",
    1205: "lock wait timeout",
    1213: "deadlock",
    1290: "read-only server (a failover in progress)",
    1317: "query interrupted",
    1836: "read-only mode",
    1927: "MariaDB: connection was killed",
    2002: "cannot connect (socket)",
    2003: "cannot connect (TCP)",
    2005: "unknown host",
    2006: "server has gone away",
    2013: "lost connection during query",
    2014: "commands out of sync",
    2055: "lost connection",
    4031: "disconnected by the server because of inactivity",
}
_PERMANENT_HINTS = {
    1044: "the database does not exist or the user may not use it (GRANT SELECT, INSERT, UPDATE, CREATE ON db.*)",
    1045: "the server refused the login: wrong user or password in the DSN",
    1049: "the database does not exist: create it (CREATE DATABASE ... CHARACTER SET utf8mb4) or fix the DSN",
    1142: "the user lacks a privilege on the table (it needs SELECT, INSERT, UPDATE, and CREATE to create it)",
    1146: "the table does not exist",
    1153: "a row is bigger than the server's max_allowed_packet (raise it, or the row cannot be written)",
}


def _classify(code: int, message: str) -> SinkError:
    """The error a server or client error code means for the batch: retry it later, or give up."""
    text = f"MySQL error {code}: {message}" if code else f"MySQL connection error: {message or 'connection closed'}"
    if code in RETRYABLE_CODES:
        return RetryableError(text)
    hint = _PERMANENT_HINTS.get(code)
    return PermanentError(f"{hint} ({text})" if hint else text)


# ---- the sink ------------------------------------------------------------------------------------
def _check_charsets(values: list[str]) -> str | None:
    for value in values:
        if value.lower() not in ("utf8", "utf8mb4", "utf8mb3"):
            return f"{value!r} is not supported; eventrouter always talks utf8mb4 (utf8 and utf8mb3 are accepted)"
    return None


def _check_table(value: str) -> str | None:
    if not re.fullmatch(r"[A-Za-z0-9_$]{1,64}", value):
        return f"{value!r} is not a table name (letters, digits, '_' and '$', at most 64)"
    return None


class MySQLSink(Sink):
    """MySQL/MariaDB: one row per event, upserted on event_id.  mysql:?user:pw@tcp(h:3306)/db&table=T"""

    name = "mysql"
    extra = "mysql"
    options: ClassVar = (
        Option(
            "table",
            str,
            default=DEFAULT_TABLE,
            validate=_check_table,
            help="table to write; created if missing, used as it is if it exists",
        ),
        Option("password", str, secret=True, help="password, when it is not in the DSN (user:password@...)"),
        Option(
            "charset",
            list,
            default=["utf8mb4"],
            validate=_check_charsets,
            help="Go DSN charset; the connection always uses utf8mb4 so emoji and CJK survive",
        ),
        Option("timeout", Duration, default=Duration(10.0), min=0.001, help="connect timeout (Go DSN)"),
        Option("readTimeout", Duration, default=Duration(30.0), min=0.001, help="read timeout (Go DSN)"),
        Option("writeTimeout", Duration, default=Duration(30.0), min=0.001, help="write timeout (Go DSN)"),
        Option(
            "tls",
            str,
            default="false",
            choices=("false", "true", "skip-verify", "preferred"),
            help="TLS (Go DSN): true (required, verified), skip-verify (required, not verified), preferred, false",
        ),
        Option("ca_file", str, help="PEM file of the CA that signed the server certificate (implies tls=true)"),
        Option("parseTime", bool, default=False, help="Go DSN option, accepted for compatibility (no effect)"),
        Option("loc", str, default="UTC", help="Go DSN option, accepted for compatibility: times are stored in UTC"),
    )
    delivery_defaults: ClassVar = {"batch_size": 500, "flush_interval": 1.0}

    def __init__(self, url: SinkURL, opts: Options, *, dsn: DSN | None = None) -> None:
        super().__init__(url, opts)
        self.dsn = dsn or self._dsn(url)
        if not self.dsn.database:
            raise SinkConfigError(self.name, "the DSN names no database: use user:password@tcp(host:3306)/DATABASE")
        try:
            self._host, self._port = split_host(self.dsn.address) if self.dsn.net != "unix" else ("", 0)
        except ValueError as exc:
            raise SinkConfigError(self.name, f"bad address in the DSN: {exc}") from None
        self.table: str = opts["table"]
        self._conn: Any = None
        self._columns: list[Column] = []
        self._sql = ""
        self._key: list[Column] = []  # occurrence key, for a table without a unique key on event_id
        import_pymysql_lazily()  # cryptography (7 MB) only when a login needs its RSA step
        self._pymysql = self.require("pymysql")

    @classmethod
    def _dsn(cls, url: SinkURL) -> DSN:
        if url.scheme or url.host or url.path:
            raise SinkConfigError(cls.name, "expected the DSN after '?': mysql:?user:password@tcp(host:3306)/db")
        try:
            return parse_dsn(url.raw_query)
        except ValueError as exc:
            raise SinkConfigError(cls.name, f"cannot read the DSN: {exc}") from None

    @classmethod
    def option_query(cls, url: SinkURL) -> Mapping[str, Sequence[str]]:
        # The DSN's own parameters (charset=...) and the sink options after '&' form one query.
        params = cls._dsn(url).params
        return SinkURL.parse("mysql:?" + params).query if params else {}

    @classmethod
    def parse_options(cls, url: SinkURL) -> Options:
        opts = super().parse_options(url)
        dsn_password = cls._dsn(url).password
        if dsn_password and not opts["password"]:
            # keep the DSN password as a Secret too, so the router masks it in any error text
            opts = Options({**opts, "password": Secret(dsn_password)}, opts.given)
        return opts

    @classmethod
    def redact(cls, url: SinkURL) -> str:
        text = url.redacted(cls.secret_keys())
        try:
            dsn = parse_dsn(url.raw_query)
        except ValueError:
            return text
        if dsn.password:
            text = text.replace(f"?{dsn.user}:{dsn.password}@", f"?{dsn.user}:***@", 1)
        return text

    # ---- connection ---------------------------------------------------------------------------
    def _connect_args(self) -> dict[str, Any]:
        opts = self.opts
        password = opts["password"].reveal() if opts["password"] else ""
        args: dict[str, Any] = {
            "user": self.dsn.user or None,
            "password": password,
            "database": self.dsn.database,
            "charset": "utf8mb4",
            "autocommit": False,
            "connect_timeout": float(opts["timeout"]),
            "read_timeout": float(opts["readTimeout"]),
            "write_timeout": float(opts["writeTimeout"]),
            # DATETIME has no zone; the session zone matters for TIMESTAMP columns and NOW()
            "init_command": "SET time_zone = '+00:00'",
        }
        if self.dsn.net == "unix":
            args["unix_socket"] = self.dsn.address
        else:
            args["host"], args["port"] = self._host, self._port
        tls = opts["tls"]
        if opts["ca_file"] and "tls" not in opts.given:
            tls = "true"
        if tls == "false":
            args["ssl_disabled"] = True  # PyMySQL would otherwise try TLS when the server offers it
        elif tls in ("true", "skip-verify"):
            # an ssl context makes TLS required: the connection fails rather than fall back to plain text
            try:
                context = ssl.create_default_context(cafile=opts["ca_file"] or None)
            except (OSError, ssl.SSLError) as exc:
                raise PermanentError(f"cannot load ca_file {opts['ca_file']!r}: {exc}") from None
            if tls == "skip-verify":
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            args["ssl"] = context
        # "preferred": PyMySQL's default, TLS without verification when the server offers it
        return args

    def _error(self, exc: BaseException) -> SinkError:
        args = getattr(exc, "args", ())
        if isinstance(exc, self._pymysql.MySQLError) and args and isinstance(args[0], int):
            code, message = args[0], str(args[1]) if len(args) > 1 else ""
        else:
            code, message = 2013, f"{type(exc).__name__}: {exc}"
        error = _classify(code, message)
        if "CERTIFICATE_VERIFY_FAILED" in message or "Hostname mismatch" in message:
            error = PermanentError(
                f"TLS: the server certificate is not trusted; give ca_file= or tls=skip-verify ({message})"
            )
        text = redact_text(str(error), [self.opts["password"]])
        return type(error)(f"{self._where()}: {text}")

    def _where(self) -> str:
        where = self.dsn.address if self.dsn.net == "unix" else f"{self._host}:{self._port}"
        return f"{where}/{self.dsn.database}.{self.table}"

    def _connection(self) -> Any:
        if self._conn is not None:
            return self._conn
        try:
            conn = self._pymysql.connect(**self._connect_args())
        except (self._pymysql.MySQLError, OSError) as exc:
            raise self._error(exc) from None
        try:
            self._prepare(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def _prepare(self, conn: Any) -> None:
        """Create the table if missing, learn its columns and build the insert statement."""
        try:
            with conn.cursor() as cur:
                columns = table_columns(cur, self.table)
                if not columns:
                    log.info("mysql: creating table %s", self._where())
                    cur.execute(create_table_sql(self.table))
                    columns = table_columns(cur, self.table)
                unique = event_id_is_unique(cur, self.table)
                cur.execute("SELECT VERSION()")
                version = str(cur.fetchone()[0])
            conn.commit()
        except self._pymysql.MySQLError as exc:
            raise self._error(exc) from None
        known = [columns[name] for name in COLUMNS if name in columns]
        if not known:
            raise PermanentError(f"{self._where()}: the table has none of the columns {', '.join(COLUMNS)}")
        self._columns = known
        if unique:
            self._sql, self._key = upsert_sql(self.table, known, row_alias=row_alias_supported(version)), []
            return
        self._sql = insert_sql(self.table, known)
        if "event_id" not in columns:
            self._key = []
            log.warning("mysql: table %s has no event_id column: a retried batch or a replay adds its rows again",
                        self._where())
            return
        self._key = occurrence_key(known)
        log.warning(
            "mysql: table %s has no unique key on event_id: every repeat of an event adds a row (as kube-eventer "
            "does); an occurrence already in the table (same %s) is skipped, which reads the rows of each batch's "
            "event ids: add an index (ALTER TABLE ... ADD KEY (event_id)) on a large table, or a UNIQUE KEY "
            "(event_id) to keep one row per event.",
            self._where(), "event_id and resource_version" if len(self._key) == 2 else "values in every column",
        )

    # ---- Sink API ------------------------------------------------------------------------------
    def open(self) -> None:
        self._connection()

    def send(self, batch: Sequence[Event]) -> None:
        if not batch:
            return
        conn = self._connection()
        rows = [tuple(col.adapt(COLUMNS[col.name.lower()][1](event)) for col in self._columns) for event in batch]
        pymysql = self._pymysql
        try:
            with conn.cursor() as cur:
                if self._key:
                    rows = self._not_yet_stored(cur, rows)
                # one multi-row INSERT [... ON DUPLICATE KEY UPDATE] per ~1 MB (PyMySQL rewrites executemany)
                if rows:
                    cur.executemany(self._sql, rows)
            conn.commit()
        except (pymysql.MySQLError, OSError) as exc:
            error = self._error(exc)
            if isinstance(exc, pymysql.ProgrammingError) and exc.args and exc.args[0] == 1146:
                # the table was dropped under us: the next send creates it again
                error = RetryableError(str(error))
            if isinstance(error, RetryableError):
                # the batch is rolled back with the lost connection; reconnect on the next send
                self._drop_connection()
            else:
                try:
                    conn.rollback()
                except Exception:
                    self._drop_connection()
            raise error from None

    def _not_yet_stored(self, cur: Any, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """The rows whose occurrence is neither in the table nor earlier in this batch. Runs in the
        transaction of the insert, so a batch retried after its COMMIT answer was lost finds its rows."""
        positions = {col.name: i for i, col in enumerate(self._columns)}
        id_at = next(i for i, col in enumerate(self._columns) if col.name.lower() == "event_id")
        key_at = [positions[col.name] for col in self._key]
        names = ", ".join(f"`{col.name}`" for col in self._key)
        stored: dict[Any, list[tuple[Any, ...]]] = {}
        ids = sorted({row[id_at] for row in rows})
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            cur.execute(f"SELECT {names} FROM `{self.table}` WHERE `event_id` IN ({', '.join(['%s'] * len(chunk))})",
                        chunk)
            for record in cur.fetchall():
                stored.setdefault(record[key_at.index(id_at)], []).append(tuple(record))
        fresh = []
        for row in rows:
            key = tuple(row[i] for i in key_at)
            known = stored.setdefault(row[id_at], [])
            if any(all(col.same(old, new) for col, old, new in zip(self._key, record, key, strict=True))
                   for record in known):
                continue
            known.append(key)
            fresh.append(row)
        return fresh

    def close(self) -> None:
        self._drop_connection()
