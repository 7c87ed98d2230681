"""What loading a GGUF generation model would take, without loading it: its weights (its tensors'
bytes, as llama.cpp counts them), its KV cache (layers x key-value width x cells x the cache's types, the cells being
the context of every slot) and its compute buffers, which llama.cpp itself sizes: the model is
opened with `no_alloc` (metadata only, allocations simulated) and a context made on it with the
settings of a real load, and the sizes it logs are read (`engines.llama_log`). Against what the
device it would go to has free: this machine's available memory, or its GPUs' free memory when
layers would be offloaded to them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import llama_cpp

from engines import ggml_devices, llama_log
from engines.base import KvCache, Tuning
from engines.ggml_threads import on_own_thread
from engines.llama_batch import DEFAULT_TUNING, available_memory, context_params, kv_bytes_per_token

# llama.cpp's most sequences in one context (llama_max_parallel_sequences).
MAX_SLOTS = 256
# A model given no context gets the largest, up to its trained length, whose KV cache takes at most
# this share of the memory its device has free beside its weights (the rest is left to compute
# buffers, other models and the system), and at least MIN_CONTEXT tokens (or its trained length).
KV_SHARE = 0.5
MIN_CONTEXT = 2048
# Where the free memory is unknown: the trained length, at most this.
UNKNOWN_MEMORY_CONTEXT = 8192
# llama.cpp pads a context to a multiple of 256 cells.
CELL_ROUND = 256


@dataclass(frozen=True)
class Estimate:
    """Bytes a load would take, where it would go, and what that device has free (None: unknown)."""

    weights: int
    kv_cache: int
    compute: int
    device: str
    available: int | None
    n_ctx: int
    parallel: int
    kv: KvCache
    # Whether the context was chosen from the free memory (none was given).
    fitted: bool = False

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute

    @property
    def fits(self) -> bool:
        return self.parallel <= MAX_SLOTS and (self.available is None or self.total <= self.available)

    def advice(self) -> str:
        """What would make a load that does not fit fit."""
        over = self.total - (self.available or 0)
        steps = [f"at most {MAX_SLOTS} slots, llama.cpp's limit"] if self.parallel > MAX_SLOTS else []
        if self.kv_cache > over:
            cells = self.n_ctx * self.parallel
            per_cell = self.kv_cache / cells
            fitting = int((self.kv_cache - over) / per_cell) if per_cell else 0
            steps.append(f"at most {fitting // max(1, self.n_ctx)} slots of {self.n_ctx} tokens (--parallel)")
            steps.append(f"a context of at most {fitting // max(1, self.parallel)} tokens per slot (--ctx-size)")
        if self.kv.type_k == "f16" or self.kv.type_v == "f16":
            steps.append("a quantized KV cache (--cache-type-k q8_0 --cache-type-v q8_0 --flash-attn on)")
        if self.device != "CPU":
            steps.append("fewer layers on the GPU (--gpu-layers)")
        return "; ".join(steps) or "a machine with more memory"


def fitting_context(longest: int, kv_per_token: int, parallel: int, free: int | None, weights: int = 0) -> int:
    """The context per slot for a model given none: the largest multiple of 256 tokens, up to
    `longest` (its trained length; 0: unknown), whose KV cache for `parallel` slots takes at most
    KV_SHARE of the `free` bytes its `weights` leave; never under MIN_CONTEXT unless the model is
    shorter (a load that cannot hold that is refused with the numbers, not shrunk further)."""
    longest = longest or UNKNOWN_MEMORY_CONTEXT
    if free is None or kv_per_token <= 0:
        return min(longest, UNKNOWN_MEMORY_CONTEXT)
    cells = int(max(0, free - weights) * KV_SHARE) // (kv_per_token * max(1, parallel))
    return max(min(longest, MIN_CONTEXT), min(longest, cells // CELL_ROUND * CELL_ROUND))


def device_free(gpu_layers: int) -> tuple[str, int | None]:
    """The device a model's layers and KV cache go to, and its free bytes (None: unknown): this
    machine's GPUs when any and layers are offloaded, else its memory."""
    gpus = [d for d in ggml_devices.local_devices() if d.kind in ("gpu", "igpu")]
    if gpus and gpu_layers != 0:
        return ", ".join(d.name for d in gpus), sum(d.free for d in gpus)
    return "CPU", available_memory()


def estimate(
    path: Path,
    *,
    n_ctx: int | None,
    longest: int,
    parallel: int,
    kv_cache: KvCache,
    gpu_layers: int = -1,
    tuning: Tuning = DEFAULT_TUNING,
    threads: int = 1,
) -> Estimate:
    """The estimate of loading the GGUF at `path` with these settings (as `engines.llama` loads
    a generation model: one context of `n_ctx` x `parallel` cells; with `n_ctx` None, the context
    `fitting_context` chooses, up to `longest`, 0 when unknown)."""
    device, available = device_free(gpu_layers)

    def measure() -> tuple[int, int, int, int]:
        with llama_log.capture() as lines:
            params = llama_cpp.llama_model_default_params()
            params.no_alloc = True
            params.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE  # nothing mapped: metadata only
            params.n_gpu_layers = 0x7FFFFFFF if gpu_layers == -1 else gpu_layers
            params.main_gpu = tuning.main_gpu
            model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
            if not model:
                raise ValueError(f"llama.cpp cannot read {path.name}")
            try:
                weights = llama_cpp.llama_model_size(model)
                per_token = kv_bytes_per_token(model, kv_cache)
                context = n_ctx or fitting_context(longest, per_token, parallel, available, weights)
                ctx = llama_cpp.llama_init_from_model(
                    model, context_params(context, parallel, tuning.batch_size, threads, kv_cache, tuning)
                )
                kv = context * parallel * per_token
                if ctx:
                    llama_cpp.llama_free(ctx)
            finally:
                llama_cpp.llama_model_free(model)
        return weights, kv, sum(p.compute_bytes for p in llama_log.placement(lines, {})), context

    weights, kv, buffers, context = on_own_thread(measure)
    return Estimate(
        weights=weights,
        kv_cache=kv,
        compute=buffers,
        device=device,
        available=available,
        n_ctx=context,
        parallel=parallel,
        kv=kv_cache,
        fitted=n_ctx is None,
    )
