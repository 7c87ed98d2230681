"""Jina's rerank API (`/v1/rerank`), which Cohere's and vLLM's clients also speak."""
