"""Read the key-value metadata of a GGUF file (architecture, context length, chat template, ...).

A reader of our own rather than the `gguf` package: we need only the header, must skip the
vocabulary arrays (tens of thousands of strings) without building them, and must not pull numpy
into `gpustack list`/`show`. The format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, BinaryIO

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
# Arrays longer than this are summarised (their length) instead of read: token lists and merges.
ARRAY_LIMIT = 64


class GGUFError(ValueError):
    pass


def _read(handle: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = handle.read(size)
    if len(data) != size:
        raise GGUFError("truncated GGUF header")
    return struct.unpack(fmt, data)[0]


def _string(handle: BinaryIO) -> str:
    length = _read(handle, "<Q")
    if length > 64 * 1024 * 1024:
        raise GGUFError("implausible string length in GGUF header")
    return handle.read(length).decode("utf-8", errors="replace")


def _value(handle: BinaryIO, kind: int) -> Any:
    if kind in _SCALARS:
        return _read(handle, _SCALARS[kind])
    if kind == _STRING:
        return _string(handle)
    if kind == _ARRAY:
        item_kind = _read(handle, "<I")
        count = _read(handle, "<Q")
        if count <= ARRAY_LIMIT:
            return [_value(handle, item_kind) for _ in range(count)]
        if item_kind in _SCALARS:
            handle.seek(count * struct.calcsize(_SCALARS[item_kind]), 1)
        else:
            for _ in range(count):
                _value(handle, item_kind)
        return {"array_length": count}
    raise GGUFError(f"unknown GGUF value type {kind}")


def read_metadata(path: Path) -> dict[str, Any]:
    with path.open("rb") as handle:
        if handle.read(4) != b"GGUF":
            raise GGUFError(f"{path.name} is not a GGUF file")
        version = _read(handle, "<I")
        if version < 2:
            raise GGUFError(f"GGUF version {version} is too old")
        tensors = _read(handle, "<Q")
        count = _read(handle, "<Q")
        meta: dict[str, Any] = {"gguf.version": version, "gguf.tensor_count": tensors}
        for _ in range(count):
            key = _string(handle)
            meta[key] = _value(handle, _read(handle, "<I"))
    return meta
