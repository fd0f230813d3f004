"""A real MariaDB server on loopback for the MySQL sink tests (Debian's mariadb-server).

``MariaDB(tmp_path).start()`` initialises a data directory, starts ``mariadbd`` on a free
127.0.0.1 port and creates an application user with a password (so a wrong password is refused
for real). ``stop()``/``start()`` restart it on the same port and data directory. A server that
cannot start raises, so the test using it fails (never skips).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pymysql

from tests.servers._process import log_tail, stop_process

MARIADBD = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
INSTALL_DB = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"

USER = "eventrouter"
PASSWORD = "s3cr3t-Pa55word"
DATABASE = "k8s"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MariaDB:
    def __init__(self, base: Path, tls: tuple[Path, Path] | None = None) -> None:
        """``tls``: (certificate chain PEM, private key PEM) to serve TLS as well as plain connections."""
        self.base = Path(base)
        self.tls = tls
        self.datadir = self.base / "data"
        self.socket = self.base / "mysqld.sock"
        self.log = self.base / "error.log"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    # ---- lifecycle ------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> MariaDB:
        fresh = not self.datadir.exists()
        if fresh:
            self._install()
        self.proc = subprocess.Popen(
            [
                MARIADBD,
                "--no-defaults",
                f"--datadir={self.datadir}",
                f"--socket={self.socket}",
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                f"--user={_user()}",
                f"--pid-file={self.base / 'mysqld.pid'}",
                f"--log-error={self.log}",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=32M",
                "--skip-log-bin",
                "--performance-schema=OFF",
                "--max-connections=50",
                *([f"--ssl-cert={self.tls[0]}", f"--ssl-key={self.tls[1]}"] if self.tls else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mariadbd exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.root().close()
                break
            except pymysql.err.OperationalError as exc:
                if time.monotonic() > deadline:
                    self.stop()
                    problem = f"mariadbd did not accept connections in {timeout}s:\n{self.log_tail()}"
                    raise RuntimeError(problem) from exc
                time.sleep(0.1)
        if fresh:
            self._create_user()
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc, grace=30)

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), as a crashed or OOM-killed server would."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def log_tail(self, lines: int = 20) -> str:
        return log_tail(self.log, lines)

    def _install(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [
                INSTALL_DB,
                "--no-defaults",
                f"--datadir={self.datadir}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                f"--user={_user()}",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")

    def _create_user(self) -> None:
        with self.root() as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{DATABASE}` CHARACTER SET utf8mb4")
            cur.execute(f"CREATE USER IF NOT EXISTS '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'")
            cur.execute(f"GRANT ALL PRIVILEGES ON `{DATABASE}`.* TO '{USER}'@'%'")
            cur.execute("FLUSH PRIVILEGES")

    # ---- helpers for tests ----------------------------------------------------------------------
    def root(self, database: str | None = None) -> pymysql.connections.Connection:
        return pymysql.connect(
            host="127.0.0.1",
            port=self.port,
            user="root",
            password="",
            database=database,
            charset="utf8mb4",
            autocommit=True,
            connect_timeout=5,
        )

    def query(self, sql: str, args: tuple | None = None, database: str = DATABASE) -> list[dict]:
        with self.root(database) as conn, conn.cursor(pymysql.cursors.DictCursor) as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())

    def execute(self, sql: str, database: str = DATABASE) -> None:
        with self.root(database) as conn, conn.cursor() as cur:
            cur.execute(sql)

    def dsn(self, user: str = USER, password: str = PASSWORD, database: str = DATABASE) -> str:
        """The kube-eventer (Go driver) DSN for this server."""
        return f"{user}:{password}@tcp(127.0.0.1:{self.port})/{database}?charset=utf8mb4"


def _user() -> str:
    # mariadbd refuses to run as root unless told to; as another user it runs as that user
    return "root" if os.geteuid() == 0 else os.environ.get("USER", "nobody")
