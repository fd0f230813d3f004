"""DingTalk sink: Kubernetes events as messages of a DingTalk group robot (自定义机器人).

Talks to the custom-robot webhook ``POST https://oapi.dingtalk.com/robot/send?access_token=T``. Every
answer is HTTP 200, so the ``errcode`` of the body is always checked: 0 is delivered; 130101/410100
("send too fast") and -1 (busy) are retried; 310000 (keyword, IP whitelist, signature), 300005 (no such
token), 400013 (group dissolved), 400102 (robot stopped) and every other code are permanent and logged
with DingTalk's ``errmsg`` (the token masked).

Credentials: in the group, Settings → Bots → Add Robot → Custom. Copy the webhook's ``access_token``;
if you choose "加签" (signing), also copy the secret that starts with ``SEC`` and pass it as ``sign=``
(every request then carries ``timestamp`` and an HMAC-SHA256 ``sign``). With "keywords" security, put
a keyword in a ``label=`` so that every message, digests included, contains it. Feed both through
environment variables from a Kubernetes Secret: ``access_token=$DINGTALK_TOKEN&sign=$DINGTALK_SECRET``.

Never a flood (see ``eventrouter/chat.py``): at most ``rate_limit`` (20) messages a minute, the rest
folded into a digest; repeats of the same object+reason at most once per ``repeat_interval`` (30m).

URL forms::

    --sink=dingtalk:https://oapi.dingtalk.com/robot/send?access_token=T[&sign=SEC..&level=Warning
                    &label=L&msg_type=text|markdown&cluster_id=&region=&namespaces=&kinds=]   (kube-eventer)
    --sink=dingtalk:?access_token=T                      (host and path default to oapi.dingtalk.com/robot/send)
    --sink=dingtalk:http://127.0.0.1:8080/robot/send?access_token=T   (http only for a loopback host)

Example::

    --sink=dingtalk:https://oapi.dingtalk.com/robot/send?access_token=$DINGTALK_TOKEN&sign=$DINGTALK_SECRET&label=k8s-prod&msg_type=markdown&at_mobiles=13800000000
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar
from urllib.parse import quote_plus

import httpx
import orjson

from eventrouter import (
    CHAT_OPTIONS,
    HTTP_OPTIONS,
    ChatFlow,
    ChatLayout,
    Digest,
    Event,
    Notice,
    Option,
    Options,
    PermanentError,
    RateLimitedError,
    RetryableError,
    Sink,
    SinkConfigError,
    SinkURL,
    http_client,
    json_size,
    raise_for_status,
    redact_text,
    transport_error,
    truncate_bytes,
)

DEFAULT_URL = "https://oapi.dingtalk.com/robot/send"
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
# DingTalk rejects bodies over 20,000 bytes (460101); the content stays well under that
MAX_CONTENT = 18000
RATE_LIMITED = frozenset({130101, 410100})
RETRYABLE = frozenset({-1})


def _classify(status: int, body: bytes) -> None:
    """Return if DingTalk accepted the message; raise RetryableError or PermanentError otherwise."""
    if status != 200:
        raise_for_status(httpx.Response(status, content=body), "dingtalk")
    try:
        data = orjson.loads(body)
        code = int(data.get("errcode", 0))
        errmsg = str(data.get("errmsg", ""))
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        raise RetryableError(f"dingtalk answered HTTP {status} with a body that is not JSON: {body[:200]!r}") from None
    if code == 0:
        return
    detail = f"dingtalk answered errcode {code}: {errmsg}"
    if code in RATE_LIMITED or "too fast" in errmsg.lower():
        raise RateLimitedError(detail, retry_after=60.0)
    if code in RETRYABLE:
        raise RetryableError(detail)
    hint = _HINTS.get(code)
    raise PermanentError(detail + (f" ({hint})" if hint else ""))


_HINTS = {
    310000: "robot security: check the keywords (add one with label=), the IP whitelist or the sign= secret",
    300005: "the access_token does not exist",
    40035: "access_token is missing",
    400013: "the group was dissolved",
    400102: "the robot was stopped",
    460101: "message too long",
}


def sign(secret: str, timestamp_ms: int) -> str:
    """DingTalk 加签: base64(HMAC-SHA256(secret, "<ms>\\n<secret>")), URL-encoded for the query."""
    digest = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    return quote_plus(base64.b64encode(digest))


class DingTalkSink(Sink):
    """DingTalk group robot: signed, rate-limited, repeats held back, overflow in digests."""

    name = "dingtalk"
    default_level = "Warning"
    options: ClassVar = (
        Option("access_token", str, secret=True, required=True, help="the robot webhook's access_token"),
        Option("sign", str, secret=True, help="signing secret (SEC...) when the robot uses 加签"),
        Option("cluster_id", str, default="", help="cluster id shown when --cluster-name is not set"),
        Option("region", str, default="", help="kube-eventer option, accepted (used for Aliyun console links)"),
        Option("at_mobiles", list, default=[], help="phone numbers to @mention"),
        Option("at_user_ids", list, default=[], help="DingTalk user ids to @mention"),
        Option("at_all", bool, default=False, help="@mention everyone in the group"),
        *CHAT_OPTIONS,
        *HTTP_OPTIONS,
    )
    delivery_defaults: ClassVar = {"batch_size": 100, "flush_interval": 1.0}

    def __init__(self, url: SinkURL, opts: Options, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        super().__init__(url, opts)
        self.endpoint = self._endpoint(url)
        self.layout = ChatLayout(self.name, opts, cluster_id=opts["cluster_id"])
        self.flow = ChatFlow(rate_limit=opts["rate_limit"], repeat_interval=float(opts["repeat_interval"]),
                             clock=clock, sink=self.name)
        self._wall = wall
        self._secrets = [opts["access_token"], opts["sign"]]
        self._throttled = 0  # rate-limit answers in a row
        self._client: httpx.Client | None = None
        http_client(self.name, opts).close()  # TLS files are checked now, not at the first alert

    def _endpoint(self, url: SinkURL) -> str:
        if not url.host:
            if url.path:
                raise SinkConfigError(self.name, f"expected an https:// URL or only a query, got {url.path!r}")
            return DEFAULT_URL
        if url.scheme not in ("http", "https"):
            raise SinkConfigError(self.name, f"expected an https:// URL, got {url.scheme or 'no'} scheme")
        # kube-eventer always uses https; plain http is honoured only for a loopback test server
        scheme = "http" if url.scheme == "http" and url.hostname in LOOPBACK else "https"
        return f"{scheme}://{url.host}{url.path or '/robot/send'}"

    # ---- delivery ---------------------------------------------------------------------------
    def send(self, batch: Sequence[Event]) -> None:
        self.flow.send(batch, self._post_event)

    def tick(self) -> None:
        self.flow.tick(self._post_event, self._post_digest)

    def close(self) -> None:
        self.flow.close(self._post_event, self._post_digest)
        if self._client is not None:
            self._client.close()
            self._client = None

    def _post_event(self, event: Event, notice: Notice) -> None:
        self._post(self.layout.event(event, notice), self.layout.title(event))

    def _post_digest(self, digest: Digest) -> None:
        self._post(self.layout.digest(digest, self.flow.rate_limit), digest.headline(2))

    def message(self, content: str, title: str) -> dict[str, Any]:
        """The request body: text or markdown, @mentions appended to the content as DingTalk requires."""
        opts = self.opts
        mentions = [*opts["at_mobiles"], *opts["at_user_ids"]]
        tail = ("\n" + " ".join(f"@{m}" for m in mentions)) if mentions else ""
        content = truncate_bytes(content, MAX_CONTENT - json_size(tail), measure=json_size) + tail
        at = {"atMobiles": opts["at_mobiles"], "atUserIds": opts["at_user_ids"], "isAtAll": opts["at_all"]}
        if self.layout.msg_type == "markdown":
            return {"msgtype": "markdown", "markdown": {"title": title, "text": content}, "at": at}
        return {"msgtype": "text", "text": {"content": content}, "at": at}

    def request_url(self) -> str:
        params = f"access_token={quote_plus(self.opts['access_token'].reveal())}"
        secret = self.opts["sign"]
        if secret:
            timestamp = round(self._wall() * 1000)
            params += f"&timestamp={timestamp}&sign={sign(secret.reveal(), timestamp)}"
        return f"{self.endpoint}?{params}"

    def _post(self, content: str, title: str) -> None:
        if self._client is None:
            self._client = http_client(self.name, self.opts)
        body = orjson.dumps(self.message(content, title))
        try:
            response = self._client.post(self.request_url(), content=body,
                                         headers={"Content-Type": "application/json;charset=utf-8"})
        except httpx.HTTPError as exc:
            raise self._masked(transport_error(exc, "dingtalk")) from None
        try:
            _classify(response.status_code, response.content)
        except RateLimitedError as exc:
            # DingTalk blocks a robot for 10 minutes after it hit the limit: back off 1, 2, 4, 8, 10 min
            self._throttled += 1
            exc.retry_after = min(60.0 * 2 ** (self._throttled - 1), 600.0)
            raise self._masked(exc) from None
        except (RetryableError, PermanentError) as exc:
            raise self._masked(exc) from None
        self._throttled = 0

    def _masked(self, exc: RetryableError | PermanentError) -> RetryableError | PermanentError:
        exc.args = (redact_text(str(exc), self._secrets),)
        return exc
