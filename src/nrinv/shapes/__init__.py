"""The built-in "shapes" world and its tiny text-to-image model.

64x64 images of one coloured shape on a flat or textured background, captions such as
"a large red triangle on the left, blue striped background", a judge that reads the attributes back
from any image, and a small Stable-Diffusion-style model (AutoencoderKL + UNet2DConditionModel +
CLIPTextModel + DDIMScheduler) shipped in diffusers folder format in ``MODEL_DIR``, and its 4-step latent
consistency distillation (``LatentConsistencyModelPipeline``) in ``LCM_MODEL_DIR`` (``stock_pipeline(variant="lcm")``).
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
# the 4-step latent consistency model distilled from MODEL_DIR (python -m nrinv.shapes.distill)
LCM_MODEL_DIR = Path(__file__).resolve().parent / "model_lcm"
LCM_DEFAULT_STEPS = 4
LCM_DEFAULT_GUIDANCE = 6.0  # best worst-attribute accuracy at 4 steps on both held-out caption sets (3..8 within 0.005)
VARIANT_DIRS = {None: MODEL_DIR, "base": MODEL_DIR, "lcm": LCM_MODEL_DIR}
PIPELINE_CLASSES = ("StableDiffusionPipeline", "LatentConsistencyModelPipeline")


def pipeline_class_name(model_dir) -> str:
    """The pipeline class named by a model folder's ``model_index.json`` (one of ``PIPELINE_CLASSES``)."""
    import json

    name = json.loads((Path(model_dir) / "model_index.json").read_text())["_class_name"]
    if name not in PIPELINE_CLASSES:
        raise ValueError(f"{model_dir}: unsupported pipeline class {name!r} (expected one of {PIPELINE_CLASSES})")
    return name


def generation_defaults(model_dir) -> tuple[int, float]:
    """(steps, guidance) defaults of the model folder's pipeline class."""
    if pipeline_class_name(model_dir) == "LatentConsistencyModelPipeline":
        return LCM_DEFAULT_STEPS, LCM_DEFAULT_GUIDANCE
    return DEFAULT_STEPS, DEFAULT_GUIDANCE


def dtype_kwarg(dtype) -> dict:
    """The dtype keyword of diffusers' ``from_pretrained``: ``dtype=`` since diffusers 0.35 (which warns
    about the old ``torch_dtype=``), ``torch_dtype=`` before."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401

        return {"dtype": dtype}
    except ImportError:
        return {"torch_dtype": dtype}


def stock_pipeline(dtype=None, device="cpu", model_dir=None, variant=None):
    """A shipped model in its stock diffusers pipeline class (offline, no safety checker), for training and
    evaluating the model itself; users load it with ``nrinv.load_pipeline("builtin:shapes")``.

    ``variant=None`` / ``"base"``: the base model (``StableDiffusionPipeline``, DDIM); ``variant="lcm"``: the
    distilled 4-step model (``LatentConsistencyModelPipeline``, ``LCMScheduler``).  ``model_dir`` overrides the
    folder; the pipeline class is the one its ``model_index.json`` names.  ``dtype``: default float32.
    """
    import diffusers
    import torch

    if variant not in VARIANT_DIRS:
        raise ValueError(f"unknown variant {variant!r} (expected one of {sorted(k for k in VARIANT_DIRS if k)})")
    folder = Path(model_dir) if model_dir else VARIANT_DIRS[variant]
    cls = getattr(diffusers, pipeline_class_name(folder))
    pipe = cls.from_pretrained(
        str(folder),
        **dtype_kwarg(dtype or torch.float32),
        safety_checker=None,
        requires_safety_checker=False,
        local_files_only=True,
    )
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


__all__ = [
    "MODEL_DIR", "DEFAULT_GUIDANCE", "DEFAULT_STEPS", "IMAGE_SIZE", "stock_pipeline", "dtype_kwarg",
    "LCM_MODEL_DIR", "LCM_DEFAULT_STEPS", "LCM_DEFAULT_GUIDANCE", "pipeline_class_name", "generation_defaults",
    "Scene", "sample_scene", "render", "parse_caption", "judge", "judge_batch",
    "SHAPES", "COLORS", "SIZES", "POSITIONS", "BACKGROUNDS",
]
