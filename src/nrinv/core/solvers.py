"""Root finders for one implicit inversion step, in one registry with one signature.

Notation (written once, here):

* one deterministic sampler step is affine once its noise is fixed:
  ``z_next = A z + B m(z) + C`` with ``m`` the (guided) network output at the unknown ``z``;
* inverting it means solving the implicit equation ``z = f(z)`` with
  ``f(z) = (z_next - B m(z) - C) / A``; one evaluation of ``f`` is one network call (NFE);
* the residual is ``r(z) = z - f(z)``; the inverse is its root;
* GNRI's guidance term keeps ``z`` near the mean of the forward noising step:
  ``G(z) = ||z - mu||_2 / beta`` (DDIM: ``mu = sqrt(a_t / a_{t-1}) z_next``, ``beta = 1 - a_t / a_{t-1}``;
  Euler / flow: ``mu = z_next``, ``beta = 1``).

Every solver is ``solver(problem: Problem, options) -> SolveResult``.  Dimension 0 is the batch:
norms, objectives and convergence tests are per sample, so a batch of images gives the same
answer as the images one at a time.  Arithmetic is float32 (the dtype of ``problem.z0``).
Non-finite values are detected at every evaluation and reported as ``Status.NONFINITE`` together
with the best finite iterate; they are never returned as success.

Residual norms are root-mean-square over a sample's elements, ``||r||_2 / sqrt(D)``; a solve has
converged when ``rms(r(z)) <= atol + rtol * rms(z)`` for every sample, and then returns that ``z`` (the point whose
residual was measured; ``f(z)`` has one about ``||J_f||`` times larger, which exceeds 1 on strongly guided low-noise
steps).  A solve stopped short of convergence returns the solver's own answer (e.g. the best ``f(z^k)``).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from collections.abc import Iterator, Mapping
from typing import Callable, Optional

import torch
from torch import Tensor

from ..errors import InputError
from .methods import METHODS, SOLVER, Method, get_method, make_options
from .method_options import (SWEEP_MODES, AndersonOptions, DDIMOptions, GNRIOptions,  # noqa: F401 (re-exported)
                             NewtonKrylovOptions, RenoiseOptions, SolverOptions)

__all__ = [
    "Status", "Problem", "SolveResult", "SolverOptions", "RenoiseOptions", "GNRIOptions",
    "AndersonOptions", "NewtonKrylovOptions", "SolverSpec", "SOLVERS", "get_solver", "make_options",
]


class Status(str, enum.Enum):
    CONVERGED = "converged"
    MAX_ITERATIONS = "max_iterations"
    DIVERGED = "diverged"
    NONFINITE = "nonfinite"

    @property
    def finite(self) -> bool:
        """A usable answer: converged, or stopped at the iteration budget (no divergence, no NaN/Inf)."""
        return self in (Status.CONVERGED, Status.MAX_ITERATIONS)

    @property
    def converged(self) -> bool:
        return self is Status.CONVERGED

    @staticmethod
    def worst(*statuses: Status) -> Status:
        """The most severe of ``statuses`` (converged < max_iterations < diverged < nonfinite; none: converged):
        what a run of several solves reports."""
        order = (Status.CONVERGED, Status.MAX_ITERATIONS, Status.DIVERGED, Status.NONFINITE)
        return max(statuses, key=order.index, default=Status.CONVERGED)


@dataclass(frozen=True)
class Problem:
    """One implicit step: find ``z`` with ``z = fn(z)``, starting from ``z0``.

    ``precision`` is the relative rounding error of one evaluation of ``fn`` (the network dtype's
    machine epsilon): finite-difference Jacobian products size their step from it.
    """

    fn: Callable[[Tensor], Tensor]
    z0: Tensor
    guidance_mean: Optional[Tensor] = None
    guidance_beta: float = 1.0
    precision: float = float(torch.finfo(torch.float32).eps)


@dataclass
class SolveResult:
    z: Tensor
    status: Status
    iterations: int
    nfe: int
    #: per evaluation, the worst sample's rms residual; kept on the solver's device until read
    residual_history: Tensor = field(default_factory=lambda: torch.zeros(0))
    grad_evals: int = 0

    @property
    def residual_norms(self) -> list[float]:
        return [float(x) for x in self.residual_history.tolist()]

    def to_dict(self) -> dict:
        return {
            "status": self.status.value,
            "iterations": self.iterations,
            "nfe": self.nfe,
            "grad_evals": self.grad_evals,
            "residual_norms": self.residual_norms,
        }


# ----------------------------------------------------------------------------------- helpers


def _bview(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


def _rms(x: Tensor) -> Tensor:
    return x.flatten(1).pow(2).mean(1).sqrt()


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a.flatten(1).double() * b.flatten(1).double()).sum(1)


def _finite_or_inf(rms: Tensor) -> Tensor:
    return torch.where(torch.isfinite(rms), rms, torch.full_like(rms, float("inf")))


class _Tracker:
    """Bookkeeping shared by the solvers: NFE, residual history, best iterate, stopping tests.

    Everything stays on the device: the host reads it once per stopping test (``check``), as one
    small tensor of flags, and once at the end.  A non-finite evaluation is never offered as the
    answer; it is reported as ``Status.NONFINITE`` at the next test.
    """

    def __init__(self, problem: Problem, options: SolverOptions):
        self.problem = problem
        self.options = options
        self.nfe = 0
        self.grad_evals = 0
        self.iterations = 0
        self.norms: list[Tensor] = []
        self.first: Optional[Tensor] = None
        self.best_z: Tensor = problem.z0
        self.best_rms: Optional[Tensor] = None
        self.nonfinite: Optional[Tensor] = None
        #: per sample, the first iterate whose measured residual passed the convergence test (what a converged
        #: sample returns: what it returns alone, where it would have stopped, whatever the rest of its batch
        #: needs), and which samples have passed
        self.passed: Optional[Tensor] = None
        self.passed_mask: Optional[Tensor] = None

    def evaluate(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """f(z), r(z) and rms(r) per sample."""
        fz = self.problem.fn(z)
        self.nfe += 1
        return (fz,) + self.record(z, fz)

    def record(self, z: Tensor, fz: Tensor) -> tuple[Tensor, Tensor]:
        self.iterations += 1
        r = z - fz
        rms = _rms(r.detach())
        bad = ~torch.isfinite(rms)
        self.nonfinite = bad if self.nonfinite is None else self.nonfinite | bad
        self.norms.append(rms.max())
        if self.first is None:
            self.first = rms
        return r, rms

    def flag_nonfinite(self, x: Tensor) -> None:
        """Mark the samples of ``x`` holding NaN/Inf (e.g. a Jacobian product) as non-finite."""
        bad = ~torch.isfinite(x.detach().flatten(1)).all(1)
        self.nonfinite = bad if self.nonfinite is None else self.nonfinite | bad

    def offer(self, candidate: Tensor, rms: Tensor) -> None:
        """Keep, per sample, the finite candidate with the smallest residual (the start ``z0`` until one is
        offered: a first evaluation that is already NaN/Inf never becomes the answer)."""
        candidate = candidate.detach()
        rms = _finite_or_inf(rms)
        if self.best_rms is None:
            self.best_rms = torch.full_like(rms, float("inf"))
            if rms.isfinite().all():
                self.best_z, self.best_rms = candidate, rms
                return
        better = rms < self.best_rms
        self.best_z = torch.where(_bview(better, candidate), candidate, self.best_z)
        self.best_rms = torch.where(better, rms, self.best_rms)

    def due(self, iteration: int) -> bool:
        """Whether iteration ``iteration`` (0-based) ends with a stopping test."""
        o = self.options
        return (iteration + 1) % o.check_every == 0 or iteration + 1 >= o.max_iterations

    def check(self, rms: Tensor, z: Tensor) -> Optional[Status]:
        """The stopping test: one host read of (converged, diverged, non-finite)."""
        o = self.options
        assert self.first is not None and self.nonfinite is not None
        z = z.detach()
        ok = rms <= o.atol + o.rtol * _rms(z)
        if self.passed is None:
            self.passed, self.passed_mask = z, ok
        else:
            new = ok & ~self.passed_mask
            self.passed = torch.where(_bview(new, z), z, self.passed)
            self.passed_mask = self.passed_mask | ok
        converged = self.passed_mask.all()
        diverged = (rms > o.divergence_factor * self.first.clamp_min(1e-30)).any()
        flags = torch.stack([self.nonfinite.any(), diverged, converged]).tolist()
        if flags[0]:
            return Status.NONFINITE
        if flags[1]:
            return Status.DIVERGED
        if flags[2]:
            # the residual measured is that of z, not of f(z): f(z)'s is about ||J_f|| times it, larger where the
            # step expands (guided steps near the image, ||J_f|| ~ 3 on the trained model at guidance 7.5)
            return Status.CONVERGED
        return None

    def result(self, status: Status, z: Optional[Tensor] = None) -> SolveResult:
        if status is Status.CONVERGED and self.passed is not None:
            z = self.passed  # the points whose residuals were measured within tolerance (a status is a promise)
        elif status is Status.NONFINITE or z is None:
            z = self.best_z
        if status is not Status.CONVERGED and self.passed_mask is not None and bool(self.passed_mask.any()):
            z = torch.where(_bview(self.passed_mask, z), self.passed, z)  # the samples that passed: as alone
        history = torch.stack(self.norms) if self.norms else self.best_z.new_zeros(0)
        return SolveResult(z=z.detach(), status=status, iterations=self.iterations, nfe=self.nfe,
                           residual_history=history.detach(), grad_evals=self.grad_evals)


def _solver(body: Callable[[Problem, SolverOptions, _Tracker], SolveResult]):
    """Wrap a solver body ``body(problem, options, tracker)`` as ``solver(problem, options)``."""

    def solver(problem: Problem, options: SolverOptions) -> SolveResult:
        return body(problem, options, _Tracker(problem, options))

    solver.__name__ = body.__name__
    solver.__doc__ = body.__doc__
    return solver


# ----------------------------------------------------------------------------------- solvers
@_solver
def ddim(problem: Problem, options: SolverOptions, t: _Tracker) -> SolveResult:
    """DDIM inversion: ``z = f(z0)``, the model evaluated at the known latent (1 NFE, biased)."""
    fz, _, rms = t.evaluate(problem.z0)
    t.offer(fz, rms)
    status = t.check(rms, problem.z0)
    return t.result(status or Status.MAX_ITERATIONS, fz)


@_solver
def fixed_point(problem: Problem, options: SolverOptions, t: _Tracker) -> SolveResult:
    """Fixed-point iteration ``z <- f(z)`` (AIDI / ReNoise family); returns the best ``f(z^k)``."""
    z = problem.z0
    for k in range(options.max_iterations):
        fz, _, rms = t.evaluate(z)
        t.offer(fz, rms)
        if t.due(k) and (status := t.check(rms, z)) is not None:
            return t.result(status)
        z = fz
    return t.result(Status.MAX_ITERATIONS)


@_solver
def renoise(problem: Problem, options: RenoiseOptions, t: _Tracker) -> SolveResult:
    """ReNoise: fixed point whose answer averages the last ``average_last`` evaluations of f.

    f is affine in the model output, so averaging f(z^k) equals averaging the model outputs
    (Garibi et al. 2024, Sec. 3).
    """
    z = problem.z0
    recent: list[Tensor] = []
    status = Status.MAX_ITERATIONS
    for k in range(options.max_iterations):
        fz, _, rms = t.evaluate(z)
        t.offer(fz, rms)
        recent = (recent + [fz.detach()])[-options.average_last:]
        if t.due(k) and (stop := t.check(rms, z)) is not None:
            if stop is not Status.CONVERGED:
                return t.result(stop)
            status = stop
            break
        z = fz
    return t.result(status, torch.stack(recent).mean(0))


def _guidance(problem: Problem, z: Tensor, lam: float) -> tuple[Tensor, Tensor]:
    """lam * G(z) per sample and its gradient; zero when the problem has no guidance mean."""
    if problem.guidance_mean is None or lam == 0:
        return z.new_zeros(z.shape[0]), torch.zeros_like(z)
    d = z - problem.guidance_mean
    norm = d.flatten(1).norm(dim=1)
    value = lam * norm / problem.guidance_beta
    grad = lam * d / (_bview(norm.clamp_min(1e-12), d) * problem.guidance_beta)
    return value, grad


@_solver
def gnri(problem: Problem, options: GNRIOptions, t: _Tracker) -> SolveResult:
    """Guided Newton-Raphson inversion in the published no-backprop form (Samuel et al. 2025, Eq. 9-11).

    Scalar objective ``F(z) = ||r(z)||_1 + lam G(z)``; Newton-Raphson on a scalar function of a
    vector, elementwise ``z <- z - (F / D) / (dF/dz + eta)``, with the Jacobian of f treated as 0 so
    ``d||r||_1/dz = sign(r)``.  Returns the ``f(z^k)`` whose iterate had the lowest residual.
    With ``backtrack``, a sample whose objective grew goes back to its previous point with half
    the previous step instead (per sample; no extra NFE).
    """
    z = problem.z0
    numel = z[0].numel()
    previous: Optional[tuple[Tensor, Tensor, Tensor]] = None  # (point, objective, step) of the last accepted iterate
    for k in range(options.max_iterations):
        fz, r, rms = t.evaluate(z)
        t.offer(fz, rms)
        if t.due(k) and (status := t.check(rms, z)) is not None:
            return t.result(status)
        g_value, g_grad = _guidance(problem, z, options.lam)
        objective = r.abs().flatten(1).sum(1) + g_value
        slope = torch.sign(r) + g_grad
        # Elementwise Newton division F / (D dF/dz), regularised as slope / (slope^2 + eta): equal to
        # 1 / slope where |slope| >> sqrt(eta), bounded where the guidance gradient cancels sign(r).
        step = _bview(objective / numel, z) * slope / (slope * slope + options.eta)
        # sign(r) = 0 means that element already solves its equation: leave it in place.
        step = torch.where(r == 0, torch.zeros_like(step), step)
        base = z
        if options.backtrack and previous is not None:
            worse = objective > previous[1]
            wv = _bview(worse, z)
            base = torch.where(wv, previous[0], z)
            step = torch.where(wv, 0.5 * previous[2], step)
            objective = torch.where(worse, previous[1], objective)
        previous = (base, objective, step)
        z = base - step
    return t.result(Status.MAX_ITERATIONS)


def _backprop_attention():
    """Attention kernels for a pass that is back-propagated: every one but cuDNN's (the only change of
    kernel between the no-grad and the backward passes; gnri_grad on Flux bf16 ended in an illegal
    memory access on an H100, 2026-11-26), as ``_jvp`` keeps to the math kernel for forward mode."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


@_solver
def gnri_grad(problem: Problem, options: GNRIOptions, t: _Tracker) -> SolveResult:
    """GNRI's objective with its exact gradient, back-propagated through the network.

    Newton-Raphson for the scalar equation F(z) = 0 along its gradient (the minimum-norm Newton
    step) ``z <- z - F / (||grad F||^2 + eta) * grad F``.  With the Jacobian of f set to 0,
    ``grad F = sign(r)`` and this is exactly the published elementwise update of ``gnri``.
    """
    z = problem.z0.detach()
    for k in range(options.max_iterations):
        with torch.enable_grad(), _backprop_attention():
            zr = z.detach().requires_grad_(True)
            fz = problem.fn(zr)
            t.nfe += 1
            r = zr - fz
            g_value, _ = _guidance(problem, zr, options.lam)
            objective = r.abs().flatten(1).sum(1) + g_value
            (grad,) = torch.autograd.grad(objective.sum(), zr)
        t.grad_evals += 1
        fz = fz.detach()
        _, rms = t.record(z, fz)
        t.offer(fz, rms)
        if t.due(k) and (status := t.check(rms, z)) is not None:
            return t.result(status)
        # a non-finite gradient makes the next iterate non-finite: caught at the next evaluation
        denom = grad.flatten(1).pow(2).sum(1) + options.eta
        z = z - _bview(objective.detach() / denom, z) * grad
    return t.result(Status.MAX_ITERATIONS)


def anderson_coefficients(columns: list[Tensor], residual: Tensor, regularization: float) -> Tensor:
    """Anderson mixing's least squares, per sample: the ``gamma`` (B, m) minimising
    ``||residual - sum_i gamma_i columns[i]||_2`` over the ``m`` difference columns (each (B, ...) like
    ``residual``), Tikhonov-regularised by ``regularization`` times the mean of the Gram diagonal.  The
    m x m system is formed from per-sample dot products accumulated in float64 (no stacked copy of the
    columns: a whole video trajectory is large) and solved in float64; NaN is zeroed (a NaN sample is
    reported by the caller)."""
    m = len(columns)
    dot = lambda a, b: (a * b).flatten(1).sum(1, dtype=torch.float64)  # noqa: E731 - (B,)
    gram = torch.stack([torch.stack([dot(columns[i], columns[j]) for j in range(m)], 1) for i in range(m)], 1)
    rhs = torch.stack([dot(columns[i], residual) for i in range(m)], 1)[:, :, None]  # (B, m, 1)
    scale = gram.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-30)
    eye = torch.eye(m, dtype=gram.dtype, device=gram.device)
    gram = gram + regularization * scale[:, None, None] * eye
    return torch.linalg.solve(torch.nan_to_num(gram), torch.nan_to_num(rhs))[:, :, 0]


def anderson_combination(gamma: Tensor, columns: list[Tensor]) -> Tensor:
    """``sum_i gamma[:, i] columns[i]`` per sample, in the columns' dtype."""
    out = torch.zeros_like(columns[0])
    for i, col in enumerate(columns):
        out += gamma[:, i].to(col.dtype).reshape((-1,) + (1,) * (col.dim() - 1)) * col
    return out


@_solver
def anderson(problem: Problem, options: AndersonOptions, t: _Tracker) -> SolveResult:
    """Anderson acceleration of ``z <- f(z)`` (Walker & Ni 2011, type II), per sample.

    ``g_k = f(z_k) - z_k``; gamma minimises ``||g_k - dG gamma||`` over the last ``history``
    differences; ``z_{k+1} = z_k + beta g_k - (dZ + beta dG) gamma``.  A sample's history restarts
    when its residual jumps by ``restart_factor``.  The answer is the best evaluated ``f(z_k)`` or the
    last extrapolation ``z_bar + g_bar`` (``z_bar = z_k - dZ gamma``, ``g_bar = g_k - dG gamma``, the
    mixed point and its linearised residual), whichever has the smaller (predicted) residual: with
    the extrapolation kept, the last iteration's mixing is not thrown away.
    """
    z = problem.z0
    beta = options.mixing
    d_z: list[Tensor] = []
    d_g: list[Tensor] = []
    prev: Optional[tuple[Tensor, Tensor, Tensor]] = None
    extrapolated: Optional[tuple[Tensor, Tensor]] = None
    for k in range(options.max_iterations):
        fz, r, rms = t.evaluate(z)
        t.offer(fz, rms)
        if t.due(k) and (status := t.check(rms, z)) is not None:
            return t.result(status)
        g = -r
        if prev is not None:
            pz, pg, prms = prev
            # per sample: a residual jump clears that sample's history (its columns become zero)
            keep = (rms <= options.restart_factor * prms)[:, None]  # False for NaN too
            clear = lambda col: torch.where(keep, col, torch.zeros_like(col))
            d_z = [clear(col) for col in d_z] + [clear((z - pz).flatten(1).double())]
            d_g = [clear(col) for col in d_g] + [clear((g - pg).flatten(1).double())]
            d_z, d_g = d_z[-options.history:], d_g[-options.history:]
        prev = (z, g, rms)
        if not d_g:
            z = z + beta * g
            continue
        gamma = anderson_coefficients(d_g, g.flatten(1).double(), options.regularization)
        z_bar = z - anderson_combination(gamma, d_z).to(z.dtype).reshape(z.shape)
        g_bar = g - anderson_combination(gamma, d_g).to(z.dtype).reshape(z.shape)
        z = z_bar + beta * g_bar
        extrapolated = (z_bar + g_bar, _rms(g_bar))
    if extrapolated is not None:
        t.offer(*extrapolated)
    return t.result(Status.MAX_ITERATIONS)


def _fd_step(problem: Problem, options: NewtonKrylovOptions) -> float:
    if options.fd_eps is not None:
        return options.fd_eps
    return max(1e-3, 2.0 * problem.precision ** 0.5)


def _jvp(problem: Problem, options: NewtonKrylovOptions, z: Tensor, fz: Tensor, v: Tensor) -> Tensor:
    """J_f(z) v, by forward difference or forward-mode autodiff."""
    if options.jvp == "autograd":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        # forward-mode AD is implemented for the math attention kernel only (not flash / mem-efficient)
        with torch.enable_grad(), sdpa_kernel([SDPBackend.MATH]):
            _, out = torch.func.jvp(problem.fn, (z,), (v,))
        return out.detach()
    h = _fd_step(problem, options) * _bview(_rms(z).clamp_min(1.0) / _rms(v).clamp_min(1e-30), z)
    return (problem.fn(z + h * v) - fz) / h


def _least_squares(a: Tensor, b: Tensor) -> Tensor:
    """The minimum-norm least-squares solution of ``a y = b`` (batched), rank-safe on every device.

    GMRES's Hessenberg matrix loses rank when the Krylov space is exhausted (a vanishing column: the
    residual already lies in the space built so far).  ``torch.linalg.lstsq`` on CUDA has only the
    ``gels`` driver, which assumes full rank and returns inf/NaN there (the CPU's ``gelsy`` copes);
    the pseudo-inverse from an SVD, with singular values below ``max(m, n) * eps * s_max`` dropped
    (LAPACK's ``gelsd`` cutoff), gives the same answer as ``gelsy`` / ``gelsd`` on every device.
    """
    u, s, vh = torch.linalg.svd(a, full_matrices=False)
    cutoff = s[..., :1] * (max(a.shape[-2:]) * torch.finfo(s.dtype).eps)
    keep = s > cutoff
    inv = torch.where(keep, 1.0 / torch.where(keep, s, torch.ones_like(s)), torch.zeros_like(s))
    return vh.mH @ (inv[..., None] * (u.mH @ b))


@_solver
def newton_krylov(problem: Problem, options: NewtonKrylovOptions, t: _Tracker) -> SolveResult:
    """Jacobian-free Newton-Krylov on ``r(z) = z - f(z) = 0`` (Knoll & Keyes 2004).

    Each Newton step solves ``(I - J_f) dz = -r`` by GMRES(``krylov_dim``) from ``dz = 0``, per sample,
    using only products ``J_f v``.  The returned iterate is the last Newton update when the linear
    model predicts a smaller residual than any evaluated ``f(z^k)``.
    """
    z = problem.z0.detach()
    k_dim = options.krylov_dim
    last_estimate: Optional[tuple[Tensor, Tensor]] = None
    for k in range(options.max_iterations):
        fz, r, rms = t.evaluate(z)
        fz = fz.detach()
        t.offer(fz, rms)
        if t.due(k) and (status := t.check(rms, z)) is not None:
            return t.result(status)
        # GMRES on A dz = b, A v = v - J_f v, b = -r.
        b = -r.detach()
        beta0 = _rms(b) * (b[0].numel() ** 0.5)
        basis = [b / _bview(beta0.clamp_min(1e-30).to(b.dtype), b)]
        hess = z.new_zeros(z.shape[0], k_dim + 1, k_dim, dtype=torch.float64)
        for j in range(k_dim):
            jv = _jvp(problem, options, z, fz, basis[j])
            if options.jvp == "fd":
                t.nfe += 1
            else:
                t.grad_evals += 1
            t.flag_nonfinite(jv)
            w = basis[j] - jv
            for i in range(j + 1):
                h_ij = _dot(w, basis[i])
                hess[:, i, j] = h_ij
                w = w - _bview(h_ij.to(w.dtype), w) * basis[i]
            h_next = w.flatten(1).double().norm(dim=1)
            hess[:, j + 1, j] = h_next
            basis.append(w / _bview(h_next.clamp_min(1e-30).to(w.dtype), w))
        rhs = z.new_zeros(z.shape[0], k_dim + 1, 1, dtype=torch.float64)
        rhs[:, 0, 0] = beta0.double()
        hess = torch.nan_to_num(hess)  # a NaN product is reported by the tracker; keep the solve defined
        y = _least_squares(hess, rhs)  # (B, k, 1)
        dz = sum(_bview(y[:, j, 0].to(z.dtype), z) * basis[j] for j in range(k_dim))
        predicted = (rhs - hess @ y).flatten(1).norm(dim=1) / (b[0].numel() ** 0.5)
        z = z + dz
        last_estimate = (z, predicted.to(rms.dtype))
    assert last_estimate is not None
    t.offer(*last_estimate)
    return t.result(Status.MAX_ITERATIONS)


# ----------------------------------------------------------------------------------- registry
#: the registry's solvers (``core/methods.py`` holds every method and its facts; this is its solver view)
class _SolverView(Mapping):
    """The registry's per-step solvers, read from ``METHODS`` at each use (a solver added there is in it)."""

    def __getitem__(self, name: str) -> Method:
        method = METHODS[name]
        if method.kind != SOLVER:
            raise KeyError(name)
        return method

    def __iter__(self) -> Iterator[str]:
        return (name for name, m in METHODS.items() if m.kind == SOLVER)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"SOLVERS({', '.join(self)})"


SOLVERS: Mapping[str, Method] = _SolverView()
#: the registry's entry type, under the name the solvers' callers know
SolverSpec = Method


def get_solver(name: str) -> Method:
    """The registry entry of the per-step solver ``name``; anything else is an ``InputError`` naming them."""
    method = get_method(name)
    if method.kind != SOLVER:
        raise InputError(f"{name} builds a trajectory, it does not solve one step; per-step solvers: "
                         f"{', '.join(SOLVERS)}")
    return method
