"""Logging set-up and aggregation of repeated messages (one line per interval, not per event)."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import orjson


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, msg, and any ``extra`` fields."""

    _skip = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in self._skip:
                data[key] = value
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(data, default=str).decode()


def setup_logging(fmt: str = "text", verbosity: int = 0) -> None:
    level = logging.DEBUG if verbosity >= 4 else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%SZ")
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    handler._eventrouter = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    # replace our own handler only: test harnesses and embedding programs keep theirs
    root.handlers[:] = [h for h in root.handlers if not getattr(h, "_eventrouter", False)] + [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "urllib3", "kubernetes", "botocore", "boto3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class ThrottledLog:
    """Logs at most ``burst`` messages per ``interval`` per key, then says how many were held back.

    ``flush()`` (at shutdown) logs the last held-back message of each key with the count, so the
    final interval's messages are not lost without a trace.
    """

    def __init__(self, logger: logging.Logger, interval: float = 30.0, burst: int = 1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._interval = interval
        self._burst = burst
        self._clock = clock
        self._lock = threading.Lock()
        self._window: dict[str, tuple[float, int]] = {}  # key -> (window start, messages logged in it)
        self._held: dict[str, int] = {}
        self._latest: dict[str, tuple[int, str, tuple[object, ...]]] = {}  # key -> last held-back message

    def log(self, level: int, key: str, msg: str, *args: object) -> bool:
        now = self._clock()
        with self._lock:
            start, logged = self._window.get(key, (now, 0))
            if now - start >= self._interval:
                start, logged = now, 0
            if logged >= self._burst:
                self._held[key] = self._held.get(key, 0) + 1
                self._latest[key] = (level, msg, args)
                return False
            held = self._held.pop(key, 0)
            self._latest.pop(key, None)
            self._window[key] = (start, logged + 1)
        if held:
            msg += f" ({held} similar messages held back in the last {self._interval:g}s)"
        self._logger.log(level, msg, *args)
        return True

    def flush(self) -> None:
        """Log the last held-back message of every key with the count; then forget them."""
        with self._lock:
            pending = [(self._held.pop(key, 0), *self._latest.pop(key)) for key in list(self._latest)]
        for held, level, msg, args in pending:
            self._logger.log(level, msg + f" (the last of {held} similar messages held back)", *args)
