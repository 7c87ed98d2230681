"""The context a model given none gets from the free memory (no model)."""

from __future__ import annotations

from engines.llama_estimate import KV_SHARE, MIN_CONTEXT, UNKNOWN_MEMORY_CONTEXT, fitting_context

MIB = 2**20


def test_the_trained_length_when_its_cache_fits_in_the_share() -> None:
    # 8192 tokens x 4 slots x 24 KiB = 768 MiB, under half of 4 GiB.
    assert fitting_context(8192, 24 * 1024, 4, 4096 * MIB) == 8192


def test_the_largest_multiple_of_256_whose_cache_takes_the_share() -> None:
    per_token, slots, free = 24 * 1024, 4, 1000 * MIB
    chosen = fitting_context(131072, per_token, slots, free)
    assert chosen % 256 == 0 and MIN_CONTEXT < chosen < 131072
    assert chosen * slots * per_token <= KV_SHARE * free < (chosen + 256) * slots * per_token


def test_never_under_the_floor_unless_the_model_is_shorter() -> None:
    assert fitting_context(131072, 24 * 1024, 64, 10 * MIB) == MIN_CONTEXT
    assert fitting_context(1024, 24 * 1024, 64, 10 * MIB) == 1024
    assert fitting_context(131072, 24 * 1024, 4, -5 * MIB) == MIN_CONTEXT  # the weights took it all


def test_unknown_memory_keeps_the_modest_default() -> None:
    assert fitting_context(131072, 24 * 1024, 4, None) == UNKNOWN_MEMORY_CONTEXT
    assert fitting_context(4096, 24 * 1024, 4, None) == 4096


def test_the_weights_come_off_the_free_memory_and_an_unknown_length_is_capped() -> None:
    per_token, slots = 24 * 1024, 4
    assert fitting_context(131072, per_token, slots, 2000 * MIB, 1000 * MIB) == fitting_context(
        131072, per_token, slots, 1000 * MIB
    )
    assert fitting_context(0, per_token, slots, 64_000 * MIB) == UNKNOWN_MEMORY_CONTEXT
