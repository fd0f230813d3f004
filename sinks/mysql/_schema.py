"""The table: kube-eventer's columns and ours, the CREATE TABLE for a missing table, the columns of an
existing one (from information_schema) with values fitted to them, and the upsert statement."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from eventrouter import Event

from .._kube_eventer import go_time_string

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
    fraction_digits: int = 0  # DATETIME(fsp) / TIMESTAMP(fsp)

    @property
    def is_time(self) -> bool:
        return self.data_type in ("datetime", "timestamp")

    def adapt(self, value: Any) -> Any:
        if isinstance(value, datetime):
            if self.is_time:
                return value.astimezone(UTC).replace(tzinfo=None)
            value = go_time_string(value)
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


    def same(self, stored: Any, value: Any) -> bool:
        """Whether the stored value is the one this column keeps of ``value`` (already adapted): a
        time column keeps ``fraction_digits`` of the second, rounded (MySQL) or cut (MariaDB)."""
        if self.is_time and isinstance(stored, datetime) and isinstance(value, datetime):
            return abs((stored - value).total_seconds()) < 10.0 ** -self.fraction_digits
        if isinstance(stored, (bytes, bytearray)):
            stored = stored.decode("utf-8", "replace")
        return bool(stored == value)


def insert_sql(table: str, columns: Sequence[Column]) -> str:
    names = [c.name for c in columns]
    return f"INSERT INTO `{table}` ({', '.join(f'`{n}`' for n in names)}) VALUES ({', '.join(['%s'] * len(names))})"


def upsert_sql(table: str, columns: Sequence[Column], *, row_alias: bool) -> str:
    """INSERT ... ON DUPLICATE KEY UPDATE for a table with a unique key on event_id. ``row_alias``:
    MySQL 8.0.20+ deprecates ``VALUES(col)`` there (warning 1287) for the ``AS new`` row alias,
    which MariaDB does not know; so the alias on MySQL 8.0.20+, ``VALUES()`` elsewhere."""
    sql = insert_sql(table, columns)

    def new(name: str) -> str:
        return f"`new`.`{name}`" if row_alias else f"VALUES(`{name}`)"

    by_name = {c.name: c for c in columns}
    last = by_name.get("last_occurrence_time")
    newer = f"{new('last_occurrence_time')} >= `{table}`.`last_occurrence_time`" if last and last.is_time else "1"
    sets = []
    # MySQL applies the assignments left to right, so the ones that compare with the stored last
    # time come before last_occurrence_time itself is updated.
    for name in ("message", "type", "reason", "resource_version", "source_host", "cluster"):
        if name in by_name:
            sets.append(f"`{name}` = IF({newer}, {new(name)}, `{table}`.`{name}`)")
    if "count" in by_name:
        sets.append(f"`count` = GREATEST(`{table}`.`count`, {new('count')})")
    first = by_name.get("first_occurrence_time")
    if first is not None:
        sets.append(
            f"`first_occurrence_time` = LEAST(`{table}`.`first_occurrence_time`, {new('first_occurrence_time')})"
            if first.is_time
            else f"`first_occurrence_time` = `{table}`.`first_occurrence_time`"
        )
    if last is not None:
        sets.append(
            f"`last_occurrence_time` = GREATEST(`{table}`.`last_occurrence_time`, {new('last_occurrence_time')})"
            if last.is_time
            else f"`last_occurrence_time` = {new('last_occurrence_time')}"
        )
    if not sets:
        sets.append("`event_id` = `event_id`")
    return sql + (" AS `new`" if row_alias else "") + " ON DUPLICATE KEY UPDATE " + ", ".join(sets)


def occurrence_key(columns: Sequence[Column]) -> list[Column]:
    """The columns that tell one occurrence of an event from another, in a table without a unique key
    on event_id: event_id and resource_version when the table has it, else every column written (two
    rows alike in all of them carry the same information)."""
    by_name = {c.name.lower(): c for c in columns}
    if "event_id" in by_name and "resource_version" in by_name:
        return [by_name["event_id"], by_name["resource_version"]]
    return list(columns)


def row_alias_supported(version: str) -> bool:
    """MySQL 8.0.20+ (``SELECT VERSION()``); MariaDB reports ``10.11.6-MariaDB...``."""
    if "mariadb" in version.lower():
        return False
    try:
        numbers = tuple(int(part) for part in version.split("-", 1)[0].split(".")[:3])
    except ValueError:
        return False
    return numbers >= (8, 0, 20)


def table_columns(cur: Any, table: str) -> dict[str, Column]:
    """The columns of ``table`` in the current database, by lower-case name (empty: no such table)."""
    cur.execute(
        "SELECT COLUMN_NAME, DATA_TYPE, CHARACTER_MAXIMUM_LENGTH, CHARACTER_OCTET_LENGTH, CHARACTER_SET_NAME, "
        "DATETIME_PRECISION "
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
            int(fsp or 0),
        )
        for name, dtype, chars, octets, charset, fsp in cur.fetchall()
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
