"""The inversion loop: solve one implicit equation per sampler step, last step first.

Sampling runs ``z_0 = z_T (noise) -> z_1 -> ... -> z_N (image latent)`` with
``z_{i+1} = A_i z_i + B_i m_i(s_i z_i) + C_i`` (``schedulers.py``).  Inversion starts from the
encoded image ``z_N`` and recovers ``z_{N-1}, ..., z_0`` by solving ``z_i = f_i(z_i)`` with a solver
from ``solvers.SOLVERS``.  Every quantity the solver sees is float32, whatever dtype the network
runs in.  This module takes tensors (images in [0, 1], or latents) and returns tensors; loading
images and shaping outputs like diffusers is ``nrinv.api``'s job.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .._version import __version__
from ..errors import InputError
from .adapters import Adapter, Conditioning, adapter_for, size_notes
from .defaults import scheduler_defaults
from .options import Options
from .schedulers import AffineStep, Schedule
from .methods import EDIT_FRIENDLY, METHODS, TRAJECTORY, get_method, make_options
from .solvers import Problem, SolveResult, SolverOptions, Status, get_solver

__all__ = ["InversionOptions", "inversion_parameters", "StepCallback", "Setup", "InversionResult", "invert_tensor",
           "invert_tensor_batch", "reconstruct_latent", "sample", "prepare", "solver_options", "planned_calls",
           "sampler_calls", "check_guidance", "MAX_GUIDANCE"]

#: guidance scales accepted: 0 (no guidance, e.g. SDXL-Turbo) up to this; larger values only blow up the
#: guided prediction (guidance 1e9 gave noise of size 1e5 and a black image)
MAX_GUIDANCE = 50.0
#: warm start modes: see ``_solve_steps``
WARM_STARTS = ("last", "linear", "learned")


def check_guidance(value: Any, what: str = "guidance_scale") -> float:
    """A guidance scale: a finite number in [0, MAX_GUIDANCE]."""
    try:
        g = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number in [0, {MAX_GUIDANCE:g}], got {value!r}") from None
    if not math.isfinite(g) or not 0.0 <= g <= MAX_GUIDANCE:
        raise InputError(f"{what} must be a finite number in [0, {MAX_GUIDANCE:g}], got {value!r}")
    return g


@dataclass(frozen=True)
class InversionOptions(Options):
    """The parameters of an inversion, declared once.

    Every entry point that inverts (``nrinv.invert``, ``invert_batch``, ``edit``, ``interpolate``,
    ``seed_from_images``, the bench harness, the CLI) takes them, either as one object,
    ``inversion=InversionOptions(...)``, or as flat keywords of the same names (a flat keyword
    overrides the object's field).  A name means the same everywhere; ``None`` takes the model's
    default (``nrinv.core.defaults``).

    ``method``: a method of the registry (``core/methods.py``: a per-step solver, or ``edit_friendly``).
    ``num_inference_steps``: sampler steps.
    ``guidance_scale``: the classifier-free guidance the image is inverted (and reconstructed) at;
    where a workflow regenerates at another guidance, that one has its own name
    (``edit_guidance_scale``, ``sample_guidance_scale``).  ``negative_prompt``: the guidance's
    unconditional prompt.  ``max_iterations``: solver iterations per step (not for a solver that
    does not iterate).  ``options``: the solver's options (dict or ``SolverOptions``).
    ``warm_start``: start each step from a model output predicted from the steps solved before (no
    extra network call; see ``_solve_steps``): ``None`` turns it on exactly when no classifier-free
    guidance is used, in the model's mode; ``True`` / ``False`` force it; ``"last"`` / ``"linear"``
    choose the mode.  ``seed`` / ``generator``: the noise stochastic samplers (Euler-ancestral, LCM)
    draw, as the stock pipeline draws it with ``generator`` (read, not advanced), else with
    ``torch.Generator().manual_seed(seed)``.
    """

    method: Optional[str] = None
    num_inference_steps: Optional[int] = None
    guidance_scale: Optional[float] = None
    negative_prompt: Optional[str] = None
    max_iterations: Optional[int] = None
    options: Any = None
    warm_start: Any = None
    seed: int = 0
    generator: Optional[torch.Generator] = None

    @classmethod
    def from_dict(cls, values: Any = None, **overrides: Any) -> InversionOptions:
        """The options of ``values`` (and ``overrides``); a ``generator`` written by :meth:`to_dict` (a dict of
        its device and state) becomes a generator in that state again."""
        values = dict(values or {}, **overrides)
        if isinstance(values.get("generator"), dict):
            values["generator"] = _generator_from_dict(values["generator"])
        try:
            return super().from_dict(values)
        except ValueError as exc:  # a user's argument: InputError, as the entry points raise
            raise InputError(str(exc)) from None

    @classmethod
    def merge(cls, base: Optional[InversionOptions], **flat: Any) -> InversionOptions:
        """``base`` (default: all defaults) with the given flat keywords replacing its fields."""
        if base is None:
            return cls.from_dict(flat)
        if not isinstance(base, InversionOptions):
            raise InputError(f"inversion= takes an InversionOptions, got {type(base).__name__}")
        return base.replace(**flat)

    def replace(self, **changes: Any) -> InversionOptions:
        return dataclasses.replace(self, **type(self).from_dict(changes).given(changes))

    def given(self, names: Any = None) -> dict[str, Any]:
        """The fields named in ``names`` (default: all), as a dict of keyword arguments."""
        return {f: getattr(self, f) for f in (self.field_names() if names is None else names)}

    def to_dict(self) -> dict[str, Any]:
        out = self.given()
        out["options"] = self.options.to_dict() if hasattr(self.options, "to_dict") else self.options
        g = self.generator
        # plain data (JSON-safe) from which from_dict rebuilds a generator in this state
        out["generator"] = None if g is None else {"device": str(g.device), "initial_seed": int(g.initial_seed()),
                                                   "state": g.get_state().tolist()}
        return out


def _generator_from_dict(data: dict) -> torch.Generator:
    """A generator in the state :meth:`InversionOptions.to_dict` recorded (or seeded with its initial seed)."""
    try:
        generator = torch.Generator(device=data.get("device", "cpu"))
        if data.get("state") is not None:
            generator.set_state(torch.tensor(data["state"], dtype=torch.uint8))
        else:
            generator.manual_seed(int(data["initial_seed"]))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"generator: expected what InversionOptions.to_dict writes ({exc})") from None
    return generator


def inversion_parameters(fn: Callable) -> Callable:
    """Give ``fn`` the flat keywords of :class:`InversionOptions`, declared once.

    ``fn`` takes a keyword ``inversion: InversionOptions``; the wrapper takes ``inversion=`` and/or
    the flat keywords, merges them and passes ``fn`` one ``InversionOptions``.  The flat keywords
    appear in the wrapper's signature (``help()``, ``inspect.signature``) just before ``inversion``.
    """
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())
    names = [p.name for p in params]
    clash = set(names) & set(InversionOptions.field_names())
    if clash:
        raise TypeError(f"{fn.__qualname__} writes out inversion parameter(s) {sorted(clash)}; they come from "
                        "InversionOptions")
    at = names.index("inversion")
    flat = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
            for f in dataclasses.fields(InversionOptions)]
    fields = frozenset(InversionOptions.field_names())

    @functools.wraps(fn)
    def wrapper(*args: Any, inversion: Optional[InversionOptions] = None, **kwargs: Any) -> Any:
        given = {k: kwargs.pop(k) for k in list(kwargs) if k in fields}
        return fn(*args, inversion=InversionOptions.merge(inversion, **given), **kwargs)

    own = params[at].replace(default=None, annotation="Optional[InversionOptions]")
    wrapper.__signature__ = sig.replace(parameters=params[:at] + flat + [own] + params[at + 1:])  # type: ignore[attr-defined]
    return wrapper


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
    #: multistep / second-order schedulers: the inverted latents z_0..z_K and model outputs m_0..m_{K-1}
    #: (what the sampler's history holds when an edit re-runs it from the middle)
    history: Optional[tuple[list[Tensor], list[Tensor]]] = None

    def denoiser(self, step: AffineStep, cond: Optional[Conditioning] = None) -> Callable[[Tensor], Tensor]:
        """``z -> m(s z, t)``: the guided network output of sampler step ``step`` (float32)."""
        cond = self.cond if cond is None else cond

        def model(z: Tensor) -> Tensor:
            return self.adapter.denoise(step.input_scale * z, step.timestep, cond)
        return model


class PipelineKwargs(dict):
    """:meth:`InversionResult.pipeline_kwargs`' dict, reusable: a pipeline advances the generator it is
    given, so a dict passed twice drew other noise the second time (another image on a stochastic
    sampler).  Each time it is unpacked (``pipe(prompt, **kwargs)``, ``dict(kwargs)``) or its
    ``"generator"`` is read, that is a fresh one from ``fresh()`` (None: the stored one, as given)."""

    def __init__(self, values: dict, fresh: Optional[Callable[[], torch.Generator]] = None):
        super().__init__(values)
        self._fresh = fresh

    def __getitem__(self, key: Any) -> Any:
        if key == "generator" and self._fresh is not None and dict.__contains__(self, key):
            return self._fresh()
        return super().__getitem__(key)

    def __iter__(self):  # defined, so ``**kwargs`` reads the values through __getitem__
        return super().__iter__()

    def get(self, key: Any, default: Any = None) -> Any:
        return self[key] if key in self else default


@dataclass
class InversionResult:
    """The noise an image inverts to, and how it was found.

    ``latents`` is what ``pipe(latents=...)`` takes (scaled by the scheduler's ``init_noise_sigma``
    where the pipeline multiplies by it, in the pipeline's dtype and device);
    ``scheduler_latents`` is the same noise in the scheduler's units, float32 (``z_0`` of sampling).
    """

    scheduler_latents: Tensor            # z_0 of sampling (the noise), scheduler units, float32
    latents: Tensor                      # the ``latents=`` argument of the stock pipeline
    encoded: Tensor                      # z_N, the encoded image latent
    trajectory: list[Tensor]             # z_0 .. z_N
    steps: list[SolveResult]             # per sampler step i (sampling order)
    noises: list[Optional[Tensor]]       # recorded noise per sampler step (None where none is drawn)
    nfe: int
    wall_time: float                     # seconds spent in the solver loop, graph captures excluded
    encode_time: float
    settings: dict[str, Any]
    setup: Optional[Setup] = field(default=None, repr=False)
    capture_time: float = 0.0            # seconds spent capturing CUDA graphs during this inversion
    total_time: float = 0.0              # seconds of the whole call: encoding, setup, captures and solve
    #: per sampler step, a latent added to the stock step's output (``method="edit_friendly"``; None
    #: for a solved inversion, whose stock regeneration needs nothing but ``latents``)
    corrections: Optional[list[Optional[Tensor]]] = field(default=None, repr=False)
    #: the state (a CPU byte tensor) and device of the ``generator=`` the recorded noise was drawn from, as
    #: the inversion read it (it does not advance it); None where it used ``seed``
    generator_state: Optional[Tensor] = field(default=None, repr=False)
    generator_device: Optional[str] = None
    #: per sampler step, the conditioning whose unconditional embedding the step uses (``method="null_text"``,
    #: ``core.nulltext``); None: every step uses the prompt's own
    step_conds: Optional[list[Any]] = field(default=None, repr=False)

    def fresh_generator(self) -> torch.Generator:
        """A new generator that draws the noise this inversion recorded: the user's generator restored to
        the state the inversion read (on its device), else ``torch.Generator().manual_seed(seed)``.  A
        pipeline advances the generator it is given, so each regeneration needs a fresh one."""
        if self.generator_state is None:
            seed = self.settings.get("seed")
            return torch.Generator().manual_seed(int(seed) if seed is not None else 0)
        generator = torch.Generator(device=self.generator_device or "cpu")
        generator.set_state(self.generator_state)
        return generator

    def pipeline_kwargs(self, generator: Optional[torch.Generator] = None) -> dict[str, Any]:
        """What the stock pipeline needs besides the prompt to regenerate this inversion:
        ``pipe(prompt, **result.pipeline_kwargs())`` (a target prompt instead edits with the same noises).
        ``latents``, ``generator`` (unless given, a fresh one in the state the inversion drew its noise from:
        :meth:`fresh_generator`; the pipeline advances it, so call ``pipeline_kwargs()`` again for each
        run), steps, guidance, size, and for an edit-friendly inversion the ``callback_on_step_end`` that
        applies its corrections.  The dict may be reused: unless ``generator`` is given, each use of it
        (``pipe(prompt, **kwargs)``, ``kwargs["generator"]``) gets a fresh generator (:class:`PipelineKwargs`)."""
        fresh = None if generator is not None else self.fresh_generator
        generator = generator if generator is not None else self.fresh_generator()
        if self.step_conds is not None:
            from .nulltext import pipeline_kwargs

            return PipelineKwargs(pipeline_kwargs(self, generator=generator), fresh)
        if self.corrections is not None:
            from .edit_friendly import pipeline_kwargs

            return PipelineKwargs(pipeline_kwargs(self, generator=generator), fresh)
        s = self.settings
        kwargs = {"latents": self.latents, "generator": generator,
                  "num_inference_steps": s["num_inference_steps"], "guidance_scale": s["guidance_scale"],
                  "height": s["height"], "width": s["width"],
                  # negative-prompt inversion's (the source prompt): the guidance it was solved at
                  **({} if s.get("negative_prompt") is None else {"negative_prompt": s["negative_prompt"]})}
        return PipelineKwargs(kwargs, fresh)

    @property
    def status(self) -> Status:
        return Status.worst(*(s.status for s in self.steps))

    @property
    def ok(self) -> bool:
        """Every step converged (its residual within the solver's ``rtol``/``atol``)."""
        return self.status is Status.CONVERGED

    @property
    def finite(self) -> bool:
        """A usable answer: no step diverged or produced NaN/Inf (a step may have stopped at its
        iteration budget before converging)."""
        return self.status.finite

    def stats(self) -> dict[str, Any]:
        """JSON-ready summary: settings, per-step solver stats, totals."""
        return {
            "version": __version__,
            "settings": self.settings,
            "status": self.status.value,
            "converged": self.ok,
            "nfe": self.nfe,
            "wall_time_s": round(self.wall_time, 4),
            "encode_time_s": round(self.encode_time, 4),
            "graph_capture_time_s": round(self.capture_time, 4),
            "total_time_s": round(self.total_time, 4),
            "steps": [dict(step=i, **s.to_dict()) for i, s in enumerate(self.steps)],
        }


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


def solver_options(pipe: Any, inversion: InversionOptions, *, guided: bool = False) -> tuple[str, SolverOptions]:
    """``(method, options)`` of ``inversion`` with the model's defaults filled in: its method, and its
    iterations per step unless ``max_iterations`` or ``options`` set them (not for a solver that does
    not iterate; a multistep scheduler family's row, ``defaults.SCHEDULER_FAMILIES``, before the model's;
    ``guided``: under classifier-free guidance, the row's ``guided_max_iterations`` where it has one)."""
    adapter = adapter_for(pipe)
    defaults = adapter.defaults
    method = defaults.method if inversion.method is None else inversion.method
    try:
        iterates = get_solver(method).iterates
    except ValueError as exc:  # an unknown method is the user's input, as every entry point raises it
        raise InputError(str(exc)) from None
    options, max_iterations = inversion.options, inversion.max_iterations
    given = options.to_dict() if hasattr(options, "to_dict") else dict(options or {})
    overrides = {} if max_iterations is None else {"max_iterations": int(max_iterations)}
    if iterates and "max_iterations" not in given and not overrides:
        row = scheduler_defaults(adapter.pipe)
        family = row.guided_max_iterations if guided and row.guided_max_iterations is not None else row.max_iterations
        overrides["max_iterations"] = defaults.max_iterations if family is None else family
    return method, make_options(method, options, **overrides)


def _planned_schedule(adapter: Adapter, num_inference_steps: Optional[int], size: Optional[tuple[int, int]],
                      seed: Optional[int]) -> Schedule:
    """The probed schedule an inversion with these settings runs (``prepare``'s; cached by the adapter,
    so the inversion that follows reuses it)."""
    steps = int(adapter.defaults.num_inference_steps if num_inference_steps is None else num_inference_steps)
    if steps < 1:
        raise InputError(f"num_inference_steps must be >= 1, got {steps}")
    size = adapter.default_size() if size is None else (int(size[0]), int(size[1]))
    return adapter.schedule(steps, size, seed=seed)


def sampler_calls(pipe: Any, num_inference_steps: Optional[int] = None, *, size: Optional[tuple[int, int]] = None,
                  seed: Optional[int] = 0) -> int:
    """Network calls of one run of ``pipe``'s sampler (a reconstruction, or a regeneration from the
    noise): one per entry of its scheduler's timesteps, read off a copy of the scheduler set to
    ``num_inference_steps`` -- the steps, but ``2 * steps - 1`` for Heun / KDPM2 (two calls a step but
    the last) and ``steps + 1`` for PNDM with ``skip_prk_steps``.  ``size``: the image's (default the
    model's); ``seed``: the noise of a stochastic sampler, as for ``nrinv.invert``."""
    return len(_planned_schedule(adapter_for(pipe), num_inference_steps, size, seed))


def planned_calls(pipe: Any, method: Optional[str] = None, num_inference_steps: Optional[int] = None,
                  max_iterations: Optional[int] = None, *, options: Any = None,
                  size: Optional[tuple[int, int]] = None, seed: Optional[int] = 0,
                  guidance_scale: Optional[float] = None) -> int:
    """The most network calls one ``nrinv.invert`` of ``pipe`` with these settings makes (its
    ``result.nfe`` at most; the solver may stop early once converged), before any reconstruction.

    ``None`` takes what ``nrinv.invert`` takes (``solver_options``): the model's method, and the
    iterations per step of the scheduler family's row, else the model's.  A single-step sampler
    costs ``entries x iterations x calls per iteration``; a coupled one (``core/trajectory.py``) the
    same in its sequential pass (a step of ``e`` entries costs ``e`` calls per evaluation), plus, for
    a multistep sampler solved by an iterating method, the check of every entry's true residual (one
    call per entry) and up to ``sweeps`` whole-trajectory sweeps (the options', else the family's) of
    one call per entry each ("gauss_seidel": a one-iteration re-solve per step, and one more check).
    Entries: ``sampler_calls``.  A trajectory method (edit-friendly) costs one call per
    entry, plus the default solve for ``trajectory="solved"``.  ``guidance_scale`` (None: the model's) above 1
    counts a multistep row's guided budget (an upper bound where the model is guidance-distilled)."""
    adapter = adapter_for(pipe)
    schedule = _planned_schedule(adapter, num_inference_steps, size, seed)
    entries = len(schedule)
    trajectory_options = _trajectory_options(method, options)
    if trajectory_options is not None:
        solved = 0
        if trajectory_options.trajectory == "solved":  # as invert_tensor: the default solver, these iterations
            solved = planned_calls(adapter, None, num_inference_steps, max_iterations, size=size, seed=seed,
                                   guidance_scale=guidance_scale)
        return entries + solved
    guidance = adapter.defaults.guidance_scale if guidance_scale is None else guidance_scale
    method, opts = solver_options(adapter, InversionOptions(method=method, max_iterations=max_iterations,
                                                            options=options),
                                  guided=schedule.coupling is not None and float(guidance) > 1)
    spec = get_solver(method)
    per_call = spec.calls_per_iteration(opts)
    calls = entries * (opts.max_iterations if spec.iterates else 1) * per_call
    if schedule.coupling is not None and schedule.coupling.reaches_back and spec.iterates:
        from .trajectory import DEFAULT_SWEEP_ITERATIONS

        budget = _trajectory_budget(adapter, opts)
        # the true residual of every entry after the pass (one call each), then per newton sweep one call per
        # entry; Gauss-Seidel sweeps re-solve every step and are checked once more at their end
        if budget.sweep_mode == "gauss_seidel":
            calls += entries + (budget.sweeps * entries * DEFAULT_SWEEP_ITERATIONS * per_call + entries
                                if budget.sweeps else 0)
        else:
            calls += entries + budget.sweeps * entries
    return calls


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


def _trajectory_budget(adapter: Adapter, options: SolverOptions) -> SolverOptions:
    """``options`` with ``sweeps`` / ``sweep_mode`` filled in from the scheduler family's defaults."""
    family = scheduler_defaults(adapter.pipe)
    fill = {}
    if getattr(options, "sweeps", None) is None:
        fill["sweeps"] = family.sweeps
    if getattr(options, "sweep_mode", None) is None:
        fill["sweep_mode"] = family.sweep_mode
    return dataclasses.replace(options, **fill) if fill else options


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


def _trajectory_options(method: Optional[str], options: Any) -> Any:
    """The options of a trajectory method of the registry (``edit_friendly``), or None for a solver (and for
    ``None``, the model's method: a solver); a baseline with an entry point of its own is refused here."""
    if method is None:
        return None
    entry = get_method(method)
    if not entry.invert:
        raise InputError(f"{method} is a baseline with an entry point of its own ({entry.implementation.lstrip('.')}) "
                         "and a method of nrinv bench; nrinv.invert takes: "
                         f"{', '.join(n for n, m in METHODS.items() if m.invert)}")
    return None if entry.kind != TRAJECTORY else make_options(method, options)


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
