"""A model's own settings, kept in its manifest's options and read at its next load: llama.cpp's
context per slot and slots, the chat template with its default variables, and stop strings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gpustack_cli.core import templates
from gpustack_cli.models.detect import UnknownFormat, main_gguf, projector_modalities
from gpustack_cli.models.gguf_meta import GGUFError, read_metadata
from gpustack_cli.models.store import Manifest, ModelStore, StoreError

LLAMA = "llama.cpp"


def _llama_options(store: ModelStore, name: str, what: str) -> dict[str, Any]:
    manifest = store.get(name)
    if manifest.engine != LLAMA:
        raise StoreError(f"'{name}' is a {manifest.engine} model: {what} are for llama.cpp models")
    return dict(manifest.options)


def set_slots(store: ModelStore, name: str, ctx_size: int | None, parallel: int | None) -> Manifest:
    """A llama.cpp model's own context per slot and slots (0 clears one: the server's then)."""
    options = _llama_options(store, name, "--ctx-size and --parallel")
    trained = options.get("n_ctx_train")
    stretch = 1.0 / options["rope_freq_scale"] if options.get("rope_freq_scale") else 1.0
    if ctx_size and trained and ctx_size > trained * stretch:
        raise StoreError(
            f"'{name}' was trained for {trained} tokens of context: --ctx-size {ctx_size} is past it "
            "(--rope-freq-scale 0.5 with --rope-scaling yarn stretches it to twice that)"
        )
    for key, value in (("n_ctx", ctx_size), ("parallel", parallel)):
        if value == 0:
            options.pop(key, None)
        elif value is not None:
            options[key] = value
    return store.update(name, options=options)


def set_kv_cache(
    store: ModelStore, name: str, flash_attn: str | None, cache_type_k: str | None, cache_type_v: str | None
) -> Manifest:
    """A llama.cpp model's own KV cache settings ('' clears one: the server's then), checked
    together with the server's defaults for those it does not set."""
    from gpustack_cli.config import Settings

    options = _llama_options(store, name, "KV cache settings")
    for key, value in (("flash_attn", flash_attn), ("cache_type_k", cache_type_k), ("cache_type_v", cache_type_v)):
        if value == "":
            options.pop(key, None)
        elif value is not None:
            options[key] = value
    try:
        Settings.load().kv_cache.over(options)
    except ValueError as exc:
        raise StoreError(str(exc)) from exc
    return store.update(name, options=options)


def set_draft(
    store: ModelStore, name: str, kind: str | None, max_tokens: int | None, min_tokens: int | None
) -> Manifest:
    """A llama.cpp model's speculative drafting: `ngram` (prompt lookup; '' turns it off), and how
    many tokens a draft holds at most and at least (0 goes back to the default)."""
    from engines.llama_draft import Drafting

    options = _llama_options(store, name, "drafts")
    if kind == "":
        for key in ("draft", "draft_max", "draft_min"):
            options.pop(key, None)
        return store.update(name, options=options)
    if kind is not None:
        if kind != "ngram":
            raise StoreError(
                f"a model drafts with 'ngram' (prompt lookup), not '{kind}': no draft model runs beside another yet"
            )
        options["draft"] = kind
    for key, value in (("draft_max", max_tokens), ("draft_min", min_tokens)):
        if value == 0:
            options.pop(key, None)
        elif value is not None:
            options[key] = value
    if "draft" not in options and (max_tokens or min_tokens):
        raise StoreError(f"'{name}' does not draft: add --draft ngram")
    try:
        defaults = Drafting()
        Drafting(options.get("draft_max", defaults.max_tokens), options.get("draft_min", defaults.min_tokens))
    except ValueError as exc:
        raise StoreError(str(exc)) from exc
    return store.update(name, options=options)


def set_tuning(store: ModelStore, name: str, values: dict[str, str]) -> Manifest:
    """A llama.cpp model's own load settings, from the text of their flags by option key ('' clears
    one: the server's then), checked together with the server's defaults for the others."""
    from engines.base import Tuning
    from gpustack_cli.config import Settings

    options = _llama_options(store, name, "load settings")
    kinds = {"n_gpu_layers": int, "main_gpu": int, "n_batch": int, "n_ubatch": int, "mlock": _flag, "mmap": _flag}
    kinds |= {"tensor_split": _shares, "rope_scaling": str, "rope_freq_base": float, "rope_freq_scale": float}
    for key, text in values.items():
        if text == "":
            options.pop(key, None)
            continue
        try:
            options[key] = kinds[key](text)
        except ValueError as exc:
            raise StoreError(f"--{key.removeprefix('n_').replace('_', '-')}: not a value: {text!r}") from exc
    if options.get("n_gpu_layers") is not None and options["n_gpu_layers"] < -1:
        raise StoreError("--gpu-layers is -1 (all), 0 (none) or a count of layers")
    try:
        tuning: Tuning = Settings.load().tuning.over(options)
    except (ValueError, TypeError) as exc:
        raise StoreError(str(exc)) from exc
    trained, n_ctx = options.get("n_ctx_train"), options.get("n_ctx")
    if trained and n_ctx and n_ctx > trained * tuning.context_scale:
        raise StoreError(f"'{name}' was trained for {trained} tokens of context: its --ctx-size {n_ctx} is past it")
    return store.update(name, options=options)


def _flag(text: str) -> bool:
    if text.lower() in ("true", "1", "yes", "on"):
        return True
    if text.lower() in ("false", "0", "no", "off"):
        return False
    raise ValueError(text)


def _shares(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def set_rpc(store: ModelStore, name: str, servers: str) -> Manifest:
    """The RPC servers (HOST:PORT, comma-separated) a llama.cpp model's layers go to ('' clears
    them: the server's `--rpc`, if any, then)."""
    from engines.ggml_devices import rpc_endpoints

    options = _llama_options(store, name, "RPC servers")
    try:
        endpoints = rpc_endpoints(servers)
    except ValueError as exc:
        raise StoreError(str(exc)) from exc
    if endpoints:
        options["rpc"] = endpoints
    else:
        options.pop("rpc", None)
    return store.update(name, options=options)


def set_projector(store: ModelStore, name: str, source: str) -> Manifest:
    """A llama.cpp model's vision/audio projector: a GGUF kept anywhere ('' goes back to the one
    pulled with the model, if any). One that names no vision or audio encoder is refused."""
    options = _llama_options(store, name, "projectors")
    if source == "":
        options.pop("mmproj_file", None)
        options.pop("modalities", None)
        pulled = [p for p in store.model_dir(name).rglob("*.gguf") if "mmproj" in p.name.lower()]
        if pulled:
            options["mmproj_file"] = pulled[0].relative_to(store.model_dir(name)).as_posix()
            options["modalities"] = projector_modalities(pulled[0])
        return store.update(name, options=options)
    path = Path(source).expanduser().resolve()
    if not path.is_file():
        raise StoreError(f"no projector file at {source}")
    try:
        options["modalities"] = projector_modalities(path)
    except UnknownFormat as exc:
        raise StoreError(str(exc)) from exc
    options["mmproj_file"] = str(path)
    return store.update(name, options=options)


def set_chat_template(store: ModelStore, name: str, source: str | None, kwargs: str | None) -> Manifest:
    """A llama.cpp model's chat template, from a file, in place of its GGUF's (an empty path
    clears it), and the template variables it gets unless a request sets them (a JSON object;
    `{}` clears them). A template that does not compile is refused."""
    options = _llama_options(store, name, "chat templates")
    if source is not None:
        if source == "":
            options.pop("chat_template", None)
        else:
            try:
                text = Path(source).expanduser().read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise StoreError(f"cannot read the chat template {source}: {exc}") from exc
            problem = templates.check(text)
            if problem:
                raise StoreError(f"{source}: {problem}")
            options["chat_template"] = text
    if kwargs is not None:
        try:
            variables = json.loads(kwargs)
        except ValueError as exc:
            raise StoreError(f"--chat-template-kwargs is not JSON: {exc}") from exc
        if not isinstance(variables, dict):
            raise StoreError('--chat-template-kwargs must be a JSON object, such as {"enable_thinking": false}')
        if variables:
            options["chat_template_kwargs"] = variables
        else:
            options.pop("chat_template_kwargs", None)
    return store.update(name, options=options)


def set_stops(store: ModelStore, name: str, stops: list[str]) -> Manifest:
    """A llama.cpp model's own stop strings, which end its text as its end-of-turn token does
    (as Ollama's `PARAMETER stop`): what gives a base model, which never learnt to end a turn, an
    end. They replace the earlier ones; a single empty string clears them."""
    options = _llama_options(store, name, "stop strings")
    kept = [s for s in stops if s]
    if kept:
        options["stop"] = kept
    else:
        options.pop("stop", None)
    return store.update(name, options=options)


def chat_template_status(store: ModelStore, manifest: Manifest) -> dict[str, Any] | None:
    """Where a llama.cpp model's chat template comes from and whether it compiles; None for
    other engines."""
    if manifest.engine != LLAMA:
        return None
    source = manifest.options.get("chat_template")
    origin = "the model's settings (model set --chat-template)"
    if source is None:
        gguf = main_gguf(store.model_dir(manifest.name))
        try:
            source = read_metadata(gguf).get("tokenizer.chat_template") if gguf else None
        except (GGUFError, OSError):
            source = None
        origin = "the GGUF file"
    if source is None:
        return {"origin": "none: a default for the architecture (ChatML for most)", "compiles": True}
    problem = templates.check(str(source))
    status: dict[str, Any] = {"origin": origin, "characters": len(str(source)), "compiles": problem is None}
    if problem:
        status["error"] = problem
    return status
