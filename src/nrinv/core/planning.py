"""What an inversion with given settings will run and cost, known before it runs: the method and options it
resolves to (``solver_options``: the model's and the scheduler family's defaults filled in), the trajectory solve's
budget, and the network calls (``planned_calls``, ``sampler_calls``) the app and the bench price it by."""
from __future__ import annotations

import dataclasses
from typing import Any, Optional


from ..errors import InputError
from .adapters import Adapter, adapter_for
from .defaults import scheduler_defaults
from .schedulers import Schedule
from .methods import METHODS, TRAJECTORY, get_method, make_options
from .solvers import SolverOptions, get_solver
from .parameters import InversionOptions


__all__ = ["solver_options", "planned_calls", "sampler_calls"]


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


def _trajectory_budget(adapter: Adapter, options: SolverOptions) -> SolverOptions:
    """``options`` with ``sweeps`` / ``sweep_mode`` filled in from the scheduler family's defaults."""
    family = scheduler_defaults(adapter.pipe)
    fill = {}
    if getattr(options, "sweeps", None) is None:
        fill["sweeps"] = family.sweeps
    if getattr(options, "sweep_mode", None) is None:
        fill["sweep_mode"] = family.sweep_mode
    return dataclasses.replace(options, **fill) if fill else options


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
