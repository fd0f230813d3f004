"""How the Kubernetes source reaches the API server: credentials from the ``kubernetes`` client's
config loaders (in-cluster and simple kubeconfigs read by k8s_kubeconfig.py, without importing it),
HTTP done here with httpx.

The loaders (in-cluster service account, kubeconfig with context and exec plugins) fill a
``kubernetes.client.Configuration``; we read its host, bearer token (through
``get_api_key_with_prefix``, which runs the loader's refresh hook), CA, client cert/key and verify
flag. A 401 reloads the whole configuration once (an exec plugin runs again) and retries.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from eventrouter.errors import ConfigError

log = logging.getLogger("eventrouter.sources.kubernetes")

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
SA_TOKEN = f"{SA_DIR}/token"
SA_NAMESPACE = f"{SA_DIR}/namespace"


def in_cluster() -> bool:
    import os

    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and os.path.exists(SA_TOKEN)


class ApiClient:
    """One httpx client to the API server with fresh credentials on every request."""

    def __init__(self, load: Callable[[], Any], *, host: str | None = None, insecure: bool = False,
                 token_file: str | None = None, connect_timeout: float = 10.0) -> None:
        self._load = load
        self._host_override = host
        self._insecure = insecure
        self._token_file = token_file
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._streams: set[httpx.Response] = set()  # open watch streams (one per namespace), for abort()
        self.config = load()
        self.host = (host or self.config.host or "").rstrip("/")
        if not self.host:
            raise ConfigError("--source=kubernetes: no API server address: give kubernetes:https://HOST "
                              "or a kubeconfig")
        self.client = self._new_client()

    def _new_client(self) -> httpx.Client:
        cfg = self.config
        verify: Any = True
        if self._insecure or not getattr(cfg, "verify_ssl", True) or self.host.startswith("http:"):
            # plain http: no TLS context to build (loading the CA store costs ~0.1 s of start-up)
            verify = False
        elif self.host.startswith("https"):
            ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None)
            if cfg.cert_file:
                ctx.load_cert_chain(cfg.cert_file, cfg.key_file or None)
            verify = ctx
        timeout = httpx.Timeout(30.0, connect=self._connect_timeout)
        return httpx.Client(base_url=self.host, verify=verify, timeout=timeout, trust_env=False,
                            headers={"Accept": "application/json", "User-Agent": "eventrouter"})

    def _auth(self) -> dict[str, str]:
        if self._token_file:
            with open(self._token_file, encoding="utf-8") as fh:
                return {"Authorization": f"Bearer {fh.read().strip()}"}
        value = self.config.get_api_key_with_prefix("BearerToken", alias="authorization")
        if not value:
            return {}
        if value[:7].lower() == "bearer ":
            value = value[7:]
        return {"Authorization": f"Bearer {value.strip()}"}

    def reload(self) -> None:
        """Credentials were refused: load the configuration again (re-runs exec plugins)."""
        try:
            self.config = self._load()
        except Exception as exc:  # keep the old credentials; the next 401 tries again
            log.warning("reloading Kubernetes credentials failed: %s", type(exc).__name__)

    def request(self, method: str, path: str, *, params: Any = None, json: Any = None,
                timeout: float | None = None, headers: dict[str, str] | None = None) -> httpx.Response:
        """One request; a 401 reloads the credentials and retries once. Transport errors propagate."""
        stale_retried = False
        for attempt in (1, 2):
            sent = self._auth() if headers is None else {**headers, **self._auth()}
            wait: Any = httpx.USE_CLIENT_DEFAULT if timeout is None else timeout
            try:
                resp = self.client.request(method, path, params=params, json=json, headers=sent, timeout=wait)
            except httpx.RemoteProtocolError:
                if stale_retried:
                    raise
                # a kept-alive connection the server had closed between requests: once more, on a fresh one
                stale_retried = True
                resp = self.client.request(method, path, params=params, json=json, headers=sent, timeout=wait)
            if resp.status_code != 401 or attempt == 2:
                return resp
            resp.close()
            self.reload()
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def stream(self, path: str, params: Any, read_timeout: float) -> Iterator[httpx.Response]:
        """A streaming GET; :meth:`abort` from another thread ends a blocked read at once."""
        timeout = httpx.Timeout(read_timeout, connect=self._connect_timeout)
        for attempt in (1, 2):
            request = self.client.build_request("GET", path, params=params, headers=self._auth(), timeout=timeout)
            resp = self.client.send(request, stream=True)
            if resp.status_code == 401 and attempt == 1:
                resp.close()
                self.reload()
                continue
            with self._lock:
                self._streams.add(resp)
            try:
                yield resp
            finally:
                with self._lock:
                    self._streams.discard(resp)
                resp.close()
            return

    def abort(self) -> None:
        """Wake every thread blocked reading an open stream (one watch per namespace): shut the sockets down."""
        with self._lock:
            streams = list(self._streams)
        for resp in streams:
            stream = resp.extensions.get("network_stream")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.client.close()


def load_configuration(*, kubeconfig: str | None, context: str | None, in_cluster_mode: bool) -> Callable[[], Any]:
    """A loader function returning a fresh ``kubernetes.client.Configuration`` (or, for in-cluster and
    simple kubeconfigs, the same attributes read without importing ``kubernetes``: start-up time)."""

    def load() -> Any:
        from eventrouter.sources import k8s_kubeconfig

        if in_cluster_mode:
            return k8s_kubeconfig.in_cluster_configuration(SA_TOKEN, f"{SA_DIR}/ca.crt")
        if kubeconfig is None:
            return k8s_kubeconfig.SimpleConfiguration("")  # the URL's host, no credentials
        simple = k8s_kubeconfig.kubeconfig_configuration(kubeconfig, context)
        if simple is not None:
            return simple
        from kubernetes import client as k8s_client
        from kubernetes import config as k8s_config

        cfg = k8s_client.Configuration()  # exec plugins, auth-provider, ...: the full loader
        k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, context=context, client_configuration=cfg, persist_config=False)
        return cfg

    return load
