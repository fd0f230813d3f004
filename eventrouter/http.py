"""Shared HTTP pieces for sinks that talk HTTP: option group, client factory, status classification."""

from __future__ import annotations

import email.utils
import ssl
import threading
import time
from collections.abc import Mapping
from typing import Any

import httpx

from eventrouter.errors import PermanentError, RetryableError, SinkConfigError
from eventrouter.options import Duration, Option
from eventrouter.sinkurl import is_sensitive_name, redact_text

TLS_OPTIONS: tuple[Option, ...] = (
    Option("ca_file", str, help="PEM file of the CA that signed the server certificate"),
    Option("cert_file", str, help="client certificate (PEM) for mutual TLS"),
    Option("key_file", str, help="client private key (PEM) for mutual TLS"),
    Option("insecure_skip_verify", bool, default=False, help="do not verify the server certificate"),
)

HTTP_OPTIONS: tuple[Option, ...] = (
    Option("timeout", Duration, default=Duration(10.0), min=0.001, help="timeout of one request"),
    *TLS_OPTIONS,
)

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


_default_context: ssl.SSLContext | None = None
_default_context_lock = threading.Lock()


def default_ssl_context() -> ssl.SSLContext:
    """The verifying TLS context of every HTTP client that gives no TLS option, built on first use.

    httpx would build one per client, each loading the whole CA bundle (about 1 MB of RSS apiece with
    OpenSSL 3); one shared context trusts exactly the same CAs (certifi's, or SSL_CERT_FILE/SSL_CERT_DIR as
    httpx reads them) and is safe to use from several threads.
    """
    global _default_context
    with _default_context_lock:
        if _default_context is None:
            _default_context = httpx.create_ssl_context()
        return _default_context


def http_client(sink: str, opts: Mapping[str, Any], **kwargs: Any) -> httpx.Client:
    """An httpx.Client with the TLS and timeout options applied (no I/O until the first request)."""
    verify: Any = None
    if opts.get("insecure_skip_verify"):
        verify = False
    elif opts.get("ca_file") or opts.get("cert_file"):
        try:
            context = ssl.create_default_context(cafile=opts.get("ca_file") or None)
            if opts.get("cert_file"):
                context.load_cert_chain(opts["cert_file"], opts.get("key_file") or None)
        except (OSError, ssl.SSLError) as exc:
            option = "cert_file" if opts.get("cert_file") and "cert" in str(exc).lower() else "ca_file"
            raise SinkConfigError(sink, f"cannot load the TLS files: {exc}", option) from None
        verify = context
    else:
        verify = default_ssl_context()
    timeout = float(opts.get("timeout") or 10.0)
    return httpx.Client(verify=verify, timeout=httpx.Timeout(timeout), **kwargs)


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Parse a Retry-After header: delta seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def raise_for_status(response: httpx.Response, what: str = "server") -> None:
    """2xx returns; 408/425/429/5xx raise RetryableError (Retry-After honoured); other codes PermanentError."""
    status = response.status_code
    if 200 <= status < 300:
        return
    body = response.text[:300].strip() if response.content else ""
    if body:
        # a receiver may echo the request (its Authorization header) in the error body
        body = redact_text(body, request_credentials(response))
    detail = f"{what} answered HTTP {status}" + (f": {body}" if body else "")
    if status in RETRYABLE_STATUS or status >= 500:
        raise RetryableError(detail, retry_after_seconds(response.headers.get("Retry-After")))
    raise PermanentError(detail)


def request_credentials(response: httpx.Response) -> list[str]:
    """The credentials the request carried in its headers (Authorization, X-Api-Key, Cookie, ...), in
    every form a receiver may echo them: whole, without the scheme, and decoded from Basic's base64."""
    import base64
    import binascii

    try:
        headers = response.request.headers
    except RuntimeError:  # a Response built without a request (tests)
        return []
    found: list[str] = []
    for name, value in headers.items():
        if not is_sensitive_name(name) or not value:
            continue
        found.append(value)
        scheme, _, credential = value.partition(" ")
        if credential:
            found.append(credential)
            if scheme.lower() == "basic":
                try:
                    user_password = base64.b64decode(credential).decode("utf-8", "replace")
                except (binascii.Error, ValueError):
                    continue
                found.append(user_password)
                found.append(user_password.partition(":")[2])
    return found


def transport_error(exc: httpx.HTTPError, what: str = "server") -> RetryableError:
    """A network failure (refused, reset, timeout) as a RetryableError; the URL is left out."""
    return RetryableError(f"cannot reach the {what}: {type(exc).__name__}: {exc}")
