"""Continuous batching for llama.cpp: one context holding a sequence per slot, and one decode loop
that puts the next token of every running request and the prompt chunks of new ones into a
single `llama_batch` per step, as llama-server's slots do.

Why written here: llama-cpp-python's `Llama` decodes one sequence at a time and samples each token
in Python; its low-level bindings expose llama.cpp's batch API (`llama_batch_*`, `llama_decode`,
`llama_memory_seq_*`) and sampler chains (`llama_sampler_*`), which is all this needs. Each
request samples in C with a chain of its own (logit bias, penalties, grammar, top-k/p, min-p,
temperature, and a seeded `dist`), reading its row of the batch's logits.

A request with a grammar samples as llama.cpp's common sampler does: the token is drawn without
the grammar first and kept if the grammar accepts it (one token checked), and only otherwise is
the grammar applied to the whole vocabulary and the token drawn again. That full pass is what a
pathological grammar makes slow, so it runs in a worker thread on a copy of the logits: the
request skips the steps until its token is drawn while the other slots go on decoding, and a
request whose pass takes longer than its `grammar_budget` ends with an InvalidSchema error.

Requests join and leave between steps. A prompt is read in chunks that share each step's
`n_batch` tokens with the running streams' next tokens (running streams go first), so a long
prompt slows the others by one chunk per step instead of stopping them for its whole prefill. A
new request takes the free slot whose cached tokens share the longest prefix with its prompt, and
only the rest is evaluated (the next turn of a chat does not read its history again), seeded
requests too (a cached prefix holds the same tokens' keys and values), as llama-server does; with
`seeded_from_scratch` a request with a seed is evaluated from scratch instead, so that even the
rounding of its prompt's arithmetic is the same whatever ran before it.

A model that drafts (`engines.llama_draft`) adds, after a running request's next token, the
tokens a lookup in its history proposes, in the rows the step has to spare; they are drawn row by
row while each matches its draft, the cells of those that did not are removed, and every token
drawn is delivered: several tokens a step where an answer repeats its prompt.

A prompt may hold images or audio (`engines.llama_media`): a request whose next prompt item is a
media chunk has it encoded in one step and its embeddings decoded into its sequence in the next,
while the other slots decode on, so that the other streams wait for one of the two at a time.
Both run on the loop's own thread, as llama-server runs them: ggml's OpenMP threads are one team
per calling thread, and a second team (an encoder thread's) makes both spin less and every later
decode slower, on a machine with no spare cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
import numpy as np

from engines.base import (
    DecodeStats,
    InvalidSchema,
    KvCache,
    OutOfMemory,
    RequestAborted,
    Sampling,
    Token,
    Tuning,
)
from engines.llama_draft import MEDIA, Drafting, PromptLookup
from engines.llama_media import MediaChunk, Projector, PromptItem, run_start

log = logging.getLogger("gpustack.engines.llama")
RANDOM_SEED = 0xFFFFFFFF
# Tokens of history the repetition penalties look at (llama.cpp's default penalty_last_n).
PENALTY_WINDOW = 64
# Prompt tokens two requests must share for the later one to wait for the earlier's read of them.
MIN_SHARED = 32
_END = object()


@dataclass(frozen=True)
class Grammar:
    """A GBNF grammar for a request's sampler; with a `trigger` (a regular expression), it holds
    only from where the trigger first appears in the generated text."""

    text: str
    trigger: str | None = None


DEFAULT_CACHE = KvCache()
DEFAULT_TUNING = Tuning()
_FLASH = {
    "auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}
# RoPE scaling by name (None: the model's own).
ROPE_SCALING = {
    None: llama_cpp.LLAMA_ROPE_SCALING_TYPE_UNSPECIFIED,
    "none": llama_cpp.LLAMA_ROPE_SCALING_TYPE_NONE,
    "linear": llama_cpp.LLAMA_ROPE_SCALING_TYPE_LINEAR,
    "yarn": llama_cpp.LLAMA_ROPE_SCALING_TYPE_YARN,
}
_TYPES = {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0, "q4_0": llama_cpp.GGML_TYPE_Q4_0}
# Bytes per cached element: ggml's block sizes (q8_0 keeps 32 values in 34 bytes, q4_0 in 18).
_BYTES = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}


@dataclass
class _Job:
    prompt: list[PromptItem]
    sampling: Sampling
    grammar: Grammar | None
    cancel: threading.Event
    # Takes each token, then an exception or _END, on the decode loop's thread.
    deliver: Callable[[object], None]
    # Set by the consumer when it stops reading (the request ended early).
    abandoned: bool = False
    # Set by `abort`: the consumer is told so instead of seeing a normal end.
    aborted: bool = False
    request_id: str | None = None
    slot: _Slot | None = None
    pending: list[PromptItem] = field(default_factory=list)
    # The embeddings of the media chunk at the head of `pending`, encoded and not yet decoded.
    encoded: np.ndarray | None = None
    n_past: int = 0
    produced: int = 0
    last: int | None = None
    chain: Any = None
    # The request's grammar sampler, kept out of `chain` (see the module's docstring), and the
    # draw of its next token over the whole vocabulary when one runs in a worker thread: the
    # future, when it began, and the log probabilities read for that token.
    grammar_sampler: Any = None
    drawing: Future[int] | None = None
    drawing_since: float = 0.0
    drawing_logprobs: tuple[Any, tuple[tuple[int, float], ...]] = (None, ())
    # When the request came, and when it got its latest token (time.monotonic).
    since: float = field(default_factory=time.monotonic)
    # Special tokens shown as their text (see Sampling.preserve).
    shown: frozenset[int] = frozenset()
    # The request's history, where its drafts are looked up (None: it does not draft).
    lookup: PromptLookup | None = None

    @property
    def stopped(self) -> bool:
        return self.abandoned or self.aborted or self.cancel.is_set()


@dataclass
class _Slot:
    seq: int
    # Prompt items whose KV cells this sequence holds, from position 0.
    cached: list[PromptItem] = field(default_factory=list)
    job: _Job | None = None


def _common_prefix(a: Sequence[PromptItem], b: Sequence[PromptItem]) -> int:
    """How many items `a` and `b` share from their start, ending before any media chunk they
    share only in part."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return run_start(b, i)
    return run_start(b, n)


class BatchDecoder:
    """Many sequences decoded together on one llama.cpp model; `generate` is called from any
    number of threads and yields that request's tokens as the loop samples them."""

    def __init__(
        self,
        model: Any,
        *,
        n_ctx: int,
        parallel: int,
        n_batch: int,
        threads: int,
        is_eog: Callable[[int], bool],
        piece: Callable[[int], bytes],
        special_piece: Callable[[int], bytes],
        check_memory: bool = True,
        grammar_budget: float = 1.0,
        projector: Projector | None = None,
        kv_cache: KvCache = DEFAULT_CACHE,
        tuning: Tuning = DEFAULT_TUNING,
        seeded_from_scratch: bool = False,
        drafting: Drafting | None = None,
    ):
        self.n_ctx = n_ctx
        self.seeded_from_scratch = seeded_from_scratch
        self.drafting = drafting
        self.parallel = parallel
        self.n_batch = n_batch
        self._is_eog = is_eog
        self._piece = piece
        self._special_piece = special_piece
        self.grammar_budget = grammar_budget
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self.kv_cache = kv_cache
        needed = n_ctx * parallel * kv_bytes_per_token(model, kv_cache)
        available = available_memory()
        if check_memory and available is not None and needed > available:
            raise OutOfMemory(_memory_message(n_ctx, parallel, needed, available))
        params = context_params(n_ctx, parallel, n_batch, threads, kv_cache, tuning)
        self.ctx = llama_cpp.llama_init_from_model(model, params)
        if not self.ctx:
            raise OutOfMemory(_memory_message(n_ctx, parallel, needed, available))
        self._memory = llama_cpp.llama_get_memory(self.ctx)
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        # The candidates a grammar is applied to: the whole vocabulary, and one token.
        self._candidates = (llama_cpp.llama_token_data * self.n_vocab)()
        self._candidate_rows = _rows(self._candidates)
        self._one = llama_cpp.llama_token_data()
        self._draws = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="llama-grammar")
        self.projector = projector
        self.slots = [_Slot(seq) for seq in range(parallel)]
        self.stats = DecodeStats(slots=parallel)
        self._inbox: deque[_Job] = deque()
        # The async requests by id, from submission to their reader's end (a client may send
        # the same id twice: `abort` ends all it names).
        self._requests: dict[str, list[_Job]] = {}
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="llama-decode", daemon=True)
        self._thread.start()

    # -- the callers' side -------------------------------------------------------------------

    def generate(
        self,
        prompt: Sequence[PromptItem],
        sampling: Sampling,
        cancel: threading.Event,
        grammar: Grammar | None = None,
        shown: frozenset[int] = frozenset(),
    ) -> Iterator[Token]:
        """The request's tokens until an end-of-generation token, `max_tokens` or `cancel`."""
        out: queue.SimpleQueue[object] = queue.SimpleQueue()
        job = self._submit(_Job(list(prompt), sampling, grammar, cancel, out.put, shown=shown))
        try:
            while (item := out.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item  # type: ignore[misc]
        finally:
            self._abandon(job)

    async def agenerate(
        self,
        prompt: Sequence[PromptItem],
        sampling: Sampling,
        request_id: str,
        grammar: Grammar | None = None,
        shown: frozenset[int] = frozenset(),
    ) -> AsyncIterator[Token]:
        """As `generate`, delivered to the running event loop: no thread waits on the request.
        The loop is woken only when no wake-up is already on its way, so tokens that come
        together (several requests' in one step) cost one wake-up."""
        loop = asyncio.get_running_loop()
        items: deque[object] = deque()
        ready = asyncio.Event()
        lock = threading.Lock()
        pending = False

        def wake() -> None:
            nonlocal pending
            with lock:
                pending = False
            ready.set()

        def deliver(item: object) -> None:
            nonlocal pending
            items.append(item)
            with lock:
                if pending:
                    return
                pending = True
            with contextlib.suppress(RuntimeError):  # the loop closed under us at shutdown
                loop.call_soon_threadsafe(wake)

        job = _Job(list(prompt), sampling, grammar, threading.Event(), deliver, request_id=request_id, shown=shown)
        self._submit(job)
        try:
            while True:
                await ready.wait()
                ready.clear()
                while items:
                    item = items.popleft()
                    if item is _END:
                        return
                    if isinstance(item, BaseException):
                        raise item
                    yield item  # type: ignore[misc]
        finally:
            self._abandon(job)

    def _submit(self, job: _Job) -> _Job:
        with self._wake:
            if self._closed:
                raise RequestAborted("the model was unloaded")
            if job.request_id is not None:
                self._requests.setdefault(job.request_id, []).append(job)
            self._inbox.append(job)
            self._wake.notify()
        return job

    def _abandon(self, job: _Job) -> None:
        """The caller stopped reading: the loop frees the request's slot at its next step."""
        job.abandoned = True
        with self._wake:
            named = self._requests.get(job.request_id or "", [])
            if job in named:
                named.remove(job)
                if not named:
                    del self._requests[job.request_id]
            self._wake.notify()

    def abort(self, request_id: str) -> bool:
        """End the running or waiting requests of an id: each reader gets RequestAborted, and the
        loop frees their slots at its next step."""
        with self._wake:
            jobs = [job for job in self._requests.get(request_id, []) if not job.stopped]
            for job in jobs:
                job.aborted = True
            self._wake.notify()
        return bool(jobs)

    def decode_stats(self) -> DecodeStats:
        self.stats.busy = sum(slot.job is not None for slot in self.slots)
        return self.stats

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()
        self._draws.shutdown(wait=True)  # a draw still running uses the model's vocabulary
        llama_cpp.llama_batch_free(self._batch)
        llama_cpp.llama_free(self.ctx)

    # -- the decode loop ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._closed and not self._inbox and not any(s.job for s in self.slots):
                    self._wake.wait()
                if self._closed:
                    break
                self._admit()
            try:
                self._step()
            except Exception as exc:  # a failed decode fails the requests in it, not the loop
                log.exception("decode step failed")
                for slot in self.slots:
                    if slot.job is not None:
                        self._finish(slot.job, exc)
                        slot.cached = []
                        llama_cpp.llama_memory_seq_rm(self._memory, slot.seq, -1, -1)
        for job in self._inbox:
            job.deliver(RequestAborted("the model was unloaded"))
        for slot in self.slots:
            if slot.job is not None:
                self._finish(slot.job, RequestAborted("the model was unloaded"))

    def _admit(self) -> None:
        """New requests into free slots: the slot whose cache shares the longest prefix with the
        prompt, or a copy of a busy slot's cells where that one shares more (llama.cpp shares the
        cells of a unified cache between sequences: n choices of one request, or requests with the
        same long system prompt, read it once). A request whose prompt another slot is still
        reading waits for that read to end, to copy it instead of reading it again."""
        waiting: list[_Job] = []
        while self._inbox:
            free = [s for s in self.slots if s.job is None]
            if not free:
                break
            job = self._inbox.popleft()
            if job.stopped:
                job.deliver(_aborted(job) or _END)
                continue
            reuse = self._reuses(job)
            if reuse and self._being_read(job.prompt):
                waiting.append(job)
                continue
            try:
                job.chain = self._sampler(job)
                job.grammar_sampler = self._grammar(job)
            except Exception as exc:
                self._release(job)
                job.deliver(exc)
                continue
            slot = max(free, key=lambda s: _common_prefix(s.cached, job.prompt) if reuse else -len(s.cached))
            common = _common_prefix(slot.cached, job.prompt) if reuse else 0
            source = max(self.slots, key=lambda s: _common_prefix(s.cached, job.prompt)) if reuse else slot
            shared = _common_prefix(source.cached, job.prompt) if reuse else 0
            # The last prompt token is read again, for its logits.
            common, shared = min(common, len(job.prompt) - 1), min(shared, len(job.prompt) - 1)
            if shared > common:
                llama_cpp.llama_memory_seq_rm(self._memory, slot.seq, -1, -1)
                llama_cpp.llama_memory_seq_cp(self._memory, source.seq, slot.seq, 0, shared)
                common = shared
            else:
                llama_cpp.llama_memory_seq_rm(self._memory, slot.seq, common, -1)
            slot.cached = job.prompt[:common]
            slot.job, job.slot = job, slot
            if self._drafts(job):
                job.lookup = PromptLookup((t if isinstance(t, int) else MEDIA for t in job.prompt), self.drafting)
            job.pending, job.n_past = job.prompt[common:], common
            self.stats.reused_tokens += common
        self._inbox.extendleft(reversed(waiting))

    def _drafts(self, job: _Job) -> bool:
        """Whether a request drafts: the model does, and the request's tokens are drawn by its
        chain alone (a grammar's draw, and log probabilities, are read one row at a time)."""
        return self.drafting is not None and job.grammar is None and job.sampling.logprobs is None

    def _reuses(self, job: _Job) -> bool:
        """Whether a request's prompt may start from cached cells (or be copied from)."""
        return not (self.seeded_from_scratch and job.sampling.seed is not None)

    def _being_read(self, prompt: list[PromptItem]) -> bool:
        """Whether a busy slot is still reading a prompt that shares more with `prompt` than any
        cache holds yet (worth waiting a few steps for, rather than reading it twice)."""
        for slot in self.slots:
            job = slot.job
            if job is not None and job.pending and self._reuses(job):
                ahead = _common_prefix(job.prompt, prompt)
                if ahead > len(slot.cached) and ahead >= MIN_SHARED:
                    return True
        return False

    def _sampler(self, job: _Job) -> Any:
        s = job.sampling
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        add = llama_cpp.llama_sampler_chain_add
        if s.logit_bias:
            bias = (llama_cpp.llama_logit_bias * len(s.logit_bias))()
            for i, (token, value) in enumerate(s.logit_bias.items()):
                bias[i].token, bias[i].bias = token, value
            add(chain, llama_cpp.llama_sampler_init_logit_bias(self.n_vocab, len(s.logit_bias), bias))
        if s.repeat_penalty != 1.0 or s.frequency_penalty or s.presence_penalty:
            penalties = llama_cpp.llama_sampler_init_penalties(
                self.n_vocab, PENALTY_WINDOW, s.repeat_penalty, s.frequency_penalty, s.presence_penalty
            )
            for token in job.prompt[-PENALTY_WINDOW:]:  # the prompt counts as history, as in llama-server
                if isinstance(token, int):
                    llama_cpp.llama_sampler_accept(penalties, token)
            add(chain, penalties)
        if s.temperature <= 0:
            add(chain, llama_cpp.llama_sampler_init_greedy())
        else:
            if s.top_k > 0:
                add(chain, llama_cpp.llama_sampler_init_top_k(s.top_k))
            add(chain, llama_cpp.llama_sampler_init_top_p(s.top_p, 1))
            add(chain, llama_cpp.llama_sampler_init_min_p(s.min_p, 1))
            add(chain, llama_cpp.llama_sampler_init_temp(s.temperature))
            seed = RANDOM_SEED if s.seed is None else s.seed & 0x7FFFFFFF
            add(chain, llama_cpp.llama_sampler_init_dist(seed))
        return chain

    def _grammar(self, job: _Job) -> Any:
        if job.grammar is None:
            return None
        grammar = _grammar_sampler(self._vocab, job.grammar)
        if not grammar:
            raise InvalidSchema("llama.cpp cannot parse the grammar")
        return grammar

    def _add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        batch, i = self._batch, self._batch.n_tokens
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = logits
        batch.n_tokens = i + 1
        return i

    def _step(self) -> None:
        running = [s.job for s in self.slots if s.job is not None]
        for job in running:
            if job.stopped:
                self._finish(job)
            elif job.drawing is not None:
                self._collect_draw(job)
        running = [j for j in running if j.slot is not None and j.slot.job is j]
        running = [j for j in running if not self._media_first(j)]
        drawing = any(j.drawing is not None for j in running)
        running = [j for j in running if j.drawing is None]
        if not running:
            if drawing:  # only draws to wait for: until one ends, or a while
                with self._wake:
                    self._wake.wait(0.01)
            return
        self._batch.n_tokens = 0
        outputs: list[tuple[_Job, int]] = []
        drafted: list[tuple[_Job, list[int], list[int]]] = []
        evaluated: list[tuple[_Job, list[int]]] = []
        streams = [job for job in running if job.last is not None]
        budget = self.n_batch - len(streams)
        for job in streams:  # the running streams' next tokens first: they must not wait on prompts
            row = self._add(job.last, job.n_past, job.slot.seq, True)
            evaluated.append((job, [job.last]))
            # Drafts ride along in the rows the step has to spare, within what the request may still generate.
            drafts = (
                []
                if job.lookup is None
                else job.lookup.propose(min(budget, job.sampling.max_tokens - job.produced - 1))
            )
            if drafts:
                rows = [row] + [self._add(t, job.n_past + 1 + i, job.slot.seq, True) for i, t in enumerate(drafts)]
                drafted.append((job, rows, drafts))
                budget -= len(drafts)
            else:
                outputs.append((job, row))
        for job in running:
            if job.last is not None or not job.pending or budget <= 0:
                continue
            chunk = _text_run(job.pending, budget)
            if not chunk:
                continue
            done = len(chunk) == len(job.pending)
            for k, token in enumerate(chunk):
                index = self._add(token, job.n_past + k, job.slot.seq, done and k == len(chunk) - 1)
            if done:
                outputs.append((job, index))
            evaluated.append((job, chunk))
            budget -= len(chunk)
        code = llama_cpp.llama_decode(self.ctx, self._batch)
        if code != 0:
            raise RuntimeError(f"llama_decode failed ({code})")
        self.stats.steps += 1
        for job, tokens in evaluated:
            job.slot.cached.extend(tokens)
            job.n_past += len(tokens)
            if job.last is None:
                job.pending = job.pending[len(tokens) :]
                self.stats.prompt_tokens += len(tokens)
        for job, index in outputs:
            self._sample(job, index)
        for job, rows, drafts in drafted:
            self._verify(job, rows, drafts)

    def _verify(self, job: _Job, rows: list[int], drafts: list[int]) -> None:
        """Draw a drafting request's tokens row by row while each matches the draft it was read
        with: the matched drafts' cells are kept, the others' removed, and every token drawn is
        delivered (the last one, the first that differs, is the next step's input)."""
        drawn: list[int] = []
        for i, row in enumerate(rows):
            token = llama_cpp.llama_sampler_sample(job.chain, self.ctx, row)
            drawn.append(token)
            last = job.produced + len(drawn) >= job.sampling.max_tokens or self._is_eog(token)
            if last or i == len(drafts) or token != drafts[i]:
                break
        kept = len(drawn) - 1
        self.stats.drafted_tokens += len(drafts)
        self.stats.accepted_tokens += kept
        llama_cpp.llama_memory_seq_rm(self._memory, job.slot.seq, job.n_past + kept, -1)
        job.slot.cached.extend(drafts[:kept])
        job.n_past += kept
        for token in drawn:
            self._emit(job, token, None, ())
            if job.slot is None or job.slot.job is not job:  # it ended
                break

    def _media_first(self, job: _Job) -> bool:
        """For a job whose prompt goes on with a media chunk: encode it in this step, or decode
        its embeddings into the job's sequence when they were encoded in the last one. True when
        the job had its share of this step so (it takes no part in the step's batch)."""
        if job.last is not None or not job.pending or not isinstance(job.pending[0], MediaChunk):
            return False
        chunk = job.pending[0]
        assert self.projector is not None, "a prompt with media reached a model without a projector"
        try:
            if job.encoded is None:
                job.encoded = self.projector.encode(chunk)
                self.stats.media_encoded += 1
                return True
            embeddings, job.encoded = job.encoded, None
            after = self.projector.decode(self.ctx, chunk, embeddings, job.n_past, job.slot.seq, self.n_batch)
        except Exception as exc:
            self._finish(job, exc)
            return True
        job.slot.cached.extend(job.pending[: chunk.n_pos])
        job.pending = job.pending[chunk.n_pos :]
        job.n_past = after
        self.stats.prompt_tokens += chunk.n_pos
        return True

    def _sample(self, job: _Job, index: int) -> None:
        logprobs, top = self._logprobs(job, index) if job.sampling.logprobs is not None else (None, ())
        if job.grammar_sampler is None:
            token = llama_cpp.llama_sampler_sample(job.chain, self.ctx, index)
        else:
            token = self._sample_with_grammar(job, index)
            if token is None:  # drawn in a worker: delivered by `_collect_draw`
                job.drawing_logprobs = (logprobs, top)
                return
        self._emit(job, token, logprobs, top)

    def _emit(self, job: _Job, token: int, logprobs: Any, top: tuple[tuple[int, float], ...]) -> None:
        if self._is_eog(token):
            self._finish(job)
            return
        job.produced += 1
        self.stats.generated_tokens += 1
        now = time.monotonic()
        (self.stats.time_to_first_token if job.produced == 1 else self.stats.inter_token).observe(now - job.since)
        job.since = now
        logprob = None if logprobs is None else float(logprobs[token])
        piece = self._special_piece(token) if token in job.shown else self._piece(token)
        job.deliver(Token(id=token, piece=piece, logprob=logprob, top=top))
        if job.lookup is not None:
            job.lookup.append(token)
        if job.produced >= job.sampling.max_tokens:
            self._finish(job)
        else:
            job.last = token

    def _row_logits(self, index: int) -> np.ndarray:
        """The logits of batch row `index` (a view: the next decode overwrites them)."""
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.ctx, index), shape=(self.n_vocab,))

    def _draw(self, sampler: Any, index: int) -> int:
        """Apply `sampler` to every token's logit at batch row `index`; the token it selects."""
        return _select(self._candidates, self._candidate_rows, self._row_logits(index), (sampler,))

    def _grammar_accepts(self, grammar: Any, token: int) -> bool:
        one = self._one
        one.id, one.logit, one.p = token, 0.0, 0.0
        array = llama_cpp.llama_token_data_array(ctypes.pointer(one), 1, -1, False)
        llama_cpp.llama_sampler_apply(grammar, ctypes.byref(array))
        return one.logit != float("-inf")

    def _sample_with_grammar(self, job: _Job, index: int) -> int | None:
        """The token drawn as the module's docstring says: at once when the grammar takes the one
        drawn without it; else None, and the draw over the whole vocabulary goes to a worker."""
        token = self._draw(job.chain, index)
        if self._grammar_accepts(job.grammar_sampler, token):
            llama_cpp.llama_sampler_accept(job.grammar_sampler, token)
            llama_cpp.llama_sampler_accept(job.chain, token)
            return token
        logits = self._row_logits(index).copy()
        job.drawing_since = time.monotonic()
        job.drawing = self._draws.submit(self._draw_constrained, job.chain, job.grammar_sampler, logits)
        job.drawing.add_done_callback(lambda _: self._notify())
        return None

    def _draw_constrained(self, chain: Any, grammar: Any, logits: np.ndarray) -> int:
        """In a worker: the grammar over every token, then the chain over what it allows."""
        candidates = (llama_cpp.llama_token_data * self.n_vocab)()
        token = _select(candidates, _rows(candidates), logits, (grammar, chain))
        llama_cpp.llama_sampler_accept(grammar, token)
        llama_cpp.llama_sampler_accept(chain, token)
        return token

    def _collect_draw(self, job: _Job) -> None:
        """A job whose token a worker draws: delivered once drawn, ended past its budget."""
        assert job.drawing is not None
        if job.drawing.done():
            drawing, job.drawing = job.drawing, None
            try:
                token = drawing.result()
            except Exception as exc:
                self._finish(job, exc)
                return
            self._emit(job, token, *job.drawing_logprobs)
        elif time.monotonic() - job.drawing_since > self.grammar_budget:
            budget = self.grammar_budget
            self._finish(job, InvalidSchema(f"its grammar took over {budget:g} s on one token (simplify its patterns)"))

    def _notify(self) -> None:
        with self._wake:
            self._wake.notify()

    def _logits(self, job: _Job, index: int) -> np.ndarray:
        pointer = llama_cpp.llama_get_logits_ith(self.ctx, index)
        logits = np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).astype(np.float64)
        for token, value in job.sampling.logit_bias.items():
            logits[token] += value
        shifted = logits - logits.max()
        return shifted - np.log(np.exp(shifted).sum())

    def _logprobs(self, job: _Job, index: int) -> tuple[np.ndarray, tuple[tuple[int, float], ...]]:
        """Log-softmax of the logits the token is sampled from (before temperature), as OpenAI
        reports them; read before sampling, which may change the row."""
        logprobs = self._logits(job, index)
        k = job.sampling.logprobs or 0
        top: tuple[tuple[int, float], ...] = ()
        if k:
            best = np.argpartition(-logprobs, k)[:k]
            best = best[np.argsort(-logprobs[best])]
            top = tuple((int(i), float(logprobs[i])) for i in best)
        return logprobs, top

    def _release(self, job: _Job) -> None:
        """Free the job's samplers: now, or when the worker drawing with them is done."""
        samplers = [s for s in (job.chain, job.grammar_sampler) if s is not None]
        job.chain = job.grammar_sampler = None

        def free(_: object = None) -> None:
            for sampler in samplers:
                llama_cpp.llama_sampler_free(sampler)

        drawing, job.drawing = job.drawing, None
        if drawing is not None:
            drawing.add_done_callback(free)  # at once if it is done
        else:
            free()

    def _finish(self, job: _Job, error: BaseException | None = None) -> None:
        self._release(job)
        if job.slot is not None and job.slot.job is job:
            job.slot.job = None
        job.deliver(error or _aborted(job) or _END)


def _text_run(pending: list[PromptItem], budget: int) -> list[int]:
    """The prompt's next tokens up to `budget`, stopping before a media chunk."""
    run: list[int] = []
    for item in pending[:budget]:
        if not isinstance(item, int):
            break
        run.append(item)
    return run


_ROW = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


def _rows(candidates: Any) -> np.ndarray:
    """A ctypes array of `llama_token_data` as numpy rows, to fill without a Python loop."""
    return np.ctypeslib.as_array(candidates).view(
        np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
    )


def _select(candidates: Any, rows: np.ndarray, logits: np.ndarray, samplers: Sequence[Any]) -> int:
    """Every token with its logit in `candidates` (`rows` is their view), the `samplers` applied
    in turn; the token the last one selects."""
    rows["id"], rows["logit"], rows["p"] = np.arange(len(rows), dtype=np.int32), logits, 0.0
    array = llama_cpp.llama_token_data_array(candidates, len(rows), -1, False)
    for sampler in samplers:
        llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
    return int(array.data[array.selected].id)


def context_params(
    n_ctx: int, parallel: int, n_batch: int, threads: int, kv_cache: KvCache, tuning: Tuning = DEFAULT_TUNING
) -> Any:
    """The parameters of the decoder's context: one KV cache of `parallel` slots of `n_ctx` cells,
    shared among the sequences (unified), decoded `n_batch` tokens at most a call and the tuning's
    `ubatch_size` at once, with its RoPE settings."""
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = n_ctx * parallel
    params.n_batch = n_batch
    params.n_ubatch = min(n_batch, tuning.ubatch_size)
    params.rope_scaling_type = ROPE_SCALING[tuning.rope_scaling]
    params.rope_freq_base = tuning.rope_freq_base
    params.rope_freq_scale = tuning.rope_freq_scale
    params.n_seq_max = parallel
    params.n_threads = threads
    params.n_threads_batch = threads
    params.kv_unified = True
    params.no_perf = True
    params.flash_attn_type = _FLASH[kv_cache.flash_attn]
    params.type_k = _TYPES[kv_cache.type_k]
    params.type_v = _TYPES[kv_cache.type_v]
    return params


def kv_bytes_per_token(model: Any, kv_cache: KvCache) -> int:
    """Bytes of KV cache one token takes: keys and values of every layer, at the width of the
    model's key-value heads (grouped-query attention shares them among its heads; a head is as
    wide as the GGUF's `attention.key_length` / `value_length` say, else the embedding over the
    heads), in the cache's types."""
    layers = llama_cpp.llama_model_n_layer(model)
    heads, kv_heads = llama_cpp.llama_model_n_head(model), llama_cpp.llama_model_n_head_kv(model)
    head = llama_cpp.llama_model_n_embd(model) // max(1, heads)
    key = _metadata_int(model, "attention.key_length") or head
    value = _metadata_int(model, "attention.value_length") or head
    kv_heads = kv_heads if kv_heads > 0 else heads
    return int(layers * kv_heads * (key * _BYTES[kv_cache.type_k] + value * _BYTES[kv_cache.type_v]))


def _metadata_int(model: Any, key: str) -> int | None:
    """An integer of the model's GGUF metadata under its architecture's prefix, if there."""
    found = ctypes.create_string_buffer(256)
    size = llama_cpp.llama_model_meta_val_str(model, b"general.architecture", found, len(found))
    if size <= 0:
        return None
    architecture = found.value.decode()
    size = llama_cpp.llama_model_meta_val_str(model, f"{architecture}.{key}".encode(), found, len(found))
    try:
        return int(found.value) if size > 0 else None
    except ValueError:
        return None


def available_memory() -> int | None:
    """Bytes of memory this machine can still give (Linux's MemAvailable); None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _memory_message(n_ctx: int, parallel: int, needed: int, available: int | None) -> str:
    have = "" if available is None else f", and {available / 2**30:.1f} GiB is available"
    return (
        f"the model's KV cache needs about {needed / 2**30:.1f} GiB for {parallel} slots of {n_ctx} tokens{have}: "
        "load it with fewer slots (--parallel) or a smaller context (--ctx-size)"
    )


def _grammar_sampler(vocab: Any, grammar: Grammar) -> Any:
    if grammar.trigger is None:
        return llama_cpp.llama_sampler_init_grammar(vocab, grammar.text.encode(), b"root")
    patterns = (ctypes.c_char_p * 1)(grammar.trigger.encode())
    return llama_cpp.llama_sampler_init_grammar_lazy_patterns(
        vocab, grammar.text.encode(), b"root", patterns, 1, None, 0
    )


def _aborted(job: _Job) -> RequestAborted | None:
    return RequestAborted(f"request {job.request_id} was aborted") if job.aborted else None
