"""The Dockerfile, built for real and run.

buildah builds it (``--isolation chroot``, ``vfs``; no daemon, no registry) on a locally made
``PYTHON_IMAGE`` (Debian bookworm + python 3.11, see tests/container_image.py), once per test
session. runc runs the image the way the Deployment does: uid 10001, read-only root filesystem,
writable /var/lib/eventrouter and /tmp, no capabilities. The real recorded events go in on stdin
(``--source=file:-``) and must come out of the log sink exactly as they do from this checkout.

Nothing here skips: a missing tool, an unreachable mirror or a failed build fails the test with
the command and its output. Measured on the 2-core build machine: 1-2 minutes per session with the
base cached in ~/.cache/eventrouter-tests, 2-5 minutes when it is debootstrapped first (a fresh
machine), depending on the load; the build itself is done once per session.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.container_image import Buildah, ImageStepError, base_rootfs, debian_mirror, run_container

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
TAG = "localhost/eventrouter:test"
BASE_TAG = "localhost/eventrouter-test-base:bookworm"


def real_corpus() -> bytes:
    """The recorded real events (shared/data/real-events), or the identical copy the package ships."""
    for folder in (ROOT.parent / "shared", ROOT.parent.parent / "shared", Path("/work/shared")):
        files = sorted((folder / "data" / "real-events").glob("*.jsonl"))
        if files:
            return b"".join(f.read_bytes() for f in files)
    files = sorted((ROOT / "eventrouter" / "simulator" / "data").glob("*.jsonl"))
    return b"".join(f.read_bytes() for f in files)


# ---- the Dockerfile as text: what users get by default -------------------------------------------
def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, pending = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, rest = (pending + line).strip().partition(" ")
        pending = ""
        out.append((keyword.upper(), rest.strip()))
    return out


def test_default_base_is_python_3_11_slim_and_the_final_stage_copies_no_source() -> None:
    steps = instructions(DOCKERFILE.read_text())
    assert steps[0] == ("ARG", "PYTHON_IMAGE=python:3.11-slim")
    froms = [rest for keyword, rest in steps if keyword == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]
    final = steps[[k for k, _ in steps].index("FROM", 2) :]
    assert not [rest for keyword, rest in final if keyword == "COPY"]  # only wheels, through a bind mount


def test_debian_mirror_is_read_from_apt_sources(tmp_path: Path) -> None:
    """The base is fetched from the mirror apt uses here, in either sources format; none is an error."""
    (tmp_path / "sources.list.d").mkdir()
    with pytest.raises(ImageStepError, match="no apt source for Debian bookworm"):
        debian_mirror(tmp_path)
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.test/debian-security\nSuites: bookworm-security\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.test/debian/\nSuites: bookworm bookworm-updates\nComponents: main\n"
    )
    assert debian_mirror(tmp_path) == "http://mirror.test/debian"
    (tmp_path / "sources.list").write_text("# local\ndeb [arch=amd64] http://other.test/debian bookworm main\n")
    assert debian_mirror(tmp_path) == "http://other.test/debian"


# ---- the image, built once per session ----------------------------------------------------------
@dataclass
class Image:
    config: dict[str, Any]
    rootfs: Path


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    base = base_rootfs(debian_mirror())
    buildah = Buildah(tmp_path_factory.mktemp("buildah"))
    try:
        buildah.import_rootfs(base, BASE_TAG)
        buildah.build(ROOT, TAG, {"PYTHON_IMAGE": BASE_TAG})
        yield Image(buildah.image_config(TAG), buildah.rootfs(TAG))
    finally:
        buildah.cleanup()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """The writable volume, owned by the pod's fsGroup as Kubernetes makes an emptyDir."""
    path = tmp_path / "state"
    path.mkdir()
    os.chown(path, 10001, 10001)
    return path


def log_lines(stdout: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stdout.splitlines() if line.strip()]


def key(event: dict[str, Any]) -> tuple[str, str, str, str, int]:
    return (event["uid"], event["resource_version"], event["reason"], event["message"], event["count"])


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_image_config_is_what_the_deployment_expects(image: Image) -> None:
    config = image.config
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["eventrouter"]
    assert config["WorkingDir"] == "/var/lib/eventrouter"
    assert "/var/lib/eventrouter" in config["Volumes"]
    assert "8084/tcp" in config["ExposedPorts"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["EVENTROUTER_LOG_FORMAT"] == "json"
    assert env["HOME"] == "/var/lib/eventrouter" and env["TMPDIR"] == "/tmp"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    # no pip cache and no wheels stayed in the image
    assert not (image.rootfs / "wheels").exists()
    assert not list((image.rootfs / "root").glob(".cache/pip"))


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_image_replays_the_real_events_as_uid_10001_on_a_read_only_root(
    image: Image, state_dir: Path, tmp_path: Path
) -> None:
    corpus = real_corpus()
    result = run_container(
        image.rootfs,
        image.config,
        tmp_path / "bundle",
        args=["--source=file:-", "--sink=log"],
        stdin=corpus,
        state_dir=state_dir,
    )
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    # JSON logs by default (the image's EVENTROUTER_LOG_FORMAT), on stderr
    assert orjson.loads(result.stderr.splitlines()[0])["level"] in {"info", "warning"}
    got = log_lines(result.stdout)

    # the same events, in the same form, as this checkout's eventrouter produces from the same input
    host = subprocess.run(
        [str(Path(sys.executable).parent / "eventrouter"), "--source=file:-", "--sink=log", "--healthz-port=0"],
        input=corpus,
        capture_output=True,
        cwd=tmp_path,
        env={**os.environ, "HOME": str(tmp_path)},
        timeout=300,
        check=True,
    )
    expected = log_lines(host.stdout)
    assert sorted(map(key, got)) == sorted(map(key, expected))
    # and that is every recorded event: each Event object's uid comes out
    uids = {orjson.loads(line)["metadata"]["uid"] for line in corpus.splitlines() if line.strip()}
    assert len(uids) > 1000
    assert {e["uid"] for e in got} == uids


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_image_root_is_read_only_and_the_process_runs_as_10001(image: Image, state_dir: Path, tmp_path: Path) -> None:
    probe = (
        "import os, sys\n"
        "print(os.getuid(), os.getgid())\n"
        "for path in ('/usr/local/bin/x', '/etc/x', '/x'):\n"
        "    try:\n"
        "        open(path, 'w')\n"
        "        print('writable', path)\n"
        "    except OSError as exc:\n"
        "        print('refused', path, exc.errno)\n"
        "for path in ('/var/lib/eventrouter/x', '/tmp/x'):\n"
        "    open(path, 'w').write('ok')\n"
        "    print('wrote', path)\n"
    )
    result = run_container(
        image.rootfs, image.config, tmp_path / "bundle", entrypoint=["python", "-c", probe], state_dir=state_dir
    )
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert lines[0] == "10001 10001"
    assert [line.split()[:2] for line in lines[1:4]] == [["refused", p] for p in ("/usr/local/bin/x", "/etc/x", "/x")]
    assert lines[4:] == ["wrote /var/lib/eventrouter/x", "wrote /tmp/x"]
    assert (state_dir / "x").stat().st_uid == 10001


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_kube_eventer_command_works_unchanged(image: Image, state_dir: Path, tmp_path: Path) -> None:
    """kube-eventer's manifests say ``command: ["/kube-eventer", "--source=...", "--sink=..."]``."""
    ten = b"".join(real_corpus().splitlines(keepends=True)[:10])
    # kube-eventer's own flags too: --frequency and the klog ones are accepted
    command = shlex.split("/kube-eventer --source=file:- --sink=log --frequency=30s -logtostderr -v=2")
    result = run_container(
        image.rootfs, image.config, tmp_path / "bundle", entrypoint=command, stdin=ten, state_dir=state_dir
    )
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    got = log_lines(result.stdout)
    assert [e["uid"] for e in got] == [orjson.loads(line)["metadata"]["uid"] for line in ten.splitlines()]
