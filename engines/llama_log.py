"""llama.cpp's log, read while a model loads: where each layer went and how many bytes each
device holds.

llama.cpp says where it put a model only in its log (the device each layer got, the size of each
device's weights, KV cache and compute buffers); its C API has no call for it. One log callback
serves the whole process: it passes llama.cpp's warnings (as notes) and errors to Python's
logging and, on a thread that is loading a model (`capture`), keeps every line, so that the load
can read its own placement.
"""

from __future__ import annotations

import ctypes
import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

log = logging.getLogger("gpustack.llama.cpp")
# ggml's log levels (enum ggml_log_level) passed on to Python's logging: its warnings are notes on
# a model (a token's type overridden, a context past the trained length) more than alarms.
_LEVELS = {3: logging.INFO, 4: logging.ERROR}
_LAYER = re.compile(r"layer\s+\d+ assigned to device (\S+?),")
_BUFFER = re.compile(r"^\w+:\s+(\S+) (model|KV|compute) buffer size =\s+([\d.]+) MiB")
_MIB = 1024 * 1024


@dataclass
class Placement:
    """What one device holds of a loaded model: `device` is CPU, a GPU's name (CUDA0, Metal, ...)
    or an RPC server's HOST:PORT."""

    device: str
    layers: int = 0
    weights_bytes: int = 0
    kv_cache_bytes: int = 0
    compute_bytes: int = 0


_local = threading.local()
_install_lock = threading.Lock()
# The ctypes callback given to llama.cpp, kept referenced for as long as llama.cpp may call it.
_callback: object | None = None


def _on_log(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    line = text.decode("utf-8", errors="replace")
    lines = getattr(_local, "lines", None)
    if lines is not None:
        lines.append(line)
    if level in _LEVELS and line.strip():
        log.log(_LEVELS[level], "%s", line.rstrip())


def _install() -> None:
    global _callback
    with _install_lock:
        if _callback is not None:
            return
        import llama_cpp

        _callback = llama_cpp.llama_log_callback(_on_log)
        llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))


@contextmanager
def capture() -> Iterator[list[str]]:
    """The lines llama.cpp logs on this thread while the block runs."""
    _install()
    lines: list[str] = []
    _local.lines = lines
    try:
        yield lines
    finally:
        _local.lines = None


def placement(lines: list[str], rpc_endpoints: dict[str, str]) -> list[Placement]:
    """Where a model went, from its load's log lines; `rpc_endpoints` maps RPC device names
    (RPC0, ...) to their servers' HOST:PORT."""
    places: dict[str, Placement] = {}

    def place(name: str) -> Placement:
        if "[" in name:  # an RPC buffer: RPC<n>[HOST:PORT]
            name = name[name.index("[") + 1 : name.rindex("]")]
        elif name.startswith("CPU"):  # CPU, CPU_Mapped, CPU_REPACK: host memory all
            name = "CPU"
        name = rpc_endpoints.get(name, name)
        return places.setdefault(name, Placement(name))

    for line in lines:
        found = _LAYER.search(line)
        if found:
            place(found.group(1)).layers += 1
            continue
        found = _BUFFER.match(line.strip())
        if found:
            size = int(float(found.group(3)) * _MIB)
            target = place(found.group(1))
            if found.group(2) == "model":
                target.weights_bytes += size
            elif found.group(2) == "KV":
                target.kv_cache_bytes += size
            else:
                target.compute_bytes += size
    return list(places.values())
