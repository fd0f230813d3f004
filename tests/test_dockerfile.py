"""The Dockerfile, checked without Docker.

Its structure is read (multi-stage on python:3.11-slim, non-root numeric user, read-only-root
friendly, ENTRYPOINT eventrouter, JSON logs by default), and its ``RUN pip ...`` steps are run
for real: the build stage's in one fresh virtualenv (with the files its COPY lines copy, filtered
by .dockerignore), the final stage's in a second fresh virtualenv, offline from the wheels the
first one built. Then the installed ``eventrouter`` runs ``--help``, ``sinks`` and a replay.

pip resolution is pinned to the development venv's versions (PIP_CONSTRAINT): against this
machine's local package mirror, an unpinned resolve backtracks through hundreds of boto3 releases.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
BASE_PYTHON = getattr(sys, "_base_executable", sys.executable)  # the interpreter behind .venv: a fresh venv


@dataclass
class Stage:
    base: str
    name: str | None
    args: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    steps: list[tuple[str, str]] = field(default_factory=list)  # (instruction, rest)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, pending = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        keyword, _, rest = whole.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def substitute(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m.group(1) or m.group(2), m.group(0)), text)


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, rest in instructions(text):
        stage = stages[-1] if stages else None
        if keyword == "FROM":
            parts = substitute(rest, global_args).split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        elif keyword == "ARG":
            key, _, default = rest.partition("=")
            (stage.args if stage else global_args)[key] = default
        elif stage is None:
            raise AssertionError(f"{keyword} before FROM")
        elif keyword == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                stage.env[key] = value
        elif keyword == "WORKDIR":
            stage.workdir = rest
        stage_steps = stage.steps if stage else None
        if stage_steps is not None and keyword != "FROM":
            stage_steps.append((keyword, rest))
    return global_args, stages


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse(DOCKERFILE.read_text())


def test_structure(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = dockerfile
    assert [s.base for s in stages] == ["python:3.11-slim", "python:3.11-slim"]
    build, final = stages
    assert build.name == "build"
    final_steps = dict(final.steps)
    # non-root, numeric (runAsNonRoot can verify it), and the user exists in the image
    assert final_steps["USER"] == "10001:10001"
    assert any("useradd" in rest and "--uid 10001" in rest for k, rest in final.steps if k == "RUN")
    # state only under a writable volume; HOME and TMPDIR point at writable places; no .pyc writes
    assert final.workdir == "/var/lib/eventrouter"
    assert final_steps["VOLUME"] == '["/var/lib/eventrouter"]'
    assert final.env["HOME"] == "/var/lib/eventrouter"
    assert final.env["TMPDIR"] == "/tmp"
    assert final.env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert final.env["EVENTROUTER_LOG_FORMAT"] == "json"
    assert final_steps["ENTRYPOINT"] == '["eventrouter"]'
    assert final_steps["EXPOSE"] == "8084"
    # the final stage copies nothing from the build context: only wheels, through a bind mount
    assert not [rest for k, rest in final.steps if k == "COPY"]


def dockerignore_allows(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; ``!`` re-includes."""
    allowed = True
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        pattern = pattern.replace("**/", "*")
        parts = path.split("/")
        if any(fnmatch.fnmatch("/".join(parts[: i + 1]), pattern) for i in range(len(parts))) or fnmatch.fnmatch(
            path, pattern
        ):
            allowed = negate
    return allowed


def copy_context(src: str, dest: Path) -> None:
    source = ROOT / src
    if source.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest)
        return
    for path in source.rglob("*"):
        rel = path.relative_to(ROOT).as_posix()
        if path.is_file() and dockerignore_allows(rel):
            target = dest / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


def run_pip_steps(stage: Stage, global_args: dict[str, str], roots: dict[str, Path], venv: Path) -> list[str]:
    """Run the stage's COPY and ``RUN pip`` lines with container paths mapped into ``roots``."""

    def host(path: str) -> str:
        for prefix, mapped in sorted(roots.items(), key=lambda kv: -len(kv[0])):
            if path == prefix or path.startswith(prefix + "/"):
                return str(mapped) + path[len(prefix) :]
        raise AssertionError(f"no host directory for container path {path}")

    values = {**global_args, **stage.args, **stage.env}
    workdir = host(stage.workdir)
    ran = []
    for keyword, rest in stage.steps:
        if keyword == "COPY":
            *sources, target = shlex.split(rest)
            assert not any(s.startswith("--") for s in sources), "COPY --from is not expected in this stage"
            dest = Path(host(posixpath.normpath(posixpath.join(stage.workdir, target))))
            for src in sources:
                # Docker: a file into a directory target keeps its name; a directory's contents go to dest
                copy_context(src, dest / src if (ROOT / src).is_file() and target.endswith("/") else dest)
        elif keyword == "RUN" and re.search(r"\bpip\b", rest):
            words = rest.split()
            for word in [w for w in words if w.startswith("--mount=")]:
                opts = dict(kv.split("=", 1) for kv in word[len("--mount=") :].split(","))
                roots.setdefault(opts["target"], roots[opts["source"]])
                rest = rest.replace(word, "")
            command = substitute(rest, values)
            for prefix in sorted(roots, key=len, reverse=True):
                command = re.sub(rf"(?<![\w/.]){re.escape(prefix)}(?=[/\s\"']|$)", host(prefix), command)
            env = {**os.environ, **stage.env, "PATH": f"{venv}/bin{os.pathsep}{os.environ['PATH']}"}
            env.pop("PYTHONPATH", None)
            env["PIP_CONSTRAINT"] = str(roots["/constraints.txt"])
            proc = subprocess.run(
                ["bash", "-c", command], cwd=workdir, env=env, capture_output=True, text=True, timeout=600
            )
            assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            ran.append(command)
    return ran


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_install_steps_build_a_working_eventrouter(
    dockerfile: tuple[dict[str, str], list[Stage]], tmp_path: Path
) -> None:
    global_args, (build, final) = dockerfile
    constraints = tmp_path / "constraints.txt"
    freeze = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable"], capture_output=True, text=True, check=True
    ).stdout
    constraints.write_text(
        "".join(
            line + "\n" for line in freeze.splitlines() if "==" in line and not line.lower().startswith("eventrouter")
        )
    )
    venvs = {}
    for name in ("build", "final"):
        venvs[name] = tmp_path / f"venv-{name}"
        subprocess.run([BASE_PYTHON, "-m", "venv", str(venvs[name])], check=True)
    roots = {
        "/src": tmp_path / "src",
        "/wheels": tmp_path / "wheels",
        "/constraints.txt": constraints,
        "/var/lib/eventrouter": tmp_path / "state",
    }
    for path in ("src", "wheels", "state"):
        (tmp_path / path).mkdir()

    ran = run_pip_steps(build, global_args, roots, venvs["build"])
    assert len(ran) == 1 and " wheel " in ran[0]
    wheels = sorted(p.name for p in (tmp_path / "wheels").iterdir())
    assert any(w.startswith("eventrouter-") for w in wheels)
    copied = {p.relative_to(tmp_path / "src").parts[0] for p in (tmp_path / "src").iterdir()}
    assert {"pyproject.toml", "README.md", "eventrouter", "sinks"} <= copied
    assert not copied & {"tests", "examples", "docs", "deploy", ".venv", ".git", "benchmarks"}
    assert not list((tmp_path / "src").rglob("__pycache__"))

    ran = run_pip_steps(final, global_args, roots, venvs["final"])
    assert len(ran) == 1 and "--no-index" in ran[0]  # offline: the wheels were complete

    exe = venvs["final"] / "bin" / "eventrouter"
    state = tmp_path / "state"
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, **final.env, "HOME": str(state)}
    env["TMPDIR"] = str(tmp_path)
    help_text = subprocess.run([str(exe), "--help"], cwd=state, env=env, capture_output=True, text=True, check=True)
    assert "--sink" in help_text.stdout and "--healthz-port" in help_text.stdout

    # every built-in sink whose module exists in this checkout loads from the installed wheel
    listing = subprocess.run([str(exe), "sinks"], cwd=state, env=env, capture_output=True, text=True, check=True)
    names = {line.split()[0]: line for line in listing.stdout.splitlines() if line and not line.startswith(" ")}
    assert "log" in names and "BROKEN" not in names["log"]
    for name, line in names.items():
        if (ROOT / "sinks" / f"{name}.py").exists() or (ROOT / "sinks" / name / "__init__.py").exists():
            assert "BROKEN" not in line, line

    # a run from the read-only-friendly layout: JSON logs by default, nothing written outside the state dir
    events = ROOT / "eventrouter" / "simulator" / "data" / "core-v1.jsonl"
    sample = tmp_path / "ten.jsonl"
    sample.write_text("".join(events.read_text().splitlines(keepends=True)[:10]))
    proc = subprocess.run(
        [str(exe), f"--source=file:{sample}", "--sink=log", "--healthz-port=0"],
        cwd=state,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines()[0].startswith('{"time":')
    assert not list(state.iterdir())
