"""Inversion of multistep and second-order samplers: the coupled implicit system of a whole trajectory.

With the step model of ``schedulers.Coupling``, ``z_{k+1} = sum_{j<=k} (A_kj z_j + B_kj m_j) + C_k``,
the equation of sampler step ``(a, b)`` (entries ``a .. b``, ``b > a`` for Heun / KDPM2 / PLMS's
first step) fixes its starting latent ``z_a`` given the next latent ``z_{b+1}`` *and* the latents and
outputs of earlier steps ``j < a``, which in inversion order are not solved yet.  We solve it as:

1. **A sequential pass** in inversion order.  Each step's unknown history is extrapolated from the
   step being solved: the scheduler's stored history (its data prediction ``a_j z_j + b_j m_j``, read
   off by the probe) is taken equal to this step's, with ``m_j = m_a`` -- the first-order (DDIM)
   assumption, under which DPM-Solver++ steps become DDIM steps; with step a+1 solved, the data
   prediction is extrapolated to the adjacent step (linearly, or through the next two solved steps
   where the scheduler family's ``history_order`` is 2), in the log-SNR ``lambda`` where the
   scheduler gives it (``Coupling.log_snr``: DPM-Solver's multistep formulas are linear in it, Lu et
   al. 2022, "DPM-Solver++", eq. for the 2M step), else in t (PNDM, LMS).  The unknown ``z_a`` is
   solved with any solver of ``solvers.SOLVERS`` on the fixed-point map
   ``f(z_a) = z_a + (z_{b+1} - step(z_a, ...)) / A_eff`` (``A_eff``: the step's total linear
   coefficient on ``z_a``), which costs ``b - a + 1`` network calls per evaluation.
2. **The check**, for schedulers whose steps reach back past their own step (multistep): the pass solved
   each step against an extrapolated history, so its per-step residuals say nothing about the true
   system.  One call per entry evaluates the output at every latent and every entry's true residual
   ``R_k = z_{k+1} - step_k(z, m)``; a step's status is *converged* exactly when each of its entries
   meets ``atol + rtol rms(z_{k+1})`` there.
3. **Sweeps** (same schedulers), each followed by the same check: the correction ``dZ = -J^{-1} R``
   with ``J`` the entries' ``A`` coefficients (the coupling through earlier latents -- large for
   data-prediction multistep steps, ``x0 = (z - sigma eps) / alpha`` -- solved exactly; the output's
   dependence on the latent left to the iteration, as fixed point does), Anderson-mixed over sweeps
   (``sweep_mode="newton"``), or per-step re-solves with the latest neighbours (``"gauss_seidel"``).
   They stop when every entry meets its tolerance, when the sweeps run out, when every sample still
   moving is at twice its best total residual, or on NaN/Inf (status nonfinite) or divergence past
   ``divergence_factor`` (status diverged).  Per sample, the checked trajectory with the smallest
   total residual is returned, with the outputs at its latents as the stored history (so re-running
   the sampler from any entry is the sampler's own step).  Measured on a tiny SD at 10 steps, 6
   sweeps: DPM++ 2M 7e-5, PNDM 3.5e-4, UniPC 5.9e-4 relative latent error; Gauss-Seidel sweeps can
   diverge (the oracle's DPM++ 2M: one sweep takes the total residual from 6e-3 to 0.32), and the
   best-kept rule then returns the pass.  How many sweeps, and which mode, are solver options
   (``SolverOptions.sweeps`` / ``sweep_mode``, e.g. ``--option sweeps=0``), else the scheduler family's
   row of ``defaults.SCHEDULER_FAMILIES``: on the trained built-in model the sweeps stall for
   DPM-Solver++ 2M, whose row spends the calls on the pass instead (benchmarks/README.md section 8).
   Known failure: LMS (each step converges against its extrapolated history, and both sweep modes
   diverge from there; the oracle at 20 steps: 0.12 relative error), reported as not converged.

Every network call is counted in the per-step ``nfe`` (a check's or a sweep's calls on the step's first
entry).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional

import torch
from torch import Tensor

from .defaults import SCHEDULER_FAMILIES, scheduler_defaults
from .schedulers import Coupling, Schedule
from .solvers import (Problem, SolveResult, SolverOptions, Status, anderson_coefficients, anderson_combination,
                      get_solver)

__all__ = ["solve_trajectory", "sample_trajectory", "DEFAULT_SWEEPS", "DEFAULT_SWEEP_ITERATIONS"]

#: sweeps after the sequential pass where neither the options nor a scheduler family's row set them, and
#: solver iterations per step in each sweep (benchmarks/README.md, section "multistep samplers")
DEFAULT_SWEEPS = SCHEDULER_FAMILIES[-1][2].sweeps
DEFAULT_SWEEP_ITERATIONS = 1



def _rms(x: Tensor) -> Tensor:
    return x.flatten(1).pow(2).mean(1).sqrt()


def sample_trajectory(schedule: Schedule, z: Tensor, model: Callable[[int, Tensor], Tensor], *, start: int = 0,
                      stop: Optional[int] = None,
                      history: Optional[tuple[list[Tensor], list[Tensor]]] = None) -> Tensor:
    """Run entries ``start .. stop-1`` of a coupled schedule from ``z`` (the stock sampler's loop).

    ``model(k, z)`` is entry ``k``'s model output at ``z``.  Starting past entry 0 needs the
    latents and outputs of the entries before ``start`` (``history = (latents, outputs)``, as an
    inversion records them); they stand for the states the scheduler would hold.
    """
    cp = schedule.coupling
    assert cp is not None
    stop = len(schedule) if stop is None else stop
    zs: dict[int, Tensor] = {}
    ms: dict[int, Tensor] = {}
    if start > 0:
        if history is None:
            raise ValueError("re-running a multistep sampler from the middle needs the latents and outputs of the "
                             "steps before; invert with nrinv in this process first")
        for j in range(start):
            zs[j] = history[0][j].to(z)
            ms[j] = history[1][j].to(z)
    zs[start] = z
    for k in range(start, stop):
        ms[k] = model(k, zs[k])
        zs[k + 1] = cp.combine(k, zs, ms, schedule.steps[k].C)
    return zs[stop]


#: the sweep mode where neither the options nor the scheduler family's defaults name one ("newton":
#: whole-trajectory iterations; "gauss_seidel": per-step re-solves, ``solvers.SWEEP_MODES``), and the
#: Anderson history of the former
DEFAULT_SWEEP_MODE = SCHEDULER_FAMILIES[-1][2].sweep_mode
SWEEP_HISTORY = 3


class _Anderson:
    """Anderson mixing of an iteration ``x -> g(x)`` on whole trajectories (per sample, type II, least
    squares over the last ``history`` differences); returns ``g(x)`` until it has a difference.

    A whole trajectory is large (Wan's default clip: ~0.4 GB per float32 copy), so what is kept is bounded:
    float32 copies of the last ``g(x)`` and residual ``g(x) - x`` and of ``history`` differences of each
    (``2 + 2 history`` copies); the small least-squares system is formed and solved in float64."""

    def __init__(self, history: int):
        self.history = history
        self.last: Optional[tuple[Tensor, Tensor]] = None   # (g(x), g(x) - x) of the last step
        self.df: list[Tensor] = []                         # differences of successive residuals
        self.dg: list[Tensor] = []                         # differences of successive g(x)

    def step(self, x: Tensor, gx: Tensor) -> Tensor:
        if self.history < 1:
            return gx
        g = gx.float()
        f = g - x.float()
        if self.last is not None:
            self.df = (self.df + [f - self.last[1]])[-self.history:]
            self.dg = (self.dg + [g - self.last[0]])[-self.history:]
        self.last = (g, f)
        if not self.df:
            return gx
        gamma = anderson_coefficients(self.df, f, 1e-10)  # the solvers' least squares (B, m), float64
        out = g - anderson_combination(gamma, self.dg)
        return out.to(gx.dtype) if bool(torch.isfinite(out).all()) else gx


@dataclasses.dataclass
class _Evaluation:
    """A whole trajectory checked against the sampler: the outputs ``M[k] = m_k(Z[k])`` at every latent, every
    entry's residual ``R_k = Z[k+1] - step_k(Z, M)`` and, per entry and sample, its rms (``norms``, (K, B))
    and tolerance ``atol + rtol rms(Z[k+1])`` (``tol``)."""

    Z: list[Tensor]
    M: list[Tensor]
    R: list[Tensor]
    norms: Tensor
    tol: Tensor

    @property
    def settled_entries(self) -> Tensor:
        """(K, B): entry k of sample b meets its tolerance (False for NaN)."""
        return self.norms <= self.tol

    @property
    def settled(self) -> Tensor:
        """(B,): every entry of the sample meets its tolerance."""
        return self.settled_entries.all(0)

    def nonfinite(self, groups: list[tuple[int, int]]) -> list[int]:
        """The first entries ``a`` of the groups ``(a, b)`` whose residual is NaN/Inf in some sample."""
        bad = ~torch.isfinite(self.norms)
        return [a for a, b in groups if bool(bad[a:b + 1].any())]

    @property
    def total(self) -> Tensor:
        """(B,): the sum of the entries' rms residuals, inf where any is NaN/Inf."""
        t = self.norms.sum(0)
        return torch.where(torch.isfinite(t), t, torch.full_like(t, float("inf")))


def _evaluate(cp: Coupling, steps: list, models: list, Z: list[Tensor], options: SolverOptions) -> _Evaluation:
    """One network call per entry: the outputs at every latent of ``Z`` and every entry's true residual."""
    n = len(steps)
    with torch.no_grad():
        zs = dict(enumerate(Z))
        ms = {k: models[k](Z[k]).detach() for k in range(n)}
        R = [Z[k + 1] - cp.combine(k, zs, ms, steps[k].C) for k in range(n)]
    norms = torch.stack([_rms(r) for r in R])
    tol = torch.stack([options.atol + options.rtol * _rms(Z[k + 1]) for k in range(n)])
    return _Evaluation(list(Z), [ms[k] for k in range(n)], R, norms, tol)


def _better(best: _Evaluation, new: _Evaluation) -> _Evaluation:
    """Per sample, the evaluation with the smaller total residual (``best`` on ties and NaN)."""
    take = new.total < best.total
    if not bool(take.any()):
        return best
    if bool(take.all()):
        return new

    def pick(x: Tensor, y: Tensor) -> Tensor:
        return torch.where(take.reshape((-1,) + (1,) * (x.dim() - 1)), y, x)

    return _Evaluation([pick(x, y) for x, y in zip(best.Z, new.Z)], [pick(x, y) for x, y in zip(best.M, new.M)],
                       [pick(x, y) for x, y in zip(best.R, new.R)], torch.where(take, new.norms, best.norms),
                       torch.where(take, new.tol, best.tol))


def _merge(a: Optional[SolveResult], b: SolveResult) -> SolveResult:
    """One step's record over the pass and the sweeps: answers and status of the last solve, calls summed."""
    if a is None:
        return b
    history = torch.cat([a.residual_history.to(b.residual_history.device), b.residual_history])
    return dataclasses.replace(b, iterations=a.iterations + b.iterations, nfe=a.nfe + b.nfe,
                               grad_evals=a.grad_evals + b.grad_evals, residual_history=history)

class TrajectorySolve:
    """One coupled-schedule inversion in parts a test can call alone (``solve_trajectory`` runs them all).

    State: the trajectory being solved ``Z`` (``z_0 .. z_K``, ``Z[K]`` the encoded image), the outputs at
    it ``M``, and one ``SolveResult`` record per group (its first entry).  Parts: ``chain`` and ``history``
    (the linear dependence on a group's start, and the history extrapolated from it), ``solve`` (one group's
    implicit equation, with the registry's solver), ``warm`` (its starting point), ``keep`` (store a solve),
    ``evaluate`` (every entry's true residual, one call per entry), the sweeps ``gauss_seidel`` and
    ``newton_sweeps``, ``verify_and_sweep``; ``sequential_pass`` and ``run`` put them together.
    """

    def __init__(self, setup, encoded: Tensor, method: str, options: SolverOptions,
                 warm_start: Optional[str] = None, *, sweeps: Optional[int] = None,
                 sweep_iterations: Optional[int] = None, sweep_mode: Optional[str] = None,
                 history_order: Optional[int] = None):
        self.setup, self.encoded, self.options, self.warm_start = setup, encoded, options, warm_start
        self.schedule: Schedule = self.setup.schedule
        self.cp: Coupling = self.schedule.coupling
        self.order = (scheduler_defaults(setup.adapter.pipe).history_order if history_order is None
                      else int(history_order))
        self.steps = self.schedule.steps
        self.n = len(self.steps)
        self.spec = get_solver(method)
        sweeps = getattr(options, "sweeps", None) if sweeps is None else sweeps
        self.sweeps = DEFAULT_SWEEPS if sweeps is None else int(sweeps)
        sweep_mode = getattr(options, "sweep_mode", None) if sweep_mode is None else sweep_mode
        self.sweep_mode = DEFAULT_SWEEP_MODE if sweep_mode is None else sweep_mode
        self.sweep_iterations = DEFAULT_SWEEP_ITERATIONS if sweep_iterations is None else int(sweep_iterations)
        if not self.spec.iterates:
            self.sweeps = 0
        self.precision = float(torch.finfo(self.setup.adapter.dtype).eps)
        self.grad_ctx = torch.enable_grad if self.spec.needs_grad else torch.no_grad
        self.models = [self.setup.denoiser(step) for step in self.steps]
        self.Z: list[Optional[Tensor]] = [None] * self.n + [self.encoded.float()]
        self.M: list[Optional[Tensor]] = [None] * self.n
        self.records: list[Optional[SolveResult]] = [None] * self.n
        self.tiny = 1e-6

        # where the history is extrapolated along: the log-SNR where the schedule gives it (DPM-Solver's and
        # UniPC's data predictions are modelled as polynomials in it), else the timestep
        self.along = list(self.cp.log_snr) if self.cp.log_snr is not None else [step.t for step in self.steps]

        self.groups = list(reversed(self.cp.groups))  # the pass runs from the last sampling step back

    def chain(self, a: int, b: int) -> dict[int, float]:
        """d z_j / d z_a through the linear parts of the forward equations a .. b-1."""
        d = {a: 1.0}
        for k in range(a, b):
            d[k + 1] = sum(self.cp.A[k][j] * d[j] for j in range(a, k + 1))
        return d

    def stored(self, j: int, z: Tensor, m: Tensor) -> Tensor:
        aj, bj = self.cp.stored[j]
        return aj * z + bj * m

    def history(self, a: int, za: Tensor, ma: Tensor, corrected: bool) -> tuple[dict, dict, dict]:
        """Latents, outputs and d z_j / d z_a of the steps j < a, extrapolated from step a.

        The scheduler's stored output of step j (its data prediction, or the raw output) is taken on
        the line through step a's and step a+1's in ``along`` (constant when a+1 is not solved yet; the
        parabola through a+2's too where ``history_order`` is 2 and a+2 is solved), the raw
        output equal to step a's; the latent follows from the stored output.  ``corrected`` adds the
        difference between the current trajectory and this extrapolation made at the current z_a, so
        that an exact trajectory is a fixed point and only the change of z_a is extrapolated.
        """
        sa, sb = self.cp.stored[a]
        nxt = a + 1 if a + 1 < self.n and self.M[a + 1] is not None and self.Z[a + 1] is not None else None
        o_a = sa * za + sb * ma
        zs, ms, dz = {}, {}, {}
        # one step's length at most: far history (j < a - 1) stays at the adjacent step's extrapolation, so
        # every j < a takes the same stored output o_j, with weight w_a on step a's
        r = 0.0
        if a > 0 and nxt is not None and self.along[nxt] != self.along[a]:
            r = (self.along[a - 1] - self.along[a]) / (self.along[a] - self.along[nxt])
        w_a, o_j = 1.0 + r, o_a
        nxt2 = (a + 2 if nxt is not None and a + 2 < self.n and self.M[a + 2] is not None
                and self.Z[a + 2] is not None else None)
        if (self.order >= 2 and r != 0.0 and nxt2 is not None
                and len({self.along[a], self.along[nxt], self.along[nxt2]}) == 3):
            x, x0, x1, x2 = self.along[a - 1], self.along[a], self.along[nxt], self.along[nxt2]
            w_a = (x - x1) * (x - x2) / ((x0 - x1) * (x0 - x2))
            w_1 = (x - x0) * (x - x2) / ((x1 - x0) * (x1 - x2))
            w_2 = (x - x0) * (x - x1) / ((x2 - x0) * (x2 - x1))
            o_j = (w_a * o_a + w_1 * self.stored(nxt, self.Z[nxt], self.M[nxt])
                   + w_2 * self.stored(nxt2, self.Z[nxt2], self.M[nxt2]))
        elif r != 0.0:
            o_j = o_a + r * (o_a - self.stored(nxt, self.Z[nxt], self.M[nxt]))
        for j in range(a):
            aj, bj = self.cp.stored[j]
            if abs(aj) > self.tiny * abs(bj) and sa != 0:
                zs[j], ms[j], dz[j] = (o_j - bj * ma) / aj, ma, sa * w_a / aj
            else:  # the raw output is stored: extrapolate it, keep the latent
                zs[j], ms[j], dz[j] = za, (o_j - aj * za) / bj if bj != 0 else ma, 1.0
        if corrected:
            base_z, base_m, _ = self.history(a, self.Z[a], self.M[a], False)
            for j in range(a):
                zs[j] = zs[j] + (self.Z[j] - base_z[j])
                ms[j] = ms[j] + (self.M[j] - base_m[j])
        return zs, ms, dz

    def solve(self, a: int, b: int, corrected: bool, iterations: int,
              start: Optional[Tensor]) -> tuple[SolveResult, dict]:
        z_next = self.Z[b + 1]
        d = self.chain(a, b)
        a_eff = sum(self.cp.A[b][j] * d[j] for j in range(a, b + 1))
        if a > 0:
            _, _, dz = self.history(a, z_next, z_next, False)
            a_eff += sum(self.cp.A[b][j] * dz[j] for j in range(a))
        if a_eff == 0:
            raise ValueError(f"{self.schedule.scheduler_name} step {b} does not depend on its starting latent")
        calls = [0]
        last: dict[tuple[str, int], Tensor] = {}  # the last evaluation's outputs and intermediate latents

        def total(za: Tensor, ma: Optional[Tensor] = None) -> Tensor:
            zs: dict[int, Tensor] = {a: za}
            ms: dict[int, Tensor] = {}
            if ma is None:
                ma = self.models[a](za)
                calls[0] += 1
            ms[a] = ma
            if a > 0:
                hz, hm, _ = self.history(a, za, ma, corrected)
                zs.update(hz)
                ms.update(hm)
            for k in range(a, b):
                zs[k + 1] = self.cp.combine(k, zs, ms, self.steps[k].C)
                ms[k + 1] = self.models[k + 1](zs[k + 1])
                calls[0] += 1
            last.clear()
            last.update({("z", k): zs[k] for k in range(a + 1, b + 1)})
            last.update({("m", k): ms[k] for k in range(a, b + 1)})
            return self.cp.combine(b, zs, ms, self.steps[b].C)

        def fixed_point_map(za: Tensor) -> Tensor:
            return za + (z_next - total(za)) / a_eff

        if start is None:
            start = z_next
        mean_scale = 1.0  # GNRI's guidance over the whole step (the product of its entries' for "vp")
        for k in range(a, b + 1):
            mean_scale *= self.steps[k].guidance_mean_scale
        vp = self.steps[a].guidance_beta != 1.0 or self.steps[a].guidance_mean_scale != 1.0
        problem = Problem(fn=fixed_point_map, z0=start, guidance_mean=mean_scale * z_next,
                          guidance_beta=max(1.0 - mean_scale ** 2, 1e-8) if vp else 1.0, precision=self.precision)
        opts = self.options if iterations == self.options.max_iterations else \
            dataclasses.replace(self.options, max_iterations=iterations)
        with self.grad_ctx():
            res = self.spec.fn(problem, opts)
        return dataclasses.replace(res, nfe=calls[0]), last

    def warm(self, a: int, b: int) -> Optional[Tensor]:
        """The pass's starting point from a predicted model output (no network call)."""
        if not self.warm_start or not self.spec.iterates or a != b or a + 1 >= self.n or self.M[a + 1] is None:
            return None
        m_pred = self.M[a + 1]
        if (self.warm_start == "linear" and a + 2 < self.n and self.M[a + 2] is not None
                and self.steps[a + 1].t != self.steps[a + 2].t):
            r = (self.steps[a].t - self.steps[a + 1].t) / (self.steps[a + 1].t - self.steps[a + 2].t)
            m_pred = self.M[a + 1] + (self.M[a + 1] - self.M[a + 2]) * r
        z_next = self.Z[b + 1]
        zs: dict[int, Tensor] = {a: z_next}
        ms: dict[int, Tensor] = {a: m_pred}
        a_eff = self.cp.A[a][a]
        if a > 0:
            hz, hm, dz = self.history(a, z_next, m_pred, False)
            zs.update(hz)
            ms.update(hm)
            a_eff += sum(self.cp.A[a][j] * dz[j] for j in range(a))
        return z_next + (z_next - self.cp.combine(a, zs, ms, self.steps[a].C)) / a_eff

    def keep(self, a: int, b: int, res: SolveResult, last: dict) -> None:
        self.records[a] = _merge(self.records[a], res)
        self.Z[a] = res.z.detach()
        for k in range(a, b + 1):
            self.M[k] = last.get(("m", k))
            if k > a:
                self.Z[k] = last.get(("z", k))

    def evaluate(self, zs_: list[Tensor]) -> _Evaluation:
        """The outputs at every latent of ``zs_`` (one call per entry, counted on its group's first entry)
        and every entry's true residual there (a group not solved yet has no record to charge)."""
        ev = _evaluate(self.cp, self.steps, self.models, zs_, self.options)
        for a, b in self.cp.groups:
            rec = self.records[a]
            if rec is None:
                continue
            worst = ev.norms[a:b + 1].max().reshape(1)
            self.records[a] = dataclasses.replace(
                rec, nfe=rec.nfe + (b - a + 1), iterations=rec.iterations + 1,
                residual_history=torch.cat([rec.residual_history, worst.to(rec.residual_history)]))
        return ev

    def gauss_seidel(self, count: int, best: _Evaluation) -> tuple[_Evaluation, dict[int, Status]]:
        """Per-step re-solves with the latest neighbours (a Gauss-Seidel iteration, which can diverge),
        then the true residual of where they ended; the better of that and ``best`` is kept, per sample."""
        events: dict[int, Status] = {}
        for _ in range(count):
            for a, b in self.groups:
                res, last = self.solve(a, b, True, self.sweep_iterations, self.Z[a])
                self.keep(a, b, res, last)
                if not res.status.finite:
                    events[a] = Status.worst(events.get(a, res.status), res.status)
            if events:
                break
        if any(not bool(torch.isfinite(z).all()) for z in self.Z):
            for a, _ in self.cp.groups:
                events[a] = Status.NONFINITE
            return best, events
        ev = self.evaluate(list(self.Z))
        events.update(dict.fromkeys(ev.nonfinite(self.cp.groups), Status.NONFINITE))
        return _better(best, ev), events

    def newton_sweeps(self, count: int, current: _Evaluation) -> tuple[_Evaluation, dict[int, Status]]:
        """Whole-trajectory iterations from ``current`` (the outputs and residuals at the pass's trajectory):
        the correction that solves the linear part of the whole system exactly (J dZ = -R, J the entries'
        A coefficients: the coupling through earlier latents, which dominates a data-prediction multistep
        step, is not left to the iteration), the model output's dependence treated as fixed-point iteration
        does, Anderson-mixed over iterations; after each, the outputs and true residuals at the new
        trajectory (one call per entry).  Returns the best evaluation per sample and, per group, what
        was met on the way (NaN/Inf, divergence past ``divergence_factor``)."""
        def inverse_jacobian(lam: list[float]) -> list[list[float]]:
            J = torch.zeros(self.n, self.n, dtype=torch.float64)
            for k in range(self.n):
                if k + 1 < self.n:
                    J[k, k + 1] = 1.0
                for j in range(k + 1):
                    J[k, j] -= self.cp.A[k][j] + self.cp.B[k][j] * lam[j]
            return torch.linalg.inv(J).tolist()

        # The model output's dependence on the latent is left to the iteration (lam = 0); a secant
        # estimate per entry was tried and did not help (built-in model, DPM++ 2M 20 steps).
        W = inverse_jacobian([0.0] * self.n)
        mixer = _Anderson(SWEEP_HISTORY)
        best, first = current, current.total
        events: dict[int, Status] = {}
        size = self.Z[0][0].numel()
        flat = lambda zs: torch.cat([z.flatten(1) for z in zs], 1)  # noqa: E731
        for _ in range(count):
            if bool(best.settled.all()):
                break
            stepped = [current.Z[i] - sum(W[i][k] * current.R[k] for k in range(self.n) if W[i][k] != 0.0)
                       for i in range(self.n)]
            mixed = mixer.step(flat(current.Z[:self.n]), flat(stepped))
            # per sample: a settled sample keeps its best trajectory, so a batch gives each image its own answer
            hold = best.settled.reshape((-1,) + (1,) * (self.Z[0].dim() - 1))
            moved = [torch.where(hold, best.Z[i], part.reshape(self.Z[i].shape))
                     for i, part in enumerate(mixed.split(size, dim=1))]
            current = self.evaluate(moved + [current.Z[self.n]])
            nonfinite = current.nonfinite(self.cp.groups)
            # diverged: a sample's total residual past ``divergence_factor`` times the pass's (the solvers' test)
            if bool((current.total > self.options.divergence_factor * first.clamp_min(1e-30)).any()):
                events.update({a: Status.worst(events.get(a, Status.DIVERGED), Status.DIVERGED)
                               for a, _ in self.cp.groups})
            events.update(dict.fromkeys(nonfinite, Status.NONFINITE))
            best = _better(best, current)
            if nonfinite or any(s is Status.DIVERGED for s in events.values()):
                break
            # diverging: every sample still moving is at twice its best total residual
            if bool((current.total > 2 * best.total)[~best.settled].all()):
                break
        return best, events

    def verify_and_sweep(self) -> None:
        """The true residual of every entry at the pass's trajectory, the sweeps, and the per-group status
        of the best trajectory (converged exactly when every entry's residual meets the tolerance)."""
        ev = self.evaluate(list(self.Z))  # type: ignore[arg-type]
        events: dict[int, Status]
        nonfinite = ev.nonfinite(self.cp.groups)
        if self.sweeps > 0 and not bool(ev.settled.all()) and not nonfinite:
            if self.sweep_mode == "gauss_seidel":
                ev, events = self.gauss_seidel(self.sweeps, ev)
            else:
                with torch.no_grad():
                    ev, events = self.newton_sweeps(self.sweeps, ev)
        else:
            events = dict.fromkeys(nonfinite, Status.NONFINITE)
        # the best trajectory and the outputs at it: a re-run from any entry matches a full run
        self.Z[:self.n] = ev.Z[:self.n]
        self.M[:] = ev.M
        for a, b in self.cp.groups:
            rec = self.records[a]
            settled = bool(ev.settled_entries[a:b + 1].all())
            status = Status.CONVERGED if settled else events.get(a, Status.MAX_ITERATIONS)
            if not settled and not rec.status.finite:  # the pass's own failure, not repaired
                status = Status.worst(status, rec.status)
            final = ev.norms[a:b + 1].max().reshape(1).to(rec.residual_history)
            trace = rec.residual_history
            if not len(trace) or not bool(trace[-1] == final[0]):  # the kept trajectory is not the last one
                trace = torch.cat([trace, final])
            self.records[a] = dataclasses.replace(rec, z=self.Z[a], status=status, residual_history=trace)

    def sequential_pass(self) -> None:
        """1. The pass: every group solved once, from the last sampling step back, against the history
        extrapolated from it; stops at NaN/Inf."""
        for a, b in self.groups:
            res, last = self.solve(a, b, False, self.options.max_iterations, self.warm(a, b))
            self.keep(a, b, res, last)
            if res.status is Status.NONFINITE:
                break

    def run(self):
        """The whole inversion: ``(per-entry results, trajectory z_0..z_K, outputs m_0..m_{K-1}, wall)``."""
        t0 = time.perf_counter()
        self.sequential_pass()
        # 2. multistep samplers (steps that reach back past their own group): the true residual of every entry at
        # the pass's trajectory (the pass solved each step against an extrapolated history), then the sweeps, each
        # followed by the same check; the best trajectory is kept and its status reported.  Heun / KDPM2 /
        # single-step groups are independent once solved: their pass residuals are already the true ones.
        complete = all(z is not None for z in self.Z) and all(m is not None for m in self.M)
        if self.cp.reaches_back and complete and self.spec.iterates:
            self.verify_and_sweep()
        elif self.cp.reaches_back:  # a one-evaluation method (ddim): residuals against the extrapolated history
            for a, _ in self.cp.groups:
                if self.records[a] is not None and self.records[a].status is Status.CONVERGED:
                    self.records[a] = dataclasses.replace(self.records[a], status=Status.MAX_ITERATIONS)
        wall = time.perf_counter() - t0

        results: list[SolveResult] = []
        for a, b in self.cp.groups:
            rec = self.records[a]
            if rec is None:  # stopped early on NaN/Inf
                rec = next(r for r in self.records if r is not None)
                rec = dataclasses.replace(rec, nfe=0, iterations=0, grad_evals=0)
            results.append(rec)
            for _ in range(a + 1, b + 1):  # entries computed forward from z_a: their calls are counted at z_a
                results.append(dataclasses.replace(rec, nfe=0, iterations=0, grad_evals=0,
                                                   residual_history=rec.residual_history[:0]))
        trajectory = [z if z is not None else self.encoded.float() for z in self.Z]
        outputs = [m if m is not None else torch.zeros_like(self.encoded, dtype=torch.float32) for m in self.M]
        return results, trajectory, outputs, wall


def solve_trajectory(setup, encoded: Tensor, method: str, options: SolverOptions,
                     warm_start: Optional[str] = None, *, sweeps: Optional[int] = None,
                     sweep_iterations: Optional[int] = None, sweep_mode: Optional[str] = None,
                     history_order: Optional[int] = None):
    """Invert a coupled schedule; returns ``(per-entry results, trajectory z_0..z_K, outputs m_0..m_{K-1}, wall)``.

    ``setup`` is ``inversion.Setup``; ``method``/``options`` the per-step solver (its
    ``max_iterations`` in the sequential pass, ``sweep_iterations`` in each sweep; ``sweeps`` and
    ``sweep_mode`` default to the options' fields, else ``DEFAULT_SWEEPS`` / ``DEFAULT_SWEEP_MODE``).  ``warm_start``
    (``"last"``/``"linear"``) starts single-entry steps of the pass from the output predicted from the
    steps solved before, as ``inversion._solve_steps`` does.
    ``history_order``: the degree of the pass's extrapolation of unsolved history (1: linear through
    this step and the next solved one, 2: quadratic through the next two; None: the scheduler
    family's ``SchedulerDefaults.history_order``).
    """
    return TrajectorySolve(setup, encoded, method, options, warm_start, sweeps=sweeps,
                           sweep_iterations=sweep_iterations, sweep_mode=sweep_mode,
                           history_order=history_order).run()
