"""Results shaped like diffusers' pipeline outputs: ``output_type`` in ``pil`` | ``np`` | ``pt`` | ``latent``."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
from torch import Tensor

from ..errors import InputError
from .images import to_pil

__all__ = ["OUTPUT_TYPES", "check_output_type", "format_images"]

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def check_output_type(output_type: str) -> str:
    if output_type not in OUTPUT_TYPES:
        raise InputError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}; got {output_type!r}")
    return output_type


def format_images(latents: Sequence[Tensor], decode: Callable[[Tensor], Tensor], output_type: str) -> list[Any]:
    """One entry per latent, as diffusers returns them: a PIL image (``pil``), an (H, W, 3) float array
    in [0, 1] (``np``), a (3, H, W) float tensor in [0, 1] (``pt``), or the latent itself (``latent``).
    ``decode`` maps a (1, ...) latent to a (1, 3, H, W) image in [0, 1], or for a video model to the
    clip's frames (F, 3, H, W): the entry is then the clip, as diffusers' video pipelines return one
    (a list of PIL frames, an (F, H, W, 3) array, or an (F, 3, H, W) tensor)."""
    check_output_type(output_type)
    if output_type == "latent":
        return list(latents)
    out: list[Any] = []
    for z in latents:
        frames = decode(z).detach().float().cpu()
        if z.dim() == 5:  # a clip (B, C, F, h, w): every frame
            if output_type == "pil":
                out.append([to_pil(f) for f in frames])
            elif output_type == "np":
                out.append(np.ascontiguousarray(frames.permute(0, 2, 3, 1).numpy()))
            else:
                out.append(frames)
            continue
        image = frames[0]
        if output_type == "pil":
            out.append(to_pil(image))
        elif output_type == "np":
            out.append(np.ascontiguousarray(image.permute(1, 2, 0).numpy()))
        else:
            out.append(image)
    return out
