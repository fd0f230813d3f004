"""Object keys: the ``key_format`` template, its validation and its Hive-style partition segments.

A key format is a path under the URL's prefix. Its directory part holds the partitions, written
with strftime codes that are filled from each event's UTC ``last_timestamp``; its file name holds
the placeholders ``{cluster}``, ``{start}``, ``{writer}`` and ``{seq}`` that make the key unique
and stable for one spool chunk. The same parse drives the sink and the Athena DDL, so they agree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

DEFAULT_KEY_FORMAT = "year=%Y/month=%m/day=%d/hour=%H/{cluster}-{start}-{writer}-{seq}.json.gz"
# Kubernetes' first release is from 2014: an earlier event time is a wrong clock. About 770,000 hourly
# partitions, under Athena's limit for one projected table scan.
DEFAULT_YEARS = "2014,2099"

# strftime code -> (default column name, integer range, digits, Java DateTimeFormatter letters, Athena unit)
CODES: dict[str, tuple[str, tuple[int, int] | None, int, str, str]] = {
    "Y": ("year", None, 4, "yyyy", "YEARS"),
    "m": ("month", (1, 12), 2, "MM", "MONTHS"),
    "d": ("day", (1, 31), 2, "dd", "DAYS"),
    "H": ("hour", (0, 23), 2, "HH", "HOURS"),
    "M": ("minute", (0, 59), 2, "mm", "MINUTES"),
}
UNIT_ORDER = ("YEARS", "MONTHS", "DAYS", "HOURS", "MINUTES")
PLACEHOLDERS = ("{cluster}", "{start}", "{writer}", "{seq}")
_CODE = re.compile(r"%(.)")
_PLACEHOLDER = re.compile(r"\{[^{}]*\}")
_COLUMN = re.compile(r"^[a-z_][a-z0-9_]*$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def check_key_format(text: str) -> str | None:
    """Why ``text`` cannot be a key format, or None. Used as the option's validator."""
    if not text or text.startswith("/") or "//" in text:
        return f"{text!r}: give a relative path such as {DEFAULT_KEY_FORMAT}"
    for match in _CODE.finditer(text):
        if match.group(1) not in CODES and match.group(1) != "%":
            return f"%{match.group(1)} is not supported; use %Y %m %d %H %M (UTC time of the event)"
    directory, _, filename = text.rpartition("/")
    for found in _PLACEHOLDER.findall(text):
        if found not in PLACEHOLDERS:
            return f"{found} is not a placeholder; use {', '.join(PLACEHOLDERS)}"
    if _PLACEHOLDER.search(directory):
        return "placeholders belong in the file name (the last path segment), not in partition folders"
    if "{writer}" not in filename or "{seq}" not in filename:
        return "the file name must contain {writer} and {seq}, so every spool chunk gets its own key"
    if not filename.endswith(".gz"):
        return "the file name must end with .gz (objects are gzip JSON Lines; Athena reads them by suffix)"
    return None


def parse_years(text: str) -> tuple[int, int]:
    low, sep, high = text.partition(",")
    if not sep or not low.strip().isdigit() or not high.strip().isdigit() or not 1970 <= int(low) <= int(high) <= 9999:
        raise ValueError(f"{text!r} is not FIRST,LAST such as {DEFAULT_YEARS}")
    return int(low), int(high)


def check_years(text: str) -> str | None:
    try:
        parse_years(text)
    except ValueError as exc:
        return str(exc)
    return None


def render_key(template: str, when: datetime, *, cluster: str, start: datetime, writer: str, seq: int) -> str:
    """The object key of one chunk; ``template`` is the key format with the prefix in front."""
    key = when.strftime(template)
    return (
        key.replace("{cluster}", _UNSAFE.sub("_", cluster) or "events")
        .replace("{start}", start.strftime("%Y%m%dT%H%M%SZ"))
        .replace("{writer}", writer)
        .replace("{seq}", f"{seq:08d}")
    )


def group_of(template: str, when: datetime) -> str:
    """Events that share this value go to the same chunk (same partition folder and file-name time)."""
    return when.strftime(template)


@dataclass(frozen=True)
class Partition:
    """One partition column of the Athena table, read from one folder of the key format."""

    column: str
    template: str  # the folder with its value replaced by ${column}
    codes: tuple[str, ...]
    value_format: str  # the strftime text of the value, e.g. %Y or %Y-%m-%d

    @property
    def is_integer(self) -> bool:
        return len(self.codes) == 1 and self.value_format == f"%{self.codes[0]}"


class KeyFormatError(ValueError):
    """The key format has folders that Athena partition projection cannot describe."""


def partitions(key_format: str) -> tuple[list[Partition], str]:
    """The partition columns of the key format and the folder template (``year=${year}/...``)."""
    directory = key_format.rpartition("/")[0]
    result: list[Partition] = []
    folders: list[str] = []
    for folder in directory.split("/") if directory else []:
        codes = tuple(m.group(1) for m in _CODE.finditer(folder) if m.group(1) != "%")
        if not codes:
            folders.append(folder.replace("%%", "%"))
            continue
        name, eq, value = folder.partition("=")
        if not eq:
            if len(codes) != 1 or folder != f"%{codes[0]}":
                raise KeyFormatError(f"folder {folder!r}: name it, as in dt={folder}")
            name, value = CODES[codes[0]][0], folder
            template = f"${{{name}}}"
        else:
            template = f"{name}=${{{name}}}"
        if not _COLUMN.match(name):
            raise KeyFormatError(f"folder {folder!r}: {name!r} is not a column name (a-z, 0-9, _)")
        if _CODE.sub("", value).strip("-_.:"):
            raise KeyFormatError(f"folder {folder!r}: only strftime codes and - _ . : may form a partition value")
        if any(p.column == name for p in result):
            raise KeyFormatError(f"folder {folder!r}: partition {name!r} appears twice")
        result.append(Partition(name, template, codes, value))
        folders.append(template)
    return result, "/".join(folders)


def java_format(value_format: str) -> str:
    """``%Y-%m-%d`` -> ``yyyy-MM-dd`` for ``projection.<col>.format``."""
    return _CODE.sub(lambda m: CODES[m.group(1)][3] if m.group(1) in CODES else "%", value_format)


def smallest_unit(codes: tuple[str, ...]) -> str:
    return max((CODES[c][4] for c in codes), key=UNIT_ORDER.index)
