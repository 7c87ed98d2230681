"""`gpustack rpc-server`: llama.cpp's RPC server, run from this program's own llama.cpp, so that a
machine lends its devices to a model loaded elsewhere (`serve --rpc`, `model set --rpc`).

ggml's server call blocks in C for as long as it serves; it runs on a thread of its own so that
the main thread can still take Ctrl-C (and a stop signal) and end the process."""

from __future__ import annotations

import contextlib
import os
import signal
import threading

from gpustack_cli.cli.shared import console, err
from gpustack_cli.config import Settings, is_loopback


def run(settings: Settings, host: str, port: int, devices: list[str], threads: int | None, cache: bool) -> None:
    from engines import ggml_devices

    if not ggml_devices.built_in():
        raise ValueError(
            "this llama.cpp has no RPC backend: reinstall llama-cpp-python with "
            'CMAKE_ARGS="-DGGML_RPC=ON" (docs/rpc.md)'
        )
    if not is_loopback(host):
        # llama.cpp's own warning, in its words.
        err.print(
            f"[bold yellow]WARNING: Host ('{host}') is != '127.0.0.1'. Never expose the RPC server to an open "
            "network! It has no authentication: use it on a private network or through an SSH tunnel.[/]"
        )
    cache_dir = settings.home / "rpc-cache" if cache else None
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
    endpoint = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    server = ggml_devices.rpc_server(endpoint, devices, threads or cores, cache_dir)
    for device in server.devices:
        size = f"{device.total // (1024 * 1024)} MiB" if device.total else "memory unknown"
        console.print(f"lending {device.name} ({device.description}, {size})")
    ended = threading.Event()
    failed: list[bool] = []

    def serve() -> None:
        server.run()
        failed.append(True)
        ended.set()

    threading.Thread(target=serve, name="rpc-server", daemon=True).start()
    console.print(f"gpustack rpc-server listening on {endpoint}" + (f", cache {cache_dir}" if cache_dir else ""))
    signal.signal(signal.SIGTERM, lambda *_: ended.set())
    with contextlib.suppress(KeyboardInterrupt):
        ended.wait()
    if failed:
        err.print(f"[red]error:[/] the RPC server stopped: is {endpoint} in use, or not an address of this machine?")
        os._exit(1)
    # ggml's server thread cannot be stopped from outside: the process ends around it.
    os._exit(0)
