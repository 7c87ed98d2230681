"""Prompt lookup drafting for the batch loop's speculative decoding: tokens proposed by copying
what followed the last time the newest few tokens appeared in the prompt or the text so far.

Why: an answer that repeats its prompt (a coding agent's edit of a file it was given, a summary,
a quoted passage) has long runs a lookup predicts, and the batch loop checks every proposed token
in the same `llama_batch` step as the other slots' work: each accepted one is a token without a
step of its own. The verification is exact (each proposal is kept only where the model's own
sampler drew that token from its logits), so drafting changes the speed, never the text. This is
llama.cpp's n-gram lookup (`--spec-type ngram`); the index is a dictionary of each n-gram's last
position, kept up to date as tokens come, so that a lookup costs the same however long the text.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# Tokens that stand for an image or audio clip in the history: never part of a proposal's match.
MEDIA = -1


@dataclass(frozen=True)
class Drafting:
    """How a model drafts: `max_tokens` proposed at most per step for a request, none unless at
    least `min_tokens` can be; the newest `ngram` tokens must have appeared before, as they are,
    for what followed them to be proposed (llama.cpp's ngram-simple sizes: a long match is right
    far more often than a short one, and a wrong draft costs its rows of the step)."""

    max_tokens: int = 32
    min_tokens: int = 2
    ngram: int = 12

    def __post_init__(self) -> None:
        if not 1 <= self.min_tokens <= self.max_tokens <= 64:
            raise ValueError(
                f"drafts take 1 <= --draft-min <= --draft-max <= 64, not {self.min_tokens} and {self.max_tokens}"
            )
        if not 1 <= self.ngram <= 32:
            raise ValueError(f"a draft's lookup is 1 to 32 tokens, not {self.ngram}")


class PromptLookup:
    """One request's history (prompt and generated tokens) and the n-grams in it."""

    def __init__(self, tokens: Iterable[int], drafting: Drafting):
        self.tokens = list(tokens)
        self.drafting = drafting
        self._index: dict[tuple[int, ...], int] = {}  # each n-gram's last end in `tokens`
        self._indexed = drafting.ngram - 1  # n-grams ending before this position are indexed

    def append(self, token: int) -> None:
        self.tokens.append(token)

    def propose(self, room: int) -> list[int]:
        """Up to `room` tokens (and the drafting's maximum) likely to come next, or [] when fewer
        than its minimum can be proposed."""
        limit = min(room, self.drafting.max_tokens)
        tokens, n, end = self.tokens, self.drafting.ngram, len(self.tokens) - 1
        for j in range(self._indexed, end):
            self._index[tuple(tokens[j - n + 1 : j + 1])] = j
        self._indexed = max(self._indexed, end)
        if limit < self.drafting.min_tokens or end + 1 < n:
            return []
        key = tuple(tokens[end - n + 1 :])
        found = None if MEDIA in key else self._index.get(key)
        if found is None:
            return []
        proposal = tokens[found + 1 : found + 1 + limit]
        if MEDIA in proposal:
            proposal = proposal[: proposal.index(MEDIA)]
        return proposal if len(proposal) >= self.drafting.min_tokens else []
