"""Null-text inversion (Mokady et al. 2023) as a workflow: pivots from an inversion, then one null embedding per
sampler step (``nrinv.core.nulltext``), as an ``InversionResult`` the stock pipeline regenerates through
``result.pipeline_kwargs()``."""
from __future__ import annotations

import time
from typing import Any, Optional

import torch
from torch import Tensor

from ..core.inversion import InversionResult, invert_tensor, prepare
from ..core.nulltext import NullTextOptions, null_text_steps
from ..core.methods import DDIM_INVERSION, NULL_TEXT
from ..core.solvers import SolveResult, Status

__all__ = ["invert_null_text"]


def invert_null_text(pipe: Any, images: Tensor, prompt: str, *, guidance_scale: float,
                     num_inference_steps: Optional[int] = None, options: Optional[NullTextOptions] = None,
                     seed: int = 0) -> Any:
    """Null-text inversion of ``images`` ((1, 3, H, W) in [0, 1]) at ``guidance_scale``: an ``InversionResult``
    whose ``step_conds`` hold the per-step null embeddings (and ``corrections`` the latent corrections with
    ``exact``).  Each step's record holds the rms miss before and after its optimisation (relative to the image
    latent); with ``exact`` the correction makes up the rest, so the step is met (as edit-friendly inversion's)."""
    options = options or NullTextOptions()
    t0 = time.perf_counter()
    method = DDIM_INVERSION if options.pivot == "naive" else None
    base = invert_tensor(pipe, images, prompt, guidance_scale=guidance_scale if options.pivot == "guided" else 1.0,
                         num_inference_steps=num_inference_steps, seed=seed, method=method)
    setup = prepare(base.setup.adapter, prompt, size=base.setup.size,
                    num_inference_steps=base.setup.num_inference_steps, guidance_scale=guidance_scale, seed=seed)
    parts = null_text_steps(setup, base.trajectory, options)
    scale = base.encoded.float().pow(2).mean().sqrt().clamp_min(1e-12)
    steps = []
    for (before, after) in parts["losses"]:
        status = Status.CONVERGED if options.exact else Status.MAX_ITERATIONS
        steps.append(SolveResult(z=base.trajectory[0], status=status, iterations=options.inner_steps, nfe=0,
                                 residual_history=torch.tensor([before ** 0.5, after ** 0.5]) / scale))
    z = parts["trajectory"][0]
    settings = dict(base.settings, method=NULL_TEXT, options=options.to_dict(), guidance_scale=float(guidance_scale),
                    pivot_nfe=base.nfe)
    return InversionResult(
        scheduler_latents=z, latents=setup.adapter.to_pipeline_latents(z, setup.schedule.init_noise_sigma),
        encoded=base.encoded, trajectory=parts["trajectory"], steps=steps, noises=base.noises,
        nfe=base.nfe + parts["calls"], wall_time=time.perf_counter() - t0, encode_time=base.encode_time,
        settings=settings, setup=setup, corrections=parts["corrections"], step_conds=parts["conds"])
