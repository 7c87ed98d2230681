"""A tiny vision projector (`mmproj`) for a real GGUF text model, written with llama.cpp's own
GGUF writer (the `gguf-py` in llama-cpp-python's source distribution).

No vision model small enough for these machines ships on the package index, so the tests pair
the real SmolLM2 text model with a LLaVA-style projector of random weights: a two-layer CLIP
vision tower on 32x32 images in 8x8 patches, and the two-layer MLP that projects each of its 16
patch embeddings into the text model's embedding space. libmtmd loads, preprocesses, encodes and
decodes it exactly as it does a real LLaVA projector; what it "sees" is noise, but a different
image gives different embeddings and so a different greedy answer.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

IMAGE = 32
PATCH = 8
WIDTH = 32
LAYERS = 2


def write_projector(target: Path, text_width: int, gguf_py: Path, seed: int = 0) -> Path:
    """The projector for a text model of embedding width `text_width`, written to `target`."""
    sys.path.insert(0, str(gguf_py))
    try:
        import gguf
    finally:
        sys.path.remove(str(gguf_py))
    rng = np.random.default_rng(seed)

    def weights(*shape: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    partial = target.with_suffix(".part")
    writer = gguf.GGUFWriter(str(partial), "clip")
    writer.add_string("general.name", "tiny-llava-projector")
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_string("clip.projector_type", "mlp")
    writer.add_bool("clip.use_gelu", True)
    writer.add_uint32("clip.vision.image_size", IMAGE)
    writer.add_uint32("clip.vision.patch_size", PATCH)
    writer.add_uint32("clip.vision.embedding_length", WIDTH)
    writer.add_uint32("clip.vision.feed_forward_length", 2 * WIDTH)
    writer.add_uint32("clip.vision.block_count", LAYERS)
    writer.add_uint32("clip.vision.projection_dim", text_width)
    writer.add_uint32("clip.vision.attention.head_count", 2)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-5)
    writer.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    writer.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])
    # numpy shapes are ggml's dimensions reversed: a linear layer is (out, in).
    patches = (IMAGE // PATCH) ** 2
    writer.add_tensor("v.patch_embd.weight", weights(WIDTH, 3, PATCH, PATCH))
    writer.add_tensor("v.class_embd", weights(WIDTH))
    writer.add_tensor("v.position_embd.weight", weights(patches + 1, WIDTH))
    writer.add_tensor("v.pre_ln.weight", np.ones(WIDTH, np.float32))
    writer.add_tensor("v.pre_ln.bias", np.zeros(WIDTH, np.float32))
    for layer in range(LAYERS):
        block = f"v.blk.{layer}"
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            writer.add_tensor(f"{block}.{name}.weight", weights(WIDTH, WIDTH))
            writer.add_tensor(f"{block}.{name}.bias", np.zeros(WIDTH, np.float32))
        for name in ("ln1", "ln2"):
            writer.add_tensor(f"{block}.{name}.weight", np.ones(WIDTH, np.float32))
            writer.add_tensor(f"{block}.{name}.bias", np.zeros(WIDTH, np.float32))
        writer.add_tensor(f"{block}.ffn_up.weight", weights(2 * WIDTH, WIDTH))
        writer.add_tensor(f"{block}.ffn_up.bias", np.zeros(2 * WIDTH, np.float32))
        writer.add_tensor(f"{block}.ffn_down.weight", weights(WIDTH, 2 * WIDTH))
        writer.add_tensor(f"{block}.ffn_down.bias", np.zeros(WIDTH, np.float32))
    writer.add_tensor("mm.0.weight", weights(text_width, WIDTH))
    writer.add_tensor("mm.0.bias", np.zeros(text_width, np.float32))
    writer.add_tensor("mm.2.weight", weights(text_width, text_width, scale=0.05))
    writer.add_tensor("mm.2.bias", np.zeros(text_width, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.rename(target)
    return target
