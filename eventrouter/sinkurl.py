"""The ``--source``/``--sink`` flag grammar, exactly kube-eventer's (common/flags/flags.go).

``NAME:REST`` splits on the first ``:``. ``$VAR`` and ``${VAR}`` in REST are replaced from the
environment (so a Secret can feed a token through an env var); unlike Go, a variable that is not set
stops start-up (a sink with an empty token would fail on every send). A URL's host:port is checked
(:func:`eventrouter.options.check_authority`). REST is then read as a URL:
``scheme://host/path?query``. Repeated query keys form lists. A REST that starts with ``?`` has
only a query (``kafka:?brokers=a:9092&brokers=b:9092``); the MySQL DSN form
``mysql:?user:pw@tcp(h:3306)/db?charset=utf8&table=t`` keeps everything after the first ``?`` in
:attr:`SinkURL.raw_query`, untouched, for the sink to split.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote_plus

from eventrouter.errors import ConfigError
from eventrouter.options import MASK, Secret, check_authority

_ENV_REF = re.compile(r"\$\{([^}]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)|\$\{")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def expand_env(text: str, environ: Mapping[str, str] | None = None, *, what: str = "--sink") -> str:
    """Replace ``$VAR``/``${VAR}`` like Go's ``os.ExpandEnv``, but loudly: a variable that is not set,
    an unterminated ``${VAR`` or ``${}`` is a ConfigError naming the variable and ``what`` (the flag).

    Go would expand an unset variable to "" and start a sink with an empty token that fails on every
    send; stopping at start-up with the variable's name is the useful answer. Set-but-empty is allowed.
    """
    env = os.environ if environ is None else environ

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) if match.group(1) is not None else match.group(2)
        if name is None:
            raise ConfigError(f"{what}: unterminated '${{' in the flag; write ${{NAME}} or $NAME")
        if not _ENV_NAME.fullmatch(name):
            raise ConfigError(f"{what}: '${{{name}}}' is not an environment variable name")
        if name not in env:
            raise ConfigError(f"{what}: environment variable ${name} is not set")
        return env[name]

    return _ENV_REF.sub(replace, text)


def parse_query(raw_query: str) -> dict[str, list[str]]:
    """Go's ``url.ParseQuery``: ``&``-separated ``key=value``, ``+`` and ``%XX`` unescaped, order kept.

    A ``%`` that starts no valid escape stays as it is (Go would drop the whole parameter, silently):
    it lets ``key_format=%Y/%m`` and a DSN password with ``%`` through, and nothing is echoed back.
    """
    query: dict[str, list[str]] = {}
    for part in raw_query.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        query.setdefault(unquote_plus(key), []).append(unquote_plus(value))
    return query


@dataclass(frozen=True)
class SinkURL:
    """A parsed ``NAME:REST`` flag. Fields mirror Go's ``url.URL`` as kube-eventer sees it."""

    name: str
    rest: str = ""
    scheme: str = ""
    userinfo: str = ""
    host: str = ""  # host[:port], as Go's URL.Host
    path: str = ""
    raw_query: str = ""
    query: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def parse(cls, flag: str, *, environ: dict[str, str] | None = None, what: str = "--sink") -> SinkURL:
        """Parse one flag value. Errors name the flag and never echo a value that may be secret."""
        if len(flag) >= 2 and flag[0] == flag[-1] and flag[0] in "\"'":
            # args: ["--sink=\"kafka:?...\""] in a manifest keeps the quotes (kube-eventer #12)
            flag = flag[1:-1]
        if not flag or flag.startswith(":"):
            raise ConfigError(f"{what}: expected NAME:URL (for example log:stdout), got an empty name")
        name, _, rest = flag.partition(":")
        name = name.strip()
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ConfigError(f"{what}: {name!r} is not a valid name (letters, digits, '_', '-', '.')")
        rest = expand_env(rest, environ, what=f"{what}={name}")
        before_query, sep, raw_query = rest.partition("?")
        if _BAD_ESCAPE.search(before_query):
            raise ConfigError(f"{what}={name}: invalid %-escape in the URL")
        scheme = userinfo = host = ""
        path = before_query
        match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):(.*)$", before_query)
        if match:
            scheme, path = match.group(1).lower(), match.group(2)
        if path.startswith("//"):
            authority, slash, tail = path[2:].partition("/")
            path = slash + tail
            if "@" in authority:
                userinfo, _, authority = authority.rpartition("@")
            host = authority
            problem = check_authority(host)
            if problem:
                raise ConfigError(f"{what}={name}: {problem} in the URL")
        query = parse_query(raw_query) if sep else {}
        return cls(name, rest, scheme, userinfo, host, unquote_plus(path) if "%" in path else path, raw_query, query)

    def __repr__(self) -> str:
        # the fields hold the flag as given, tokens included: never show them raw. Query values are
        # masked, and so is a key with an '@' (the password of a MySQL DSN sits in the first key).
        text = self.redacted(self.query.keys())
        for key in self.query:
            if "@" in key:
                text = text.replace(key.partition("=")[0], MASK, 1)
        return f"SinkURL({text!r})"

    @property
    def hostname(self) -> str:
        host = self.host
        if host.startswith("["):
            return host[1 : host.find("]")]
        return host.rsplit(":", 1)[0] if host.count(":") == 1 else host

    @property
    def port(self) -> int | None:
        host = self.host
        if host.startswith("["):
            tail = host[host.find("]") + 1 :]
            return int(tail[1:]) if tail.startswith(":") and tail[1:].isdigit() else None
        if host.count(":") == 1:
            port = host.rsplit(":", 1)[1]
            return int(port) if port.isdigit() else None
        return None

    def base_url(self) -> str:
        """``scheme://host/path`` without userinfo or query."""
        if not self.scheme:
            return self.path
        return f"{self.scheme}://{self.host}{self.path}"

    def query_without(self, keys: Collection[str]) -> str:
        """The raw query with the named keys removed, the other parameters kept as written."""
        kept = [p for p in self.raw_query.split("&") if p and unquote_plus(p.partition("=")[0]) not in keys]
        return "&".join(kept)

    def redacted(self, secret_keys: Collection[str] = ()) -> str:
        """The flag as given, with secret query values and any URL password shown as ``***``."""
        head = self.rest.partition("?")[0]
        if self.userinfo and ":" in self.userinfo:
            user = self.userinfo.split(":", 1)[0]
            head = head.replace(f"//{self.userinfo}@", f"//{user}:{MASK}@", 1)
        parts = []
        for part in self.raw_query.split("&") if self.raw_query else []:
            key = unquote_plus(part.partition("=")[0])
            parts.append(f"{part.partition('=')[0]}={MASK}" if key in secret_keys else part)
        text = f"{self.name}:{head}"
        if "?" in self.rest:
            text += "?" + "&".join(parts)
        return text


def redact_text(text: str, secrets: Iterable[Secret | str | None]) -> str:
    """Replace every occurrence of each secret (and its URL-quoted form) in ``text`` with ``***``."""
    from urllib.parse import quote, quote_plus

    for secret in secrets:
        value = secret.reveal() if isinstance(secret, Secret) else secret
        if not value or len(value) < 3:
            continue
        for form in {value, quote(value, safe=""), quote_plus(value)}:
            text = text.replace(form, MASK)
    return text
