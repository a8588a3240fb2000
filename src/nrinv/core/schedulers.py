"""A diffusers scheduler's step, read off as an affine map per model call.

Sampling calls the network once per entry ``k`` of ``scheduler.timesteps`` at the latent ``z_k`` and
steps to ``z_{k+1}``.  For a fixed recorded noise, every supported scheduler's step is affine in the
latents and model outputs seen so far:

    z_{k+1} = sum_{j <= k} (A_kj z_j + B_kj m_j) + C_k,     m_j = model(s_j z_j, t_j)

Single-step samplers (DDIM, Euler, LCM, flow-match Euler, TCD, DDPM) have only ``j = k`` terms;
multistep ones (DPM-Solver++, UniPC with its corrector, DEIS, PNDM/PLMS) reach back to earlier
outputs, and second-order single-step ones (Heun, KDPM2) take two entries per step, the second
starting again from the first's latent.  ``A, B`` (scalars) and ``C_k`` (a tensor: the ancestral,
SDE or LCM noise term, zero otherwise) are measured by running the stock scheduler on probe
inputs (a batch of unit inputs, one per latent and output), never re-derived from its formulas.  The noise
is the noise the stock pipeline draws with the same ``generator`` (inside ``scheduler.step``, in
step order): the probes replay the scheduler with a copy of the generator, so the user's
generator is read, never advanced.  A final pass on random inputs checks the affine model against
the stock scheduler.  Probes run on the latent's device; everything the schedule holds lives there.
They run in float64, so the user's float32 matmul settings (TF32, ``set_float32_matmul_precision``)
do not round what they read, and are left as they are.
"""
from __future__ import annotations

import copy
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor

from ..errors import InputError

__all__ = ["AffineStep", "Coupling", "Schedule", "affine_schedule", "SUPPORTED_SCHEDULERS", "REFUSED_SCHEDULERS",
           "UnsupportedSchedulerError", "seeded_generator", "copy_generator", "draw_noise"]

# scheduler class name -> guidance family of GNRI's G (see solvers.py); "vp" schedulers configured for
# flow prediction are "flow".  Adding a scheduler is one row here plus its stock-regeneration test.
SUPPORTED_SCHEDULERS = {
    "DDIMScheduler": "vp",
    "LCMScheduler": "vp",
    "EulerDiscreteScheduler": "sigma",
    "EulerAncestralDiscreteScheduler": "sigma",
    "FlowMatchEulerDiscreteScheduler": "flow",
    "DPMSolverMultistepScheduler": "vp",
    "UniPCMultistepScheduler": "vp",
    "DEISMultistepScheduler": "vp",
    "PNDMScheduler": "vp",
    "HeunDiscreteScheduler": "sigma",
    "KDPM2DiscreteScheduler": "sigma",
    "KDPM2AncestralDiscreteScheduler": "sigma",
    # DPM-Solver++ SDE (k-diffusion's "DPM++ SDE"): Brownian-tree noise (torchsde), reproducible when its config
    # fixes noise_sampler_seed
    "DPMSolverSDEScheduler": "sigma",
    "LMSDiscreteScheduler": "sigma",
    "EDMDPMSolverMultistepScheduler": "sigma",
    "TCDScheduler": "vp",
    "DDPMScheduler": "vp",
    # each of these is one row: the probe reads their steps as it reads the others'
    "DPMSolverSinglestepScheduler": "vp",
    "FlowMatchHeunDiscreteScheduler": "flow",
    "EDMEulerScheduler": "sigma",
    "IPNDMScheduler": "sigma",
    "DDIMParallelScheduler": "vp",
    "DDPMParallelScheduler": "vp",
    "CosineDPMSolverMultistepScheduler": "sigma",
    "SASolverScheduler": "vp",
}

#: DPMSolverMultistepScheduler's algorithm types tested by stock regeneration (the SDE ones with the noise the
#: pipeline's generator draws inside ``step``, recorded by the probe)
DPM_SOLVER_ALGORITHMS = ("dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver")

#: schedulers refused on purpose, and why (one line each)
REFUSED_SCHEDULERS = {
    "DPMSolverMultistepInverseScheduler": "is an approximate inversion scheduler, not a sampler; sample with "
                                          "DPMSolverMultistepScheduler and invert that",
    "DDIMInverseScheduler": "is an approximate inversion scheduler, not a sampler; sample with DDIMScheduler",
    "CMStochasticIterativeScheduler": "re-noises with fresh noise at every step of a consistency model; "
                                      "not supported yet",
}


class UnsupportedSchedulerError(InputError):
    """A scheduler nrinv cannot invert exactly (the user's input: the message says what to swap in)."""


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
class Coupling:
    """The full step model of a multistep or second-order scheduler (host-side float64 numbers).

    ``A[k][j], B[k][j]`` (``j <= k``) as in the module docstring.  ``stored[j] = (a_j, b_j)``: the
    scheduler keeps ``a_j z_j + b_j m_j`` as entry ``j``'s history (its data prediction; ``(0, 1)``
    where it keeps the raw output); the coupled solver extrapolates unknown history with it.
    ``groups``: ``(a, b)`` runs of entries that form one sampler step: entries ``a+1 .. b`` start
    from ``z_a`` again (Heun's and KDPM2's second call, PLMS's first step), so one implicit equation
    (entry ``b``'s) determines ``z_a`` and ``z_{a+1} .. z_b`` follow from it forward.
    """

    A: list[list[float]]
    B: list[list[float]]
    stored: list[tuple[float, float]]
    groups: list[tuple[int, int]]
    #: each entry's log signal-to-noise ratio lambda = log(alpha / sigma) (None where the scheduler does not
    #: say): the variable DPM-Solver's multistep formulas are linear in, which the coupled solver
    #: extrapolates the history in
    log_snr: Optional[list[float]] = None

    @property
    def reaches_back(self) -> bool:
        """Whether some step's equation involves the latents or outputs of earlier steps (multistep:
        DPM-Solver++, UniPC, PNDM, ...), not only those of its own group (Heun, KDPM2)."""
        return any(self.A[b][j] != 0.0 or self.B[b][j] != 0.0 for a, b in self.groups for j in range(a))

    def combine(self, k: int, zs: dict[int, Tensor], ms: dict[int, Tensor], C: Optional[Tensor]) -> Tensor:
        """``z_{k+1}`` from the latents ``zs[j]`` and outputs ``ms[j]``, ``j <= k`` (missing j: coefficient 0)."""
        out = None
        for j in range(k + 1):
            for coef, values in ((self.A[k][j], zs), (self.B[k][j], ms)):
                if coef != 0.0:
                    term = coef * values[j]
                    out = term if out is None else out + term
        assert out is not None
        return out if C is None else out + C


@dataclass(frozen=True)
class Schedule:
    steps: list[AffineStep]
    noises: list[Optional[Tensor]] = field(default_factory=list)
    init_noise_sigma: float = 1.0
    scheduler_name: str = ""
    seed: Optional[int] = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    #: set for multistep / second-order schedulers (steps reach back to earlier latents or outputs)
    coupling: Optional[Coupling] = None

    def __len__(self) -> int:
        return len(self.steps)


def _scheduler_family(scheduler: Any) -> str:
    name = type(scheduler).__name__
    if name in REFUSED_SCHEDULERS:
        raise UnsupportedSchedulerError(f"scheduler {name} cannot be inverted exactly: it {REFUSED_SCHEDULERS[name]}")
    if name not in SUPPORTED_SCHEDULERS:
        raise UnsupportedSchedulerError(
            f"scheduler {name} is not supported; supported schedulers: {', '.join(SUPPORTED_SCHEDULERS)}. "
            "Swap it with e.g. `pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)`."
        )
    cfg = scheduler.config
    if getattr(cfg, "thresholding", False) or (name in ("DDIMScheduler", "DDPMScheduler", "TCDScheduler",
                                                        "DDIMParallelScheduler", "DDPMParallelScheduler")
                                               and getattr(cfg, "clip_sample", False)):
        raise UnsupportedSchedulerError(
            f"{name} with clip_sample/thresholding is not an affine step and cannot be inverted exactly; "
            "set clip_sample=False, thresholding=False in its config"
        )
    if getattr(cfg, "variance_type", None) in ("learned", "learned_range"):
        raise UnsupportedSchedulerError(f"{name} with a learned variance reads it from the model output, which is not "
                                        "an affine step; use variance_type='fixed_small'")
    if name == "DPMSolverSDEScheduler" and getattr(cfg, "noise_sampler_seed", None) is None:
        raise UnsupportedSchedulerError(f"{name} draws its Brownian-tree noise from a fresh random seed, not from the "
                                        "pipeline's generator, so no run can be regenerated; fix it with "
                                        f"`pipe.scheduler = {name}.from_config(pipe.scheduler.config, "
                                        "noise_sampler_seed=0)`")
    if name == "DPMSolverMultistepScheduler" and getattr(cfg, "algorithm_type", "") not in DPM_SOLVER_ALGORITHMS:
        raise UnsupportedSchedulerError(f"{name} with algorithm_type={cfg.algorithm_type!r} cannot be inverted exactly "
                                        f"yet (tested: {', '.join(DPM_SOLVER_ALGORITHMS)})")
    if name == "DPMSolverMultistepScheduler" and cfg.algorithm_type.startswith("sde") and (
            getattr(cfg, "use_flow_sigmas", False) or getattr(cfg, "prediction_type", None) == "flow_prediction"):
        # DPM-Solver++ SDE step (Lu et al. 2022, eq. for x_t): x_t = (sigma_t / sigma_s) e^{-h} x_s + ...; a flow
        # schedule starts at sigma 1 (alpha 0), where e^{-h} = 0: the first step keeps its latent only through the
        # data prediction, which at pure noise barely depends on it
        raise UnsupportedSchedulerError(f"{name} with algorithm_type={cfg.algorithm_type!r} on flow sigmas cannot be "
                                        "inverted: its first step (sigma 1) replaces the latent with fresh noise, so "
                                        "the image does not determine it; use algorithm_type='dpmsolver++'")
    family = SUPPORTED_SCHEDULERS[name]
    if family == "vp" and (getattr(cfg, "prediction_type", None) == "flow_prediction"
                           or getattr(cfg, "use_flow_sigmas", False)):
        family = "flow"
    return family


def _scale_input(scheduler: Any, z: Tensor, t: Tensor) -> Tensor:
    """``scale_model_input`` where the scheduler has one (flow-match schedulers do not)."""
    if hasattr(type(scheduler), "scale_model_input"):
        return scheduler.scale_model_input(z, t)
    return z


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


def _step_caller(scheduler: Any, step_kwargs: dict) -> tuple[dict, bool]:
    """The keyword arguments ``step`` accepts of ``step_kwargs``, and whether it takes a generator."""
    params = inspect.signature(type(scheduler).step).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(step_kwargs), True
    return {k: v for k, v in step_kwargs.items() if k in params}, "generator" in params


def _replay(scheduler: Any, timesteps: list, inputs, generator: Optional[torch.Generator], kwargs: dict,
            takes_generator: bool, watch=None, out_dtype: Optional[torch.dtype] = None) -> list[Tensor]:
    """Run a copy of the stock scheduler over every entry, as the pipeline loop does:
    ``scale_model_input`` then ``step``; ``inputs(k) -> (z_k, m_k)``; returns the ``z_{k+1}`` (kept in
    ``out_dtype`` where given).  ``watch(k, scheduler, scaled_input, generator_state_before)`` sees each entry."""
    s = copy.deepcopy(scheduler)
    outs = []
    for k, t in enumerate(timesteps):
        z, m = inputs(k)
        scaled = _scale_input(s, z, t)
        before = generator.get_state().clone() if generator is not None else None
        extra = {"generator": generator} if takes_generator else {}
        out = s.step(m, t, z, return_dict=False, **extra, **kwargs)[0]
        outs.append(out if out_dtype is None else out.to(out_dtype))
        if watch is not None:
            watch(k, s, scaled, before)
    return outs


def _guidance(family: str, scheduler: Any, t: Tensor, t_next: Optional[Tensor]) -> tuple[float, float]:
    """GNRI's guidance mean scale and beta for the step from ``t`` to ``t_next``."""
    if family != "vp" or not hasattr(scheduler, "alphas_cumprod"):
        return 1.0, 1.0
    ac = scheduler.alphas_cumprod
    top = len(ac) - 1
    a_t = float(ac[min(max(int(t), 0), top)])
    if t_next is None:
        a_prev = float(getattr(scheduler, "final_alpha_cumprod", ac[0]))
    else:
        a_prev = float(ac[min(max(int(t_next), 0), top)])
    ratio = a_t / a_prev
    return ratio ** 0.5, max(1.0 - ratio, 1e-8)


def _log_snr(scheduler: Any, n: int) -> Optional[list[float]]:
    """lambda = log(alpha / sigma) of each of the ``n`` entries, as the scheduler converts its own ``sigmas``
    (``_sigma_to_alpha_sigma_t``: DPM-Solver, UniPC, DEIS, in VP, v and flow form); None where it has no
    such conversion or a lambda is not finite (a flow schedule's sigma 1)."""
    sigmas = getattr(scheduler, "sigmas", None)
    convert = getattr(scheduler, "_sigma_to_alpha_sigma_t", None)
    if not isinstance(sigmas, Tensor) or convert is None or len(sigmas) < n:
        return None
    out = []
    for k in range(n):
        alpha, sigma = (float(x) for x in convert(sigmas[k].double()))
        if not (alpha > 0 and sigma > 0):
            return None
        out.append(math.log(alpha / sigma))
    return out


def _groups(A: list[list[float]], name: str, second_calls: list[bool]) -> list[tuple[int, int]]:
    """Entries that restart from an earlier latent join that latent's group (see ``Coupling``), read
    off exact signals, never magnitudes: those the scheduler says are a second call
    (``state_in_first_order`` false, Heun / KDPM2), and those whose step does not read their own
    latent at all (``A_kk`` exactly 0: PLMS's first step, PNDM's Runge-Kutta calls).  The latent
    they restart from is the last one their step reads, which must start the group before.  An entry
    that reads its own latent, however weakly, is a step of its own, and what it reads of earlier
    latents is history: UniPC's corrector reads the previous latent with weight ~1 and its own only
    through its data prediction, an O(h) weight at many steps."""
    groups: list[list[int]] = []
    for k, row in enumerate(A):
        read = [j for j in range(k + 1) if row[j] != 0.0]
        if not read:
            raise UnsupportedSchedulerError(f"{name} step {k} does not depend on the sample (A = 0)")
        if k > 0 and (second_calls[k] or row[k] == 0.0):  # restarts from an earlier latent: part of its step
            start = max((j for j in read if j < k), default=None)
            if not groups or groups[-1][0] != start:
                raise UnsupportedSchedulerError(f"{name} step {k} restarts from latent {start}, which is not the "
                                                "start of the step before it; it cannot be inverted exactly")
            groups[-1][1] = k
        else:
            groups.append([k, k])
    return [(a, b) for a, b in groups]


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

    Stochastic samplers (Euler-ancestral, LCM, TCD, DDPM, SDE DPM-Solver) need the noise:
    ``generator`` (CPU or on ``device``; read, not advanced) or ``seed`` (a CPU generator seeded so,
    the diffusers convention).  ``noise_dtype`` is the dtype of the pipeline's model output (the
    network dtype): a scheduler that draws in it (Euler-ancestral) draws differently in float16.
    ``device`` is where the probes run and the schedule's tensors live (default: the scheduler's
    timesteps' device).  ``step_kwargs`` are the extra keyword arguments the pipeline passes to
    ``step`` (e.g. ``eta``; those ``step`` does not take are dropped, as the pipelines drop them).
    """
    family = _scheduler_family(scheduler)
    name = type(scheduler).__name__
    kwargs, takes_generator = _step_caller(scheduler, dict(step_kwargs or {}))
    device = torch.device(device) if device is not None else _default_device(scheduler)
    if generator is None:
        # Without one a generator still replays the steps, to find out whether the sampler draws noise.
        generator = seeded_generator(seed if seed is not None else 0)
        user_noise = seed is not None
    else:
        generator = copy_generator(generator)
        user_noise = True
    start_state = generator.get_state().clone()

    def fresh_generator() -> torch.Generator:
        g = torch.Generator(device=generator.device)
        g.set_state(start_state)
        return g

    timesteps = list(scheduler.timesteps)
    n = len(timesteps)
    f32 = dict(dtype=torch.float32, device=device)
    # The linear part and its check run in float64: TF32 and reduced float32 matmul precision
    # (``torch.backends.cuda.matmul.allow_tf32``, ``set_float32_matmul_precision``, user settings we leave
    # alone) round float32 matmuls only, e.g. UniPC's einsum over its history, which would read as "not affine".
    # MPS has no float64 (and no TF32).
    f64 = dict(dtype=torch.float32 if device.type == "mps" else torch.float64, device=device)

    # 1. the linear part: one batch element per input (z_0..z_{n-1}, m_0..m_{n-1}), unit where it is that
    # input; a second replay on zeros with the same generator cancels whatever noise the steps draw.
    probe_shape = (2 * n,) + (1,) * (len(latent_shape) - 1)
    eye = torch.eye(2 * n, **f64).reshape((2 * n, 2 * n) + (1,) * (len(latent_shape) - 1))
    zeros_probe = torch.zeros(probe_shape, **f64)
    scales: list[float] = [1.0] * n
    stored: list[tuple[float, float]] = [(0.0, 1.0)] * n
    stored_raw: list[Optional[Tensor]] = [None] * n

    second_calls: list[bool] = [False] * n

    def watch_basis(k, s, scaled, before):
        scales[k] = float(scaled[k].flatten()[0])
        if k + 1 < n and getattr(s, "state_in_first_order", True) is False:
            second_calls[k + 1] = True
        history = getattr(s, "model_outputs", None)
        if isinstance(history, list) and history and isinstance(history[-1], Tensor) \
                and history[-1].shape == probe_shape:
            stored_raw[k] = history[-1].double().flatten()

    basis = _replay(scheduler, timesteps, lambda k: (eye[k], eye[n + k]), fresh_generator(), kwargs,
                    takes_generator, watch_basis)
    stored_zero: list[Optional[Tensor]] = [None] * n

    def watch_zero(k, s, scaled, before):
        history = getattr(s, "model_outputs", None)
        if stored_raw[k] is not None:
            stored_zero[k] = history[-1].double().flatten()

    offset = _replay(scheduler, timesteps, lambda k: (zeros_probe, zeros_probe), fresh_generator(), kwargs,
                     takes_generator, watch_zero)
    A = [[0.0] * n for _ in range(n)]
    B = [[0.0] * n for _ in range(n)]
    for k in range(n):
        diff = (basis[k].double() - offset[k].double()).flatten().cpu()
        for j in range(k + 1):
            A[k][j], B[k][j] = float(diff[j]), float(diff[n + j])
        if any(abs(float(x)) > 0 for x in diff[k + 1:n]) or any(abs(float(x)) > 0 for x in diff[n + k + 1:]):
            raise UnsupportedSchedulerError(f"{name} step {k} depends on inputs it has not seen yet")
        if stored_raw[k] is not None and stored_zero[k] is not None:
            d = (stored_raw[k] - stored_zero[k]).double().cpu()
            stored[k] = (float(d[k]), float(d[n + k]))

    # 2. the constant part at the latent's shape: the noise the stock pipeline draws with the generator
    noises: list[Optional[Tensor]] = [None] * n
    drew: list[bool] = [False] * n
    zeros32 = torch.zeros(latent_shape, **f32)

    def watch_noise(k, s, scaled, before):
        drew[k] = before is not None and not torch.equal(before, generator_in_use[0].get_state())

    generator_in_use = [fresh_generator()]
    consts = [c.float() for c in _replay(scheduler, timesteps, lambda k: (zeros32, zeros32), generator_in_use[0],
                                         kwargs, takes_generator, watch_noise)]
    if any(drew):
        if not user_noise:
            raise ValueError(f"{name} draws noise in its step: pass a seed or a generator to record it")
        g = fresh_generator()
        for k in range(n):
            if drew[k]:
                noises[k] = draw_noise(latent_shape, g, device=device, dtype=noise_dtype).float()
    consts_model = consts
    if any(drew) and noise_dtype != torch.float32:
        # The stock pipeline calls ``step`` with the network's dtype, and a step may draw its noise in
        # that dtype: the noise term is read off such a call.
        low = torch.zeros(latent_shape, dtype=noise_dtype, device=device)
        consts_model = [c.float() for c in _replay(scheduler, timesteps, lambda k: (low, low), fresh_generator(),
                                                   kwargs, takes_generator)]

    # 3. check the affine model against the stock scheduler on random inputs (same noise), the steps run in
    # float64 like the probes (their outputs kept in float32: the check's sums are elementwise).  Where the steps
    # add noise (from the generator, or a Brownian tree), the constant is a float64 replay on zeros with the same
    # generator: ``consts`` drew theirs in float32, which are other numbers.
    if check:
        probe_gen = seeded_generator(1234)
        zs = [draw_noise(latent_shape, probe_gen, device=device, dtype=torch.float32) for _ in range(n)]
        ms = [draw_noise(latent_shape, probe_gen, device=device, dtype=torch.float32) for _ in range(n)]
        got = _replay(scheduler, timesteps, lambda k: (zs[k].to(**f64), ms[k].to(**f64)), fresh_generator(), kwargs,
                      takes_generator, out_dtype=torch.float32)
        base = consts
        if any(bool(c.abs().max() > 0) for c in consts):
            zeros64 = torch.zeros(latent_shape, **f64)
            base = _replay(scheduler, timesteps, lambda k: (zeros64, zeros64), fresh_generator(), kwargs,
                           takes_generator, out_dtype=torch.float32)
        for k in range(n):
            expected = base[k]
            for j in range(k + 1):
                expected = expected + A[k][j] * zs[j] + B[k][j] * ms[j]
            if not bool(torch.isfinite(got[k]).all()):
                raise UnsupportedSchedulerError(f"{name} as configured returns NaN/Inf at step {k} on finite inputs "
                                                "(a diffusers limitation); change its configuration (e.g. UniPC bh1: "
                                                "final_sigmas_type='sigma_min', or solver_type='bh2')")
            err = float((got[k] - expected).abs().max())
            if not err <= 1e-4 * (1.0 + float(expected.abs().max())):
                raise UnsupportedSchedulerError(
                    f"{name} step {k} is not affine in (sample, model_output) "
                    f"(probe error {err:.2e}); it cannot be inverted exactly"
                )

    coupled = any(A[k][j] != 0.0 or B[k][j] != 0.0 for k in range(n) for j in range(k))
    groups = _groups(A, name, second_calls) if coupled else [(k, k) for k in range(n)]
    if not coupled and any(A[k][k] == 0 for k in range(n)):
        raise UnsupportedSchedulerError(f"{name} step {[A[k][k] for k in range(n)].index(0.0)} does not depend "
                                        "on the sample (A = 0)")
    steps: list[AffineStep] = []
    for k, t in enumerate(timesteps):
        t_next = timesteps[k + 1] if k + 1 < n else None
        mean_scale, beta = _guidance(family, scheduler, t, t_next)
        c = consts_model[k]
        steps.append(AffineStep(index=k, timestep=t.to(device), A=A[k][k], B=B[k][k],
                                C=None if float(c.abs().max()) == 0 else c, input_scale=scales[k],
                                guidance_mean_scale=mean_scale, guidance_beta=beta, t=float(t)))
    return Schedule(
        steps=steps,
        noises=noises,
        init_noise_sigma=float(getattr(scheduler, "init_noise_sigma", 1.0)),
        scheduler_name=name,
        seed=seed,
        device=device,
        coupling=Coupling(A, B, stored, groups, _log_snr(scheduler, n)) if coupled else None,
    )
