"""Images in: validated loading of paths, PIL images, arrays and tensors; conversions."""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import InputError

__all__ = ["load_image", "load_pixels", "resolve_size", "to_tensor", "to_pil", "ImageLike", "DEFAULT_MAX_PIXELS"]

DEFAULT_MAX_PIXELS = 4096 * 4096
_KNOWN_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "I", "I;16", "I;16B", "I;16L"}
ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor]


def load_image(source: ImageLike, *, max_pixels: int = DEFAULT_MAX_PIXELS, notes: Optional[list] = None,
               size: Optional[tuple[int, int]] = None) -> Image.Image:
    """Open and validate an image, returning 8-bit RGB.

    RGBA (composited on white), grayscale and 16-bit images are converted, with a note appended to
    ``notes``; unreadable, truncated or oversized files raise ``InputError``.  ``size=(h, w)`` resizes.
    """
    notes = notes if notes is not None else []
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise InputError(f"image file not found: {path}")
        try:
            with Image.open(path) as probe:
                w, h = probe.size
                if w * h > max_pixels:
                    raise InputError(f"{path} is {w}x{h} = {w * h} pixels, over the limit of {max_pixels}; "
                                     "downscale it or raise --max-pixels")
                probe.load()
                img = probe.copy()
        except InputError:
            raise
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise InputError(f"cannot read image {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    elif isinstance(source, Image.Image):
        img = source
    elif isinstance(source, np.ndarray):
        arr = source
        if arr.dtype != np.uint8:
            if arr.dtype.kind == "f":
                arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
            else:
                raise InputError(f"array images must be uint8 or float in [0, 1], got {arr.dtype}")
        img = Image.fromarray(arr)
    elif isinstance(source, torch.Tensor):
        t = source.detach().float().cpu()
        if t.dim() == 4:
            if t.shape[0] != 1:
                raise InputError("pass one image at a time (got a batch)")
            t = t[0]
        if t.dim() != 3 or t.shape[0] not in (1, 3):
            raise InputError(f"tensor images must be (3, H, W) in [0, 1], got shape {tuple(source.shape)}")
        img = to_pil(t.expand(3, -1, -1))
    else:
        raise InputError(f"unsupported image type {type(source).__name__}")

    if img.width * img.height > max_pixels:
        raise InputError(f"image is {img.width}x{img.height}, over the limit of {max_pixels} pixels")
    mode = img.mode
    if mode == "F" or mode.startswith("I;16") is False and mode not in _KNOWN_MODES:
        raise InputError(f"unsupported image mode {mode}; convert the image to 8-bit RGB first")
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray((arr / max(arr.max(), 1) * 255).round().astype(np.uint8)).convert("RGB")
        notes.append(f"converted {mode} (16-bit) image to 8-bit RGB")
    elif mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba).convert("RGB")
        notes.append(f"composited {mode} image on a white background")
    elif mode != "RGB":
        img = img.convert("RGB")
        notes.append(f"converted {'grayscale ' if mode in ('L', '1') else ''}{mode} image to RGB")
    if size is not None and (img.height, img.width) != tuple(size):
        notes.append(f"resized {img.width}x{img.height} to {size[1]}x{size[0]}")
        img = img.resize((size[1], size[0]), Image.LANCZOS)
    return img


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> (1, 3, H, W) float32 in [0, 1]."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


def to_pil(t: torch.Tensor) -> Image.Image:
    """(3, H, W) or (1, 3, H, W) in [0, 1] -> PIL RGB."""
    if t.dim() == 4:
        t = t[0]
    arr = (t.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(arr)


def resolve_size(height: Optional[int], width: Optional[int], size: Optional[tuple[int, int]] = None,
                 where: str = "size") -> Optional[tuple[int, int]]:
    """``(height, width)`` from diffusers-style arguments; the old ``size=(h, w)`` warns."""
    if size is not None:
        warnings.warn(f"{where}: size=(h, w) is deprecated; pass height= and width=", FutureWarning, stacklevel=3)
        height, width = size
    if (height is None) != (width is None):
        raise InputError("give both height and width (or neither)")
    if height is None:
        return None
    if int(height) < 1 or int(width) < 1:
        raise InputError(f"height and width must be >= 1, got {height}x{width}")
    return int(height), int(width)


def load_pixels(image: ImageLike, *, size: Optional[tuple[int, int]] = None, max_pixels: Optional[int] = None,
                notes: Optional[list] = None) -> Tensor:
    """An image of any accepted form as a (1, 3, H, W) float32 tensor in [0, 1] (resized to ``size``)."""
    return to_tensor(load_image(image, max_pixels=max_pixels or DEFAULT_MAX_PIXELS, notes=notes, size=size))
