"""Stopping a real server process and reading its log, shared by the server fixtures."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path


def stop_process(proc: subprocess.Popen[bytes] | None, grace: float) -> None:
    """SIGTERM, wait up to ``grace`` seconds for a clean shutdown, then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def log_tail(log: Path, lines: int = 20) -> str:
    """The last lines of a server's log, for the error a test shows when the server did not start."""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
