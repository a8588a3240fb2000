"""Per-step null-text embeddings: null-text inversion (Mokady et al., CVPR 2023) and its exact form
(the driver that makes the pivots and returns an ``InversionResult``: ``nrinv.workflows.nulltext``).

Under classifier-free guidance the guided output is ``m_w = m(z, null_i) + w (m(z, c) - m(z, null_i))``.
Null-text inversion keeps the noise of a guidance-1 inversion (the *pivots* ``z*_0 .. z*_N``, ``z*_N`` the
encoded image) and gives each sampler step its own unconditional embedding ``null_i``, optimised by a few
Adam steps so that the guided step from the current latent lands on the next pivot:

    null_i = argmin ||step_i(zbar_i, m_w(zbar_i; null_i)) - z*_{i+1}||^2,   zbar_{i+1} = step_i(zbar_i, ...)

starting from ``null_{i-1}`` (the empty prompt's embedding at the first step).  ``pivot="naive"`` takes the
pivots from DDIM inversion at guidance 1 (the paper's); ``"solved"`` from the model's default solver at
guidance 1 (a root-solved trajectory: the pivots then regenerate the image at guidance 1 exactly); ``"guided"``
from the model's default solver at the target guidance.

``exact=True`` adds, after each step, the correction ``d_i = z*_{i+1} - zbar_{i+1}`` (what the embedding could not
absorb) and continues from the pivot, so the regeneration ends exactly at the encoded image, as edit-friendly
inversion's corrections do (``core/edit_friendly.py``).  The stock pipeline regenerates it through
``result.pipeline_kwargs()``: ``negative_prompt_embeds`` for the first step and a ``callback_on_step_end`` that
sets the next step's null embedding in ``prompt_embeds`` (the pipeline's ``[null, prompt]`` pair) and adds
``d_i`` to the latents.

Negative-prompt inversion (Miyake et al. 2023) is the special case ``null_i = c`` with no optimisation: the
guided output is then the conditional one at every ``w``; it needs no module (``negative_prompt=prompt``).

``pivot="naive"`` is the paper's DDIM inversion at guidance 1.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from . import edit_friendly
from .method_options import PIVOTS, NullTextOptions  # noqa: F401 (re-exported)

__all__ = ["NullTextOptions", "PIVOTS", "null_text_steps", "step_callback", "pipeline_extras"]




def _with_null(cond: Any, null: dict[str, Tensor]) -> Any:
    return dataclasses.replace(cond, uncond=dict(null))


def null_text_steps(setup: Any, pivots: list[Tensor], options: NullTextOptions) -> dict[str, Any]:
    """Optimise one null embedding per sampler step of ``setup`` (guided) against ``pivots`` (z*_0 .. z*_N).

    Returns the per-step conditionings, the corrections (None without ``exact``), the trajectory the
    regeneration follows, the per-step losses before/after and the network calls (forward passes of the
    guided pair; an Adam step is one guided forward and its backward)."""
    steps = setup.schedule.steps
    prompt_null = {k: v.detach().clone() for k, v in setup.cond.uncond.items()}
    null = prompt_null
    scale = float(pivots[-1].float().pow(2).mean().sqrt().clamp_min(1e-12))
    z = pivots[0].float()
    conds, corrections, trajectory, losses = [], [], [z], []
    calls = 0
    for i, step in enumerate(steps):
        target = pivots[i + 1].float()
        first = None
        inner = options.inner_steps
        if options.threshold > 0:  # the prompt's own null embedding first: optimise only where it misses
            with torch.no_grad():
                miss = step.apply(z, setup.denoiser(step, setup.cond)(z)) - target
            calls += 1
            first = float(miss.pow(2).mean())
            if first ** 0.5 <= options.threshold * scale:
                inner, null = 0, prompt_null
        params = {k: v.detach().clone().requires_grad_(True) for k, v in null.items()}
        opt = torch.optim.Adam(list(params.values()), lr=options.learning_rate)
        for _ in range(inner):
            with torch.enable_grad():
                out = step.apply(z, setup.denoiser(step, _with_null(setup.cond, params))(z))
                loss = (out - target).pow(2).mean()
                calls += 1
                value = float(loss.detach())
                first = value if first is None else first
                if value < options.tolerance:
                    break
                opt.zero_grad()
                loss.backward()
            opt.step()
        null = {k: v.detach() for k, v in params.items()}
        cond = _with_null(setup.cond, null)
        with torch.no_grad():
            z_next = step.apply(z, setup.denoiser(step, cond)(z))
        calls += 1
        last = float((z_next - target).pow(2).mean())
        losses.append((first if first is not None else last, last))
        conds.append(cond)
        if options.exact:
            corrections.append(target - z_next)
            z = target
        else:
            z = z_next
        trajectory.append(z)
    return {"conds": conds, "corrections": corrections if options.exact else None, "trajectory": trajectory,
            "losses": losses, "calls": calls}


def step_callback(conds: list[Any], corrections: Optional[list[Optional[Tensor]]], key: str = "encoder_hidden_states"
                  ) -> Callable:
    """A diffusers ``callback_on_step_end``: after step ``i`` add correction ``i`` to ``latents``
    (``edit_friendly.step_callback``'s) and put step ``i + 1``'s null embedding into ``prompt_embeds``
    (``[null, prompt]`` under guidance)."""
    last = len(conds) - 1
    add = None if corrections is None else edit_friendly.step_callback(corrections)

    def callback(pipe: Any, i: int, t: Any, kwargs: dict) -> dict:
        out = {} if add is None else dict(add(pipe, i, t, kwargs))
        if i < last:
            embeds = kwargs["prompt_embeds"]
            null = conds[i + 1].uncond[key].to(device=embeds.device, dtype=embeds.dtype)
            out["prompt_embeds"] = torch.cat([null, embeds.chunk(2)[1]])
        return out
    return callback


def pipeline_extras(result: Any) -> dict[str, Any]:
    """What the stock pipeline takes besides the plain regeneration's arguments (``result.pipeline_kwargs()``)
    to regenerate a null-text inversion: the first step's null embedding, and the callback that puts in the
    next ones (and adds the corrections)."""
    conds = result.step_conds
    return {"negative_prompt_embeds": conds[0].uncond["encoder_hidden_states"],
            "callback_on_step_end": step_callback(conds, result.corrections),
            "callback_on_step_end_tensor_inputs": ["latents", "prompt_embeds"]}
