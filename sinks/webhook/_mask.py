"""What the webhook sink masks: sensitive header values and query parameters, and token-like path
segments of hook URLs (Slack, Feishu, Mattermost)."""

from __future__ import annotations

import re

MASK = "***"
# header names, query keys and userinfo whose values are credentials
SENSITIVE = re.compile(r"auth|token|key|secret|passw|sign|cookie|session|credential", re.IGNORECASE)
# path segments that look like a token: Slack/Feishu/Mattermost hook ids and the like
TOKEN_SEGMENT = re.compile(r"^(?=[A-Za-z0-9_-]*[0-9])(?=[A-Za-z0-9_-]*[A-Za-z])[A-Za-z0-9_-]{16,}$")
HOOK_PARENTS = frozenset({"hook", "hooks", "services", "webhook", "webhooks", "incoming"})


def path_secrets(path: str) -> list[str]:
    """Token-like segments of a URL path, and the last segment under a hook parent (``/hook/TOKEN``)."""
    found = [seg for seg in path.split("/") if TOKEN_SEGMENT.match(seg)]
    segments = [s for s in path.split("/") if s]
    if len(segments) >= 2 and any(s.lower() in HOOK_PARENTS for s in segments[:-1]):
        found.append(segments[-1])
    return found


def mask_header(item: str) -> str:
    key, sep, _value = item.partition("=")
    if sep and SENSITIVE.search(key):
        return f"{key}={MASK}"
    return item


def mask_path(head: str) -> str:
    """Mask token-like path segments (Slack, Feishu, Mattermost hooks) in ``name:scheme://host/path``."""
    prefix, sep, path = head.partition("://")
    if not sep:
        return head
    host, slash, rest = path.partition("/")
    segments = rest.split("/") if slash else []
    hooked = any(s.lower() in HOOK_PARENTS for s in segments[:-1])
    masked = [MASK if TOKEN_SEGMENT.match(s) or (hooked and i == len(segments) - 1 and s) else s
              for i, s in enumerate(segments)]
    return f"{prefix}{sep}{host}{slash}{'/'.join(masked)}"
