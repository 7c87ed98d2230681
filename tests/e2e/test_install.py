"""install.sh end to end: a release laid out by scripts/release.py (the archive of the binary the
tests built, SHA256SUMS) served over loopback HTTP, installed into a temporary prefix; the
installed binary answers. A tampered archive is refused; a GPU picks the CUDA build; --service
writes a systemd user unit and starts it."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpustack_cli import __version__
from tests.support.harness import ROOT
from tests.support.loopback import LoopbackServer, Served

OS = "macos" if sys.platform == "darwin" else "linux"
PLATFORM = f"{OS}-{'arm64' if platform.machine() in ('aarch64', 'arm64') else 'x86_64'}"


def release_tool(*args: str | Path) -> str:
    done = subprocess.run(
        [sys.executable, "scripts/release.py", *map(str, args)], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return done.stdout


def pack(folder: Path, release: Path, name: str) -> Path:
    """`folder` (holding gpustack/gpustack) packed into the release as `name`."""
    release_tool("archive", folder / "gpustack", release / name)
    return release / name


@pytest.fixture
def release(built_binary: Path, tmp_path: Path) -> Path:
    """A release folder: this machine's archive of the real binary, and a CUDA build that is a
    script saying so (to see which one the installer picks)."""
    folder = tmp_path / "release"
    folder.mkdir()
    real = tmp_path / "real" / "gpustack"
    real.mkdir(parents=True)
    shutil.copy2(built_binary, real / "gpustack")
    pack(tmp_path / "real", folder, f"gpustack-{__version__}-{PLATFORM}.tar.gz")
    cuda = tmp_path / "cuda" / "gpustack"
    cuda.mkdir(parents=True)
    (cuda / "gpustack").write_text(f"#!/bin/sh\necho 'gpustack {__version__} (the CUDA build)'\n")
    (cuda / "gpustack").chmod(0o755)
    pack(tmp_path / "cuda", folder, f"gpustack-{__version__}-{PLATFORM}-cuda12.tar.gz")
    release_tool("sums", folder)
    return folder


@pytest.fixture
def served(release: Path, loopback: LoopbackServer) -> str:
    """The release's files on the loopback file host; the download URL the installer takes."""
    for path in release.iterdir():
        loopback.files[path.name] = Served(path.read_bytes())
    return loopback.url + "/files"


def tools(tmp_path: Path, **scripts: str) -> Path:
    """A folder of fake commands (nvidia-smi, systemctl) to put first on PATH."""
    folder = tmp_path / "tools"
    folder.mkdir(exist_ok=True)
    for name, body in scripts.items():
        path = folder / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    return folder


def install(url: str, *args: str, path_first: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    environ = {
        "PATH": (f"{path_first}:" if path_first else "") + os.environ["PATH"],
        "HOME": env.pop("HOME", os.environ.get("HOME", "/root")),
        "GPUSTACK_DOWNLOAD_URL": url,
        **env,
    }
    return subprocess.run(
        ["sh", str(ROOT / "install.sh"), *args], env=environ, capture_output=True, text=True, timeout=300
    )


def test_installs_the_release_into_a_prefix(served: str, tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    done = install(served, "--prefix", str(prefix), GPUSTACK_CPU_ONLY="1")
    assert done.returncode == 0, done.stderr
    installed = prefix / "bin" / "gpustack"
    assert installed.is_symlink() and (prefix / "lib" / "gpustack" / "gpustack").is_file()
    answer = subprocess.run(
        [str(installed), "version"], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )
    assert answer.stdout.strip() == f"gpustack {__version__}"
    assert f"add {prefix}/bin to your PATH" in done.stderr
    # Again over it: the earlier install is replaced, nothing left beside it.
    again = install(served, "--prefix", str(prefix), GPUSTACK_CPU_ONLY="1")
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in (prefix / "lib").iterdir()) == ["gpustack"]


def test_a_tampered_archive_is_refused(served: str, loopback: LoopbackServer, tmp_path: Path) -> None:
    archive = loopback.files[f"gpustack-{__version__}-{PLATFORM}.tar.gz"]
    data = bytearray(archive.data)
    data[len(data) // 2] ^= 0xFF
    archive.data = bytes(data)
    prefix = tmp_path / "prefix"
    done = install(served, "--prefix", str(prefix), GPUSTACK_CPU_ONLY="1")
    assert done.returncode == 1 and "checksum mismatch" in done.stderr and "refusing to install" in done.stderr
    assert not (prefix / "bin" / "gpustack").exists() and not (prefix / "lib" / "gpustack").exists()


def test_a_gpu_gets_the_cuda_build(served: str, tmp_path: Path) -> None:
    if not PLATFORM.startswith("linux"):
        pytest.skip("CUDA builds are for Linux")
    fake = tools(tmp_path, **{"nvidia-smi": "echo 'GPU 0: NVIDIA H200 (UUID: GPU-0)'"})
    prefix = tmp_path / "prefix"
    done = install(served, "--prefix", str(prefix), path_first=fake)
    assert done.returncode == 0, done.stderr
    assert "installing the CUDA 12 build" in done.stderr and f"{PLATFORM}-cuda12.tar.gz" in done.stderr
    assert (
        "(the CUDA build)" in subprocess.run([str(prefix / "bin" / "gpustack")], capture_output=True, text=True).stdout
    )


def test_service_writes_and_starts_a_user_unit(served: str, tmp_path: Path) -> None:
    if not PLATFORM.startswith("linux"):
        pytest.skip("systemd units are for Linux")
    calls = tmp_path / "systemctl.log"
    fake = tools(tmp_path, systemctl=f'echo "$@" >> {calls}')
    prefix, config = tmp_path / "prefix", tmp_path / "config"
    done = install(
        served,
        "--prefix",
        str(prefix),
        "--service",
        path_first=fake,
        XDG_CONFIG_HOME=str(config),
        GPUSTACK_CPU_ONLY="1",
    )
    assert done.returncode == 0, done.stderr
    unit = (config / "systemd" / "user" / "gpustack.service").read_text()
    assert f"ExecStart={prefix}/bin/gpustack serve" in unit and "WantedBy=default.target" in unit
    assert calls.read_text().splitlines() == ["--user daemon-reload", "--user enable --now gpustack.service"]


def test_without_a_download_url_it_says_so(tmp_path: Path) -> None:
    done = subprocess.run(
        ["sh", str(ROOT / "install.sh"), "--prefix", str(tmp_path)],
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "GPUSTACK_DOWNLOAD_URL" in done.stderr


def test_release_takes_its_version_and_notes_from_one_place() -> None:
    assert release_tool("version").strip() == __version__
    notes = release_tool("notes", "0.1.0")
    assert notes.startswith("### Added") and "## [" not in notes
    unreleased = subprocess.run(
        [sys.executable, "scripts/release.py", "notes", "9.9.9"], cwd=ROOT, capture_output=True, text=True
    )
    assert unreleased.returncode != 0 and "no section for 9.9.9" in unreleased.stderr
