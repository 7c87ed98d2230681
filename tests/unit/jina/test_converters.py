"""Rerank answers in Jina's and text-embeddings-inference's shapes, without a model."""

from __future__ import annotations

from engines.base import Ranking
from gpustack_cli.jina.rerank import rerank_answer
from gpustack_cli.native.engine_apis import tei_ranks


def test_rerank_answers() -> None:
    ranking = Ranking(scores=[0.1, 0.9, 0.5], prompt_tokens=30)
    texts = ["a", "b", "c"]
    jina = rerank_answer(ranking, texts, "r", top_n=2, return_documents=True)
    assert [(r["index"], r["relevance_score"], r["document"]["text"]) for r in jina["results"]] == [
        (1, 0.9, "b"),
        (2, 0.5, "c"),
    ]
    assert jina["usage"] == {"prompt_tokens": 30, "total_tokens": 30} and jina["model"] == "r"
    assert "document" not in rerank_answer(ranking, texts, "r", None, False)["results"][0]
    assert tei_ranks(ranking, texts, return_text=False) == [
        {"index": 1, "score": 0.9},
        {"index": 2, "score": 0.5},
        {"index": 0, "score": 0.1},
    ]
    assert tei_ranks(ranking, texts, return_text=True)[0]["text"] == "b"
