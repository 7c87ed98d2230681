"""Write a GGUF header (metadata only, no tensors) for tests of what reads it."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, BinaryIO


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def _value(value: Any) -> tuple[int, bytes]:
    if isinstance(value, bool):
        return 7, struct.pack("<?", value)
    if isinstance(value, int):
        return 4, struct.pack("<I", value)
    if isinstance(value, float):
        return 6, struct.pack("<f", value)
    if isinstance(value, str):
        return 8, _string(value)
    if isinstance(value, list):
        kinds = {_value(v)[0] for v in value} or {8}
        kind = kinds.pop()
        return 9, struct.pack("<IQ", kind, len(value)) + b"".join(_value(v)[1] for v in value)
    raise TypeError(type(value))


def write_gguf(path: Path, metadata: dict[str, Any]) -> Path:
    body = b""
    for key, value in metadata.items():
        kind, data = _value(value)
        body += _string(key) + struct.pack("<I", kind) + data
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(metadata)) + body)
    return path


def _tensor_infos_end(handle: BinaryIO, count: int) -> None:
    """Read past `count` tensor infos: name, dimensions, type, offset."""
    for _ in range(count):
        _skip_string(handle)
        (dims,) = struct.unpack("<I", handle.read(4))
        handle.read(8 * dims + 4 + 8)


def _skip_string(handle: BinaryIO) -> None:
    (size,) = struct.unpack("<Q", handle.read(8))
    handle.seek(size, 1)


def with_metadata(source: Path, target: Path, changes: dict[str, Any]) -> Path:
    """A copy of the GGUF model `source` (tensors and all) with the metadata keys of `changes`
    set: a real model's weights under other metadata, for what no small model on the package
    index has (fill-in-the-middle tokens, say)."""
    from gpustack_cli.models.gguf_meta import _read
    from gpustack_cli.models.gguf_meta import _string as read_string
    from gpustack_cli.models.gguf_meta import _value as read_value

    with source.open("rb") as handle:
        assert handle.read(4) == b"GGUF"
        version, tensors, count = struct.unpack("<IQQ", handle.read(20))
        records: list[tuple[str, bytes]] = []
        alignment = 32
        for _ in range(count):
            start = handle.tell()
            key = read_string(handle)
            value = read_value(handle, _read(handle, "<I"))
            if key == "general.alignment":
                alignment = value
            end = handle.tell()
            handle.seek(start)
            records.append((key, handle.read(end - start)))
        infos_start = handle.tell()
        _tensor_infos_end(handle, tensors)
        infos_end = handle.tell()
        handle.seek(infos_start)
        infos = handle.read(infos_end - infos_start)
        data_start = infos_end + (-infos_end % alignment)
        handle.seek(data_start)
        kept = [raw for key, raw in records if key not in changes]
        added = []
        for key, value in changes.items():
            kind, data = _value(value)
            added.append(_string(key) + struct.pack("<I", kind) + data)
        head = b"GGUF" + struct.pack("<IQQ", version, tensors, len(kept) + len(added)) + b"".join(kept + added) + infos
        with target.open("wb") as out:
            out.write(head + b"\0" * (-len(head) % alignment))
            while block := handle.read(1 << 20):
                out.write(block)
    return target
