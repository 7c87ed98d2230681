"""What the benchmark scripts share: a free port, and a `gpustack serve` started and ready."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer in {seconds:.0f} s")


def start_server(home: Path | str, *args: str, **env: str) -> tuple[subprocess.Popen, str]:
    """`gpustack serve --no-pull ARGS` on a free port, quiet, once /healthz answers: (process, URL)."""
    port = free_port()
    log = (Path(tempfile.mkdtemp()) / "serve.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "gpustack_cli", "serve", "--port", str(port), "--no-pull", *args],
        env={**os.environ, "GPUSTACK_HOME": str(home), "GPUSTACK_LOG_LEVEL": "warning", **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url + "/healthz", 600)
    return process, url
