"""Inversion for people: images in any form (path, PIL, array, tensor), results shaped like diffusers'.

The engine (``nrinv.core``) takes and returns tensors; these entry points load and validate images
(``nrinv.io``) and format outputs (``output_type`` in ``pil`` | ``np`` | ``pt`` | ``latent``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from .core.adapters import adapter_for, require_images
from .core.inversion import (InversionOptions, InversionResult, StepCallback, inversion_parameters, invert_tensor,
                             invert_tensor_batch, reconstruct_latent)
from .errors import InputError
from .io.clips import load_frames
from .io.images import ImageLike, load_pixels, resolve_size
from .io.outputs import check_output_type, format_images

__all__ = ["invert", "invert_batch", "reconstruct", "ReconstructionOutput", "InversionOptions", "InversionResult"]


@inversion_parameters
def invert(
    pipe: Any,
    image: Optional[ImageLike] = None,
    prompt: str = "",
    *,
    height: Optional[int] = None,
    width: Optional[int] = None,
    image_latents: Optional[Tensor] = None,
    inversion: InversionOptions,
    max_pixels: Optional[int] = None,
    progress: bool = False,
    callback: Optional[StepCallback] = None,
) -> InversionResult:
    """Find the noise from which ``pipe`` regenerates ``image`` (a path, PIL image, array or tensor; for a
    video pipeline (Wan) a clip: a list of frames, a folder of frames, an animated GIF or an MP4).

    ``height``/``width`` resize the image first (or give the image size of ``image_latents``, an
    already encoded latent).  ``result.latents`` is what ``pipe(prompt, latents=..., generator=...)``
    takes to regenerate the image.  The inversion's parameters (``method``, ``num_inference_steps``,
    ``guidance_scale``, ...): :class:`~nrinv.InversionOptions`, as ``inversion=`` or flat keywords.
    ``callback(info)`` runs after each solved step, last step first, with the step index, timestep,
    latent, residual and network calls so far (:data:`nrinv.core.inversion.StepCallback`).
    """
    resized = resolve_size(height, width)
    notes: list[str] = []
    pixels = None
    if image_latents is None:
        if image is None:
            raise InputError("pass an image (or image_latents) to invert")
        video = bool(getattr(adapter_for(pipe), "video", False))
        pixels = load_frames(image, video=video, size=resized, max_pixels=max_pixels, notes=notes)
    h, w = resized if resized else (None, None)
    return invert_tensor(pipe, pixels, prompt, image_latents=image_latents, height=h, width=w, inversion=inversion,
                         progress=progress, callback=callback, notes=notes)


@inversion_parameters
def invert_batch(
    pipe: Any,
    images: Sequence[ImageLike],
    prompts: Sequence[str] | str,
    *,
    height: Optional[int] = None,
    width: Optional[int] = None,
    inversion: InversionOptions,
    max_pixels: Optional[int] = None,
    progress: bool = False,
    callback: Optional[StepCallback] = None,
) -> list[InversionResult]:
    """Invert several same-size images with one network call per evaluation (see
    :func:`nrinv.core.inversion.invert_tensor_batch`); ``height``/``width`` resize them all first."""
    require_images(adapter_for(pipe), "invert_batch")
    resized = resolve_size(height, width)
    images = list(images)
    if not images:
        raise InputError("give at least one image")
    notes: list[list[str]] = [[] for _ in images]
    pixels = [load_pixels(img, size=resized, max_pixels=max_pixels, notes=n) for img, n in zip(images, notes)]
    sizes = {tuple(p.shape[-2:]) for p in pixels}
    if len(sizes) != 1:
        raise InputError(f"a batch needs images of one size, got {sorted(sizes)}; pass height= and width= to resize")
    return invert_tensor_batch(pipe, torch.cat(pixels), prompts, inversion=inversion, progress=progress,
                               callback=callback, notes=notes)


@dataclass
class ReconstructionOutput:
    """``images``: one entry, as ``output_type`` asks; ``latents``: the regenerated image latent (1, ...)."""

    images: list[Any]
    latents: Tensor


def reconstruct(pipe: Any, result: InversionResult, *, output_type: str = "pil", progress: bool = False,
                callback: Optional[StepCallback] = None) -> ReconstructionOutput:
    """Regenerate the image from an inversion's noise with the same prompt, steps and noise.
    ``callback(info)`` runs after each sampler step (:data:`nrinv.core.inversion.StepCallback`)."""
    check_output_type(output_type)
    adapter = adapter_for(pipe)
    z = reconstruct_latent(adapter, result, progress=progress, callback=callback)
    size = (result.settings["height"], result.settings["width"])
    with torch.no_grad():
        images = format_images([z], lambda lat: adapter.decode(lat, size), output_type)
    return ReconstructionOutput(images=images, latents=z)
