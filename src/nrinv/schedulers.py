"""A diffusers scheduler's step, read off as an affine map per step.

For a fixed recorded noise, every supported sampler step is

    z_next = A_i z_i + B_i m_i + C_i,     m_i = model(s_i z_i, t_i)

with scalars ``A_i, B_i`` (the input scaling ``s_i`` is ``scale_model_input``) and a tensor ``C_i``
(zero for DDIM / Euler / flow, the ancestral or LCM noise term otherwise).  The coefficients are
measured by calling the stock scheduler's ``step`` on probe inputs with its state saved and
restored, so inversion follows the scheduler exactly rather than re-deriving its formulas.  The
noise is drawn exactly as the stock pipeline draws it from ``torch.Generator().manual_seed(seed)``
(one draw per step, in step order, inside ``scheduler.step``): we replay the sampler's calls on
dummy inputs and keep the generator state before each step.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor

__all__ = ["AffineStep", "Schedule", "affine_schedule", "SUPPORTED_SCHEDULERS", "UnsupportedSchedulerError"]

# scheduler class name -> guidance family of GNRI's G (see solvers.py)
SUPPORTED_SCHEDULERS = {
    "DDIMScheduler": "vp",
    "LCMScheduler": "vp",
    "EulerDiscreteScheduler": "sigma",
    "EulerAncestralDiscreteScheduler": "sigma",
    "FlowMatchEulerDiscreteScheduler": "flow",
}


class UnsupportedSchedulerError(ValueError):
    pass


@dataclass(frozen=True)
class AffineStep:
    """Sampler step ``index`` at timestep ``timestep``: ``z_next = A z + B model(input_scale z, t) + C``."""

    index: int
    timestep: Tensor
    A: float
    B: float
    C: Optional[Tensor]
    input_scale: float
    guidance_mean_scale: float  # GNRI: mu = guidance_mean_scale * z_next
    guidance_beta: float        # GNRI: G = ||z - mu|| / guidance_beta

    def apply(self, z: Tensor, model_output: Tensor) -> Tensor:
        out = self.A * z + self.B * model_output
        return out if self.C is None else out + self.C

    def fixed_point_map(self, z_next: Tensor, model_output: Tensor) -> Tensor:
        rhs = z_next - self.B * model_output
        if self.C is not None:
            rhs = rhs - self.C
        return rhs / self.A


@dataclass(frozen=True)
class Schedule:
    steps: list[AffineStep]
    noises: list[Optional[Tensor]] = field(default_factory=list)
    init_noise_sigma: float = 1.0
    scheduler_name: str = ""
    seed: Optional[int] = None

    def __len__(self) -> int:
        return len(self.steps)


def _scheduler_family(scheduler: Any) -> str:
    name = type(scheduler).__name__
    if name not in SUPPORTED_SCHEDULERS:
        raise UnsupportedSchedulerError(
            f"scheduler {name} is not supported; supported schedulers: {', '.join(SUPPORTED_SCHEDULERS)}. "
            "Swap it with e.g. `pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)`."
        )
    cfg = scheduler.config
    if getattr(cfg, "thresholding", False) or (name == "DDIMScheduler" and getattr(cfg, "clip_sample", False)):
        raise UnsupportedSchedulerError(
            f"{name} with clip_sample/thresholding is not an affine step and cannot be inverted exactly; "
            "set clip_sample=False, thresholding=False in its config"
        )
    return SUPPORTED_SCHEDULERS[name]


def _scale_input(scheduler: Any, z: Tensor, t: Tensor) -> Tensor:
    """``scale_model_input`` where the scheduler has one (flow-match schedulers do not)."""
    if hasattr(type(scheduler), "scale_model_input"):
        return scheduler.scale_model_input(z, t)
    return z


def _vp_alpha(scheduler: Any, t: Tensor) -> float:
    ac = scheduler.alphas_cumprod
    return float(ac[int(t)])


def affine_schedule(
    scheduler: Any,
    latent_shape: tuple[int, ...],
    *,
    seed: Optional[int] = None,
    step_kwargs: Optional[dict] = None,
    check: bool = True,
) -> Schedule:
    """Probe a scheduler whose ``set_timesteps`` was already called as its pipeline calls it.

    ``seed`` is required for stochastic samplers (Euler-ancestral, LCM); ``step_kwargs`` are the
    extra keyword arguments the pipeline passes to ``step`` (e.g. ``eta``).
    """
    family = _scheduler_family(scheduler)
    sched = copy.deepcopy(scheduler)
    step_kwargs = dict(step_kwargs or {})
    # Without a seed a generator still replays the steps, to find out whether the sampler draws noise.
    generator = torch.Generator().manual_seed(int(seed) if seed is not None else 0)
    zeros = torch.zeros(latent_shape, dtype=torch.float32)
    ones = torch.ones(latent_shape, dtype=torch.float32)
    probe_gen = torch.Generator().manual_seed(1234)
    z_rand = torch.randn(latent_shape, generator=probe_gen)
    m_rand = torch.randn(latent_shape, generator=probe_gen)
    timesteps = list(sched.timesteps)

    steps: list[AffineStep] = []
    noises: list[Optional[Tensor]] = []
    for i, t in enumerate(timesteps):
        snapshot = copy.deepcopy(sched)
        gen_state = generator.get_state() if generator is not None else None

        def run(z: Tensor, m: Tensor) -> Tensor:
            s = copy.deepcopy(snapshot)
            _scale_input(s, z, t)
            g = None
            if gen_state is not None:
                g = torch.Generator()
                g.set_state(gen_state)
            return s.step(m, t, z, generator=g, return_dict=False, **step_kwargs)[0].float()

        const = run(zeros, zeros)
        a = float((run(ones, zeros) - const).mean())
        b = float((run(zeros, ones) - const).mean())
        if check:
            expected = a * z_rand + b * m_rand + const
            got = run(z_rand, m_rand)
            err = float((got - expected).abs().max())
            if err > 1e-4 * (1.0 + float(expected.abs().max())):
                raise UnsupportedSchedulerError(
                    f"{type(sched).__name__} step {i} is not affine in (sample, model_output) "
                    f"(probe error {err:.2e}); it cannot be inverted exactly"
                )
        if a == 0:
            raise UnsupportedSchedulerError(f"{type(sched).__name__} step {i} does not depend on the sample (A = 0)")
        scale = float(_scale_input(copy.deepcopy(snapshot), ones, t).float().mean())

        # Advance the real sampler state (and the generator) by one stock step.
        before = generator.get_state().clone() if generator is not None else None
        _scale_input(sched, zeros, t)
        sched.step(zeros, t, zeros, generator=generator, return_dict=False, **step_kwargs)
        noise = None
        if generator is not None and not torch.equal(before, generator.get_state()):
            g = torch.Generator()
            g.set_state(before)
            noise = torch.randn(latent_shape, generator=g, dtype=torch.float32)
        if noise is not None and seed is None:
            raise ValueError(f"{type(sched).__name__} draws noise in its step: pass a seed to record it")
        noises.append(noise)

        if family == "vp":
            a_t = _vp_alpha(sched, t)
            if i + 1 < len(timesteps):
                a_prev = _vp_alpha(sched, timesteps[i + 1])
            else:
                a_prev = float(getattr(sched, "final_alpha_cumprod", sched.alphas_cumprod[0]))
            ratio = a_t / a_prev
            mean_scale, beta = ratio ** 0.5, max(1.0 - ratio, 1e-8)
        else:
            mean_scale, beta = 1.0, 1.0

        steps.append(
            AffineStep(
                index=i,
                timestep=t,
                A=a,
                B=b,
                C=None if float(const.abs().max()) == 0 else const,
                input_scale=scale,
                guidance_mean_scale=mean_scale,
                guidance_beta=beta,
            )
        )
    return Schedule(
        steps=steps,
        noises=noises,
        init_noise_sigma=float(getattr(scheduler, "init_noise_sigma", 1.0)),
        scheduler_name=type(scheduler).__name__,
        seed=seed,
    )
