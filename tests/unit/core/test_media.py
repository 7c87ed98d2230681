"""Media parts checked, fetched and decoded for the engine (no model): bounds, broken images and
the URL rule; and how the batch loop matches prompts that hold media chunks."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from engines.llama_batch import _common_prefix, _text_run
from engines.llama_media import MediaChunk, run_start
from gpustack_cli.core.media import check_parts, data_url, decoded, fetch
from gpustack_cli.core.types import GenerationError, MediaLimits, MediaPart


def png(width: int = 8, height: int = 8, colour: str = "red") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, "PNG")
    return out.getvalue()


def test_an_image_is_decoded_once_to_rgb_pixels_keyed_by_content() -> None:
    part = MediaPart("image", "messages[0].content[0]", data=png(4, 2))
    media = decoded(part, MediaLimits(), 0)
    assert (media.kind, media.width, media.height, len(media.data)) == ("image", 4, 2, 4 * 2 * 3)
    assert media.data[:3] == bytes([255, 0, 0])
    assert decoded(part, MediaLimits(), 0) is media
    same = decoded(MediaPart("image", "p", data=png(4, 2)), MediaLimits(), 0)
    other = decoded(MediaPart("image", "p", data=png(4, 2, "blue")), MediaLimits(), 0)
    assert same.key == media.key != other.key
    assert data_url(png()).startswith("data:image/png;base64,")


@pytest.mark.parametrize(
    ("data", "limits", "words"),
    [
        (b"GIF89a not really", MediaLimits(), "not an image"),
        (png(100, 100), MediaLimits(max_image_pixels=64 * 64), "100x100 is over the limit of 4096 pixels"),
        (png(300, 300)[:-40], MediaLimits(), "could not be decoded"),
    ],
)
def test_a_bad_image_is_refused_naming_its_part(data: bytes, limits: MediaLimits, words: str) -> None:
    with pytest.raises(GenerationError) as refused:
        decoded(MediaPart("image", "messages[2].content[1].image_url", data=data), limits, 0)
    assert words in str(refused.value) and refused.value.param == "messages[2].content[1].image_url"


def test_bounds_before_any_model_is_loaded() -> None:
    big = MediaPart("image", "p", data=b"x" * 2048)
    with pytest.raises(GenerationError, match="2048 bytes is over the limit of 1024"):
        check_parts([big], MediaLimits(max_media_bytes=1024))
    with pytest.raises(GenerationError, match="Too many"):
        check_parts([big] * 3, MediaLimits(max_media=2))


@pytest.mark.parametrize("url", ["http://127.0.0.1:1/a.png", "http://10.1.2.3/a.png", "http://[::1]/a.png"])
def test_urls_are_fetched_from_public_addresses_only(url: str) -> None:
    with pytest.raises(GenerationError) as refused:
        fetch(MediaPart("image", "p", url=url), MediaLimits(allow_urls=True, url_timeout=1))
    assert refused.value.code == "media_url_not_allowed"


def chunk(key: str, n_pos: int) -> MediaChunk:
    """A media chunk without a libmtmd handle: what the batch loop compares."""
    made = MediaChunk.__new__(MediaChunk)
    made.key, made.n_pos, made.n_tokens = key, n_pos, n_pos
    return made


def test_a_cache_matches_an_image_whole_and_by_content() -> None:
    red, red_again, blue = chunk("red", 3), chunk("red", 3), chunk("blue", 3)
    cached = [1, 2, *[red] * 3, 7]
    assert _common_prefix(cached, [1, 2, *[red_again] * 3, 7, 8]) == 6
    assert _common_prefix(cached, [1, 2, *[blue] * 3, 7]) == 2
    # A cache that ends inside an image (never kept so) is matched up to the image's start.
    assert _common_prefix([1, 2, red, red], [1, 2, *[red_again] * 3, 7]) == 2
    assert run_start([1, *[red] * 3, 5], 3) == 1 and run_start([1, *[red] * 3, 5], 4) == 4
    assert _text_run([4, 5, *[red] * 3, 6], 10) == [4, 5] and _text_run([4, 5, 6], 2) == [4, 5]


def test_a_fetch_is_held_to_its_bounds(loopback, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fetch itself, against a local server standing in for a public one (the address rule
    is what the test above holds)."""
    from gpustack_cli.core import media

    monkeypatch.setattr(media, "_check_public", lambda host, part: None)
    limits = MediaLimits(allow_urls=True, max_media_bytes=1024, url_timeout=5)
    url = loopback.add_file("cat.png", png())
    part = MediaPart("image", "messages[0].content[0].image_url", url=url)
    assert decoded(part, limits, 0).width == 8
    big = MediaPart("image", "p", url=loopback.add_file("big.bin", b"x" * 5000))
    with pytest.raises(GenerationError, match="over the limit of 1024 bytes"):
        fetch(big, limits)
    with pytest.raises(GenerationError, match="HTTP 404"):
        fetch(MediaPart("image", "p", url=f"{loopback.url}/files/none.png"), limits)
