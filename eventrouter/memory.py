"""Giving memory back to the system once the sinks are open, and after a backlog drained (issue 14: RSS
falls back after a drain; issue 20: idle RSS).

CPython frees an object's memory to its own allocator, and big objects (an Event's raw dict, the text of
a client library's JSON model) to the C library's heap, which keeps freed pages for reuse: after a sink's
backlog of tens of thousands of events drained, the process would keep its peak RSS for good, and what
opening the sinks parsed and threw away (about 3 MB with the AWS, Kafka and MySQL clients) would stay
resident on a quiet cluster. A full collection and glibc's ``malloc_trim(0)`` return what is free.
Called rarely (once at start-up, after a large backlog drained), never on the hot path.

glibc also gives each thread that allocates its own malloc arena; limiting them (``MALLOC_ARENA_MAX=2``)
saved under 1 MB of the idle RSS with nine sinks (one worker thread each), so the router does not set it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import threading

log = logging.getLogger("eventrouter.router")

# a backlog at least this large, once drained, is worth a collection and a trim
RELEASE_AFTER = 5_000

_lock = threading.Lock()
_trim = None
try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _trim = _libc.malloc_trim  # glibc only (musl has none): then the collection alone
except (OSError, AttributeError):
    pass


def release_memory() -> None:
    """A full garbage collection, then hand the C heap's free pages back to the system."""
    with _lock:
        gc.collect()
        if _trim is not None:
            try:
                _trim(0)
            except Exception:  # pragma: no cover - a libc without a usable malloc_trim
                log.debug("malloc_trim failed", exc_info=True)
