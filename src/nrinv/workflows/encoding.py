"""RNRI's prompt-aware encoding adjustment of the encoded image latent, before inverting."""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor

from ..core.adapters import adapter_for
from ..core.inversion import InversionOptions, inversion_parameters, prepare, sample
from ..core.noising import add_noise
from .common import check_prompt, check_steps, check_strength, helper_generator, noise_like

__all__ = ["adjust_encoding"]


@inversion_parameters
def adjust_encoding(
    pipe: Any,
    encoded: Tensor,
    prompt: str,
    *,
    strength: float = 0.05,
    height: Optional[int] = None,
    width: Optional[int] = None,
    inversion: InversionOptions,
) -> Tensor:
    """A short, low-strength img2img pass on ``z_N`` with the source prompt (RNRI, Samuel et al.).

    The encoded latent is forward-noised (with seeded noise) to the timestep ``strength`` of the way
    into the schedule and denoised back with the source prompt.  The schedule is refined to at
    least ``ceil(1 / strength)`` steps so that at least one step is re-run.  Returns the adjusted
    latent, same layout as ``encoded``; pass it on as ``nrinv.invert(pipe, image_latents=...)``.
    The inversion's parameters (``InversionOptions``, flat or as ``inversion=``) are the inversion's that
    follows: its steps, guidance, negative prompt, seed / generator; its solver settings play no part (the
    pass samples, it solves nothing).
    """
    strength = check_strength(strength, "encode_adjust")
    check_prompt(prompt, "prompt")
    adapter = adapter_for(pipe)
    size = (int(height), int(width)) if height and width else adapter.default_size()
    seed, generator = inversion.seed, inversion.generator
    steps = check_steps(inversion.num_inference_steps) or adapter.defaults.num_inference_steps
    steps = max(steps, math.ceil(1.0 / strength - 1e-9))
    start = steps - max(1, round(strength * steps))
    setup = prepare(adapter, prompt, size=size, num_inference_steps=steps, guidance_scale=inversion.guidance_scale,
                    seed=seed, negative_prompt=inversion.negative_prompt, generator=generator)
    scheduler = adapter.prepare_scheduler(steps, *size)
    z = encoded.to(device=setup.schedule.device, dtype=torch.float32)
    z = add_noise(scheduler, z, noise_like(z, helper_generator(seed, generator)), scheduler.timesteps[start])
    return sample(setup, z, start=start)
