"""A real InfluxDB 1.x on loopback for the InfluxDB sink tests (Debian's influxdb package).

``InfluxDB(tmp_path).start()`` writes a config (HTTP and RPC bound to free 127.0.0.1 ports,
meta/data/wal under the temp dir, reporting and monitoring off, authentication on), starts
``influxd`` and creates an admin user. A server that cannot start raises, so the test fails.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from tests.servers._process import log_tail, stop_process

INFLUXD = shutil.which("influxd") or "/usr/bin/influxd"

ADMIN = "admin"
ADMIN_PASSWORD = "influx-Adm1n-pw"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class InfluxDB:
    def __init__(self, base: Path) -> None:
        self.base = Path(base)
        self.port = free_port()
        self.rpc_port = free_port()
        self.log = self.base / "influxd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._admin_created = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> InfluxDB:
        self.base.mkdir(parents=True, exist_ok=True)
        config = self.base / "influxdb.conf"
        config.write_text(
            f"""reporting-disabled = true
bind-address = "127.0.0.1:{self.rpc_port}"
[meta]
  dir = "{self.base / "meta"}"
[data]
  dir = "{self.base / "data"}"
  wal-dir = "{self.base / "wal"}"
  query-log-enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:{self.port}"
  log-enabled = false
  auth-enabled = true
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
[subscriber]
  enabled = false
"""
        )
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([INFLUXD, "-config", str(config)], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"influxd exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/ping", timeout=1).status_code == 204:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"influxd did not answer /ping in {timeout}s:\n{self.log_tail()}")
            time.sleep(0.1)
        if self._admin_created:
            return self  # a restart: the meta directory keeps the users
        # with auth on, the first admin user may be created without credentials
        response = httpx.post(
            f"{self.url}/query", data={"q": f"CREATE USER {ADMIN} WITH PASSWORD '{ADMIN_PASSWORD}' WITH ALL PRIVILEGES"}
        )
        if response.status_code != 200 or '"error"' in response.text:
            raise RuntimeError(f"cannot create the admin user: {response.status_code} {response.text}")
        self._admin_created = True
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc, grace=20)

    def log_tail(self, lines: int = 20) -> str:
        return log_tail(self.log, lines)

    def query(self, q: str, db: str | None = None) -> dict[str, Any]:
        """Run InfluxQL as the admin and return the first result (``series``, or ``error``)."""
        params = {"q": q, **({"db": db} if db else {})}
        response = httpx.post(f"{self.url}/query", data=params, auth=(ADMIN, ADMIN_PASSWORD), timeout=10)
        response.raise_for_status()
        return response.json()["results"][0]

    def points(self, measurement: str, db: str) -> list[dict[str, Any]]:
        """Every point of a measurement as {column: value} dicts (tags and fields), oldest first."""
        result = self.query(f'SELECT * FROM "{measurement}"', db)
        points = []
        for series in result.get("series", []):
            for values in series["values"]:
                points.append({k: v for k, v in zip(series["columns"], values, strict=True) if v is not None})
        return points
