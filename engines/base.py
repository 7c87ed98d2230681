"""What every engine is, and how one is found and loaded.

An engine is a model loaded in this process. It knows nothing of HTTP: the API translators turn
wire formats into the request types of the capabilities an engine implements, and the scheduler
decides when engines are loaded and closed. Engine modules import their heavy libraries (torch,
llama_cpp, ...) only when a model is loaded, so `gpustack` starts fast and installs stay à la carte.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class LoadSpec:
    """Everything an engine needs to load a model: where its files are and how to run it."""

    name: str
    path: Path
    options: dict[str, Any] = field(default_factory=dict)
    # -1 offloads every layer to the GPU when one is present; 0 keeps the model on the CPU.
    gpu_layers: int = -1


@runtime_checkable
class Engine(Protocol):
    # How many requests this loaded model can usefully run at once.
    max_concurrency: int

    def close(self) -> None:
        """Free the model's memory (and GPU memory)."""


class EngineUnavailable(RuntimeError):
    """The engine a model needs is not installed (or does not exist in this build)."""


@dataclass(frozen=True)
class EngineInfo:
    module: str
    # The `pip install 'gpustack[EXTRA]'` extra that brings the engine's libraries.
    extra: str


ENGINES: dict[str, EngineInfo] = {
    "llama.cpp": EngineInfo("engines.llama", "llm"),
    "sentence-transformers": EngineInfo("engines.sentence", "embeddings"),
    "diffusers": EngineInfo("engines.diffusion", "images"),
    "faster-whisper": EngineInfo("engines.whisper", "audio"),
    "piper": EngineInfo("engines.piper", "audio"),
}


def load_engine(engine: str, spec: LoadSpec) -> Engine:
    """Import the engine's module and load the model (blocking: call it off the event loop)."""
    info = ENGINES.get(engine)
    if info is None:
        raise EngineUnavailable(f"unknown engine '{engine}' for model '{spec.name}'")
    try:
        module = importlib.import_module(info.module)
    except ModuleNotFoundError as exc:
        if exc.name == info.module:
            raise EngineUnavailable(f"the {engine} engine is not part of this gpustack build yet") from exc
        raise EngineUnavailable(
            f"the {engine} engine needs '{exc.name}', which is not installed: pip install 'gpustack[{info.extra}]'"
        ) from exc
    return module.load(spec)
