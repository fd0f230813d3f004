"""Build the project's Dockerfile for real and run the image, with no daemon and no registry.

- The ``PYTHON_IMAGE`` base is made locally: ``debootstrap --variant=minbase`` of Debian bookworm
  (its python3 is 3.11) from the Debian mirror this machine's apt uses, with a virtualenv at
  ``/usr/local`` so ``python`` and ``pip`` are on the usual PATH, as in ``python:3.11-slim``.
  The root filesystem is cached under ``$EVENTROUTER_TEST_CACHE`` (default
  ``~/.cache/eventrouter-tests``) in a directory named by a hash of the recipe, so a second run on
  the same machine skips debootstrap.
- buildah (``--isolation chroot``, ``vfs`` storage, a private storage directory per test session)
  imports that root filesystem as an image and builds the Dockerfile on it.
- runc runs the result from an OCI bundle: the image's user, a read-only root filesystem, a
  writable ``/var/lib/eventrouter`` and ``/tmp``, no capabilities, no network.

Every step that cannot run raises ``ImageStepError`` with the command, its exit status and its
output, so a test using this fails with the reason (it never skips).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUITE = "bookworm"
# minbase has neither useradd (passwd) nor the venv module; the rest as python:3.11-slim has them
PACKAGES = ("python3", "python3-venv", "passwd", "ca-certificates", "netbase", "tzdata")
# bump when the recipe below changes: the cache key includes it
RECIPE = "venv-at-usr-local-1"
BASE_PATH = "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


class ImageStepError(AssertionError):
    """A build or run step failed; the message says which command and why."""


def run(cmd: list[str], *, timeout: float = 900, input: bytes | None = None, what: str = "") -> bytes:
    try:
        proc = subprocess.run(cmd, input=input, capture_output=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise ImageStepError(
            f"{what or cmd[0]}: {cmd[0]} is not installed ({exc}); run scripts/install-test-deps.sh"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise ImageStepError(f"{what or cmd[0]}: timed out after {timeout:.0f}s: {' '.join(cmd)}") from exc
    if proc.returncode != 0:
        raise ImageStepError(
            f"{what or cmd[0]}: exit status {proc.returncode}: {' '.join(cmd)}\n"
            f"--- stdout (tail)\n{proc.stdout[-3000:].decode(errors='replace')}\n"
            f"--- stderr (tail)\n{proc.stderr[-3000:].decode(errors='replace')}"
        )
    return proc.stdout


# ---- the Debian mirror apt uses ---------------------------------------------------------------
def debian_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The first URI apt uses for Debian's main archive (``bookworm`` suite), from sources.list(.d)."""
    files = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in [p for p in files if p.is_file()]:
        for line in path.read_text().splitlines():
            words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                return words[1].rstrip("/")
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields = {}
            for line in stanza.splitlines():
                if ":" in line and not line.startswith(("#", " ")):
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.split()
            enabled = fields.get("enabled", ["yes"])[0] != "no"
            if (
                enabled
                and "deb" in fields.get("types", [])
                and SUITE in fields.get("suites", [])
                and fields.get("uris")
            ):
                return fields["uris"][0].rstrip("/")
    raise ImageStepError(f"no apt source for Debian {SUITE} in {apt_dir}/sources.list or sources.list.d")


# ---- the base root filesystem (cached) --------------------------------------------------------
def cache_root() -> Path:
    return Path(os.environ.get("EVENTROUTER_TEST_CACHE") or Path.home() / ".cache" / "eventrouter-tests")


def base_rootfs(mirror: str) -> Path:
    """Debian bookworm minbase + python3 venv at /usr/local; built once per recipe and mirror."""
    key = hashlib.sha256(json.dumps([SUITE, PACKAGES, RECIPE, mirror]).encode()).hexdigest()[:16]
    home = cache_root() / f"base-{SUITE}-{key}"
    if (home / "complete").exists():
        return home / "rootfs"
    # built aside and renamed into place: two test sessions at once never see a half-made base
    partial = home.parent / f".{home.name}.{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    rootfs = partial / "rootfs"
    rootfs.parent.mkdir(parents=True)
    try:
        run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(rootfs), mirror],
            timeout=1200,
            what="debootstrap of the PYTHON_IMAGE base",
        )
        # python and pip on PATH as in python:3.11-slim: a venv whose bin/ is /usr/local/bin (a plain
        # Debian python3 refuses pip installs, PEP 668)
        run(["chroot", str(rootfs), "/usr/bin/python3", "-m", "venv", "/usr/local"], what="venv in the base")
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man"):
            for child in (rootfs / leftover).glob("*"):
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        (partial / "complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))
        if not (home / "complete").exists():
            shutil.rmtree(home, ignore_errors=True)  # an incomplete one left by an interrupted run
        try:
            partial.rename(home)
        except OSError:  # another session finished first: use its base
            pass
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return home / "rootfs"


# ---- buildah ------------------------------------------------------------------------------------
@dataclass
class Buildah:
    """buildah with a private vfs storage under ``workdir`` (removed by ``cleanup``)."""

    workdir: Path

    def __call__(self, *args: str, timeout: float = 900, what: str = "") -> str:
        cmd = [
            "buildah",
            "--root",
            str(self.workdir / "storage"),
            "--runroot",
            str(self.workdir / "run"),
            "--storage-driver",
            "vfs",
            *args,
        ]
        return run(cmd, timeout=timeout, what=what or f"buildah {args[0]}").decode().strip()

    def import_rootfs(self, rootfs: Path, name: str) -> str:
        """An image ``name`` made of ``rootfs``, trusting this machine's CA bundle for pip."""
        ctr = self("from", "--quiet", "scratch")
        mnt = Path(self("mount", ctr))
        run(["cp", "-a", f"{rootfs}/.", str(mnt)], what="copy the base root filesystem")
        if HOST_CA_BUNDLE.is_file():  # pip in the build must trust what this machine trusts
            shutil.copyfile(HOST_CA_BUNDLE, mnt / "etc/ssl/certs/ca-certificates.crt")
        self(
            "config",
            "--env",
            f"PATH={BASE_PATH}",
            "--env",
            "LANG=C.UTF-8",
            "--env",
            "PIP_CERT=/etc/ssl/certs/ca-certificates.crt",
            "--cmd",
            "python3",
            ctr,
        )
        self("umount", ctr)
        self("commit", "--quiet", ctr, name)
        self("rm", ctr)
        return name

    def build(self, context: Path, tag: str, build_args: dict[str, str]) -> str:
        args = [f"--build-arg={k}={v}" for k, v in build_args.items()]
        self(
            "bud", "--isolation", "chroot", "--quiet", *args, "-t", tag, str(context), timeout=1500, what="buildah bud"
        )
        return tag

    def image_config(self, image: str) -> dict[str, Any]:
        config: dict[str, Any] = json.loads(self("inspect", "--type", "image", image))["OCIv1"]["config"]
        return config

    def rootfs(self, image: str) -> Path:
        """The image's files, mounted from a working container (read by runc as the root)."""
        ctr = self("from", "--quiet", "--pull-never", image)
        return Path(self("mount", ctr))

    def cleanup(self) -> None:
        # vfs layers and containers are plain directories (nothing is mounted), and root may delete
        # them whatever their modes: removing the storage directory is the whole clean-up
        shutil.rmtree(self.workdir, ignore_errors=True)


# ---- runc -----------------------------------------------------------------------------------
# runc rather than crun: crun 1.8 (Debian bookworm) refuses hosts whose cgroup v2 hierarchy has a
# controller while v1 is mounted ("cgroups in hybrid mode not supported"), as on this test machine.
@dataclass
class Result:
    returncode: int
    stdout: bytes
    stderr: bytes


def run_container(
    rootfs: Path,
    config: dict[str, Any],
    bundle: Path,
    *,
    args: list[str] | None = None,
    entrypoint: list[str] | None = None,
    stdin: bytes = b"",
    state_dir: Path,
    timeout: float = 300,
) -> Result:
    """Run the image as Kubernetes would with the Deployment's securityContext.

    The image's User, Env, WorkingDir, Entrypoint and Cmd (``args`` replaces Cmd and
    ``entrypoint`` replaces Entrypoint, like a pod's ``args``/``command``); root filesystem
    read-only; ``state_dir`` bound at /var/lib/eventrouter and a tmpfs at /tmp; all capabilities
    dropped, no new privileges, its own network namespace (loopback only)."""
    user, _, group = config["User"].partition(":")
    process_args = (entrypoint if entrypoint is not None else config.get("Entrypoint") or []) + (
        args if args is not None else ([] if entrypoint is not None else config.get("Cmd") or [])
    )
    spec = {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": int(user), "gid": int(group or user)},
            "args": process_args,
            "env": config.get("Env", []),
            "cwd": config.get("WorkingDir") or "/",
            "capabilities": {"bounding": [], "effective": [], "permitted": [], "ambient": []},
            "noNewPrivileges": True,
        },
        "root": {"path": str(rootfs), "readonly": True},
        "hostname": "eventrouter",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]},
            {
                "destination": "/var/lib/eventrouter",
                "type": "bind",
                "source": str(state_dir),
                "options": ["rbind", "rw"],
            },
        ],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"],
        },
    }
    bundle.mkdir(parents=True, exist_ok=True)
    (bundle / "config.json").write_text(json.dumps(spec))
    name = f"eventrouter-test-{os.getpid()}-{time.monotonic_ns()}"
    runc = ["runc", "--root", str(bundle / "state")]
    try:
        proc = subprocess.run(
            [*runc, "run", "--bundle", str(bundle), name],
            input=stdin,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise ImageStepError(f"runc is not installed ({exc}); run scripts/install-test-deps.sh") from exc
    except subprocess.TimeoutExpired as exc:
        subprocess.run([*runc, "kill", name, "KILL"], capture_output=True, check=False)
        subprocess.run([*runc, "delete", "--force", name], capture_output=True, check=False)
        raise ImageStepError(f"the container did not end within {timeout:.0f}s: {process_args}") from exc
    return Result(proc.returncode, proc.stdout, proc.stderr)
