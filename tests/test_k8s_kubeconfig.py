"""The kubeconfig/in-cluster reader that spares start-up the import of the kubernetes package."""

import base64
from pathlib import Path

import orjson
import pytest

from eventrouter.errors import ConfigError
from eventrouter.sources.k8s_kubeconfig import context_namespace, in_cluster_configuration, kubeconfig_configuration


def write(path: Path, users: dict, cluster: dict, current: str = "a", yaml: bool = False) -> str:
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": current,
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": name, "user": user} for name, user in users.items()],
        "contexts": [{"name": name, "context": {"cluster": "c", "user": name, "namespace": f"ns-{name}"}}
                     for name in users],
    }
    if yaml:
        import yaml as pyyaml

        path.write_text(pyyaml.safe_dump(doc))
    else:
        path.write_bytes(orjson.dumps(doc))
    return str(path)


@pytest.mark.parametrize("yaml", [False, True])
def test_token_ca_and_context(tmp_path, yaml):
    (tmp_path / "ca.pem").write_text("CA")
    path = write(tmp_path / "kc", {"a": {"token": "tok-a"}, "b": {"tokenFile": "b.token"}},
                 {"server": "https://api:6443", "certificate-authority": "ca.pem"}, yaml=yaml)
    (tmp_path / "b.token").write_text("tok-b\n")
    a = kubeconfig_configuration(path, None)
    assert a is not None and a.host == "https://api:6443" and a.verify_ssl
    assert a.ssl_ca_cert == str(tmp_path / "ca.pem")  # relative to the kubeconfig
    assert a.get_api_key_with_prefix("BearerToken") == "Bearer tok-a"
    b = kubeconfig_configuration(path, "b")
    assert b is not None and b.get_api_key_with_prefix("BearerToken") == "Bearer tok-b"
    (tmp_path / "b.token").write_text("rotated")  # read on every request
    assert b.get_api_key_with_prefix("BearerToken") == "Bearer rotated"
    assert context_namespace(path, None) == "ns-a" and context_namespace(path, "b") == "ns-b"


def test_client_certificate_data_goes_to_files(tmp_path):
    path = write(tmp_path / "kc", {"a": {"client-certificate-data": base64.b64encode(b"CERT").decode(),
                                         "client-key-data": base64.b64encode(b"KEY").decode()}},
                 {"server": "https://api", "certificate-authority-data": base64.b64encode(b"CA").decode(),
                  "insecure-skip-tls-verify": True})
    cfg = kubeconfig_configuration(path, None)
    assert cfg is not None and not cfg.verify_ssl
    assert [Path(p).read_bytes() for p in (cfg.ssl_ca_cert, cfg.cert_file, cfg.key_file)] == [b"CA", b"CERT", b"KEY"]
    assert cfg.get_api_key_with_prefix("BearerToken") is None


@pytest.mark.parametrize("user", [{"exec": {"command": "aws"}}, {"auth-provider": {"name": "oidc"}},
                                  {"username": "u", "password": "p"}])
def test_what_needs_the_full_loader_returns_none(tmp_path, user):
    assert kubeconfig_configuration(write(tmp_path / "kc", {"a": user}, {"server": "https://api"}), None) is None
    assert kubeconfig_configuration(write(tmp_path / "kc2", {"a": {}}, {"server": "https://api"}), "nope") is None


def test_in_cluster(tmp_path, monkeypatch):
    token, ca = tmp_path / "token", tmp_path / "ca.crt"
    token.write_text("sa-token")
    ca.write_text("CA")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    cfg = in_cluster_configuration(str(token), str(ca))
    assert (cfg.host, cfg.ssl_ca_cert) == ("https://[fd00::1]:6443", str(ca))
    assert cfg.get_api_key_with_prefix("BearerToken") == "Bearer sa-token"
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    with pytest.raises(ConfigError):
        in_cluster_configuration(str(token), str(ca))
