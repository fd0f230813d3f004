"""The MySQL sink against a real MariaDB started on loopback (tests/servers/mariadb.py)."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest
import trustme

from eventrouter import Event, PermanentError, RetryableError, SinkConfigError, SinkURL
from eventrouter.cli import main as cli_main
from eventrouter.config import build_sink
from eventrouter.router import Router, SinkRunner
from sinks.mysql import MySQLSink, _classify
from sinks.mysql._dsn import parse_dsn
from sinks.mysql._schema import Column, row_alias_supported, upsert_sql
from tests.helpers import make_event, real_objects
from tests.servers.mariadb import DATABASE, PASSWORD, USER, MariaDB

ROOT = Path(__file__).resolve().parents[2]

SECRET = "pw-Zx81-secret"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    base = tmp_path_factory.mktemp("tls")
    files = {"ca": base / "ca.pem", "cert": base / "cert.pem", "key": base / "key.pem"}
    ca.cert_pem.write_to_path(files["ca"])
    cert.private_key_pem.write_to_path(files["key"])
    for n, pem in enumerate(cert.cert_chain_pems):
        pem.write_to_path(files["cert"], append=n > 0)
    return files


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tls_files: dict[str, Path]):
    db = MariaDB(tmp_path_factory.mktemp("mariadb"), tls=(tls_files["cert"], tls_files["key"])).start()
    yield db
    db.stop()


def flag(server: MariaDB, table: str, extra: str = "", password: str = PASSWORD, database: str = DATABASE) -> str:
    return f"mysql:?{server.dsn(password=password, database=database)}&table={table}{extra}"


def naive(dt: datetime) -> datetime:
    return dt.astimezone(UTC).replace(tzinfo=None)


# ---- flags -------------------------------------------------------------------------------------------
FLAGS = [
    # kube-eventer's documented forms
    (
        "mysql:?user:pw@tcp(h:3306)/db?charset=utf8&table=kube_event",
        dict(user="user", password="pw", net="tcp", address="h:3306", database="db", table="kube_event"),
    ),
    (
        "mysql:?root:transwarp@tcp(172.16.180.132:3306)/kube_eventer?charset=utf8&table=k8s_event",
        dict(
            user="root", password="transwarp", address="172.16.180.132:3306", database="kube_eventer", table="k8s_event"
        ),
    ),
    (
        "mysql:?root:pw@tcp(mysql:3306)/kube_eventer?charset=utf8",
        dict(user="root", database="kube_eventer", table="kube_event"),
    ),
    # Go DSN parameters after '&' (kube-eventer passes the whole query as the DSN when table= is absent)
    (
        "mysql:?u:pw@tcp(h:3306)/db?charset=utf8mb4,utf8&parseTime=true&loc=Local",
        dict(user="u", database="db", charset=["utf8mb4", "utf8"], parseTime=True),
    ),
    # a password with '&', '?' and '@'; the unix socket form; password= instead of the DSN
    (
        "mysql:?app:p&w?x@y@tcp(db:3306)/k8s&table=ev",
        dict(user="app", password="p&w?x@y", address="db:3306", table="ev"),
    ),
    (
        "mysql:?app@unix(/run/mysqld/mysqld.sock)/k8s&password=pw2&level=Warning",
        dict(net="unix", address="/run/mysqld/mysqld.sock", password="pw2", level=["Warning"]),
    ),
    ("mysql:?app:pw@/k8s", dict(net="tcp", address="127.0.0.1:3306", database="k8s")),
    (
        "mysql:?app:pw@tcp(h)/k8s?timeout=5s&readTimeout=1m&tls=skip-verify&batch_size=100",
        dict(timeout=5.0, readTimeout=60.0, tls="skip-verify", batch_size=100),
    ),
]


@pytest.mark.parametrize(("text", "expected"), FLAGS)
def test_flags(text: str, expected: dict) -> None:
    sink = build_sink(text)
    assert isinstance(sink, MySQLSink)
    for key, value in expected.items():
        if key in ("user", "net", "address", "database"):
            assert getattr(sink.dsn, key) == value, key
        elif key == "password":
            assert sink.opts["password"].reveal() == value
        else:
            assert sink.opts[key] == value, key
    assert sink.opts["batch_size"] == expected.get("batch_size", 500)


BAD_FLAGS = [
    ("mysql:?user:pw@tcp(h:3306)/db?charset=utf8&tabel=kube_event", "option 'tabel': unknown option"),
    ("mysql:?user:pw@tcp(h:3306)/db&table=ev;drop", "option 'table'"),
    ("mysql:?user:pw@tcp(h:3306)/db?charset=latin1", "option 'charset'"),
    ("mysql:?user:pw@tcp(h:3306)/db&tls=maybe", "option 'tls'"),
    ("mysql:?user:pw@tcp(h:3306)/", "names no database"),
    ("mysql:?just-some-text", "cannot read the DSN"),
    ("mysql:?user:pw@pipe(x)/db", "network 'pipe' is not supported"),
    ("mysql:?user:pw@tcp(h:port)/db", "the port 'port' is not a number from 1 to 65535"),
    ("mysql://user:pw@h:3306/db", "expected the DSN after '?'"),
]


@pytest.mark.parametrize(("text", "message"), BAD_FLAGS)
def test_bad_flags(text: str, message: str) -> None:
    with pytest.raises(SinkConfigError) as info:
        build_sink(text)
    assert "--sink=mysql" in str(info.value)
    assert message in str(info.value)
    assert ":pw@" not in str(info.value)


def test_parse_dsn_keeps_params_for_options() -> None:
    dsn = parse_dsn("u:p@tcp(h:1)/db?charset=utf8&table=t")
    assert (dsn.user, dsn.password, dsn.address, dsn.database, dsn.params) == (
        "u",
        "p",
        "h:1",
        "db",
        "charset=utf8&table=t",
    )


def test_redacted_round_trip(caplog: pytest.LogCaptureFixture) -> None:
    url = SinkURL.parse(f"mysql:?app:{SECRET}@tcp(127.0.0.1:1)/k8s?charset=utf8&table=ev")
    sink = MySQLSink.from_url(url)
    assert MySQLSink.redact(url) == "mysql:?app:***@tcp(127.0.0.1:1)/k8s?charset=utf8&table=ev"
    assert SECRET not in repr(sink) and SECRET not in sink.describe()
    url2 = SinkURL.parse(f"mysql:?app@tcp(127.0.0.1:1)/k8s&password={SECRET}")
    assert MySQLSink.redact(url2) == "mysql:?app@tcp(127.0.0.1:1)/k8s&password=***"
    with caplog.at_level(logging.DEBUG), pytest.raises(RetryableError) as info:
        sink.send([make_event(1)])  # nothing listens on port 1
    assert "Connection refused" in str(info.value) or "Can't connect" in str(info.value)
    assert SECRET not in str(info.value) and SECRET not in caplog.text


# ---- classification -----------------------------------------------------------------------------
CLASSIFY = [
    (2003, "Can't connect to MySQL server on '10.0.0.1' ([Errno 111] Connection refused)", RetryableError),
    (2006, "MySQL server has gone away", RetryableError),
    (2013, "Lost connection to MySQL server during query", RetryableError),
    (0, "", RetryableError),  # PyMySQL: the connection is already closed
    (1040, "Too many connections", RetryableError),
    (1053, "Server shutdown in progress", RetryableError),
    (1205, "Lock wait timeout exceeded", RetryableError),
    (1213, "Deadlock found when trying to get lock", RetryableError),
    (1290, "The MariaDB server is running with the --read-only option", RetryableError),
    (1927, "Connection was killed", RetryableError),
    (1045, "Access denied for user 'app'@'10.0.0.2' (using password: YES)", PermanentError),
    (1044, "Access denied for user 'app'@'%' to database 'other'", PermanentError),
    (1049, "Unknown database 'nope'", PermanentError),
    (1142, "INSERT command denied to user 'app'@'%' for table 'kube_event'", PermanentError),
    (1406, "Data too long for column 'reason' at row 1", PermanentError),
    (1366, "Incorrect string value: '\\xF0\\x9F\\x94\\xA5' for column 'message'", PermanentError),
    (1064, "You have an error in your SQL syntax", PermanentError),
    (1153, "Got a packet bigger than 'max_allowed_packet' bytes", PermanentError),
    (2059, "Authentication plugin 'x' cannot be loaded", PermanentError),
]


@pytest.mark.parametrize(("code", "message", "expected"), CLASSIFY)
def test_classify(code: int, message: str, expected: type) -> None:
    error = _classify(code, message)
    assert type(error) is expected
    if code:
        assert str(code) in str(error)


def test_classify_says_what_to_fix() -> None:
    assert "wrong user or password" in str(_classify(1045, "Access denied"))
    assert "database does not exist" in str(_classify(1049, "Unknown database 'x'"))


# ---- against the real server -----------------------------------------------------------------------
def test_creates_table_and_writes_exact_rows(server: MariaDB) -> None:
    sink = build_sink(flag(server, "exact"))
    sink.open()
    columns = [
        r["COLUMN_NAME"]
        for r in server.query(
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA=%s AND TABLE_NAME='exact' "
            "ORDER BY ORDINAL_POSITION",
            (DATABASE,),
        )
    ]
    assert columns == [
        "id",
        "namespace",
        "kind",
        "name",
        "type",
        "reason",
        "message",
        "event_id",
        "first_occurrence_time",
        "last_occurrence_time",
        "count",
        "cluster",
        "source_host",
        "resource_version",
        "update_time",
    ]
    types = {
        r["COLUMN_NAME"]: r["COLUMN_TYPE"]
        for r in server.query(
            "SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA=%s "
            "AND TABLE_NAME='exact'",
            (DATABASE,),
        )
    }
    assert types["first_occurrence_time"] == types["last_occurrence_time"] == "datetime(6)"
    indexes = {
        r["INDEX_NAME"]
        for r in server.query(
            "SELECT INDEX_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA=%s AND TABLE_NAME='exact'",
            (DATABASE,),
        )
    }
    assert indexes == {"PRIMARY", "uk_event_id", "idx_last_occurrence_time", "idx_namespace_reason_time"}

    first = make_event(1, cluster="prod", first_timestamp=datetime(2026, 4, 14, 9, 0, 0, 123456, tzinfo=UTC))
    node = make_event(
        2,
        type="Normal",
        reason="NodeReady",
        message="Node node-2 status is now: NodeReady",
        involved_object=replace(make_event(2).involved_object, kind="Node", namespace="", name="node-2"),
    )
    sink.send([first, node])
    sink.close()
    rows = server.query(
        "SELECT namespace, kind, name, type, reason, message, event_id, first_occurrence_time, "
        "last_occurrence_time, count, cluster, source_host, resource_version FROM exact "
        "ORDER BY event_id"
    )
    assert rows == [
        dict(
            namespace="default",
            kind="Pod",
            name="app-1",
            type="Warning",
            reason="BackOff",
            message="Back-off restarting failed container app in pod app-1",
            event_id=first.uid,
            first_occurrence_time=datetime(2026, 4, 14, 9, 0, 0, 123456),
            last_occurrence_time=datetime(2026, 4, 14, 9, 30, 1),
            count=1,
            cluster="prod",
            source_host="node-1",
            resource_version="1001",
        ),
        dict(
            namespace="",
            kind="Node",
            name="node-2",
            type="Normal",
            reason="NodeReady",
            message="Node node-2 status is now: NodeReady",
            event_id=node.uid,
            first_occurrence_time=datetime(2026, 4, 14, 9, 30, 2),
            last_occurrence_time=datetime(2026, 4, 14, 9, 30, 2),
            count=1,
            cluster="",
            source_host="node-1",
            resource_version="1002",
        ),
    ]


def test_one_multi_row_insert_per_batch(server: MariaDB) -> None:
    sink = build_sink(flag(server, "multirow"))
    sink.open()
    before = int(server.query("SHOW GLOBAL STATUS LIKE 'Com_insert'")[0]["Value"])
    sink.send([make_event(n) for n in range(500)])
    after = int(server.query("SHOW GLOBAL STATUS LIKE 'Com_insert'")[0]["Value"])
    sink.close()
    assert after - before == 1
    assert server.query("SELECT COUNT(*) AS n FROM multirow") == [{"n": 500}]


def test_repeat_updates_the_row(server: MariaDB) -> None:
    sink = build_sink(flag(server, "repeats"))
    ev = make_event(5)
    later = ev.last_timestamp + timedelta(minutes=5)
    bumped = replace(ev, count=3, last_timestamp=later, resource_version="2005", message="Back-off again")
    stale = replace(
        ev, count=2, last_timestamp=ev.last_timestamp + timedelta(minutes=1), resource_version="1500", message="older"
    )
    sink.send([ev])
    sink.send([bumped, bumped])  # a repeat, and the same event twice in one batch
    sink.send([stale])  # an older occurrence retried late must not roll the row back
    sink.send([bumped])  # a retried batch
    sink.close()
    rows = server.query(
        "SELECT event_id, count, message, resource_version, first_occurrence_time, last_occurrence_time FROM repeats"
    )
    assert rows == [
        dict(
            event_id=ev.uid,
            count=3,
            message="Back-off again",
            resource_version="2005",
            first_occurrence_time=naive(ev.first_timestamp),
            last_occurrence_time=naive(later),
        )
    ]


def test_unicode_and_a_64_kb_message(server: MariaDB) -> None:
    sink = build_sink(flag(server, "unicode"))
    big = ("a" * 1023 + "🔥") * 64  # 65536 characters, 65728 bytes: more than a TEXT column holds
    cjk = make_event(
        1,
        message="节点 node-1 磁盘压力 🔥💥 — ünïcödé 'quoted' \"double\" \\ back",
        involved_object=replace(make_event(1).involved_object, name="应用-1"),
    )
    sink.send([cjk, make_event(2, message=big)])
    sink.close()
    rows = server.query("SELECT name, message FROM unicode ORDER BY event_id")
    assert rows[0] == {"name": "应用-1", "message": cjk.message}
    assert rows[1]["message"] == big


# kube-eventer's common/mysql/shema.sql and the table of its docs/en/mysql-sink.md: no unique key, times as text
SHEMA_SQL = """CREATE TABLE `{table}` (
  `id` bigint(20) NOT NULL AUTO_INCREMENT,
  `namespace` varchar(255) DEFAULT '', `kind` varchar(255) DEFAULT '', `name` varchar(255) DEFAULT '',
  `type` varchar(255) DEFAULT '', `reason` varchar(255) DEFAULT '', `message` varchar(255) DEFAULT '',
  `event_id` varchar(255) DEFAULT '', `first_occurrence_time` varchar(255) DEFAULT '',
  `last_occurrence_time` varchar(255) DEFAULT '', `update_time` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP,
  PRIMARY KEY (`id`)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"""
DOCS_TABLE = """create table {table} (
    id bigint(20) not null auto_increment primary key, name varchar(64) not null default '',
    namespace varchar(64) not null default '', event_id varchar(64) not null default '',
    type varchar(64) not null default '', reason varchar(64) not null default '', message text not null,
    kind varchar(64) not null default '', first_occurrence_time varchar(64) not null default '',
    last_occurrence_time varchar(64) not null default '') ENGINE = InnoDB default CHARSET = utf8"""
KE_COLUMNS = ("name, namespace, event_id, type, reason, message, kind, first_occurrence_time, "
              "last_occurrence_time")


def test_existing_kube_eventer_table_is_used_as_it_is(server: MariaDB, caplog: pytest.LogCaptureFixture) -> None:
    server.execute(DOCS_TABLE.format(table="ke_event"))  # the docs' 3-byte utf8
    sink = build_sink(flag(server, "ke_event"))
    ev = make_event(7, message="disk full 🔥 " + "x" * 300)
    later = replace(ev, count=2, last_timestamp=ev.last_timestamp + timedelta(seconds=30))
    with caplog.at_level(logging.WARNING):
        sink.send([ev])
        sink.send([later])
        sink.send([ev, later])  # a retried batch, or a replay: already there, no row added
    sink.close()
    assert "no unique key on event_id" in caplog.text
    rows = server.query(f"SELECT {KE_COLUMNS} FROM ke_event ORDER BY id")
    expected = dict(
        name="app-7",
        namespace="default",
        event_id=ev.uid,
        type="Warning",
        reason="BackOff",
        message="disk full \ufffd " + "x" * 300,
        kind="Pod",
        first_occurrence_time="2026-04-14 09:30:07 +0000 UTC",
        last_occurrence_time="2026-04-14 09:30:07 +0000 UTC",
    )
    # like kube-eventer: a repeat is another row in this table
    assert rows == [expected, {**expected, "last_occurrence_time": "2026-04-14 09:30:37 +0000 UTC"}]


@pytest.mark.parametrize("ddl", [SHEMA_SQL, DOCS_TABLE], ids=["shema.sql", "docs"])
def test_two_replays_of_the_real_corpus_into_kube_eventers_table_give_one_set_of_rows(
    server: MariaDB, tmp_path: Path, ddl: str
) -> None:
    table = "replay_shema" if ddl is SHEMA_SQL else "replay_docs"
    server.execute(ddl.format(table=table))
    source = tmp_path / "events.jsonl"
    source.write_bytes(b"".join(orjson.dumps(o) + b"\n" for o in real_objects()))
    snapshots = []
    for run in range(2):  # no checkpoint kept: the second run replays everything, as after a lost checkpoint
        args = [f"--source=file:{source}", f"--sink={flag(server, table)}", "--healthz-port=0",
                f"--checkpoint=file:{tmp_path / f'checkpoint-{run}'}"]
        assert cli_main(args) == 0
        snapshots.append(sorted(tuple(r.values()) for r in server.query(f"SELECT {KE_COLUMNS} FROM {table}")))
    assert snapshots[0] == snapshots[1]
    rows = snapshots[0]
    assert len(rows) == len(set(rows))  # no occurrence twice
    assert {r[2] for r in rows} == {o["metadata"]["uid"] for o in real_objects()}
    # every occurrence with its own last time has its row
    events = [Event.from_object(o) for o in real_objects()]
    assert len(rows) >= len({(e.uid, e.last_timestamp.replace(microsecond=0)) for e in events})


def test_table_with_resource_version_and_no_unique_key_keeps_one_row_per_occurrence(server: MariaDB) -> None:
    server.execute("""CREATE TABLE rv_event (id bigint AUTO_INCREMENT PRIMARY KEY, event_id varchar(64) NOT NULL,
        resource_version varchar(64) NOT NULL, reason varchar(64) NOT NULL DEFAULT '', count int NOT NULL DEFAULT 1,
        last_occurrence_time datetime NOT NULL) ENGINE=InnoDB""")  # a DATETIME without fraction digits
    sink = build_sink(flag(server, "rv_event"))
    ev = make_event(3, last_timestamp=datetime(2026, 4, 14, 9, 30, 1, 600000, tzinfo=UTC))
    repeat = replace(ev, resource_version="2002", count=2)
    sink.send([ev, repeat])
    sink.send([repeat, ev])  # replayed, in another order
    sink.send([replace(ev, reason="changed")])  # same event_id and resource_version: the same occurrence
    sink.close()
    rows = server.query("SELECT event_id, resource_version, count FROM rv_event ORDER BY id")
    assert rows == [dict(event_id=ev.uid, resource_version="1003", count=1),
                    dict(event_id=ev.uid, resource_version="2002", count=2)]


def test_batch_whose_commit_answer_was_lost_adds_no_row_when_retried(server: MariaDB) -> None:
    server.execute(SHEMA_SQL.format(table="lost_commit"))
    sink = build_sink(flag(server, "lost_commit", "&batch_size=50&flush_interval=20ms&retry_backoff_max=100ms"))
    sink.open()
    conn = sink._conn
    real_commit = conn.commit
    lost = []

    def commit_then_lose_the_answer() -> None:
        real_commit()  # the server has committed...
        if not lost:
            lost.append(1)
            import pymysql

            raise pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query")

    conn.commit = commit_then_lose_the_answer
    runner = SinkRunner.build(sink)
    router = Router([runner])
    router.start()
    events = [make_event(n) for n in range(120)]
    for ev in events:
        router.dispatch(ev)
    assert router.stop(30)
    assert lost and runner.stats.retried > 0 and runner.stats.failed == 0
    rows = server.query("SELECT event_id, COUNT(*) AS n FROM lost_commit GROUP BY event_id")
    assert sorted(r["event_id"] for r in rows) == sorted(e.uid for e in events)
    assert {r["n"] for r in rows} == {1}


UPSERT_COLUMNS = [Column(n, t, None, None, None, 6 if t == "datetime" else 0) for n, t in [
    ("event_id", "varchar"), ("count", "int"), ("message", "mediumtext"), ("last_occurrence_time", "datetime")]]


def test_text_time_columns_get_gos_time_string_in_utc() -> None:
    from sinks._kube_eventer import go_time_string

    # Go's time.String(): the fraction without trailing zeros, none for whole seconds
    assert go_time_string(datetime(2026, 4, 14, 9, 35, 10, 500000, tzinfo=UTC)) == "2026-04-14 09:35:10.5 +0000 UTC"
    assert go_time_string(datetime(2026, 4, 14, 17, 30, tzinfo=timezone(timedelta(hours=8)))) == \
        "2026-04-14 09:30:00 +0000 UTC"


def test_upsert_uses_the_row_alias_on_mysql_8_0_20_and_values_on_mariadb() -> None:
    assert row_alias_supported("8.0.20") and row_alias_supported("8.4.3") and row_alias_supported("9.1.0-commercial")
    assert not row_alias_supported("8.0.19") and not row_alias_supported("5.7.44-log")
    assert not row_alias_supported("10.11.6-MariaDB-0+deb12u1") and not row_alias_supported("11.4.2-MariaDB")
    alias = upsert_sql("t", UPSERT_COLUMNS, row_alias=True)
    assert "VALUES(`" not in alias and ") AS `new` ON DUPLICATE KEY UPDATE" in alias
    assert "`count` = GREATEST(`t`.`count`, `new`.`count`)" in alias
    values = upsert_sql("t", UPSERT_COLUMNS, row_alias=False)
    assert " AS `new`" not in values and "`count` = GREATEST(`t`.`count`, VALUES(`count`))" in values
    # PyMySQL still folds executemany into one multi-row INSERT with the alias
    from pymysql.cursors import RE_INSERT_VALUES

    assert RE_INSERT_VALUES.match(alias)


def test_check_reports_wrong_password_and_missing_database(server: MariaDB, capsys: pytest.CaptureFixture[str]) -> None:
    wrong = build_sink(flag(server, "t", password=SECRET))
    with pytest.raises(PermanentError) as info:
        wrong.open()
    assert "wrong user or password" in str(info.value) and f"'{USER}'" in str(info.value)
    assert SECRET not in str(info.value)
    # a user without rights on other databases gets 1044 for a missing one; root gets 1049
    with pytest.raises(PermanentError, match="database does not exist or the user may not use it"):
        build_sink(flag(server, "t", database="nope")).open()
    root_missing = f"mysql:?root:@tcp(127.0.0.1:{server.port})/nope&table=t"
    with pytest.raises(PermanentError, match="the database does not exist: create it"):
        build_sink(root_missing).open()

    assert (
        cli_main(
            [
                "check",
                f"--sink={flag(server, 't', password=SECRET)}",
                f"--sink={root_missing}",
                f"--sink={flag(server, 'checked')}",
            ]
        )
        == 1
    )
    out = capsys.readouterr().out
    assert SECRET not in out and PASSWORD not in out
    assert "failed: PermanentError" in out and "wrong user or password" in out
    assert "Unknown database 'nope'" in out
    assert out.count("open: ok") == 1


def test_check_send_test(server: MariaDB, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["check", "--send-test", f"--sink={flag(server, 'sendtest')}"]) == 0
    assert "send-test: delivered" in capsys.readouterr().out
    assert server.query("SELECT reason FROM sendtest") == [{"reason": "EventrouterTest"}]


def test_table_dropped_while_running_is_created_again(server: MariaDB) -> None:
    sink = build_sink(flag(server, "dropped"))
    sink.send([make_event(1)])
    server.execute("DROP TABLE dropped")
    with pytest.raises(RetryableError):
        sink.send([make_event(2)])
    sink.send([make_event(2)])  # what the router's retry does
    sink.close()
    assert server.query("SELECT name FROM dropped") == [{"name": "app-2"}]


def test_server_restart_mid_stream_loses_and_repeats_nothing(server: MariaDB) -> None:
    sink = build_sink(flag(server, "restart", "&batch_size=20&flush_interval=50ms&retry_backoff_max=300ms"))
    runner = SinkRunner.build(sink)
    router = Router([runner])
    router.start()
    events = [make_event(n) for n in range(600)]
    try:
        for ev in events[:200]:
            router.dispatch(ev)
        deadline = time.monotonic() + 30
        while (
            not server.query("SELECT COUNT(*) AS n FROM information_schema.TABLES WHERE TABLE_NAME='restart'")[0]["n"]
            or server.query("SELECT COUNT(*) AS n FROM restart")[0]["n"] < 20
        ):
            assert time.monotonic() < deadline, "nothing arrived before the restart"
            time.sleep(0.02)
        server.kill()  # SIGKILL while batches are in flight
        sender = threading.Thread(target=lambda: [router.dispatch(ev) for ev in events[200:]])
        sender.start()
        time.sleep(1.0)
        server.start()
        sender.join()
    finally:
        if server.proc is None:
            server.start()
        drained = router.stop(60)
    assert drained
    assert runner.stats.failed == 0 and runner.stats.retried > 0
    rows = server.query("SELECT event_id, COUNT(*) AS n FROM restart GROUP BY event_id")
    assert sorted(r["event_id"] for r in rows) == sorted(e.uid for e in events)
    assert {r["n"] for r in rows} == {1}


def test_real_events_end_to_end_through_the_cli(server: MariaDB, tmp_path: Path) -> None:
    objs = real_objects()[:400]
    source = tmp_path / "events.jsonl"
    source.write_bytes(b"".join(orjson.dumps(o) + b"\n" for o in objs))
    status = cli_main(
        [
            f"--source=file:{source}",
            f"--sink={flag(server, 'real_events')}",
            "--healthz-port=0",
            f"--checkpoint=file:{tmp_path / 'checkpoint'}",
            "--cluster-name=kind",
        ]
    )
    assert status == 0
    latest: dict[str, dict] = {}
    for obj in objs:
        latest[obj["metadata"]["uid"]] = obj  # a later MODIFIED of the same event updates its row
    rows = server.query("SELECT event_id, namespace, kind, name, reason, count, cluster FROM real_events")
    assert len(rows) == len(latest)
    by_id = {r["event_id"]: r for r in rows}
    for uid, obj in latest.items():
        row = by_id[uid]
        involved = obj["involvedObject"]
        assert (row["namespace"], row["kind"], row["name"], row["reason"], row["cluster"]) == (
            involved.get("namespace", ""),
            involved["kind"],
            involved["name"],
            obj["reason"],
            "kind",
        )
        assert row["count"] == max(Event.from_object(o).count for o in objs if o["metadata"]["uid"] == uid)


def _cipher(sink: MySQLSink) -> str:
    with sink._conn.cursor() as cur:
        cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        return cur.fetchone()[1]


def test_tls_modes(server: MariaDB, tls_files: dict[str, Path]) -> None:
    verified = build_sink(flag(server, "tls", f"&tls=true&ca_file={tls_files['ca']}"))
    verified.send([make_event(1)])
    assert _cipher(verified)  # the session is encrypted
    verified.close()
    implied = build_sink(flag(server, "tls", f"&ca_file={tls_files['ca']}"))
    implied.open()
    assert _cipher(implied)
    implied.close()
    unverified = build_sink(flag(server, "tls", "&tls=skip-verify"))
    unverified.open()
    assert _cipher(unverified)
    unverified.close()
    plain = build_sink(flag(server, "tls"))
    plain.open()
    assert _cipher(plain) == ""  # tls=false (the default) means no TLS, as in the Go driver
    plain.close()
    untrusted = build_sink(flag(server, "tls", "&tls=true"))
    with pytest.raises(PermanentError, match="server certificate is not trusted"):
        untrusted.open()
    assert server.query("SELECT name FROM tls") == [{"name": "app-1"}]


def test_events_k8s_io_v1_objects(server: MariaDB) -> None:
    events = [Event.from_object(o) for o in real_objects("events-k8s-io-v1")[:50]]
    sink = build_sink(flag(server, "events_v1"))
    sink.send(events)
    sink.close()
    rows = server.query("SELECT event_id, kind, name, message, last_occurrence_time FROM events_v1")
    latest = {e.uid: e for e in events}
    assert len(rows) == len(latest)
    for row in rows:
        ev = latest[row["event_id"]]
        assert (row["kind"], row["name"], row["message"]) == (
            ev.involved_object.kind,
            ev.involved_object.name,
            ev.message,
        )


def test_the_mysql_extra_can_answer_mysql_8_caching_sha2_full_authentication_without_tls():
    """MySQL 8's default plugin (caching_sha2_password) without TLS asks for the password encrypted with the
    server's RSA key on a full authentication; PyMySQL needs ``cryptography`` for it, which only the ``rsa``
    extra brings (the image installs ``eventrouter[mysql]``). kube-eventer's Go driver does this natively."""
    from importlib.metadata import requires

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
    from cryptography.hazmat.primitives.hashes import SHA1
    from pymysql._auth import sha2_rsa_encrypt

    assert any(r.startswith("pymysql[rsa]") and 'extra == "mysql"' in r for r in requires("eventrouter") or [])
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    salt = b"0123456789abcdefghij"
    sent = sha2_rsa_encrypt(b"secret", salt, pem)
    clear = key.decrypt(sent, padding.OAEP(mgf=padding.MGF1(algorithm=SHA1()), algorithm=SHA1(), label=None))
    assert bytes(c ^ salt[i % len(salt)] for i, c in enumerate(clear)) == b"secret\0"  # what the server reads


def test_cryptography_is_loaded_only_when_a_login_needs_its_rsa_step():
    """PyMySQL imports ``cryptography`` (7 MB of a Rust library) at import; a router with a mysql sink loads it
    only when a login asks for the RSA step (MySQL 8 caching_sha2/sha256 without TLS), and that step then
    works as PyMySQL's own. In a fresh process: the other tests import both."""
    code = """
import sys
from eventrouter import SinkURL
from sinks.mysql import MySQLSink
MySQLSink.from_url(SinkURL.parse("mysql:?u:p@tcp(127.0.0.1:3306)/db"))
import pymysql
assert "pymysql" in sys.modules and "cryptography" not in sys.modules, sorted(m for m in sys.modules if "crypt" in m)
from pymysql import _auth
encrypt = _auth.caching_sha2_password_auth.__globals__["sha2_rsa_encrypt"]  # the name PyMySQL's login calls
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.hashes import SHA1
key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
salt = b"0123456789abcdefghij"
clear = key.decrypt(encrypt(b"secret", salt, pem), padding.OAEP(mgf=padding.MGF1(algorithm=SHA1()), algorithm=SHA1(),
                                                                label=None))
assert bytes(c ^ salt[i % len(salt)] for i, c in enumerate(clear)) == b"secret\\0"
assert _auth._have_cryptography is True
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]
