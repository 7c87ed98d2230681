"""What the Generic Proxy adds: latency per request and streaming throughput through
`/model/proxy` of a remote model, against calling its upstream directly, in one run.

The upstream is a small aiohttp server on loopback in a process of its own (an instant JSON answer,
and a 64 MiB stream), so the figures are the proxy's own cost, not a model's.

    python scripts/bench_proxy.py [--requests 500] [--mb 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from aiohttp import web
from benchlib import free_port, start_server, wait_ready

ROOT = Path(__file__).resolve().parents[1]


def serve_upstream(port: int) -> None:
    async def ping(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        chunk = b"x" * 65536
        for _ in range(int(request.query["mb"]) * 16):
            await response.write(chunk)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/ping", ping)
    app.router.add_get("/stream", stream)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


def timed_requests(http: httpx.Client, url: str, headers: dict[str, str], count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        http.get(url, headers=headers).raise_for_status()
        times.append(time.perf_counter() - started)
    return times


def throughput(http: httpx.Client, url: str, headers: dict[str, str]) -> float:
    started, size = time.perf_counter(), 0
    with http.stream("GET", url, headers=headers) as response:
        for chunk in response.iter_raw():
            size += len(chunk)
    return size / (time.perf_counter() - started) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--mb", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return
    up_port = free_port()
    # The upstream runs in a process of its own, as a real one would (not sharing our GIL).
    upstream_proc = subprocess.Popen([sys.executable, __file__, "--serve-upstream", str(up_port)])
    upstream = f"http://127.0.0.1:{up_port}"
    home = Path(tempfile.mkdtemp())
    env = {**os.environ, "GPUSTACK_HOME": str(home), "GPUSTACK_LOG_LEVEL": "warning"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "gpustack_cli",
            "add-remote",
            "up",
            upstream,
            "--categories",
            "embedding",
            "--generic-proxy",
        ],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    wait_ready(upstream + "/ping")
    server, url = start_server(home)
    ours = url + "/model/proxy"
    model = {"X-GPUStack-Model": "up"}
    try:
        http = httpx.Client(timeout=120)
        timed_requests(http, upstream + "/ping", {}, 50)
        timed_requests(http, ours + "/ping", model, 50)
        direct, proxied, direct_mb, proxied_mb = [], [], [], []
        for _ in range(args.rounds):
            direct += timed_requests(http, upstream + "/ping", {}, args.requests // args.rounds)
            proxied += timed_requests(http, ours + "/ping", model, args.requests // args.rounds)
            direct_mb.append(throughput(http, f"{upstream}/stream?mb={args.mb}", {}))
            proxied_mb.append(throughput(http, f"{ours}/stream?mb={args.mb}", model))
    finally:
        server.terminate()
        upstream_proc.terminate()
        server.wait(20)
        upstream_proc.wait(20)
    d, p = statistics.median(direct) * 1000, statistics.median(proxied) * 1000
    dt, pt = statistics.median(direct_mb), statistics.median(proxied_mb)
    print(f"{args.requests} small requests, {args.mb} MiB streams x {args.rounds}, medians")
    print(f"{'':28}{'direct':>10}{'proxy':>10}{'added/ratio':>14}")
    print(f"{'latency per request, ms':28}{d:10.3f}{p:10.3f}{p - d:+14.3f}")
    print(f"{'streaming, MB/s':28}{dt:10.1f}{pt:10.1f}{pt / dt:14.3f}")
    print("targets: under 1 ms added at the median, at least 0.95x the direct throughput")


if __name__ == "__main__":
    main()
