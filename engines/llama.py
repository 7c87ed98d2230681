"""GGUF models through llama.cpp (llama-cpp-python): text generation, embeddings and tokenizing.

The engine exposes tokens, not chat: prompts are rendered and stop strings, tool calls and
formats are handled above it (`gpustack_cli.core`). A generation model decodes up to
`parallel` requests together in one llama.cpp context (`engines.llama_batch`); the `Llama`
object it is loaded with tokenizes, and serves embedding and rerank models whole. A model with a
projector (`options.mmproj_file`) takes images and audio in its prompts (`engines.llama_media`).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import Llama
from llama_cpp.llama_grammar import SchemaConverter

from engines import ggml_devices, llama_log
from engines.base import (
    Choice,
    DecodeStats,
    InvalidSchema,
    InvalidTokens,
    LoadSpec,
    Media,
    MediaError,
    Ranking,
    Sampling,
    Structure,
    Token,
)
from engines.ggml_threads import on_own_thread
from engines.llama_batch import ROPE_SCALING, BatchDecoder, Grammar, kv_bytes_per_token
from engines.llama_draft import Drafting
from engines.llama_estimate import device_free, fitting_context
from engines.llama_media import MediaChunk, Projector, PromptItem, text_tokens

log = logging.getLogger("gpustack.engines.llama")
# Grammars kept per loaded model, by schema: a client sends the same tools with every turn.
GRAMMAR_CACHE = 32
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _json(schema: dict[str, Any]) -> Structure:
    """Output that is JSON matching `schema`, and nothing else."""
    return Structure((Choice("", schema),))


# Keywords that describe a schema without constraining it: the converter does not know them.
_ANNOTATIONS = frozenset(
    {"description", "title", "examples", "default", "$comment", "deprecated", "readOnly", "writeOnly", "$schema", "$id"}
)
_ANY_VALUE = {"type": ["string", "number", "boolean", "object", "array", "null"]}
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")


def _convertible(schema: Any, nested: bool = False) -> Any:
    """`schema` as llama-cpp-python's converter takes it: annotations dropped, and a nested
    schema that constrains nothing (`{"description": ...}` alone: any value in JSON Schema, which
    the converter refuses or reads as "an object") spelled out as any JSON value. A root `{}`
    stays an object, as tool arguments are."""
    if not isinstance(schema, dict):
        return schema
    plain: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _ANNOTATIONS:
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            value = {name: _convertible(child, nested=True) for name, child in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            value = [_convertible(child, nested=True) for child in value]
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict | list):
            value = (
                [_convertible(c, nested=True) for c in value] if isinstance(value, list) else _convertible(value, True)
            )
        plain[key] = value
    return dict(_ANY_VALUE) if nested and not plain else plain


def _literal(text: str) -> str:
    """`text` as a GBNF string literal."""
    return '"' + "".join(_ESCAPES.get(ch, ch) for ch in text) + '"'


def _threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


# The context of the `Llama` object a generation model is loaded with: it only tokenizes, the
# batched decoder has a context of its own.
TOKENIZER_CTX = 64
# llama-cpp-python's model parameters are patched while a model loads (`_offloading_to`): one at a time.
_LOAD_LOCK = threading.Lock()


@contextlib.contextmanager
def _offloading_to(devices: list[int] | None) -> Iterator[None]:
    """While the block runs, models load with their layers offloaded to `devices` (ggml device
    handles) instead of every device llama.cpp finds. llama-cpp-python's `Llama` takes no device
    list (llama.cpp's `llama_model_params.devices`): the default parameters it starts from are
    given one."""
    if not devices:
        yield
        return
    array = (ctypes.c_void_p * (len(devices) + 1))(*devices, None)  # NULL-terminated
    module = llama_cpp.llama_cpp
    original = module.llama_model_default_params

    def with_devices() -> llama_cpp.llama_model_params:
        params = original()
        params.devices = ctypes.addressof(array)
        return params

    with _LOAD_LOCK:
        module.llama_model_default_params = with_devices
        try:
            yield
        finally:
            module.llama_model_default_params = original


class LlamaEngine:
    def __init__(self, spec: LoadSpec):
        options = spec.options
        model_file = options.get("model_file")
        if not model_file:
            raise ValueError(f"model '{spec.name}' names no GGUF file (options.model_file)")
        self.name = spec.name
        self.embedding_mode = "llm" not in spec.categories
        self.threads = threads = int(options.get("n_threads") or spec.threads or _threads())
        trained = int(options.get("n_ctx_train") or 0)
        if self.embedding_mode:
            n_ctx = int(options.get("n_ctx") or trained or 4096)
        else:  # 0: none given, chosen from the free memory once the weights are loaded
            n_ctx = int(options.get("n_ctx") or spec.ctx_size or 0)
        # Where the context came from: the model's settings, the server's, or the free memory.
        self.context_from = "model" if options.get("n_ctx") or self.embedding_mode else "server" if n_ctx else "memory"
        self.tuning = tuning = spec.tuning.over(options)
        # Layers offloaded: the model's own count, else the server's.
        self.gpu_layers = int(options["n_gpu_layers"]) if options.get("n_gpu_layers") is not None else spec.gpu_layers
        # A generation model decodes `parallel` sequences at once, each with a context of n_ctx.
        self.max_concurrency = 1 if self.embedding_mode else max(1, int(options.get("parallel") or spec.parallel))
        if not self.embedding_mode:  # an embedding model reads each input whole: no KV cache settings
            self.kv_cache = spec.kv_cache.over(options)
        device, free = device_free(self.gpu_layers) if not n_ctx else ("", None)
        # An embedding model reads each input in one batch: the batch must hold the longest input.
        n_batch = n_ctx if self.embedding_mode else tuning.batch_size
        # Layers go to the RPC servers' devices first, then to this machine's GPUs, then its CPU.
        self.rpc = spec.rpc
        devices = ggml_devices.model_devices(spec.rpc) if spec.rpc else None
        # The names llama.cpp's log gives RPC devices (RPC0, ...), and their servers.
        described = map(ggml_devices.describe, devices or ())
        self.rpc_devices = {d.name: d.description for d in described if d.name.startswith("RPC")}
        with _offloading_to(devices):
            self.llm = self._llama(spec, model_file, n_ctx, n_batch, threads)
        metadata: dict[str, str] = self.llm.metadata
        trained = llama_cpp.llama_model_n_ctx_train(self.llm.model)
        longest = int(trained * tuning.context_scale)  # RoPE scaling stretches what it was trained for
        if not n_ctx:
            n_ctx = self._fitting_context(longest, device, free)
        elif not self.embedding_mode and trained > 0 and n_ctx > longest:
            log.warning("%s: context %d is past its trained %d; using that", spec.name, n_ctx, longest)
            n_ctx = longest
        self.n_ctx = self.llm.n_ctx() if self.embedding_mode else n_ctx
        self.architecture = metadata.get("general.architecture", "")
        self.chat_template = options.get("chat_template") or metadata.get("tokenizer.chat_template")
        # Variables the model's template gets unless a request sets them (`enable_thinking`, ...).
        self.template_kwargs: dict[str, Any] = dict(options.get("chat_template_kwargs") or {})
        self.stop_strings: tuple[str, ...] = tuple(options.get("stop") or ())
        self.bos_text = self._token_text(self.llm.token_bos())
        self.eos_text = self._token_text(self.llm.token_eos())
        self.max_input_tokens = self.n_ctx
        self.dimensions = self.llm.n_embd()
        self.truncatable = False
        self._vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self._grammars: dict[str, Grammar] = {}
        self._pieces: dict[int, bytes] = {}
        self.gpu_offload = (ggml_devices.has_gpu() or bool(spec.rpc)) and self.gpu_layers != 0
        self.decoder: BatchDecoder | None = None
        self.projector: Projector | None = None
        if not self.embedding_mode:
            try:
                self.projector = self._projector(spec, threads)
                self.drafting = drafting_of(options)
                self.decoder = BatchDecoder(
                    self.llm.model,
                    n_ctx=n_ctx,
                    parallel=self.max_concurrency,
                    n_batch=n_batch,
                    threads=threads,
                    is_eog=self.is_eog,
                    piece=self.piece,
                    special_piece=self._special_piece,
                    # With layers on a GPU the cache is there too: llama.cpp says when it does not fit.
                    check_memory=not self.gpu_offload,
                    grammar_budget=spec.grammar_budget,
                    projector=self.projector,
                    kv_cache=self.kv_cache,
                    tuning=tuning,
                    seeded_from_scratch=spec.seeded_from_scratch,
                    drafting=self.drafting,
                )
            except Exception:
                if self.projector is not None:
                    self.projector.close()
                self.llm.close()
                raise
        self.modalities = () if self.projector is None else self.projector.modalities
        self.media_marker = "" if self.projector is None else self.projector.marker
        self.audio_rate = 0 if self.projector is None else self.projector.sample_rate
        log.info(
            "loaded %s: %s, context %d x %d slots, %s, %d threads",
            spec.name,
            self.architecture,
            self.n_ctx,
            self.max_concurrency,
            "GPU offload" if self.gpu_offload else "CPU",
            threads,
        )

    def _fitting_context(self, longest: int, device: str, free: int | None) -> int:
        """The context per slot for a model given none (`fitting_context`), said in the log."""
        model = self.llm.model
        per_token = kv_bytes_per_token(model, self.kv_cache)
        weights = llama_cpp.llama_model_size(model)
        n_ctx = fitting_context(longest, per_token, self.max_concurrency, free, weights)
        log.info(
            "%s: context %d per slot (trained %d), chosen from free memory: a KV cache of %.2f GiB for %d slots, "
            "with %s GiB free on %s beside the weights",
            self.name,
            n_ctx,
            longest,
            n_ctx * self.max_concurrency * per_token / 2**30,
            self.max_concurrency,
            "unknown" if free is None else f"{(free - weights) / 2**30:.2f}",
            device,
        )
        return n_ctx

    def _llama(self, spec: LoadSpec, model_file: str, n_ctx: int, n_batch: int, threads: int) -> Llama:
        tuning = self.tuning
        return Llama(
            model_path=str(spec.path / model_file),
            n_ctx=n_ctx if self.embedding_mode else TOKENIZER_CTX,
            n_batch=n_batch,
            n_ubatch=n_batch,
            n_gpu_layers=self.gpu_layers,
            main_gpu=tuning.main_gpu,
            tensor_split=list(tuning.tensor_split) or None,
            use_mmap=tuning.mmap,
            use_mlock=tuning.mlock,
            rope_scaling_type=ROPE_SCALING[tuning.rope_scaling],
            rope_freq_base=tuning.rope_freq_base,
            rope_freq_scale=tuning.rope_freq_scale,
            n_threads=threads,
            n_threads_batch=threads,
            embedding=self.embedding_mode,
            pooling_type=llama_cpp.LLAMA_POOLING_TYPE_RANK if spec.options.get("pooling") == "rank" else -1,
            verbose=False,
        )

    def _projector(self, spec: LoadSpec, threads: int) -> Projector | None:
        """The model's projector, when it has one: its file in the model's folder, or a path."""
        name = spec.options.get("mmproj_file")
        if not name:
            return None
        path = spec.path / name
        # libmtmd warms the projector up with an encode: on a thread of its own (see on_own_thread).
        return on_own_thread(lambda: Projector(str(path), self.llm.model, threads, use_gpu=self.gpu_layers != 0))

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    # -- tokens ---------------------------------------------------------------------------

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        """Tokens of `text`; with `special`, the model's BOS is added and special tokens parsed."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=special, special=special)

    def tokenize_media(self, text: str, media: Sequence[Media]) -> list[PromptItem]:
        """A prompt whose `media_marker`s stand for `media`, in order: token ids, each medium
        standing for the positions it takes (MediaError where they do not go together)."""
        if self.projector is None:
            raise MediaError(f"model '{self.name}' has no projector: it takes text only")
        bos = self.bos_text
        if bos and text.startswith(bos) and self.tokenize("", special=True):
            text = text[len(bos) :]  # libmtmd adds the BOS as the tokenizer does
        prompt = self.projector.tokenize(text, media)
        if prompt and isinstance(prompt[-1], MediaChunk):
            raise MediaError("a prompt must go on after its last image or audio clip")
        return prompt

    def _check(self, tokens: Sequence[PromptItem], what: str) -> None:
        vocab = self.llm.n_vocab()
        bad = [t for t in text_tokens(tokens) if not 0 <= t < vocab]
        if bad:
            raise InvalidTokens(f"{what} has token ids outside this model's vocabulary of {vocab}: {bad[:5]}")

    def detokenize(self, tokens: Sequence[int]) -> str:
        self._check(tokens, "the input")
        return self.llm.detokenize(list(tokens)).decode("utf-8", errors="replace")

    def piece(self, token: int) -> bytes:
        found = self._pieces.get(token)
        if found is None:  # each token's bytes are asked for once per token generated: kept
            found = self._pieces[token] = self.llm.detokenize([token], special=False)
        return found

    def _special_piece(self, token: int) -> bytes:
        return self.llm.detokenize([token], special=True)

    def _shown(self, texts: Sequence[str]) -> frozenset[int]:
        """The ids of those `texts` that are one token of this model's vocabulary each."""
        ids = (self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) for text in texts)
        return frozenset(found[0] for found in ids if len(found) == 1)

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

    def _request(self, prompt: Sequence[PromptItem], sampling: Sampling) -> tuple[BatchDecoder, str | None]:
        """The decoder, and the grammar of the request's schema, once its token ids are checked."""
        self._check(prompt, "the prompt")
        self._check(list(sampling.logit_bias), "logit_bias")
        if self.decoder is None:
            raise RuntimeError("this model was loaded for embeddings, not generation")
        if sampling.structure is not None:
            return self.decoder, self._structure(sampling.structure)
        return self.decoder, None if sampling.json_schema is None else self._structure(_json(sampling.json_schema))

    def generate(self, prompt: Sequence[PromptItem], sampling: Sampling, cancel: threading.Event) -> Iterator[Token]:
        decoder, grammar = self._request(prompt, sampling)
        yield from decoder.generate(prompt, sampling, cancel, grammar, self._shown(sampling.preserve))

    async def agenerate(
        self, prompt: Sequence[PromptItem], sampling: Sampling, request_id: str
    ) -> AsyncIterator[Token]:
        decoder, grammar = self._request(prompt, sampling)
        shown = self._shown(sampling.preserve)
        async with contextlib.aclosing(decoder.agenerate(prompt, sampling, request_id, grammar, shown)) as tokens:
            async for token in tokens:
                yield token

    def abort(self, request_id: str) -> bool:
        return self.decoder is not None and self.decoder.abort(request_id)

    def check_schema(self, schema: dict[str, Any]) -> None:
        self._structure(_json(schema))

    def _structure(self, structure: Structure) -> Grammar:
        """The sampling grammar of a structure, made by llama-cpp-python's schema converter and
        parsed by llama.cpp once here (then kept), so that what either refuses is the caller's
        error before any token is sampled (schema sizes are bounded before they reach the
        engine). One converter turns every choice's schema into rules of its own name (the
        shared ones, strings and spaces, once) and the structure's literals go around them; one
        with a trigger waits for it (llama.cpp searches the text generated so far for the
        trigger's pattern, and the grammar holds from where it matched)."""
        key = repr(structure)
        found = self._grammars.get(key)
        if found is not None:
            return found
        converter = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
        alternatives = []
        try:
            for index, choice in enumerate(structure.choices):
                schema = converter.resolve_refs(_convertible(choice.schema), "request")
                rule = converter.visit(schema, f"choice-{index}")
                alternatives.append(f"{_literal(choice.before)} {rule} {_literal(choice.after)}")
        except RecursionError as exc:  # the converter recurses once per optional property
            raise InvalidSchema("it has too many optional properties in one object for the grammar converter") from exc
        except Exception as exc:  # the converter asserts, and raises many kinds, on what it does not support
            raise InvalidSchema(f"it cannot be turned into a grammar ({type(exc).__name__}: {exc})") from exc
        items = "structure-item"
        if structure.separator is not None:
            items = f"structure-item ({_literal(structure.separator)} structure-item)*"
        rules = (
            f"root ::= {_literal(structure.opening)} {items} {_literal(structure.closing)}\n"
            f"structure-item ::= {' | '.join(alternatives)}\n"
        )
        trigger = None if structure.trigger is None else re.escape(structure.trigger)
        grammar = Grammar(rules + converter.format_grammar(), trigger)
        sampler = llama_cpp.llama_sampler_init_grammar(self._vocab, grammar.text.encode(), b"root")
        if not sampler:
            raise InvalidSchema("llama.cpp cannot parse the grammar made from it")
        llama_cpp.llama_sampler_free(sampler)
        if len(self._grammars) >= GRAMMAR_CACHE:
            self._grammars.pop(next(iter(self._grammars)))
        self._grammars[key] = grammar
        return grammar

    # -- embeddings -----------------------------------------------------------------------

    def token_counts(self, texts: list[str]) -> list[int]:
        return [len(self.tokenize(t)) for t in texts]

    def embed(self, texts: list[str]) -> list[list[float]]:
        if not self.embedding_mode:
            raise RuntimeError("this model was loaded for generation, not embeddings")
        if self.llm.pooling_type() == llama_cpp.LLAMA_POOLING_TYPE_NONE:
            raise RuntimeError("this GGUF names no pooling type, so it gives one vector per token, not per text")
        vectors = on_own_thread(lambda: self.llm.embed(texts, normalize=True, truncate=True))
        return [list(map(float, v)) for v in vectors]

    def rerank(self, query: str, documents: list[str]) -> Ranking:
        """A GGUF reranker (rank pooling) scores each pair; an embedding model ranks by cosine."""
        if not self.embedding_mode:
            raise RuntimeError("this model was loaded for generation, not ranking")
        if self.llm.pooling_type() != llama_cpp.LLAMA_POOLING_TYPE_RANK:
            vectors = self.embed([query, *documents])
            scores = [float(np.dot(vectors[0], v)) for v in vectors[1:]]
            return Ranking(scores=scores, prompt_tokens=sum(self.token_counts([query, *documents])))
        return on_own_thread(lambda: self._rank_pairs(query, documents))

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

    def decode_stats(self) -> DecodeStats | None:
        return None if self.decoder is None else self.decoder.decode_stats()

    def close(self) -> None:
        if self.decoder is not None:
            self.decoder.close()
        if self.projector is not None:
            self.projector.close()
        self.llm.close()


def drafting_of(options: dict[str, Any]) -> Drafting | None:
    """A model's speculative drafting, from its options (`draft`: "ngram", `draft_max`, `draft_min`)."""
    kind = options.get("draft")
    if not kind:
        return None
    if kind != "ngram":
        raise ValueError(f"a model drafts with 'ngram' (prompt lookup), not '{kind}'")
    defaults = Drafting()
    return Drafting(
        int(options.get("draft_max") or defaults.max_tokens), int(options.get("draft_min") or defaults.min_tokens)
    )


def load(spec: LoadSpec) -> LlamaEngine:
    with llama_log.capture() as lines:
        engine = LlamaEngine(spec)
    engine.placement = llama_log.placement(lines, engine.rpc_devices)
    return engine
