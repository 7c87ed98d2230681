"""OpenAI's API under `/v1`: models, chat and legacy completions, embeddings, audio, images."""
