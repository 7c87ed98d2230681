"""Where a model went, read from the lines llama.cpp logs while it loads (their real formats)."""

from __future__ import annotations

from engines.llama_log import Placement, placement

MIB = 1024 * 1024
LOAD = [
    "load_tensors: layer   0 assigned to device CPU, is_swa = 0\n",
    "load_tensors: layer   1 assigned to device RPC0, is_swa = 0\n",
    "load_tensors: layer   2 assigned to device RPC1, is_swa = 0\n",
    "load_tensors: layer   3 assigned to device CPU, is_swa = 0\n",
    "load_tensors: offloaded 2/3 layers to GPU\n",
    "load_tensors:   CPU_Mapped model buffer size =    92.10 MiB\n",
    "load_tensors: RPC0[127.0.0.1:50052] model buffer size =    21.14 MiB\n",
    "load_tensors: RPC0[127.0.0.1:50053] model buffer size =    47.71 MiB\n",
    "llama_kv_cache:        CPU KV buffer size =    10.31 MiB\n",
    "llama_kv_cache: RPC0[127.0.0.1:50052] KV buffer size =     9.38 MiB\n",
    "sched_reserve:        CPU compute buffer size =    16.21 MiB\n",
    "sched_reserve: RPC0[127.0.0.1:50053] compute buffer size is   113.7900 MiB, matches expectation of 113.7900 MiB\n",
    "sched_reserve: RPC0[127.0.0.1:50053] compute buffer size =   113.79 MiB\n",
]


def test_layers_and_buffers_by_device_with_rpc_devices_named_by_their_servers() -> None:
    found = {p.device: p for p in placement(LOAD, {"RPC0": "127.0.0.1:50052", "RPC1": "127.0.0.1:50053"})}
    assert found["CPU"] == Placement(
        "CPU", layers=2, weights_bytes=int(92.10 * MIB), kv_cache_bytes=int(10.31 * MIB), compute_bytes=int(16.21 * MIB)
    )
    assert found["127.0.0.1:50052"] == Placement(
        "127.0.0.1:50052", layers=1, weights_bytes=int(21.14 * MIB), kv_cache_bytes=int(9.38 * MIB)
    )
    # The "matches expectation" line is not counted twice.
    assert found["127.0.0.1:50053"].compute_bytes == int(113.79 * MIB)
    assert found["127.0.0.1:50053"].layers == 1


def test_a_gpu_keeps_its_own_name() -> None:
    lines = [
        "load_tensors: layer   0 assigned to device CUDA0, is_swa = 0\n",
        "load_tensors:        CUDA0 model buffer size =   100.00 MiB\n",
    ]
    assert placement(lines, {}) == [Placement("CUDA0", layers=1, weights_bytes=100 * MIB)]
