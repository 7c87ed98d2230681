"""Tell which engine serves a pulled folder, and what it can do, from the files it holds."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpustack_cli.models.gguf_meta import GGUFError, read_metadata
from gpustack_cli.models.store import Category

# llama.cpp pooling types (enum llama_pooling_type): 4 is RANK, used by GGUF rerankers.
POOLING_RANK = 4
EMBEDDING_ARCHITECTURES = {"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "t5encoder", "modern-bert"}


@dataclass
class Detected:
    engine: str
    categories: list[Category]
    options: dict[str, Any] = field(default_factory=dict)


class UnknownFormat(ValueError):
    pass


def main_gguf(folder: Path) -> Path | None:
    """The model file among a folder's GGUFs: the largest that is not a vision projector."""
    files = [p for p in folder.rglob("*.gguf") if "mmproj" not in p.name.lower()]
    return max(files, key=lambda p: p.stat().st_size) if files else None


def projector_modalities(path: Path) -> list[str]:
    """What a vision/audio projector (`mmproj` GGUF) lets its model take: "vision", "audio"."""
    try:
        meta = read_metadata(path)
    except GGUFError as exc:
        raise UnknownFormat(f"{path.name}: {exc}") from exc
    found = [kind for kind in ("vision", "audio") if meta.get(f"clip.has_{kind}_encoder")]
    if not found:
        raise UnknownFormat(f"{path.name} is not a projector llama.cpp loads (no vision or audio encoder in it)")
    return found


def _gguf(folder: Path, path: Path) -> Detected:
    try:
        meta = read_metadata(path)
    except GGUFError as exc:
        raise UnknownFormat(str(exc)) from exc
    arch = str(meta.get("general.architecture", ""))
    options: dict[str, Any] = {"model_file": path.relative_to(folder).as_posix()}
    context = meta.get(f"{arch}.context_length")
    if isinstance(context, int):
        options["n_ctx_train"] = context  # the engine picks the context it runs with (see `ctx_size`)
    projector = [p for p in folder.rglob("*.gguf") if "mmproj" in p.name.lower()]
    if projector:
        options["mmproj_file"] = projector[0].relative_to(folder).as_posix()
        try:
            options["modalities"] = projector_modalities(projector[0])
        except UnknownFormat:  # an older projector that names no encoder: LLaVA's were all vision
            options["modalities"] = ["vision"]
    pooling = meta.get(f"{arch}.pooling_type")
    # A classification head (`classifier.output_labels`) on an encoder is a reranker: llama.cpp
    # scores pairs with it under rank pooling, which the engine asks for when the file names none.
    if pooling == POOLING_RANK or (arch in EMBEDDING_ARCHITECTURES and f"{arch}.classifier.output_labels" in meta):
        return Detected("llama.cpp", [Category.reranker], {**options, "pooling": "rank"})
    if arch in EMBEDDING_ARCHITECTURES or (pooling and "tokenizer.chat_template" not in meta):
        return Detected("llama.cpp", [Category.embedding, Category.reranker], options)
    return Detected("llama.cpp", [Category.llm], options)


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def detect(folder: Path) -> Detected:
    gguf = main_gguf(folder)
    if gguf:
        return _gguf(folder, gguf)
    if (folder / "model_index.json").is_file():
        return Detected("diffusers", [Category.image])
    if (folder / "modules.json").is_file() or (folder / "config_sentence_transformers.json").is_file():
        return Detected("sentence-transformers", [Category.embedding, Category.reranker])
    config = _json(folder / "config.json")
    architectures = config.get("architectures") or []
    if any(str(a).endswith("ForSequenceClassification") for a in architectures):
        return Detected("sentence-transformers", [Category.reranker], {"mode": "cross-encoder"})
    if (folder / "model.bin").is_file() and any(folder.glob("vocabulary.*")):
        return Detected("faster-whisper", [Category.speech_to_text])
    voices = [p for p in folder.glob("*.onnx") if p.with_name(p.name + ".json").is_file()]
    if voices:
        return Detected("piper", [Category.text_to_speech], {"model_file": voices[0].name})
    names = ", ".join(sorted(p.name for p in folder.iterdir())[:8])
    raise UnknownFormat(
        f"cannot tell which engine serves these files ({names}); "
        "expected a GGUF, a diffusers, sentence-transformers or Whisper folder, or a Piper voice"
    )
