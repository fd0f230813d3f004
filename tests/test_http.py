"""eventrouter.http: the shared default TLS context of the HTTP sinks' clients."""

from __future__ import annotations

import httpx
import pytest

from eventrouter import http
from tests.servers.fake_webhook import FakeWebhook, TLSFiles


@pytest.fixture()
def tls(tmp_path):
    return TLSFiles.create(tmp_path)


@pytest.fixture()
def fresh_default_context(monkeypatch):
    """No shared context built yet, and a count of the CA bundle loads httpx does."""
    monkeypatch.setattr(http, "_default_context", None)
    loads: list[object] = []
    real = httpx.create_ssl_context

    def counting(*args, **kwargs):
        loads.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(httpx, "create_ssl_context", counting)
    return loads


def test_clients_without_tls_options_load_the_ca_bundle_once(tls, fresh_default_context, monkeypatch):
    # the trust comes from SSL_CERT_FILE, read as httpx reads it, once for every default client
    monkeypatch.setenv("SSL_CERT_FILE", tls.ca_file)
    server = FakeWebhook(tls=tls.server_context()).start()
    try:
        clients = [http.http_client(name, {}) for name in ("webhook", "elasticsearch", "dingtalk")]
        for client in clients:
            with client:
                assert client.post(server.url(), content=b"{}").status_code == 200
        assert len(server.requests) == 3
        assert fresh_default_context == [()]  # one context built, by default_ssl_context
    finally:
        server.stop()


def test_the_shared_context_verifies(tls, fresh_default_context):
    # certifi's CAs do not include the test CA: the default client refuses, a ca_file client connects
    server = FakeWebhook(tls=tls.server_context()).start()
    try:
        with http.http_client("webhook", {}) as client, pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY"):
            client.post(server.url(), content=b"{}")
        with http.http_client("webhook", {"ca_file": tls.ca_file}) as client:
            assert client.post(server.url(), content=b"{}").status_code == 200
        with http.http_client("webhook", {"insecure_skip_verify": True}) as client:
            assert client.post(server.url(), content=b"{}").status_code == 200
        assert len(server.requests) == 2
        # TLS options never touch the shared context: a later default client still refuses
        with http.http_client("webhook", {}) as client, pytest.raises(httpx.ConnectError):
            client.post(server.url(), content=b"{}")
        assert len(fresh_default_context) == 1
    finally:
        server.stop()
