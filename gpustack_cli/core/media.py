"""Images and audio in a chat: the parts a message holds as its protocol gave them, checked against
the server's bounds before a model is loaded, fetched where they are URLs and the server allows
that, and decoded for the engine (RGB pixels, or mono samples at the projector's rate).

Pillow decodes images (every image format a client sends, and a size check from the header before
any pixel is decoded: a decompression bomb is refused unread); PyAV, through faster-whisper's
`decode_audio`, decodes audio. A URL is fetched only from a public address: the host's addresses
are resolved first and every one must be global (no loopback, private, link-local or reserved
range), redirects are not followed, and the body is read up to the byte bound within the time
bound.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import ipaddress
import socket
from typing import Any, Literal
from urllib.parse import urlsplit

from engines.base import Media
from gpustack_cli.core.types import GenerationError, MediaLimits, MediaPart

# Formats Pillow is asked to open: the image formats clients send.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")


def check_url(url: str, param: str) -> None:
    """A GenerationError unless `url` is a base64 `data:` URL or an http(s) one (nothing decoded)."""
    if url.startswith("data:"):
        if not url.partition(",")[0].endswith(";base64"):
            raise GenerationError(f"Invalid '{param}': a data URL must be base64 ('data:image/png;base64,...').", param)
    elif not url.startswith(("http://", "https://")):
        raise GenerationError(f"Invalid '{param}': expected a data URL or an http(s) URL.", param)


def data_part(kind: Literal["image", "audio"], url: str, param: str, fmt: str | None = None) -> MediaPart:
    """A part given as a URL: a `data:` URL is read here, any other is kept to fetch."""
    check_url(url, param)
    if url.startswith("data:"):
        return MediaPart(kind, param, data=b64(url.partition(",")[2], param), format=fmt)
    return MediaPart(kind, param, url=url, format=fmt)


def data_url(data: bytes) -> str:
    """`data` as a base64 data URL, typed by its first bytes (an image a client sent as base64)."""
    kinds = ((b"\x89PNG", "image/png"), (b"\xff\xd8", "image/jpeg"), (b"GIF8", "image/gif"), (b"BM", "image/bmp"))
    mime = next((kind for magic, kind in kinds if data.startswith(magic)), None)
    if mime is None:
        mime = "image/webp" if data[8:12] == b"WEBP" else "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def b64(payload: str, param: str) -> bytes:
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise GenerationError(f"Invalid '{param}': the data is not valid base64.", param) from exc


def check_parts(parts: list[MediaPart], limits: MediaLimits) -> None:
    """The bounds a request's media are held to before a model is loaded (a GenerationError)."""
    if len(parts) > limits.max_media:
        raise GenerationError(
            f"Too many images and audio clips: {len(parts)}; the limit is {limits.max_media}.", "messages"
        )
    for part in parts:
        if part.url is not None and not limits.allow_urls:
            raise GenerationError(
                f"Invalid '{part.param}': this server does not fetch media URLs; send the data as a base64 "
                "data URL, or start the server with --allow-image-urls.",
                part.param,
                code="media_url_not_allowed",
            )
        if part.data is not None and len(part.data) > limits.max_media_bytes:
            raise GenerationError(_too_big(part, len(part.data), limits), part.param)


def _too_big(part: MediaPart, size: int, limits: MediaLimits) -> str:
    return f"Invalid '{part.param}': {size} bytes is over the limit of {limits.max_media_bytes} bytes."


def decoded(part: MediaPart, limits: MediaLimits, audio_rate: int) -> Media:
    """The part made ready for the engine (once: kept on the part), fetched first where it is a URL."""
    if part.decoded is None:
        data = part.data if part.data is not None else fetch(part, limits)
        part.decoded = _image(data, part, limits) if part.kind == "image" else _audio(data, part, limits, audio_rate)
    return part.decoded


def open_image(data: bytes, param: str, max_pixels: int, formats: tuple[str, ...] = IMAGE_FORMATS) -> Any:
    """The image (a Pillow image, loaded), read only once its header shows it within
    `max_pixels`: a decompression bomb is refused unread. A GenerationError names `param`."""
    # Pillow comes with the llm and image extras; imported here so that text-only paths do not load it.
    from PIL import Image, UnidentifiedImageError

    names = ", ".join(formats[:-1]) + f" or {formats[-1]}"
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:  # Pillow's own limit, past twice its warning size
        raise GenerationError(f"Invalid '{param}': it is over the limit of {max_pixels} pixels.", param) from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise GenerationError(f"Invalid '{param}': not an image this server reads ({names}).", param) from exc
    if image.format not in formats:
        raise GenerationError(f"Invalid '{param}': {image.format} images are not supported; use {names}.", param)
    width, height = image.size
    if width * height > max_pixels:
        raise GenerationError(f"Invalid '{param}': {width}x{height} is over the limit of {max_pixels} pixels.", param)
    try:
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise GenerationError(f"Invalid '{param}': the image could not be decoded ({exc}).", param) from exc
    return image


def _image(data: bytes, part: MediaPart, limits: MediaLimits) -> Media:
    rgb = open_image(data, part.param, limits.max_image_pixels).convert("RGB")
    return Media("image", hashlib.sha256(data).hexdigest(), rgb.tobytes(), rgb.width, rgb.height)


def _audio(data: bytes, part: MediaPart, limits: MediaLimits, rate: int) -> Media:
    try:
        from faster_whisper.audio import decode_audio
    except ImportError as exc:
        raise GenerationError(
            f"Invalid '{part.param}': audio input needs the audio extras (pip install 'gpustack-cli[audio]').",
            part.param,
        ) from exc
    try:
        samples = decode_audio(io.BytesIO(data), sampling_rate=rate)
    except Exception as exc:  # PyAV raises its own error kinds for each way a file is broken
        raise GenerationError(f"Invalid '{part.param}': the audio could not be decoded.", part.param) from exc
    seconds = len(samples) / rate
    if seconds > limits.max_audio_seconds:
        raise GenerationError(
            f"Invalid '{part.param}': {seconds:.0f} s of audio is over the limit of {limits.max_audio_seconds:g} s.",
            part.param,
        )
    return Media("audio", hashlib.sha256(data).hexdigest(), samples.astype("float32").tobytes())


def fetch(part: MediaPart, limits: MediaLimits) -> bytes:
    """The body at the part's URL, from a public address only, within the bounds."""
    import httpx

    assert part.url is not None
    host = urlsplit(part.url).hostname or ""
    _check_public(host, part)
    try:
        with (
            httpx.Client(timeout=limits.url_timeout, follow_redirects=False) as client,
            client.stream("GET", part.url) as response,
        ):
            if response.status_code != 200:
                raise GenerationError(
                    f"Invalid '{part.param}': fetching the URL gave HTTP {response.status_code}.", part.param
                )
            body = bytearray()
            for block in response.iter_bytes():
                body += block
                if len(body) > limits.max_media_bytes:
                    raise GenerationError(_too_big(part, len(body), limits), part.param)
            return bytes(body)
    except httpx.HTTPError as exc:
        raise GenerationError(f"Invalid '{part.param}': the URL could not be fetched ({exc}).", part.param) from exc


def _check_public(host: str, part: MediaPart) -> None:
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError as exc:
        raise GenerationError(f"Invalid '{part.param}': the URL's host does not resolve.", part.param) from exc
    for address in addresses:
        if not ipaddress.ip_address(address.split("%")[0]).is_global:
            raise GenerationError(
                f"Invalid '{part.param}': the URL's host is not a public address; this server fetches only those.",
                part.param,
                code="media_url_not_allowed",
            )
