"""sinks/_aws.py: the AWS sinks' clients take each source of botocore's default credential chain.

The S3 sink opens (HeadBucket) against a local receiver that records the signed requests, so each test
asserts which access key signed them: static keys from the flag, the environment, the shared credentials
file, web identity (EKS IRSA: AssumeRoleWithWebIdentity on moto's STS), container credentials (EKS Pod
Identity) and instance metadata (IMDSv2). Nothing else is in the environment, so a source that stopped
working would fail the open with NoCredentialsError instead of signing with another key.
"""

from __future__ import annotations

import http.server
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from eventrouter import PermanentError, SinkURL
from sinks.firehose import FirehoseSink
from sinks.s3 import S3Sink
from tests.servers.moto_s3 import MotoS3

KEY, SECRET, TOKEN = "AKIAFROMSOURCE000001", "secret-from-the-source", "token-from-the-source"
EXPIRES = "2099-01-01T00:00:00Z"


class Recorder:
    """An HTTP server on 127.0.0.1 that records each request (method, path, headers) and answers through
    ``answer(handler) -> (status, body)``; by default 200 and an empty body (S3's HeadBucket)."""

    def __init__(self, answer: Callable[[Any], tuple[int, bytes]] | None = None) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        owner, reply = self, answer or (lambda handler: (200, b""))

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                owner.requests.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
                status, body = reply(self)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_PUT = do_HEAD = do_POST = _handle

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def signing_keys(self) -> list[str]:
        return [re.search(r"Credential=([^/]+)/", h["authorization"]).group(1)  # type: ignore[union-attr]
                for _, _, h in self.requests if "authorization" in h]


@pytest.fixture(autouse=True)
def bare_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No credential source at all unless a test adds one (no ~/.aws, no instance metadata)."""
    import os

    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def s3() -> Iterator[Recorder]:
    recorder = Recorder()
    yield recorder
    recorder.close()


def open_s3(recorder: Recorder, tmp_path: Path, extra: str = "") -> None:
    url = SinkURL.parse(f"s3:s3://bkt?region=eu-west-1&endpoint_url={recorder.url}&force_path_style=true"
                        f"&store_dir={tmp_path / 'spool'}{extra}")
    sink = S3Sink(url, S3Sink.parse_options(url))
    try:
        sink.open()
    finally:
        sink.close()


def test_no_source_means_no_credentials(s3: Recorder, tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="no AWS credentials"):
        open_s3(s3, tmp_path)
    assert s3.requests == []


def test_static_keys_of_the_flag(s3: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFROMTHEENVIRONMT")  # the flag's keys come first
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    open_s3(s3, tmp_path, f"&access_key_id={KEY}&secret_access_key={SECRET}")
    assert s3.signing_keys() == [KEY]
    # and the region of the flag: eu-west-1 in the credential scope
    assert "/eu-west-1/s3/aws4_request" in s3.requests[0][2]["authorization"]


def test_environment(s3: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    open_s3(s3, tmp_path)
    assert s3.signing_keys() == [KEY]
    assert s3.requests[0][2]["x-amz-security-token"] == TOKEN


def test_shared_credentials_file_and_profile(s3: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    credentials = tmp_path / "credentials"
    credentials.write_text(f"[default]\naws_access_key_id = AKIADEFAULTPROFILE01\naws_secret_access_key = x\n"
                           f"[archive]\naws_access_key_id = {KEY}\naws_secret_access_key = {SECRET}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_PROFILE", "archive")
    open_s3(s3, tmp_path)
    assert s3.signing_keys() == [KEY]


def test_web_identity_irsa(s3: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    moto = MotoS3().start()  # moto's server answers STS too
    try:
        token_file = tmp_path / "token"
        token_file.write_text("eyJhbGciOiJSUzI1NiJ9.e30.c2ln")  # what EKS projects into the pod
        monkeypatch.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/eventrouter")
        monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token_file))
        monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto.endpoint)
        open_s3(s3, tmp_path)
    finally:
        moto.stop()
    keys = s3.signing_keys()
    assert len(keys) == 1 and keys[0].startswith("ASIA")  # temporary keys STS issued for the role
    assert s3.requests[0][2]["x-amz-security-token"]


def test_container_credentials_pod_identity(s3: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    body = orjson.dumps({"AccessKeyId": KEY, "SecretAccessKey": SECRET, "Token": TOKEN, "Expiration": EXPIRES})
    agent = Recorder(lambda handler: (200, body))  # the EKS Pod Identity agent
    token_file = tmp_path / "eks-pod-identity-token"
    token_file.write_text("pod-identity-token")
    try:
        monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", f"{agent.url}/v1/credentials")
        monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", str(token_file))
        open_s3(s3, tmp_path)
    finally:
        agent.close()
    assert s3.signing_keys() == [KEY]
    assert agent.requests[0][2]["authorization"] == "pod-identity-token"


def test_instance_metadata_imdsv2(s3: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def imds(handler: Any) -> tuple[int, bytes]:
        if handler.command == "PUT" and handler.path == "/latest/api/token":
            return 200, b"imds-session-token"
        if handler.headers.get("X-aws-ec2-metadata-token") != "imds-session-token":
            return 401, b""
        if handler.path == "/latest/meta-data/iam/security-credentials/":
            return 200, b"node-role"
        if handler.path == "/latest/meta-data/iam/security-credentials/node-role":
            return 200, orjson.dumps({"Code": "Success", "AccessKeyId": KEY, "SecretAccessKey": SECRET,
                                      "Token": TOKEN, "Expiration": EXPIRES})
        return 404, b""

    metadata = Recorder(imds)
    try:
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "false")
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", metadata.url)
        open_s3(s3, tmp_path)
    finally:
        metadata.close()
    assert s3.signing_keys() == [KEY]
    assert metadata.requests[0][:2] == ("PUT", "/latest/api/token")


def test_firehose_takes_the_same_chain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    answer = orjson.dumps({"DeliveryStreamDescription": {"DeliveryStreamStatus": "ACTIVE"}})
    firehose = Recorder(lambda handler: (200, answer))
    credentials = tmp_path / "credentials"
    credentials.write_text(f"[default]\naws_access_key_id = {KEY}\naws_secret_access_key = {SECRET}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    try:
        url = SinkURL.parse(f"firehose:events?region=eu-west-1&endpoint_url={firehose.url}")
        sink = FirehoseSink(url, FirehoseSink.parse_options(url))
        sink.open()
        sink.close()
    finally:
        firehose.close()
    assert firehose.signing_keys() == [KEY]
    assert "/eu-west-1/firehose/aws4_request" in firehose.requests[0][2]["authorization"]


@pytest.mark.parametrize("region", ["us-east-1", "eu-central-1", "ap-southeast-2", "cn-north-1", "us-gov-west-1",
                                    "us-iso-east-1", "il-central-1"])
@pytest.mark.parametrize("service", ["s3", "firehose", "sts", "sso", "sso-oidc"])
def test_the_trimmed_endpoint_data_resolves_as_botocores_own(service: str, region: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The loader keeps only the services this process uses in endpoints.json (4 MB less held): each of them
    gets the same endpoint URL and signing region as from botocore's untrimmed data."""
    import botocore.session

    from eventrouter.options import Secret
    from sinks import _aws

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    opts = {"region": region, "endpoint_url": "", "access_key_id": KEY, "secret_access_key": Secret(SECRET),
            "session_token": None}
    ours = _aws.aws_client(service, opts)
    theirs = botocore.session.Session().create_client(service, region_name=region)
    assert ours.meta.endpoint_url == theirs.meta.endpoint_url
    assert ours.meta.region_name == theirs.meta.region_name
    assert ours.meta.partition == theirs.meta.partition
    assert ours._request_signer._signing_name == theirs._request_signer._signing_name
    assert ours._request_signer._region_name == theirs._request_signer._region_name
    loader = _aws._data_loader(None)
    kept = {name for partition in loader.load_data("endpoints")["partitions"] for name in partition["services"]}
    assert kept <= _aws.ENDPOINT_SERVICES and "s3" in kept


def test_the_s3_client_keeps_the_operations_the_sink_uses_and_their_shapes() -> None:
    """The S3 model is trimmed to the managed upload's operations (and what botocore calls for them): each
    keeps its whole input and output, and a model without one of them is left whole."""
    import botocore.session

    from eventrouter.options import Secret
    from sinks import _aws

    opts = {"region": "us-east-1", "endpoint_url": "", "access_key_id": KEY, "secret_access_key": Secret(SECRET),
            "session_token": None}
    ours = _aws.aws_client("s3", opts).meta.service_model
    theirs = botocore.session.Session().get_service_model("s3")
    assert set(ours.operation_names) == _aws.S3_OPERATIONS
    for name in _aws.S3_OPERATIONS:
        mine, full = ours.operation_model(name), theirs.operation_model(name)
        assert mine.input_shape.members.keys() == full.input_shape.members.keys()
        assert mine.output_shape.members.keys() == full.output_shape.members.keys()
        assert mine.metadata == full.metadata and mine.http["method"] == full.http["method"]
        # botocore moves "/{Bucket}" out of an S3 operation's URI the first time a client calls it (the models
        # are shared by the process's clients, so an earlier test's call may have done it already)
        assert mine.http["requestUri"] in (full.http["requestUri"], full.http["requestUri"].removeprefix("/{Bucket}"))
    partial = {"operations": {"PutObject": {"input": {"shape": "X"}}}, "shapes": {"X": {"type": "structure"}}}
    assert _aws._used_operations(partial, _aws.S3_OPERATIONS) is partial
