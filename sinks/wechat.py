"""WeChat sink: Kubernetes events as WeCom (企业微信) messages, by application or by group robot.

Two ways to reach people, chosen by the URL:

- **Application message** (kube-eventer's ``wechat`` sink): ``GET /cgi-bin/gettoken`` with the corp id
  and the app secret gives an access token, cached until it expires and fetched again when WeCom
  answers 42001 (expired) or 40014 (invalid), the send then retried once at once. ``POST
  /cgi-bin/message/send`` reaches every ``to_user``/``to_party``/``to_tag`` in ONE request (``a|b``).
  Credentials: WeCom admin console → Apps → your app: ``AgentId`` and ``Secret``; My Company →
  ``Corp ID``. The app must be visible to the recipients.
- **Group robot** (群机器人): ``POST /cgi-bin/webhook/send?key=KEY``. In a group chat: ... → Add Group
  Robot → copy the webhook URL; its ``key`` is the secret. Text is cut at 2048 bytes, markdown at 4096,
  with a marker. ``mentioned_list``/``mentioned_mobile_list`` @mention people (text; markdown gets ``<@id>``,
  and cannot mention ``@all``: that combination is refused at start-up).

Recipients (app): ``touser``/``toparty``/``totag`` as given; with none of them (or kube-eventer's empty
``to_user=``) the message goes to ``@all``. WeCom ignores parties and tags next to ``@all``, so ``@all``
is never added when parties or tags are given.

Every answer's ``errcode`` is checked: 0 is delivered; 45009 (too many messages) waits for the next
minute; -1 (busy) is retried; 81013 (no valid recipient), 93000 (bad robot key), 40001/40013 (bad
credentials) and the other codes are permanent and logged with WeCom's ``errmsg`` (secrets masked).
The flow and the HTTP side are shared with the other chat sinks (``eventrouter/chat.py``,
``eventrouter/chat_transport.py``); this module is only WeCom's protocol. Never a flood: at most
``rate_limit`` (20) messages a minute, the rest in digests; repeats of the same object+reason at most
once per ``repeat_interval`` (30m).

URL forms::

    --sink=wechat:?corp_id=ID&corp_secret=S&agent_id=1000002[&to_user=a,b&to_party=2&to_tag=7&label=
                  &level=Warning&namespaces=&kinds=]                                         (kube-eventer)
    --sink=wechat:https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=K[&msg_type=markdown&mentioned_list=u1]
    --sink=wechat:?key=K                         (robot, host defaults to api_base)
    api_base=http://127.0.0.1:8080               (another API host, e.g. a test server or a proxy)

Example::

    --sink=wechat:?corp_id=$WECOM_CORP_ID&corp_secret=$WECOM_SECRET&agent_id=1000002&to_user=alice,bob&label=prod
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar
from urllib.parse import quote_plus

from eventrouter import (
    CHAT_OPTIONS,
    HTTP_OPTIONS,
    ChatSink,
    ErrorCodes,
    Option,
    Options,
    RetryableError,
    SinkConfigError,
    SinkURL,
    api_base,
    chat_endpoint,
    truncate_bytes,
)

log = logging.getLogger("eventrouter.sinks.wechat")

DEFAULT_API = "https://qyapi.weixin.qq.com"
ROBOT_PATH = "/cgi-bin/webhook/send"
TOKEN_EXPIRED = frozenset({42001, 40014})
# bytes of content WeCom accepts: (robot, app) x (text, markdown)
LIMITS = {("robot", "text"): 2048, ("robot", "markdown"): 4096, ("app", "text"): 2048, ("app", "markdown"): 2048}
APP_ONLY = ("corp_id", "corp_secret", "agent_id", "to_user", "to_party", "to_tag")
ROBOT_ONLY = ("mentioned_list", "mentioned_mobile_list")

ERRORS = ErrorCodes(
    "wecom",
    rate_limited=frozenset({45009}),
    retryable=frozenset({-1, 45033}),  # busy; too many concurrent calls
    hints={
        40001: "check corp_secret",
        40013: "check corp_id",
        60020: "this server's IP is not trusted by the app",
        81013: "no valid recipient: check to_user/to_party/to_tag and the app's visibility",
        93000: "the robot key is wrong or the robot was removed",
        40058: "message too long",
    },
)


class _TokenExpired(Exception):
    """WeCom says the access token is expired or invalid: fetch a new one and send again."""


def _recipients(values: list[str]) -> str:
    """kube-eventer's ``to_user=a,b`` (and WeCom's own ``a|b``) as WeCom's ``a|b``."""
    return "|".join(v.strip() for value in values for v in value.split("|") if v.strip())


class WeChatSink(ChatSink):
    """WeCom application messages (kube-eventer) or a WeCom group robot."""

    name = "wechat"
    options: ClassVar = (
        Option("corp_id", str, default="", help="app mode: the company's Corp ID"),
        Option("corp_secret", str, secret=True, help="app mode: the application's Secret"),
        Option("agent_id", int, help="app mode: the application's AgentId"),
        Option("to_user", list, default=[], help="app mode: user ids (a,b or a|b); @all for everyone "
               "(the default when no to_party/to_tag is given, and for an empty to_user=)"),
        Option("to_party", list, default=[], help="app mode: department ids"),
        Option("to_tag", list, default=[], help="app mode: tag ids"),
        Option("key", str, secret=True, help="robot mode: the webhook key"),
        Option("mentioned_list", list, default=[], help="robot mode: user ids to @mention (@all for everyone, "
               "text only)"),
        Option("mentioned_mobile_list", list, default=[], help="robot mode, text: phone numbers to @mention"),
        Option("api_base", str, default=DEFAULT_API, help="WeCom API base URL (a proxy or a test server)"),
        *CHAT_OPTIONS,
        *HTTP_OPTIONS,
    )
    errors = ERRORS
    markdown_line_break = "\n"

    def __init__(self, url: SinkURL, opts: Options, **kwargs: Any) -> None:
        super().__init__(url, opts, **kwargs)
        self.api_base = api_base(self.name, opts["api_base"])
        robot = bool(opts["key"]) or url.path.rstrip("/").endswith(ROBOT_PATH)
        self.mode = "robot" if robot else "app"
        self._check_mode_options(opts)
        if robot:
            self.endpoint = chat_endpoint(self.name, url, self.api_base + ROBOT_PATH)
        self.limit = LIMITS[(self.mode, self.layout.msg_type)]
        self.max_content = self.limit  # per instance: it depends on mode and msg_type
        self._token: str | None = None
        self._token_expires = 0.0

    # ---- configuration (no I/O) ---------------------------------------------------------------
    def _check_mode_options(self, opts: Options) -> None:
        given = opts.given
        if self.mode == "robot":
            if not opts["key"]:
                raise SinkConfigError(self.name, "the group robot needs its webhook key (?key=...)", "key")
            wrong = [name for name in APP_ONLY if name in given]
            if wrong:
                raise SinkConfigError(self.name, "is for application messages, not for the group robot "
                                      "(give either key= or corp_id/corp_secret/agent_id)", wrong[0])
            if opts["msg_type"] == "markdown" and "@all" in opts["mentioned_list"]:
                raise SinkConfigError(self.name, "@all works with msg_type=text only (WeCom markdown can "
                                      "mention user ids, not everyone)", "mentioned_list")
            return
        for name in ("corp_id", "corp_secret", "agent_id"):
            if not opts[name]:
                raise SinkConfigError(self.name, "is required for application messages (or give a group robot "
                                      "key=)", name)
        wrong = [name for name in ROBOT_ONLY if name in given]
        if wrong:
            raise SinkConfigError(self.name, "is for the group robot (key=), not for application messages", wrong[0])

    def secrets(self) -> list[Any]:
        return [*super().secrets(), self._token]

    # ---- delivery ---------------------------------------------------------------------------
    def open(self) -> None:
        """App mode: fetch the access token (checks corp_id and corp_secret). The robot has no check."""
        super().open()
        if self.mode == "app":
            self._access_token(refresh=True)

    def deliver(self, content: str, title: str) -> None:
        if self.mode == "robot":
            self.post_json(f"{self.endpoint}?key={quote_plus(self.opts['key'].reveal())}", self.robot_message(content))
            return
        try:
            try:
                self._send_app(content)
            except _TokenExpired:
                self._send_app(content, refresh=True)  # once, at once: a fresh token is no reason to wait
        except _TokenExpired as exc:
            raise RetryableError(f"wecom: the access token was refused twice: {exc}") from None

    # ---- robot --------------------------------------------------------------------------------
    def robot_message(self, content: str) -> dict[str, Any]:
        opts = self.opts
        if self.layout.msg_type == "markdown":
            mentions = "".join(f"<@{user}>" for user in opts["mentioned_list"])
            tail = f"\n{mentions}" if mentions else ""
            content = truncate_bytes(content, self.limit - len(tail.encode())) + tail
            return {"msgtype": "markdown", "markdown": {"content": content}}
        text: dict[str, Any] = {"content": truncate_bytes(content, self.limit)}
        if opts["mentioned_list"]:
            text["mentioned_list"] = opts["mentioned_list"]
        if opts["mentioned_mobile_list"]:
            text["mentioned_mobile_list"] = opts["mentioned_mobile_list"]
        return {"msgtype": "text", "text": text}

    # ---- application ----------------------------------------------------------------------------
    def recipients(self) -> dict[str, str]:
        """``touser``/``toparty``/``totag`` as given; none at all (or an empty ``to_user=``) is ``@all``."""
        opts = self.opts
        given = {"touser": _recipients(opts["to_user"]), "toparty": _recipients(opts["to_party"]),
                 "totag": _recipients(opts["to_tag"])}
        given = {key: value for key, value in given.items() if value}
        return given or {"touser": "@all"}

    def app_message(self, content: str) -> dict[str, Any]:
        msg_type = self.layout.msg_type
        return {**self.recipients(), "msgtype": msg_type, "agentid": self.opts["agent_id"],
                msg_type: {"content": truncate_bytes(content, self.limit)},
                "safe": 0, "enable_duplicate_check": 0, "duplicate_check_interval": 1800}

    def _send_app(self, content: str, refresh: bool = False) -> None:
        token = self._access_token(refresh)
        response = self.request("POST", f"{self.api_base}/cgi-bin/message/send?access_token={quote_plus(token)}",
                                self.app_message(content))
        if response.status_code == 200:
            try:
                code = int(response.json().get("errcode", 0))
            except (ValueError, AttributeError, TypeError):
                code = 0
            if code in TOKEN_EXPIRED:
                self._token = None
                raise _TokenExpired(f"errcode {code}")
        answer = self.check(response)
        missed = {k: answer[k] for k in ("invaliduser", "invalidparty", "invalidtag", "unlicenseduser")
                  if answer.get(k)}
        if missed:  # delivered to the others; say who was missed (recipient ids, no secrets)
            log.warning("wecom delivered, but these recipients are invalid: %s", missed)

    def _access_token(self, refresh: bool = False) -> str:
        now = self.clock()
        if self._token and not refresh and now < self._token_expires:
            return self._token
        opts = self.opts
        url = (f"{self.api_base}/cgi-bin/gettoken?corpid={quote_plus(opts['corp_id'])}"
               f"&corpsecret={quote_plus(opts['corp_secret'].reveal())}")
        answer = self.check(self.request("GET", url))
        token = str(answer.get("access_token") or "")
        if not token:
            raise RetryableError("wecom gettoken answered without an access_token")
        try:
            expires_in = float(answer.get("expires_in") or 7200)
        except (TypeError, ValueError):  # an odd answer: assume WeCom's 7200 s; a 42001 refreshes it anyway
            expires_in = 7200.0
        # renew five minutes early (WeCom tokens live 7200 s), never later than the token's own end
        self._token, self._token_expires = token, now + max(expires_in - 300, expires_in / 2)
        return token
