"""``eventrouter athena-ddl --sink=s3:...``: the Athena table over what the S3 sink writes.

The columns are the fields of ``Event.to_dict()`` (times as ISO 8601 strings: read them with
``from_iso8601_timestamp``), ``involved_object`` a struct. Partitions come from the folders of the
sink's ``key_format`` and use partition projection, so new partitions need no ``MSCK REPAIR``:
``year=%Y`` becomes an integer column ``year``; a folder like ``dt=%Y-%m-%d`` a date-projected
string column ``dt``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from datetime import datetime

from eventrouter import ConfigError, SinkURL

from ._keys import CODES, KeyFormatError, java_format, partitions, smallest_unit

# (column, Athena type) in the order Event.to_dict() writes them
COLUMNS: tuple[tuple[str, str], ...] = (
    ("uid", "string"),
    ("resource_version", "string"),
    ("cluster", "string"),
    ("namespace", "string"),
    ("name", "string"),
    ("type", "string"),
    ("reason", "string"),
    ("message", "string"),
    ("count", "bigint"),
    ("first_timestamp", "string"),
    ("last_timestamp", "string"),
    (
        "involved_object",
        "struct<kind:string,namespace:string,name:string,uid:string,api_version:string,field_path:string>",
    ),
    ("source_component", "string"),
    ("source_host", "string"),
    ("reporting_controller", "string"),
    ("reporting_instance", "string"),
    ("action", "string"),
    # with --enrich (docs/enrichment.md); NULL for events written without it
    ("labels", "map<string,string>"),
    ("annotations", "map<string,string>"),
    ("owner", "struct<kind:string,namespace:string,name:string,api_version:string>"),
)


def athena_ddl(bucket: str, prefix: str, key_format: str, *, table: str, years: tuple[int, int]) -> str:
    """The ``CREATE EXTERNAL TABLE`` statement; KeyFormatError if the folders cannot be projected."""
    parts, folder_template = partitions(key_format)
    if not parts:
        raise KeyFormatError("key_format has no partition folders (such as year=%Y/month=%m/day=%d/hour=%H)")
    names = {c for c, _ in COLUMNS}
    for part in parts:
        if part.column in names:
            raise KeyFormatError(f"partition {part.column!r} has the name of an event field; rename the folder")
    location = f"s3://{bucket}/{prefix}"
    props = [("projection.enabled", "true")]
    for part in parts:
        col = part.column
        if part.is_integer:
            code = part.codes[0]
            low, high = years if code == "Y" else CODES[code][1]  # type: ignore[misc]
            props += [(f"projection.{col}.type", "integer"), (f"projection.{col}.range", f"{low},{high}")]
            if CODES[code][2] > 1 and code != "Y":
                props.append((f"projection.{col}.digits", str(CODES[code][2])))
        else:
            start = datetime(years[0], 1, 1).strftime(part.value_format)
            end = datetime(years[1], 12, 31, 23, 59).strftime(part.value_format)  # not NOW: a clock ahead
            props += [
                (f"projection.{col}.type", "date"),
                (f"projection.{col}.format", java_format(part.value_format)),
                (f"projection.{col}.range", f"{start},{end}"),
                (f"projection.{col}.interval", "1"),
                (f"projection.{col}.interval.unit", smallest_unit(part.codes)),
            ]
    props.append(("storage.location.template", f"{location}{folder_template}/"))
    columns = ",\n".join(f"  `{name}` {kind}" for name, kind in COLUMNS)
    partition_cols = ", ".join(f"`{p.column}` {'int' if p.is_integer else 'string'}" for p in parts)
    tblprops = ",\n".join(f"  '{k}'='{v}'" for k, v in props)
    return (
        f"CREATE EXTERNAL TABLE IF NOT EXISTS {table} (\n{columns}\n)\n"
        f"PARTITIONED BY ({partition_cols})\n"
        "ROW FORMAT SERDE 'org.openx.data.jsonserde.JsonSerDe'\n"
        "WITH SERDEPROPERTIES ('ignore.malformed.json'='true')\n"
        "STORED AS INPUTFORMAT 'org.apache.hadoop.mapred.TextInputFormat'\n"
        "OUTPUTFORMAT 'org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat'\n"
        f"LOCATION '{location}'\n"
        f"TBLPROPERTIES (\n{tblprops}\n);\n"
    )


def _table(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a table name (TABLE or DATABASE.TABLE: letters, digits, _)")
    return text


def _years(text: str) -> tuple[int, int]:
    low, sep, high = text.partition(",")
    if not sep or not low.strip().isdigit() or not high.strip().isdigit() or int(low) > int(high):
        raise argparse.ArgumentTypeError(f"{text!r} is not FIRST,LAST such as 2024,2040")
    return int(low), int(high)


def athena_ddl_command(argv: Sequence[str]) -> int:
    from . import S3Sink  # the sink parses and validates the flag exactly as a run would

    parser = argparse.ArgumentParser(
        prog="eventrouter athena-ddl",
        description="Print the Athena CREATE EXTERNAL TABLE for the objects an s3 sink writes.",
    )
    parser.add_argument("--sink", required=True, help="the s3:s3://BUCKET/PREFIX?... flag the router runs with")
    parser.add_argument("--table", type=_table, default="kubernetes_events",
                        help="table name, optionally database.table")
    parser.add_argument("--years", type=_years, default=None,
                        help="projection range of the year partition (default: the sink's partition_years, "
                             "2014,2099 unless set); narrower than that hides the events filed outside it")
    args = parser.parse_args(argv)
    try:
        url = SinkURL.parse(args.sink)
        if url.name != S3Sink.name:
            raise ConfigError(f"--sink={url.name}: athena-ddl describes an s3 sink (--sink=s3:s3://BUCKET/PREFIX)")
        sink = S3Sink(url, S3Sink.parse_options(url))
        years = args.years or sink.years
        if years[0] > sink.years[0] or years[1] < sink.years[1]:
            print(f"eventrouter athena-ddl: warning: --years {years[0]},{years[1]} does not cover the sink's "
                  f"partition_years {sink.years[0]},{sink.years[1]}: Athena will not see events filed outside it",
                  file=sys.stderr)
        ddl = athena_ddl(sink.bucket, sink.prefix, sink.opts["key_format"], table=args.table, years=years)
    except (ConfigError, KeyFormatError) as exc:
        print(f"eventrouter athena-ddl: error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(ddl)
    return 0
