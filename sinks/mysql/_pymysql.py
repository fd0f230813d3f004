"""PyMySQL without ``cryptography`` until a login needs it.

PyMySQL imports ``cryptography`` when it is imported, for one step: the RSA encryption of the password that
MySQL 8's ``caching_sha2_password`` (its first login of an account without TLS) and ``sha256_password`` ask
for. Loading it maps 7 MB of a Rust library into every router with a mysql sink, while MariaDB, TLS
connections, ``mysql_native_password`` and caching_sha2's fast path never use it. So PyMySQL is imported with
``cryptography`` hidden, and its RSA step imports it on first use (by running PyMySQL's auth module again,
which then finds it: the same code PyMySQL would have run).
"""

from __future__ import annotations

import importlib
import sys
import threading
from typing import Any

_lock = threading.Lock()


def import_pymysql_lazily() -> None:
    """Import PyMySQL with ``cryptography`` deferred (nothing if it is imported already, or missing)."""
    with _lock:
        if "pymysql" in sys.modules or "cryptography" in sys.modules:
            return  # too late to defer, or nothing to defer: PyMySQL finds it either way
        sys.modules["cryptography"] = None  # type: ignore[assignment]  # its import raises ImportError meanwhile
        try:
            from pymysql import _auth
        except ImportError:
            return  # not installed: the sink's require() says which extra installs it
        finally:
            if "cryptography" in sys.modules and sys.modules["cryptography"] is None:
                del sys.modules["cryptography"]
        if getattr(_auth, "_have_cryptography", True) is False and callable(getattr(_auth, "sha2_rsa_encrypt", None)):
            _auth.sha2_rsa_encrypt = _sha2_rsa_encrypt


def _sha2_rsa_encrypt(*args: Any) -> Any:
    """PyMySQL's sha2_rsa_encrypt, after its module is run again with ``cryptography`` importable."""
    from pymysql import _auth

    with _lock:
        if _auth.sha2_rsa_encrypt is _sha2_rsa_encrypt:
            importlib.reload(_auth)  # imports cryptography now (or says it is missing, as PyMySQL does)
    return _auth.sha2_rsa_encrypt(*args)
