"""What the workflows built on an inverted latent share: argument checks, defaults, noise helpers, slerp.

Notation as in ``nrinv.core.inversion``: sampling runs ``z_0`` (noise) ``-> ... -> z_N`` (image
latent) and an inversion returns the whole trajectory ``z_0 .. z_N`` for one recorded noise list.
Everything here is a function of its arguments: seeds and generators are arguments, no global state.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor

from ..core.adapters import Adapter, adapter_for
from ..core.schedulers import draw_noise, seeded_generator
from ..errors import InputError

__all__ = [
    "Prompts", "check_prompt", "check_strength", "check_steps", "check_count", "check_adjust", "check_spread",
    "check_mask_threshold", "prompt_list", "slerp", "edit_defaults", "encode_pixels", "helper_generator",
    "noise_like", "DEFAULT_ENCODE_ADJUST",
]

#: encoding adjustment strength; None = off (on only where ``benchmarks/edit_eval.py`` measures a gain)
DEFAULT_ENCODE_ADJUST: Optional[float] = None
_NOISE_SEED_OFFSET = 7_654_321  # decorrelates helper noises from the sampler's recorded noise of the same seed

Prompts = Union[str, Sequence[str]]


# ---------------------------------------------------------------------------------------------- checks
def check_prompt(prompt: Any, what: str = "prompt") -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError(f"the {what} is empty; describe the image in words")
    return prompt


def check_strength(strength: float, what: str = "strength") -> float:
    try:
        value = float(strength)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number in (0, 1], got {strength!r}") from None
    if not (0.0 < value <= 1.0) or math.isnan(value):
        raise InputError(f"{what} must be in (0, 1], got {strength}")
    return value


def check_steps(steps: Optional[int]) -> Optional[int]:
    if steps is not None and int(steps) < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    return None if steps is None else int(steps)


def check_count(n: int, what: str = "n") -> int:
    if int(n) < 1:
        raise InputError(f"{what} must be >= 1, got {n}")
    return int(n)


def check_adjust(encode_adjust: Optional[float]) -> Optional[float]:
    if encode_adjust is None or encode_adjust == 0:
        return None
    return check_strength(encode_adjust, "encode_adjust")


def check_spread(spread: Any) -> Any:
    if isinstance(spread, str) and spread == "auto":
        return spread
    try:
        value = float(spread)
    except (TypeError, ValueError):
        raise InputError(f"spread must be 'auto' or a number in [0, 1], got {spread!r}") from None
    if not (0.0 <= value <= 1.0):
        raise InputError(f"spread must be in [0, 1], got {spread}")
    return value


def check_mask_threshold(threshold: Optional[float]) -> Optional[float]:
    """A mask threshold in (0, 1); ``0`` (or ``"off"``) switches a model's default mask off: ``None``."""
    if isinstance(threshold, str) and threshold.strip().lower() == "off" or threshold == 0:
        return None
    try:
        value = None if threshold is None else float(threshold)
    except (TypeError, ValueError):
        value = float("nan")
    if value is not None and not 0 < value < 1:
        raise InputError(f"mask threshold must be in (0, 1), or 0 / 'off' for no mask; got {threshold!r}")
    return value


def prompt_list(prompts: Prompts, what: str) -> list[str]:
    items = [prompts] if isinstance(prompts, str) else list(prompts or [])
    if not items:
        raise InputError(f"give at least one {what}")
    return [check_prompt(p, what) for p in items]


# ------------------------------------------------------------------------------------------- helpers
def slerp(a: Tensor, b: Tensor, weight: float) -> Tensor:
    """Spherical interpolation of the directions of ``a`` and ``b``, with the norm interpolated linearly.

    Gaussian noises of one size have nearly equal norms; plain lerp would shrink the middle
    frames' norm (off the sampler's typical set), slerp keeps it.  ``weight`` 0 / 1 return ``a`` / ``b``.
    """
    w = float(weight)
    if w == 0.0:
        return a.clone()
    if w == 1.0:
        return b.clone()
    a32, b32 = a.float(), b.float()
    na, nb = a32.norm(), b32.norm()
    ua, ub = a32 / na, b32 / nb
    cos = (ua * ub).sum().clamp(-1.0, 1.0)
    theta = torch.arccos(cos)
    if float(theta) < 1e-4:
        direction = torch.lerp(ua, ub, w)
    else:
        s = torch.sin(theta)
        direction = (torch.sin((1 - w) * theta) / s) * ua + (torch.sin(w * theta) / s) * ub
    direction = direction / direction.norm()
    return (direction * ((1 - w) * na + w * nb)).to(a.dtype)


def edit_defaults(pipe: Any) -> dict[str, Any]:
    """Default ``strength``, ``edit_guidance_scale``, ``guide_from_source`` ``mask_threshold`` and
    ``keep_object`` of an edit with this pipeline (from the model-defaults registry, ``nrinv.core.defaults``)."""
    d = adapter_for(pipe).defaults
    return {"strength": d.edit_strength, "edit_guidance_scale": float(d.edit_guidance),
            "guide_from_source": d.guide_from_source, "mask_threshold": d.mask_threshold,
            "keep_object": d.keep_object}


def encode_pixels(adapter: Adapter, pixels: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """Encode a (1, 3, H, W) image in [0, 1]; returns the latent and ``(H, W)``."""
    size = (int(pixels.shape[-2]), int(pixels.shape[-1]))
    adapter.check_size(*size)
    with torch.no_grad():
        return adapter.encode(pixels), size


def helper_generator(seed: int, generator: Optional[torch.Generator]) -> torch.Generator:
    """The generator of the noise nrinv draws itself (encoding adjustment, seed perturbations), on the
    user's generator's device and decorrelated from the sampler's recorded noise of the same seed."""
    if generator is not None:
        return seeded_generator(generator.initial_seed() + _NOISE_SEED_OFFSET, generator.device)
    return seeded_generator(int(seed) + _NOISE_SEED_OFFSET)


def noise_like(z: Tensor, generator: torch.Generator) -> Tensor:
    return draw_noise(tuple(z.shape), generator, device=z.device, dtype=torch.float32)
