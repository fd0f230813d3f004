"""``eventrouter sinks`` and ``eventrouter check``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, ClassVar

from eventrouter import registry
from eventrouter.config import build_sink
from eventrouter.errors import ConfigError, SinkError
from eventrouter.event import sample_event
from eventrouter.options import MASK, Duration, Secret
from eventrouter.sink import CORE_OPTION_NAMES, core_options
from eventrouter.sinkurl import is_sensitive_name, redact_text


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
            print(f"    + filter and delivery options: {common_option_names()} (--all-options shows them)")
        print()
    return 0


def common_option_names() -> str:
    """The options every sink takes, from their declaration (so the list cannot go stale); exclude_* for short."""
    names: list[str] = []
    for option in core_options(None, {}):
        name = "exclude_*" if option.name.startswith("exclude_") else option.name
        if name not in names:
            names.append(name)
    return ", ".join(names)


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
            if isinstance(value, Secret) or option.secret or (is_sensitive_name(option.name) and value
                                                              and not isinstance(value, (bool, int, float))):
                # a plugin's credential option that forgot secret=True (token=, api_key=) is masked too
                shown: object = MASK if value else ""
            elif isinstance(value, list):
                # a value of label= or header= may hold a comma: show the list as it is, credentials masked
                shown = [redact_text(str(v), ()) for v in value]
            else:
                shown = "" if value is None else redact_text(flag_value(value), ())
            print(f"    {option.name} = {shown}")
        try:
            with _Contacts() as contacts:
                sink.open()
            print(f"    open: ok ({contacts.describe(sink, args.send_test)})")
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


class _Contacts:
    """What a sink's ``open()`` connected to, observed rather than declared: Python sockets through the
    ``socket.connect`` audit event (httpx, PyMySQL, botocore), sockets a C library opened and kept as
    new socket descriptors in /proc/self/fd, and a sink's own ``contacts_on_open = True`` (Kafka: its
    open() raises unless the brokers answered). ``check`` says "not contacted" truthfully for a sink
    whose open() only validates (dingtalk, webhook, log)."""

    _active: ClassVar[_Contacts | None] = None
    _hooked: ClassVar[bool] = False

    def __init__(self) -> None:
        self.addresses: list[str] = []
        self._sockets_before: set[str] = set()
        self.new_sockets = 0

    def __enter__(self) -> _Contacts:
        if not _Contacts._hooked:
            sys.addaudithook(_Contacts._audit)  # cannot be removed: it does nothing while no check runs
            _Contacts._hooked = True
        _Contacts._active = self
        self._sockets_before = _socket_fds()
        return self

    def __exit__(self, *exc: object) -> None:
        _Contacts._active = None
        self.new_sockets = len(_socket_fds() - self._sockets_before)

    @staticmethod
    def _audit(event: str, args: tuple[Any, ...]) -> None:
        active = _Contacts._active
        if active is not None and event == "socket.connect":
            address = args[1]
            if isinstance(address, tuple) and len(address) >= 2:
                text = f"[{address[0]}]:{address[1]}" if ":" in str(address[0]) else f"{address[0]}:{address[1]}"
                if text not in active.addresses:
                    active.addresses.append(text)

    def describe(self, sink: object, send_test: bool) -> str:
        name = getattr(sink, "name", "the sink")
        if self.addresses:
            return "connected to " + ", ".join(self.addresses)
        # a C library's connection may be gone again when open() returns (librdkafka replaces its
        # bootstrap connection): a sink whose successful open() implies an answer says so
        if self.new_sockets or getattr(sink, "contacts_on_open", False):
            return "connected"
        then = "the test event below contacts it" if send_test else "--send-test delivers a test event"
        return f"not contacted: opening {name} makes no connection; {then}"


def _socket_fds() -> set[str]:
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return set()
    found = set()
    for fd in names:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found


def _redact(sink, exc: BaseException) -> str:  # type: ignore[no-untyped-def]
    return redact_text(str(exc), [v for v in sink.opts.values() if isinstance(v, Secret)])
