"""Webhook sink: one HTTP request per event (or per batch) to any receiver.

Talks to any HTTP(S) endpoint: your own service, an alert gateway, or a chat bot through a template
(``docs/templates/slack.json.j2``, ``docs/templates/feishu.json.j2``). The default body is the JSON
object of the normalized event (times in UTC); ``template=``/``template_file=`` or kube-eventer's
``custom_body_configmap=`` replace it with a sandboxed Jinja2 template, whose ``{{ value }}`` output
is JSON-escaped when the content type is JSON (kube-eventer's Go-style ``{{ .InvolvedObject.Name }}``
field references work too). Any 2xx answer is delivered, unless ``success_field=code:0`` (Feishu/Lark),
``errcode:0`` or ``ok:true`` asks for the JSON body to be checked as well (``_reply.py``).

Credentials: whatever the receiver wants, given as ``username``/``password`` (basic auth),
``bearer_token``, a ``header=Name=Value`` (for example ``header=X-Api-Key=$API_KEY``, with the value in
an environment variable fed from a Kubernetes Secret) or a token in the URL itself. All of them are
masked in logs, errors and ``eventrouter check``.

URL forms::

    --sink=webhook:https://HOST/PATH?[level=&namespaces=&kinds=&reason=&method=&header=K=V...
                                      &custom_body_configmap=&custom_body_configmap_namespace=]   (kube-eventer)
    --sink=webhook:https://HOST/PATH?method=PUT&template_file=/etc/eventrouter/body.j2&batch=true
    --sink=webhook:https://user:$PASSWORD@HOST/PATH
    --sink=webhook:https://open.feishu.cn/open-apis/bot/v2/hook/$HOOK?template_file=/feishu.json.j2&success_field=code:0

The query options listed in ``WebhookSink.options`` (and the core's filter/delivery options) are
taken out of the URL that is called; any other query parameter (``?access_token=...``) is kept.

With ``chat=true`` the webhook is a chat sink (``_chat.py``): repeats of the same object+reason are held back
and reminded once per ``repeat_interval``, at most ``rate=`` messages are posted (``100/min,5/s`` for
Feishu/Lark), the overflow is folded into digests, and ``level`` defaults to Warning.

Example::

    --sink=webhook:https://alerts.example.com/k8s?level=Warning&header=Authorization=Bearer%20$TOKEN
    --sink=webhook:https://chat.example.com/hooks/$HOOK?chat=true&rate=30/min,1/s&template_file=/etc/er/chat.j2
"""

from __future__ import annotations

import difflib
import logging
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar
from urllib.parse import unquote, unquote_plus

import httpx
import orjson

from eventrouter import (
    HTTP_OPTIONS,
    ChatStats,
    Digest,
    Duration,
    Event,
    EventTemplate,
    Notice,
    Option,
    Options,
    PartialError,
    PermanentError,
    RateLimitedError,
    RetryableError,
    Secret,
    Sink,
    SinkConfigError,
    SinkError,
    SinkURL,
    http_client,
    parse_rates,
    parse_tz,
    raise_for_status,
    redact_text,
    template_source,
    transport_error,
)

from ._body import SAMPLE, default_batch_body, event_body, join_bodies
from ._chat import DEFAULT_RATE, DEFAULT_REPEAT_INTERVAL, WebhookChat
from ._configmap import read_configmap
from ._mask import MASK, SENSITIVE, mask_header, mask_path, path_secrets
from ._reply import SuccessField

log = logging.getLogger("eventrouter.sinks.webhook")

BATCH_SIZE_WHEN_BATCHING = 100
# a header name is an RFC 9110 token
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class WebhookSink(Sink):
    """Any HTTP receiver: the normalized event as JSON, or a template of yours."""

    name = "webhook"
    options: ClassVar = (
        Option("method", str, default="POST", choices=("POST", "PUT", "PATCH", "GET"),
               help="HTTP method (kube-eventer's default was GET; a body is sent with every method)"),
        Option("header", list, default=[], split_commas=False,
               help="extra request header Name=Value; repeat for more (split on the first '=')"),
        Option("content_type", str, default="application/json", help="Content-Type of the body"),
        Option("template", str, help="inline Jinja2 body template (sandboxed)"),
        Option("template_file", str, help="path of a Jinja2 body template, read at start-up"),
        Option("custom_body_configmap", str,
               help="kube-eventer: ConfigMap whose key 'content' holds the body template (read once at start-up)"),
        Option("custom_body_configmap_namespace", str, default="default", help="namespace of that ConfigMap"),
        Option("batch", bool, default=False,
               help=f"one request per batch with a JSON array body (batch_size defaults to "
                    f"{BATCH_SIZE_WHEN_BATCHING})"),
        Option("tz", str, default="UTC", help="time zone of last_time/first_time and Go-style {{ .LastTimestamp }}"),
        Option("username", str, help="basic auth user"),
        Option("password", str, secret=True, help="basic auth password"),
        Option("bearer_token", str, secret=True, help="sent as 'Authorization: Bearer TOKEN'"),
        Option("chat", bool, default=False,
               help="post as a chat sink: repeats held back and reminded, rate= honoured, the overflow in digests "
                    "(level then defaults to Warning)"),
        Option("rate", str, help=f"with chat=true: messages allowed, N/min, N/s or both (100/min,5/s); "
                                 f"default {DEFAULT_RATE}"),
        Option("repeat_interval", Duration, min=0,
               help="with chat=true: repeats of the same object+reason give one reminder per interval "
                    "(default 30m; 0: every occurrence)"),
        Option("success_field", str,
               help="NAME[:VALUE]: a 2xx answer is delivered only if its JSON body has NAME equal to VALUE "
                    "(code:0 for Feishu/Lark, errcode:0, ok:true)"),
        *HTTP_OPTIONS,
    )
    delivery_defaults: ClassVar = {"batch_size": 1, "flush_interval": 1.0}

    # ---- configuration (no I/O) ---------------------------------------------------------------
    @classmethod
    def option_query(cls, url: SinkURL) -> dict[str, list[str]]:
        """Only our keys are options; the others belong to the receiver (``?access_token=``) and stay in the URL."""
        ours = _own_keys()
        return {key: values for key, values in url.query.items() if key in ours}

    @classmethod
    def parse_options(cls, url: SinkURL) -> Options:
        opts = super().parse_options(url)
        if opts["batch"] and "batch_size" not in opts.given:
            # batching is why one asks for batch=true: a bigger default than one event per request
            return Options({**opts, "batch_size": BATCH_SIZE_WHEN_BATCHING}, opts.given)
        if opts["chat"]:
            # a chat receiver: Warning events by default, as every chat sink; the flow folds per batch
            defaults: dict[str, Any] = {}
            if "level" not in opts.given:
                defaults["level"] = ["Warning"]
            if "batch_size" not in opts.given:
                defaults["batch_size"] = BATCH_SIZE_WHEN_BATCHING
            return Options({**opts, **defaults}, opts.given)
        return opts

    def __init__(self, url: SinkURL, opts: Options, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        super().__init__(url, opts)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise SinkConfigError(self.name, "needs an http:// or https:// URL with a host, "
                                  "for example webhook:https://alerts.example.com/k8s")
        _warn_near_misses(url)
        self.method: str = opts["method"]
        self.json_body = "json" in opts["content_type"].lower()
        self.tz = parse_tz(self.name, opts["tz"])
        self.headers = self._build_headers()
        self.target = self._target_url()
        self.auth = self._build_auth()
        self.success: SuccessField | None = None
        if opts["success_field"] is not None:
            try:
                self.success = SuccessField.parse(opts["success_field"])
            except ValueError as exc:
                raise SinkConfigError(self.name, str(exc), "success_field") from None
        self._secrets = self._collect_secrets()
        self._template: EventTemplate | None = None
        self._loaded = False
        source = template_source(self.name, opts)
        if source is not None and opts["custom_body_configmap"]:
            raise SinkConfigError(self.name, "give either template/template_file or custom_body_configmap, "
                                  "not both", "custom_body_configmap")
        if source is not None:
            option = "template_file" if opts["template_file"] else "template"
            self._template = self._compile(source, option)
            self._loaded = True
        elif not opts["custom_body_configmap"]:
            self._loaded = True
        self.chat = self._build_chat(clock)
        if self.chat is not None:
            # /metrics and the shutdown summary count a chat sink's messages and events apart (ChatStats)
            self.chat_stats: Callable[[], ChatStats] = lambda: self.chat.flow.stats  # type: ignore[union-attr]
        self._restored = False
        self._chat_closed = False
        self._wall = wall
        # built now so that unreadable TLS files fail at start-up; no connection is made yet
        self._client: httpx.Client | None = http_client(self.name, opts)

    def _build_chat(self, clock: Callable[[], float]) -> WebhookChat | None:
        opts = self.opts
        if not opts["chat"]:
            for key in ("rate", "repeat_interval"):
                if opts[key] is not None:
                    raise SinkConfigError(self.name, f"{key} applies to chat receivers: add chat=true", key)
            return None
        if opts["batch"]:
            raise SinkConfigError(self.name, "chat=true posts one message at a time: leave out batch=true", "batch")
        try:
            rates = parse_rates(opts["rate"] or DEFAULT_RATE)
        except ValueError as exc:
            raise SinkConfigError(self.name, str(exc), "rate") from None
        interval = opts["repeat_interval"]
        return WebhookChat(rates, DEFAULT_REPEAT_INTERVAL if interval is None else float(interval), opts["tz"], clock)

    def _build_headers(self) -> dict[str, str]:
        headers = {"Content-Type": self.opts["content_type"], "User-Agent": "eventrouter"}
        given: dict[str, str] = {}
        for item in self.opts["header"]:
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or not _HEADER_NAME.match(key):
                raise SinkConfigError(self.name, f"expected header=Name=Value with a header name, got "
                                      f"{mask_header(item)!r}", "header")
            if "\n" in value or "\r" in value:
                raise SinkConfigError(self.name, f"the value of header {key!r} contains a line break", "header")
            given[key] = value
        # a header= given by the user wins over our defaults, whatever its case
        for key in given:
            for default in list(headers):
                if default.lower() == key.lower():
                    del headers[default]
        headers.update(given)
        return headers

    def _target_url(self) -> str:
        url = self.url
        query = url.query_without(_own_keys())
        target = f"{url.scheme}://{url.host}{url.path}"
        target += f"?{query}" if query else ""
        try:
            httpx.URL(target)
        except (httpx.InvalidURL, ValueError) as exc:
            problem = redact_text(str(exc), self._url_secrets())
            raise SinkConfigError(self.name, f"the URL is not valid: {problem}") from None
        return target

    def _build_auth(self) -> httpx.Auth | None:
        opts = self.opts
        user, password, token = opts["username"], opts["password"], opts["bearer_token"]
        if self.url.userinfo:
            if user:
                raise SinkConfigError(self.name, "give the user either in the URL or as username=, not both",
                                      "username")
            name, _, pw = self.url.userinfo.partition(":")
            user, password = unquote(name), Secret(unquote(pw))
        if password and not user:
            raise SinkConfigError(self.name, "password= needs username=", "password")
        if token and user:
            raise SinkConfigError(self.name, "give either bearer_token or username/password, not both",
                                  "bearer_token")
        if token:
            if any(k.lower() == "authorization" for k in self.headers):
                raise SinkConfigError(self.name, "bearer_token and header=Authorization=... both set",
                                      "bearer_token")
            self.headers["Authorization"] = f"Bearer {token.reveal()}"
            return None
        if user:
            return httpx.BasicAuth(user, password.reveal() if password else "")
        return None

    def _url_secrets(self) -> list[str]:
        found = []
        if ":" in self.url.userinfo:
            found.append(unquote(self.url.userinfo.partition(":")[2]))
        found.extend(path_secrets(self.url.path))
        for key, values in self.url.query.items():
            if SENSITIVE.search(key):
                found.extend(values)
        return found

    def _collect_secrets(self) -> list[Any]:
        secrets: list[Any] = [self.opts["password"], self.opts["bearer_token"], *self._url_secrets()]
        secrets.extend(v for k, v in self.headers.items() if SENSITIVE.search(k))
        return [s for s in secrets if s]

    def _compile(self, source: str, option: str) -> EventTemplate:
        template = EventTemplate(self.name, source, option=option, json_escape=self.json_body, tz=self.tz)
        if self.json_body:
            # a template that cannot make JSON would fail on every event: say so now
            try:
                orjson.loads(template.render(SAMPLE))
            except orjson.JSONDecodeError as exc:
                raise SinkConfigError(self.name, f"the template does not render valid JSON ({exc}); fix it or "
                                      "set content_type to a non-JSON type", option) from None
        return template

    @classmethod
    def redact(cls, url: SinkURL) -> str:
        """Secret options, the URL password, token-like path segments, and sensitive header values and
        query parameters are shown as ``***``."""
        text = url.redacted(cls.secret_keys())
        head, sep, query = text.partition("?")
        head = mask_path(head)
        parts = []
        for part in query.split("&") if sep else []:
            key, eq, value = part.partition("=")
            name = unquote_plus(key)
            if name == "header" and eq and mask_header(unquote_plus(value)) != unquote_plus(value):
                parts.append(f"{key}={mask_header(unquote_plus(value))}")
            elif eq and value != MASK and SENSITIVE.search(name) and name not in _own_keys():
                parts.append(f"{key}={MASK}")
            else:
                parts.append(part)
        return head + (sep + "&".join(parts) if sep else "")

    # ---- delivery -----------------------------------------------------------------------------
    def open(self) -> None:
        """With chat=true, take back the digest kept at the last shutdown (in ``state_dir``); read the
        ConfigMap template (kube-eventer's custom_body_configmap), once."""
        if self.chat is not None and self.state_dir is not None and not self._restored:
            self._restored = True
            self.chat.flow.restore(self.state_dir, self._wall)
        if self._loaded:
            return
        name = self.opts["custom_body_configmap"]
        namespace = self.opts["custom_body_configmap_namespace"]
        source = read_configmap(self.name, namespace, name, float(self.opts["timeout"]))
        self._template = self._compile(source, "custom_body_configmap")
        self._loaded = True
        log.info("webhook: body template read from ConfigMap %s/%s", namespace, name)

    def send(self, batch: Sequence[Event]) -> None:
        if not self._loaded:
            try:
                self.open()
            except SinkConfigError as exc:
                # run does not call open(): keep the events and retry until the ConfigMap can be read
                raise RetryableError(str(exc)) from None
        if self.chat is not None:
            self.chat.flow.send(batch, self._post_event)
        elif self.opts["batch"]:
            self._send_batch(batch)
        else:
            self._send_each(batch)

    def tick(self) -> None:
        if self.chat is not None and self._loaded:
            self.chat.flow.tick(self._post_event, self._post_digest)

    def _post_event(self, event: Event, notice: Notice) -> None:
        assert self.chat is not None
        self._request(self.chat.event_body(self._template, event, notice))

    def _post_digest(self, digest: Digest) -> None:
        assert self.chat is not None
        self._request(self.chat.digest_body(self._template, digest))

    def _send_batch(self, batch: Sequence[Event]) -> None:
        """One request for the batch; an event the template cannot render is left out and counted as failed."""
        if self._template is None:
            self._request(default_batch_body(batch))
            return
        items: list[bytes] = []
        rejected: list[Event] = []
        last: SinkError | None = None
        for event in batch:
            try:
                items.append(self._body(event))
            except PermanentError as exc:
                rejected.append(event)
                last = exc
        if items:
            self._request(join_bodies(items, self.json_body))
        if rejected:
            assert last is not None
            if not items:
                raise last
            raise PartialError(f"{len(rejected)} of {len(batch)} events rejected: {last}", rejected=rejected)

    def _send_each(self, batch: Sequence[Event]) -> None:
        """One request per event. What was delivered before a failure is not sent again."""
        rejected: list[Event] = []
        last: SinkError | None = None
        for index, event in enumerate(batch):
            try:
                self._request(self._body(event))
            except PermanentError as exc:
                rejected.append(event)
                last = exc
            except RetryableError as exc:
                if index == 0:
                    raise
                raise PartialError(str(exc), retry=batch[index:], rejected=rejected,
                                   retry_after=exc.retry_after) from None
        if rejected:
            assert last is not None
            if len(rejected) == len(batch):
                raise last
            raise PartialError(f"{len(rejected)} of {len(batch)} events rejected: {last}", rejected=rejected)

    def _body(self, event: Event) -> bytes:
        return event_body(self._template, event)

    def _request(self, body: bytes) -> None:
        if self._client is None:
            self._client = http_client(self.name, self.opts)
        try:
            response = self._client.request(self.method, self.target, content=body, headers=self.headers,
                                             auth=self.auth)
        except httpx.HTTPError as exc:
            raise RetryableError(self._redact(str(transport_error(exc, "webhook receiver")))) from None
        self._classify(response)

    def _classify(self, response: httpx.Response) -> None:
        """2xx: delivered (with success_field: only if the JSON body says so). 408, 425, 429 (Retry-After
        honoured) and 5xx: RetryableError (429 and a rate-limit code in the body: RateLimitedError). Other:
        PermanentError."""
        try:
            raise_for_status(response, "webhook receiver")
            if self.success is not None:
                self.success.check(response.status_code, response.content)
        except RetryableError as exc:
            self._log_body(response)
            limited = isinstance(exc, RateLimitedError) or response.status_code == 429
            if limited and self.chat is not None:  # the chat flow pauses its window too
                raise RateLimitedError(self._redact(str(exc)), exc.retry_after or 60.0) from None
            # without chat, a rate-limit code in a 200 answer is retried with the router's backoff
            wait = None if isinstance(exc, RateLimitedError) and response.status_code != 429 else exc.retry_after
            raise RetryableError(self._redact(str(exc)), wait) from None
        except PermanentError as exc:
            self._log_body(response)
            raise PermanentError(self._redact(str(exc))) from None

    def _log_body(self, response: httpx.Response) -> None:
        if response.content:
            log.debug("webhook: HTTP %d: %s", response.status_code, self._redact(response.text[:2048]))

    def _redact(self, text: str) -> str:
        return redact_text(text, self._secrets)

    def close(self) -> None:
        if self.chat is not None and self._loaded and not self._chat_closed:
            self._chat_closed = True
            # what the rate does not allow now is kept in state_dir and posted first after a restart
            self.chat.flow.close(self._post_event, self._post_digest, self.state_dir, self._wall)
            self.chat.flow.log.info("%s", self.chat.flow.stats.summary())
        client, self._client = self._client, None
        if client is not None:
            client.close()


def _own_keys() -> frozenset[str]:
    return frozenset(k for option in WebhookSink.all_options() for k in option.keys)


def _warn_near_misses(url: SinkURL) -> None:
    """A receiver parameter that looks like a misspelt option is forwarded, but not silently."""
    ours = _own_keys()
    for key in url.query:
        if key in ours:
            continue
        close = difflib.get_close_matches(key, ours, n=1, cutoff=0.8)
        if close:
            log.warning("webhook: query parameter %r is not an option, so it is sent to the receiver; "
                        "did you mean %r?", key, close[0])
