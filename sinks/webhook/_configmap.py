"""kube-eventer's ``custom_body_configmap``: the body template read from a ConfigMap, once, through the
Kubernetes API (in-cluster service account, else ``KUBECONFIG`` / ``~/.kube/config``)."""

from __future__ import annotations

import os
import ssl
from typing import Any

import httpx
import orjson

from eventrouter import SinkConfigError

CONFIGMAP_KEY = "content"  # kube-eventer's key (#138)


def read_configmap(sink: str, namespace: str, name: str, timeout: float) -> str:
    """GET /api/v1/namespaces/NS/configmaps/NAME with the in-cluster config, else KUBECONFIG/~/.kube/config."""
    from kubernetes import client, config

    option = "custom_body_configmap"
    where = f"ConfigMap {namespace}/{name}"
    cfg = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        try:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=os.environ.get("KUBECONFIG") or "~/.kube/config", client_configuration=cfg)
        except (config.ConfigException, OSError) as exc:
            raise SinkConfigError(sink, f"cannot read {where}: no in-cluster service account and no usable "
                                  f"kubeconfig ({exc})", option) from None
    headers = {"Accept": "application/json"}
    # the key is "BearerToken" in current clients, "authorization" in older ones
    token = cfg.get_api_key_with_prefix("BearerToken", alias="authorization")
    if token:
        headers["Authorization"] = token
    auth = httpx.BasicAuth(cfg.username, cfg.password or "") if cfg.username else None
    verify: Any = False
    try:
        if cfg.verify_ssl:
            verify = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None)
            if cfg.cert_file:
                verify.load_cert_chain(cfg.cert_file, cfg.key_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise SinkConfigError(sink, f"cannot read {where}: bad TLS files in the kubeconfig: {exc}", option) from None
    url = f"{cfg.host.rstrip('/')}/api/v1/namespaces/{namespace}/configmaps/{name}"
    try:
        with httpx.Client(verify=verify, timeout=timeout) as http:
            response = http.get(url, headers=headers, auth=auth)
    except httpx.HTTPError as exc:
        raise SinkConfigError(sink, f"cannot read {where} from {cfg.host}: {type(exc).__name__}: {exc}",
                              option) from None
    if response.status_code != 200:
        hint = {403: " (the service account needs RBAC 'get' on configmaps)", 404: " (it does not exist)"}
        raise SinkConfigError(sink, f"cannot read {where}: HTTP {response.status_code}"
                              f"{hint.get(response.status_code, '')}", option)
    try:
        content = orjson.loads(response.content).get("data", {}).get(CONFIGMAP_KEY)
    except (orjson.JSONDecodeError, AttributeError):
        content = None
    if not content:
        raise SinkConfigError(sink, f"{where} has no key '{CONFIGMAP_KEY}' (kube-eventer's key for the body "
                              "template)", option)
    return str(content)
