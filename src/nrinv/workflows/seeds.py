"""Rare-concept seeds: generate from the normalised centroid of a few inverted noises."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor

from .._version import __version__
from ..core.adapters import adapter_for, require_images
from ..core.inversion import (InversionOptions, InversionResult, Setup, check_guidance, inversion_parameters,
                              invert_tensor, prepare, sample, solver_options)
from ..core.defaults import DEFAULT_SEED_SPREAD
from ..core.schedulers import seeded_generator
from ..errors import InputError
from ..io.images import ImageLike, load_pixels, resolve_size
from ..io.outputs import check_output_type, format_images
from .common import (_NOISE_SEED_OFFSET, check_count, check_prompt, check_spread, check_steps,
                     edit_defaults, encode_pixels, helper_generator, noise_like, slerp)

__all__ = ["SeedResult", "seed_from_images", "typical_noise_norm"]


@dataclass
class SeedResult:
    images: list[Any]                   # as ``output_type`` asked; the first is generated from the centroid itself
    noises: list[Tensor]                # starting noises z_0 (scheduler units)
    centroid: Tensor                    # the normalised centroid of the inverted noises
    inversions: list[InversionResult]
    settings: dict[str, Any]
    timings: dict[str, float]

    def stats(self) -> dict[str, Any]:
        return {"version": __version__, "kind": "seed", "settings": dict(self.settings),
                "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
                "inversions": [inv.stats() for inv in self.inversions]}


#: spread="auto": the samples' target variety (mean absolute pixel difference between pairs, of 255) is the
#: examples' own, kept within these bounds; the spreads tried, in order
AUTO_VARIETY = (4.0, 8.0)
AUTO_SPREADS = (0.3, 0.5, 0.7, 0.9)


def _variety(images: Tensor) -> float:
    """Mean absolute difference (of 255) between pairs of (B, 3, H, W) images in [0, 1]."""
    n = images.shape[0]
    if n < 2:
        return 0.0
    diffs = [(images[i] - images[j]).abs().mean() for i in range(n) for j in range(i + 1, n)]
    return float(torch.stack(diffs).mean()) * 255


def typical_noise_norm(setup: Setup) -> float:
    """Expected norm of the sampler's starting noise: ``init_noise_sigma * sqrt(D)``."""
    shape = setup.adapter.latent_shape(*setup.size)
    return float(setup.schedule.init_noise_sigma) * math.sqrt(math.prod(shape))


@inversion_parameters
def seed_from_images(
    pipe: Any,
    images: Sequence[ImageLike],
    prompt: str,
    *,
    n_samples: int = 4,
    spread: Union[float, str] = DEFAULT_SEED_SPREAD,
    sample_guidance_scale: Optional[float] = None,
    inversion: InversionOptions,
    height: Optional[int] = None,
    width: Optional[int] = None,
    max_pixels: Optional[int] = None,
    output_type: str = "pil",
    progress: bool = False,
) -> SeedResult:
    """Generate ``n_samples`` images of a rare concept from a few example ``images``.

    The examples are inverted with ``prompt`` (the inversion's parameters, ``guidance_scale``
    included: :class:`~nrinv.InversionOptions`); the centroid of their noises is rescaled to the
    typical noise norm.  Sample 0 starts from the centroid itself, sample i >= 1 from
    ``slerp(centroid, fresh noise, spread)``; all are generated with ``prompt`` at
    ``sample_guidance_scale`` (default: ``edit_defaults(pipe)``'s edit guidance).  Examples of different sizes
    are resized to the first's size (or to ``height`` x ``width``).

    ``spread="auto"`` (the default) chooses it from the examples: the samples should differ from each
    other about as much as the examples do (mean absolute pixel difference between pairs), kept within
    ``AUTO_VARIETY`` (of 255): starting at ``AUTO_SPREADS[0]``, the spread is raised until the samples'
    variety reaches that target (or the last of ``AUTO_SPREADS``), so alike examples do not give near
    copies and varied ones do not give samples off the concept.  Each raise re-generates the samples.
    """
    check_output_type(output_type)
    size = resolve_size(height, width)
    check_prompt(prompt, "prompt")
    images = list(images)
    if not images:
        raise InputError("give at least one example image")
    n_samples = check_count(n_samples, "n_samples")
    auto = isinstance(spread, str) and spread == "auto"
    spread = AUTO_SPREADS[0] if auto else check_spread(spread)
    check_steps(inversion.num_inference_steps)
    adapter = adapter_for(pipe)
    require_images(adapter, "seed_from_images")
    method, _ = solver_options(adapter, inversion)  # bad solver arguments fail before any work
    guidance = check_guidance(edit_defaults(adapter)["edit_guidance_scale"] if sample_guidance_scale is None
                              else sample_guidance_scale, "sample_guidance_scale")

    timings: dict[str, float] = {}
    t_total = time.perf_counter()
    notes: list[str] = []
    t0 = time.perf_counter()
    encoded = []
    for img in images:
        pixels = load_pixels(img, size=size, max_pixels=max_pixels, notes=notes)
        size = size or (int(pixels.shape[-2]), int(pixels.shape[-1]))
        encoded.append(encode_pixels(adapter, pixels)[0])
    timings["encode"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    inversions = [invert_tensor(adapter, None, prompt, image_latents=z, height=size[0], width=size[1],
                                inversion=inversion, progress=progress)
                  for z in encoded]
    timings["invert"] = time.perf_counter() - t0

    setup = inversions[0].setup
    norm = typical_noise_norm(setup)
    mean = torch.stack([inv.scheduler_latents for inv in inversions]).mean(0)
    centroid = mean * (norm / float(mean.norm()))
    cond = adapter.conditioning(prompt, inversion.negative_prompt, guidance, setup.size)
    gen = helper_generator(inversion.seed, inversion.generator)
    fresh = []
    for _ in range(1, n_samples):
        f = noise_like(centroid, gen)
        fresh.append(f * (norm / float(f.norm())))

    t0 = time.perf_counter()
    first = sample(setup, centroid, cond=cond, progress=progress)
    target = None
    if auto and n_samples > 2:
        with torch.no_grad():
            own = torch.cat([adapter.decode(z, setup.size) for z in encoded])
        lo, hi = AUTO_VARIETY
        target = min(hi, max(lo, _variety(own)))
    tried = []
    setups = [setup] * len(fresh)
    if auto:  # a sampler that draws noise at every step (LCM, ancestral) draws its own for each sample
        base = inversions[0].settings["seed"]
        base = (0 if base is None else int(base)) + _NOISE_SEED_OFFSET
        setups = [prepare(adapter, prompt, size=setup.size, num_inference_steps=setup.num_inference_steps,
                          guidance_scale=setup.guidance_scale, seed=base + i,
                          generator=None if inversion.generator is None else seeded_generator(
                              inversion.generator.initial_seed() + base + i, inversion.generator.device))
                  for i in range(1, n_samples)]
    for s in (AUTO_SPREADS if target is not None else (spread,)):
        noises = [centroid] + [slerp(centroid, f, s) for f in fresh]
        latents = [first] + [sample(st, z0, cond=cond, progress=progress) for st, z0 in zip(setups, noises[1:])]
        if target is None:
            break
        with torch.no_grad():
            variety = _variety(torch.cat([adapter.decode(z, setup.size) for z in latents[1:]]))
        tried.append((round(s, 3), round(variety, 3)))
        spread = s
        if variety >= target:
            break
    with torch.no_grad():
        out_images = format_images(latents, lambda z: adapter.decode(z, setup.size), output_type)
    timings["generate"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_total

    settings = {
        "method": method, "prompt": prompt, "n_examples": len(images), "n_samples": n_samples, "spread": spread,
        "num_inference_steps": setup.num_inference_steps, "sample_guidance_scale": guidance,
        "guidance_scale": setup.guidance_scale, "seed": inversions[0].settings["seed"], "height": size[0],
        "spread_auto": auto, "variety_target": target, "spreads_tried": tried,
        "width": size[1], "centroid_norm": float(centroid.norm()), "output_type": output_type, "notes": notes,
    }
    return SeedResult(out_images, noises, centroid, inversions, settings, timings)
