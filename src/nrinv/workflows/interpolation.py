"""Interpolation between two images through their inverted noises."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from .._version import __version__
from ..core.adapters import adapter_for, require_images
from ..core.inversion import (InversionOptions, InversionResult, StepCallback, check_guidance, inversion_parameters,
                              invert_tensor, sample,
                              solver_options)
from ..errors import InputError
from ..io.images import DEFAULT_MAX_PIXELS, ImageLike, load_image, load_pixels
from ..io.outputs import check_output_type, format_images
from .common import (DEFAULT_ENCODE_ADJUST, Prompts, check_adjust, check_count, check_steps, encode_pixels,
                     edit_defaults, prompt_list, slerp)
from .encoding import adjust_encoding

__all__ = ["InterpolationResult", "interpolate", "interpolation_weights"]


@dataclass
class InterpolationResult:
    images: list[Any]                   # one per frame, as ``output_type`` asked; image A first, image B last
    latents: list[Tensor]               # final latents per frame
    weights: list[float]
    inversions: tuple[InversionResult, InversionResult]
    settings: dict[str, Any]
    timings: dict[str, float]

    def stats(self) -> dict[str, Any]:
        return {"version": __version__, "kind": "interpolate", "settings": dict(self.settings),
                "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
                "inversions": [inv.stats() for inv in self.inversions]}


def _sample_mixed(setup, z: Tensor, cond_a, cond_b, weight: float, callback: Optional[StepCallback] = None,
                  nfe: int = 0) -> Tensor:
    """Sample with the model output ``(1 - weight) m(z, a) + weight m(z, b)`` at every step (two calls a step;
    ``callback`` after each, counting network calls from ``nfe``)."""
    z = z.to(device=setup.schedule.device, dtype=torch.float32)
    with torch.no_grad():
        for i, step in enumerate(setup.schedule.steps):
            out = torch.lerp(setup.denoiser(step, cond_a)(z).float(), setup.denoiser(step, cond_b)(z).float(), weight)
            z = step.apply(z, out)
            nfe += 2
            if callback is not None:
                callback({"phase": "sample", "i": i, "t": step.t, "timestep": step.timestep, "x": z,
                          "residual": None, "nfe": nfe})
    return z


def interpolation_weights(n: int) -> list[float]:
    return [0.5] if n == 1 else [i / (n - 1) for i in range(n)]


@inversion_parameters
def interpolate(
    pipe: Any,
    image_a: ImageLike,
    image_b: ImageLike,
    prompts: Prompts,
    *,
    n: int = 5,
    encode_adjust: Optional[float] = DEFAULT_ENCODE_ADJUST,
    inversion: InversionOptions,
    resize: bool = False,
    max_pixels: Optional[int] = None,
    output_type: str = "pil",
    progress: bool = False,
    path_guidance: Optional[float] = None,
    mix: str = "predictions",
    callback: Optional[StepCallback] = None,
) -> InterpolationResult:
    """Invert both images, slerp their noises ``z_0``, mix the prompts, regenerate ``n`` frames.

    ``prompts`` is one prompt for both images or ``(prompt_a, prompt_b)``.  A middle frame at weight
    ``w`` is sampled with the model output ``(1 - w) m(z, a) + w m(z, b)`` (``mix="predictions"``; the
    earlier ``"embeddings"`` lerps the prompt embeddings, which the model reads as a third scene: blue
    and white make purple) at a guidance rising from the inversion's at the endpoints to
    ``path_guidance`` halfway (default: the model's edit guidance).  Measured on drawn images and
    renders (``benchmarks/own_images.py interp``), both raise the share of middle frames judged a clean
    scene made of the two images' attributes.  Both inversions share
    steps, guidance and seed (so the recorded noise list), and the frames are sampled with that
    schedule: the first and last frames are the two reconstructions.  ``n == 1`` gives the midpoint.
    Images of different sizes raise ``InputError`` unless ``resize`` (B is resized to A's size).
    The inversions' parameters: :class:`~nrinv.InversionOptions` (the frames are sampled at its
    ``guidance_scale``).  ``callback`` (``StepCallback``) after every step of both inversions and every frame,
    its ``"nfe"`` counting the network calls of the whole call (the app's deadline reads it).
    """
    check_output_type(output_type)
    plist = prompt_list(prompts, "prompt")
    if len(plist) > 2:
        raise InputError(f"give one or two prompts, got {len(plist)}")
    prompt_a, prompt_b = plist[0], plist[-1]
    n = check_count(n, "n")
    if mix not in ("predictions", "embeddings"):
        raise InputError(f"mix must be 'predictions' or 'embeddings', got {mix!r}")
    if path_guidance is not None:
        path_guidance = check_guidance(path_guidance, "path_guidance")
    check_steps(inversion.num_inference_steps)
    encode_adjust = check_adjust(encode_adjust)
    adapter = adapter_for(pipe)
    require_images(adapter, "interpolate")
    method, _ = solver_options(adapter, inversion)  # bad solver arguments fail before any work

    timings: dict[str, float] = {}
    t_total = time.perf_counter()
    notes: list[str] = []
    t0 = time.perf_counter()
    pix_a = load_pixels(image_a, max_pixels=max_pixels, notes=notes)
    size = (int(pix_a.shape[-2]), int(pix_a.shape[-1]))
    probe = load_image(image_b, max_pixels=max_pixels or DEFAULT_MAX_PIXELS, notes=notes)
    if (probe.height, probe.width) != size and not resize:
        raise InputError(f"the images have different sizes ({size[0]}x{size[1]} and {probe.height}x{probe.width}, "
                         "HxW); "
                         "resize one to match, or pass --resize (resize=True) to resize the second to the first")
    pix_b = load_pixels(probe, size=size, max_pixels=max_pixels, notes=notes if resize else [])
    encoded_a, _ = encode_pixels(adapter, pix_a)
    encoded_b, _ = encode_pixels(adapter, pix_b)
    timings["encode"] = time.perf_counter() - t0

    inversions = []
    t0 = time.perf_counter()
    for encoded, prompt in ((encoded_a, prompt_a), (encoded_b, prompt_b)):
        if encode_adjust is not None:
            encoded = adjust_encoding(adapter, encoded, prompt, strength=encode_adjust, height=size[0], width=size[1],
                                      inversion=inversion)
        done = sum(inv.nfe for inv in inversions)
        count = None if callback is None else (lambda info, done=done: callback(dict(info, nfe=done + info["nfe"])))
        inversions.append(invert_tensor(adapter, None, prompt, image_latents=encoded, height=size[0], width=size[1],
                                        inversion=inversion, progress=progress, callback=count))
    timings["invert"] = time.perf_counter() - t0
    inv_a, inv_b = inversions
    setup = inv_a.setup
    cond_a, cond_b = inv_a.setup.cond, inv_b.setup.cond

    weights = interpolation_weights(n)
    latents: list[Tensor] = []
    nfe = inv_a.nfe + inv_b.nfe
    t0 = time.perf_counter()
    path_g = float(edit_defaults(adapter)["edit_guidance_scale"] if path_guidance is None else path_guidance)
    for w in weights:
        z0 = slerp(inv_a.scheduler_latents, inv_b.scheduler_latents, w)
        ca, cb = cond_a, cond_b
        if path_g != setup.guidance_scale and 0 < w < 1:
            g = setup.guidance_scale + (path_g - setup.guidance_scale) * 4 * w * (1 - w)  # endpoints: exact
            ca = adapter.conditioning(prompt_a, None, g, size)
            cb = adapter.conditioning(prompt_b, None, g, size)
        if w in (0, 1) or mix == "embeddings":
            cond = ca if w == 0 else cb if w == 1 else ca.lerp(cb, w)
            latents.append(sample(setup, z0, cond=cond, progress=progress, callback=callback, nfe=nfe))
            nfe += len(setup.schedule)
        else:
            latents.append(_sample_mixed(setup, z0, ca, cb, w, callback, nfe))
            nfe += 2 * len(setup.schedule)
    with torch.no_grad():
        images = format_images(latents, lambda z: adapter.decode(z, size), output_type)
    timings["regenerate"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_total

    settings = {
        "method": method, "prompt_a": prompt_a, "prompt_b": prompt_b, "n": n, "weights": weights,
        "num_inference_steps": setup.num_inference_steps, "guidance_scale": setup.guidance_scale,
        "seed": inv_a.settings["seed"], "encode_adjust": encode_adjust, "height": size[0], "width": size[1],
        "output_type": output_type, "notes": notes, "mix": mix, "path_guidance": path_g,
    }
    return InterpolationResult(images, latents, weights, (inv_a, inv_b), settings, timings)
