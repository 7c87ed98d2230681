"""Images and audio in a llama.cpp prompt, through libmtmd (the library llama-server uses): a
model's projector (`mmproj`) loaded beside it, prompts tokenized into text and media chunks, and
each media chunk encoded into embeddings and decoded into a request's sequence.

A prompt with media is a list of token ids in which each media chunk stands for the positions it
takes: the same `MediaChunk` object `n_pos` times. So the batch loop counts positions and finds
shared prefixes as for text alone, and a chunk matches only the same content (its key is the
content's hash, as llama-server keys them) at the same place: the next turn of a conversation
finds its image in the slot's cache and does not encode it again.

The batch loop encodes a chunk in one step and decodes its embeddings into the request's sequence
in the next (`engines.llama_batch`), the other requests decoding on in both.
"""

from __future__ import annotations

import ctypes
import logging
import weakref
from collections.abc import Sequence
from typing import Any

import llama_cpp
import llama_cpp.mtmd_cpp as mtmd
import numpy as np

from engines.base import Media, MediaError

log = logging.getLogger("gpustack.engines.llama")


class MediaChunk:
    """One image or audio clip of a tokenized prompt. Equal chunks hold the same content at the
    same size; the chunk owns its libmtmd handle (preprocessed pixels or audio features)."""

    def __init__(self, handle: Any, key: str):
        self.handle = handle
        self.key = key
        self.n_pos = int(mtmd.mtmd_input_chunk_get_n_pos(handle))
        self.n_tokens = int(mtmd.mtmd_input_chunk_get_n_tokens(handle))
        self._free = weakref.finalize(self, mtmd.mtmd_input_chunk_free, handle)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MediaChunk) and other.key == self.key and other.n_pos == self.n_pos

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"MediaChunk({self.key[:12]}, {self.n_pos} positions)"


PromptItem = int | MediaChunk


def run_start(prompt: Sequence[PromptItem], n: int) -> int:
    """`n` moved back to the start of the media chunk it falls inside (a cache is cut between
    chunks, never within one)."""
    while 0 < n < len(prompt) and isinstance(prompt[n], MediaChunk) and prompt[n - 1] is prompt[n]:
        n -= 1
    return n


def text_tokens(prompt: Sequence[PromptItem]) -> list[int]:
    return [item for item in prompt if isinstance(item, int)]


@ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
def _log(level: int, text: bytes, _: Any) -> None:
    # libmtmd prints every encode to stderr unless told otherwise: its lines go to our debug log.
    log.debug("mtmd: %s", text.decode("utf-8", errors="replace").rstrip())


# The decode helper's optional callback after each batch: none (a null function pointer).
_NO_CALLBACK = mtmd.mtmd_helper_post_decode_callback()


class Projector:
    """A model's projector, loaded on the text model it feeds."""

    def __init__(self, path: str, model: Any, threads: int, use_gpu: bool):
        mtmd.mtmd_log_set(_log, None)
        mtmd.mtmd_helper_log_set(_log, None)
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = use_gpu
        params.n_threads = threads
        params.print_timings = False
        self.marker = (mtmd.mtmd_default_marker() or b"<__media__>").decode()
        self.ctx = mtmd.mtmd_init_from_file(path.encode(), model, params)
        if not self.ctx:
            raise MediaError(f"libmtmd could not load the projector {path} for this model")
        self.vision = bool(mtmd.mtmd_support_vision(self.ctx))
        self.audio = bool(mtmd.mtmd_support_audio(self.ctx))
        self.sample_rate = int(mtmd.mtmd_get_audio_sample_rate(self.ctx)) if self.audio else 0
        self.n_embd = llama_cpp.llama_model_n_embd_inp(model)

    @property
    def modalities(self) -> tuple[str, ...]:
        return (("vision",) if self.vision else ()) + (("audio",) if self.audio else ())

    def tokenize(self, text: str, media: Sequence[Media]) -> list[PromptItem]:
        """`text`, whose markers stand for `media` in order, as token ids and media chunks."""
        if text.count(self.marker) != len(media):
            raise MediaError(f"the prompt holds {text.count(self.marker)} media markers for {len(media)} media parts")
        bitmaps = (mtmd.mtmd_bitmap_p_ctypes * max(1, len(media)))()
        try:
            for i, item in enumerate(media):
                bitmaps[i] = self._bitmap(item)
            data = text.encode("utf-8")
            given = mtmd.mtmd_input_text(data, len(data), True, True)
            chunks = mtmd.mtmd_input_chunks_init()
            try:
                code = mtmd.mtmd_tokenize(self.ctx, chunks, ctypes.byref(given), bitmaps, len(media))
                if code != 0:
                    raise MediaError(f"libmtmd could not tokenize the prompt's media (code {code})")
                return self._items(chunks, media)
            finally:
                mtmd.mtmd_input_chunks_free(chunks)
        finally:
            for i in range(len(media)):
                if bitmaps[i]:
                    mtmd.mtmd_bitmap_free(bitmaps[i])

    def _bitmap(self, item: Media) -> Any:
        if item.kind == "image":
            if not self.vision:
                raise MediaError("this model's projector takes audio, not images")
            pixels = (ctypes.c_uint8 * len(item.data)).from_buffer_copy(item.data)
            bitmap = mtmd.mtmd_bitmap_init(item.width, item.height, pixels)
        else:
            if not self.audio:
                raise MediaError("this model's projector takes images, not audio")
            samples = np.frombuffer(item.data, dtype=np.float32)
            pointer = samples.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            bitmap = mtmd.mtmd_bitmap_init_from_audio(len(samples), pointer)
        mtmd.mtmd_bitmap_set_id(bitmap, item.key.encode())
        return bitmap

    def _items(self, chunks: Any, media: Sequence[Media]) -> list[PromptItem]:
        items: list[PromptItem] = []
        keys = iter(m.key for m in media)
        for i in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, i)
            if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                count = ctypes.c_size_t()
                tokens = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(count))
                items.extend(tokens[k] for k in range(count.value))
            else:
                owned = MediaChunk(mtmd.mtmd_input_chunk_copy(chunk), next(keys))
                items.extend([owned] * owned.n_pos)
        return items

    def encode(self, chunk: MediaChunk) -> np.ndarray:
        """The chunk's embeddings (n_tokens rows of the text model's width), copied out of
        libmtmd's one output buffer."""
        code = mtmd.mtmd_encode_chunk(self.ctx, chunk.handle)
        if code != 0:
            raise MediaError(f"libmtmd could not encode the media (code {code})")
        out = mtmd.mtmd_get_output_embd(self.ctx)
        return np.ctypeslib.as_array(out, shape=(chunk.n_tokens * self.n_embd,)).copy()

    def decode(self, lctx: Any, chunk: MediaChunk, embd: np.ndarray, n_past: int, seq: int, n_batch: int) -> int:
        """The encoded chunk decoded into sequence `seq` from position `n_past`; the position after it."""
        after = llama_cpp.llama_pos(n_past)
        pointer = embd.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        code = mtmd.mtmd_helper_decode_image_chunk(
            self.ctx, lctx, chunk.handle, pointer, n_past, seq, n_batch, ctypes.byref(after), _NO_CALLBACK, None
        )
        if code != 0:
            raise RuntimeError(f"decoding the media into the context failed ({code})")
        return int(after.value)

    def close(self) -> None:
        mtmd.mtmd_free(self.ctx)
