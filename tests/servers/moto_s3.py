"""moto's S3 server on loopback, for the S3 sink tests.

``MotoS3().start()`` runs ``moto.server.ThreadedMotoServer`` on a free 127.0.0.1 port and checks
that it answers; it raises if it does not, so the test using it fails (never skips).
:meth:`MotoS3.client` is a boto3 client pointed at it with the dummy credentials of :data:`ENV`.
"""

from __future__ import annotations

import gzip
import socket
import time
from typing import Any

import boto3
import orjson
from moto.server import ThreadedMotoServer

REGION = "us-east-1"
# dummy credentials: moto accepts any; tests put these in the environment (boto3's default chain)
ENV = {
    "AWS_ACCESS_KEY_ID": "AKIATESTTESTTEST",
    "AWS_SECRET_ACCESS_KEY": "dummy-secret-for-moto",
    "AWS_DEFAULT_REGION": REGION,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MotoS3:
    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server: ThreadedMotoServer | None = None

    def start(self, timeout: float = 20.0) -> MotoS3:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.client().list_buckets()
                return self
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto S3 server did not answer on {self.endpoint}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=ENV["AWS_SECRET_ACCESS_KEY"],
        )

    # ---- reading back what a sink wrote --------------------------------------------------------
    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", ()))

    def body(self, bucket: str, key: str) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()

    def lines(self, bucket: str, key: str) -> list[dict[str, Any]]:
        """The JSON Lines of one gzip object."""
        text = gzip.decompress(self.body(bucket, key))
        return [orjson.loads(line) for line in text.splitlines()]

    def all_lines(self, bucket: str, prefix: str = "") -> list[dict[str, Any]]:
        return [line for key in self.keys(bucket, prefix) for line in self.lines(bucket, key)]
