"""A diffusers scheduler's step, read off as an affine map per step.

For a fixed recorded noise, every supported sampler step is

    z_next = A_i z_i + B_i m_i + C_i,     m_i = model(s_i z_i, t_i)

with scalars ``A_i, B_i`` (the input scaling ``s_i`` is ``scale_model_input``) and a tensor ``C_i``
(zero for DDIM / Euler / flow, the ancestral or LCM noise term otherwise).  The coefficients are
measured by calling the stock scheduler's ``step`` on probe inputs with its state saved and
restored, so inversion follows the scheduler exactly rather than re-deriving its formulas.  The
noise is the noise the stock pipeline draws with the same ``generator`` (one draw per step, in step
order, inside ``scheduler.step``, on the generator's device and in the dtype the pipeline's model
output has): we replay the sampler's calls on zero inputs with a copy of the generator, so the
user's generator is read, never advanced.  Probes run on the latent's device; everything the
schedule holds lives there.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor

__all__ = ["AffineStep", "Schedule", "affine_schedule", "SUPPORTED_SCHEDULERS", "UnsupportedSchedulerError",
           "seeded_generator", "copy_generator", "draw_noise"]

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
    t: float = 0.0              # the timestep as a number (host side), for extrapolating across steps

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
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

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


def seeded_generator(seed: int, device: Any = "cpu") -> torch.Generator:
    """``torch.Generator(device).manual_seed(seed)``: what ``seed=`` means everywhere in nrinv (a CPU
    generator, the diffusers convention for reproducible noise across machines)."""
    return torch.Generator(device=device).manual_seed(int(seed))


def copy_generator(generator: torch.Generator) -> torch.Generator:
    """A new generator on ``generator``'s device in the same state (the original is not advanced)."""
    g = torch.Generator(device=generator.device)
    g.set_state(generator.get_state())
    return g


def draw_noise(shape: tuple[int, ...], generator: torch.Generator, *, device: Any, dtype: torch.dtype) -> Tensor:
    """Gaussian noise as diffusers' ``randn_tensor`` draws it: on the generator's device (a CPU generator
    for a GPU tensor draws on the CPU, then moves), in ``dtype``; advances ``generator``."""
    device = torch.device(device)
    if generator.device.type != device.type and generator.device.type != "cpu":
        raise ValueError(f"cannot draw {device} noise from a {generator.device.type} generator; "
                         f"use a CPU generator or one on {device}")
    draw_device = generator.device if generator.device.type != device.type else device
    return torch.randn(shape, generator=generator, device=draw_device, dtype=dtype).to(device)


def _default_device(scheduler: Any) -> torch.device:
    timesteps = getattr(scheduler, "timesteps", None)
    return timesteps.device if isinstance(timesteps, Tensor) else torch.device("cpu")


def affine_schedule(
    scheduler: Any,
    latent_shape: tuple[int, ...],
    *,
    generator: Optional[torch.Generator] = None,
    seed: Optional[int] = None,
    device: Any = None,
    noise_dtype: torch.dtype = torch.float32,
    step_kwargs: Optional[dict] = None,
    check: bool = True,
) -> Schedule:
    """Probe a scheduler whose ``set_timesteps`` was already called as its pipeline calls it.

    Stochastic samplers (Euler-ancestral, LCM) need the noise: ``generator`` (CPU or on ``device``;
    read, not advanced) or ``seed`` (a CPU generator seeded so, the diffusers convention).
    ``noise_dtype`` is the dtype of the pipeline's model output (the network dtype): diffusers draws
    the step noise in it, and a float16 draw differs from a float32 one.  ``device`` is where the
    probes run and the schedule's tensors live (default: the scheduler's timesteps' device).
    ``step_kwargs`` are the extra keyword arguments the pipeline passes to ``step`` (e.g. ``eta``).
    """
    family = _scheduler_family(scheduler)
    sched = copy.deepcopy(scheduler)
    step_kwargs = dict(step_kwargs or {})
    device = torch.device(device) if device is not None else _default_device(scheduler)
    if generator is None:
        # Without one a generator still replays the steps, to find out whether the sampler draws noise.
        generator = seeded_generator(seed if seed is not None else 0)
        user_noise = seed is not None
    else:
        generator = copy_generator(generator)
        user_noise = True
    f32 = dict(dtype=torch.float32, device=device)
    zeros, ones = torch.zeros(latent_shape, **f32), torch.ones(latent_shape, **f32)
    probe_gen = seeded_generator(1234)
    z_rand = draw_noise(latent_shape, probe_gen, device=device, dtype=torch.float32)
    m_rand = draw_noise(latent_shape, probe_gen, device=device, dtype=torch.float32)
    timesteps = list(sched.timesteps)

    steps: list[AffineStep] = []
    noises: list[Optional[Tensor]] = []
    for i, t in enumerate(timesteps):
        snapshot = copy.deepcopy(sched)
        gen_state = generator.get_state()

        def run(z: Tensor, m: Tensor) -> Tensor:
            s = copy.deepcopy(snapshot)
            _scale_input(s, z, t)
            g = torch.Generator(device=generator.device)
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
        before = generator.get_state().clone()
        _scale_input(sched, zeros, t)
        sched.step(zeros, t, zeros, generator=generator, return_dict=False, **step_kwargs)
        noise = None
        if not torch.equal(before, generator.get_state()):
            if not user_noise:
                raise ValueError(f"{type(sched).__name__} draws noise in its step: pass a seed or a generator "
                                 "to record it")
            g = torch.Generator(device=generator.device)
            g.set_state(before)
            noise = draw_noise(latent_shape, g, device=device, dtype=noise_dtype).float()
            if noise_dtype != torch.float32:
                # The stock pipeline calls ``step`` with the network's dtype, and the step draws its
                # noise in that dtype: the noise term is read off such a call.
                low = dict(dtype=noise_dtype, device=device)
                const = run(torch.zeros(latent_shape, **low), torch.zeros(latent_shape, **low))
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
                timestep=t.to(device),
                A=a,
                B=b,
                C=None if float(const.abs().max()) == 0 else const,
                input_scale=scale,
                guidance_mean_scale=mean_scale,
                guidance_beta=beta,
                t=float(t),
            )
        )
    return Schedule(
        steps=steps,
        noises=noises,
        init_noise_sigma=float(getattr(scheduler, "init_noise_sigma", 1.0)),
        scheduler_name=type(scheduler).__name__,
        seed=seed,
        device=device,
    )
