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

The flow and the HTTP side are shared with the other chat sinks (``eventrouter/chat.py``,
``eventrouter/chat_transport.py``); this module is only DingTalk's protocol. Never a flood: at most
``rate_limit`` (20) messages a minute, the rest folded into digests; repeats of the same object+reason
at most once per ``repeat_interval`` (30m).

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
from typing import Any, ClassVar
from urllib.parse import quote_plus

from eventrouter import (
    CHAT_OPTIONS,
    HTTP_OPTIONS,
    ChatSink,
    ErrorCodes,
    Option,
    Options,
    SinkURL,
    chat_endpoint,
    json_size,
    truncate_bytes,
)

DEFAULT_URL = "https://oapi.dingtalk.com/robot/send"
# DingTalk rejects bodies over 20,000 bytes (460101); the content stays well under that
MAX_CONTENT = 18000

ERRORS = ErrorCodes(
    "dingtalk",
    rate_limited=frozenset({130101, 410100}),
    too_fast_words=("too fast",),
    retryable=frozenset({-1}),  # 系统繁忙 (busy)
    hints={
        310000: "robot security: check the keywords (add one with label=), the IP whitelist or the sign= secret",
        300005: "the access_token does not exist",
        40035: "access_token is missing",
        400013: "the group was dissolved",
        400102: "the robot was stopped",
        460101: "message too long",
    },
)


def sign(secret: str, timestamp_ms: int) -> str:
    """DingTalk 加签: base64(HMAC-SHA256(secret, "<ms>\\n<secret>")), URL-encoded for the query."""
    digest = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    return quote_plus(base64.b64encode(digest))


class DingTalkSink(ChatSink):
    """DingTalk group robot: signed, rate-limited, repeats held back, overflow in digests."""

    name = "dingtalk"
    options: ClassVar = (
        Option("access_token", str, secret=True, required=True, help="the robot webhook's access_token"),
        Option("sign", str, secret=True, help="signing secret (SEC...) when the robot uses 加签"),
        Option("cluster_id", str, default="", help="cluster id shown when --cluster-name is not set"),
        Option("region", str, default="", help="region shown with the cluster in every message (kube-eventer)"),
        Option("at_mobiles", list, default=[], help="phone numbers to @mention"),
        Option("at_user_ids", list, default=[], help="DingTalk user ids to @mention"),
        Option("at_all", bool, default=False, help="@mention everyone in the group"),
        *CHAT_OPTIONS,
        *HTTP_OPTIONS,
    )
    errors = ERRORS
    max_content = MAX_CONTENT
    # DingTalk blocks a robot for 10 minutes after it hit the limit: back off 1, 2, 4, 8, 10 min
    rate_limited_backoff = (60.0, 600.0)

    def __init__(self, url: SinkURL, opts: Options, **kwargs: Any) -> None:
        super().__init__(url, opts, cluster_id=opts["cluster_id"], **kwargs)
        self.layout.region = opts["region"]
        self.endpoint = chat_endpoint(self.name, url, DEFAULT_URL, default_path="/robot/send")

    def measure(self, text: str) -> int:
        return json_size(text)  # the limit is on the JSON body: escapes count

    def deliver(self, content: str, title: str) -> None:
        self.post_json(self.request_url(), self.message(content, title))

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
            timestamp = round(self.wall() * 1000)
            params += f"&timestamp={timestamp}&sign={sign(secret.reveal(), timestamp)}"
        return f"{self.endpoint}?{params}"
