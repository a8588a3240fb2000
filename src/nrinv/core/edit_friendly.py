"""Edit-friendly inversion: solve each step's noise instead of recording it (``method="edit_friendly"``).

For a sampler that draws noise in every step (LCM, Euler-ancestral, DDPM / SDE samplers) the step is
``z_{i+1} = A_i z_i + B_i m_i(z_i) + c_i n_i`` with ``n_i`` the drawn noise (``schedulers.py``).  Given any
trajectory ``z_0 .. z_N`` ending at the encoded image, the noise that makes the stock step land exactly
on it is ``n_i' = n_i + d_i / c_i`` with the correction ``d_i = z_{i+1} - (A_i z_i + B_i m_i(z_i) + c_i n_i)``:
one network call per step and no implicit equation, so the regeneration is exact by construction at
NFE = steps (Huberman-Spiegelglas et al., "An Edit Friendly DDPM Noise Space", CVPR 2024; TurboEdit,
Deutch et al. 2024, for few-step models).  A step that draws no noise (the last step of LCM and
Euler-ancestral, every DDIM step) keeps its correction ``d_i`` as an additive term.

Trajectories (``options={"trajectory": ...}``):

* ``"forward"`` (default): ``z_i = add_noise(z_N, eps_i, t_i)`` with independent ``eps_i`` (the
  edit-friendly DDPM construction): N network calls in all;
* ``"solved"``: the trajectory of the model's default deterministic inversion (its NFE plus N); the
  corrections are then its residuals, so the regeneration becomes exact at any solver budget.

The stock pipeline regenerates the result through ``callback_on_step_end``: after the stock step ``i``
(with the generator's own draw) the callback adds ``d_i`` to the latents, and on the last step also to
LCM's ``denoised`` (the latent it decodes).  ``result.pipeline_kwargs()`` gives everything to pass::

    out = pipe(prompt, **result.pipeline_kwargs())            # regenerates the image
    edit = pipe(target_prompt, **result.pipeline_kwargs())    # TurboEdit-style edit: same noises

Editing re-runs the sampler from the inverted trajectory with the target prompt and the same solved
noises (``nrinv.edit(..., method="edit_friendly")``).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from ..errors import InputError
from .noising import add_noise
from .method_options import EditFriendlyOptions
from .schedulers import seeded_generator

__all__ = ["EditFriendlyOptions", "edit_friendly_steps", "step_callback", "pipeline_extras"]





def _noise_coefficient(step: Any, noise: Optional[Tensor]) -> float:
    """``c`` with ``C = c * noise`` (0 where the step draws no noise)."""
    if noise is None or step.C is None:
        return 0.0
    return float((step.C * noise).sum() / (noise * noise).sum().clamp_min(1e-30))


def forward_trajectory(setup: Any, encoded: Tensor, seed: int) -> list[Tensor]:
    """``z_i = add_noise(z_N, eps_i, t_i)`` for i < N (independent ``eps_i`` of ``seed``), ``z_N = encoded``."""
    adapter = setup.adapter
    scheduler = adapter.prepare_scheduler(setup.num_inference_steps, *setup.size)
    gen = seeded_generator(seed)
    out = []
    for step in setup.schedule.steps:
        eps = torch.randn(encoded.shape, generator=gen, dtype=torch.float32).to(encoded.device)
        try:  # each z_i at step i's own noise level (the step's entry, not the scheduler's index state)
            out.append(add_noise(scheduler, encoded, eps, step.timestep.to(encoded.device), index=step.index))
        except InputError as exc:
            raise InputError(f"{exc}; or pass options trajectory='solved'") from None
    return out + [encoded]


def edit_friendly_steps(setup: Any, trajectory: list[Tensor]) -> tuple[list[Optional[Tensor]], list[Optional[Tensor]],
                                                                          int]:
    """Per sampler step: the correction ``d_i`` (added to the stock step's output) and the solved noise
    ``n_i'`` (None where the step draws none); and the network calls made (one per step)."""
    corrections: list[Optional[Tensor]] = []
    noises: list[Optional[Tensor]] = []
    with torch.no_grad():
        for i, step in enumerate(setup.schedule.steps):
            z = trajectory[i].float()
            stock = step.apply(z, setup.denoiser(step)(z))
            d = trajectory[i + 1].float() - stock
            corrections.append(d)
            recorded = setup.schedule.noises[i] if i < len(setup.schedule.noises) else None
            c = _noise_coefficient(step, recorded)
            noises.append(None if c == 0 else recorded + d / c)
    return corrections, noises, len(setup.schedule.steps)


def edit_sample(setup: Any, trajectory: list[Tensor], corrections: list[Optional[Tensor]], start: int, cond: Any,
                pseudo_guidance: float = 1.0, mask: Optional[Tensor] = None) -> Tensor:
    """Steps ``start ..`` from ``trajectory[start]`` with conditioning ``cond`` and the inversion's corrections
    (the same solved noises).  ``pseudo_guidance`` ``w`` scales the departure from the source trajectory
    after every step, ``z_{i+1} = src_{i+1} + w (step(z_i) + d_i - src_{i+1})`` (1: the stock sampler);
    ``mask`` (0/1, latent resolution) keeps the source trajectory outside it."""
    z = trajectory[start].float()
    with torch.no_grad():
        for step in setup.schedule.steps[start:]:
            i = step.index
            out = step.apply(z, setup.denoiser(step, cond)(z))
            if corrections[i] is not None:
                out = out + corrections[i]
            src = trajectory[i + 1].float()
            if pseudo_guidance != 1.0:
                out = src + pseudo_guidance * (out - src)
            z = out if mask is None else mask * out + (1 - mask) * src
    return z


def step_callback(corrections: list[Optional[Tensor]], start: int = 0) -> Callable:
    """A diffusers ``callback_on_step_end`` adding correction ``start + i`` after the pipeline's step ``i``
    (to ``latents``, and on the last step to ``denoised`` where the pipeline decodes that)."""
    last = len(corrections) - 1

    def callback(pipe: Any, i: int, t: Any, kwargs: dict) -> dict:
        d = corrections[start + i]
        if d is None:
            return kwargs
        out = {}
        for key in ("latents", "denoised"):
            value = kwargs.get(key)
            if value is None or (key == "denoised" and start + i != last):
                continue
            out[key] = value + d.to(device=value.device, dtype=value.dtype)
        return out
    return callback


def pipeline_extras(result: Any) -> dict[str, Any]:
    """What the stock pipeline takes besides the plain regeneration's arguments (``result.pipeline_kwargs()``)
    to regenerate an edit-friendly ``result``: the ``callback_on_step_end`` that adds its corrections."""
    if result.corrections is None:
        raise InputError("this inversion has no per-step corrections; pass latents=result.latents instead")
    pipe = result.setup.adapter.pipe if result.setup is not None else None
    takes_denoised = pipe is not None and "denoised" in getattr(pipe, "_callback_tensor_inputs", ())
    return {"callback_on_step_end": step_callback(result.corrections),
            "callback_on_step_end_tensor_inputs": ["latents"] + (["denoised"] if takes_denoised else [])}


def invert_edit_friendly(setup: Any, encoded: Tensor, options: EditFriendlyOptions, seed: int,
                         solve: Callable[[], Any]) -> dict[str, Any]:
    """The pieces of an edit-friendly ``InversionResult``: trajectory, corrections, noises, calls, time.
    ``solve()`` runs the model's default deterministic inversion (for ``trajectory="solved"``)."""
    t0 = time.perf_counter()
    extra_nfe = 0
    if options.trajectory == "forward":
        seed_f = options.trajectory_seed if options.trajectory_seed is not None else (seed or 0) + 1
        trajectory = forward_trajectory(setup, encoded, seed_f)
    else:
        solved = solve()
        trajectory = solved.trajectory
        extra_nfe = solved.nfe
    corrections, noises, nfe = edit_friendly_steps(setup, trajectory)
    scale = float(encoded.float().pow(2).mean().sqrt().clamp_min(1e-12))
    return {"trajectory": trajectory, "corrections": corrections, "noises": noises, "nfe": nfe + extra_nfe,
            "wall_time": time.perf_counter() - t0,
            # the part no noise can absorb (steps that draw none), relative to the image latent
            "additive_correction": max((float(d.float().pow(2).mean().sqrt()) / scale
                                        for d, n in zip(corrections, noises) if n is None), default=0.0)}
