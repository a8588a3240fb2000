"""The options of every inversion method (``core/methods.py``'s ``options_class``): frozen dataclasses that reject
unknown keys, torch-free so that the command line lists and checks them before the engine loads.  The solvers'
(``core/solvers.py``), edit-friendly inversion's (``core/edit_friendly.py``) and null-text inversion's
(``core/nulltext.py``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .options import Options

__all__ = ["SWEEP_MODES", "SolverOptions", "DDIMOptions", "RenoiseOptions", "GNRIOptions", "AndersonOptions",
           "NewtonKrylovOptions", "EditFriendlyOptions", "PIVOTS", "NullTextOptions"]


# --------------------------------------------------------------------------------------- options
#: how the sweeps of a multistep sampler's trajectory solve re-solve it (``core/trajectory.py``)
SWEEP_MODES = ("newton", "gauss_seidel")


@dataclass(frozen=True)
class SolverOptions(Options):
    """Options shared by every solver.

    ``max_iterations`` counts outer iterations (one evaluation of ``f`` each, plus the
    Jacobian-vector products of ``newton_krylov``); the solve stops early once converged.
    """

    max_iterations: int = 2
    rtol: float = 1e-4
    atol: float = 1e-6
    divergence_factor: float = 1e3
    #: test convergence / divergence / NaN every ``check_every`` iterations (and after the last);
    #: each test is one read of the device by the host, so on a GPU a larger value keeps the
    #: network calls queued back to back
    check_every: int = 1
    #: multistep samplers (a coupled schedule, ``core/trajectory.py``): at most this many sweeps over the
    #: whole trajectory after the sequential pass, each one network call per step (None: the scheduler
    #: family's default, ``core/defaults.py`` ``SCHEDULER_FAMILIES``); ignored for single-step samplers
    sweeps: Optional[int] = None
    #: how a sweep re-solves: "newton" (whole-trajectory iterations) or "gauss_seidel" (per-step
    #: re-solves with the latest neighbours); None: the scheduler family's default
    sweep_mode: Optional[str] = None

    def __post_init__(self) -> None:
        if not isinstance(self.max_iterations, int) or isinstance(self.max_iterations, bool) or self.max_iterations < 1:
            raise ValueError(f"max_iterations must be an integer >= 1, got {self.max_iterations!r}")
        if self.sweeps is not None and (not isinstance(self.sweeps, int) or isinstance(self.sweeps, bool)
                                        or self.sweeps < 0):
            raise ValueError(f"sweeps must be an integer >= 0, got {self.sweeps!r}")
        if self.sweep_mode is not None and self.sweep_mode not in SWEEP_MODES:
            raise ValueError(f"sweep_mode must be one of {', '.join(SWEEP_MODES)}; got {self.sweep_mode!r}")
        if not isinstance(self.check_every, int) or self.check_every < 1:
            raise ValueError(f"check_every must be an integer >= 1, got {self.check_every!r}")
        if self.rtol < 0 or self.atol < 0:
            raise ValueError("rtol and atol must be >= 0")
        if self.divergence_factor <= 1:
            raise ValueError("divergence_factor must be > 1")


@dataclass(frozen=True)
class DDIMOptions(SolverOptions):
    max_iterations: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_iterations != 1:
            raise ValueError("ddim inversion is a single evaluation; use fixed_point for more iterations")


@dataclass(frozen=True)
class RenoiseOptions(SolverOptions):
    """ReNoise (Garibi et al. 2024): fixed point, returning the average of the last ``average_last`` f(z)."""

    average_last: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.average_last < 1:
            raise ValueError("average_last must be >= 1")


@dataclass(frozen=True)
class GNRIOptions(SolverOptions):
    """GNRI (Samuel et al. 2025): ``lam`` weights the guidance term G, ``eta`` regularises the Newton division."""

    lam: float = 0.1
    eta: float = 1e-4
    #: our safeguard (not in the paper): an iterate whose objective F grew is replaced by the
    #: midpoint back toward the previous one; costs no extra NFE.  False = the published update.
    backtrack: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lam < 0 or self.eta < 0:
            raise ValueError("lam and eta must be >= 0")


@dataclass(frozen=True)
class AndersonOptions(SolverOptions):
    """Anderson acceleration (type II) of the fixed-point map with ``history`` past iterates."""

    history: int = 5
    mixing: float = 1.0
    regularization: float = 1e-10
    restart_factor: float = 10.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.history < 1:
            raise ValueError("history must be >= 1")
        if not 0 < self.mixing <= 1:
            raise ValueError("mixing must be in (0, 1]")


@dataclass(frozen=True)
class NewtonKrylovOptions(SolverOptions):
    """Newton on r(z) = 0, each linear solve (I - J_f) dz = -r by GMRES with ``krylov_dim`` products.

    ``jvp="fd"`` takes J_f v by a forward difference (one extra NFE each); ``"autograd"`` by
    forward-mode differentiation through the network (``torch.func.jvp``).  ``fd_eps`` is the
    difference step relative to the iterate's size; ``None`` sizes it for the network's precision:
    ``max(1e-3, 2 sqrt(eps))`` (1e-3 in float32, 0.0625 in float16, 0.18 in bfloat16), since a step
    below the rounding of the network's inputs measures rounding, not the Jacobian.
    """

    krylov_dim: int = 2
    jvp: str = "fd"
    fd_eps: Optional[float] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.krylov_dim < 1:
            raise ValueError("krylov_dim must be >= 1")
        if self.jvp not in ("fd", "autograd"):
            raise ValueError(f"jvp must be 'fd' or 'autograd', got {self.jvp!r}")
        if self.fd_eps is not None and not self.fd_eps > 0:
            raise ValueError(f"fd_eps must be > 0 (or None: sized for the network's precision), got {self.fd_eps!r}")


@dataclass(frozen=True)
class EditFriendlyOptions(Options):
    """``trajectory``: "forward" (independent forward noising, N calls) or "solved" (the model's default
    deterministic inversion, then N calls); ``trajectory_seed``: the seed of the forward noises
    (default: the inversion's seed + 1); ``pseudo_guidance``: see :func:`edit_sample`."""

    trajectory: str = "forward"
    trajectory_seed: Optional[int] = None
    #: edits: ``z_{i+1} = src_{i+1} + w (edit step - src_{i+1})``, the edit's departure from the source
    #: trajectory amplified by ``w`` at no extra network call (TurboEdit's pseudo-guidance, in our form)
    pseudo_guidance: float = 1.0

    def __post_init__(self) -> None:
        if self.trajectory not in ("forward", "solved"):
            raise ValueError(f"trajectory must be 'forward' or 'solved', got {self.trajectory!r}")


#: where the pivots come from: DDIM inversion at guidance 1 (the paper), the model's default solver at guidance 1,
#: or the model's default solver at the target guidance (the null embeddings then only absorb the residuals of
#: the steps whose equation it could not solve)
PIVOTS = ("naive", "solved", "guided")


@dataclass(frozen=True)
class NullTextOptions(Options):
    """``inner_steps`` Adam steps per sampler step at ``learning_rate`` (the paper: 10 at 1e-2), stopping a step
    early once the loss (mean squared latent error) is below ``tolerance``; ``pivot``: one of ``PIVOTS``;
    ``exact``: add the per-step latent corrections so the regeneration is exact."""

    inner_steps: int = 10
    learning_rate: float = 1e-2
    tolerance: float = 1e-5
    pivot: str = "naive"
    exact: bool = True
    #: optimise a step's null embedding only where the step misses its pivot by more than this (rms, relative
    #: to the image latent's rms); 0: every step (the paper).  Other steps keep the prompt's null embedding.
    threshold: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.inner_steps, int) or self.inner_steps < 0:
            raise ValueError(f"inner_steps must be an integer >= 0, got {self.inner_steps!r}")
        if not self.learning_rate > 0:
            raise ValueError("learning_rate must be > 0")
        if self.pivot not in PIVOTS:
            raise ValueError(f"pivot must be one of {', '.join(PIVOTS)}, got {self.pivot!r}")
        if not self.threshold >= 0:
            raise ValueError("threshold must be >= 0")
