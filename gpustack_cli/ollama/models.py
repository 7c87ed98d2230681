"""What Ollama's model routes say of a stored model: `details` (format, family, parameter size,
quantization), `model_info` (the GGUF's keys), `capabilities` (what this server can do with it),
the digest, and the loaded models as `/api/ps` lists them. Read from the manifest and the GGUF's
header, never by loading the model."""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from gpustack_cli.core import templates
from gpustack_cli.core.parsing.reasoning import TAGS
from gpustack_cli.core.parsing.tool_calls import is_harmony
from gpustack_cli.models.detect import main_gguf
from gpustack_cli.models.gguf_meta import GGUFError, read_metadata
from gpustack_cli.models.store import Category, Manifest, ModelStore
from gpustack_cli.runtime.scheduler import LoadedModel, placed_bytes

# Far enough to read as "never" where a model is kept loaded for good, as Ollama writes it.
FOREVER = timedelta(days=365 * 100)


def iso(moment: float | datetime) -> str:
    when = moment if isinstance(moment, datetime) else datetime.fromtimestamp(moment, UTC)
    return when.isoformat().replace("+00:00", "Z")


@functools.cache
def _file_types() -> dict[int, str]:
    """llama.cpp's names of its file types (`general.file_type`), from its own bindings."""
    try:
        import llama_cpp
    except ImportError:
        return {}
    return {
        getattr(llama_cpp, name): name.removeprefix("LLAMA_FTYPE_").removeprefix("MOSTLY_").removeprefix("ALL_")
        for name in dir(llama_cpp)
        if name.startswith("LLAMA_FTYPE_") and name != "LLAMA_FTYPE_GUESSED"
    }


def gguf_metadata(store: ModelStore, manifest: Manifest) -> dict[str, Any]:
    """The GGUF's keys of a llama.cpp model ({} for other engines, or an unreadable file)."""
    if manifest.engine != "llama.cpp":
        return {}
    path = main_gguf(store.model_dir(manifest.name))
    try:
        return read_metadata(path) if path else {}
    except (GGUFError, OSError):
        return {}


def _format(manifest: Manifest) -> str:
    return {"llama.cpp": "gguf", "remote": "remote"}.get(manifest.engine, "safetensors")


def details(manifest: Manifest, meta: dict[str, Any]) -> dict[str, Any]:
    family = str(meta.get("general.architecture") or manifest.engine)
    file_type = meta.get("general.file_type")
    quantization = _file_types().get(file_type, "") if isinstance(file_type, int) else ""
    return {
        "parent_model": "",
        "format": _format(manifest),
        "family": family,
        "families": [family],
        "parameter_size": str(meta.get("general.size_label") or ""),
        "quantization_level": quantization,
    }


def digest(manifest: Manifest) -> str:
    """The model's weights' SHA-256 (its largest file), as Ollama names a model by its blob."""
    files = sorted(manifest.files, key=lambda f: f.size, reverse=True)
    return files[0].sha256 if files else ""


def listed(manifest: Manifest, meta: dict[str, Any]) -> dict[str, Any]:
    """A model of `/api/tags`."""
    return {
        "name": manifest.name,
        "model": manifest.name,
        "modified_at": iso(manifest.created),
        "size": manifest.size,
        "digest": digest(manifest),
        "details": details(manifest, meta),
    }


def chat_template(manifest: Manifest, meta: dict[str, Any]) -> str:
    return str(manifest.options.get("chat_template") or meta.get("tokenizer.chat_template") or "")


def _has_fim(meta: dict[str, Any]) -> bool:
    return all(
        isinstance(meta.get(f"tokenizer.ggml.{part}_token_id"), int) for part in ("fim_pre", "fim_suf", "fim_mid")
    )


def capabilities(manifest: Manifest, meta: dict[str, Any]) -> list[str]:
    """What this server can do with the model, in Ollama's words. Every chat model can call tools
    here (in its own format, or the generic one); it thinks where its template has reasoning tags
    or GPT-OSS's channels."""
    found: list[str] = []
    if Category.llm in manifest.categories:
        found += ["completion", "tools"]
        template = chat_template(manifest, meta)
        if is_harmony(template) or any(start in template and end in template for start, end in TAGS):
            found.append("thinking")
        if _has_fim(meta):
            found.append("insert")
        found += manifest.modalities
    if Category.embedding in manifest.categories:
        found.append("embedding")
    return found


def model_info(manifest: Manifest, meta: dict[str, Any], verbose: bool) -> dict[str, Any]:
    """The GGUF's keys (long arrays only with `verbose`, as `{"array_length": n}`; the chat template
    is `template`), or the few that describe a model of another engine."""
    if not meta:
        return {"general.architecture": manifest.engine, "general.basename": manifest.name}
    info = {
        key: value
        for key, value in meta.items()
        if key != "tokenizer.chat_template"
        and not key.startswith("gguf.")
        and (verbose or not (isinstance(value, dict) and "array_length" in value))
    }
    return info


def parameters(manifest: Manifest) -> str:
    """The model's settings in a Modelfile's `PARAMETER` lines' words (`name value` a line)."""
    lines = []
    if manifest.options.get("n_ctx"):
        lines.append(f"num_ctx {manifest.options['n_ctx']}")
    for stop in manifest.options.get("stop", []) or []:
        lines.append(f'stop "{stop}"')
    return "\n".join(lines)


def shown(store: ModelStore, manifest: Manifest, verbose: bool) -> dict[str, Any]:
    """`/api/show`: every field present (an empty string or list where there is nothing)."""
    meta = gguf_metadata(store, manifest)
    template = chat_template(manifest, meta)
    checked = templates.check(template) if template else None
    return {
        "license": str(meta.get("general.license") or ""),
        "modelfile": f"# gpustack model {manifest.name}\nFROM {manifest.source}\n",
        "parameters": parameters(manifest),
        "template": template if checked is None else "",
        "details": details(manifest, meta),
        "model_info": model_info(manifest, meta, verbose),
        "capabilities": capabilities(manifest, meta),
        "modified_at": iso(manifest.created),
    }


def running(loaded: LoadedModel, manifest: Manifest, meta: dict[str, Any], on_gpu: bool) -> dict[str, Any]:
    """A model of `/api/ps`: Ollama's fields, and this server's own (slots, queue, times)."""
    now = datetime.now(UTC)
    # Busy, or kept for good: nothing is set to unload it.
    expires = now + (FOREVER if loaded.expires_in is None else timedelta(seconds=loaded.expires_in))
    size, size_vram = manifest.size, manifest.size if on_gpu else 0
    if loaded.placement:  # what llama.cpp said it holds: weights, KV cache and compute, per device
        held = {p["device"]: placed_bytes(p) for p in loaded.placement}
        size = sum(held.values())
        # In GPU memory: a local GPU's share (not the CPU's, nor what an RPC server HOST:PORT holds).
        size_vram = sum(n for device, n in held.items() if device != "CPU" and ":" not in device)
    return {
        "name": manifest.name,
        "model": manifest.name,
        "size": size,
        "digest": digest(manifest),
        "details": details(manifest, meta),
        "expires_at": iso(expires),
        "size_vram": size_vram,
        "context_length": loaded.context or 0,
        **{k: v for k, v in vars(loaded).items() if k != "name"},
        "loaded_at": iso(time.time() - loaded.loaded_for),
    }
