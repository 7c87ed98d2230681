"""The HTTP server: protocol translators (OpenAI, Anthropic, Jina, proxy) and their routes."""
