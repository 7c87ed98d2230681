"""The KV cache settings llama.cpp users tune: flash attention (`auto`, `on`, `off`) and the types
the keys and values are kept in (`f16`, or quantized `q8_0` / `q4_0`: about half and a quarter of
the memory). llama.cpp takes a quantized V cache only with flash attention, so that combination
is refused here, where it is set, rather than when the model loads."""

from __future__ import annotations

from typing import Literal

FlashAttention = Literal["auto", "on", "off"]
CacheType = Literal["f16", "q8_0", "q4_0"]
FLASH_ATTENTION: tuple[str, ...] = ("auto", "on", "off")
CACHE_TYPES: tuple[str, ...] = ("f16", "q8_0", "q4_0")


def check_kv_cache(flash_attn: str, cache_type_k: str, cache_type_v: str) -> None:
    """A ValueError that says what to change, where llama.cpp would refuse these settings."""
    if flash_attn not in FLASH_ATTENTION:
        raise ValueError(f"flash attention is one of {', '.join(FLASH_ATTENTION)}, not '{flash_attn}'")
    for which, kind in (("K", cache_type_k), ("V", cache_type_v)):
        if kind not in CACHE_TYPES:
            raise ValueError(f"the {which} cache type is one of {', '.join(CACHE_TYPES)}, not '{kind}'")
    if cache_type_v != "f16" and flash_attn == "off":
        raise ValueError(
            f"a quantized V cache ({cache_type_v}) needs flash attention: set --flash-attn on or auto, "
            "or keep --cache-type-v f16"
        )
