"""Microsoft Teams sink: Kubernetes events as Adaptive Cards, through a Teams Workflows webhook.

Talks to the URL of a Power Automate / Workflows flow "When a Teams webhook request is received" (the
"Post to a channel when a webhook request is received" template): ``POST`` a message whose ``attachments``
hold one card of ``contentType`` ``application/vnd.microsoft.card.adaptive``. The flow answers ``202
Accepted``. ``429`` (``Retry-After`` honoured) and 5xx are retried; ``401`` (the ``sig`` of the URL is
wrong), ``404`` (the workflow was deleted or turned off), ``400`` and ``413`` are permanent and logged with
the flow's error code (the signature masked). Old Office 365 connector URLs (``webhook.office.com``) are
retired by Microsoft; make a Workflows webhook instead.

Credentials: in the channel, "..." -> Workflows -> "Post to a channel when a webhook request is received";
copy the URL it shows. Its ``sig=`` is the secret: keep the whole URL in a Kubernetes Secret and pass it
through an environment variable.

Never a flood: at most ``rate_limit`` (20) messages a minute and 4 a second (Teams throttles a webhook above
4 requests a second), the rest folded into digests; each card is kept under Teams' 28 KB message limit;
repeats of the same object+reason at most once per ``repeat_interval`` (30m).

URL forms::

    --sink=teams:https://prod-00.westus.logic.azure.com:443/workflows/ID/triggers/manual/paths/invoke?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=SIG[&label=L&...]
    --sink=teams:https://ENV.environment.api.powerplatform.com:443/powerautomate/automations/direct/workflows/ID/triggers/manual/paths/invoke?api-version=1&sp=...&sv=1.0&sig=SIG
    --sink=teams:http://127.0.0.1:8080/workflows/ID/triggers/manual/paths/invoke?sig=SIG   (http only for loopback)

The query parameters that are not options below (``api-version``, ``sp``, ``sv``, ``sig``) belong to the
workflow URL and are sent as they are.

Example::

    --sink=teams:$TEAMS_WORKFLOW_URL&label=prod
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import quote

import httpx
import orjson

from eventrouter import (
    CHAT_OPTIONS,
    HTTP_OPTIONS,
    ChatSink,
    ErrorCodes,
    Event,
    Notice,
    Options,
    PermanentError,
    Rate,
    RateLimitedError,
    RetryableError,
    SinkConfigError,
    SinkURL,
    chat_endpoint,
    json_size,
    truncate_bytes,
    use_rates,
)

log = logging.getLogger("eventrouter.sinks.teams")

CARD = "application/vnd.microsoft.card.adaptive"
SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"
# Teams refuses messages over 28 KB; the text of a card stays well under that
MAX_CONTENT = 20000
PER_SECOND = 4
HINTS = {
    401: "the sig= of the workflow URL is wrong: copy the URL from the workflow again",
    403: "the workflow refused the request: check who may trigger it",
    404: "the workflow was deleted or turned off",
    400: "the workflow refused the request body",
    413: "the message is too large",
}
SECRET_PARAMS = ("sig",)


class TeamsAnswers(ErrorCodes):
    """A Workflows webhook answers 202 (or 200) when it takes the request; errors are ``{"error": {"code",
    "message"}}`` with a status."""

    def classify(self, response: httpx.Response) -> dict[str, Any]:
        status = response.status_code
        if 200 <= status < 300:
            return {}
        code, message = _error(response)
        detail = f"teams answered HTTP {status}" + (f" {code}: {message}" if code else f": {message}")
        if status == 429:
            try:
                wait = max(1.0, float(response.headers.get("Retry-After", "")))
            except ValueError:
                wait = 5.0
            raise RateLimitedError(detail, retry_after=wait)
        if status >= 500 or status in (408, 425):
            raise RetryableError(detail)
        hint = HINTS.get(status)
        raise PermanentError(detail + (f" ({hint})" if hint else ""))


def _error(response: httpx.Response) -> tuple[str, str]:
    try:
        error = orjson.loads(response.content).get("error") or {}
        return str(error.get("code", "")), str(error.get("message", ""))[:300]
    except (orjson.JSONDecodeError, AttributeError):
        return "", response.text[:300]


class TeamsSink(ChatSink):
    """Microsoft Teams Workflows webhook: Adaptive Cards, 4 a second at most, repeats held back, digests."""

    name = "teams"
    options: ClassVar = (*(o for o in CHAT_OPTIONS if o.name != "msg_type"), *HTTP_OPTIONS)
    errors = TeamsAnswers("teams")
    max_content = MAX_CONTENT
    rate_limited_backoff = (1.0, 60.0)

    def __init__(self, url: SinkURL, opts: Options, **kwargs: Any) -> None:
        opts = Options({**opts, "msg_type": "text"}, opts.given)  # the layout of digests and templates
        super().__init__(url, opts, **kwargs)
        if not url.host:
            raise SinkConfigError(self.name, "give the Workflows webhook URL: teams:https://...logic.azure.com/"
                                  "workflows/.../invoke?...&sig=...")
        _warn_near_misses(url)
        query = url.query_without(_own_keys())
        self.endpoint = chat_endpoint(self.name, url, "") + (f"?{query}" if query else "")
        if "sig=" not in query:
            raise SinkConfigError(self.name, "the workflow URL has no sig= parameter: copy the whole URL")
        use_rates(self.flow, (Rate(max(opts["rate_limit"] or 60, 2), 60.0), Rate(PER_SECOND, 1.0)))

    @classmethod
    def option_query(cls, url: SinkURL) -> Mapping[str, Sequence[str]]:
        """Only our keys are options; api-version, sp, sv and sig belong to the workflow URL."""
        ours = _own_keys()
        return {key: values for key, values in url.query.items() if key in ours}

    def secrets(self) -> list[Any]:
        values = [v for key in SECRET_PARAMS for v in self.url.query.get(key, [])]
        return [*super().secrets(), *values, *(quote(v, safe="") for v in values)]

    @classmethod
    def redact(cls, url: SinkURL) -> str:
        text = super().redact(url)
        for key in SECRET_PARAMS:
            for value in url.query.get(key, []):
                text = text.replace(f"{key}={quote(value, safe='')}", f"{key}=***").replace(f"{key}={value}",
                                                                                          f"{key}=***")
        return text

    def measure(self, text: str) -> int:
        return json_size(text)

    # ---- messages ---------------------------------------------------------------------------------
    def post_event(self, event: Event, notice: Notice) -> None:
        if self.layout.template is not None:
            super().post_event(event, notice)
            return
        self._post(self.event_card(event, notice))

    def deliver(self, content: str, title: str) -> None:
        """A digest, or an event through the user's template."""
        body = [{"type": "TextBlock", "text": title[:300], "weight": "Bolder", "size": "Medium", "wrap": True},
                {"type": "TextBlock", "text": truncate_bytes(content, MAX_CONTENT, measure=json_size), "wrap": True}]
        self._post(body)

    def event_card(self, event: Event, notice: Notice) -> list[dict[str, Any]]:
        layout = self.layout
        obj = event.involved_object
        where = f"{obj.namespace}/{obj.name}" if obj.namespace else obj.name
        facts = layout.card_facts(event, notice)
        body: list[dict[str, Any]] = []
        if layout.labels:
            body.append({"type": "TextBlock", "text": "\n\n".join(layout.labels), "isSubtle": True, "wrap": True})
        body += [
            {"type": "TextBlock", "text": f"{event.type}: {event.reason} on {obj.kind} {where}"[:300],
             "weight": "Bolder", "size": "Medium", "wrap": True,
             "color": "Attention" if event.type == "Warning" else "Accent"},
            {"type": "FactSet", "facts": [{"title": k, "value": v or "-"} for k, v in facts]},
            {"type": "TextBlock", "text": truncate_bytes(event.message, MAX_CONTENT // 2, measure=json_size) or "-",
             "wrap": True},
            {"type": "TextBlock", "text": event.source_component or event.reporting_controller or "kubernetes",
             "isSubtle": True, "size": "Small", "wrap": True},
        ]
        return body

    def _post(self, body: list[dict[str, Any]]) -> None:
        card = {"$schema": SCHEMA, "type": "AdaptiveCard", "version": "1.4", "msteams": {"width": "Full"},
                "body": body}
        message = {"type": "message", "attachments": [{"contentType": CARD, "contentUrl": None, "content": card}]}
        self.post_json(self.endpoint, message)


def _own_keys() -> frozenset[str]:
    return frozenset(k for option in TeamsSink.all_options() for k in option.keys)


def _warn_near_misses(url: SinkURL) -> None:
    """A parameter that looks like a misspelt option is sent to the workflow, but not silently."""
    ours = _own_keys()
    for key in url.query:
        close = [] if key in ours else difflib.get_close_matches(key, ours, n=1, cutoff=0.8)
        if close:
            log.warning("teams: query parameter %r is not an option, so it is sent to the workflow; did you "
                        "mean %r?", key, close[0])
