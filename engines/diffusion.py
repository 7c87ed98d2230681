"""Images with diffusers: text to image (`AutoPipelineForText2Image`), and edits, with a mask
(`AutoPipelineForInpainting`) or without (`AutoPipelineForImage2Image`), all sharing one set of
weights (`from_pipe`). CUDA in float16, Apple's Metal (mps), else the CPU in float32.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import torch
from diffusers import (
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    AutoPipelineForText2Image,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
)

from engines.base import ImageRequest, LoadSpec

log = logging.getLogger("gpustack.engines.diffusion")

SAMPLERS = {
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "ddim": DDIMScheduler,
    "dpm++": DPMSolverMultistepScheduler,
    "heun": HeunDiscreteScheduler,
    "lms": LMSDiscreteScheduler,
    "pndm": PNDMScheduler,
}


def preview_steps(steps: int, previews: int) -> list[int]:
    """The step indices after which to show partial images: `previews` of them spread evenly
    before the last step (which gives the final image), fewer when there are too few steps."""
    chosen = {round(steps * (i + 1) / (previews + 1)) - 1 for i in range(previews)}
    return sorted(s for s in chosen if 0 <= s < steps - 1)


def _device() -> tuple[str, torch.dtype]:
    if torch.cuda.is_available():
        return "cuda", torch.float16
    if torch.backends.mps.is_available():
        return "mps", torch.float16
    return "cpu", torch.float32


class DiffusionEngine:
    max_concurrency = 1
    samplers = sorted(SAMPLERS)

    def __init__(self, spec: LoadSpec):
        self.device, dtype = _device()
        self.text2img = AutoPipelineForText2Image.from_pretrained(str(spec.path), torch_dtype=dtype).to(self.device)
        self.text2img.set_progress_bar_config(disable=True)
        self._img2img: Any = None
        self._inpaint: Any = None
        self.multiple = max(8, int(self.text2img.vae_scale_factor))
        sample = self.text2img.unet.config.sample_size
        self.default_size = int(sample if isinstance(sample, int) else sample[0]) * int(self.text2img.vae_scale_factor)
        self.default_steps = int(spec.options.get("steps") or 25)
        self.default_guidance = float(spec.options.get("guidance_scale") or 7.5)
        log.info("loaded %s on %s (default %dx%d)", spec.name, self.device, self.default_size, self.default_size)

    def _pipeline(self, image: Any, mask: Any) -> Any:
        if image is None:
            return self.text2img
        if mask is not None:
            if self._inpaint is None:
                self._inpaint = AutoPipelineForInpainting.from_pipe(self.text2img)
                self._inpaint.set_progress_bar_config(disable=True)
            return self._inpaint
        if self._img2img is None:
            self._img2img = AutoPipelineForImage2Image.from_pipe(self.text2img)
            self._img2img.set_progress_bar_config(disable=True)
        return self._img2img

    def generate(
        self,
        request: ImageRequest,
        cancel: threading.Event,
        on_step: Callable[[int, int], None] | None = None,
        image: Any = None,
        mask: Any = None,
        on_preview: Callable[[int, list[Any]], None] | None = None,
    ) -> list[Any]:
        pipe = self._pipeline(image, mask)
        if request.sampler:
            pipe.scheduler = SAMPLERS[request.sampler].from_config(pipe.scheduler.config)
        steps = request.steps or self.default_steps
        preview_at = preview_steps(steps, request.previews) if on_preview else []

        def step_end(pipeline: Any, step: int, _timestep: Any, tensors: dict) -> dict:
            if on_step:
                on_step(step + 1, steps)
            if step in preview_at:
                on_preview(preview_at.index(step), self._decode(pipeline, tensors["latents"]))
            if cancel.is_set():
                pipeline._interrupt = True  # diffusers stops at the end of this step
            return tensors

        generator = torch.Generator("cpu").manual_seed(request.seed) if request.seed is not None else None
        arguments: dict[str, Any] = {
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt,
            "num_images_per_prompt": request.n,
            "num_inference_steps": steps,
            "guidance_scale": self.default_guidance if request.guidance is None else request.guidance,
            "generator": generator,
            "callback_on_step_end": step_end,
        }
        if image is None or mask is not None:
            arguments.update(width=request.width, height=request.height)
        if image is not None:
            arguments["image"] = image.resize((request.width, request.height))
            if mask is None:
                arguments["strength"] = request.strength
            else:
                arguments["mask_image"] = mask.resize((request.width, request.height))
        with torch.inference_mode():
            return list(pipe(**arguments).images)

    @staticmethod
    def _decode(pipeline: Any, latents: torch.Tensor) -> list[Any]:
        """The images the latents of an unfinished run show (the VAE decode the pipeline ends with)."""
        scale = pipeline.vae.config.scaling_factor
        decoded = pipeline.vae.decode(latents.to(pipeline.vae.dtype) / scale, return_dict=False)[0]
        return pipeline.image_processor.postprocess(decoded, output_type="pil")

    def count_tokens(self, text: str) -> int:
        return len(self.text2img.tokenizer(text, truncation=False).input_ids)

    def close(self) -> None:
        del self.text2img, self._img2img, self._inpaint
        if self.device == "cuda":
            torch.cuda.empty_cache()


def load(spec: LoadSpec) -> DiffusionEngine:
    return DiffusionEngine(spec)
