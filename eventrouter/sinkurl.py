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
        """The flag as given, with secret query values, credential-named parameters and header values
        (``token=``, ``header=Authorization=...``) and any URL password shown as ``***``."""
        head = self.rest.partition("?")[0]
        if self.userinfo and ":" in self.userinfo:
            user = self.userinfo.split(":", 1)[0]
            head = head.replace(f"//{self.userinfo}@", f"//{user}:{MASK}@", 1)
        parts = []
        for part in self.raw_query.split("&") if self.raw_query else []:
            key = unquote_plus(part.partition("=")[0])
            # a value that is itself a credential pair (header=Authorization=Bearer%20x, X-Api-Key=...)
            # is masked even when the sink did not declare the option secret
            parts.append(f"{part.partition('=')[0]}={MASK}" if key in secret_keys else _mask_sensitive_pairs(part))
        text = f"{self.name}:{head}"
        if "?" in self.rest:
            text += "?" + "&".join(parts)
        return text


# names of headers and parameters whose values are credentials, wherever they appear
_SENSITIVE_NAME = re.compile(r"auth|token|secret|passw|pwd|cookie|credential|api[-_]?key|private", re.IGNORECASE)
_SENSITIVE_TAIL = re.compile(r"(?:^|[-_.])(?:key|sign|signature|sig)$", re.IGNORECASE)
# NAME followed by ':' or '=' (optionally quoted, as in JSON or an echoed header); its value is found after it
_NAME_SEP = re.compile(r"""(["']?)([A-Za-z][\w.-]*)\1\s*[:=]\s*""")
_VALUE = re.compile(r"""(["']?)(?:(?:Basic|Bearer|Token|Digest|Negotiate|Bot)(?:\s+|%20|\+))?([^\s"',;&}\]\[]+)""")
_SCHEME_CREDENTIAL = re.compile(r"\b(Basic|Bearer|Digest|Negotiate)(\s+|%20|\+)([A-Za-z0-9+/=._~-]{4,})")
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/_-]{8,}={0,2}")


def is_sensitive_name(name: str) -> bool:
    """A header or parameter name whose value is a credential: Authorization, X-Api-Key, Cookie,
    access_token, esUserSecret, ...; not key_format or keywords."""
    return bool(_SENSITIVE_NAME.search(name) or _SENSITIVE_TAIL.search(name) or re.search(r"[a-z0-9]Key$", name))


def redact_text(text: str, secrets: Iterable[Secret | str | None]) -> str:
    """``text`` (an error, a response body, a flag) with credentials replaced by ``***``.

    Masked: every given secret, URL-quoted or not, and any base64 run that decodes to text holding one
    (Basic credentials are base64 of ``user:password``); the value of any header or parameter whose name
    is a credential's (``Authorization: ...``, ``"X-Api-Key": "..."``, ``token=...``); and any
    ``Basic``/``Bearer`` credential. A receiver that echoes the request's Authorization header in its
    error body leaks nothing through the log.
    """
    from urllib.parse import quote, quote_plus

    values = []
    for secret in secrets:
        value = secret.reveal() if isinstance(secret, Secret) else secret
        if not value or len(value) < 3:
            continue
        values.append(value)
        for form in {value, quote(value, safe=""), quote_plus(value)}:
            text = text.replace(form, MASK)
    if values:
        text = _BASE64_RUN.sub(lambda m: MASK if _decodes_to_secret(m.group(0), values) else m.group(0), text)
    text = _mask_sensitive_pairs(text)
    return _SCHEME_CREDENTIAL.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)


def _decodes_to_secret(run: str, values: list[str]) -> bool:
    import base64
    import binascii

    padded = run.rstrip("=") + "=" * (-len(run.rstrip("=")) % 4)
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            decoded = decode(padded).decode("utf-8", "replace")
        except (binascii.Error, ValueError):
            continue
        if any(v in decoded for v in values):
            return True
    return False


def _mask_sensitive_pairs(text: str) -> str:
    out, pos = [], 0
    for match in _NAME_SEP.finditer(text):
        if match.start() < pos or not is_sensitive_name(match.group(2)):
            continue
        value = _VALUE.match(text, match.end())
        if value is None or value.group(2).startswith(MASK):
            continue
        out.append(text[pos : value.start(2)])
        out.append(MASK)
        pos = value.end(2)
    out.append(text[pos:])
    return "".join(out)
