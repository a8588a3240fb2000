"""The editing pipelines diffusers ships, as baselines of the edit benchmark (``nrinv bench --edits``).

Both are built from the components of the pipeline under test (same VAE, text encoder, tokenizer and
denoiser), so the comparison is of editing methods, not of models:

* DiffEdit (Couairon et al. 2022; ``StableDiffusionDiffEditPipeline``): a mask from the difference of
  noise predictions for the source and target prompts, DDIM inversion to ``inpaint_strength``, then
  a masked regeneration with the target prompt;
* LEDITS++ (Brack et al. 2024; ``LEditsPPPipelineStableDiffusion``): edit-friendly DPM-Solver++ (SDE)
  inversion, then semantic guidance toward the target and away from the source prompt, with an
  implicit mask from the guidance's own magnitude.  Its reconstruction is exact only when the
  scheduler's last step goes to ``sigma_min`` (``final_sigmas_type="sigma_min"``); both variants are
  offered.

Every network call is counted by a forward pre-hook on the denoiser (calls, and batch rows: a call
under classifier-free guidance carries two or more rows).  Settings are frozen dataclasses; tune them
on items other than those reported (``benchmarks/edit_baselines.py``).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from ..errors import InputError

__all__ = ["CallCount", "count_calls", "DiffEditSettings", "LeditsSettings", "diffedit_pipeline", "ledits_pipeline",
           "BASELINES", "TUNED", "build_baseline", "run_baseline"]


@dataclass
class CallCount:
    """Network calls and the batch rows they carried."""

    calls: int = 0
    rows: int = 0


@contextmanager
def count_calls(denoiser: torch.nn.Module) -> Iterator[CallCount]:
    """Counts the forward calls of ``denoiser`` (and the rows of their first argument) while open."""
    count = CallCount()

    def hook(module: Any, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        count.calls += 1
        count.rows += int(sample.shape[0])

    handle = denoiser.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield count
    finally:
        handle.remove()


@dataclass(frozen=True)
class DiffEditSettings:
    """DiffEdit's knobs (diffusers' names); ``negative_source``: the regeneration's negative prompt is the
    source prompt (as in diffusers' example) rather than the empty one."""

    num_inference_steps: int = 20
    inpaint_strength: float = 0.8
    guidance_scale: float = 7.5
    mask_encode_strength: float = 0.5
    mask_thresholding_ratio: float = 3.0
    num_maps_per_mask: int = 10
    mask_guidance_scale: float = 7.5
    invert_guidance_scale: float = 1.0
    negative_source: bool = True


@dataclass(frozen=True)
class LeditsSettings:
    """LEDITS++'s knobs (diffusers' names); the edit guides toward the target prompt and away from the
    source prompt, each at ``edit_guidance_scale`` with ``edit_threshold``."""

    num_inversion_steps: int = 20
    skip: float = 0.15
    source_guidance_scale: float = 3.5
    edit_guidance_scale: float = 5.0
    edit_threshold: float = 0.9
    reverse_source: bool = True
    final_sigmas_type: str = "zero"
    #: invert with the source prompt instead of diffusers' default empty one (the edit's unconditional
    #: branch is the empty prompt, so an identity edit then leaves the inversion's path: 9 dB measured)
    invert_with_source: bool = False


def _components(pipe: Any) -> dict:
    return {"vae": pipe.vae, "text_encoder": pipe.text_encoder, "tokenizer": pipe.tokenizer, "unet": pipe.unet,
            "safety_checker": None, "feature_extractor": None}


def diffedit_pipeline(pipe: Any) -> Any:
    """``StableDiffusionDiffEditPipeline`` on ``pipe``'s components (DDIM and DDIM-inverse schedulers of
    its scheduler's config)."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler, StableDiffusionDiffEditPipeline

    config = pipe.scheduler.config
    out = StableDiffusionDiffEditPipeline(**_components(pipe), scheduler=DDIMScheduler.from_config(config),
                                          inverse_scheduler=DDIMInverseScheduler.from_config(config),
                                          requires_safety_checker=False)
    out.set_progress_bar_config(disable=True)
    return out


def ledits_pipeline(pipe: Any, final_sigmas_type: str = "zero") -> Any:
    """``LEditsPPPipelineStableDiffusion`` on ``pipe``'s components with the DPM-Solver++ (SDE, 2nd order)
    scheduler it is made for, ending at ``final_sigmas_type``."""
    from diffusers import DPMSolverMultistepScheduler, LEditsPPPipelineStableDiffusion

    scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="sde-dpmsolver++",
                                                        solver_order=2, final_sigmas_type=final_sigmas_type)
    out = LEditsPPPipelineStableDiffusion(**_components(pipe), scheduler=scheduler, requires_safety_checker=False)
    out.set_progress_bar_config(disable=True)
    return out


def _generator(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(int(seed))


def _uint8(images: Any) -> np.ndarray:
    arr = np.asarray(images[0] if isinstance(images, (list, tuple)) else images)
    arr = arr[0] if arr.ndim == 4 else arr
    arr = np.nan_to_num(arr.astype(np.float64), nan=0.0)
    return (arr.clip(0, 1) * 255).round().astype(np.uint8)


def _diffedit(built: Any, image: Any, source: str, target: str, s: DiffEditSettings, seed: int) -> np.ndarray:
    mask = built.generate_mask(image=image, source_prompt=source, target_prompt=target,
                               num_maps_per_mask=s.num_maps_per_mask, mask_encode_strength=s.mask_encode_strength,
                               mask_thresholding_ratio=s.mask_thresholding_ratio,
                               num_inference_steps=s.num_inference_steps, guidance_scale=s.mask_guidance_scale,
                               generator=_generator(seed))
    latents = built.invert(prompt=source, image=image, num_inference_steps=s.num_inference_steps,
                           inpaint_strength=s.inpaint_strength, guidance_scale=s.invert_guidance_scale,
                           generator=_generator(seed)).latents
    out = built(prompt=target, mask_image=mask, image_latents=latents, inpaint_strength=s.inpaint_strength,
                num_inference_steps=s.num_inference_steps, guidance_scale=s.guidance_scale,
                negative_prompt=source if s.negative_source else None, generator=_generator(seed), output_type="np")
    return _uint8(out.images)


def _ledits(built: Any, image: Any, source: str, target: str, s: LeditsSettings, seed: int) -> np.ndarray:
    built.invert(image=image, source_prompt=source if s.invert_with_source else "",
                 source_guidance_scale=s.source_guidance_scale,
                 num_inversion_steps=s.num_inversion_steps, skip=s.skip, generator=_generator(seed))
    prompts, reverse = [target], [False]
    if s.reverse_source:
        prompts, reverse = [target, source], [False, True]
    out = built(editing_prompt=prompts, reverse_editing_direction=reverse,
                edit_guidance_scale=[s.edit_guidance_scale] * len(prompts),
                edit_threshold=[s.edit_threshold] * len(prompts), generator=_generator(seed), output_type="np")
    return _uint8(out.images)


#: name -> (settings class, builder ``(pipe, settings) -> pipeline``, runner)
BASELINES = {
    "diffedit": (DiffEditSettings, lambda pipe, s: diffedit_pipeline(pipe), _diffedit),
    "ledits++": (LeditsSettings, lambda pipe, s: ledits_pipeline(pipe, s.final_sigmas_type), _ledits),
}


#: name -> (baseline, settings) tuned on 10 items of edit-set seed 1 for builtin:shapes by
#: ``benchmarks/edit_eval.py``'s rule (``benchmarks/edit_baselines.py``; benchmarks/README.md)
TUNED = {
    "diffedit": ("diffedit", DiffEditSettings(inpaint_strength=0.6, guidance_scale=2.0)),
    "ledits++": ("ledits++", LeditsSettings()),
    "ledits++sigma_min": ("ledits++", LeditsSettings(edit_guidance_scale=3.0, final_sigmas_type="sigma_min")),
}


def build_baseline(pipe: Any, name: str, settings: Any) -> Any:
    """The pipeline of baseline ``name`` on ``pipe``'s components, for ``settings``."""
    if name not in BASELINES:
        raise InputError(f"unknown baseline {name!r}; one of {', '.join(BASELINES)}")
    return BASELINES[name][1](pipe, settings)


def run_baseline(built: Any, name: str, image: np.ndarray, source: str, target: str, settings: Any,
                 seed: int = 0) -> tuple[np.ndarray, CallCount]:
    """Edit the uint8 ``image`` from ``source`` to ``target`` with baseline ``name`` (its pipeline ``built``
    by ``build_baseline``); returns the uint8 edited image and the network calls counted."""
    from PIL import Image

    if name not in BASELINES:
        raise InputError(f"unknown baseline {name!r}; one of {', '.join(BASELINES)}")
    with count_calls(built.unet) as count, torch.no_grad():
        edited = BASELINES[name][2](built, Image.fromarray(np.asarray(image)), source, target, settings, seed)
    return edited, count
