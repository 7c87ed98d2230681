"""Load a model of the store into its engine (blocking: call it off the event loop)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from engines.base import Engine, LoadSpec, load_engine
from gpustack_cli.config import Settings
from gpustack_cli.models.store import Manifest, ModelStore

if TYPE_CHECKING:
    from engines.llama_estimate import Estimate


def rpc_servers(manifest: Manifest, settings: Settings) -> list[str]:
    """The RPC servers a model's layers go to: its own, else the server's (llama.cpp models only)."""
    if manifest.engine != "llama.cpp":
        return []
    return list(manifest.options.get("rpc") or settings.rpc)


def in_child(manifest: Manifest, settings: Settings) -> bool:
    """Whether a model runs in a child server of its own (`gpustack_cli.upstream.child`): one with
    RPC servers, unless the settings say otherwise."""
    return settings.isolate_rpc and bool(rpc_servers(manifest, settings))


def load_estimate(
    store: ModelStore,
    manifest: Manifest,
    settings: Settings,
    ctx_size: int | None,
    parallel: int | None,
    flash_attn: str | None,
    cache_type_k: str | None,
    cache_type_v: str | None,
) -> Estimate:
    """What loading a llama.cpp generation model would take with the settings given, else the
    model's own, else the server's (as `engines.llama` picks them), without loading it."""
    from engines.llama_estimate import estimate

    if manifest.engine != "llama.cpp" or not manifest.options.get("model_file"):
        raise ValueError(f"'{manifest.name}' is a {manifest.engine} model: estimates are for llama.cpp models")
    options = manifest.options
    tuning = settings.tuning.over(options)
    trained = int(int(options.get("n_ctx_train") or 0) * tuning.context_scale)
    n_ctx = ctx_size or int(options.get("n_ctx") or settings.ctx_size or 0) or None
    given = {"flash_attn": flash_attn, "type_k": cache_type_k, "type_v": cache_type_v}
    kv = replace(settings.kv_cache.over(options), **{k: v for k, v in given.items() if v})
    return estimate(
        store.model_dir(manifest.name) / options["model_file"],
        n_ctx=min(n_ctx, trained) if n_ctx and trained else n_ctx,
        longest=trained,
        parallel=parallel or int(options.get("parallel") or settings.parallel),
        kv_cache=kv,
        gpu_layers=int(options["n_gpu_layers"]) if options.get("n_gpu_layers") is not None else settings.gpu_layers,
        tuning=tuning,
    )


def load_model(store: ModelStore, name: str, settings: Settings) -> Engine:
    manifest = store.get(name)
    if in_child(manifest, settings):
        from gpustack_cli.upstream import child

        return child.start(name, settings, tuple(rpc_servers(manifest, settings)))
    spec = LoadSpec(
        name=name,
        path=store.model_dir(name),
        categories=tuple(c.value for c in manifest.categories),
        options=manifest.options,
        gpu_layers=settings.gpu_layers,
        threads=settings.threads,
        parallel=settings.parallel,
        ctx_size=settings.ctx_size,
        grammar_budget=settings.grammar_token_budget,
        kv_cache=settings.kv_cache,
        rpc=tuple(rpc_servers(manifest, settings)),
        seeded_from_scratch=settings.seed_from_scratch,
        tuning=settings.tuning,
    )
    return load_engine(manifest.engine, spec)
