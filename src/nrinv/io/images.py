"""Images in: validated loading of paths, PIL images, arrays and tensors; conversions."""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from ..errors import InputError
from .limits import DECODE_MAX_PIXELS, DEFAULT_MAX_PIXELS

__all__ = ["load_image", "load_pixels", "open_frames", "resolve_size", "check_resize", "to_tensor", "to_pil",
           "ImageLike", "DEFAULT_MAX_PIXELS"]

#: formats whose multi-frame files are animations (a clip), not one image with extras (MPO, TIFF pages)
_ANIMATED_FORMATS = ("GIF", "PNG", "WEBP")
_KNOWN_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "I", "I;16", "I;16B", "I;16L",
                "I;16N"}
ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor]


def check_resize(size: Optional[tuple[int, int]], max_pixels: int = DEFAULT_MAX_PIXELS,
                 what: str = "resize to") -> None:
    """A target ``(h, w)``: positive, and within the pixel limit."""
    if size is None:
        return
    h, w = size
    if int(h) < 1 or int(w) < 1:
        raise InputError(f"cannot {what} {h}x{w} (HxW): height and width must be >= 1")
    if int(h) * int(w) > max_pixels:
        raise InputError(f"cannot {what} {h}x{w} (HxW) = {int(h) * int(w)} pixels: over the limit of {max_pixels} "
                         "(raise --max-pixels to allow it)")


def _open_file(path: Path, max_pixels: int) -> Image.Image:
    """Decode a file completely; any failure of the decoder is an unreadable image (one line).  An
    animation (an animated GIF, PNG or WebP) is refused: it is a clip, which an image model does not
    take (the command line and the app refuse it alike)."""
    def one_image(img: Image.Image) -> Image.Image:
        frames = int(getattr(img, "n_frames", 1))
        if frames > 1 and img.format in _ANIMATED_FORMATS:
            raise InputError(f"{path} is an animated {img.format} ({frames} frames), a clip: an image model takes "
                             "one image; save the frame you want as a PNG")
        return img.copy()

    return _decode(path, max_pixels, one_image)


def open_frames(path: Path, max_pixels: int) -> list[Image.Image]:
    """Every frame of a (multi-frame, e.g. animated GIF) image file as RGB, with :func:`_open_file`'s
    checks and one-line errors."""
    def every_frame(img: Image.Image) -> list[Image.Image]:
        frames = []
        for i in range(int(getattr(img, "n_frames", 1))):
            img.seek(i)
            frames.append(img.convert("RGB"))
        return frames

    return _decode(path, max_pixels, every_frame)


def _decode(path: Path, max_pixels: int, read: Any) -> Any:
    """``read(image)`` of the opened, fully decoded file, its size checked first against ``max_pixels``."""
    try:
        with warnings.catch_warnings():
            # PIL warns about corrupt metadata and large images as it decodes: the pixel limit below and
            # the errors raised decide, and a command line stays at one line
            warnings.simplefilter("ignore")
            with Image.open(path) as probe:
                w, h = probe.size
                if w * h > max_pixels:
                    raise InputError(f"{path} is {h}x{w} (HxW) = {w * h} pixels, over the limit of {max_pixels}; "
                                     "downscale it (--resize HxW) or raise --max-pixels")
                probe.load()
                return read(probe)
    except InputError:
        raise
    except Image.DecompressionBombError as exc:
        raise InputError(f"{path} declares an image too large to decode ({str(exc).split(' exceeds')[0]}); "
                         "downscale it") from None
    except MemoryError:
        raise InputError(f"cannot read image {path}: it does not fit in memory") from None
    except Exception as exc:  # PIL's decoders raise many types for corrupt input (OSError, SyntaxError, ...)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, UnidentifiedImageError):
            reason = "not an image format PIL can read"
        raise InputError(f"cannot read image {path}: {reason}") from None


def _from_16bit(img: Image.Image, notes: list) -> Image.Image:
    """16-bit grayscale scaled by the format's range (65535 -> 255), not by the image's own maximum."""
    arr = np.asarray(img).astype(np.float64)
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if lo < 0 or hi > 65535:
        raise InputError(f"{img.mode} image with values {lo:g}..{hi:g} is not 16-bit; convert it to 8-bit RGB first")
    notes.append(f"converted {img.mode} (16-bit) image to 8-bit RGB (values scaled by 255/65535)")
    return Image.fromarray(np.round(arr * (255.0 / 65535.0)).astype(np.uint8)).convert("RGB")


def load_image(source: ImageLike, *, max_pixels: int = DEFAULT_MAX_PIXELS, notes: Optional[list] = None,
               size: Optional[tuple[int, int]] = None) -> Image.Image:
    """Open and validate an image, returning 8-bit RGB.

    RGBA (composited on white), grayscale and 16-bit images are converted, with a note appended to
    ``notes``; unreadable, truncated, empty, animated or oversized files raise ``InputError``.
    ``size=(h, w)`` resizes; then ``max_pixels`` holds the resized image, and a file up to
    ``DECODE_MAX_PIXELS`` may be read.
    """
    notes = notes if notes is not None else []
    check_resize(size, max_pixels)
    source_limit = max_pixels if size is None else max(max_pixels, DECODE_MAX_PIXELS)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise InputError(f"image file not found: {path}")
        img = _open_file(path, source_limit)
    elif isinstance(source, Image.Image):
        img = source
    elif isinstance(source, np.ndarray):
        arr = source
        if arr.dtype != np.uint8:
            if arr.dtype.kind == "f":
                arr = (np.clip(np.nan_to_num(arr), 0, 1) * 255).round().astype(np.uint8)
            else:
                raise InputError(f"array images must be uint8 or float in [0, 1], got {arr.dtype}")
        if arr.ndim not in (2, 3) or arr.ndim == 3 and arr.shape[2] not in (1, 3, 4):
            raise InputError(f"array images must be (H, W), (H, W, 3) or (H, W, 4), got shape {arr.shape}")
        img = Image.fromarray(arr[:, :, 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr)
    elif isinstance(source, torch.Tensor):
        t = source.detach().float().cpu()
        if t.dim() == 4:
            if t.shape[0] != 1:
                raise InputError("pass one image at a time (got a batch)")
            t = t[0]
        if t.dim() != 3 or t.shape[0] not in (1, 3):
            raise InputError(f"tensor images must be (3, H, W) in [0, 1], got shape {tuple(source.shape)}")
        img = to_pil(torch.nan_to_num(t).expand(3, -1, -1))
    else:
        raise InputError(f"unsupported image type {type(source).__name__}")

    if img.width * img.height == 0:
        raise InputError(f"the image is empty ({img.height}x{img.width}, HxW)")
    if img.width * img.height > source_limit:
        raise InputError(f"image is {img.height}x{img.width} (HxW), over the limit of {max_pixels} pixels; resize it "
                         "or raise max_pixels")
    mode = img.mode
    if mode not in _KNOWN_MODES:
        raise InputError(f"unsupported image mode {mode}; convert the image to 8-bit RGB first")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        img = _from_16bit(img, notes)
    elif mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba).convert("RGB")
        notes.append(f"composited {mode} image on a white background")
    elif mode != "RGB":
        img = img.convert("RGB")
        notes.append(f"converted {'grayscale ' if mode in ('L', '1') else ''}{mode} image to RGB")
    if size is not None and (img.height, img.width) != tuple(size):
        notes.append(f"resized {img.height}x{img.width} to {size[0]}x{size[1]} (HxW)")
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


def resolve_size(height: Optional[int], width: Optional[int]) -> Optional[tuple[int, int]]:
    """``(height, width)`` from diffusers-style arguments, checked; ``None`` when neither is given."""
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
