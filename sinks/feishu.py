"""Feishu / Lark sink: Kubernetes events as messages of a group's custom bot (自定义机器人).

Talks to the custom-bot webhook ``POST https://open.feishu.cn/open-apis/bot/v2/hook/TOKEN`` (Lark:
``open.larksuite.com``). Each event is an interactive card (red header for Warning, blue for Normal; the
object, count, times, host and message), or a text message with ``msg_type=text``; digests are cards too.
The answer's ``code`` is always checked: 0 is delivered; 11232 ("frequency limited") pauses and retries;
19021 (signature or clock), 19024 (keyword missing), 19022 (IP not allowed), 19001 (no such token), 9499
(bad request) and every other code are permanent and logged with Feishu's ``msg`` (the token masked).

Credentials: in the group, Settings -> Bots -> Add Bot -> Custom Bot. Copy the webhook URL (its last path
segment is the token). With "Set signature verification" (签名校验), also copy the secret and pass it as
``secret=``: every request then carries ``timestamp`` and ``sign`` (base64 HMAC-SHA256 with the key
``"<timestamp>\\n<secret>"`` over empty content). With keyword security, put a keyword in a ``label=``.
Feed them through environment variables from a Kubernetes Secret.

Never a flood: at most ``rate_limit`` (20) messages a minute and 5 a second (Feishu allows 100 a minute and
5 a second per bot), the rest folded into digests; repeats of the same object+reason at most once per
``repeat_interval`` (30m).

URL forms::

    --sink=feishu:https://open.feishu.cn/open-apis/bot/v2/hook/TOKEN[?secret=S&label=L&...]
    --sink=feishu:https://open.larksuite.com/open-apis/bot/v2/hook/TOKEN        (Lark)
    --sink=feishu:?token=TOKEN[&domain=lark]                                     (host from domain)
    --sink=feishu:http://127.0.0.1:8080/open-apis/bot/v2/hook/TOKEN              (http only for loopback)

Example::

    --sink=feishu:?token=$FEISHU_TOKEN&secret=$FEISHU_SECRET&label=k8s-prod&at_all=true
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any, ClassVar

from eventrouter import (
    CHAT_OPTIONS,
    HTTP_OPTIONS,
    ChatSink,
    ErrorCodes,
    Event,
    Notice,
    Option,
    Options,
    Rate,
    SinkConfigError,
    SinkURL,
    chat_endpoint,
    json_size,
    truncate_bytes,
    use_rates,
)

HOSTS = {"feishu": "https://open.feishu.cn", "lark": "https://open.larksuite.com"}
HOOK_PATH = "/open-apis/bot/v2/hook/"
# Feishu rejects request bodies over 20 KB; a card's text stays well under that
MAX_CONTENT = 16000
PER_MINUTE, PER_SECOND = 100, 5

ERRORS = ErrorCodes(
    "feishu",
    code_key="code",
    message_key="msg",
    rate_limited=frozenset({11232}),
    too_fast_words=("frequency limited",),
    retryable=frozenset(),
    hints={
        19021: "signature: check secret= (the bot's signing secret) and this machine's clock",
        19024: "keyword security: add a keyword with label=",
        19022: "IP allow-list: allow this cluster's egress address",
        19001: "the webhook token does not exist (the bot was removed?)",
        9499: "the request was refused as malformed",
    },
)


def sign(secret: str, timestamp: int) -> str:
    """Feishu's signature: base64(HMAC-SHA256(key="<timestamp>\\n<secret>", message=b""))."""
    key = f"{timestamp}\n{secret}".encode()
    return base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()


_OWN_OPTIONS = (
    Option("token", str, secret=True, help="the webhook token (the last path segment of the webhook URL)"),
    Option("secret", str, secret=True, help="signing secret, when the bot uses signature verification"),
    Option("domain", str, default="feishu", choices=("feishu", "lark"),
           help="host when the URL gives none: feishu (open.feishu.cn) or lark (open.larksuite.com)"),
    Option("at_all", bool, default=False, help="@mention everyone in the group"),
    Option("at_user_ids", list, default=[], help="open_ids (ou_...) to @mention"),
    Option("msg_type", str, default="card", choices=("card", "text"),
           help="an interactive card per message, or plain text"),
)


class FeishuSink(ChatSink):
    """Feishu/Lark custom bot: interactive cards, signed, rate-limited, repeats held back, digests."""

    name = "feishu"
    options: ClassVar = (*_OWN_OPTIONS, *(o for o in CHAT_OPTIONS if o.name != "msg_type"), *HTTP_OPTIONS)
    errors = ERRORS
    max_content = MAX_CONTENT
    rate_limited_backoff = (60.0, 300.0)

    def __init__(self, url: SinkURL, opts: Options, **kwargs: Any) -> None:
        super().__init__(url, opts, **kwargs)
        self.endpoint = self._endpoint(url, opts)
        limit = opts["rate_limit"] or PER_MINUTE
        if limit > PER_MINUTE:
            raise SinkConfigError(self.name, f"Feishu accepts at most {PER_MINUTE} messages a minute per bot",
                                  "rate_limit")
        use_rates(self.flow, (Rate(max(limit, 2), 60.0), Rate(PER_SECOND, 1.0)))

    def _endpoint(self, url: SinkURL, opts: Options) -> str:
        token = opts["token"]
        if url.host:
            endpoint = chat_endpoint(self.name, url, "")
            path = url.path
            if not path.startswith(HOOK_PATH) or len(path) <= len(HOOK_PATH):
                raise SinkConfigError(self.name, f"expected the bot's webhook URL ...{HOOK_PATH}TOKEN")
            if token:
                raise SinkConfigError(self.name, "give the token either in the URL or as token=, not both", "token")
            self._token = path[len(HOOK_PATH):]
            return endpoint
        if url.path:
            raise SinkConfigError(self.name, f"expected an https:// URL or only a query, got {url.path!r}")
        if not token:
            raise SinkConfigError(self.name, "give the webhook URL or token=", "token")
        self._token = token.reveal()
        return f"{HOSTS[opts['domain']]}{HOOK_PATH}{self._token}"

    def secrets(self) -> list[Any]:
        return [*super().secrets(), self._token]

    @classmethod
    def redact(cls, url: SinkURL) -> str:
        text = super().redact(url)
        head, sep, rest = text.partition(HOOK_PATH)
        if not sep:
            return text
        _token, qmark, query = rest.partition("?")
        return f"{head}{HOOK_PATH}***{qmark}{query}"

    def measure(self, text: str) -> int:
        return json_size(text)

    # ---- messages ---------------------------------------------------------------------------------
    def post_event(self, event: Event, notice: Notice) -> None:
        if self.opts["msg_type"] == "text" or self.layout.template is not None:
            super().post_event(event, notice)
            return
        self._post(self.event_card(event, notice))

    def deliver(self, content: str, title: str) -> None:
        """A digest, or an event in text or through the user's template."""
        content = truncate_bytes(content, MAX_CONTENT, measure=json_size)
        if self.opts["msg_type"] == "text":
            self._post({"msg_type": "text", "content": {"text": content + self._mentions_text()}})
            return
        card = {"config": {"wide_screen_mode": True},
                "header": {"template": "orange", "title": {"tag": "plain_text", "content": title[:200]}},
                "elements": [{"tag": "div", "text": {"tag": "plain_text", "content": content}},
                             *self._mentions_card()]}
        self._post({"msg_type": "interactive", "card": card})

    def event_card(self, event: Event, notice: Notice) -> dict[str, Any]:
        layout = self.layout
        obj = event.involved_object
        where = f"{obj.namespace}/{obj.name}" if obj.namespace else obj.name
        fields = [(title, value or "-") for title, value in layout.card_facts(event, notice)]
        elements: list[dict[str, Any]] = []
        if layout.labels:
            elements.append({"tag": "div", "text": {"tag": "plain_text", "content": "\n".join(layout.labels)}})
        elements += [
            {"tag": "div", "fields": [{"is_short": True, "text": {"tag": "lark_md", "content": f"**{k}**\n{_md(v)}"}}
                                      for k, v in fields]},
            {"tag": "div", "text": {"tag": "plain_text",
                                    "content": truncate_bytes(event.message, MAX_CONTENT // 2, measure=json_size)}},
            *self._mentions_card(),
        ]
        origin = event.source_component or event.reporting_controller or "kubernetes"
        elements.append({"tag": "note", "elements": [{"tag": "plain_text", "content": origin}]})
        title = f"{event.type or 'Event'}: {event.reason} on {obj.kind} {where}".strip()
        header = {"template": "red" if event.type == "Warning" else "blue",
                  "title": {"tag": "plain_text", "content": title[:200]}}
        return {"msg_type": "interactive", "card": {"config": {"wide_screen_mode": True}, "header": header,
                                                     "elements": elements}}

    def _mentions_text(self) -> str:
        ids = (["all"] if self.opts["at_all"] else []) + list(self.opts["at_user_ids"])
        return "".join(f' <at user_id="{i}"></at>' for i in ids)

    def _mentions_card(self) -> list[dict[str, Any]]:
        ids = (["all"] if self.opts["at_all"] else []) + list(self.opts["at_user_ids"])
        if not ids:
            return []
        return [{"tag": "div", "text": {"tag": "lark_md", "content": " ".join(f"<at id={i}></at>" for i in ids)}}]

    def _post(self, body: dict[str, Any]) -> None:
        secret = self.opts["secret"]
        if secret:
            timestamp = int(self.wall())
            body = {"timestamp": str(timestamp), "sign": sign(secret.reveal(), timestamp), **body}
        self.post_json(self.endpoint, body)


def _md(text: str) -> str:
    """A value shown in lark_md: characters that would start markup are escaped."""
    return text.replace("\\", "\\\\").replace("*", "\\*").replace("_", "\\_").replace("<", "&lt;")
