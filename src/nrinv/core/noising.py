"""Forward noising: ``z`` put at one sampler step's noise level, as an img2img pipeline starting there does.

Diffusers' ``add_noise`` / ``scale_noise`` read the noise level of a sigma-indexed scheduler (Euler,
Euler-ancestral, Heun, DPM-Solver, UniPC, flow matching) from its index state, not from the timestep
given: once ``set_begin_index`` was called (img2img pipelines call it) every call uses that entry, so a
trajectory noised step by step would sit at one level.  :func:`add_noise` sets the index on a copy, so
the answer depends only on its arguments; the formulas stay the stock scheduler's own (``x + sigma eps``,
``sqrt(abar) x + sqrt(1 - abar) eps``, ``(1 - s) x + s eps``, ...).
"""
from __future__ import annotations

import copy
from typing import Any, Optional

from torch import Tensor

from ..errors import InputError

__all__ = ["add_noise"]


def _entry(scheduler: Any, timestep: Tensor) -> Optional[int]:
    """The first entry of ``scheduler.timesteps`` equal to ``timestep`` (None where there is none)."""
    timesteps = getattr(scheduler, "timesteps", None)
    if not isinstance(timesteps, Tensor):
        return None
    hits = (timesteps == timestep.to(timesteps.device).reshape(())).nonzero()
    return int(hits[0]) if len(hits) else None


def add_noise(scheduler: Any, z: Tensor, noise: Tensor, timestep: Tensor, index: Optional[int] = None) -> Tensor:
    """``z`` forward-noised with ``noise`` to entry ``index`` of ``scheduler.timesteps`` (default: the
    first entry at ``timestep``), float32.  ``scheduler`` has had ``set_timesteps`` called; it is not
    changed, whatever index state it holds."""
    t = timestep.reshape(1)
    index = _entry(scheduler, t) if index is None else int(index)
    sched = copy.copy(scheduler)  # the index state below is set on the copy only
    if hasattr(sched, "_begin_index"):
        # begin_index without step_index is how diffusers' img2img pipelines say "start at this entry";
        # None makes it look the timestep up (schedulers that index by timestep ignore both)
        sched._begin_index = index
        sched._step_index = None
    if hasattr(sched, "add_noise"):  # DDIM, DDPM, LCM, TCD, Euler, Euler-ancestral, DPM-Solver, UniPC, ...
        return sched.add_noise(z, noise, t).float()
    if hasattr(sched, "scale_noise"):  # flow matching: (1 - s) z + s noise
        return sched.scale_noise(z, t, noise).float()
    raise InputError(f"{type(scheduler).__name__} has no add_noise or scale_noise, so nrinv cannot noise a latent "
                     "to one of its steps; swap in a scheduler that has (e.g. DDIM, Euler, flow matching)")
