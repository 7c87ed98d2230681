"""ggml's devices through its C API: this machine's (CPU, GPUs), those RPC servers lend (llama.cpp's
RPC backend: a model's layers on other machines), and the server that lends this machine's devices
to others (`gpustack rpc-server`).

llama-cpp-python binds llama.h but not ggml's backend registry, and its own `rpc_servers` argument
no longer reaches llama.cpp, so the few functions needed are called here through ctypes, from the
ggml library llama-cpp-python ships (built with `-DGGML_RPC=ON`). The functions of the RPC backend
itself are asked of its registry entry, as llama.cpp's own tools ask for them.

The RPC protocol has no authentication and no timeouts of its own: an endpoint is checked with a
bounded TCP connect before ggml connects to it (ggml aborts the process on a failed connect), and
a server that stops answering later aborts the process that holds the model: the server runs such
models in a child process (`gpustack_cli.upstream.child`).
"""

from __future__ import annotations

import ctypes
import functools
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from engines.base import EngineUnavailable

# Seconds an endpoint may take to accept a TCP connection before it counts as unreachable.
CONNECT_TIMEOUT = 5.0
# ggml-rpc's GGML_RPC_MAX_SERVERS.
MAX_SERVERS = 16
# ggml's device types (enum ggml_backend_dev_type).
DEVICE_CPU, DEVICE_GPU, DEVICE_ACCEL, DEVICE_IGPU = 0, 1, 2, 3
_P = ctypes.c_void_p


class RpcUnavailable(EngineUnavailable):
    """RPC cannot be used: not built into llama.cpp, or an endpoint does not answer."""


@dataclass(frozen=True)
class Device:
    """One of ggml's devices: `name` as llama.cpp logs it (CPU, CUDA0, RPC0...), what it is, its memory."""

    name: str
    description: str
    kind: str
    free: int
    total: int


def endpoint_parts(endpoint: str) -> tuple[str, int]:
    """`HOST:PORT` (`[v6]:PORT` too) as its host and port; ValueError when it is not one."""
    host, sep, port = endpoint.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"an RPC server is HOST:PORT, not '{endpoint}'")
    return host, int(port)


def rpc_endpoints(value: str | Sequence[str]) -> list[str]:
    """Endpoints from `HOST:PORT[,HOST:PORT...]` (or a list of such texts), each checked for its
    form (ValueError), in order, without repeats."""
    parts = [value] if isinstance(value, str) else list(value)
    endpoints: list[str] = []
    for part in (p.strip() for item in parts for p in str(item).split(",")):
        if part:
            endpoint_parts(part)
            if part not in endpoints:
                endpoints.append(part)
    if len(endpoints) > MAX_SERVERS:
        raise ValueError(f"llama.cpp takes at most {MAX_SERVERS} RPC servers, not {len(endpoints)}")
    return endpoints


@functools.cache
def _ggml() -> ctypes.CDLL:
    import llama_cpp  # loads the libraries the functions below come from
    from llama_cpp._ctypes_extensions import load_shared_library

    lib = load_shared_library("ggml", Path(llama_cpp.__file__).parent / "lib")
    signatures: dict[str, tuple[list[type], type | None]] = {
        "ggml_backend_reg_by_name": ([ctypes.c_char_p], _P),
        "ggml_backend_reg_get_proc_address": ([_P, ctypes.c_char_p], _P),
        "ggml_backend_reg_dev_count": ([_P], ctypes.c_size_t),
        "ggml_backend_reg_dev_get": ([_P, ctypes.c_size_t], _P),
        "ggml_backend_dev_count": ([], ctypes.c_size_t),
        "ggml_backend_dev_get": ([ctypes.c_size_t], _P),
        "ggml_backend_dev_by_name": ([ctypes.c_char_p], _P),
        "ggml_backend_dev_name": ([_P], ctypes.c_char_p),
        "ggml_backend_dev_description": ([_P], ctypes.c_char_p),
        "ggml_backend_dev_type": ([_P], ctypes.c_int),
        "ggml_backend_dev_memory": ([_P, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)], None),
    }
    for name, (args, result) in signatures.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = args, result
    return lib


def built_in() -> bool:
    """Whether this llama.cpp has the RPC backend."""
    try:
        return bool(_ggml().ggml_backend_reg_by_name(b"RPC"))
    except (ImportError, OSError, AttributeError):
        return False


def _rpc_function(name: str, restype: type | None, *argtypes: type) -> ctypes._CFuncPtr:
    lib = _ggml()
    reg = lib.ggml_backend_reg_by_name(b"RPC")
    if not reg:
        raise RpcUnavailable(
            "this llama.cpp was built without its RPC backend: reinstall llama-cpp-python with "
            'CMAKE_ARGS="-DGGML_RPC=ON" (see docs/rpc.md)'
        )
    address = lib.ggml_backend_reg_get_proc_address(reg, name.encode())
    if not address:
        raise RpcUnavailable(f"llama.cpp's RPC backend has no {name}")
    return ctypes.CFUNCTYPE(restype, *argtypes)(address)


def describe(dev: int) -> Device:
    """What a device handle is."""
    lib = _ggml()
    free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
    lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
    kinds = {DEVICE_CPU: "cpu", DEVICE_GPU: "gpu", DEVICE_ACCEL: "accel", DEVICE_IGPU: "igpu"}
    return Device(
        name=(lib.ggml_backend_dev_name(dev) or b"").decode(),
        description=(lib.ggml_backend_dev_description(dev) or b"").decode(),
        kind=kinds.get(lib.ggml_backend_dev_type(dev), "other"),
        free=free.value,
        total=total.value,
    )


def local_devices() -> list[Device]:
    """This machine's devices, as ggml sees them."""
    lib = _ggml()
    return [describe(lib.ggml_backend_dev_get(i)) for i in range(lib.ggml_backend_dev_count())]


def has_gpu() -> bool:
    """Whether this machine has a GPU llama.cpp can offload to (llama.cpp's own check counts the
    RPC backend as one)."""
    try:
        return any(d.kind in ("gpu", "igpu") for d in local_devices())
    except (ImportError, OSError, AttributeError):
        return False


def check_reachable(endpoint: str, timeout: float = CONNECT_TIMEOUT) -> str | None:
    """None when `endpoint` accepts a TCP connection within `timeout` seconds, else why not."""
    host, port = endpoint_parts(endpoint)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as exc:
        return exc.strerror or str(exc)


def model_devices(endpoints: Sequence[str]) -> list[int]:
    """The ggml devices a model loaded over `endpoints` offloads to: each RPC server's devices,
    then this machine's GPUs (llama.cpp's own order: the remote ones first, as fewer activations
    cross the network that way). RpcUnavailable names an endpoint that does not answer."""
    for endpoint in endpoints:
        why = check_reachable(endpoint)
        if why is not None:
            raise RpcUnavailable(f"RPC server {endpoint} does not answer: {why}")
    add_server = _rpc_function("ggml_backend_rpc_add_server", _P, ctypes.c_char_p)
    lib = _ggml()
    devices: list[int] = []
    for endpoint in endpoints:
        reg = add_server(endpoint.encode())
        if not reg:
            raise RpcUnavailable(f"RPC server {endpoint} lends no device")
        devices += [lib.ggml_backend_reg_dev_get(reg, i) for i in range(lib.ggml_backend_reg_dev_count(reg))]
    for index in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(index)
        if lib.ggml_backend_dev_type(dev) in (DEVICE_GPU, DEVICE_IGPU):
            devices.append(dev)
    return devices


@dataclass(frozen=True)
class RpcServer:
    """An RPC server ready to listen on `endpoint` with `devices`: `run()` blocks while it serves
    and returns only when ggml cannot listen (the address is taken)."""

    endpoint: str
    devices: list[Device]
    run: Callable[[], None]


def rpc_server(endpoint: str, device_names: Sequence[str], threads: int, cache_dir: Path | None) -> RpcServer:
    """A server of this machine's devices (those named, else its GPUs, else its CPU, as llama.cpp's
    rpc-server chooses) for RPC clients on `endpoint`; `cache_dir` keeps large tensors clients
    sent before, so that a model loads faster the next time."""
    lib = _ggml()
    chosen: list[int] = []
    for name in device_names:
        dev = lib.ggml_backend_dev_by_name(name.encode())
        if not dev:
            known = ", ".join(d.name for d in local_devices())
            raise ValueError(f"no device named '{name}' here (devices: {known})")
        chosen.append(dev)
    if not chosen:
        everything = [lib.ggml_backend_dev_get(i) for i in range(lib.ggml_backend_dev_count())]
        chosen = [d for d in everything if lib.ggml_backend_dev_type(d) not in (DEVICE_CPU, DEVICE_ACCEL)]
        chosen = chosen or [d for d in everything if lib.ggml_backend_dev_type(d) == DEVICE_CPU][:1]
    start = _rpc_function(
        "ggml_backend_rpc_start_server", None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t, _P
    )
    array = (_P * len(chosen))(*chosen)
    cache = None if cache_dir is None else str(cache_dir).encode()

    def run() -> None:
        start(endpoint.encode(), cache, threads, len(chosen), ctypes.cast(array, _P))

    return RpcServer(endpoint, [describe(d) for d in chosen], run)
