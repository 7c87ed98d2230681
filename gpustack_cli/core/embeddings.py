"""What every protocol's embeddings route shares: inputs checked against the model's maximum
length (a 400 naming the numbers, never a silent cut: a cut-off text embeds to another meaning,
unless the caller asks for the cut, as Ollama's `truncate` does), and vectors shortened to fewer
dimensions (Matryoshka-trained models), normalised again."""

from __future__ import annotations

import math

from engines.base import Embedder
from gpustack_cli.core.types import GenerationError

# The most inputs one request may embed.
MAX_INPUTS = 2048


def check_lengths(texts: list[str], engine: Embedder, truncate: bool = False) -> int:
    """The tokens the model reads for `texts`; with `truncate`, a long text counts as cut to the
    model's maximum (the engine cuts it), else it is refused."""
    total = 0
    for index, count in enumerate(engine.token_counts(texts)):
        if count > engine.max_input_tokens:
            if truncate:
                count = engine.max_input_tokens
            else:
                raise GenerationError(
                    f"This model's maximum input length is {engine.max_input_tokens} tokens, however input[{index}] "
                    f"has {count} tokens. Please shorten it.",
                    param="input",
                    code="context_length_exceeded",
                )
        total += count
    return total


def shortened(vector: list[float], dimensions: int) -> list[float]:
    cut = vector[:dimensions]
    norm = math.sqrt(sum(v * v for v in cut)) or 1.0
    return [v / norm for v in cut]
