"""The public Sink API. A sink owns one protocol: encode, send, classify.

Lifecycle: ``from_url`` (validate, no I/O) -> ``open`` (optional connection check) ->
``send(batch)`` any number of times -> ``close`` (idempotent).

The router owns everything else: the bounded queue, batching, retries with backoff and jitter,
overflow, metrics and shutdown. A sink never sleeps, never loops to retry and starts no threads;
it raises :class:`RetryableError`, :class:`PermanentError` or :class:`PartialError` instead.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from eventrouter.buffer import size_problem
from eventrouter.errors import SinkConfigError
from eventrouter.event import Event
from eventrouter.options import Duration, Option, Options, parse_options
from eventrouter.sinkurl import SinkURL

LEVELS = ("Normal", "Warning")
# Events held in memory per sink by default (or the sink's batch_size, if larger): a burst past it goes to
# the sink's disk buffer. Two batches of 500 keep the sink busy; each event held costs ~5 KB of RAM, so the
# 10,000 of before held ~50 MB per sink during a burst (issue 20: peak RSS on a 20,000-event burst).
QUEUE_SIZE_DEFAULT = 1000


def _check_level(values: list[str]) -> str | None:
    for value in values:
        if value not in LEVELS:
            return f"{value!r} is not a level; use Normal (Normal and Warning) or Warning (Warning only)"
    return None


def core_options(default_level: str | None, delivery: Mapping[str, Any]) -> tuple[Option, ...]:
    """The filter and delivery options every sink accepts; the core applies them."""
    return (
        Option(
            "level",
            list,
            default=[default_level] if default_level else [],
            help="Warning sends Warning events only; Normal sends Normal and Warning"
            + (f" (default {default_level})" if default_level else " (default: all events)"),
            validate=_check_level,
        ),
        Option("namespaces", list, default=[], help="only events of objects in these namespaces"),
        Option("kinds", list, default=[], help="only events of these involved-object kinds"),
        Option("reasons", list, default=[], aliases=("reason",), help="only reasons matching these regexes"),
        Option("exclude_namespaces", list, default=[], help="drop events of objects in these namespaces"),
        Option("exclude_kinds", list, default=[], help="drop events of these involved-object kinds"),
        Option("exclude_reasons", list, default=[], help="drop reasons matching these regexes"),
        Option("min_count", int, default=0, min=0, help="only events seen at least this many times"),
        Option("labels", list, default=[], split_commas=False,
               help="label selector on the involved object (team=a, team in (a,b), !temp); needs --enrich"),
        Option("exclude_labels", list, default=[], split_commas=False,
               help="drop events whose involved object matches this label selector; needs --enrich"),
        Option("owner_kinds", list, default=[], help="only events whose top owner is of these kinds; needs --enrich"),
        Option("message", list, default=[], help="only messages matching these regexes"),
        Option("queue_size", int,
               default=delivery.get("queue_size", max(QUEUE_SIZE_DEFAULT, delivery.get("batch_size", 1))), min=1,
               help="events held in memory for this sink; more go to its disk buffer (with buffer_max_bytes=0: "
               "more are dropped, by the overflow policy)"),
        Option("batch_size", int, default=delivery.get("batch_size", 1), min=1, help="events per send"),
        Option(
            "flush_interval",
            Duration,
            default=Duration(delivery.get("flush_interval", 1.0)),
            min=0,
            help="longest wait to fill a batch",
        ),
        Option(
            "max_retries",
            int,
            default=delivery.get("max_retries", -1),
            min=-1,
            help="retries of a failed batch before it is counted as failed (-1: until shutdown)",
        ),
        Option(
            "retry_backoff_max",
            Duration,
            default=Duration(delivery.get("retry_backoff_max", 5.0)),
            min=0,
            help="longest wait between retries: a sink that comes back is used again within it (default 5s)",
        ),
        Option(
            "buffer_max_bytes",
            str,
            default=delivery.get("buffer_max_bytes", "2GiB"),
            help="disk buffer of this sink, past queue_size (in DATA_DIR/buffer/<sink>/): 512MiB, 2GiB, ... or "
            "bytes (default 2GiB; 0: none, the overflow policy applies at queue_size)",
            validate=size_problem,
        ),
        Option(
            "overflow",
            str,
            default="drop_oldest",
            choices=("drop_oldest", "drop_newest"),
            help="what to drop when the disk buffer is full (or the queue, without one)",
        ),
    )


CORE_OPTION_NAMES = frozenset(o.name for o in core_options(None, {})) | {"reason"}


class Sink:
    """Base class of every sink, built-in or plugin. Subclass it and register an entry point.

    Class attributes to set:

    - ``name``: the NAME in ``--sink=NAME:...`` (one lowercase noun).
    - ``options``: the sink's own options (the core adds the filter and delivery options).
    - ``default_level``: ``"Warning"`` for chat sinks; ``None`` (all events) otherwise.
    - ``delivery_defaults``: defaults for ``batch_size``, ``flush_interval``, ``queue_size``, ...
    - ``extra``: the pip extra that installs the client library (``eventrouter[kafka]``).
    """

    name: ClassVar[str] = ""
    options: ClassVar[Sequence[Option]] = ()
    default_level: ClassVar[str | None] = None
    delivery_defaults: ClassVar[Mapping[str, Any]] = {}
    extra: ClassVar[str | None] = None
    # A directory of this sink's own that survives restarts (``DATA_DIR/sinks/<label>/``), set by the app
    # before :meth:`open`; None when the sink is built without one (unit tests). Keep state there that must
    # outlive the process (a digest not yet posted).
    state_dir: str | None = None

    def __init__(self, url: SinkURL, opts: Options) -> None:
        self.url = url
        self.opts = opts

    # ---- configuration (no I/O) ---------------------------------------------------------------
    @classmethod
    def from_url(cls, url: SinkURL) -> Sink:
        """Validate the flag and build the sink. Raises SinkConfigError; does no I/O."""
        return cls(url, cls.parse_options(url))

    @classmethod
    def all_options(cls) -> tuple[Option, ...]:
        return (*cls.options, *core_options(cls.default_level, cls.delivery_defaults))

    @classmethod
    def option_query(cls, url: SinkURL) -> Mapping[str, Sequence[str]]:
        """The query keys that are options. A sink whose URL carries other data overrides this."""
        return url.query

    @classmethod
    def parse_options(cls, url: SinkURL) -> Options:
        return parse_options(cls.name or url.name, cls.all_options(), cls.option_query(url))

    @classmethod
    def secret_keys(cls) -> frozenset[str]:
        return frozenset(k for o in cls.options if o.secret for k in o.keys)

    @classmethod
    def redact(cls, url: SinkURL) -> str:
        """The flag with secrets masked, for logs and ``eventrouter check``."""
        return url.redacted(cls.secret_keys())

    @classmethod
    def require(cls, module: str) -> Any:
        """Import a client library, or say which extra installs it."""
        try:
            return importlib.import_module(module)
        except ImportError:
            extra = cls.extra or cls.name
            raise SinkConfigError(
                cls.name, f"needs the Python package {module!r}: pip install 'eventrouter[{extra}]'"
            ) from None

    # ---- delivery ---------------------------------------------------------------------------
    def open(self) -> None:
        """Connect and check what a send needs (credentials, topic, table). Optional."""

    def send(self, batch: Sequence[Event]) -> None:
        """Deliver the batch or raise a SinkError."""
        raise NotImplementedError

    def tick(self) -> None:
        """Called by the worker at least every ``flush_interval``: send what the sink holds back.

        Only a sink that overrides it is woken for it when idle; the worker of any other sleeps on a quiet
        cluster until an event arrives."""

    def close(self) -> None:
        """Flush and release. Called once per worker; must be safe to call twice."""

    def describe(self) -> str:
        return self.redact(self.url)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"
