"""Streamed text is read in pieces, and a piece may end in the first characters of a tag the
reader looks for (a stop string, a tool-call marker, a thinking tag): that end is held back until
the next piece says whether the tag follows."""

from __future__ import annotations

from collections.abc import Iterable


def ready_and_held(text: str, tags: Iterable[str]) -> tuple[str, str]:
    """`text` cut where it could begin one of `tags`: what can be handed on, and what is held."""
    keep = max((k for tag in tags for k in range(1, len(tag)) if text.endswith(tag[:k])), default=0)
    return text[: len(text) - keep], text[len(text) - keep :]
