"""Clips in and out, for video pipelines: a list of frames, a folder of frames, an animated GIF or an MP4
(MP4 through imageio's ffmpeg plugin: ``pip install imageio[ffmpeg]``)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..errors import InputError
from .images import DEFAULT_MAX_PIXELS, load_image, load_pixels, open_frames, to_tensor

__all__ = ["is_clip", "load_clip", "load_frames", "save_clip", "FRAME_SUFFIXES", "VIDEO_SUFFIXES"]

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".avi", ".mkv")
_FFMPEG_HINT = "reading and writing {} needs imageio's ffmpeg plugin: pip install imageio[ffmpeg]"


def _gif_frames(path: Path) -> int:
    try:
        with Image.open(path) as img:
            return int(getattr(img, "n_frames", 1))
    except Exception:  # not readable as an image: the loader says so in its own words
        return 1


def is_clip(source: Any) -> bool:
    """Whether ``source`` is a clip: a list/tuple of frames, a (F, 3, H, W) tensor with F > 1, a folder,
    an animated GIF or a video file."""
    if isinstance(source, (list, tuple)):
        return True
    if isinstance(source, Tensor):
        return source.dim() == 4 and source.shape[0] > 1
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir() or path.suffix.lower() in VIDEO_SUFFIXES:
            return True
        return path.suffix.lower() == ".gif" and path.is_file() and _gif_frames(path) > 1
    return False


def _video_plugin() -> bool:
    import importlib.util

    return any(importlib.util.find_spec(name) is not None for name in ("imageio_ffmpeg", "av"))


def _read_video(path: Path) -> list[Image.Image]:
    if not _video_plugin():
        raise InputError(_FFMPEG_HINT.format(path.suffix))
    import imageio.v3 as iio

    try:
        frames = iio.imread(path, index=None)
    except Exception as exc:  # any decoder failure is an unreadable video (one line)
        lines = [line for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        raise InputError(f"cannot read the video {path}: {lines[-1]}") from None
    return [Image.fromarray(np.asarray(f)).convert("RGB") for f in frames]


def _frames_of(source: Any, max_pixels: int) -> list:
    if isinstance(source, (list, tuple)):
        return list(source)
    if isinstance(source, Tensor):
        if source.dim() != 4 or source.shape[1] != 3:
            raise InputError(f"a clip tensor must be (F, 3, H, W) in [0, 1], got shape {tuple(source.shape)}")
        return list(source)
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
        if not files:
            raise InputError(f"the folder {path} has no frames ({', '.join(FRAME_SUFFIXES)} files, in name order)")
        return files
    if not path.is_file():
        raise InputError(f"clip not found: {path}")
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return _read_video(path)
    return open_frames(path, max_pixels)  # a GIF (or any multi-frame image): every frame, as RGB


def load_clip(source: Any, *, size: Optional[tuple[int, int]] = None, max_pixels: Optional[int] = None,
              notes: Optional[list] = None) -> Tensor:
    """A clip (list of frames in any image form, folder, GIF, video file or (F, 3, H, W) tensor) as an
    (F, 3, H, W) float32 tensor in [0, 1]; every frame resized to ``size`` when given."""
    limit = max_pixels or DEFAULT_MAX_PIXELS
    frames = _frames_of(source, limit)
    if not frames:
        raise InputError("the clip has no frames")
    seen: list[str] = []
    pils = [load_image(f, max_pixels=limit, notes=seen, size=size) for f in frames]
    sizes = {(p.height, p.width) for p in pils}
    if len(sizes) != 1:
        raise InputError(f"the clip's frames have different sizes {sorted(sizes)} (HxW); pass a size to resize them")
    if notes is not None:
        notes.extend(dict.fromkeys(seen))  # once per clip, not once per frame
    return torch.cat([to_tensor(p) for p in pils])


def load_frames(source: Any, *, video: bool, size: Optional[tuple[int, int]] = None,
                max_pixels: Optional[int] = None, notes: Optional[list] = None) -> Tensor:
    """The input of a model: a clip (F, 3, H, W) for a video model, an image (1, 3, H, W) otherwise;
    a clip for an image model, or a single image for a video model, is refused in one line."""
    clip = is_clip(source)
    if video and not clip:
        raise InputError("this is a video model: pass a clip (a list of frames, a folder of frames, an animated GIF "
                         "or an MP4), not a single image")
    if not video and clip:
        raise InputError("this is an image model: pass one image, not a clip (list of frames, folder, animated GIF "
                         "or video)")
    if video:
        return load_clip(source, size=size, max_pixels=max_pixels, notes=notes)
    return load_pixels(source, size=size, max_pixels=max_pixels, notes=notes)


def save_clip(frames: Sequence[Any], path, *, fps: float = 8.0, force: bool = True) -> Path:
    """Write frames (PIL images or (3, H, W) tensors in [0, 1]): ``.gif`` (looping), a video file
    (``.mp4``: imageio's ffmpeg plugin) or, for a path without a suffix, a folder of ``frame_0000.png``."""
    from .files import OutputExistsError, atomic_write, save_png
    from .images import to_pil

    path = Path(path)
    pils = [f if isinstance(f, Image.Image) else to_pil(f) for f in frames]
    suffix = path.suffix.lower()
    if suffix == "":
        if path.exists() and any(path.iterdir()) and not force:
            raise OutputExistsError(f"{path} exists and is not empty; pass --force to overwrite it")
        path.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(pils):
            save_png(img, path / f"frame_{i:04d}.png", force=True)
        return path
    if suffix == ".gif":
        def write(tmp):
            pils[0].save(tmp, format="GIF", save_all=True, append_images=pils[1:], duration=round(1000 / fps), loop=0)
        return atomic_write(path, write, force=force)
    if suffix in VIDEO_SUFFIXES:
        if not _video_plugin():
            raise InputError(_FFMPEG_HINT.format(suffix))
        import imageio.v3 as iio

        # encoded in memory: ffmpeg picks the container by the file name, and the temporary name is not it
        data = iio.imwrite("<bytes>", np.stack([np.asarray(p) for p in pils]), extension=suffix, fps=fps,
                           macro_block_size=1)
        return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), force=force)
    raise InputError(f"cannot write a clip as {suffix}: use .gif, .mp4 or a folder (a path without a suffix)")
