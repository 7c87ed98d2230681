"""Ollama's API (`/api/...`, NDJSON streams, `{"error": ...}` errors) over the same core, keys,
scheduler and store as the other protocols, so the tools that speak it work unchanged."""
