"""Defaults per kind of model, in one place, keyed by what the model *is*.

A pipeline's kind is read from its classes and configs (pipeline class, scheduler class and
spacing, the denoiser's configuration), never from the name or folder it was loaded from and never
from attributes written onto it: the built-in shapes model loaded from a copy of its folder gets
the built-in defaults, and a user's pipeline is left as it was.

``model_defaults(pipe)`` returns a frozen :class:`ModelDefaults`; an adapter computes it once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from .options import Options

__all__ = ["ModelDefaults", "model_defaults", "model_kind", "SHAPES_UNET_FINGERPRINT", "MODEL_KINDS",
           "SchedulerDefaults", "SCHEDULER_FAMILIES", "scheduler_defaults", "DEFAULT_SEED_SPREAD"]


#: the spread of seed_from_images: "auto" chooses it per call from the examples
#: (``workflows/seeds.py``; ``benchmarks/own_images.py seeds``); a number is the slerp weight toward fresh noise
#: (0.3 was the default, ``benchmarks/seed_spread.py``: lower gives near copies, higher leaves the concept)
DEFAULT_SEED_SPREAD = "auto"


@dataclass(frozen=True)
class ModelDefaults(Options):
    """What a user of this kind of model expects when they pass nothing.

    ``guidance_scale`` is the guidance of inversion and reconstruction (the source prompt describes
    the image); ``edit_*`` are the edit's regeneration settings (``edit_guidance_scale=None``: the
    inversion's guidance); ``height``/``width`` the model's native image size (``None``: from the
    network's sample size).
    """

    kind: str
    num_inference_steps: int
    guidance_scale: float
    edit_strength: float = 0.6
    edit_guidance_scale: Optional[float] = None
    guide_from_source: bool = False
    mask_threshold: Optional[float] = None
    #: an edit that changes the background keeps the object (``nrinv.workflows.editing.changes_background``)
    keep_object: bool = False
    #: a local edit's pixels outside its mask are the reconstruction's (``nrinv.workflows.editing``)
    mask_paste: bool = False
    #: the sampler steps and solver iterations per step of an edit's inversion when none are given
    #: (None: ``num_inference_steps`` / ``max_iterations``)
    edit_steps: Optional[int] = None
    edit_iterations: Optional[int] = None
    #: an edit that changes the background (``changes_background``, with ``keep_object``) at the model's
    #: default strength and guidance re-runs at these instead (None: ``edit_strength`` / the edit guidance)
    background_edit_strength: Optional[float] = None
    background_edit_guidance: Optional[float] = None
    #: whether that background edit's guidance contrasts the target with the source prompt (None: as
    #: ``guide_from_source``)
    background_guide_from_source: Optional[bool] = None
    #: at the model's default strength and guidance, a local edit whose mask read at the first step lies more
    #: than this share outside the object (``editing.moved_mask``) moves it: full strength inside both masks
    #: (None: off)
    move_threshold: Optional[float] = None
    #: the guidance of such a move, and whether it contrasts with the source prompt (None: the edit's own)
    move_edit_guidance: Optional[float] = None
    move_guide_from_source: Optional[bool] = None
    #: with ``mask_paste``, an edit of the object (``keep_object`` and not ``changes_background``): its pixels
    #: more than this many pixels from the object in both the reconstruction and the edit
    #: (``editing.off_object_alpha``) are the reconstruction's too (None: off)
    paste_objects: Optional[int] = None
    #: the solver and its iterations per step unless a kind's row says otherwise (benchmarks/README.md);
    #: what a pipeline gets is ``model_defaults(pipe).method`` / ``.max_iterations``
    method: str = "anderson"
    max_iterations: int = 2
    #: how the warm start predicts a step's model output: "last" (the output implied by the step solved
    #: just before), "linear" (extrapolated in t from the last two) or "learned" (the inverter saved
    #: beside the model, ``core/inverter.py``; "linear" without one); chosen per model by measurement
    warm_start: str = "last"
    #: the inversion ``nrinv.edit`` uses (None: ``method``); e.g. "edit_friendly" (``core/edit_friendly.py``)
    edit_method: Optional[str] = None
    #: the warm start per iteration budget where it differs from ``warm_start``: ((iterations, mode), ...),
    #: measured per model (a budget of ``iterations x steps`` network calls)
    warm_start_by_iterations: tuple = ()
    #: the warm start under classifier-free guidance on single-step samplers at the model's own step count or
    #: more, where it was measured (None: off under guidance; a multistep family's row has its own)
    guided_warm_start: Optional[str] = None
    height: Optional[int] = None
    width: Optional[int] = None

    @property
    def edit_guidance(self) -> float:
        return self.guidance_scale if self.edit_guidance_scale is None else self.edit_guidance_scale


def _classes(obj: Any) -> set[str]:
    return {c.__name__ for c in type(obj).__mro__}


def _config(module: Any) -> dict:
    cfg = getattr(module, "config", None)
    return dict(cfg) if cfg is not None else {}


#: the shapes model's denoiser (``nrinv.shapes.components.make_unet``); ``tests/test_defaults.py``
#: checks that the shipped weights match it
SHAPES_UNET_FINGERPRINT = {
    "sample_size": 16, "in_channels": 4, "out_channels": 4, "block_out_channels": [32, 64, 64],
    "layers_per_block": 1, "cross_attention_dim": 64, "attention_head_dim": 4, "norm_num_groups": 16,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
}


def _is_shapes(pipe: Any) -> bool:
    cfg = _config(getattr(pipe, "unet", None))
    return bool(cfg) and all(_as_list(cfg.get(k)) == _as_list(v) for k, v in SHAPES_UNET_FINGERPRINT.items())


def _as_list(v: Any) -> Any:
    return list(v) if isinstance(v, (tuple, list)) else v


def _scheduler(pipe: Any) -> tuple[str, dict]:
    sched = getattr(pipe, "scheduler", None)
    return type(sched).__name__, _config(sched)


def _sdxl_turbo(pipe: Any) -> bool:
    name, cfg = _scheduler(pipe)
    return ("StableDiffusionXLPipeline" in _classes(pipe) or "StableDiffusionXLImg2ImgPipeline" in _classes(pipe)) \
        and name == "EulerAncestralDiscreteScheduler" and cfg.get("timestep_spacing") == "trailing"


def _flux(pipe: Any, guidance_embeds: bool) -> bool:
    cfg = _config(getattr(pipe, "transformer", None))
    return "FluxPipeline" in _classes(pipe) and bool(cfg.get("guidance_embeds")) == guidance_embeds


#: (kind, recogniser, defaults), first match wins
MODEL_KINDS: list[tuple[str, Callable[[Any], bool], ModelDefaults]] = [
    # built-in, distilled for 4 steps (LCM); guidance enters through the w-embedding, at no extra cost.
    # Chosen from benchmarks/README.md section 0 (builtin:shapes-lcm, held-out scenes, dB below the VAE
    # ceiling of the stock regeneration): 3 Anderson iterations (12 NFE) with "last" by default, "linear" at
    # 2 iterations.  The learned inverter shipped beside the model won on 8 choosing scenes (1.48 vs 1.95 dB)
    # but tied on 8 held-out ones (1.79 vs 1.72) and costs ~0.12 call per step in time (not counted as a
    # call): not the default (benchmarks/README.md section 10).  Edits: edit-friendly
    # inversion (exact by construction: the stock pipeline regenerates through result.pipeline_kwargs()),
    # masked at 0.5, the reconstruction's pixels outside the mask; strength 0.75 at edit guidance 8 (chosen on
    # 10 items of edit-set seed 1 among strength {0.75, 1} x guidance {4, 6, 8} x mask {off, 0.3, 0.5};
    # benchmarks/edit_baselines.py, benchmarks/README.md "Edits against DiffEdit and LEDITS++").  Then, on
    # tuning items of edit-set seeds 1, 4, 5 (30 each) and 20 position / size items of seed 3: object edits at
    # strength 0.5 (backgrounds stay at 0.75), a moved object (first-step mask > 5 % outside it) re-run from
    # the first step inside both masks, and an object edit's pixels away from both objects the
    # reconstruction's (paste_objects=0): PSNR to the target vs DiffEdit +0.30/+0.78/+0.71 -> +0.88/+0.94/+0.92
    # dB, preservation -0.74/-0.35/+0.62 -> +1.23/+0.97/+2.18, position edits 70 % -> 100 %; target rate
    # 93 % -> 91 % (two shape edits of 90); at most 16 calls.
    ("shapes-lcm", lambda p: _is_shapes(p) and _config(p.unet).get("time_cond_proj_dim") is not None
     and "LatentConsistencyModelPipeline" in _classes(p),
     ModelDefaults("shapes-lcm", 4, 6.0, edit_strength=0.5, edit_guidance_scale=8.0, mask_threshold=0.5,
                   mask_paste=True, edit_method="edit_friendly", background_edit_strength=0.75,
                   move_threshold=0.05, paste_objects=0,
                   max_iterations=3, warm_start="last", warm_start_by_iterations=((2, "linear"),),
                   height=64, width=64, keep_object=True)),
    # built-in, 20 DDIM steps.  Edits invert at 10 steps, 1 iteration each (21 calls, within DiffEdit's 25) and
    # re-run half of them at guidance 2 guided from the source prompt, masked at 0.5 with the reconstruction's
    # pixels outside the mask: chosen on 10 items of edit-set seed 1 (benchmarks/edit_baselines.py;
    # benchmarks/README.md "Edits against DiffEdit and LEDITS++") as the best PSNR to the target with target
    # and preserved at 100 % (26.31 dB; 2 iterations 26.16 dB at 31 calls; 20 steps 25.67 dB at 57 calls).
    # Then object edits (colour, shape) at strength 0.6, guidance 1.5 and background edits at 0.5 / 2: on 30
    # items each of edit-set seeds 1 and 4, PSNR to the target +0.32 / +0.46 dB, target 96.7 % / 96.7 %
    # (from 96.7 / 93.3), preserved unchanged (0.5 / 1.5 read 60 % / 80 % of shape edits); 22 calls.  A local
    # edit whose first-step mask lies > 5 % outside the object moves it (full strength inside both masks): on
    # tuning position items 15 % -> 100 % (20 of seed 3), other edits unchanged (seeds 1, 4, 5); 24-28 calls.
    # Fourth round (benchmarks/README.md "Fourth round"): object edits at guidance 3 against the empty prompt
    # (backgrounds stay at 0.5 / 2 and moves at 1.5, both against the source) and paste_objects=0, on 360
    # shape-only tuning items of seeds 1 and 3-10: shape edits read right 82.2 % -> 85.3 % (large objects
    # 91.8 % -> 97.7 %, small ones unchanged at 74 %: a fresh generation of the target caption at guidance 4
    # draws a small shape right 83 % of the time), PSNR to the target -0.1 dB; mixed items unchanged
    # (93.3 % -> 94.4 %, 26.53 -> 26.52 dB).  With the background probe read at one step, every edit is within
    # DiffEdit's 25 calls (a move 24).
    # Both built-in models: background edits keep the object (benchmarks/own_images.py edits: object-region
    # PSNR +4.5 to +6.4 dB on drawn images and renders).
    # Under guidance the "linear" warm start at 20 steps (benchmarks/README.md "Defaults by measurement",
    # 8 choosing scenes, dB below the VAE ceiling at 40 calls: guidance 3 0.48 vs 1.17 off; 7.5 10.71 vs 12.47);
    # not below 20 steps: at 10 steps and guidance 7.5 it measured worse (15.57 vs 14.63)
    ("shapes", lambda p: _is_shapes(p) and _config(p.unet).get("time_cond_proj_dim") is None,
     ModelDefaults("shapes", 20, 1.0, edit_strength=0.6, edit_guidance_scale=3.0, guide_from_source=False,
                   mask_threshold=0.5, mask_paste=True, edit_steps=10, edit_iterations=1,
                   background_edit_strength=0.5, background_edit_guidance=2.0, background_guide_from_source=True,
                   move_threshold=0.05, move_edit_guidance=1.5, move_guide_from_source=True, paste_objects=0,
                   warm_start="linear", guided_warm_start="linear", height=64, width=64, keep_object=True)),
    ("sdxl-turbo", _sdxl_turbo, ModelDefaults("sdxl-turbo", 4, 0.0)),
    ("lcm", lambda p: "LatentConsistencyModelPipeline" in _classes(p), ModelDefaults("lcm", 4, 8.5)),
    ("flux-schnell", lambda p: _flux(p, False), ModelDefaults("flux-schnell", 4, 0.0)),
    ("flux-dev", lambda p: _flux(p, True), ModelDefaults("flux-dev", 28, 3.5)),
    ("sd3", lambda p: "StableDiffusion3Pipeline" in _classes(p), ModelDefaults("sd3", 28, 1.0)),
    # Wan 2.1 text-to-video: WanPipeline's 50 steps (flow-match UniPC) and its 480x832 frames
    ("wan", lambda p: "WanPipeline" in _classes(p), ModelDefaults("wan", 50, 1.0, height=480, width=832)),
    ("sdxl", lambda p: "StableDiffusionXLPipeline" in _classes(p), ModelDefaults("sdxl", 50, 1.0)),
    ("sd", lambda p: True, ModelDefaults("sd", 50, 1.0)),
]


def model_kind(pipe: Any) -> str:
    return model_defaults(pipe).kind


def model_defaults(pipe: Any) -> ModelDefaults:
    """The defaults of ``pipe`` (a diffusers pipeline, or an adapter, which carries its own)."""
    own = getattr(pipe, "defaults", None)
    if isinstance(own, ModelDefaults):
        return own
    for _, matches, defaults in MODEL_KINDS:
        if matches(pipe):
            return defaults
    raise AssertionError("the last kind matches every pipeline")


@dataclass(frozen=True)
class SchedulerDefaults(Options):
    """The budget of the coupled-trajectory solve (``core/trajectory.py``) for a family of multistep
    samplers, where the options do not set it: ``sweeps`` whole-trajectory sweeps at most after the
    sequential pass, in ``sweep_mode`` (``solvers.SWEEP_MODES``), and ``max_iterations`` solver
    iterations per step in the pass (None: the model's, ``ModelDefaults.max_iterations``); ``guided_*``
    where classifier-free guidance needs another budget."""

    family: str
    sweeps: int
    sweep_mode: str = "newton"
    max_iterations: Optional[int] = None
    #: under classifier-free guidance: iterations per step in the pass (None: ``max_iterations``) and the pass's
    #: warm start (None: the model's rule, off under guidance)
    guided_max_iterations: Optional[int] = None
    guided_warm_start: Optional[str] = None
    #: the degree of the pass's extrapolation of the history not solved yet, in the log-SNR where the scheduler
    #: gives it (``core/trajectory.py``): 1 = linear through the step being solved and the next solved one,
    #: 2 = quadratic through the next two
    history_order: int = 1


def _dpm_solver_multistep(scheduler: Any) -> bool:
    cfg = _config(scheduler)
    return type(scheduler).__name__ == "DPMSolverMultistepScheduler" and cfg.get("solver_order", 2) in (2, 3) \
        and cfg.get("algorithm_type", "dpmsolver++") == "dpmsolver++"


def _sde_dpm_solver(scheduler: Any) -> bool:
    return type(scheduler).__name__ == "DPMSolverMultistepScheduler" \
        and str(_config(scheduler).get("algorithm_type", "")).startswith("sde")


def _unipc_deis(scheduler: Any) -> bool:
    return type(scheduler).__name__ in ("UniPCMultistepScheduler", "DEISMultistepScheduler")


#: (family, recogniser of the pipeline's scheduler, defaults), first match wins; chosen by measurement on
#: builtin:shapes with the scheduler swapped (benchmarks/README.md section 8, benchmarks/multistep.py)
SCHEDULER_FAMILIES: list[tuple[str, Callable[[Any], bool], SchedulerDefaults]] = [
    # DPM-Solver++ 2M (and 3M): the sweeps stall on a trained model (a sweep costs one call per step and leaves the
    # latent error near 0.03 at 20 steps); 4 Anderson iterations per step in the pass and no sweep, with the
    # history extrapolated quadratically, come within 0.1 dB of the VAE ceiling (0.02 dB) at 1.48 calls per step
    # with the warm start (linearly: 0.03 dB at 2.26).  Under guidance the steps need more iterations, and the warm
    # start only saves calls: 8 with it, guidance 3: 1.65 -> 0.77 dB below the ceiling at 4.0 -> 1.94 calls per
    # step; guidance 7.5: 10.24 -> 8.77 dB.  DPM-Solver++ 3M likewise: 20 steps -0.01 dB at 2.50 calls per step
    # (the generic row: 0.27 dB at 7.97).  Since the truth check (one call per entry after the pass) every figure
    # here costs one call per step more; on 16 new scenes (benchmarks/README.md section 10) the row is 0.05 dB at
    # 2.48 calls per step, where 3 / 2 iterations save 0.06 / 0.23 call for 1.4x / 2x the latent error
    ("dpm-solver++", _dpm_solver_multistep, SchedulerDefaults("dpm-solver++", 0, "newton", max_iterations=4,
                                                              guided_max_iterations=8, guided_warm_start="linear",
                                                              history_order=2)),
    # SDE DPM-Solver++ (2M, with the recorded noise): its history is the data prediction of a noisy path, which
    # the pass extrapolates poorly; the sweeps converge, slowly: 4 iterations per step in the pass and up to 15
    # sweeps come within 0.06 dB of the VAE ceiling at 20 steps (18.25 calls per step; 6 sweeps: 0.45 dB)
    ("sde-dpm-solver", _sde_dpm_solver, SchedulerDefaults("sde-dpm-solver", 15, "newton", max_iterations=4)),
    # UniPC (whose corrector ties every step to all earlier ones) and DEIS: 4 iterations per step in the pass, then
    # up to 6 sweeps: within 0.1 dB of the VAE ceiling at 10 and 20 UniPC steps (~10 calls per step; 2 iterations:
    # 0.29-0.50 dB at 8), DEIS 20 steps 0.12 dB at 5.25 (2 iterations: 0.23 dB at 5.0); with the truth check,
    # UniPC 20 steps on 16 new scenes: 0.07 dB at 10.9 (3 iterations: 0.22 dB at 10.0, 1.4x the latent error)
    ("unipc-deis", _unipc_deis, SchedulerDefaults("unipc-deis", 6, "newton", max_iterations=4)),
    # the rest (PNDM, LMS, EDM DPM-Solver, Heun / KDPM2, which never sweep, ...): up to 6
    # whole-trajectory sweeps, stopping when every step's residual meets tolerance
    ("multistep", lambda s: True, SchedulerDefaults("multistep", 6, "newton")),
]


def scheduler_defaults(pipe: Any) -> SchedulerDefaults:
    """The coupled-trajectory budget of ``pipe``'s scheduler (a pipeline, or an adapter of one)."""
    pipe = getattr(pipe, "pipe", pipe)
    scheduler = getattr(pipe, "scheduler", None)
    for _, matches, defaults in SCHEDULER_FAMILIES:
        if matches(scheduler):
            return defaults
    raise AssertionError("the last family matches every scheduler")
