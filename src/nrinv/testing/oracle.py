"""An analytic diffusion model whose exact inverse is known: Gaussian data.

Data ``x ~ N(0, Sigma)`` over the flattened latent (``Sigma = Q diag(s) Q^T``).  A noisy latent is
``z = alpha x + sigma_n eps``; with ``P = alpha^2 Sigma + sigma_n^2 I`` the exact posterior means are
``E[eps | z] = sigma_n P^-1 z`` and ``E[x | z] = alpha Sigma P^-1 z``, so every parameterisation is a
linear map ``m(z) = M_t z``:

* epsilon: ``M = sigma_n P^-1``
* v (``v = alpha eps - sigma_n x``): ``M = alpha sigma_n (I - Sigma) P^-1``
* flow velocity (``z = (1 - s) x + s eps``, ``v = eps - x``): ``M = (s I - (1 - s) Sigma) P^-1``

One affine sampler step then reads ``z_next = (A I + B s_in M_t) z + C``, whose exact inverse is a
linear solve.  Used by the tests and benchmarks as ground truth for every solver and scheduler.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..core.adapters import Adapter
from ..core.defaults import ModelDefaults
from ..core.schedulers import SUPPORTED_SCHEDULERS, AffineStep


class GaussianOracle:
    """``oracle(z, t) -> m`` for a diffusers scheduler's timesteps, plus the exact step inverse."""

    def __init__(self, scheduler: Any, latent_shape: tuple[int, ...], *, seed: int = 0,
                 spectrum: tuple[float, float] = (0.5, 2.0)):
        self.family = SUPPORTED_SCHEDULERS[type(scheduler).__name__]
        self.prediction_type = getattr(scheduler.config, "prediction_type", "epsilon") or "epsilon"
        if self.family == "flow":
            self.prediction_type = "flow"
        self.num_train_timesteps = scheduler.config.num_train_timesteps
        if self.family != "flow":
            ac = scheduler.alphas_cumprod.double().numpy()
            self._train_sigmas = np.sqrt((1 - ac) / ac)
        self.latent_shape = tuple(latent_shape)
        dim = int(np.prod(self.latent_shape[1:]))
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
        lo, hi = spectrum
        s = lo + (hi - lo) * torch.rand(dim, generator=g, dtype=torch.float64)
        self.cov = (q * s) @ q.T
        self.dim = dim
        self.nfe = 0
        self._cache: dict[float, Tensor] = {}

    def coefficients(self, t: Tensor | float) -> tuple[float, float]:
        """(alpha, sigma_n) of the model input at scheduler timestep t."""
        t = float(t)
        if self.family == "flow":
            s = t / self.num_train_timesteps
            return 1.0 - s, s
        # Euler schedulers interpolate sigma between integer timesteps; match them.
        sig = float(np.interp(t, np.arange(len(self._train_sigmas)), self._train_sigmas))
        alpha = 1.0 / np.sqrt(1.0 + sig * sig)
        return alpha, sig * alpha

    def matrix(self, t: Tensor | float) -> Tensor:
        key = float(t)
        if key not in self._cache:
            self._cache[key] = self._matrix(key)
        return self._cache[key]

    def _matrix(self, t: float) -> Tensor:
        alpha, sn = self.coefficients(t)
        eye = torch.eye(self.dim, dtype=torch.float64)
        p_inv = torch.linalg.inv(alpha * alpha * self.cov + sn * sn * eye)
        if self.prediction_type == "epsilon":
            return sn * p_inv
        if self.prediction_type == "v_prediction":
            return alpha * sn * (eye - self.cov) @ p_inv
        if self.prediction_type == "flow":
            return (sn * eye - alpha * self.cov) @ p_inv
        raise ValueError(f"unsupported prediction type {self.prediction_type}")

    def __call__(self, z: Tensor, t: Tensor | float) -> Tensor:
        self.nfe += 1
        m = self.matrix(t).to(z.dtype)  # float64 solve, applied in the latent's dtype
        return (z.flatten(1) @ m.T).reshape(z.shape)

    def sample_step(self, step: AffineStep, z: Tensor) -> Tensor:
        return step.apply(z, self(step.input_scale * z, step.timestep))

    def exact_inverse(self, step: AffineStep, z_next: Tensor) -> Tensor:
        """The z with ``sample_step(step, z) == z_next``, by a float64 linear solve."""
        op = step.A * torch.eye(self.dim, dtype=torch.float64) + step.B * step.input_scale * self.matrix(step.timestep)
        rhs = z_next.double() - (0 if step.C is None else step.C.double())
        sol = torch.linalg.solve(op, rhs.flatten(1).T).T
        return sol.reshape(z_next.shape).to(z_next.dtype)


class OracleAdapter(Adapter):
    """The Gaussian oracle dressed as an adapter, so ``nrinv.invert`` runs its full loop on it.

    Latents are the model's own space (``encode``/``decode`` are the identity on (B, C, h, w)).
    """

    family = "oracle"
    scales_initial_latents = True

    def __init__(self, scheduler: Any, latent_shape: tuple[int, ...], *, num_inference_steps: int = 4,
                 seed: int = 0):
        import copy

        super().__init__(self, ModelDefaults("oracle", num_inference_steps, 1.0, height=latent_shape[-2],
                                             width=latent_shape[-1]))
        self.scheduler = copy.deepcopy(scheduler)
        self.shape = tuple(latent_shape)
        self.oracle = GaussianOracle(scheduler, latent_shape, seed=seed)

    device = torch.device("cpu")
    dtype = torch.float32
    network = None

    def check_size(self, height: int, width: int) -> None:
        if (height, width) != self.default_size():
            raise ValueError(f"the oracle's latents are {self.default_size()}")

    def latent_shape(self, height: int, width: int, batch: int = 1) -> tuple[int, ...]:
        return (batch,) + self.shape[1:]

    def prepare_scheduler(self, num_inference_steps: int, height: int, width: int) -> Any:
        import copy

        sched = copy.deepcopy(self.scheduler)
        sched.set_timesteps(num_inference_steps)
        return sched

    def step_kwargs(self) -> dict:
        return {}

    def _embed(self, prompt, negative_prompt, guidance_scale, size):
        return None

    def denoise(self, z: Tensor, t: Tensor, cond: Any) -> Tensor:
        return self.oracle(z.float(), t)

    def encode(self, images: Tensor) -> Tensor:
        return images.float()

    def decode(self, z: Tensor, size: tuple[int, int]) -> Tensor:
        return z.float()


class GuidedGaussianOracle(GaussianOracle):
    """Classifier-free guidance with two Gaussians: the unconditional covariance ``Sigma_u`` (the parent's) and a
    conditional one ``Sigma_c`` that is ``shrink`` times smaller in ``narrow`` of the eigen-directions (a prompt
    pins the data down).  Both outputs are linear, ``m_u = M_u z`` and ``m_c = M_c z``, so the guided output
    ``m_w = M_u z + w (M_c - M_u) z`` is linear too and every guided step keeps an exact inverse (a linear
    solve; a root exists wherever ``A I + B s M_w`` is invertible).  With ``w`` large the guided map's Jacobian
    ``J_f = -(B / A) s M_w`` grows past 1 at the low-noise steps (as on a trained model at guidance 7.5), where
    plain fixed point cannot reach the root that Newton finds."""

    def __init__(self, scheduler: Any, latent_shape: tuple[int, ...], *, seed: int = 0,
                 spectrum: tuple[float, float] = (0.5, 2.0), shrink: float = 0.05, narrow: float = 0.5):
        super().__init__(scheduler, latent_shape, seed=seed, spectrum=spectrum)
        vals, vecs = torch.linalg.eigh(self.cov)
        k = int(round(narrow * self.dim))
        factor = torch.ones(self.dim, dtype=torch.float64)
        factor[:k] = shrink  # the smallest-variance directions become narrower still under the prompt
        self.cond_cov = (vecs * (vals * factor)) @ vecs.T
        self._cond_cache: dict[float, Tensor] = {}

    def cond_matrix(self, t: Tensor | float) -> Tensor:
        key = float(t)
        if key not in self._cond_cache:
            uncond, self.cov = self.cov, self.cond_cov
            try:
                self._cond_cache[key] = self._matrix(key)
            finally:
                self.cov = uncond
        return self._cond_cache[key]

    def guided_matrix(self, t: Tensor | float, guidance_scale: float) -> Tensor:
        mu = self.matrix(t)
        return mu + guidance_scale * (self.cond_matrix(t) - mu)

    def guided(self, z: Tensor, t: Tensor | float, guidance_scale: float) -> Tensor:
        self.nfe += 1
        m = self.guided_matrix(t, guidance_scale).to(z.dtype)
        return (z.flatten(1) @ m.T).reshape(z.shape)

    def exact_inverse_guided(self, step: AffineStep, z_next: Tensor, guidance_scale: float) -> Tensor:
        """The z with ``step.apply(z, m_w(s z)) == z_next`` (float64 linear solve)."""
        op = step.A * torch.eye(self.dim, dtype=torch.float64) \
            + step.B * step.input_scale * self.guided_matrix(step.timestep, guidance_scale)
        rhs = z_next.double() - (0 if step.C is None else step.C.double())
        sol = torch.linalg.solve(op, rhs.flatten(1).T).T
        return sol.reshape(z_next.shape).to(z_next.dtype)

    def jacobian_of_step_map(self, step: AffineStep, guidance_scale: float) -> Tensor:
        """``J_f`` of the inversion map ``f(z) = (z_next - B m_w(s z) - C) / A`` (independent of z)."""
        return -(step.B * step.input_scale / step.A) * self.guided_matrix(step.timestep, guidance_scale)


class GuidedOracleAdapter(OracleAdapter):
    """:class:`GuidedGaussianOracle` as an adapter: ``guidance_scale > 1`` gives a classifier-free-guided
    conditioning (``cfg=True``), so ``nrinv.invert`` takes its guided paths."""

    def __init__(self, scheduler: Any, latent_shape: tuple[int, ...], *, num_inference_steps: int = 20,
                 seed: int = 0, shrink: float = 0.05, narrow: float = 0.5):
        super().__init__(scheduler, latent_shape, num_inference_steps=num_inference_steps, seed=seed)
        self.oracle = GuidedGaussianOracle(scheduler, latent_shape, seed=seed, shrink=shrink, narrow=narrow)

    def _embed(self, prompt, negative_prompt, guidance_scale, size):
        from ..core.adapters import Conditioning

        return Conditioning(guidance_scale, guidance_scale > 1, {}, {}, prompt=prompt, negative_prompt=negative_prompt)

    def denoise(self, z: Tensor, t: Tensor, cond: Any) -> Tensor:
        w = 1.0 if cond is None or not cond.cfg else cond.guidance_scale
        return self.oracle.guided(z.float(), t, w)
