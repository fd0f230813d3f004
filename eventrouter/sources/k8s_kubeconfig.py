"""Credentials without the ``kubernetes`` package, for the common cases (start-up time).

Importing the ``kubernetes`` client library takes 0.3-0.4 s (its generated API modules, urllib3,
requests-oauthlib, ...) and the source only needs its config loaders. The two configurations a router
almost always runs with are read here directly:

- in-cluster: ``KUBERNETES_SERVICE_HOST``/``_PORT``, the service account token (read again on every
  request, so a rotated projected token is picked up) and its CA;
- a kubeconfig whose user has a ``token``, ``tokenFile`` or a client certificate and key (files or
  ``-data``), and whose cluster has ``server``, a CA and ``insecure-skip-tls-verify``.

Anything else (exec plugins, auth-provider, basic auth, proxy-url, ...) returns None, and the caller
falls back to the ``kubernetes`` loaders, which handle every case.
"""

from __future__ import annotations

import atexit
import base64
import os
import tempfile
from typing import Any

import orjson

from eventrouter.errors import ConfigError

_USER_KEYS = {"token", "tokenFile", "client-certificate", "client-certificate-data", "client-key", "client-key-data"}
_CLUSTER_KEYS = {"server", "certificate-authority", "certificate-authority-data", "insecure-skip-tls-verify",
                 "tls-server-name", "extensions"}


class SimpleConfiguration:
    """The attributes of ``kubernetes.client.Configuration`` that :class:`ApiClient` reads."""

    def __init__(self, host: str, *, token: str | None = None, token_file: str | None = None,
                 ssl_ca_cert: str | None = None, cert_file: str | None = None, key_file: str | None = None,
                 verify_ssl: bool = True) -> None:
        self.host = host
        self._token = token
        self._token_file = token_file
        self.ssl_ca_cert = ssl_ca_cert
        self.cert_file = cert_file
        self.key_file = key_file
        self.verify_ssl = verify_ssl

    def get_api_key_with_prefix(self, identifier: str, alias: str | None = None) -> str | None:
        if self._token_file:
            with open(self._token_file, encoding="utf-8") as fh:
                return f"Bearer {fh.read().strip()}"
        return f"Bearer {self._token}" if self._token else None


def in_cluster_configuration(token_file: str, ca_file: str) -> SimpleConfiguration:
    host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise ConfigError("--source=kubernetes: KUBERNETES_SERVICE_HOST is not set: this is not a pod")
    if ":" in host:  # IPv6
        host = f"[{host}]"
    if not os.path.exists(token_file):
        raise ConfigError(f"--source=kubernetes: no service account token at {token_file}")
    return SimpleConfiguration(f"https://{host}:{port}", token_file=token_file,
                               ssl_ca_cert=ca_file if os.path.exists(ca_file) else None)


def kubeconfig_configuration(path: str, context: str | None) -> SimpleConfiguration | None:
    """The configuration of ``context`` (default: current-context), or None when it needs the full loader."""
    doc = read_kubeconfig(path)
    if doc is None:
        return None
    name = context or doc.get("current-context")
    ctx = _named(doc.get("contexts"), name)
    if ctx is None:
        return None
    cluster = _named(doc.get("clusters"), ctx.get("cluster"))
    user = _named(doc.get("users"), ctx.get("user")) if ctx.get("user") else {}
    if cluster is None or user is None or not cluster.get("server"):
        return None
    if set(user) - _USER_KEYS or set(cluster) - _CLUSTER_KEYS or cluster.get("tls-server-name"):
        return None  # exec, auth-provider, username/password, proxy-url ...: the kubernetes loaders
    base = os.path.dirname(os.path.abspath(path))
    token_file = user.get("tokenFile")
    return SimpleConfiguration(
        str(cluster["server"]),
        token=user.get("token"),
        token_file=os.path.join(base, token_file) if token_file else None,
        ssl_ca_cert=_file(cluster, "certificate-authority", base),
        cert_file=_file(user, "client-certificate", base),
        key_file=_file(user, "client-key", base),
        verify_ssl=not cluster.get("insecure-skip-tls-verify", False),
    )


def read_kubeconfig(path: str) -> dict[str, Any] | None:
    """The kubeconfig as a dict (JSON or YAML), or None when it is not a mapping. OSError propagates."""
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        doc = orjson.loads(data)  # JSON is valid YAML: a generated kubeconfig is often JSON
    except orjson.JSONDecodeError:
        import yaml  # type: ignore[import-untyped]

        try:
            doc = yaml.safe_load(data)
        except yaml.YAMLError:
            return None
    return doc if isinstance(doc, dict) else None


def context_namespace(path: str, context: str | None) -> str | None:
    """The namespace of ``context`` (default: current-context) in a kubeconfig, if it sets one."""
    doc = read_kubeconfig(path)
    if doc is None:
        return None
    ctx = _named(doc.get("contexts"), context or doc.get("current-context"))
    namespace = (ctx or {}).get("namespace")
    return namespace if isinstance(namespace, str) and namespace else None


def _named(items: Any, name: Any) -> dict[str, Any] | None:
    for item in items or []:
        if isinstance(item, dict) and item.get("name") == name:
            # "context", "cluster" or "user": the one other key of the entry
            inner = next((v for k, v in item.items() if k != "name"), None)
            return inner if isinstance(inner, dict) else {}
    return None


def _file(section: dict[str, Any], key: str, base: str) -> str | None:
    """The path of a PEM file: as given (relative to the kubeconfig), or ``KEY-data`` written to a temp file."""
    if section.get(f"{key}-data"):
        with tempfile.NamedTemporaryFile("wb", prefix="eventrouter-kubeconfig-", delete=False) as fh:
            fh.write(base64.b64decode(section[f"{key}-data"]))
        atexit.register(_remove, fh.name)
        return fh.name
    value = section.get(key)
    return os.path.join(base, value) if value else None


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
