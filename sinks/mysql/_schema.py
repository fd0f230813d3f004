"""The table: kube-eventer's columns and ours, the CREATE TABLE for a missing table, the columns of an
existing one (from information_schema) with values fitted to them, and the upsert statement."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from eventrouter import Event


def go_time(value: datetime) -> str:
    """Go's ``time.String()`` in UTC, the text kube-eventer wrote into varchar time columns."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S +0000 UTC")


# column -> (DDL, value). kube-eventer's nine columns first, then ours.
COLUMNS: dict[str, tuple[str, Callable[[Event], Any]]] = {
    "namespace": ("VARCHAR(253) NOT NULL DEFAULT ''", lambda e: e.involved_object.namespace),
    "kind": ("VARCHAR(128) NOT NULL DEFAULT ''", lambda e: e.involved_object.kind),
    "name": ("VARCHAR(253) NOT NULL DEFAULT ''", lambda e: e.involved_object.name),
    "type": ("VARCHAR(32) NOT NULL DEFAULT ''", lambda e: e.type),
    "reason": ("VARCHAR(128) NOT NULL DEFAULT ''", lambda e: e.reason),
    "message": ("MEDIUMTEXT NOT NULL", lambda e: e.message),
    "event_id": (
        "VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL",
        lambda e: e.uid or f"{e.namespace}/{e.name}",
    ),
    "first_occurrence_time": ("DATETIME(6) NOT NULL", lambda e: e.first_timestamp),
    "last_occurrence_time": ("DATETIME(6) NOT NULL", lambda e: e.last_timestamp),
    "count": ("INT UNSIGNED NOT NULL DEFAULT 1", lambda e: e.count),
    "cluster": ("VARCHAR(253) NOT NULL DEFAULT ''", lambda e: e.cluster),
    "source_host": ("VARCHAR(253) NOT NULL DEFAULT ''", lambda e: e.source_host),
    "resource_version": ("VARCHAR(64) NOT NULL DEFAULT ''", lambda e: e.resource_version),
}


def create_table_sql(table: str) -> str:
    columns = ",\n  ".join(f"`{name}` {ddl}" for name, (ddl, _) in COLUMNS.items())
    return (
        f"CREATE TABLE IF NOT EXISTS `{table}` (\n"
        "  `id` BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,\n"
        f"  {columns},\n"
        "  `update_time` TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,\n"
        "  UNIQUE KEY `uk_event_id` (`event_id`),\n"
        "  KEY `idx_last_occurrence_time` (`last_occurrence_time`),\n"
        "  KEY `idx_namespace_reason_time` (`namespace`, `reason`, `last_occurrence_time`)\n"
        ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci"
    )


@dataclass(frozen=True)
class Column:
    """One column of the table as information_schema describes it; ``adapt`` makes a value fit it."""

    name: str
    data_type: str
    max_chars: int | None
    max_bytes: int | None
    charset: str | None

    @property
    def is_time(self) -> bool:
        return self.data_type in ("datetime", "timestamp")

    def adapt(self, value: Any) -> Any:
        if isinstance(value, datetime):
            if self.is_time:
                return value.astimezone(UTC).replace(tzinfo=None)
            value = go_time(value)
        if isinstance(value, int) and self.data_type.endswith("int"):
            return value
        text = str(value)
        if self.charset in ("utf8", "utf8mb3"):
            # a 3-byte utf8 column rejects emoji and other astral characters: replace them
            text = "".join(c if ord(c) < 0x10000 else "\ufffd" for c in text)
        if self.max_chars is not None and len(text) > self.max_chars:
            text = text[: self.max_chars]
        if self.max_bytes is not None:
            data = text.encode("utf-8")
            if len(data) > self.max_bytes:
                text = data[: self.max_bytes].decode("utf-8", "ignore")
        return text


def upsert_sql(table: str, columns: Sequence[Column], unique: bool) -> str:
    names = [c.name for c in columns]
    sql = f"INSERT INTO `{table}` ({', '.join(f'`{n}`' for n in names)}) VALUES ({', '.join(['%s'] * len(names))})"
    if not unique:
        return sql
    by_name = {c.name: c for c in columns}
    last = by_name.get("last_occurrence_time")
    newer = "VALUES(`last_occurrence_time`) >= `last_occurrence_time`" if last and last.is_time else "1"
    sets = []
    # MySQL applies the assignments left to right, so the ones that compare with the stored last
    # time come before last_occurrence_time itself is updated. VALUES(col) works on MariaDB and MySQL.
    for name in ("message", "type", "reason", "resource_version", "source_host", "cluster"):
        if name in by_name:
            sets.append(f"`{name}` = IF({newer}, VALUES(`{name}`), `{name}`)")
    if "count" in by_name:
        sets.append("`count` = GREATEST(`count`, VALUES(`count`))")
    first = by_name.get("first_occurrence_time")
    if first is not None:
        sets.append(
            "`first_occurrence_time` = LEAST(`first_occurrence_time`, VALUES(`first_occurrence_time`))"
            if first.is_time
            else "`first_occurrence_time` = `first_occurrence_time`"
        )
    if last is not None:
        sets.append(
            "`last_occurrence_time` = GREATEST(`last_occurrence_time`, VALUES(`last_occurrence_time`))"
            if last.is_time
            else "`last_occurrence_time` = VALUES(`last_occurrence_time`)"
        )
    if not sets:
        sets.append("`event_id` = `event_id`")
    return sql + " ON DUPLICATE KEY UPDATE " + ", ".join(sets)


def table_columns(cur: Any, table: str) -> dict[str, Column]:
    """The columns of ``table`` in the current database, by lower-case name (empty: no such table)."""
    cur.execute(
        "SELECT COLUMN_NAME, DATA_TYPE, CHARACTER_MAXIMUM_LENGTH, CHARACTER_OCTET_LENGTH, CHARACTER_SET_NAME "
        "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s",
        (table,),
    )
    return {
        str(name).lower(): Column(
            str(name),
            str(dtype).lower(),
            int(chars) if chars is not None else None,
            int(octets) if octets is not None else None,
            str(charset).lower() if charset else None,
        )
        for name, dtype, chars, octets, charset in cur.fetchall()
    }


def event_id_is_unique(cur: Any, table: str) -> bool:
    """Whether a unique key starts with event_id (kube-eventer's own table has none)."""
    cur.execute(
        "SELECT 1 FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() "
        "AND TABLE_NAME = %s AND COLUMN_NAME = 'event_id' AND NON_UNIQUE = 0 AND SEQ_IN_INDEX = 1 "
        "LIMIT 1",
        (table,),
    )
    return cur.fetchone() is not None
