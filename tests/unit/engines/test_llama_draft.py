"""Prompt lookup drafting: what it proposes from a request's history (no model)."""

from __future__ import annotations

import pytest

from engines.llama_draft import MEDIA, Drafting, PromptLookup


def lookup(tokens: list[int], **drafting) -> PromptLookup:
    return PromptLookup(tokens, Drafting(**{"ngram": 3, **drafting}))


def test_what_followed_the_newest_ngram_last_time_is_proposed() -> None:
    history = lookup([1, 2, 3, 4, 5, 6, 7, 9, 1, 2, 3])
    assert history.propose(10) == [4, 5, 6, 7, 9, 1, 2, 3]
    assert history.propose(3) == [4, 5, 6]  # as much as the step has room for
    history.append(4)
    history.append(8)  # no longer what the prompt said: nothing matches "3 4 8"
    assert history.propose(10) == []


def test_the_latest_occurrence_wins_and_new_tokens_are_indexed_as_they_come() -> None:
    history = lookup([5, 6, 7, 1, 5, 6, 7, 2, 0])
    for token in (5, 6, 7):
        history.append(token)
    assert history.propose(2) == [2, 0]
    history = lookup([0, 0, 0])
    for token in (1, 2, 3, 4, 1, 2, 3):
        history.append(token)
    assert history.propose(4) == [4, 1, 2, 3]  # found in the generated text itself


def test_short_proposals_and_media_are_left_out() -> None:
    assert lookup([1, 2, 3, 4, 1, 2, 3], min_tokens=2).propose(10) == [4, 1, 2, 3]
    assert lookup([1, 2, 3, 4, 1, 2, 3], min_tokens=5).propose(10) == []
    assert lookup([1, 2, 3, 4, 1, 2, 3], max_tokens=2).propose(10) == [4, 1]
    assert lookup([1, 2, 3, 4, MEDIA, 9, 1, 2, 3]).propose(10) == []  # cut at the image: too short
    assert lookup([1, 2, 3, 4, 5, MEDIA, 1, 2, 3]).propose(10) == [4, 5]
    assert lookup([1, 2, 3, 4, 5, 6, 1, 2, 3]).propose(1) == []  # room below the minimum


@pytest.mark.parametrize(("most", "least", "ngram"), [(0, 0, 12), (4, 5, 12), (65, 2, 12), (8, 2, 0)])
def test_settings_out_of_range_are_refused(most: int, least: int, ngram: int) -> None:
    with pytest.raises(ValueError):
        Drafting(max_tokens=most, min_tokens=least, ngram=ngram)
