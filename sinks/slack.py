"""Slack sink: Kubernetes events as Slack messages (Block Kit), through an incoming webhook or a bot token.

Incoming webhook (the usual way): ``POST https://hooks.slack.com/services/T.../B.../...`` answers ``200 ok``
or a status with a plain-text error. Bot token: ``POST https://slack.com/api/chat.postMessage`` answers
``{"ok": true, "ts": ...}`` or ``{"ok": false, "error": ...}`` with HTTP 200; with a bot token a reminder of
an ongoing problem is a reply in the thread of its first message. 429 (``Retry-After`` honoured),
``ratelimited`` and 5xx are retried; ``invalid_payload``, ``no_text``, ``invalid_blocks``,
``channel_not_found``, ``not_in_channel``, ``invalid_auth``, ``no_service``, ``channel_is_archived``,
``action_prohibited`` and the other errors are permanent and logged with a hint (URL and token masked).

Credentials: an incoming webhook comes from a Slack app (api.slack.com/apps -> Incoming Webhooks -> Add New
Webhook to Workspace); its URL is the secret. For bot mode, give the app the ``chat:write`` scope, install
it, invite the bot to the channel and use its ``xoxb-`` token with ``channel=`` (an ID such as C0123ABC).
Feed both through environment variables from a Kubernetes Secret.

Never a flood: at most ``rate_limit`` (20) messages a minute and one a second (Slack's limit per webhook and
per channel), the rest folded into digests; repeats of the same object+reason at most once per
``repeat_interval`` (30m).

URL forms::

    --sink=slack:https://hooks.slack.com/services/T000/B000/XXXX[?label=L&mention=here&...]
    --sink=slack:?token=xoxb-...&channel=C0123ABC                   (bot token: chat.postMessage, threads)
    --sink=slack:http://127.0.0.1:8080/services/T/B/X                (http only for a loopback host)

Example::

    --sink=slack:$SLACK_WEBHOOK_URL?label=prod&mention=S0ONCALL
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, ClassVar

import httpx
import orjson

from eventrouter import (
    CHAT_OPTIONS,
    HTTP_OPTIONS,
    ChatSink,
    ErrorCodes,
    Event,
    Notice,
    Option,
    Options,
    PermanentError,
    Rate,
    RateLimitedError,
    RetryableError,
    SinkConfigError,
    SinkURL,
    chat_endpoint,
    truncate_bytes,
    use_rates,
)

API_URL = "https://slack.com/api/chat.postMessage"
SECTION_LIMIT = 3000  # characters of one section's text
HEADER_LIMIT = 150
PER_SECOND = 1
MAX_THREADS = 10000

HINTS = {
    "invalid_payload": "the message is not valid JSON",
    "no_text": "the message has no text",
    "invalid_blocks": "a block was refused (too long?)",
    "no_service": "the webhook URL is wrong or was revoked",
    "invalid_token": "the webhook URL is wrong or was revoked",
    "no_team": "the webhook URL is wrong or was revoked",
    "channel_not_found": "the channel does not exist, or the bot cannot see it: use its ID (C0123ABC)",
    "channel_is_archived": "the channel was archived",
    "is_archived": "the channel was archived",
    "not_in_channel": "invite the bot to the channel (/invite @bot)",
    "action_prohibited": "a workspace admin restricted posting to this channel",
    "posting_to_general_channel_denied": "only admins may post to #general",
    "invalid_auth": "the bot token is not valid",
    "not_authed": "no bot token was sent",
    "account_inactive": "the bot token was revoked",
    "token_revoked": "the bot token was revoked",
    "missing_scope": "the app needs the chat:write scope",
    "msg_too_long": "the message is too long",
}
RETRYABLE = frozenset({"internal_error", "fatal_error", "service_unavailable", "request_timeout", "rollup_error"})
RATE_LIMITED = frozenset({"ratelimited", "rate_limited"})


class SlackAnswers(ErrorCodes):
    """Slack's answers: a webhook's plain-text error with a status, or the Web API's ``{"ok": false}``."""

    def classify(self, response: httpx.Response) -> dict[str, Any]:
        status = response.status_code
        text = response.text.strip()[:300]
        try:
            data = orjson.loads(response.content) if response.content[:1] == b"{" else None
        except orjson.JSONDecodeError:
            data = None
        error = str(data.get("error", "")) if isinstance(data, dict) else text
        if status == 429 or error in RATE_LIMITED:
            wait = _retry_after(response)
            raise RateLimitedError(f"slack answered HTTP {status}: {error or 'too many requests'}", retry_after=wait)
        if status >= 500 or error in RETRYABLE:
            raise RetryableError(f"slack answered HTTP {status}: {error}")
        if status == 200 and (data is None or data.get("ok") is True):
            return data or {}
        hint = HINTS.get(error)
        raise PermanentError(f"slack answered HTTP {status}: {error}" + (f" ({hint})" if hint else ""))


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(1.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return 30.0


def escape(text: str) -> str:
    """Slack reads &, < and > as markup in every text field."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_OWN_OPTIONS = (
    Option("token", str, secret=True, help="bot token (xoxb-...): post with chat.postMessage instead of a webhook"),
    Option("channel", str, help="with token=: the channel ID to post to (C0123ABC)"),
    Option("threads", bool, default=True, help="with token=: a reminder is a reply in its problem's thread"),
    Option("mention", list, default=[],
           help="who is notified: here, channel, a user ID (U...) or a user group ID (S...)"),
    Option("msg_type", str, default="blocks", choices=("blocks", "text"),
           help="Block Kit messages, or plain text"),
)


class SlackSink(ChatSink):
    """Slack: Block Kit messages by incoming webhook or bot token; one a second, repeats held back, digests."""

    name = "slack"
    options: ClassVar = (*_OWN_OPTIONS, *(o for o in CHAT_OPTIONS if o.name != "msg_type"), *HTTP_OPTIONS)
    errors = SlackAnswers("slack")
    max_content = SECTION_LIMIT * 10
    rate_limited_backoff = (1.0, 60.0)

    def __init__(self, url: SinkURL, opts: Options, **kwargs: Any) -> None:
        super().__init__(url, opts, **kwargs)
        self.bot = opts["token"] is not None
        if self.bot:
            if not opts["channel"]:
                raise SinkConfigError(self.name, "a bot token needs channel= (the channel ID, C0123ABC)", "channel")
            self.endpoint = chat_endpoint(self.name, url, API_URL, default_path="/api/chat.postMessage")
        else:
            if not url.host:
                raise SinkConfigError(self.name, "give the incoming webhook URL (slack:https://hooks.slack.com/"
                                      "services/...) or token= and channel=")
            for key in ("channel", "threads"):
                if key in opts.given:
                    raise SinkConfigError(self.name, f"{key} applies to bot mode (token=); an incoming webhook "
                                          "posts to the channel it was made for", key)
            self.endpoint = chat_endpoint(self.name, url, "")
        limit = max(opts["rate_limit"] or 60, 2)
        use_rates(self.flow, (Rate(limit, 60.0), Rate(PER_SECOND, 1.0)))
        self._threads: OrderedDict[tuple[str, str, str, str], str] = OrderedDict()

    def secrets(self) -> list[Any]:
        return [*super().secrets(), *([] if self.bot else [self.url.path])]

    @classmethod
    def redact(cls, url: SinkURL) -> str:
        text = super().redact(url)
        head, sep, rest = text.partition("/services/")
        if not sep:
            return text
        _path, qmark, query = rest.partition("?")
        return f"{head}/services/***{qmark}{query}"

    # ---- messages ---------------------------------------------------------------------------------
    def post_event(self, event: Event, notice: Notice) -> None:
        if self.opts["msg_type"] == "text" or self.layout.template is not None:
            super().post_event(event, notice)
            return
        self._post(self.event_message(event, notice), event, notice)

    def deliver(self, content: str, title: str) -> None:
        """A digest, or an event in text or through the user's template."""
        self._post(self.text_message(content, title), None, None)

    def text_message(self, content: str, title: str) -> dict[str, Any]:
        mentions = self._mentions()
        if self.opts["msg_type"] == "text":
            return {"text": truncate_bytes(escape(content), 39000) + (f"\n{mentions}" if mentions else "")}
        text = escape(content)
        chunks = [text[i:i + SECTION_LIMIT] for i in range(0, min(len(text), SECTION_LIMIT * 45), SECTION_LIMIT)]
        blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": chunk}}
                                        for chunk in chunks or [" "]]
        if mentions:
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": mentions}})
        return {"text": escape(title)[:300], "blocks": blocks}

    def event_message(self, event: Event, notice: Notice) -> dict[str, Any]:
        layout = self.layout
        obj = event.involved_object
        where = f"{obj.namespace}/{obj.name}" if obj.namespace else obj.name
        icon = ":warning:" if event.type == "Warning" else ":information_source:"
        count = str(event.count)
        if notice.reminder:
            held = f"; {notice.suppressed} updates held back" if notice.suppressed else ""
            count += f" (reminder: still happening{held})"
        fields = [("Type", f"{icon} {event.type}"), ("Object", f"{obj.kind} `{escape(where)}`"), ("Count", count),
                  ("Last seen", layout.time(event.last_timestamp))]
        if layout.owner(event):
            fields.insert(2, ("Owner", escape(layout.owner(event))))
        if event.count > 1:
            fields.append(("First seen", layout.time(event.first_timestamp)))
        if event.source_host:
            fields.append(("Host", escape(event.source_host)))
        if layout.cluster(event):
            fields.append(("Cluster", escape(layout.cluster(event))))
        summary = f"{event.reason} on {obj.kind} {where}"
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": summary[:HEADER_LIMIT], "emoji": True}},
            {"type": "section", "fields": [{"type": "mrkdwn", "text": f"*{k}:*\n{v}"} for k, v in fields]},
            {"type": "section", "text": {"type": "mrkdwn", "text": escape(event.message)[:SECTION_LIMIT] or " "}},
        ]
        context = [escape(line) for line in layout.labels]
        context.append(escape(event.source_component or event.reporting_controller or "kubernetes"))
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": " | ".join(context)[:3000]}]})
        mentions = self._mentions()
        if mentions:
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": mentions}})
        text = f"{icon} {event.type}: {escape(summary)}" + (" (reminder)" if notice.reminder else "")
        return {"text": text[:300], "blocks": blocks}

    def _mentions(self) -> str:
        out = []
        for who in self.opts["mention"]:
            if who in ("here", "channel", "everyone"):
                out.append(f"<!{who}>")
            elif who.startswith("S"):
                out.append(f"<!subteam^{who}>")
            else:
                out.append(f"<@{who}>")
        return " ".join(out)

    # ---- transport --------------------------------------------------------------------------------
    def _post(self, message: dict[str, Any], event: Event | None, notice: Notice | None) -> None:
        if not self.bot:
            self.post_json(self.endpoint, message)
            return
        body: dict[str, Any] = {"channel": self.opts["channel"], **message}
        key = _thread_key(event) if event is not None else None
        if key is not None and notice is not None and notice.reminder and self.opts["threads"]:
            parent = self._threads.get(key)
            if parent is not None:
                body["thread_ts"] = parent
        headers = {"Authorization": f"Bearer {self.opts['token'].reveal()}"}
        answer = self.post_json(self.endpoint, body, headers)
        if key is not None and "thread_ts" not in body and answer.get("ts"):
            self._threads[key] = str(answer["ts"])
            self._threads.move_to_end(key)
            while len(self._threads) > MAX_THREADS:
                self._threads.popitem(last=False)


def _thread_key(event: Event) -> tuple[str, str, str, str]:
    obj = event.involved_object
    return (obj.kind, obj.namespace or event.namespace, obj.name, event.reason)
