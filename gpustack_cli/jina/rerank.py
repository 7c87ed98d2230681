"""Jina's `POST /v1/rerank`, in the shape of the seeds' example (GPUStack's Jina-compatible API)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from engines.base import Ranking, Reranker
from gpustack_cli.core.limits import check_text_size
from gpustack_cli.models.store import Category
from gpustack_cli.runtime import batching
from gpustack_cli.server.context import context, engine_for, keep_alive_of, read_json, resolve_model
from gpustack_cli.server.errors import bad_request
from gpustack_cli.server.operations import Doc, Operation, operation
from gpustack_cli.server.routing import model_route
from gpustack_cli.server.wire import json_response

MAX_DOCUMENTS = 1024


class RerankUsage(Doc):
    prompt_tokens: int
    total_tokens: int


class RerankDocument(Doc):
    text: str


class RerankResult(Doc):
    index: int
    relevance_score: float
    document: RerankDocument | None = None


class RerankList(Doc):
    model: str
    object: Literal["list"]
    results: list[RerankResult]
    usage: RerankUsage


class Document(BaseModel):
    model_config = ConfigDict(extra="allow")
    text: str


class RerankBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    query: Annotated[str, Field(min_length=1)]
    documents: Annotated[list[str | Document], Field(min_length=1, max_length=MAX_DOCUMENTS)]
    top_n: Annotated[int, Field(ge=1)] | None = None
    return_documents: bool = True
    keep_alive: str | int | float | None = None


async def rerank(request: web.Request) -> web.Response:
    body = await read_json(request, RerankBody)
    manifest = resolve_model(request, body.model, Category.reranker, "rerank")
    texts = [d if isinstance(d, str) else d.text for d in body.documents]
    if any(not t for t in texts):
        raise bad_request("Invalid 'documents': empty documents cannot be ranked.", param="documents")
    settings = context(request).settings
    # A bi-encoder reads each document once, a cross-encoder reads the query with each of them.
    check_text_size(sum(map(len, texts)) + len(body.query) * (len(texts) + 1), settings.limits, "documents")
    wait = settings.batch_wait
    async with engine_for(request, manifest, Reranker, keep_alive_of(request, body.keep_alive)) as engine:
        ranking = await batching.call(engine, lambda: engine.rerank(body.query, texts), wait)
    return json_response(rerank_answer(ranking, texts, manifest.name, body.top_n, body.return_documents))


def rerank_answer(
    ranking: Ranking, texts: list[str], model: str, top_n: int | None, return_documents: bool
) -> dict[str, Any]:
    """Jina's answer for the documents' scores: best first, the first `top_n` of them."""
    order = sorted(range(len(texts)), key=lambda i: ranking.scores[i], reverse=True)[:top_n]
    results = []
    for index in order:
        result: dict[str, Any] = {"index": index, "relevance_score": ranking.scores[index]}
        if return_documents:
            result["document"] = {"text": texts[index]}
        results.append(result)
    usage = {"prompt_tokens": ranking.prompt_tokens, "total_tokens": ranking.prompt_tokens}
    return {"model": model, "object": "list", "results": results, "usage": usage}


def add_routes(app: web.Application) -> None:
    handler = model_route(Category.reranker, "rerank")(rerank)
    operation(app, handler, Operation("POST", "/v1/rerank", "Jina rerank", "jina", RerankBody, response=RerankList))
