"""The engines' own servers' APIs: llama-server's and text-embeddings-inference's routes, mounted
per model on the Generic Proxy, and llama-server's `/tokenize` and `/detokenize` at the top level."""
