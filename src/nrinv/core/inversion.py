"""The inversion loop: solve one implicit equation per sampler step, last step first.

Sampling runs ``z_0 = z_T (noise) -> z_1 -> ... -> z_N (image latent)`` with
``z_{i+1} = A_i z_i + B_i m_i(s_i z_i) + C_i`` (``schedulers.py``).  Inversion starts from the
encoded image ``z_N`` and recovers ``z_{N-1}, ..., z_0`` by solving ``z_i = f_i(z_i)`` with a method
of the registry (``methods.py``).  Every quantity the solver sees is float32, whatever dtype the
network runs in.  This module takes tensors (images in [0, 1], or latents) and returns tensors;
loading images and shaping outputs like diffusers is ``nrinv.api``'s job.  Its parameters are
``parameters.py``'s, its results ``results.py``'s, what a run will cost ``planning.py``'s.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..errors import InputError
from .adapters import Conditioning, adapter_for, size_notes
from .defaults import scheduler_defaults
from .methods import EDIT_FRIENDLY
from .parameters import WARM_STARTS, InversionOptions, inversion_parameters
from .planning import _trajectory_budget, _trajectory_options, solver_options
from .results import InversionResult, Setup
from .schedulers import Schedule
from .solvers import Problem, SolveResult, SolverOptions, Status, get_solver
# the names this module's callers knew it by before its parts moved out (options, results, planning)
from .parameters import MAX_GUIDANCE, check_guidance  # noqa: E402,F401,I001
from .planning import planned_calls, sampler_calls  # noqa: F401
from .results import PipelineKwargs  # noqa: F401

__all__ = ["InversionOptions", "inversion_parameters", "StepCallback", "Setup", "InversionResult", "invert_tensor",
           "invert_tensor_batch", "reconstruct_latent", "sample", "prepare", "solver_options", "planned_calls",
           "sampler_calls", "check_guidance", "MAX_GUIDANCE"]


def prepare(pipe: Any, prompt: str, *, size: tuple[int, int], num_inference_steps: Optional[int] = None,
            guidance_scale: Optional[float] = None, seed: Optional[int] = 0, negative_prompt: Optional[str] = None,
            generator: Optional[torch.Generator] = None, frames: Optional[int] = None) -> Setup:
    """Adapter, probed schedule (with the recorded noise of ``generator``, else of ``seed``) and prompt
    conditioning; ``None`` steps / guidance take the model's defaults; ``frames``: a video model's clip
    length (None: the clip this thread encoded last)."""
    adapter = adapter_for(pipe)
    steps = int(adapter.defaults.num_inference_steps if num_inference_steps is None else num_inference_steps)
    guidance = check_guidance(adapter.defaults.guidance_scale if guidance_scale is None else guidance_scale)
    if steps < 1:
        raise InputError(f"num_inference_steps must be >= 1, got {steps}")
    if not isinstance(prompt, str):
        raise InputError("prompt must be a string")
    adapter.check_size(*size)
    seed = None if generator is not None else seed
    schedule = adapter.schedule(steps, size, seed=seed, generator=generator, frames=frames)
    cond = adapter.conditioning(prompt, negative_prompt, guidance, size)
    return Setup(adapter, schedule, cond, tuple(size), steps, guidance, seed)


#: ``callback(info)`` after each step of an inversion or a sampling run (k-diffusion's ``callback``,
#: diffusers' ``callback_on_step_end``): ``info`` is a dict with ``"phase"`` (``"invert"`` or
#: ``"sample"``), ``"i"`` (the sampler step, 0 = the first step of sampling), ``"t"`` and ``"timestep"``,
#: ``"x"`` (the latent the step produced, float32: ``z_i`` when inverting, ``z_{i+1}`` when sampling),
#: ``"residual"`` (the solve's last rms residual, a 0-d tensor on the device; ``None`` when sampling) and
#: ``"nfe"`` (network calls of this call so far).  Workflows add keys (``"target"`` in an edit).
StepCallback = Callable[[dict[str, Any]], None]


def sample(setup: Setup, z: Tensor, *, start: int = 0, cond: Optional[Conditioning] = None,
           progress: bool = False, stop: Optional[int] = None,
           corrections: Optional[Sequence[Optional[Tensor]]] = None, callback: Optional[StepCallback] = None,
           nfe: int = 0, step_conds: Optional[Sequence[Any]] = None) -> Tensor:
    """Run sampler steps ``start .. stop-1`` (default: to the end) from ``z`` (the stock pipeline's loop);
    ``corrections[i]`` (an edit-friendly inversion's) is added after step ``i``; ``step_conds[i]`` (a null-text
    inversion's) conditions step ``i`` instead of ``cond``; ``callback`` (see
    ``StepCallback``) after each step, counting network calls from ``nfe``."""
    z = z.to(device=setup.schedule.device, dtype=torch.float32)
    steps = setup.schedule.steps
    if setup.schedule.coupling is not None:
        from .trajectory import sample_trajectory

        calls = [0]

        def model(k: int, x: Tensor) -> Tensor:
            calls[0] += 1
            return setup.denoiser(steps[k], cond)(x)

        with torch.no_grad():
            z = sample_trajectory(setup.schedule, z, model, start=start, stop=stop, history=setup.history)
        if callback is not None:  # the coupled run is one system: reported once, at its last step
            last = (len(steps) if stop is None else stop) - 1
            callback({"phase": "sample", "i": last, "t": steps[last].t, "timestep": steps[last].timestep, "x": z,
                      "residual": None, "nfe": nfe + calls[0]})
        return z
    with torch.no_grad():
        for i in tqdm(range(start, len(steps) if stop is None else stop), desc="sampling", disable=not progress,
                      leave=False):
            step = steps[i]
            z = step.apply(z, setup.denoiser(step, cond if step_conds is None else step_conds[step.index])(z))
            if corrections is not None and corrections[step.index] is not None:
                z = z + corrections[step.index]
            nfe += 1
            if callback is not None:
                callback({"phase": "sample", "i": i, "t": step.t, "timestep": step.timestep, "x": z,
                          "residual": None, "nfe": nfe})
    return z


def _solve_steps(setup: Setup, encoded: Tensor, method: str, options: SolverOptions, progress: bool,
                 warm_start: Optional[str] = None, guess: Any = None,
                 callback: Optional[StepCallback] = None) -> tuple[list[SolveResult], list[Tensor], float]:
    """Solve the implicit equations from the last sampler step to the first.

    ``warm_start``: start each step's solver not from the known latent but from the DDIM-style guess
    made with a predicted model output, so the first iteration is already a corrector.  The prediction
    is free: the model output implied by a solved step is ``(z_next - A z - C) / B`` at its answer.
    ``"last"`` uses the one implied by the step solved just before; ``"linear"`` extrapolates the two
    before it linearly in the timestep.  Which is better depends on the model (measured in
    benchmarks/README.md, section 0), so each model's defaults say which (``ModelDefaults.warm_start``).
    ``"learned"``: ``guess`` (a ``core.inverter.LearnedGuess``) predicts the output from the known next
    latent, the last implied output, the timesteps and the prompt, at every step including the first
    solved one.  ``callback``: see ``StepCallback``.
    """
    if setup.schedule.coupling is not None:  # multistep / second-order: one coupled system (trajectory.py)
        from .trajectory import solve_trajectory

        results, trajectory, outputs, wall = solve_trajectory(setup, encoded, method,
                                                              _trajectory_budget(setup.adapter, options), warm_start)
        setup.history = (trajectory, outputs)
        if callback is not None:  # solved as one system: reported per step after the solve, last step first
            nfe = 0
            for i in reversed(range(len(results))):
                nfe += results[i].nfe
                _report(callback, setup.schedule.steps[i], i, trajectory[i], results[i], nfe)
        return results, trajectory, wall
    spec = get_solver(method)
    precision = float(torch.finfo(setup.adapter.dtype).eps)
    implied: list[tuple[float, Tensor]] = []  # (t, model output implied by the solved step), last two
    steps = setup.schedule.steps
    trajectory: list[Tensor] = [encoded]
    results: list[SolveResult] = []
    z = encoded
    nfe = 0
    t0 = time.perf_counter()
    grad_ctx = torch.enable_grad if spec.needs_grad else torch.no_grad
    bar = tqdm(list(reversed(steps)), desc=f"inverting ({method})", disable=not progress, leave=False)
    for n, step in enumerate(bar):
        z_next = z
        model = setup.denoiser(step)

        def fixed_point_map(zz: Tensor, step=step, z_next=z_next, model=model) -> Tensor:
            return step.fixed_point_map(z_next, model(zz))

        start = z_next
        if warm_start == "learned" and guess is not None and spec.iterates:
            rhs = z_next - (0 if step.C is None else step.C)
            predicted = guess.predict(rhs, implied, step.t, setup.guidance_scale, setup.cond)
            start = step.fixed_point_map(z_next, predicted)
        elif warm_start and implied and spec.iterates:
            start = step.fixed_point_map(z_next, _predicted_output(implied if warm_start == "linear" else implied[-1:],
                                                                   step.t))
        problem = Problem(fn=fixed_point_map, z0=start, guidance_mean=step.guidance_mean_scale * z_next,
                          guidance_beta=step.guidance_beta, precision=precision)
        with grad_ctx():
            res = spec.fn(problem, options)
        results.append(res)
        z = res.z.detach()
        if warm_start and step.B != 0:
            implied = (implied + [(step.t, (z_next - step.A * z - (0 if step.C is None else step.C)) / step.B)])[-2:]
        trajectory.append(z)
        nfe += res.nfe
        if callback is not None:
            _report(callback, step, len(steps) - 1 - n, z, res, nfe)
        if progress:
            bar.set_postfix(status=res.status.value, nfe=nfe)  # the calls so far, as the callback counts them
        if res.status is Status.NONFINITE:
            break
    wall = time.perf_counter() - t0
    results.reverse()
    trajectory.reverse()
    if len(results) < len(steps):  # stopped early on NaN/Inf: pad with the failure for the remaining steps
        results = [results[0]] * (len(steps) - len(results)) + results
        trajectory = [trajectory[0]] * (len(steps) + 1 - len(trajectory)) + trajectory
    return results, trajectory, wall


def _report(callback: StepCallback, step: Any, i: int, z: Tensor, res: SolveResult, nfe: int) -> None:
    residual = res.residual_history[-1] if len(res.residual_history) else None
    callback({"phase": "invert", "i": i, "t": step.t, "timestep": step.timestep, "x": z, "residual": residual,
              "nfe": nfe, "status": res.status})


def _predicted_output(implied: list[tuple[float, Tensor]], t: float) -> Tensor:
    """The model output at timestep ``t``, extrapolated linearly from the last two implied outputs."""
    if len(implied) < 2 or implied[-1][0] == implied[-2][0]:
        return implied[-1][1]
    (t2, m2), (t1, m1) = implied
    return m1 + (m1 - m2) * ((t - t1) / (t1 - t2))


def _auto_warm(warm_start: Any, setup: Setup, iterations: Optional[int] = None) -> Optional[str]:
    """The warm start mode, or None for off.  ``None`` = on without classifier-free guidance, off with
    it (a multistep family's ``guided_warm_start`` where its row has one; on a single-step sampler at
    the model's step count or more, ``ModelDefaults.guided_warm_start`` where it has one): measured on the built-in
    model, the warm start helps at guidance 1 and can hurt at guidance 3-7.5 with few steps
    (benchmarks/README.md, section 4).  ``True`` / on: the model's mode at this
    many ``iterations`` per step (``ModelDefaults.warm_start_by_iterations``, else ``warm_start``);
    ``"last"`` / ``"linear"`` / ``"learned"``: that mode."""
    if warm_start in WARM_STARTS:
        return warm_start
    if warm_start is not None and not isinstance(warm_start, bool):
        raise InputError(f"warm_start must be None, True, False, 'last', 'linear' or 'learned'; got {warm_start!r}")
    guided = getattr(setup.cond, "cfg", False)
    if warm_start is None and guided and setup.schedule.coupling is not None:
        row = scheduler_defaults(setup.adapter.pipe)  # a multistep family measured with it under guidance
        if row.guided_warm_start is not None:
            return row.guided_warm_start
    defaults = setup.adapter.defaults
    guided_mode = getattr(defaults, "guided_warm_start", None)  # a model measured with it under guidance
    if warm_start is None and guided and setup.schedule.coupling is None and guided_mode is not None \
            and len(setup.schedule) >= defaults.num_inference_steps:
        return guided_mode
    on = (not guided) if warm_start is None else warm_start
    by_budget = dict(getattr(defaults, "warm_start_by_iterations", ()) or ())
    return by_budget.get(iterations, defaults.warm_start) if on else None


def _learned_guess(setup: Setup, warm: Optional[str], notes: list[str]) -> tuple[Optional[str], Any]:
    """``(mode, guess)``: the mode that runs, and for ``"learned"`` the inverter saved beside the model.
    Where the learned guess cannot run, the "linear" warm start, with a note saying why: a multistep /
    second-order sampler (solved as one trajectory, ``core/trajectory.py``, which takes "last" /
    "linear" only), no inverter beside the model, or one trained for another network."""
    if warm != "learned":
        return warm, None
    if setup.schedule.coupling is not None:
        notes.append(f"warm_start='learned' is for single-step samplers; {setup.schedule.scheduler_name} is solved "
                     "as one trajectory: used the linear warm start")
        return "linear", None
    from .inverter import load_inverter

    try:
        guess = load_inverter(setup.adapter, strict=True)
    except FileNotFoundError:
        notes.append("no learned inverter beside this model (nrinv train-inverter): used the linear warm start")
        return "linear", None
    except ValueError as exc:
        notes.append(f"the learned inverter was not used ({exc}): used the linear warm start")
        return "linear", None
    return warm, guess


def _own_noises(schedule: Schedule) -> list[Optional[Tensor]]:
    """A result's copy of the schedule's recorded noise: the schedule is cached per pipeline and later
    runs (edit-friendly inversions among them) read its noise, so a user changing a result's must not
    change theirs."""
    return [None if n is None else n.clone() for n in schedule.noises]


def _settings(setup: Setup, method: str, options: SolverOptions, prompt: str, negative_prompt: Optional[str],
              notes: list[str], generator: Optional[torch.Generator]) -> dict[str, Any]:
    """The JSON-ready record of what an inversion did (sidecars, benchmarks)."""
    adapter = setup.adapter
    return {
        "method": method,
        "options": options.to_dict(),
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "num_inference_steps": setup.num_inference_steps,
        "guidance_scale": setup.guidance_scale,
        "seed": setup.seed,
        # "advanced": the generator had drawn before the inversion read it, so its initial seed alone does not
        # give the recorded noise (``result.fresh_generator()`` does)
        "generator": None if generator is None else {
            "device": str(generator.device), "initial_seed": int(generator.initial_seed()),
            "advanced": not torch.equal(generator.get_state(), torch.Generator(device=generator.device)
                                        .manual_seed(generator.initial_seed()).get_state())},
        "height": setup.size[0],
        "width": setup.size[1],
        "model_kind": adapter.defaults.kind,
        "scheduler": setup.schedule.scheduler_name,
        "pipeline": type(adapter.pipe).__name__,
        "dtype": str(adapter.dtype).replace("torch.", ""),
        "device": str(adapter.device),
        "cuda_graphs": adapter.graphs is not None,
        # multistep / second-order samplers: at most this many whole-trajectory sweeps, and how
        # (core/trajectory.py; the options' sweeps / sweep_mode, else the scheduler family's)
        **_trajectory_settings(setup, method, options),
        "notes": list(notes),
    }


def _generator_fields(generator: Optional[torch.Generator]) -> dict[str, Any]:
    """``InversionResult``'s record of the user's generator: its state now (the inversion reads it without
    advancing it, so this is the state the recorded noise was drawn from) and its device."""
    if generator is None:
        return {}
    return {"generator_state": generator.get_state().clone(), "generator_device": str(generator.device)}


def _trajectory_settings(setup: Setup, method: str, options: SolverOptions) -> dict[str, Any]:
    if setup.schedule.coupling is None:
        return {"trajectory_sweeps": None, "trajectory_sweep_mode": None}
    budget = _trajectory_budget(setup.adapter, options)
    # a solver that does not iterate, or steps that never reach back past their own (Heun, KDPM2): the pass only
    sweeps = budget.sweeps if get_solver(method).iterates and setup.schedule.coupling.reaches_back else 0
    return {"trajectory_sweeps": sweeps, "trajectory_sweep_mode": budget.sweep_mode}


def _check_pixels(images: Tensor) -> Tensor:
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise InputError(f"images must be a (B, 3, H, W) tensor in [0, 1]; got "
                         f"{tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}")
    return images


@inversion_parameters
def invert_tensor(
    pipe: Any,
    images: Optional[Tensor] = None,
    prompt: str = "",
    *,
    image_latents: Optional[Tensor] = None,
    height: Optional[int] = None,
    width: Optional[int] = None,
    inversion: InversionOptions,
    progress: bool = False,
    callback: Optional[StepCallback] = None,
    notes: Sequence[str] = (),
) -> InversionResult:
    """Find the noise latent from which ``pipe``'s deterministic sampler regenerates ``images`` (the engine
    of ``nrinv.invert``: tensors in, no image loading).

    Give ``images`` ((1, 3, H, W) in [0, 1]) or an already encoded ``image_latents`` (scaled, in the
    pipeline's latent layout; ``height``/``width`` are then the image size, default the model's).
    The inversion's parameters: :class:`InversionOptions`; ``callback``: see ``StepCallback``.
    ``method="edit_friendly"`` solves each step's noise instead of the implicit equation
    (``core.edit_friendly``): exact at one network call per step, regenerated by the stock pipeline
    through ``result.pipeline_kwargs()``.
    """
    adapter = adapter_for(pipe)
    trajectory_options = _trajectory_options(inversion.method, inversion.options)
    # a trajectory method's "solved" trajectory uses the model's default solver
    solving = inversion if trajectory_options is None else inversion.replace(method=None, options=None)
    method, options = solver_options(adapter, solving)
    negative_prompt, generator = inversion.negative_prompt, inversion.generator
    t0 = time.perf_counter()
    if image_latents is None:
        if images is None:
            raise InputError("pass an image or image latents to invert")
        images = _check_pixels(images)
        size = (int(images.shape[-2]), int(images.shape[-1]))
        adapter.check_size(*size)
        with torch.no_grad():
            encoded = adapter.encode(images)
    else:
        encoded = image_latents.detach().to(device=adapter.device, dtype=torch.float32)
        size = adapter.default_size() if height is None or width is None else (int(height), int(width))
    encode_time = time.perf_counter() - t0
    notes = list(notes) + [n for n in size_notes(*size, adapter.default_size()) if n not in notes]

    # a video model's clip length, per call (the adapter's is per thread): the clip's frames, or the latent's
    frames = None
    if getattr(adapter, "video", False):
        frames = int(images.shape[0]) if images is not None else \
            (int(encoded.shape[2]) - 1) * adapter.temporal_factor + 1
    clip = {} if frames is None else {"frames": frames}
    setup = prepare(adapter, prompt, size=size, num_inference_steps=inversion.num_inference_steps,
                    guidance_scale=inversion.guidance_scale, seed=inversion.seed, negative_prompt=negative_prompt,
                    generator=generator, **clip)
    expected = adapter.latent_shape(*size, batch=encoded.shape[0], **clip)
    if tuple(encoded.shape) != tuple(expected):
        raise InputError(f"latent has shape {tuple(encoded.shape)}, expected {tuple(expected)} for size {size}")

    # a multistep row's budget under guidance (the conditioning of a custom adapter may be None)
    if getattr(setup.cond, "cfg", False) and setup.schedule.coupling is not None:
        method, options = solver_options(adapter, solving, guided=True)
    warm = _auto_warm(inversion.warm_start, setup, getattr(options, "max_iterations", None))
    warm, guess = _learned_guess(setup, warm, notes)
    captured = adapter.capture_time
    if trajectory_options is not None:
        result = _invert_edit_friendly(setup, encoded, trajectory_options, inversion.seed, generator, encode_time,
                                       prompt, negative_prompt, notes, method, options, warm, guess, progress)
        result.total_time = time.perf_counter() - t0
        return result
    results, trajectory, wall = _solve_steps(setup, encoded, method, options, progress, warm, guess, callback)
    capture = adapter.capture_time - captured
    z = trajectory[0]
    return InversionResult(
        scheduler_latents=z,
        latents=adapter.to_pipeline_latents(z, setup.schedule.init_noise_sigma),
        encoded=encoded,
        trajectory=trajectory,
        steps=results,
        noises=_own_noises(setup.schedule),
        nfe=sum(r.nfe for r in results),
        wall_time=wall - capture,
        encode_time=encode_time,
        settings=dict(_settings(setup, method, options, prompt, negative_prompt, list(notes), generator),
                      warm_start=warm if get_solver(method).iterates else None),
        setup=setup,
        capture_time=capture,
        total_time=time.perf_counter() - t0,
        **_generator_fields(generator),
    )


def _invert_edit_friendly(setup: Setup, encoded: Tensor, ef_options: Any, seed: Optional[int],
                          generator: Optional[torch.Generator], encode_time: float, prompt: str,
                          negative_prompt: Optional[str], notes: list[str], method: str, options: SolverOptions,
                          warm: Optional[str], guess: Any, progress: bool) -> InversionResult:
    from types import SimpleNamespace

    from .edit_friendly import invert_edit_friendly

    def solve() -> Any:
        results, trajectory, _ = _solve_steps(setup, encoded, method, options, progress, warm, guess)
        return SimpleNamespace(trajectory=trajectory, nfe=sum(r.nfe for r in results))

    adapter = setup.adapter
    if setup.schedule.coupling is not None:
        raise InputError(f"edit_friendly needs a single-step sampler; {setup.schedule.scheduler_name} reaches back to "
                         "earlier steps: use a solver method, or swap in DDPM / Euler-ancestral / LCM")
    captured = adapter.capture_time
    parts = invert_edit_friendly(setup, encoded, ef_options, seed, solve)
    capture = adapter.capture_time - captured
    trajectory = parts["trajectory"]
    steps = []
    scale = encoded.float().pow(2).mean().sqrt().clamp_min(1e-12)
    for i, d in enumerate(parts["corrections"]):
        steps.append(SolveResult(z=trajectory[i], status=Status.CONVERGED, iterations=1, nfe=1,
                                 residual_history=(d.float().pow(2).mean().sqrt() / scale).reshape(1)))
    z = trajectory[0]
    settings = dict(_settings(setup, EDIT_FRIENDLY, options, prompt, negative_prompt, list(notes), generator),
                    options=ef_options.to_dict(), warm_start=warm if ef_options.trajectory == "solved" else None,
                    additive_correction=round(parts["additive_correction"], 6))
    if ef_options.trajectory == "solved":
        settings["trajectory_solver"] = {"method": method, "options": options.to_dict()}
    return InversionResult(
        scheduler_latents=z, latents=adapter.to_pipeline_latents(z, setup.schedule.init_noise_sigma), encoded=encoded,
        trajectory=trajectory, steps=steps, noises=parts["noises"], nfe=parts["nfe"],
        wall_time=parts["wall_time"] - capture, encode_time=encode_time, settings=settings, setup=setup,
        capture_time=capture, corrections=parts["corrections"], **_generator_fields(generator))


def reconstruct_latent(pipe: Any, result: InversionResult, *, progress: bool = False,
                       callback: Optional[StepCallback] = None) -> Tensor:
    """The final latent ``z_N`` regenerated from an inversion's noise with the same prompt, steps and noise
    (``callback``: see ``StepCallback``)."""
    setup = result.setup
    adapter = adapter_for(pipe)
    if setup is None or (setup.adapter is not adapter and setup.adapter.pipe is not getattr(adapter, "pipe", None)):
        s = result.settings
        setup = prepare(adapter, s["prompt"], size=(s["height"], s["width"]),
                        num_inference_steps=s["num_inference_steps"], guidance_scale=s["guidance_scale"],
                        seed=s["seed"], negative_prompt=s.get("negative_prompt"),
                        generator=None if result.generator_state is None else result.fresh_generator())
    return sample(setup, result.scheduler_latents, progress=progress, corrections=result.corrections,
                  callback=callback, step_conds=result.step_conds)


@inversion_parameters
def invert_tensor_batch(
    pipe: Any,
    images: Tensor,
    prompts: Sequence[str] | str,
    *,
    inversion: InversionOptions,
    progress: bool = False,
    callback: Optional[StepCallback] = None,
    notes: Optional[Sequence[Sequence[str]]] = None,
) -> list[InversionResult]:
    """Invert a batch ``images`` (B, 3, H, W) with one network call per evaluation.

    Solvers treat samples independently (per-sample norms and stopping), so every image gets the
    answer it gets alone, up to float rounding.  Stochastic samplers use the same recorded noise for
    every image, as one-at-a-time inversion with that seed / generator does.  The per-step solver
    stats are those of the batch (residual norms: the worst sample).  A trajectory method (edit-friendly)
    inverts the images one at a time.
    """
    images = _check_pixels(images)
    if isinstance(prompts, str):
        prompts = [prompts] * images.shape[0]
    if len(prompts) != images.shape[0] or not len(prompts):
        raise InputError(f"got {images.shape[0]} images and {len(prompts)} prompts")
    adapter = adapter_for(pipe)
    if _trajectory_options(inversion.method, inversion.options) is not None:  # a trajectory method (edit-friendly)
        return [invert_tensor(adapter, images[i:i + 1], prompt, inversion=inversion, progress=progress,  # builds
                              callback=callback, notes=notes[i] if notes else ())  # each image's own trajectory
                for i, prompt in enumerate(prompts)]
    method, options = solver_options(adapter, inversion)
    negative_prompt, generator = inversion.negative_prompt, inversion.generator
    size = (int(images.shape[-2]), int(images.shape[-1]))
    adapter.check_size(*size)
    t0 = time.perf_counter()
    with torch.no_grad():
        encoded = adapter.encode(images)
    encode_time = time.perf_counter() - t0

    setup = prepare(adapter, prompts[0], size=size, num_inference_steps=inversion.num_inference_steps,
                    guidance_scale=inversion.guidance_scale, seed=inversion.seed, negative_prompt=negative_prompt,
                    generator=generator)
    conds = [adapter.conditioning(p, negative_prompt, setup.guidance_scale, size) for p in prompts]
    batch_setup = Setup(adapter, setup.schedule, Conditioning.cat(conds), size, setup.num_inference_steps,
                        setup.guidance_scale, setup.seed)
    if getattr(batch_setup.cond, "cfg", False) and setup.schedule.coupling is not None:  # guided budget
        method, options = solver_options(adapter, inversion, guided=True)
    warm = _auto_warm(inversion.warm_start, batch_setup, getattr(options, "max_iterations", None))
    batch_notes: list[str] = []
    warm, guess = _learned_guess(batch_setup, warm, batch_notes)
    if batch_notes:  # every image's record says what ran
        notes = [list(n) + batch_notes for n in (notes or [[]] * len(prompts))]
    captured = adapter.capture_time
    results, trajectory, wall = _solve_steps(batch_setup, encoded, method, options, progress, warm, guess, callback)
    capture = adapter.capture_time - captured
    total = time.perf_counter() - t0
    out = []
    for i, prompt in enumerate(prompts):
        single = Setup(adapter, setup.schedule, conds[i], size, setup.num_inference_steps, setup.guidance_scale,
                       setup.seed, None if batch_setup.history is None else
                       tuple([x[i:i + 1] for x in part] for part in batch_setup.history))
        z = trajectory[0][i:i + 1]
        settings = dict(_settings(setup, method, options, prompt, negative_prompt,
                                  list(notes[i]) if notes else [], generator), batch_size=len(prompts),
                        warm_start=warm if get_solver(method).iterates else None)
        out.append(InversionResult(
            scheduler_latents=z, latents=adapter.to_pipeline_latents(z, setup.schedule.init_noise_sigma),
            encoded=encoded[i:i + 1], trajectory=[t[i:i + 1] for t in trajectory], steps=results,
            noises=_own_noises(setup.schedule), nfe=sum(r.nfe for r in results),
            wall_time=(wall - capture) / len(prompts),
            encode_time=encode_time / len(prompts), settings=settings, setup=single,
            capture_time=capture / len(prompts), total_time=total / len(prompts), **_generator_fields(generator)))
    return out
