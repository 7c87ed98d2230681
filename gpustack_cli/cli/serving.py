"""`gpustack serve`, and the commands that ask a running server (`ps`, `stop`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from gpustack_cli.cli import render
from gpustack_cli.cli.shared import (
    JsonFlag,
    app,
    console,
    fail,
    print_json,
    settings,
)

if TYPE_CHECKING:
    from gpustack_cli.cli.connection import Connection

T = TypeVar("T")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on [GPUSTACK_HOST, default 127.0.0.1].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [GPUSTACK_PORT, default 11500].")] = None,
    api_key: Annotated[str | None, typer.Option(help="Accept this key too [GPUSTACK_API_KEY].")] = None,
    insecure_no_auth: Annotated[
        bool | None, typer.Option("--insecure-no-auth", help="Serve a non-loopback address without keys.")
    ] = None,
    keep_alive: Annotated[str | None, typer.Option(help="Idle time before unloading: 5m, 1h, -1, 0.")] = None,
    max_loaded_models: Annotated[int | None, typer.Option(help="Models kept loaded at once.")] = None,
    parallel: Annotated[int | None, typer.Option(help="Requests run at once per model.")] = None,
    max_queue: Annotated[int | None, typer.Option(help="Requests waiting per model before 503.")] = None,
    preload: Annotated[list[str] | None, typer.Option(help="Load this model at start (repeatable).")] = None,
    gpu_layers: Annotated[int | None, typer.Option(help="Layers offloaded to the GPU (-1: all).")] = None,
    threads: Annotated[
        int | None, typer.Option(help="CPU threads llama.cpp models decode with (default: all cores).")
    ] = None,
    generic_proxy: Annotated[
        list[str] | None, typer.Option("--generic-proxy", help="Serve this model's native API (repeatable).")
    ] = None,
    ctx_size: Annotated[
        int | None,
        typer.Option(
            help="Context per request slot of llama.cpp models "
            "[default: the largest, up to the trained length, that half the free memory holds]."
        ),
    ] = None,
    max_completion_tokens: Annotated[
        int | None, typer.Option(help="Tokens one answer may generate at most (default: what the context leaves).")
    ] = None,
    reasoning_format: Annotated[
        str | None,
        typer.Option(help="A reasoning model's thinking: apart from the answer (auto) or in it (none)."),
    ] = None,
    allowed_hosts: Annotated[
        list[str] | None,
        typer.Option("--allowed-hosts", help="A host name to answer without keys, besides loopback (repeatable)."),
    ] = None,
    cors_origins: Annotated[
        list[str] | None,
        typer.Option(
            "--cors-origins", help="A web origin that may call the server (repeatable; * for any) [GPUSTACK_ORIGINS]."
        ),
    ] = None,
    sse_keepalive: Annotated[
        float | None,
        typer.Option(help="Seconds a stream may stay silent before a keep-alive is sent (0: never) [default 15]."),
    ] = None,
    flash_attn: Annotated[
        str | None, typer.Option(help="llama.cpp flash attention: auto, on or off [default: auto].")
    ] = None,
    cache_type_k: Annotated[
        str | None, typer.Option(help="llama.cpp K cache type: f16, q8_0 or q4_0 [default: f16].")
    ] = None,
    cache_type_v: Annotated[
        str | None,
        typer.Option(
            help="llama.cpp V cache type: f16, q8_0 or q4_0 (quantized: with flash attention) [default: f16]."
        ),
    ] = None,
    allow_image_urls: Annotated[
        bool,
        typer.Option("--allow-image-urls", help="Fetch chats' http(s) image URLs (public addresses only)."),
    ] = False,
    rpc: Annotated[
        str | None,
        typer.Option(help="RPC servers for llama.cpp models' layers: HOST:PORT[,HOST:PORT...] (gpustack rpc-server)."),
    ] = None,
    main_gpu: Annotated[
        int | None, typer.Option(help="llama.cpp: the GPU for a whole model or its small tensors.")
    ] = None,
    tensor_split: Annotated[str | None, typer.Option(help="llama.cpp: each GPU's share of the layers, as 3,1.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="llama.cpp: tokens one decode takes at most [512].")] = None,
    ubatch_size: Annotated[int | None, typer.Option(help="llama.cpp: tokens computed at once [512].")] = None,
    mlock: Annotated[bool, typer.Option("--mlock", help="llama.cpp: keep models' weights in RAM.")] = False,
    no_mmap: Annotated[
        bool, typer.Option("--no-mmap", help="llama.cpp: read weights instead of mapping them.")
    ] = False,
    rope_scaling: Annotated[str | None, typer.Option(help="llama.cpp: RoPE scaling, none, linear or yarn.")] = None,
    rope_freq_base: Annotated[
        float | None, typer.Option(help="llama.cpp: RoPE base frequency (0: the model's).")
    ] = None,
    rope_freq_scale: Annotated[
        float | None, typer.Option(help="llama.cpp: RoPE frequency scale, 0.5 doubles the context (0: the model's).")
    ] = None,
    no_pull: Annotated[bool, typer.Option("--no-pull", help="Do not pull the default models.")] = False,
    no_ui: Annotated[bool, typer.Option("--no-ui", help="Serve no browser playground at /ui/.")] = False,
) -> None:
    """Serve the models in the store over HTTP (OpenAI, Anthropic and Jina APIs)."""
    from gpustack_cli.server.serve import StartupError
    from gpustack_cli.server.serve import serve as run_server

    config = settings(
        host=host,
        port=port,
        api_key=api_key,
        insecure_no_auth=insecure_no_auth,
        keep_alive=keep_alive,
        max_loaded_models=max_loaded_models,
        parallel=parallel,
        max_queue=max_queue,
        preload=preload or None,
        gpu_layers=gpu_layers,
        threads=threads,
        generic_proxy=generic_proxy or None,
        max_completion_tokens=max_completion_tokens,
        ctx_size=ctx_size,
        reasoning_format=reasoning_format,
        sse_keepalive=sse_keepalive,
        allowed_hosts=allowed_hosts or None,
        origins=cors_origins or None,
        allow_image_urls=True if allow_image_urls else None,
        flash_attn=flash_attn,
        cache_type_k=cache_type_k,
        cache_type_v=cache_type_v,
        rpc=rpc,
        main_gpu=main_gpu,
        tensor_split=tensor_split,
        batch_size=batch_size,
        ubatch_size=ubatch_size,
        mlock=True if mlock else None,
        mmap=False if no_mmap else None,
        rope_scaling=rope_scaling,
        rope_freq_base=rope_freq_base,
        rope_freq_scale=rope_freq_scale,
        pull_defaults=False if no_pull else None,
        ui=False if no_ui else None,
    )
    try:
        run_server(config, console)
    except StartupError as exc:
        raise fail(str(exc)) from exc
    except OSError as exc:
        raise fail(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from exc


@app.command("rpc-server")
def rpc_server(
    host: Annotated[str, typer.Option(help="Address to listen on (the protocol has no keys: keep it private).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 50052,
    device: Annotated[
        list[str] | None,
        typer.Option("--device", "-d", help="Lend this device (repeatable; default: the GPUs, else the CPU)."),
    ] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads of the CPU device (default: all cores).")] = None,
    cache: Annotated[
        bool, typer.Option("--cache", "-c", help="Keep the tensors clients send on disk, to load faster next time.")
    ] = False,
) -> None:
    """Lend this machine's devices to llama.cpp models on other machines (llama.cpp's RPC server)."""
    from gpustack_cli.cli.rpc_server import run

    try:
        run(settings(), host, port, [n for d in device or [] for n in d.split(",") if n], threads, cache)
    except ValueError as exc:
        raise fail(str(exc)) from exc


@app.command()
def ps(as_json: JsonFlag = False) -> None:
    """List the models loaded in the running server."""
    models = _on_server(lambda connection: connection.ps())
    if as_json:
        print_json(models)
        return
    render.loaded_models(models, console)


@app.command()
def stop(name: str) -> None:
    """Unload a model from the running server."""
    _on_server(lambda connection: connection.stop(name))
    console.print(f"unloaded {name}")


def _on_server(call: Callable[[Connection], Awaitable[T]]) -> T:
    """What `call` gets from the running server (its state is what these commands are about)."""
    from gpustack_cli.cli.connection import ClientError, connect

    try:
        with connect(settings(), server_only=True) as terminal:
            return terminal.call(call(terminal.connection))
    except ClientError as exc:
        raise fail(str(exc)) from exc
