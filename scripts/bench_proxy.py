"""What the Generic Proxy adds: latency per request and streaming throughput through
`/model/proxy` of a remote model, against calling its upstream directly and against a peer
reverse proxy (nginx, one worker, keep-alive to the upstream, unbuffered with 256 KiB reads),
in one run.

The upstream is a small aiohttp server on loopback in a process of its own (an instant JSON answer,
a chunked stream, a download of known length, and a stream of small server-sent events, one per
packet, as a chat's tokens come), so the figures are the proxy's own cost, not a model's. The
"aiohttp client" row is the same proxy with aiohttp's `ClientSession` as its relay
(`GPUSTACK_RELAY_CLIENT=aiohttp`): what the hand-written client saves, measured in every run.
Transfers are read by httpx (a Python client, as the openai package uses) and, when `curl` is on
the PATH, by curl: a client in C shows what the proxy itself can carry, where a Python client is
the slowest part. For the events the table gives each proxy's CPU time per event (read from
/proc, so on Linux only). The nginx row runs when `nginx` is on the PATH (Debian: `apt-get
install nginx`). Each round times a block of requests and each transfer on every side in a
rotating order; the figures are medians over rounds of each side's difference from (or ratio to)
direct in the same round, and of three event streams per proxy.

    python scripts/bench_proxy.py [--rounds 7] [--requests 200] [--mb 32] [--events 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import httpx
from aiohttp import web
from benchlib import HEADERS, free_port, start_server, wait_ready

ROOT = Path(__file__).resolve().parents[1]


def serve_upstream(port: int) -> None:
    async def ping(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def transfer(request: web.Request) -> web.StreamResponse:
        """`mb` MiB in 64 KiB writes: chunked on /stream, of declared length on /download."""
        size = int(request.query["mb"]) * 1024 * 1024
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        if request.path == "/download":
            response.content_length = size
        await response.prepare(request)
        chunk = b"x" * 65536
        for _ in range(size // len(chunk)):
            await response.write(chunk)
        await response.write_eof()
        return response

    async def events(request: web.Request) -> web.StreamResponse:
        """`n` server-sent events of one token each, a fraction of a millisecond apart."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(int(request.query["n"])):
            await response.write(EVENT)
            await asyncio.sleep(0.0002)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/ping", ping)
    app.router.add_get("/events", events)
    app.router.add_get("/stream", transfer)
    app.router.add_get("/download", transfer)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


EVENT = b'data: {"choices":[{"index":0,"delta":{"content":" token"}}]}\n\n'


def cpu_seconds(pid: int) -> float | None:
    """CPU time a process used so far (all its threads); None where /proc is not there."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def event_cpu(http: httpx.Client, url: str, headers: dict[str, str], pid: int, count: int) -> float | None:
    """Microseconds of `pid`'s CPU time per event of a stream of `count` read through it."""
    before = cpu_seconds(pid)
    with http.stream("GET", f"{url}/events?n={count}", headers=headers) as response:
        received = sum(1 for line in response.iter_lines() if line.startswith("data: "))
    after = cpu_seconds(pid)
    assert received == count, f"{received} of {count} events"
    return None if before is None or after is None else (after - before) / count * 1e6


def timed(http: httpx.Client, url: str, headers: dict[str, str]) -> float:
    started = time.perf_counter()
    http.get(url, headers=headers).raise_for_status()
    return time.perf_counter() - started


def curl_throughput(http: httpx.Client, url: str, headers: dict[str, str]) -> float:
    """MB/s as curl reports it: a client in C, so the figure is the servers' and not the client's."""
    command = ["curl", "-sf", "-o", os.devnull, "-w", "%{speed_download}", url]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    return float(subprocess.run(command, capture_output=True, text=True, check=True).stdout) / 1e6


def throughput(http: httpx.Client, url: str, headers: dict[str, str]) -> float:
    started, size = time.perf_counter(), 0
    with http.stream("GET", url, headers=headers) as response:
        for chunk in response.iter_raw():
            size += len(chunk)
    return size / (time.perf_counter() - started) / 1e6


NGINX_CONF = """
worker_processes 1;
{user}
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    upstream up {{ server 127.0.0.1:{up_port}; keepalive 8; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_buffer_size 256k;
            proxy_buffers 4 256k;
            proxy_busy_buffers_size 256k;
        }}
    }}
}}
"""


class Nginx(NamedTuple):
    process: subprocess.Popen  # the master
    url: str
    worker: int  # the pid that does the proxying


def start_nginx(up_port: int) -> Nginx | None:
    """nginx proxying to the upstream, as a peer; None when nginx is not installed."""
    binary = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if binary is None:
        return None
    tmp, port = Path(tempfile.mkdtemp()), free_port()
    user = "user root;" if os.geteuid() == 0 else ""  # as root, workers would drop to nobody
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(user=user, tmp=tmp, up_port=up_port, port=port))
    check = subprocess.run([binary, "-t", "-p", str(tmp), "-c", str(conf)], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"nginx refused the benchmark's configuration: {check.stderr}")
    process = subprocess.Popen([binary, "-p", str(tmp), "-c", str(conf), "-g", "daemon off;"])
    url = f"http://127.0.0.1:{port}"
    wait_ready(url + "/ping")
    master = int((tmp / "nginx.pid").read_text())
    worker = int(subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout.split()[0])
    return Nginx(process, url, worker)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--mb", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--events", type=int, default=5000, help="events per stream for the CPU per event")
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
    # The same proxy with aiohttp's client in the relay: what the hand-written one saves.
    session_server, session_url = start_server(home, GPUSTACK_RELAY_CLIENT="aiohttp")
    nginx = None
    try:
        nginx = start_nginx(up_port)
        # name: (base URL, headers)
        proxied = {"X-GPUStack-Model": "up", **HEADERS}
        sides = {
            "direct": (upstream, {}),
            "gpustack proxy": (url + "/model/proxy", proxied),
            "aiohttp client": (session_url + "/model/proxy", proxied),
        }
        # The processes whose CPU time per event is shown.
        pids = {"gpustack proxy": server.pid, "aiohttp client": session_server.pid}
        if nginx is not None:
            sides["nginx"] = (nginx.url, {})
            pids["nginx"] = nginx.worker
        names = list(sides)
        transfers = {"httpx stream": ("stream", throughput)}
        if shutil.which("curl"):
            transfers |= {"curl stream": ("stream", curl_throughput), "curl download": ("download", curl_throughput)}
        latency: dict[str, list[float]] = {name: [] for name in sides}
        added: dict[str, list[float]] = {name: [] for name in sides}
        ratio: dict[tuple[str, str], list[float]] = {(n, t): [] for n in sides for t in transfers}
        http = httpx.Client(timeout=120)
        for base, headers in sides.values():
            for _ in range(50):
                timed(http, base + "/ping", headers)
        # Each round times a block of requests and then each transfer on every side, in a rotating
        # order, and compares the sides within the round: the machine's speed drifts less within
        # a round than across rounds.
        for i in range(args.rounds):
            order = names[i % len(names) :] + names[: i % len(names)]
            block = {}
            for name in order:
                base, headers = sides[name]
                block[name] = statistics.median(timed(http, base + "/ping", headers) for _ in range(args.requests))
                latency[name].append(block[name])
            for name in names:
                added[name].append(block[name] - block["direct"])
            for transfer, (route, measure) in transfers.items():
                speed = {}
                for name in order:
                    base, headers = sides[name]
                    speed[name] = measure(http, f"{base}/{route}?mb={args.mb}", headers)
                for name in names:
                    ratio[name, transfer].append(speed[name] / speed["direct"])
        per_event: dict[str, list[float | None]] = {name: [] for name in pids}
        for _ in range(3):
            for name, pid in pids.items():
                per_event[name].append(event_cpu(http, sides[name][0], sides[name][1], pid, args.events))
    finally:
        for process in [server, session_server, upstream_proc] + ([nginx.process] if nginx else []):
            process.terminate()
            process.wait(20)
    print(f"{args.rounds} rounds of {args.requests} small requests and {args.mb} MiB transfers per side; medians")
    print(
        f"{'':16}{'ms per request':>16}{'added ms':>10}"
        + "".join(f"{t:>15}" for t in transfers)
        + f"{'us CPU/event':>14}"
    )
    for name in sides:
        ms = statistics.median(latency[name]) * 1000
        more = f"{statistics.median(added[name]) * 1000:+10.3f}" if name != "direct" else " " * 10
        shown = "".join(f"{statistics.median(ratio[name, t]):15.3f}" for t in transfers) if name != "direct" else ""
        measured = [us for us in per_event.get(name, []) if us is not None]
        if measured:
            shown += f"{statistics.median(measured):14.0f}"
        print(f"{name:16}{ms:16.3f}{more}{shown}")
    if nginx is None:
        print("nginx: not installed (apt-get install nginx)")
    print("targets: under 1 ms added at the median, at least 0.95x the direct throughput")


if __name__ == "__main__":
    main()
