"""Ollama's model listings from the store and the scheduler (no model loaded)."""

from __future__ import annotations

from gpustack_cli.models.store import Category, Manifest, ModelFile
from gpustack_cli.ollama.models import running
from gpustack_cli.runtime.scheduler import LoadedModel

MANIFEST = Manifest(
    name="chat",
    source="test",
    categories=[Category.llm],
    engine="llama.cpp",
    files=[ModelFile(path="a.gguf", size=1000, sha256="0" * 64)],
)


def loaded(placement: list[dict] | None) -> LoadedModel:
    return LoadedModel("chat", 0, 0, 4, 10.0, 60.0, context=2048, placement=placement)


def test_size_and_size_vram_are_what_llama_cpp_said_each_device_holds() -> None:
    placement = [
        {"device": "CPU", "layers": 1, "weights_bytes": 100, "kv_cache_bytes": 10, "compute_bytes": 5},
        {"device": "CUDA0", "layers": 20, "weights_bytes": 800, "kv_cache_bytes": 200, "compute_bytes": 50},
        {"device": "10.0.0.2:50052", "layers": 9, "weights_bytes": 400, "kv_cache_bytes": 90, "compute_bytes": 0},
    ]
    shown = running(loaded(placement), MANIFEST, {}, on_gpu=True)
    assert (shown["size"], shown["size_vram"]) == (115 + 1050 + 490, 1050)
    assert shown["context_length"] == 2048


def test_without_placement_the_files_size_stands_for_it() -> None:
    assert running(loaded(None), MANIFEST, {}, on_gpu=False)["size"] == MANIFEST.size
    shown = running(loaded(None), MANIFEST, {}, on_gpu=True)
    assert shown["size_vram"] == shown["size"] == MANIFEST.size
