"""docs/plugins.md followed by a stranger: its commands, taken from the markdown, build the example plugin in a
fresh virtualenv outside the repository; its code imports only the public API.

The set-up block is extracted from the guide at test time (never copied here), so the guide cannot drift
from what works: a changed command is run as changed.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import eventrouter
import eventrouter.testing

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "plugins.md"
MARKER = "<!-- tests/test_plugin_guide.py runs this block as written"


def setup_block() -> str:
    text = GUIDE.read_text()
    assert MARKER in text, "docs/plugins.md lost its tested set-up block"
    match = re.search(r"```sh\n(.*?)```", text[text.index(MARKER):], re.S)
    assert match
    return match.group(1)


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)


def test_the_guide_s_code_imports_only_the_public_api() -> None:
    allowed = {"eventrouter": set(eventrouter.__all__), "eventrouter.testing": set(eventrouter.testing.__all__)}
    for block in python_blocks():
        try:
            tree = ast.parse(block)
        except SyntaxError:
            continue  # option declaration fragments (a list of Option(...) lines) are not modules
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("eventrouter"):
                assert node.module in allowed, f"docs/plugins.md imports {node.module}"
                assert {a.name for a in node.names} <= allowed[node.module], node.module
            if isinstance(node, ast.Import):
                assert all(a.name in ("eventrouter", "eventrouter.testing") or not a.name.startswith("eventrouter")
                           for a in node.names)
    assert any("from eventrouter.testing import" in block for block in python_blocks())


def test_the_guide_says_how_to_install_eventrouter() -> None:
    block = setup_block()
    assert "EVENTROUTER_SRC" in block and "pip install" in block
    assert "pip install eventrouter\n" not in block  # not on a public index


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_guide_builds_the_example_plugin_in_a_fresh_venv(tmp_path: Path) -> None:
    """A copy of eventrouter's checkout and of the example plugin, the guide's commands run in the plugin's
    directory: the sink is listed with its distribution, the plugin's own tests (end to end included) pass,
    and nothing is left behind in the plugin's source tree but the venv and what pip makes."""
    checkout = tmp_path / "eventrouter"
    ignore = shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info", "build", "dist", ".eventrouter",
                                    ".pytest_cache", ".ruff_cache", ".mypy_cache")
    checkout.mkdir()
    for name in ("pyproject.toml", "README.md", "eventrouter", "sinks"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, checkout / name, ignore=ignore)
        else:
            shutil.copy2(source, checkout / name)
    plugin = tmp_path / "eventrouter-sink-jsonfile"
    shutil.copytree(ROOT / "examples" / "eventrouter-sink-jsonfile", plugin, ignore=ignore)
    before = {p.relative_to(plugin) for p in plugin.rglob("*")}

    # the guide's block, as written, except where the user's checkout is
    script = re.sub(r'^export EVENTROUTER_SRC=.*$', f'export EVENTROUTER_SRC="{checkout}"', setup_block(), flags=re.M)
    assert str(checkout) in script
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PYTEST"))}
    env["PIP_CONSTRAINT"] = str(ROOT / "constraints.txt")  # resolve as the project does (no backtracking)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=plugin, env=env, capture_output=True,
                          text=True, timeout=840)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    listed = [line for line in proc.stdout.splitlines() if line.startswith("jsonfile ")]
    assert listed and "(eventrouter-sink-jsonfile 0.1.0)" in listed[0], proc.stdout[-3000:]
    assert re.search(r"^\d+ passed", proc.stdout.strip().splitlines()[-1]), proc.stdout[-3000:]
    assert "failed" not in proc.stdout.strip().splitlines()[-1]
    # eventrouter came from the wheel the guide built, not from this repository
    where = subprocess.run([str(plugin / ".venv" / "bin" / "python"), "-c",
                            "import eventrouter, eventrouter.testing; print(eventrouter.__file__)"],
                           capture_output=True, text=True, check=True, env=env, cwd=tmp_path).stdout
    assert str(plugin / ".venv") in where
    made = {p.relative_to(plugin) for p in plugin.rglob("*")} - before
    leftovers = {p for p in made if p.parts[0] not in (".venv", "eventrouter_sink_jsonfile.egg-info")
                 and "__pycache__" not in p.parts and ".pytest_cache" not in p.parts}
    assert leftovers == set()  # no .eventrouter/checkpoint.json, no data dir, no log in the source tree


def test_docs_event_md_lists_every_field() -> None:
    """docs/event.md is the Event reference: each field of Event and InvolvedObject has its row."""
    import dataclasses

    text = (ROOT / "docs" / "event.md").read_text()
    rows = set(re.findall(r"^\| `(\w+)` \|", text, re.M))
    assert rows == {f.name for f in dataclasses.fields(eventrouter.Event)}
    for field in dataclasses.fields(eventrouter.InvolvedObject):
        assert f"`{field.name}`" in text, field.name
