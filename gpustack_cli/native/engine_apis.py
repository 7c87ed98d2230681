"""Each engine's own HTTP API, as its native server speaks it, for the Generic Proxy to mount:
llama-server's routes for llama.cpp models, text-embeddings-inference's for sentence-transformers
models, and health and info for the audio engines. A handler takes the loaded engine and the
request's JSON body; it knows nothing of keys or models (the proxy settles those)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engines.base import Embedder, Ranking, Reranker, Sampling, Speaker, TextGenerator, Tokenizer
from gpustack_cli.core.limits import capped, check_text_size, fit_context
from gpustack_cli.core.prompts import Prepared
from gpustack_cli.core.streams import collect, text_events
from gpustack_cli.core.types import Finished, TextDelta
from gpustack_cli.runtime import batching
from gpustack_cli.server.context import REQUEST_ID, context
from gpustack_cli.server.errors import APIError, bad_request, from_validation
from gpustack_cli.server.sse import EventStream
from gpustack_cli.server.wire import json_response

Handler = Callable[[web.Request, Any, dict[str, Any], str], Awaitable[web.StreamResponse]]


def _list(request: web.Request, value: Any, name: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(i, str) and i for i in items):
        raise bad_request(f"'{name}' must be a non-empty string or list of non-empty strings.", param=name)
    check_text_size(sum(map(len, items)), context(request).settings.limits, name)
    return items


class CompletionBody(BaseModel):
    """llama-server's `/completion` fields that this server reads."""

    model_config = ConfigDict(extra="allow")
    prompt: str | list[Annotated[int, Field(ge=0, lt=2**31)]] = ""
    n_predict: Annotated[int, Field(ge=-1)] | None = -1
    temperature: Annotated[float, Field(ge=0, le=100)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    repeat_penalty: Annotated[float, Field(ge=0, le=100)] | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False

    def sampling(self, max_tokens: int) -> Sampling:
        return Sampling.of(
            max_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            min_p=self.min_p,
            repeat_penalty=self.repeat_penalty,
            seed=self.seed if self.seed is not None and self.seed >= 0 else None,
        )


async def health(request: web.Request, engine: Any, body: dict, model: str) -> web.Response:
    return json_response({"status": "ok"})


# -- llama-server --------------------------------------------------------------------------------


async def llama_props(request: web.Request, engine: TextGenerator, body: dict, model: str) -> web.Response:
    return json_response(
        {
            "model_alias": model,
            "total_slots": getattr(engine, "max_concurrency", 1),
            "chat_template": engine.chat_template or "",
            "default_generation_settings": {"n_ctx": engine.n_ctx, "params": {"temperature": Sampling(1).temperature}},
        }
    )


async def llama_tokenize(request: web.Request, engine: Tokenizer, body: dict, model: str) -> web.Response:
    content = body.get("content")
    if not isinstance(content, str):
        raise bad_request("'content' must be a string.", param="content")
    check_text_size(len(content), context(request).settings.limits, "content")
    tokens = await asyncio.to_thread(engine.tokenize, content, bool(body.get("add_special", False)))
    if body.get("with_pieces"):
        return json_response({"tokens": [{"id": t, "piece": engine.detokenize([t])} for t in tokens]})
    return json_response({"tokens": tokens})


async def llama_detokenize(request: web.Request, engine: Tokenizer, body: dict, model: str) -> web.Response:
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, int) and t >= 0 for t in tokens):
        raise bad_request("'tokens' must be a list of token ids.", param="tokens")
    return json_response({"content": await asyncio.to_thread(engine.detokenize, tokens)})


async def llama_completion(request: web.Request, engine: TextGenerator, body: dict, model: str) -> web.StreamResponse:
    try:
        asked = CompletionBody.model_validate(body)
    except ValidationError as exc:
        raise from_validation(exc) from exc
    if isinstance(asked.prompt, str):
        check_text_size(len(asked.prompt), context(request).settings.limits, "prompt")
        tokens = await asyncio.to_thread(engine.tokenize, asked.prompt)
    else:
        tokens = list(asked.prompt)
    n_predict = capped(None if asked.n_predict in (None, -1) else asked.n_predict, context(request).settings.limits)
    sampling = asked.sampling(fit_context(engine, len(tokens), n_predict, "prompt"))
    stop = asked.stop or []
    prepared = Prepared(tokens, sampling, [stop] if isinstance(stop, str) else list(stop))
    events = text_events(engine, prepared, request[REQUEST_ID])

    def final(event: Finished, content: str) -> dict[str, Any]:
        kind = "word" if event.stop_sequence else ("limit" if event.reason == "length" else "eos")
        return {
            "content": content,
            "stop": True,
            "model": model,
            "tokens_predicted": event.completion_tokens,
            "tokens_evaluated": event.prompt_tokens,
            "stop_type": kind,
            "stopping_word": event.stop_sequence or "",
        }

    if asked.stream:
        stream = EventStream(request)
        await stream.open()
        try:
            async with contextlib.aclosing(events):
                async for event in events:
                    if isinstance(event, TextDelta):
                        await stream.send({"content": event.text, "stop": False})
                    else:
                        await stream.send(final(event, ""))
        except Exception as exc:
            await stream.fail(exc)
        return await stream.close()
    answer = await collect(events)
    return json_response(final(answer.finished, answer.text))


async def llama_embedding(request: web.Request, engine: Embedder, body: dict, model: str) -> web.Response:
    texts = _list(request, body.get("content"), "content")
    vectors = await batching.embed(engine, texts, context(request).settings.batch_wait)
    return json_response([{"index": i, "embedding": [v]} for i, v in enumerate(vectors)])


# -- text-embeddings-inference -------------------------------------------------------------------


async def tei_embed(request: web.Request, engine: Embedder, body: dict, model: str) -> web.Response:
    texts = _list(request, body.get("inputs"), "inputs")
    counts = await asyncio.to_thread(engine.token_counts, texts)
    if max(counts) > engine.max_input_tokens and not body.get("truncate"):
        raise APIError(413, f"Input validation error: inputs must have at most {engine.max_input_tokens} tokens.")
    return json_response(await batching.embed(engine, texts, context(request).settings.batch_wait))


async def tei_rerank(request: web.Request, engine: Reranker, body: dict, model: str) -> web.Response:
    query = body.get("query")
    if not isinstance(query, str) or not query:
        raise bad_request("'query' must be a non-empty string.", param="query")
    texts = _list(request, body.get("texts"), "texts")
    ranking = await batching.call(engine, lambda: engine.rerank(query, texts), context(request).settings.batch_wait)
    return json_response(tei_ranks(ranking, texts, bool(body.get("return_text"))))


def tei_ranks(ranking: Ranking, texts: list[str], return_text: bool) -> list[dict[str, Any]]:
    """text-embeddings-inference's `/rerank` answer: every text's score, best first."""
    order = sorted(range(len(texts)), key=lambda i: ranking.scores[i], reverse=True)
    results: list[dict[str, Any]] = [{"index": i, "score": ranking.scores[i]} for i in order]
    if return_text:
        for result in results:
            result["text"] = texts[result["index"]]
    return results


async def tei_tokenize(request: web.Request, engine: Tokenizer, body: dict, model: str) -> web.Response:
    texts = _list(request, body.get("inputs"), "inputs")
    special = bool(body.get("add_special_tokens", True))
    return json_response(
        [[{"id": t, "text": engine.detokenize([t])} for t in engine.tokenize(text, special)] for text in texts]
    )


async def tei_info(request: web.Request, engine: Any, body: dict, model: str) -> web.Response:
    kind = {"reranker": {}} if getattr(engine, "cross", False) else {"embedding": {"pooling": "mean"}}
    return json_response(
        {
            "model_id": model,
            "model_type": kind,
            "max_input_length": engine.max_input_tokens,
            "max_client_batch_size": 2048,
        }
    )


async def audio_info(request: web.Request, engine: Any, body: dict, model: str) -> web.Response:
    if isinstance(engine, Speaker):
        return json_response(
            {"model": model, "task": "text-to-speech", "sample_rate": engine.sample_rate, "voices": engine.voices}
        )
    return json_response({"model": model, "task": "speech-to-text", "multilingual": engine.multilingual})


# Per engine: (method, path) -> (handler, the model category the route needs, if any).
ROUTES: dict[str, dict[tuple[str, str], tuple[Handler, str | None]]] = {
    "llama.cpp": {
        ("GET", "/health"): (health, None),
        ("GET", "/props"): (llama_props, "llm"),
        ("POST", "/tokenize"): (llama_tokenize, None),
        ("POST", "/detokenize"): (llama_detokenize, None),
        ("POST", "/completion"): (llama_completion, "llm"),
        ("POST", "/embedding"): (llama_embedding, "embedding"),
    },
    "sentence-transformers": {
        ("GET", "/health"): (health, None),
        ("GET", "/info"): (tei_info, None),
        ("POST", "/embed"): (tei_embed, "embedding"),
        ("POST", "/rerank"): (tei_rerank, "reranker"),
        ("POST", "/tokenize"): (tei_tokenize, None),
    },
    "faster-whisper": {("GET", "/health"): (health, None), ("GET", "/info"): (audio_info, None)},
    "piper": {("GET", "/health"): (health, None), ("GET", "/info"): (audio_info, None)},
}
