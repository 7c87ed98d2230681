"""GGUF models through llama.cpp (llama-cpp-python): text generation, embeddings and tokenizing.

The engine exposes tokens, not chat: prompts are rendered and stop strings, tool calls and
formats are handled above it (`gpustack_cli.textgen`), so that a later engine decoding many
requests in one llama.cpp batch can replace `generate` without touching the translators.
`Llama.generate` is used for the token loop: it keeps the KV cache of the longest common prompt
prefix between requests (a chat's history is not evaluated again), except for requests that ask
to be reproducible (with a seed), and takes the sampler chain and grammar per call. Log
probabilities are read from the logits llama.cpp sampled from.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import Llama, LlamaGrammar, LogitsProcessorList
from llama_cpp.llama_grammar import json_schema_to_gbnf

from engines.base import InvalidSchema, InvalidTokens, LoadSpec, Ranking, Sampling, Token

log = logging.getLogger("gpustack.engines.llama")
# llama.cpp's seed value that means "pick a random seed".
RANDOM_SEED = 0xFFFFFFFF
# Grammars kept per loaded model, by schema: a client sends the same tools with every turn.
GRAMMAR_CACHE = 32


def _threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


class LlamaEngine:
    # One llama.cpp context decodes one sequence at a time here.
    max_concurrency = 1

    def __init__(self, spec: LoadSpec):
        options = spec.options
        model_file = options.get("model_file")
        if not model_file:
            raise ValueError(f"model '{spec.name}' names no GGUF file (options.model_file)")
        self.embedding_mode = "llm" not in spec.categories
        self.threads = threads = int(options.get("n_threads") or spec.threads or _threads())
        n_ctx = int(options.get("n_ctx") or 4096)
        # An embedding model reads each input in one batch: the batch must hold the longest input.
        n_batch = n_ctx if self.embedding_mode else int(options.get("n_batch") or 512)
        self.llm = Llama(
            model_path=str(spec.path / model_file),
            n_ctx=n_ctx,
            n_batch=n_batch,
            n_ubatch=n_batch,
            n_gpu_layers=spec.gpu_layers,
            n_threads=threads,
            n_threads_batch=threads,
            embedding=self.embedding_mode,
            pooling_type=llama_cpp.LLAMA_POOLING_TYPE_RANK if options.get("pooling") == "rank" else -1,
            verbose=False,
        )
        metadata: dict[str, str] = self.llm.metadata
        self.n_ctx = self.llm.n_ctx()
        self.architecture = metadata.get("general.architecture", "")
        self.chat_template = options.get("chat_template") or metadata.get("tokenizer.chat_template")
        self.bos_text = self._token_text(self.llm.token_bos())
        self.eos_text = self._token_text(self.llm.token_eos())
        self.max_input_tokens = self.n_ctx
        self.dimensions = self.llm.n_embd()
        self.truncatable = False
        self._vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self._grammars: dict[str, LlamaGrammar] = {}
        self.gpu_offload = bool(llama_cpp.llama_supports_gpu_offload()) and spec.gpu_layers != 0
        log.info(
            "loaded %s: %s, context %d, %s, %d threads",
            spec.name,
            self.architecture,
            self.n_ctx,
            "GPU offload" if self.gpu_offload else "CPU",
            threads,
        )

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    # -- tokens ---------------------------------------------------------------------------

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        """Tokens of `text`; with `special`, the model's BOS is added and special tokens parsed."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=special, special=special)

    def _check(self, tokens: Sequence[int], what: str) -> None:
        vocab = self.llm.n_vocab()
        bad = [t for t in tokens if not 0 <= t < vocab]
        if bad:
            raise InvalidTokens(f"{what} has token ids outside this model's vocabulary of {vocab}: {bad[:5]}")

    def detokenize(self, tokens: Sequence[int]) -> str:
        self._check(tokens, "the input")
        return self.llm.detokenize(list(tokens)).decode("utf-8", errors="replace")

    def piece(self, token: int) -> bytes:
        return self.llm.detokenize([token], special=False)

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def fim_tokens(self) -> tuple[int, int, int] | None:
        tokens = (
            llama_cpp.llama_vocab_fim_pre(self._vocab),
            llama_cpp.llama_vocab_fim_suf(self._vocab),
            llama_cpp.llama_vocab_fim_mid(self._vocab),
        )
        return tokens if all(t >= 0 for t in tokens) else None

    # -- generation -----------------------------------------------------------------------

    def generate(self, prompt: Sequence[int], sampling: Sampling, cancel: threading.Event) -> Iterator[Token]:
        self._check(prompt, "the prompt")
        self._check(list(sampling.logit_bias), "logit_bias")
        llm = self.llm
        llm.set_seed(RANDOM_SEED if sampling.seed is None else sampling.seed & 0x7FFFFFFF)
        if sampling.seed is not None:
            # Reusing the cached prompt prefix changes the float rounding of the last logits
            # (a different batch shape), so a request that asks to be reproducible is evaluated
            # from scratch; others keep the prefix cache.
            llm.reset()
        processors = None
        if sampling.logit_bias:
            ids = np.fromiter(sampling.logit_bias.keys(), dtype=np.intc)
            bias = np.fromiter(sampling.logit_bias.values(), dtype=np.single)

            def apply_bias(_input_ids: Any, logits: np.ndarray) -> np.ndarray:
                logits[ids] += bias
                return logits

            processors = LogitsProcessorList([apply_bias])
        grammar = None if sampling.json_schema is None else self._grammar(sampling.json_schema)
        tokens = llm.generate(
            list(prompt),
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            min_p=sampling.min_p,
            temp=sampling.temperature,
            repeat_penalty=sampling.repeat_penalty,
            frequency_penalty=sampling.frequency_penalty,
            presence_penalty=sampling.presence_penalty,
            logits_processor=processors,
            grammar=grammar,
        )
        for produced, token in enumerate(tokens, start=1):
            if self.is_eog(token) or cancel.is_set():
                return
            logprob, top = self._logprobs(token, sampling) if sampling.logprobs is not None else (None, ())
            yield Token(id=token, piece=self.piece(token), logprob=logprob, top=top)
            if produced >= sampling.max_tokens:
                return

    def check_schema(self, schema: dict[str, Any]) -> None:
        self._grammar(schema)

    def _grammar(self, schema: dict[str, Any]) -> LlamaGrammar:
        """The sampling grammar of a JSON schema, made by llama-cpp-python's converter and parsed
        by llama.cpp once here, so that what either refuses is the caller's error before any
        token is sampled (the schema's size is bounded before it reaches the engine)."""
        key = json.dumps(schema)
        found = self._grammars.get(key)
        if found is not None:
            return found
        try:
            gbnf = json_schema_to_gbnf(key)
        except RecursionError as exc:  # the converter recurses once per optional property
            raise InvalidSchema("it has too many optional properties in one object for the grammar converter") from exc
        except Exception as exc:  # the converter asserts, and raises many kinds, on what it does not support
            raise InvalidSchema(f"it cannot be turned into a grammar ({type(exc).__name__}: {exc})") from exc
        sampler = llama_cpp.llama_sampler_init_grammar(self._vocab, gbnf.encode(), b"root")
        if not sampler:
            raise InvalidSchema("llama.cpp cannot parse the grammar made from it")
        llama_cpp.llama_sampler_free(sampler)
        if len(self._grammars) >= GRAMMAR_CACHE:
            self._grammars.pop(next(iter(self._grammars)))
        grammar = self._grammars[key] = LlamaGrammar.from_string(gbnf, verbose=False)
        return grammar

    def _logprobs(self, token: int, sampling: Sampling) -> tuple[float, tuple[tuple[int, float], ...]]:
        """Log-softmax of the logits the token was sampled from (before temperature), as OpenAI reports."""
        pointer = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        logits = np.ctypeslib.as_array(pointer, shape=(self.llm.n_vocab(),)).astype(np.float64)
        if sampling.logit_bias:
            for tid, value in sampling.logit_bias.items():
                logits[tid] += value
        shifted = logits - logits.max()
        logprobs = shifted - np.log(np.exp(shifted).sum())
        k = sampling.logprobs or 0
        top: tuple[tuple[int, float], ...] = ()
        if k:
            best = np.argpartition(-logprobs, k)[:k]
            best = best[np.argsort(-logprobs[best])]
            top = tuple((int(i), float(logprobs[i])) for i in best)
        return float(logprobs[token]), top

    # -- embeddings -----------------------------------------------------------------------

    def token_counts(self, texts: list[str]) -> list[int]:
        return [len(self.tokenize(t)) for t in texts]

    def embed(self, texts: list[str]) -> list[list[float]]:
        if not self.embedding_mode:
            raise RuntimeError("this model was loaded for generation, not embeddings")
        if self.llm.pooling_type() == llama_cpp.LLAMA_POOLING_TYPE_NONE:
            raise RuntimeError("this GGUF names no pooling type, so it gives one vector per token, not per text")
        return [list(map(float, v)) for v in self.llm.embed(texts, normalize=True, truncate=True)]

    def rerank(self, query: str, documents: list[str]) -> Ranking:
        """A GGUF reranker (rank pooling) scores each pair; an embedding model ranks by cosine."""
        if not self.embedding_mode:
            raise RuntimeError("this model was loaded for generation, not ranking")
        if self.llm.pooling_type() != llama_cpp.LLAMA_POOLING_TYPE_RANK:
            vectors = self.embed([query, *documents])
            scores = [float(np.dot(vectors[0], v)) for v in vectors[1:]]
            return Ranking(scores=scores, prompt_tokens=sum(self.token_counts([query, *documents])))
        return self._rank_pairs(query, documents)

    def _rank_pairs(self, query: str, documents: list[str]) -> Ranking:
        # The pair layout llama-server uses for rerankers: BOS query EOS SEP document EOS.
        vocab = self._vocab
        bos, eos, sep = (
            f(vocab) for f in (llama_cpp.llama_vocab_bos, llama_cpp.llama_vocab_eos, llama_cpp.llama_vocab_sep)
        )
        query_tokens = self.llm.tokenize(query.encode(), add_bos=False, special=False)
        scores, total = [], 0
        for document in documents:
            doc_tokens = self.llm.tokenize(document.encode(), add_bos=False, special=False)
            tokens = [t for t in (bos, *query_tokens, eos, sep, *doc_tokens, eos) if t >= 0][: self.n_ctx]
            total += len(tokens)
            # Llama.embed takes text only, so the pair is decoded with the same internals it uses.
            self.llm._ctx.kv_cache_clear()
            self.llm._batch.reset()
            self.llm._batch.add_sequence(tokens, 0, True)
            self.llm._ctx.decode(self.llm._batch)
            scores.append(float(llama_cpp.llama_get_embeddings_seq(self.llm.ctx, 0)[0]))
        self.llm._batch.reset()
        return Ranking(scores=scores, prompt_tokens=total)

    def close(self) -> None:
        self.llm.close()


def load(spec: LoadSpec) -> LlamaEngine:
    return LlamaEngine(spec)
