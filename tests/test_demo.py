"""`make demo` keeps everything it writes in its temporary directory: run from a fresh clone, it leaves the
checkout as it was (no checkpoint, disk buffer or chat state that a later run would pick up)."""

from __future__ import annotations

from pathlib import Path

import pytest

from eventrouter import demo


def test_the_demo_writes_nothing_into_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, list[str]] = {}

    def fake_router(argv: list[str]) -> int:
        seen["argv"] = list(argv)
        return 0

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo, "cli_main", fake_router)
    monkeypatch.setenv("DEMO_SECONDS", "0")
    assert demo.main() == 0
    flags = dict(arg.split("=", 1) for arg in seen["argv"] if arg.startswith("--") and "=" in arg)
    scratch = Path(flags["--checkpoint"].removeprefix("file:")).parent
    assert scratch != tmp_path and not scratch.exists()  # the temporary directory, removed at the end
    assert Path(flags["--data-dir"]).parent == scratch
    assert list(tmp_path.iterdir()) == []
