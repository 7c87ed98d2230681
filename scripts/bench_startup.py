"""How fast gpustack starts: `gpustack --help`, and `gpustack serve` until `/healthz` answers, for
the source install, the one-folder binary and the one-file binary, in one run.

    python scripts/bench_startup.py [--onedir DIR/gpustack] [--onefile FILE] [--build] [--runs 5]

With --build it builds both binaries first (scripts/build_binary.py, every engine installed for the
one-folder build as releases have it, the llama.cpp engine alone for the one-file build, which
unpacks itself on every start). Each serve starts on an empty store and loads no model.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
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


def timed_help(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run([*command, "--help"], env=env, capture_output=True, check=True, timeout=300)
    return time.perf_counter() - started


def timed_serve(command: list[str], env: dict[str, str]) -> float:
    port = free_port()
    started = time.perf_counter()
    server = subprocess.Popen(
        [*command, "serve", "--no-pull", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with httpx.Client() as client:
            while True:
                try:
                    if client.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                        return time.perf_counter() - started
                except httpx.TransportError:
                    pass
                if server.poll() is not None or time.perf_counter() - started > 300:
                    raise RuntimeError(f"{command} serve did not start")
                time.sleep(0.01)
    finally:
        server.terminate()
        server.wait(30)


def build(onedir: bool, engines: str | None, out: Path) -> Path:
    args = [sys.executable, "scripts/build_binary.py", "--dist", str(out / "dist"), "--work", str(out / "work")]
    args += ["--onedir"] if onedir else []
    args += ["--engines", engines] if engines else []
    subprocess.run(args, cwd=ROOT, check=True)
    return out / "dist" / ("gpustack/gpustack" if onedir else "gpustack")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onedir", type=Path, help="a one-folder build's executable")
    parser.add_argument("--onefile", type=Path, help="a one-file build")
    parser.add_argument("--build", action="store_true", help="build both binaries first")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    if args.build:
        args.onedir = args.onedir or build(True, None, work / "onedir")
        args.onefile = args.onefile or build(False, "llm", work / "onefile")
    commands = {"source install": [str(Path(sys.executable).with_name("gpustack"))]}
    if args.onedir:
        commands["one-folder binary"] = [str(args.onedir)]
    if args.onefile:
        commands["one-file binary"] = [str(args.onefile)]
    env = {**os.environ, "GPUSTACK_HOME": str(work / "home")}
    print(f"{'':18} {'--help (median, min)':>22} {'serve to /healthz (median, min)':>32}   size")
    for name, command in commands.items():
        timed_help(command, env)  # a first start warms the page cache, as for a user's second start
        helps = [timed_help(command, env) for _ in range(args.runs)]
        serves = [timed_serve(command, env) for _ in range(args.runs)]
        path = Path(command[0])
        folder = path.parent if name == "one-folder binary" else None
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder else path.stat().st_size
        shown = f"{size / 2**20:.0f} MiB" if name != "source install" else ""
        print(
            f"{name:18} {statistics.median(helps):>13.2f} s {min(helps):5.2f} s"
            f" {statistics.median(serves):>23.2f} s {min(serves):5.2f} s   {shown}"
        )


if __name__ == "__main__":
    main()
