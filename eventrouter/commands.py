"""``eventrouter sinks`` and ``eventrouter check``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from eventrouter import registry
from eventrouter.config import build_sink
from eventrouter.errors import ConfigError, SinkError
from eventrouter.event import sample_event
from eventrouter.options import MASK, Duration, Secret
from eventrouter.sink import CORE_OPTION_NAMES


def sinks_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="eventrouter sinks", description="List every registered sink.")
    parser.add_argument("--all-options", action="store_true", help="also list the filter and delivery options")
    args = parser.parse_args(argv)
    try:
        entries = registry.discover()
    except ConfigError as exc:
        print(f"eventrouter: error: {exc}", file=sys.stderr)
        return 2
    for name, entry in sorted(entries.items()):
        try:
            cls = entry.load()
        except Exception as exc:
            print(f"{name}  ({entry.distribution} {entry.version})  BROKEN: {exc}\n")
            continue
        doc = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip().splitlines()
        alias = f"  (alias of {cls.name})" if cls.name != name else ""
        print(f"{name}  ({entry.distribution} {entry.version}){alias}  {doc[0] if doc else ''}")
        shown = cls.all_options() if args.all_options else cls.options
        for option in shown:
            default = "" if option.default in (None, "", [], ()) else f" = {flag_value(option.default)}"
            flags = " required" if option.required else ""
            flags += " secret" if option.secret else ""
            print(f"    {option.name} ({option.describe()}{default}){flags}  {option.help}")
        if not args.all_options:
            print("    + filter and delivery options: level, namespaces, kinds, reasons, exclude_*, min_count, "
                  "queue_size, batch_size, flush_interval, max_retries, retry_backoff_max, overflow")
        print()
    return 0


def flag_value(value: object) -> str:
    """A default as it is written in a flag: ``false``, ``30m``, ``200ms``, ``a,b``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Duration):
        seconds = float(value)
        if seconds == 0:
            return "0"
        for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
            if seconds >= size and seconds % size == 0:
                return f"{seconds / size:g}{unit}"
        return f"{seconds * 1000:g}ms" if seconds < 1 else f"{seconds:g}s"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def check_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="eventrouter check",
                                     description="Validate sinks and optionally send a test event.")
    parser.add_argument("--sink", action="append", required=True, help="NAME:URL?opts; repeatable")
    parser.add_argument("--send-test", action="store_true",
                        help="deliver one synthetic Warning event through each sink")
    parser.add_argument("--cluster-name", default="", help="cluster name for the test event")
    args = parser.parse_args(argv)
    status = 0
    for flag in args.sink:
        try:
            sink = build_sink(flag)
        except ConfigError as exc:
            print(f"error: {exc}")
            status = 2
            continue
        except Exception as exc:  # a bug in from_url: one line, no traceback, no text (it may hold a secret)
            print(f"error: --sink={flag.partition(':')[0]}: the sink failed to start: {type(exc).__name__}")
            status = 2
            continue
        print(f"{sink.describe()}")
        for option in sink.all_options():
            value = sink.opts.get(option.name)
            if option.name in CORE_OPTION_NAMES and option.name not in sink.opts.given:
                continue
            if isinstance(value, Secret) or option.secret:
                shown: object = MASK if value else ""
            elif isinstance(value, list):
                shown = value  # a value of label= or header= may hold a comma: show the list as it is
            else:
                shown = "" if value is None else flag_value(value)
            print(f"    {option.name} = {shown}")
        try:
            sink.open()
            print("    open: ok")
            if args.send_test:
                event = sample_event()
                if args.cluster_name:
                    from dataclasses import replace

                    event = replace(event, cluster=args.cluster_name)
                sink.send([event])
                sink.tick()
                flush = getattr(sink, "flush", None)  # a sink that holds events back (s3 spools them) sends them now
                if callable(flush):
                    flush()
                print("    send-test: delivered")
        except (SinkError, ConfigError) as exc:  # open() may find a config problem (a missing ConfigMap)
            print(f"    failed: {type(exc).__name__}: {_redact(sink, exc)}")
            status = max(status, 1)
        except Exception as exc:  # a sink bug or an untranslated client error: reported, secrets masked
            print(f"    failed: unexpected {type(exc).__name__} in the sink: {_redact(sink, exc)}")
            status = max(status, 1)
        finally:
            try:
                sink.close()
            except Exception:
                pass
    return status


def _redact(sink, exc: BaseException) -> str:  # type: ignore[no-untyped-def]
    from eventrouter.sinkurl import redact_text

    return redact_text(str(exc), [v for v in sink.opts.values() if isinstance(v, Secret)])
