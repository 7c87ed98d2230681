"""Many requests on one llama.cpp model at once: continuous batching, end to end on SmolLM2."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from tests.support.harness import ServerProcess
from tests.support.streams import stream_times

MODEL = "smollm2"


@pytest.fixture(scope="module")
def server(models_home: Path) -> Iterator[ServerProcess]:
    with ServerProcess(models_home, "--no-pull", "--preload", MODEL, "--parallel", "4") as running:
        yield running


def chat(text: str, **fields) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], "temperature": 0, **fields}


def metric(server: ServerProcess, name: str) -> float:
    text = httpx.get(server.url + "/metrics").text
    found = re.search(rf'^{name}{{model="{MODEL}"}} (\S+)$', text, re.MULTILINE)
    assert found, name
    return float(found.group(1))


# Prompts whose greedy continuations cannot be confused with one another's.
CONTINUATIONS = {
    "1, 2, 3, 4, 5, 6,": " 7, 8",
    "101, 102, 103, 104, 105,": " 106,",
    "a, b, c, d, e, f,": " g, h",
    "A B C D E F G": " H",
    "Monday, Tuesday, Wednesday,": " and Thursday",
    "January, February, March, April,": " May",
    "one, two, three, four, five,": " six",
    "2, 4, 6, 8, 10, 12,": " 14, 16",
}


def test_concurrent_requests_each_get_their_own_tokens(server: ServerProcess) -> None:
    """Sixteen requests on four slots, decoded in shared batches. (Their texts need not equal
    those of the same requests run one at a time: a batch of several rows rounds llama.cpp's
    arithmetic differently from a batch of one, and a greedy choice between two close tokens can
    flip. What must hold is that no sequence ever receives another's tokens.)"""
    prompts = list(CONTINUATIONS) * 2

    async def together() -> list[str]:
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as client:
            bodies = [{"model": MODEL, "prompt": p, "max_tokens": 10, "temperature": 0} for p in prompts]
            answers = await asyncio.gather(*(client.post("/v1/completions", json=b) for b in bodies))
        return [a.json()["choices"][0]["text"] for a in answers]

    for prompt, text in zip(prompts, asyncio.run(together()), strict=True):
        assert text.startswith(CONTINUATIONS[prompt]), (prompt, text)
    assert metric(server, "gpustack_model_slots") == 4


def test_a_long_prompt_does_not_stop_running_streams(server: ServerProcess) -> None:
    long_prompt = "Here is a list of words: " + " ".join(f"word{i}" for i in range(1800)) + ". Say hi."

    async def run() -> tuple[list[list[float]], float, float]:
        async with httpx.AsyncClient(base_url=server.url, timeout=600) as client:
            started = [asyncio.Event() for _ in range(3)]
            streams = [
                asyncio.create_task(stream_times(client, chat(f"Count slowly from {i}.", max_tokens=160), started[i]))
                for i in range(3)
            ]
            for event in started:  # the three streams are decoding
                await event.wait()
            sent = time.monotonic()
            answer = await client.post("/v1/chat/completions", json=chat(long_prompt, max_tokens=1))
            assert answer.status_code == 200, answer.text
            prefill = time.monotonic() - sent
            results = await asyncio.gather(*streams)
            return [times for _, times in results], sent, prefill

    stream_events, sent, prefill = asyncio.run(run())
    # While the long prompt was read (in chunks of n_batch tokens, one per step), the streams went
    # on: no gap between their tokens near the whole prefill's length.
    gaps = [b - a for times in stream_events for a, b in itertools.pairwise(times) if sent <= b <= sent + prefill]
    assert gaps, "the streams produced no token while the prompt was read"
    assert max(gaps) < prefill / 2, (max(gaps), prefill)


def test_a_full_queue_refuses_and_a_client_that_leaves_frees_its_slot(models_home: Path) -> None:
    args = ("--no-pull", "--preload", MODEL, "--parallel", "1", "--max-queue", "1")
    with ServerProcess(models_home, *args) as one_slot:

        async def run() -> float:
            async with httpx.AsyncClient(base_url=one_slot.url, timeout=300) as client:
                body = chat("Tell me a very long story.", max_tokens=4000, stream=True)
                async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                    lines = response.aiter_lines()
                    for _ in range(5):
                        await anext(lines)
                    waiting = asyncio.create_task(client.post("/v1/chat/completions", json=chat("Hi", max_tokens=4)))
                    await asyncio.sleep(1)
                    assert not waiting.done()  # the only slot is busy, and the one place in the queue taken
                    refused = await client.post("/v1/chat/completions", json=chat("Hi", max_tokens=4))
                    assert refused.status_code == 503 and refused.headers["Retry-After"]
                    assert refused.json()["error"]["code"] == "model_busy"
                    left = time.monotonic()
                # the first client is gone: its slot goes to the waiting request
                answer = await waiting
                assert answer.status_code == 200
                return time.monotonic() - left

        assert asyncio.run(run()) < 30  # not the minutes the 4000-token story would have taken


def test_metrics_move(server: ServerProcess) -> None:
    before = metric(server, "gpustack_generated_tokens_total"), metric(server, "gpustack_prefix_cache_tokens_total")
    prompt = "Describe a lighthouse in a few words. " * 10
    for _ in range(2):  # the second reads only what its slot does not hold
        httpx.post(server.url + "/v1/chat/completions", json=chat(prompt, max_tokens=4), timeout=120)
    assert metric(server, "gpustack_generated_tokens_total") >= before[0] + 8
    assert metric(server, "gpustack_prefix_cache_tokens_total") > before[1] + 50
    assert metric(server, "gpustack_time_to_first_token_seconds_count") > 0
    assert metric(server, "gpustack_model_slots_busy") == 0
    ps = httpx.get(server.url + "/api/ps").json()["models"]
    assert {(m["name"], m["concurrency"], m["context"]) for m in ps} == {(MODEL, 4, 8192)}


def test_every_slot_streams_at_once(models_home: Path) -> None:
    """Eight streams on eight slots all start before any ends: none waits for a worker thread
    (Python's default pool has six on a two-core machine)."""
    with ServerProcess(models_home, "--no-pull", "--preload", MODEL, "--parallel", "8") as eight:

        async def run() -> list[list[float]]:
            async with httpx.AsyncClient(base_url=eight.url, timeout=300) as client:
                bodies = [chat(f"Count from {i} to one hundred.", max_tokens=48) for i in range(8)]
                results = await asyncio.gather(*(stream_times(client, b) for b in bodies))
            return [times for _, times in results]

        streams = asyncio.run(run())
        assert max(times[0] for times in streams) < min(times[-1] for times in streams)


def test_requests_at_once_share_a_prompt_read_once(server: ServerProcess) -> None:
    """The n choices of one request, and requests that open with the same long system prompt,
    read it once: the others copy its cells (llama_memory_seq_cp) instead of reading it again."""
    system = "You answer questions about lighthouses, ships and the sea, briefly and kindly. " * 12
    tokens = len(
        httpx.post(server.url + "/tokenize", json={"model": MODEL, "content": system}, timeout=120).json()["tokens"]
    )

    def body(question: str, **fields) -> dict:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        return {"model": MODEL, "messages": messages, "max_tokens": 4, **fields}

    before = metric(server, "gpustack_prefix_cache_tokens_total")
    several = httpx.post(server.url + "/v1/chat/completions", json=body("What is a buoy?", n=3), timeout=120)
    assert [c["index"] for c in several.json()["choices"]] == [0, 1, 2]
    assert metric(server, "gpustack_prefix_cache_tokens_total") - before >= 2 * tokens

    async def at_once() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            questions = ["What is a keel?", "What is a mast?", "What is a tide?"]
            answers = await asyncio.gather(*(client.post("/v1/chat/completions", json=body(q)) for q in questions))
            assert all(a.status_code == 200 for a in answers)

    before = metric(server, "gpustack_prefix_cache_tokens_total")
    asyncio.run(at_once())
    assert metric(server, "gpustack_prefix_cache_tokens_total") - before >= 2 * tokens


def test_a_request_is_aborted_by_its_id(models_home: Path) -> None:
    """The engine's async interface, keyed by request id: `abort` ends one request (its reader
    is told so) and frees its slot, while the other request decodes on."""
    from engines.base import LoadSpec, RequestAborted, Sampling
    from engines.llama import LlamaEngine
    from gpustack_cli.models.store import ModelStore

    store = ModelStore(models_home)
    options = {**store.get(MODEL).options, "parallel": 2}
    engine = LlamaEngine(LoadSpec(MODEL, store.model_dir(MODEL), ("llm",), options, ctx_size=512))
    prompt = engine.tokenize("1, 2, 3, 4, 5, 6,")  # a greedy count goes on past 40 tokens
    sampling = Sampling(max_tokens=40, temperature=0)

    async def read(request_id: str, stop_other_after: int | None = None) -> tuple[int, bool]:
        count = 0
        try:
            async for _ in engine.agenerate(prompt, sampling, request_id):
                count += 1
                if count == stop_other_after:
                    assert engine.abort("first")
                    assert not engine.abort("first")  # already ending
        except RequestAborted:
            return count, True
        return count, False

    async def run() -> tuple[tuple[int, bool], tuple[int, bool]]:
        first = asyncio.create_task(read("first"))
        second = asyncio.create_task(read("second", stop_other_after=3))
        return await first, await second

    try:
        (first_count, first_aborted), (second_count, second_aborted) = asyncio.run(run())
        assert first_aborted and first_count < 40, (first_count, second_count)
        assert not second_aborted and second_count == 40
        assert not engine.abort("second")  # ended: nothing to abort
        assert engine.decode_stats().busy == 0
    finally:
        engine.close()


def test_special_tokens_are_shown_only_when_asked_for(models_home: Path) -> None:
    """A format's markers may be control tokens of a model's vocabulary (ChatML's <|im_start|>
    here), left out of the text unless the request preserves them."""
    import threading
    from dataclasses import replace

    from engines.base import LoadSpec, Sampling
    from engines.llama import LlamaEngine
    from gpustack_cli.models.store import ModelStore

    store = ModelStore(models_home)
    engine = LlamaEngine(
        LoadSpec(MODEL, store.model_dir(MODEL), ("llm",), dict(store.get(MODEL).options), ctx_size=256)
    )
    try:
        [marker] = engine.llm.tokenize(b"<|im_start|>", add_bos=False, special=True)
        forced = Sampling(max_tokens=1, temperature=0, logit_bias={marker: 100.0})
        prompt = engine.tokenize("Hello")
        hidden = [t.piece for t in engine.generate(prompt, forced, threading.Event())]
        kept = replace(forced, preserve=("<|im_start|>", "<tool_call>"))  # the second is no single token
        shown = [t.piece for t in engine.generate(prompt, kept, threading.Event())]
        assert hidden == [b""] and shown == [b"<|im_start|>"]
    finally:
        engine.close()


def test_streamed_choices_are_interleaved(server: ServerProcess) -> None:
    """n=3 in one stream: the choices decode together and their chunks come as they are made."""
    body = chat("Tell me about the sea.", n=3, max_tokens=24, temperature=1.0, stream=True)
    chunks = []
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=120) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                chunks.append(json.loads(line[6:])["choices"][0])
    first_end = next(i for i, c in enumerate(chunks) if c["index"] == 0 and c["finish_reason"])
    assert any(c["index"] == 1 and c["delta"].get("content") for c in chunks[:first_end])
    assert {c["index"] for c in chunks if c["finish_reason"]} == {0, 1, 2}
    # Each choice's first chunk names the role, before any of the choices' text.
    assert [c["delta"].get("role") for c in chunks[:3]] == ["assistant"] * 3


@pytest.mark.parametrize("from_scratch", [False, True])
def test_a_seeded_request_reuses_the_cache_unless_told_to_read_from_scratch(
    models_home: Path, from_scratch: bool
) -> None:
    """A seeded request starts from a slot's cached prefix as any other does, and gives the same
    text as the same request that read its prompt; `seeded_from_scratch` reads it whole."""
    import threading

    from engines.base import LoadSpec, Sampling
    from engines.llama import LlamaEngine
    from gpustack_cli.models.store import ModelStore

    store = ModelStore(models_home)
    spec = LoadSpec(MODEL, store.model_dir(MODEL), ("llm",), store.get(MODEL).options, ctx_size=512, parallel=1)
    engine = LlamaEngine(replace(spec, seeded_from_scratch=from_scratch))
    try:
        prompt = engine.tokenize("Tell me a one-line joke about the sea, please. " * 4)
        sampling = Sampling(max_tokens=12, temperature=1.0, seed=7)
        first = [t.id for t in engine.generate(prompt, sampling, threading.Event())]
        reused = engine.decode_stats().reused_tokens
        again = [t.id for t in engine.generate(prompt, sampling, threading.Event())]
        assert again == first
        assert engine.decode_stats().reused_tokens - reused == (0 if from_scratch else len(prompt) - 1)
    finally:
        engine.close()
