"""OpenAI's `POST /v1/images/generations` and `/v1/images/edits` over diffusers pipelines.

`response_format: url` links point at `GET /v1/images/files/{id}` on this server: unguessable,
readable only with the API key that made them, and gone after `FILE_LIFETIME`. `stream: true` sends
OpenAI's image events: up to `partial_images` previews decoded from the latents while denoising,
then the images.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engines.base import ImageGenerator, ImageRequest
from gpustack_cli.config import Settings
from gpustack_cli.core.media import open_image
from gpustack_cli.core.types import GenerationError
from gpustack_cli.models.store import Category
from gpustack_cli.openai.answers import Images
from gpustack_cli.runtime.threads import emit_in_thread
from gpustack_cli.server.context import (
    context,
    engine_for,
    keep_alive_of,
    principal,
    read_form,
    read_json,
    resolve_model,
)
from gpustack_cli.server.errors import APIError, bad_request, from_validation
from gpustack_cli.server.operations import STREAM, Operation, operation
from gpustack_cli.server.routing import model_route
from gpustack_cli.server.sse import EventStream
from gpustack_cli.server.wire import json_response

FILE_LIFETIME = 3600.0
MAX_SIDE = 2048
# `quality` scales the steps; `style` picks the guidance (OpenAI's words, diffusers' knobs).
QUALITY_STEPS = {"low": 0.5, "medium": 1.0, "standard": 1.0, "auto": 1.0, "high": 1.5, "hd": 1.5}
STYLE_GUIDANCE = {"vivid": 9.0, "natural": 5.0}
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
# The values OpenAI's stream events allow for `size` and `quality`.
EVENT_SIZES = {"1024x1024", "1024x1536", "1536x1024"}
EVENT_QUALITY = {"standard": "medium", "hd": "high"}


class ImageFields(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    prompt: Annotated[str, Field(min_length=1, max_length=32000)]
    n: Annotated[int, Field(ge=1, le=10)] = 1
    size: str = "auto"
    response_format: Literal["b64_json", "url"] = "b64_json"
    quality: Literal["auto", "low", "medium", "high", "standard", "hd"] = "auto"
    output_format: Literal["png", "jpeg", "webp"] = "png"
    output_compression: Annotated[int, Field(ge=0, le=100)] | None = None
    negative_prompt: str | None = None
    seed: int | None = None
    num_inference_steps: Annotated[int, Field(ge=1, le=150)] | None = None
    guidance_scale: Annotated[float, Field(ge=0, le=30)] | None = None
    sampler: str | None = None
    user: str | None = None
    keep_alive: str | int | float | None = None
    stream: bool = False
    partial_images: Annotated[int, Field(ge=0, le=3)] = 0
    background: Literal["auto", "opaque", "transparent"] = "auto"


class GenerationBody(ImageFields):
    style: Literal["vivid", "natural"] | None = None


class EditFields(ImageFields):
    strength: Annotated[float, Field(gt=0, le=1)] = 0.8


@dataclass
class _File:
    data: bytes
    content_type: str
    expires: float
    # The name of the key that made it: only that key may fetch it.
    owner: str


@dataclass
class ImageFiles:
    """Images behind `url` links, kept in memory until they expire."""

    files: dict[str, _File] = field(default_factory=dict)

    def add(self, data: bytes, fmt: str, owner: str) -> str:
        now = time.time()
        for key in [k for k, f in self.files.items() if f.expires < now]:
            del self.files[key]
        key = f"{secrets.token_urlsafe(24)}.{fmt}"
        self.files[key] = _File(data, CONTENT_TYPES[fmt], now + FILE_LIFETIME, owner)
        return key


FILES = web.AppKey("image_files", ImageFiles)


def _size(value: str, engine: ImageGenerator) -> tuple[int, int]:
    if value == "auto":
        return engine.default_size, engine.default_size
    try:
        width, height = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise bad_request(
            f"Invalid 'size': {value!r}; use WIDTHxHEIGHT, e.g. 512x512, or 'auto'.", param="size"
        ) from None
    m = engine.multiple
    if not (m <= width <= MAX_SIDE and m <= height <= MAX_SIDE) or width % m or height % m:
        raise bad_request(
            f"Invalid 'size': {value}; each side must be a multiple of {m} between {m} and {MAX_SIDE}.", param="size"
        )
    return width, height


def _check_work(settings: Settings, width: int, height: int, n: int, steps: int | None, strength: float) -> None:
    """What one request may ask of a pipeline: memory grows with the pixels of all its images,
    time with those pixels times the steps."""
    pixels = width * height * n
    if pixels > settings.max_request_pixels:
        raise bad_request(
            f"This request asks for {pixels} pixels ({n} x {width}x{height}); the limit is "
            f"{settings.max_request_pixels}: ask for fewer or smaller images.",
            param="n" if n > 1 else "size",
        )
    if steps is None:
        return
    if pixels * steps > settings.max_image_work:
        raise bad_request(
            f"This request asks for {steps} steps over {pixels} pixels; the limit of pixels times steps is "
            f"{settings.max_image_work}: ask for fewer steps or pixels.",
            param="num_inference_steps",
        )
    if int(steps * strength) < 1:  # an edit runs only the last `strength` part of the steps
        raise bad_request(
            f"{steps} steps at strength {strength:g} leave no step to run: raise 'num_inference_steps'.",
            param="num_inference_steps",
        )


def _precheck(settings: Settings, body: ImageFields, strength: float = 1.0) -> None:
    """The limits that need no model (an explicit size), checked before it is loaded."""
    if body.size == "auto":
        return
    with contextlib.suppress(ValueError):
        width, height = (int(v) for v in body.size.lower().split("x"))
        if width > 0 and height > 0:
            _check_work(settings, width, height, body.n, body.num_inference_steps, strength)


def _request(
    settings: Settings, body: ImageFields, engine: ImageGenerator, style: str | None, strength: float = 1.0
) -> ImageRequest:
    if body.background == "transparent":
        raise bad_request("Invalid 'background': this model draws opaque images only.", param="background")
    if body.stream and body.response_format == "url":
        raise bad_request("Streamed images come as b64_json: leave 'response_format' out.", param="response_format")
    if body.sampler is not None and body.sampler not in engine.samplers:
        raise bad_request(f"Invalid 'sampler': use one of {', '.join(engine.samplers)}.", param="sampler")
    width, height = _size(body.size, engine)
    steps = body.num_inference_steps
    if steps is None and body.quality not in ("auto", "medium", "standard"):
        steps = max(1, round(engine.default_steps * QUALITY_STEPS[body.quality]))
    _check_work(settings, width, height, body.n, steps or engine.default_steps, strength)
    guidance = body.guidance_scale if body.guidance_scale is not None else STYLE_GUIDANCE.get(style or "")
    return ImageRequest(
        prompt=body.prompt,
        width=width,
        height=height,
        n=body.n,
        steps=steps,
        guidance=guidance,
        negative_prompt=body.negative_prompt,
        seed=body.seed,
        sampler=body.sampler,
        strength=strength,
        previews=body.partial_images if body.stream else 0,
    )


def _encode(image: Any, fmt: str, compression: int | None) -> bytes:
    buffer = io.BytesIO()
    if fmt == "png":
        image.save(buffer, format="PNG")
    else:  # output_compression is a 0-100 "how much smaller"; PIL's quality is the reverse
        image.convert("RGB").save(buffer, format=fmt.upper(), quality=100 - (compression or 0) if compression else 90)
    return buffer.getvalue()


def _generation(
    request: web.Request, manifest_name: str, engine: ImageGenerator, job: ImageRequest, image: Any, mask: Any
) -> AsyncIterator[tuple[int | None, list[Any]]]:
    """(index, images) of the partial images `job.previews` asks for, then (None, the images).
    A cancelled request (client gone) stops at the next step."""
    counted = context(request).metrics.image_steps.labels(manifest_name)

    def work(cancel: Any, emit: Callable[[tuple[int | None, list[Any]]], None]) -> None:
        def preview(index: int, images: list[Any]) -> None:
            emit((index, images))

        emit((None, engine.generate(job, cancel, lambda _s, _t: counted.inc(), image, mask, preview)))

    return emit_in_thread(work)


async def _run(
    request: web.Request, manifest_name: str, engine: ImageGenerator, job: ImageRequest, image: Any, mask: Any
) -> list[Any]:
    async with contextlib.aclosing(_generation(request, manifest_name, engine, job, image, mask)) as results:
        async for index, images in results:
            if index is None:
                return images
    raise APIError(500, "The image pipeline returned nothing.")


async def _encoded(images: list[Any], body: ImageFields) -> list[bytes]:
    # Encoding a large PNG takes a while: in a thread, so the server keeps answering meanwhile.
    return await asyncio.to_thread(lambda: [_encode(i, body.output_format, body.output_compression) for i in images])


async def _answer(request: web.Request, images: list[Any], body: ImageFields) -> web.Response:
    encoded = await _encoded(images, body)
    data = []
    for image in encoded:
        if body.response_format == "url":
            key = request.app[FILES].add(image, body.output_format, principal(request).key_id)
            data.append({"url": f"{request.scheme}://{request.host}/v1/images/files/{key}"})
        else:
            data.append({"b64_json": base64.b64encode(image).decode()})
    return json_response({"created": int(time.time()), "data": data, "output_format": body.output_format})


def _event_fields(body: ImageFields, job: ImageRequest) -> dict[str, Any]:
    """What every streamed event repeats of the request, in the words OpenAI's schema allows:
    its sizes and qualities are those of its own models, so others are reported as `auto`."""
    size = f"{job.width}x{job.height}"
    return {
        "size": size if size in EVENT_SIZES else "auto",
        "quality": EVENT_QUALITY.get(body.quality, body.quality),
        "background": "opaque",
        "output_format": body.output_format,
    }


async def _stream(
    request: web.Request,
    kind: str,
    manifest_name: str,
    engine: ImageGenerator,
    job: ImageRequest,
    body: ImageFields,
    image: Any = None,
    mask: Any = None,
) -> web.StreamResponse:
    """OpenAI's image stream: `{kind}.partial_image` events while denoising, then one
    `{kind}.completed` event per image (kind: image_generation or image_edit)."""
    fields = _event_fields(body, job)
    prompt_tokens = engine.count_tokens(job.prompt)
    stream = EventStream(request)
    await stream.open()
    try:
        async with contextlib.aclosing(_generation(request, manifest_name, engine, job, image, mask)) as results:
            async for index, images in results:
                for data in await _encoded(images, body):
                    event: dict[str, Any] = {
                        "type": f"{kind}.{'completed' if index is None else 'partial_image'}",
                        "b64_json": base64.b64encode(data).decode(),
                        "created_at": int(time.time()),
                        **fields,
                    }
                    if index is not None:
                        event["partial_image_index"] = index
                    else:  # a diffusion model reads text tokens only and writes no image tokens
                        details = {"text_tokens": prompt_tokens, "image_tokens": 0}
                        event["usage"] = {
                            "total_tokens": prompt_tokens,
                            "input_tokens": prompt_tokens,
                            "output_tokens": 0,
                            "input_tokens_details": details,
                        }
                    await stream.send(event, event=event["type"])
    except Exception as exc:  # headers are gone: the error is the stream's last event
        await stream.fail(exc, event="error")
    return await stream.close()


async def generations(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, GenerationBody)
    settings = context(request).settings
    _precheck(settings, body)
    manifest = resolve_model(request, body.model, Category.image, "image generation")
    async with engine_for(request, manifest, ImageGenerator, keep_alive_of(request, body.keep_alive)) as engine:
        job = _request(settings, body, engine, body.style)
        if body.stream:
            return await _stream(request, "image_generation", manifest.name, engine, job, body)
        images = await _run(request, manifest.name, engine, job, None, None)
    return await _answer(request, images, body)


def _open_image(data: bytes, param: str, max_pixels: int) -> Any:
    """The uploaded image (PNG, JPEG or WEBP), decoded only once its header shows it within `max_pixels`."""
    try:
        return open_image(data, param, max_pixels, ("PNG", "JPEG", "WEBP"))
    except GenerationError as exc:
        raise bad_request(str(exc), param=param) from exc


async def edits(request: web.Request) -> web.StreamResponse:
    form = await read_form(request, "Send edits as multipart/form-data with an 'image' file.", "image")
    uploads = [v for k in ("image", "image[]") for v in form.getall(k, []) if not isinstance(v, str)]
    if not uploads:
        raise bad_request("Missing required parameter: 'image'.", param="image", code="missing_required_parameter")
    if len(uploads) > 1:
        raise bad_request("This model edits one image at a time: send a single 'image'.", param="image")
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    try:
        body = EditFields.model_validate(fields)
    except ValidationError as exc:
        raise from_validation(exc) from exc
    settings = context(request).settings
    _precheck(settings, body, body.strength)
    manifest = resolve_model(request, body.model, Category.image, "image edits")
    image, mask = await asyncio.to_thread(_edit_images, uploads[0], form.get("mask"), settings.max_image_pixels)
    async with engine_for(request, manifest, ImageGenerator, keep_alive_of(request, body.keep_alive)) as engine:
        job = _request(settings, body, engine, None, body.strength)
        if body.stream:
            return await _stream(request, "image_edit", manifest.name, engine, job, body, image, mask)
        images = await _run(request, manifest.name, engine, job, image, mask)
    return await _answer(request, images, body)


def _edit_images(upload: web.FileField, mask_upload: Any, max_pixels: int) -> tuple[Any, Any]:
    """The image to edit, in RGB, and the mask as diffusers takes it (or None)."""
    image = _open_image(upload.file.read(), "image", max_pixels).convert("RGB")
    mask = None
    if mask_upload is not None and not isinstance(mask_upload, str):
        raw = _open_image(mask_upload.file.read(), "mask", max_pixels)
        if raw.size != image.size:
            raise bad_request(
                f"Invalid 'mask': its size {raw.size[0]}x{raw.size[1]} differs from the image's "
                f"{image.size[0]}x{image.size[1]}.",
                param="mask",
            )
        if "A" not in raw.getbands():
            raise bad_request("Invalid 'mask': it needs an alpha channel (transparent where to edit).", param="mask")
        # OpenAI: transparent pixels are edited. diffusers: white pixels are repainted.
        mask = raw.getchannel("A").point(lambda alpha: 255 - alpha)
    return image, mask


async def image_file(request: web.Request) -> web.Response:
    found = request.app[FILES].files.get(request.match_info["name"])
    if found is None or found.expires < time.time() or found.owner != principal(request).key_id:
        raise APIError(404, "This image link does not exist or has expired.", code="not_found")
    return web.Response(body=found.data, content_type=found.content_type)


def add_routes(app: web.Application) -> None:
    app[FILES] = ImageFiles()
    made = Operation(
        "POST",
        "/v1/images/generations",
        "Images from a prompt",
        "openai",
        GenerationBody,
        response=Images,
        also=(STREAM,),
    )
    operation(app, model_route(Category.image, "image generation")(generations), made)
    edited = Operation(
        "POST",
        "/v1/images/edits",
        "An image edited (with a mask: inpainted)",
        "openai",
        EditFields,
        files=("image",),
        optional_files=("mask",),
        response=Images,
        also=(STREAM,),
    )
    operation(app, model_route(Category.image, "image edits")(edits), edited)
    behind = Operation(
        "GET", "/v1/images/files/{name}", "An image behind a `url` answer", "openai", also=("image/png", "image/jpeg")
    )
    operation(app, image_file, behind)
