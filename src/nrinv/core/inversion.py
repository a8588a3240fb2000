"""The inversion loop: solve one implicit equation per sampler step, last step first.

Sampling runs ``z_0 = z_T (noise) -> z_1 -> ... -> z_N (image latent)`` with
``z_{i+1} = A_i z_i + B_i m_i(s_i z_i) + C_i`` (``schedulers.py``).  Inversion starts from the
encoded image ``z_N`` and recovers ``z_{N-1}, ..., z_0`` by solving ``z_i = f_i(z_i)`` with a solver
from ``solvers.SOLVERS``.  Every quantity the solver sees is float32, whatever dtype the network
runs in.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .._version import __version__
from .adapters import Adapter, Conditioning, adapter_for
from ..io.images import ImageLike, InputError, load_image, to_tensor
from .schedulers import AffineStep, Schedule, affine_schedule
from .solvers import Problem, SolveResult, Status, get_solver, make_options

__all__ = ["InversionResult", "Reconstruction", "invert", "invert_batch", "reconstruct", "sample", "prepare",
           "DEFAULT_METHOD", "DEFAULT_ITERATIONS"]

# Chosen by measurement on the built-in model (benchmarks/README.md, section 5).
DEFAULT_METHOD = "anderson"
DEFAULT_ITERATIONS = 2
_SEVERITY = [Status.CONVERGED, Status.MAX_ITERATIONS, Status.DIVERGED, Status.NONFINITE]


@dataclass
class Setup:
    """Everything an inversion or a regeneration needs besides the latent."""

    adapter: Adapter
    schedule: Schedule
    cond: Conditioning
    size: tuple[int, int]
    num_inference_steps: int
    guidance_scale: float
    seed: Optional[int]


@dataclass
class InversionResult:
    latent: Tensor                      # z_0 of sampling (the noise), scheduler units
    pipeline_latents: Tensor            # the ``latents=`` argument of the stock pipeline
    encoded: Tensor                     # z_N, the encoded image latent
    trajectory: list[Tensor]            # z_0 .. z_N
    steps: list[SolveResult]            # per sampler step i (sampling order)
    noises: list[Optional[Tensor]]      # recorded noise per sampler step (None where none is drawn)
    nfe: int
    wall_time: float                    # seconds spent in the solver loop
    encode_time: float
    settings: dict[str, Any]
    setup: Optional[Setup] = field(default=None, repr=False)

    @property
    def status(self) -> Status:
        return max((s.status for s in self.steps), key=_SEVERITY.index, default=Status.CONVERGED)

    @property
    def ok(self) -> bool:
        """Every step converged (residual within the solver's rtol/atol)."""
        return self.status is Status.CONVERGED

    @property
    def finite(self) -> bool:
        """A usable answer: no step diverged or produced NaN/Inf (it may have stopped at its
        iteration budget before converging)."""
        return self.status.finite

    def stats(self) -> dict[str, Any]:
        """JSON-ready summary: settings, per-step solver stats, totals."""
        return {
            "version": __version__,
            "settings": self.settings,
            "status": self.status.value,
            "nfe": self.nfe,
            "wall_time_s": round(self.wall_time, 4),
            "encode_time_s": round(self.encode_time, 4),
            "steps": [dict(step=i, **s.to_dict()) for i, s in enumerate(self.steps)],
        }


@dataclass
class Reconstruction:
    latent: Tensor
    image: Optional[Tensor]


def prepare(pipe: Any, prompt: str, *, size: tuple[int, int], num_inference_steps: Optional[int] = None,
            guidance_scale: Optional[float] = None, seed: Optional[int] = 0, negative_prompt: Optional[str] = None,
            generator: Optional[torch.Generator] = None) -> Setup:
    """Adapter, probed schedule (with the recorded noise of ``generator``, else of ``seed``) and prompt
    conditioning."""
    adapter = adapter_for(pipe)
    defaults = adapter.default_settings()
    steps = int(defaults["num_inference_steps"] if num_inference_steps is None else num_inference_steps)
    guidance = float(defaults["guidance_scale"] if guidance_scale is None else guidance_scale)
    if steps < 1:
        raise InputError(f"num_inference_steps must be >= 1, got {steps}")
    if not isinstance(prompt, str):
        raise InputError("prompt must be a string")
    adapter.check_size(*size)
    scheduler = adapter.prepare_scheduler(steps, *size)
    shape = adapter.latent_shape(*size)
    if generator is not None:
        seed = None
    schedule = affine_schedule(scheduler, shape, generator=generator, seed=seed, device=adapter.device,
                               noise_dtype=adapter.dtype, step_kwargs=adapter.step_kwargs())
    with torch.no_grad():
        cond = adapter.conditioning(prompt, negative_prompt, guidance, size)
    return Setup(adapter, schedule, cond, size, steps, guidance, seed)


def _model_fn(setup: Setup, step: AffineStep, cond: Conditioning):
    def model(z: Tensor) -> Tensor:
        return setup.adapter.denoise(step.input_scale * z, step.timestep, cond)
    return model


def sample(setup: Setup, z: Tensor, *, start: int = 0, cond: Optional[Conditioning] = None,
           progress: bool = False, stop: Optional[int] = None) -> Tensor:
    """Run sampler steps ``start .. stop-1`` (default: to the end) from ``z`` (the stock pipeline's loop)."""
    cond = cond or setup.cond
    z = z.to(device=setup.schedule.device, dtype=torch.float32)
    with torch.no_grad():
        for step in tqdm(setup.schedule.steps[start:stop], desc="sampling", disable=not progress, leave=False):
            z = step.apply(z, _model_fn(setup, step, cond)(z))
    return z


def _as_image_tensor(image: ImageLike, size: Optional[tuple[int, int]], max_pixels: Optional[int],
                     notes: list) -> Tensor:
    kwargs = {"notes": notes, "size": size}
    if max_pixels is not None:
        kwargs["max_pixels"] = max_pixels
    return to_tensor(load_image(image, **kwargs))


def _solve_steps(setup: Setup, encoded: Tensor, method: str, solver_options: Any,
                 progress: bool, warm_start: bool = False) -> tuple[list[SolveResult], list[Tensor], float]:
    """Solve the implicit equations from the last sampler step to the first.

    ``warm_start``: start each step's solver not from the known latent but from the DDIM-style guess
    made with the model output implied by the step solved just before (free: it is
    ``(z_next - A z - C) / B`` at that step's answer), so the first iteration is already a corrector.
    """
    spec = get_solver(method)
    precision = float(torch.finfo(setup.adapter.dtype).eps)
    implied: Optional[Tensor] = None
    steps = setup.schedule.steps
    trajectory: list[Tensor] = [encoded]
    results: list[SolveResult] = []
    z = encoded
    t0 = time.perf_counter()
    grad_ctx = torch.enable_grad if spec.needs_grad else torch.no_grad
    bar = tqdm(list(reversed(steps)), desc=f"inverting ({method})", disable=not progress, leave=False)
    for step in bar:
        z_next = z
        model = _model_fn(setup, step, setup.cond)

        def fixed_point_map(zz: Tensor, step=step, z_next=z_next, model=model) -> Tensor:
            return step.fixed_point_map(z_next, model(zz))

        start = z_next
        if warm_start and implied is not None and method != "ddim":
            start = step.fixed_point_map(z_next, implied)
        problem = Problem(fn=fixed_point_map, z0=start, guidance_mean=step.guidance_mean_scale * z_next,
                          guidance_beta=step.guidance_beta, precision=precision)
        with grad_ctx():
            res = spec.fn(problem, solver_options)
        results.append(res)
        z = res.z.detach()
        if warm_start and step.B != 0:
            implied = (z_next - step.A * z - (0 if step.C is None else step.C)) / step.B
        trajectory.append(z)
        bar.set_postfix(status=res.status.value, nfe=res.nfe)
        if res.status is Status.NONFINITE:
            break
    wall = time.perf_counter() - t0
    results.reverse()
    trajectory.reverse()
    if len(results) < len(steps):  # stopped early on NaN/Inf: pad with the failure for the remaining steps
        results = [results[0]] * (len(steps) - len(results)) + results
        trajectory = [trajectory[0]] * (len(steps) + 1 - len(trajectory)) + trajectory
    return results, trajectory, wall


def _auto_warm(warm_start: Optional[bool], setup: Setup) -> bool:
    """``None`` = on without classifier-free guidance, off with it: measured on the built-in model,
    the warm start helps at guidance 1 and can hurt at guidance 3-7.5 with few steps
    (benchmarks/README.md, section 4)."""
    return (not getattr(setup.cond, "cfg", False)) if warm_start is None else bool(warm_start)


def _solver_options(method: str, options: Any, max_iterations: Optional[int]) -> Any:
    """Options of ``method``; the default method runs DEFAULT_ITERATIONS unless told otherwise."""
    overrides = {} if max_iterations is None else {"max_iterations": int(max_iterations)}
    given = options.to_dict() if hasattr(options, "to_dict") else dict(options or {})
    if method == DEFAULT_METHOD and "max_iterations" not in given and not overrides:
        overrides["max_iterations"] = DEFAULT_ITERATIONS
    return make_options(method, options, **overrides)


def _settings(setup: Setup, method: str, solver_options: Any, prompt: str, negative_prompt: Optional[str],
              notes: list[str]) -> dict[str, Any]:
    """The JSON-ready record of what an inversion did (sidecars, benchmarks)."""
    adapter = setup.adapter
    return {
        "method": method,
        "options": solver_options.to_dict(),
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "num_inference_steps": setup.num_inference_steps,
        "guidance_scale": setup.guidance_scale,
        "seed": setup.seed,
        "height": setup.size[0],
        "width": setup.size[1],
        "scheduler": setup.schedule.scheduler_name,
        "pipeline": type(adapter.pipe).__name__,
        "dtype": str(adapter.dtype).replace("torch.", ""),
        "notes": notes,
    }


def invert(
    pipe: Any,
    image: Optional[ImageLike] = None,
    prompt: str = "",
    *,
    latent: Optional[Tensor] = None,
    method: str = DEFAULT_METHOD,
    num_inference_steps: Optional[int] = None,
    guidance_scale: Optional[float] = None,
    seed: int = 0,
    generator: Optional[torch.Generator] = None,
    negative_prompt: Optional[str] = None,
    options: Any = None,
    max_iterations: Optional[int] = None,
    size: Optional[tuple[int, int]] = None,
    max_pixels: Optional[int] = None,
    warm_start: Optional[bool] = None,
    progress: bool = True,
) -> InversionResult:
    """Find the noise latent from which ``pipe``'s deterministic sampler regenerates ``image``.

    Give either ``image`` (path, PIL, array or (3, H, W) tensor in [0, 1]) or an already encoded
    ``latent`` (scaled, in the pipeline's latent layout, with ``size`` the image size).  ``method``
    names a solver of ``nrinv.SOLVERS``; ``options`` (dict or options dataclass) and
    ``max_iterations`` configure it.  Stochastic samplers (Euler-ancestral, LCM) use the noise the
    stock pipeline draws with ``generator`` (a CPU or a GPU generator; read, not advanced: pass the
    same one, or one seeded the same, to the pipeline), else with ``torch.Generator().manual_seed(seed)``.  ``warm_start`` starts each
    step from the model output implied by the previous step (no extra network call; not for ``ddim``);
    ``None`` turns it on exactly when no classifier-free guidance is used.
    """
    solver_options = _solver_options(method, options, max_iterations)
    adapter = adapter_for(pipe)
    notes: list[str] = []

    t0 = time.perf_counter()
    if latent is None:
        if image is None:
            raise InputError("pass an image or a latent to invert")
        pixels = _as_image_tensor(image, size, max_pixels, notes)
        size = (pixels.shape[-2], pixels.shape[-1])
        adapter.check_size(*size)
        with torch.no_grad():
            encoded = adapter.encode(pixels)
    else:
        encoded = latent.detach().to(device=adapter.device, dtype=torch.float32)
        if size is None:
            size = adapter.default_size()
    encode_time = time.perf_counter() - t0

    setup = prepare(pipe, prompt, size=size, num_inference_steps=num_inference_steps,
                    guidance_scale=guidance_scale, seed=seed, negative_prompt=negative_prompt, generator=generator)
    expected = setup.adapter.latent_shape(*size, batch=encoded.shape[0])
    if tuple(encoded.shape) != tuple(expected):
        raise InputError(f"latent has shape {tuple(encoded.shape)}, expected {tuple(expected)} for size {size}")

    results, trajectory, wall = _solve_steps(setup, encoded, method, solver_options, progress,
                                              _auto_warm(warm_start, setup))
    z = trajectory[0]

    settings = _settings(setup, method, solver_options, prompt, negative_prompt, notes)
    return InversionResult(
        latent=z,
        pipeline_latents=adapter.to_pipeline_latents(z, setup.schedule.init_noise_sigma),
        encoded=encoded,
        trajectory=trajectory,
        steps=results,
        noises=setup.schedule.noises,
        nfe=sum(r.nfe for r in results),
        wall_time=wall,
        encode_time=encode_time,
        settings=settings,
        setup=setup,
    )


def reconstruct(pipe: Any, result: InversionResult, *, decode: bool = True, progress: bool = False) -> Reconstruction:
    """Regenerate the image from an inversion's noise latent with the same prompt, steps and noise."""
    setup = result.setup
    if setup is None or (setup.adapter is not pipe and setup.adapter.pipe is not pipe):
        s = result.settings
        setup = prepare(pipe, s["prompt"], size=(s["height"], s["width"]),
                        num_inference_steps=s["num_inference_steps"], guidance_scale=s["guidance_scale"],
                        seed=s["seed"], negative_prompt=s.get("negative_prompt"))
    z = sample(setup, result.latent, progress=progress)
    image = None
    if decode:
        with torch.no_grad():
            image = setup.adapter.decode(z, setup.size)
    return Reconstruction(latent=z, image=image)


def invert_batch(
    pipe: Any,
    images: Sequence[ImageLike],
    prompts: Sequence[str] | str,
    *,
    method: str = DEFAULT_METHOD,
    num_inference_steps: Optional[int] = None,
    guidance_scale: Optional[float] = None,
    seed: int = 0,
    generator: Optional[torch.Generator] = None,
    negative_prompt: Optional[str] = None,
    options: Any = None,
    max_iterations: Optional[int] = None,
    size: Optional[tuple[int, int]] = None,
    max_pixels: Optional[int] = None,
    warm_start: Optional[bool] = None,
    progress: bool = True,
) -> list[InversionResult]:
    """Invert several same-size images with one network call per evaluation (batch dimension).

    Solvers treat samples independently (per-sample norms and stopping), so every image gets the
    answer it gets alone, up to float rounding.  Stochastic samplers use the same recorded noise
    (``seed``) for every image, as one-at-a-time inversion with that seed does.  The per-step
    solver stats are those of the batch (residual norms: the worst sample).
    """
    if isinstance(prompts, str):
        prompts = [prompts] * len(images)
    if len(prompts) != len(images) or not images:
        raise InputError(f"got {len(images)} images and {len(prompts)} prompts")
    solver_options = _solver_options(method, options, max_iterations)
    adapter = adapter_for(pipe)
    notes: list[list[str]] = [[] for _ in images]
    t0 = time.perf_counter()
    pixels = [_as_image_tensor(img, size, max_pixels, n) for img, n in zip(images, notes)]
    sizes = {tuple(p.shape[-2:]) for p in pixels}
    if len(sizes) != 1:
        raise InputError(f"a batch needs images of one size, got {sorted(sizes)}; pass size=(h, w) to resize")
    size = sizes.pop()
    adapter.check_size(*size)
    with torch.no_grad():
        encoded = adapter.encode(torch.cat(pixels))
    encode_time = time.perf_counter() - t0

    setup = prepare(pipe, prompts[0], size=size, num_inference_steps=num_inference_steps,
                    guidance_scale=guidance_scale, seed=seed, negative_prompt=negative_prompt, generator=generator)
    with torch.no_grad():
        conds = [setup.cond] + [adapter.conditioning(p, negative_prompt, setup.guidance_scale, size)
                                for p in prompts[1:]]
    setup.cond = Conditioning.cat(conds)
    results, trajectory, wall = _solve_steps(setup, encoded, method, solver_options, progress,
                                              _auto_warm(warm_start, setup))

    out = []
    for i, prompt in enumerate(prompts):
        single = Setup(adapter, setup.schedule, conds[i], size, setup.num_inference_steps, setup.guidance_scale,
                       setup.seed)
        latent = trajectory[0][i:i + 1]
        settings = dict(_settings(setup, method, solver_options, prompt, negative_prompt, notes[i]),
                        batch_size=len(prompts))
        out.append(InversionResult(
            latent=latent, pipeline_latents=adapter.to_pipeline_latents(latent, setup.schedule.init_noise_sigma),
            encoded=encoded[i:i + 1], trajectory=[z[i:i + 1] for z in trajectory], steps=results,
            noises=setup.schedule.noises, nfe=sum(r.nfe for r in results), wall_time=wall / len(prompts),
            encode_time=encode_time / len(prompts), settings=settings, setup=single))
    return out
