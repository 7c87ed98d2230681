"""Load a model of the store into its engine (blocking: call it off the event loop)."""

from __future__ import annotations

from engines.base import Engine, LoadSpec, load_engine
from gpustack_cli.config import Settings
from gpustack_cli.models.store import ModelStore


def load_model(store: ModelStore, name: str, settings: Settings) -> Engine:
    manifest = store.get(name)
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
    )
    return load_engine(manifest.engine, spec)
