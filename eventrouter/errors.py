"""Errors raised by eventrouter and by sinks.

The tree::

    EventRouterError
    ├── ConfigError                 a flag or option is wrong (the CLI exits with status 2)
    │   └── SinkConfigError         names the sink, the option and what is allowed
    └── SinkError                   a send failed; the router decides what happens next
        ├── RetryableError          transient (network, 429, 5xx); may carry retry_after seconds
        ├── PermanentError          will fail again (4xx, bad credentials, rejected payload)
        └── PartialError            some events of the batch failed: retry some, reject others

A sink translates its client library's exceptions into these at the boundary, so the router never
sees an httpx, pymysql or confluent-kafka exception.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from eventrouter.event import Event


class EventRouterError(Exception):
    """Base of every error eventrouter raises on purpose."""


class ConfigError(EventRouterError):
    """A command-line flag or option has a value eventrouter cannot use."""


class SinkConfigError(ConfigError):
    """A ``--sink`` flag cannot be used. The message names the sink, the option and what is allowed."""

    def __init__(self, sink: str, message: str, option: str | None = None) -> None:
        self.sink = sink
        self.option = option
        where = f"--sink={sink}: option '{option}'" if option else f"--sink={sink}"
        super().__init__(f"{where}: {message}")


class SinkError(EventRouterError):
    """A send failed."""


class RetryableError(SinkError):
    """The same batch may succeed later. ``retry_after`` (seconds) overrides the backoff."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(SinkError):
    """The batch will never succeed as it is; it is counted as failed and not retried."""


class PartialError(SinkError):
    """Part of a batch was delivered.

    ``retry`` holds the events to send again (in order); ``rejected`` the events that will never
    be accepted (counted as failed). Events in neither were delivered.
    """

    def __init__(
        self,
        message: str,
        retry: Sequence[Event] = (),
        rejected: Sequence[Event] = (),
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.retry = list(retry)
        self.rejected = list(rejected)
        self.retry_after = retry_after
