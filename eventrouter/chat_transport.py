"""The HTTP side every chat sink shares: :class:`ChatSink`, :class:`ErrorCodes` and the endpoint checks.

A chat sink (DingTalk, WeCom, Slack, Teams, Feishu, ...) subclasses :class:`ChatSink` and keeps only
its protocol; the base class owns the rest, once:

- ``send`` / ``tick`` / ``close`` / ``open``: the :class:`~eventrouter.chat.ChatFlow` (repeats, rate,
  ranking, digests split to ``max_content``, a digest left at shutdown kept in ``state_dir`` and posted
  after the restart) wired to the sink's :meth:`ChatSink.deliver`; ``chat_stats()`` says what it did;
- the HTTP client (:meth:`ChatSink.request`: network errors become ``RetryableError``), the answer
  check (:meth:`ChatSink.check`: HTTP status, then the body's error code through the class's
  :class:`ErrorCodes`, with hints) and secret masking in every error;
- the back-off when the service keeps saying "too fast" (``rate_limited_backoff``).

A minimal sink (a Discord channel webhook; ``?wait=true`` makes Discord answer JSON)::

    class DiscordSink(ChatSink):
        name = "discord"
        options = (*CHAT_OPTIONS, *HTTP_OPTIONS)
        errors = ErrorCodes("discord", code_key="code", message_key="message")  # how refusals look
        max_content = 1900                       # bytes of one message; digests are split to fit

        def __init__(self, url: SinkURL, opts: Options, **kwargs: Any) -> None:
            super().__init__(url, opts, **kwargs)  # builds self.layout and self.flow; no I/O
            self.endpoint = chat_endpoint(self.name, url, "") + "?wait=true"

        def deliver(self, content: str, title: str) -> None:
            self.post_json(self.endpoint, {"content": content})

A service whose answers are not ``{code, message}`` JSON subclasses :class:`ErrorCodes` and overrides
``classify`` (see ``sinks/slack.py``).

Endpoints: :func:`chat_endpoint` turns the flag's URL into the endpoint (a default host, ``http://``
upgraded to ``https://`` except for a loopback test server) and :func:`api_base` checks a base URL
option the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx
import orjson

from eventrouter.chat import ChatFlow, ChatStats, Digest, DigestPart, Notice, RateLimitedError
from eventrouter.chat_layout import ChatLayout
from eventrouter.errors import PermanentError, RetryableError, SinkConfigError, SinkError
from eventrouter.event import Event
from eventrouter.http import http_client, raise_for_status, retry_after_seconds, transport_error
from eventrouter.options import Options, Secret
from eventrouter.sink import Sink
from eventrouter.sinkurl import SinkURL, redact_text

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


# ---- endpoints ------------------------------------------------------------------------------------
def chat_endpoint(sink: str, url: SinkURL, default: str, *, default_path: str = "") -> str:
    """The endpoint the flag names. No host: ``default`` (a path without a host is an error). A chat
    service is always reached over https: ``http://`` is upgraded, except for a loopback host (a local
    test server or relay). ``default_path`` replaces an empty path."""
    if not url.host:
        if url.path:
            raise SinkConfigError(sink, f"expected an https:// URL or only a query, got {url.path!r}")
        return default
    if url.scheme not in ("http", "https"):
        raise SinkConfigError(sink, f"expected an https:// URL, got {url.scheme or 'no'} scheme")
    scheme = "http" if url.scheme == "http" and url.hostname in LOOPBACK else "https"
    return f"{scheme}://{url.host}{url.path or default_path}"


def api_base(sink: str, base: str, option: str = "api_base") -> str:
    """A base URL option (``https://host[/prefix]``; plain http only for a loopback host), without a
    trailing slash. Raises SinkConfigError naming ``option``."""
    url = SinkURL.parse(f"{option}:{base}")
    if url.scheme not in ("http", "https") or not url.host:
        raise SinkConfigError(sink, f"{base!r} is not an https:// URL", option)
    if url.scheme == "http" and url.hostname not in LOOPBACK:
        raise SinkConfigError(sink, "use https:// (plain http only for a loopback test server)", option)
    return base.rstrip("/")


# ---- answers --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ErrorCodes:
    """How a chat API that answers JSON reports refusals, often with HTTP 200: ``{"errcode": N, "errmsg": ..}``.

    :meth:`classify` returns the decoded body when the service accepted the call and raises otherwise:
    :class:`RateLimitedError` for ``rate_limited`` codes (or an ``errmsg`` containing one of
    ``too_fast_words``), :class:`RetryableError` for ``retryable`` codes, a body that is not JSON, HTTP
    429 or 5xx; :class:`PermanentError` for every other code or HTTP status, with ``hints[code]`` appended.
    """

    service: str  # "dingtalk": named in every error
    code_key: str = "errcode"
    message_key: str = "errmsg"
    rate_limited: frozenset[int] = frozenset()
    retryable: frozenset[int] = frozenset({-1})
    hints: Mapping[int, str] = field(default_factory=dict)
    too_fast_words: tuple[str, ...] = ()
    rate_limited_wait: float = 60.0

    def classify(self, response: httpx.Response) -> dict[str, Any]:
        status = response.status_code
        if status == 429:
            wait = retry_after_seconds(response.headers.get("Retry-After"))
            raise RateLimitedError(f"{self.service} answered HTTP 429", retry_after=wait or self.rate_limited_wait)
        raise_for_status(response, self.service)
        try:
            data = orjson.loads(response.content)
            code = int(data.get(self.code_key, 0))
            message = str(data.get(self.message_key, ""))
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            raise RetryableError(f"{self.service} answered HTTP {status} with a body that is not JSON: "
                                 f"{response.content[:200]!r}") from None
        if code == 0:
            return data  # type: ignore[no-any-return]
        detail = f"{self.service} answered {self.code_key} {code}: {message}"
        lowered = message.lower()
        if code in self.rate_limited or any(word in lowered for word in self.too_fast_words):
            raise RateLimitedError(detail, retry_after=self.rate_limited_wait)
        if code in self.retryable:
            raise RetryableError(detail)
        hint = self.hints.get(code)
        raise PermanentError(detail + (f" ({hint})" if hint else ""))


# ---- the base class -------------------------------------------------------------------------------
class ChatSink(Sink):
    """Base class of chat sinks: the shared flow and HTTP transport; a subclass adds its protocol.

    Set on the subclass: ``name``, ``options`` (usually ``(*own, *CHAT_OPTIONS, *HTTP_OPTIONS)``),
    ``errors`` (an :class:`ErrorCodes`, used by :meth:`check`), ``max_content`` (bytes of one message's
    content, as :meth:`measure` counts them; digests are split to fit), optionally ``markdown_line_break``
    and ``rate_limited_backoff``. Implement :meth:`deliver`; override :meth:`open` (call ``super()``),
    :meth:`secrets` or :meth:`check` when the protocol needs it.

    Attributes for the subclass: ``self.layout`` (:class:`ChatLayout`), ``self.flow`` (:class:`ChatFlow`),
    ``self.client()`` (the ``httpx.Client``), ``self.clock`` (monotonic) and ``self.wall`` (epoch seconds).
    """

    default_level: ClassVar[str | None] = "Warning"
    delivery_defaults: ClassVar[Mapping[str, Any]] = {"batch_size": 100, "flush_interval": 1.0}
    errors: ClassVar[ErrorCodes]
    max_content: int = 4000  # a class default; a sink whose limit depends on its options sets it in __init__
    markdown_line_break: ClassVar[str] = "\n\n"
    # a service that keeps answering "too fast" (someone else posts to the same robot): wait the first
    # value, doubling up to the second, until a message goes through
    rate_limited_backoff: ClassVar[tuple[float, float]] = (60.0, 600.0)

    def __init__(self, url: SinkURL, opts: Options, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, cluster_id: str = "") -> None:
        super().__init__(url, opts)
        self.clock = clock
        self.wall = wall
        self.layout = ChatLayout(self.name, opts, line_break=self.markdown_line_break, cluster_id=cluster_id)
        self.flow = ChatFlow(rate_limit=opts["rate_limit"], repeat_interval=float(opts["repeat_interval"]),
                             clock=clock, sink=self.name, split=self.split_digest)
        self._client: httpx.Client | None = None
        self._throttled = 0  # "too fast" answers in a row
        self._closed = False
        http_client(self.name, opts).close()  # TLS files are checked now, not at the first alert

    # ---- what a subclass implements ---------------------------------------------------------------
    def deliver(self, content: str, title: str) -> None:
        """Post one message (``title``: a one-line summary for services that show one). Raise a SinkError
        when it was not accepted; use :meth:`post_json` or :meth:`request` + :meth:`check`."""
        raise NotImplementedError

    def measure(self, text: str) -> int:
        """Size of a message content as the service limits it (``max_content``): UTF-8 bytes by default."""
        return len(text.encode())

    def secrets(self) -> list[Any]:
        """Values masked in every error: by default the secret options; add tokens obtained at run time."""
        return [value for value in self.opts.values() if isinstance(value, Secret)]

    # ---- the Sink API, once for every chat sink ---------------------------------------------------
    def send(self, batch: Sequence[Event]) -> None:
        self.flow.send(batch, self.post_event)

    def tick(self) -> None:
        self.flow.tick(self.post_event, self.post_digest)

    def open(self) -> None:
        """Take back the digest and rate window kept at the last shutdown (in ``state_dir``). A subclass
        that checks credentials here calls ``super().open()`` first."""
        if self.state_dir is not None:
            self.flow.restore(self.state_dir, self.wall)

    def close(self) -> None:
        """Post what the rate allows of the pending digest, keep the rest in ``state_dir`` (logged in
        full without one), release the client. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self.flow.close(self.post_event, self.post_digest, self.state_dir, self.wall)
        finally:
            if self._client is not None:
                self._client.close()
                self._client = None

    def post_event(self, event: Event, notice: Notice) -> None:
        self.deliver(self.layout.event(event, notice), self.layout.title(event))

    def post_digest(self, part: DigestPart) -> None:
        self.deliver(part.text, part.title)

    def split_digest(self, digest: Digest) -> list[DigestPart]:
        """The digest as messages of at most ``max_content`` each (see :meth:`ChatLayout.digest_parts`)."""
        return self.layout.digest_parts(digest, self.flow.rate_limit, self.max_content, self.measure)

    def chat_stats(self) -> ChatStats:
        """Messages posted, events posted alone / folded / held back as repeats (for logs and /metrics)."""
        return self.flow.stats

    # ---- HTTP -------------------------------------------------------------------------------------
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = http_client(self.name, self.opts)
        return self._client

    def request(self, method: str, url: str, body: Any = None, headers: Mapping[str, str] | None = None,
                ) -> httpx.Response:
        """One HTTP call (``body`` sent as JSON unless it is bytes); a network error raises a masked
        RetryableError. The answer is not checked: see :meth:`check`."""
        kwargs: dict[str, Any] = {}
        if body is not None:
            kwargs["content"] = body if isinstance(body, bytes) else orjson.dumps(body)
            kwargs["headers"] = {"Content-Type": "application/json;charset=utf-8", **(headers or {})}
        elif headers:
            kwargs["headers"] = dict(headers)
        try:
            return self.client().request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise self.masked(transport_error(exc, self.errors.service)) from None

    def check(self, response: httpx.Response) -> dict[str, Any]:
        """The decoded answer if the service accepted the call; a masked SinkError otherwise. Repeated
        "too fast" answers wait longer each time (``rate_limited_backoff``); a success resets that."""
        try:
            answer = self.errors.classify(response)
        except RateLimitedError as exc:
            self._throttled += 1
            first, longest = self.rate_limited_backoff
            exc.retry_after = max(exc.retry_after or 0.0, min(first * 2 ** (self._throttled - 1), longest))
            raise self.masked(exc) from None
        except SinkError as exc:
            raise self.masked(exc) from None
        self._throttled = 0
        return answer

    def post_json(self, url: str, body: Any, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        """POST ``body`` as JSON and :meth:`check` the answer."""
        return self.check(self.request("POST", url, body, headers))

    def masked(self, exc: SinkError) -> SinkError:
        """``exc`` with every secret (:meth:`secrets`) masked in its text."""
        exc.args = (redact_text(str(exc), self.secrets()),)
        return exc


__all__ = ["LOOPBACK", "ChatSink", "ErrorCodes", "api_base", "chat_endpoint"]
