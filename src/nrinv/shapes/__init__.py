"""The built-in "shapes" world and its tiny text-to-image model.

64x64 images of one coloured shape on a flat or textured background, captions such as
"a large red triangle on the left, blue striped background", a judge that reads the attributes back
from any image, and a small Stable-Diffusion-style model (AutoencoderKL + UNet2DConditionModel +
CLIPTextModel + DDIMScheduler) shipped in diffusers folder format in ``MODEL_DIR``.
"""
from __future__ import annotations

from pathlib import Path

from .judge import judge, judge_batch
from .world import (
    BACKGROUNDS,
    COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    parse_caption,
    render,
    sample_scene,
)

MODEL_DIR = Path(__file__).resolve().parent / "model"
DEFAULT_GUIDANCE = 5.5  # generation default: shape accuracy was highest at 5.5 on both held-out caption sets (README)
DEFAULT_STEPS = 20
IMAGE_SIZE = 64


def load_pipeline(torch_dtype=None, device="cpu", model_dir=None):
    """Load the shipped model as a stock ``StableDiffusionPipeline`` (offline, no safety checker)."""
    import torch
    from diffusers import StableDiffusionPipeline

    dt = torch_dtype or torch.float32
    try:  # newer diffusers renamed `torch_dtype` to `dtype`
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401

        dtype_kw = {"dtype": dt}
    except ImportError:
        dtype_kw = {"torch_dtype": dt}
    pipe = StableDiffusionPipeline.from_pretrained(
        str(model_dir or MODEL_DIR),
        **dtype_kw,
        safety_checker=None,
        requires_safety_checker=False,
        local_files_only=True,
    )
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


__all__ = [
    "MODEL_DIR", "DEFAULT_GUIDANCE", "DEFAULT_STEPS", "IMAGE_SIZE", "load_pipeline",
    "Scene", "sample_scene", "render", "parse_caption", "judge", "judge_batch",
    "SHAPES", "COLORS", "SIZES", "POSITIONS", "BACKGROUNDS",
]
