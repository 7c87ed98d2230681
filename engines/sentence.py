"""Embedding and rerank models through sentence-transformers, on CUDA, Metal or the CPU.

Two kinds of folder: a bi-encoder (`SentenceTransformer`: embeddings, and reranking by cosine
similarity of query and document vectors) and a cross-encoder (`CrossEncoder`: scores each
query-document pair, the stronger reranker). Cross-encoder scores are the model's raw logits, as
the Jina-style API returns them; bi-encoder scores are cosine similarities.
"""

from __future__ import annotations

import copy
import gc
import json
import logging
import threading
from collections.abc import Sequence
from pathlib import Path

import torch
from sentence_transformers import CrossEncoder, SentenceTransformer

from engines.base import InvalidTokens, LoadSpec, Ranking

log = logging.getLogger("gpustack.engines.sentence")


def pick_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


class SentenceEngine:
    max_concurrency = 64
    # All of max_concurrency requests are admitted at once (not the server's `parallel`)...
    admits_all = True
    # ...because the server's batcher merges their calls into one engine call at a time.
    merges_calls = True

    def __init__(self, spec: LoadSpec):
        self.device = pick_device()
        self.cross = spec.options.get("mode") == "cross-encoder"
        path = str(spec.path)
        if self.cross:
            self.model: SentenceTransformer | CrossEncoder = CrossEncoder(
                path, device=self.device, activation_fn=torch.nn.Identity(), local_files_only=True
            )
            self.tokenizer = self.model.tokenizer
            self.max_input_tokens = int(self.model.max_length or self.tokenizer.model_max_length)
            self.dimensions = 0
        else:
            self.model = SentenceTransformer(path, device=self.device, local_files_only=True)
            self.tokenizer = self.model.tokenizer
            self.max_input_tokens = int(self.model.max_seq_length)
            self.dimensions = int(self.model.get_embedding_dimension() or 0)
        # Matryoshka-trained models say so in their folder; others must keep every dimension.
        self.truncatable = bool(spec.options.get("matryoshka")) or _is_matryoshka(spec.path)
        self.batch_size = int(spec.options.get("batch_size") or 32)
        # Requests count tokens while a batch is encoded in another thread, and a Hugging Face
        # tokenizer is not safe to share across threads (encoding sets its padding and
        # truncation): counting uses a copy of its own, one call at a time.
        self._counter = copy.deepcopy(self.tokenizer)
        self._counting = threading.Lock()
        log.info("loaded %s on %s (%s)", spec.name, self.device, "cross-encoder" if self.cross else "bi-encoder")

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        with self._counting:
            return list(self._counter(text, add_special_tokens=special)["input_ids"])

    def detokenize(self, tokens: Sequence[int]) -> str:
        vocab = len(self._counter)
        bad = [t for t in tokens if not 0 <= t < vocab]
        if bad:
            raise InvalidTokens(f"the input has token ids outside this model's vocabulary of {vocab}: {bad[:5]}")
        with self._counting:
            return self._counter.decode(list(tokens), skip_special_tokens=True)

    def token_counts(self, texts: list[str]) -> list[int]:
        # One call: the fast tokenizer does the whole list in Rust.
        with self._counting:
            return [len(ids) for ids in self._counter(texts, add_special_tokens=True)["input_ids"]]

    def embed(self, texts: list[str]) -> list[list[float]]:
        if self.cross:
            raise RuntimeError("a cross-encoder scores pairs; it makes no embeddings")
        with torch.inference_mode():
            vectors = self.model.encode(
                texts,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return vectors.tolist()

    def rerank(self, query: str, documents: list[str]) -> Ranking:
        if not self.cross:
            vectors = self.embed([query, *documents])
            scores = [sum(a * b for a, b in zip(vectors[0], v, strict=True)) for v in vectors[1:]]
            return Ranking(scores=scores, prompt_tokens=sum(self.token_counts([query, *documents])))
        with torch.inference_mode():
            pairs = [(query, d) for d in documents]
            scores = self.model.predict(pairs, batch_size=self.batch_size, show_progress_bar=False)
        with self._counting:
            encoded = self._counter(
                [query] * len(documents), documents, truncation=True, max_length=self.max_input_tokens
            )
        tokens = sum(len(ids) for ids in encoded["input_ids"])
        return Ranking(scores=[float(s) for s in scores], prompt_tokens=tokens)

    def close(self) -> None:
        del self.model
        gc.collect()
        if self.device == "cuda":
            torch.cuda.empty_cache()


def _is_matryoshka(path: Path) -> bool:
    try:
        config = json.loads((path / "config_sentence_transformers.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(config.get("truncate_dim") or config.get("matryoshka_dims"))


def load(spec: LoadSpec) -> SentenceEngine:
    return SentenceEngine(spec)
