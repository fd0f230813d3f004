"""A local server that answers as a Microsoft Teams Workflows webhook ("When a Teams webhook request is
received" -> post the card in a channel): ``POST /workflows/ID/triggers/manual/paths/invoke?api-version=..&sp=..
&sv=1.0&sig=SIG``.

- ``202 Accepted`` with an empty body when the request is taken; the flow then posts each attachment whose
  ``contentType`` is ``application/vnd.microsoft.card.adaptive`` and whose content is an AdaptiveCard. A body
  without one is still answered 202, and nothing appears in the channel (``posted`` stays empty), as with the
  real flow run failing afterwards. A message over 28 KB does not appear either (Teams' message size limit).
- ``401`` ``DirectApiAuthorizationRequired`` without ``sig``, ``DirectApiInvalidAuthorizationSignature`` with a
  wrong one; ``404`` ``WorkflowNotFound`` for another workflow id (deleted or turned off); ``400``
  ``InvalidRequestContent`` for a body that is not JSON. Errors are ``{"error": {"code", "message"}}``.
- More than 4 requests in a second: ``429`` with ``Retry-After`` (the error code name is our assumption).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tests.servers._chat_fake import Answer, FakeChatService, Limits, Received

CARD = "application/vnd.microsoft.card.adaptive"
MAX_MESSAGE = 28 * 1024


def error(status: int, code: str, message: str, **headers: str) -> Answer:
    return Answer.json(status, {"error": {"code": code, "message": message}}, **headers)


class FakeTeams(FakeChatService):
    def __init__(self, workflow: str = "0a1b2c3d4e5f46a7b8c9d0e1f2a3b4c5", sig: str = "SIG-aBcD-0123456789",
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        self.workflow = workflow
        self.sig = sig
        self.limits = Limits((4, 1.0))
        self.posted: list[dict[str, Any]] = []  # the cards that appeared in the channel

    @property
    def url(self) -> str:
        return (f"{self.base}/workflows/{self.workflow}/triggers/manual/paths/invoke?api-version=2016-06-01"
                f"&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig={self.sig}")

    def answer(self, request: Received) -> tuple[Answer, bool]:
        if request.path != f"/workflows/{self.workflow}/triggers/manual/paths/invoke":
            return error(404, "WorkflowNotFound", "The workflow could not be found."), False
        sig = request.query.get("sig")
        if not sig:
            return error(401, "DirectApiAuthorizationRequired",
                         "The request must be authenticated only by Shared Access scheme."), False
        if sig != self.sig:
            return error(401, "DirectApiInvalidAuthorizationSignature",
                         "The provided authorization signature is not valid."), False
        if not isinstance(request.body, dict):
            return error(400, "InvalidRequestContent",
                         "The request content is not valid and could not be deserialized."), False
        now = self.clock()
        if self.limits.exceeded(now):
            return error(429, "TooManyRequests", "Rate limit is exceeded.", **{"Retry-After": "1"}), False
        self.limits.record(now)
        cards = [a.get("content") for a in request.body.get("attachments") or ()
                 if isinstance(a, dict) and a.get("contentType") == CARD]
        valid = [c for c in cards if isinstance(c, dict) and c.get("type") == "AdaptiveCard" and c.get("body")]
        if valid and len(request.raw) <= MAX_MESSAGE:
            self.posted.extend(valid)
            return Answer(202, b""), True
        return Answer(202, b""), False
