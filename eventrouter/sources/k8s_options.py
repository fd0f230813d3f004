"""The ``--source=kubernetes:URL?opts`` options: kube-eventer's, plus ours. Bad input → ConfigError."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from eventrouter.errors import ConfigError
from eventrouter.options import parse_duration
from eventrouter.sinkurl import SinkURL

log = logging.getLogger("eventrouter.sources.kubernetes")

_TRUE = {"1", "t", "T", "true", "TRUE", "True"}
_FALSE = {"0", "f", "F", "false", "FALSE", "False"}
APIS = ("v1", "events.k8s.io/v1")

ALLOWED = {
    "inClusterConfig": "true or false (default true)",
    "insecure": "true or false",
    "auth": "a kubeconfig path",
    "localKubeConfig": "a kubeconfig path",
    "useServiceAccount": "true or false",
    "kubeconfig": "a kubeconfig path",
    "context": "a kubeconfig context name",
    "namespaces": "namespace names (lowercase letters, digits and '-'), comma-separated",
    "api": "v1 or events.k8s.io/v1",
    "page_size": "an integer from 1 to 10000 (default 500)",
    "stall_timeout": "a duration from 1s, such as 90s",
    "watch_timeout": "a duration from 1s, such as 5m",
}
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
IGNORED = ("kubeletPort", "kubeletHttps")  # heapster leftovers kube-eventer accepts and never reads


@dataclass
class SourceSettings:
    host: str = ""  # scheme://host from the URL, overrides the configuration's host
    in_cluster: bool = True
    in_cluster_given: bool = False
    insecure: bool = False
    kubeconfig: str | None = None
    context: str | None = None
    use_service_account: bool = False
    namespaces: list[str] = field(default_factory=list)
    api: str = "v1"
    page_size: int = 500
    stall_timeout: float = 90.0
    watch_timeout: float = 300.0


def _fail(option: str, value: str) -> ConfigError:
    return ConfigError(f"--source=kubernetes: option '{option}': {value!r} is not allowed; use {ALLOWED[option]}")


def _bool(option: str, value: str) -> bool:
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise _fail(option, value)


def _duration(option: str, value: str) -> float:
    try:
        seconds = float(parse_duration(value))
    except ValueError:
        raise _fail(option, value) from None
    if seconds < 1:
        raise _fail(option, value)
    return seconds


def parse_settings(url: SinkURL) -> SourceSettings:
    s = SourceSettings()
    if url.scheme and url.host:
        if url.scheme not in ("http", "https"):
            raise ConfigError(f"--source=kubernetes: {url.scheme}:// is not supported; use https://HOST[:PORT]")
        s.host = f"{url.scheme}://{url.host}"
    for key, values in url.query.items():
        if key in IGNORED:
            log.warning("--source=kubernetes: option %r is accepted for kube-eventer compatibility and ignored", key)
            continue
        if key not in ALLOWED:
            raise ConfigError(f"--source=kubernetes: unknown option {key!r}; options: {', '.join(ALLOWED)}")
        value = values[0]  # kube-eventer (Go's url.Values) reads the first of a repeated key
        if key == "inClusterConfig":
            s.in_cluster, s.in_cluster_given = _bool(key, value), True
        elif key == "insecure":
            s.insecure = _bool(key, value)
        elif key == "useServiceAccount":
            s.use_service_account = _bool(key, value)
        elif key in ("auth", "localKubeConfig", "kubeconfig"):
            if not value:
                raise _fail(key, value)
            s.kubeconfig = value
        elif key == "context":
            if not value:
                raise _fail(key, value)
            s.context = value
        elif key == "namespaces":
            names = [n.strip() for v in values for n in v.split(",") if n.strip()]
            if not names:
                raise _fail(key, value)
            for name in names:  # a Kubernetes namespace is a DNS label; a typo would only 404 forever
                if not _NAMESPACE.fullmatch(name):
                    raise _fail(key, name)
            s.namespaces = list(dict.fromkeys(names))
        elif key == "api":
            if value not in APIS:
                raise _fail(key, value)
            s.api = value
        elif key == "page_size":
            try:
                s.page_size = int(value)
            except ValueError:
                raise _fail(key, value) from None
            if not 1 <= s.page_size <= 10000:
                raise _fail(key, value)
        elif key == "stall_timeout":
            s.stall_timeout = _duration(key, value)
        elif key == "watch_timeout":
            s.watch_timeout = _duration(key, value)
    if s.in_cluster_given and s.in_cluster and (s.kubeconfig is not None or s.context is not None):
        # kube-eventer reads auth/localKubeConfig only with inClusterConfig=false; so do we
        log.warning("--source=kubernetes: inClusterConfig=true: the kubeconfig/context options are ignored")
        s.kubeconfig = s.context = None
    elif s.kubeconfig is not None or s.context is not None:
        s.in_cluster = False
    return s
