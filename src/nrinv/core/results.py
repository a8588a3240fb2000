"""What an inversion returns (``InversionResult``, its reusable ``pipeline_kwargs``) and the ``Setup`` it ran with
(schedule, conditioning, size, steps, guidance, seed): everything a regeneration needs besides the latent."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from .._version import __version__
from .adapters import Adapter, Conditioning
from .schedulers import AffineStep, Schedule
from .solvers import SolveResult, Status


__all__ = ["Setup", "PipelineKwargs", "InversionResult"]


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
        s = self.settings
        kwargs = {"latents": self.latents, "generator": generator if generator is not None else self.fresh_generator(),
                  "num_inference_steps": s["num_inference_steps"], "guidance_scale": s["guidance_scale"],
                  "height": s["height"], "width": s["width"]}
        if self.step_conds is not None:  # null-text inversion: its per-step null embeddings (and corrections)
            from .nulltext import pipeline_extras

            kwargs.update(pipeline_extras(self))
            return PipelineKwargs(kwargs, fresh)
        if s.get("negative_prompt") is not None:  # the guidance it was inverted at (negative-prompt inversion's)
            kwargs["negative_prompt"] = s["negative_prompt"]
        if self.corrections is not None:  # edit-friendly inversion: its per-step corrections
            from .edit_friendly import pipeline_extras

            kwargs.update(pipeline_extras(self))
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
