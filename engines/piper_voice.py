"""What a Piper voice's `.onnx.json` says about its speakers, read without loading the voice:
the engine uses it, and so does `GET /v1/audio/voices`, which lists the voices of models that
are not loaded (and must not need onnxruntime to do so)."""

from __future__ import annotations

import json
from pathlib import Path


def speakers(model_file: Path) -> dict[str, int]:
    """A multi-speaker voice's speaker ids by name; empty for a single-speaker voice."""
    config = json.loads(model_file.with_name(model_file.name + ".json").read_text())
    return dict(config.get("speaker_id_map") or {})


def voice_names(model_file: Path) -> list[str]:
    """The names a request may ask for: the speakers, or the voice's own name when it has one."""
    return list(speakers(model_file)) or [model_file.name.removesuffix(".onnx")]
