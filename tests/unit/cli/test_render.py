"""`gpustack ps`'s table from `/api/ps` entries (no server)."""

from __future__ import annotations

from rich.console import Console

from gpustack_cli.cli.render import loaded_models

ENTRY = {
    "name": "chat",
    "active": 1,
    "concurrency": 4,
    "waiting": 0,
    "loaded_for": 12.0,
    "expires_in": None,
    "context": 8192,
    "context_from": "server",
    "kv_cache": {"flash_attn": "auto", "type_k": "f16", "type_v": "f16"},
    "placement": [{"device": "CPU", "layers": 31, "weights_bytes": 92_000_000}],
    "draft": None,
}


def shown(**changes: object) -> str:
    console = Console(width=200, record=True)
    loaded_models([{**ENTRY, **changes}], console)
    return " ".join(console.export_text().split())


def test_a_plain_model_shows_its_context_and_devices() -> None:
    text = shown()
    assert "chat 1/4 0 8192 12s busy CPU: 31 layers, 92.0 MB" in text and "(fit)" not in text and "KV " not in text


def test_a_fitted_context_a_quantized_cache_and_drafts_are_said() -> None:
    kv = {"flash_attn": "on", "type_k": "q8_0", "type_v": "q4_0"}
    draft = {"kind": "ngram", "max_tokens": 32, "min_tokens": 2, "drafted_tokens": 90, "accepted_tokens": 61}
    text = shown(context_from="memory", kv_cache=kv, draft=draft)
    assert "8192 (fit)" in text and "KV q8_0/q4_0" in text and "ngram drafts: 61 of 90 tokens kept" in text
