"""What this gpustack can do on this machine (`gpustack version --verbose`): the engines it
bundles, llama.cpp's build (its CPU features and GPU backend), the GPUs it sees, the devices torch
and CTranslate2 would use, and the store. Each probe reports what failed instead of failing: the
report is what a user sends when something does not work."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import platform
import shutil
import subprocess
import sys
from typing import Any

from gpustack_cli import __version__
from gpustack_cli.config import Settings
from gpustack_cli.models.store import ModelStore

# Engine: (the modules it needs, the distribution whose version is shown).
ENGINES = {
    "llama.cpp": (("llama_cpp",), "llama-cpp-python"),
    "sentence-transformers": (("sentence_transformers",), "sentence-transformers"),
    "diffusers": (("diffusers", "torch"), "diffusers"),
    "faster-whisper": (("faster_whisper", "ctranslate2"), "faster-whisper"),
    "piper": (("piper",), "piper-tts"),
}


def _version(distribution: str, module: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return getattr(sys.modules.get(module), "__version__", None)


def engines() -> dict[str, dict[str, Any]]:
    """Which engines are bundled (their modules importable), with their versions."""
    found = {}
    for name, (modules, distribution) in ENGINES.items():
        missing = [m for m in modules if importlib.util.find_spec(m) is None]
        entry: dict[str, Any] = {"bundled": not missing}
        if missing:
            entry["missing"] = missing
        else:
            entry["version"] = _version(distribution, modules[0])
        found[name] = entry
    return found


def llama_cpp_build() -> dict[str, Any]:
    try:
        import llama_cpp
    except ImportError as exc:
        return {"error": str(exc)}
    from engines import ggml_devices

    info = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    return {"system_info": info, "gpu_offload": ggml_devices.has_gpu(), "rpc": ggml_devices.built_in()}


def gpus() -> list[dict[str, Any]]:
    """GPUs by the vendors' own tools (NVIDIA's nvidia-smi, AMD's rocm-smi), or Apple silicon."""
    seen: list[dict[str, Any]] = []
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"]
        try:
            out = subprocess.run(query, capture_output=True, text=True, timeout=10, check=True).stdout
            for line in out.strip().splitlines():
                name, memory, driver = (part.strip() for part in line.split(","))
                seen.append({"vendor": "nvidia", "name": name, "memory_mib": int(float(memory)), "driver": driver})
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            seen.append({"vendor": "nvidia", "error": str(exc)})
    if shutil.which("rocm-smi"):
        seen.append({"vendor": "amd", "name": "ROCm device (see rocm-smi)"})
    if sys.platform == "darwin" and platform.machine() == "arm64":
        seen.append({"vendor": "apple", "name": "Apple silicon (Metal)"})
    return seen


def torch_device() -> dict[str, Any]:
    if importlib.util.find_spec("torch") is None:
        return {"bundled": False}
    try:
        import torch
    except Exception as exc:  # a broken install is reported, not raised
        return {"error": str(exc)}
    if torch.cuda.is_available():
        device = "cuda"
    elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        device = "mps"
    else:
        device = "cpu"
    return {"version": torch.__version__, "device": device, "cuda_devices": torch.cuda.device_count()}


def ctranslate2_types() -> dict[str, Any]:
    if importlib.util.find_spec("ctranslate2") is None:
        return {"bundled": False}
    import ctranslate2

    types: dict[str, Any] = {
        "version": ctranslate2.__version__,
        "cpu": sorted(ctranslate2.get_supported_compute_types("cpu")),
    }
    if ctranslate2.get_cuda_device_count() > 0:
        types["cuda"] = sorted(ctranslate2.get_supported_compute_types("cuda"))
    return types


def store(settings: Settings) -> dict[str, Any]:
    manifests = ModelStore(settings.home).list()
    return {"path": str(settings.home), "models": len(manifests), "size": sum(m.size for m in manifests)}


def report(settings: Settings) -> dict[str, Any]:
    return {
        "version": __version__,
        "binary": bool(getattr(sys, "frozen", False)),
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "engines": engines(),
        "llama_cpp": llama_cpp_build(),
        "gpus": gpus(),
        "torch": torch_device(),
        "ctranslate2": ctranslate2_types(),
        "store": store(settings),
    }
