"""Load a model of the store into its engine (blocking: call it off the event loop)."""

from __future__ import annotations

from engines.base import Engine, LoadSpec, load_engine
from gpustack_cli.config import Settings
from gpustack_cli.models.store import Manifest, ModelStore


def rpc_servers(manifest: Manifest, settings: Settings) -> list[str]:
    """The RPC servers a model's layers go to: its own, else the server's (llama.cpp models only)."""
    if manifest.engine != "llama.cpp":
        return []
    return list(manifest.options.get("rpc") or settings.rpc)


def in_child(manifest: Manifest, settings: Settings) -> bool:
    """Whether a model runs in a child server of its own (`gpustack_cli.upstream.child`): one with
    RPC servers, unless the settings say otherwise."""
    return settings.isolate_rpc and bool(rpc_servers(manifest, settings))


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
    )
    return load_engine(manifest.engine, spec)
