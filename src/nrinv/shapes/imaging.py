"""Image helpers shared by the shapes training, distillation, evaluation and judge modules.

uint8 image batches are (B, H, W, 3) numpy arrays; model tensors are (B, 3, H, W) floats in [-1, 1].
This module imports only :mod:`world` (and numpy / torch / PIL lazily), so every other module of
``nrinv.shapes`` can import it without creating a cycle.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .world import render, sample_scene

__all__ = ["images_to_tensor", "tensor_to_uint8", "save_grid", "psnr_uint8", "render_pool"]


def images_to_tensor(images: np.ndarray):
    """uint8 (B, H, W, 3) -> float tensor (B, 3, H, W) in [-1, 1]: ``x / 127.5 - 1``."""
    import torch

    arr = np.ascontiguousarray(images)
    if not arr.flags.writeable:  # np.asarray(PIL image) is read-only: torch warns about sharing it
        arr = arr.copy()
    return torch.from_numpy(arr).float().permute(0, 3, 1, 2) / 127.5 - 1.0


def tensor_to_uint8(x) -> np.ndarray:
    """Float tensor (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3) numpy array (clamped, rounded)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def save_grid(images: np.ndarray, path: Path, ncol: int = 8, scale: int = 2) -> None:
    """Save uint8 images as a PNG grid (``ncol`` per row, 2 px white gutters, nearest upscaling)."""
    from PIL import Image

    n = len(images)
    nrow = math.ceil(n / ncol)
    h, w = images.shape[1:3]
    grid = np.full((nrow * (h + 2), ncol * (w + 2), 3), 255, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, ncol)
        grid[r * (h + 2) : r * (h + 2) + h, c * (w + 2) : c * (w + 2) + w] = im
    Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(path)


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """Mean per-image PSNR (dB) between uint8 image batches: ``10 log10(255^2 / MSE)``."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(1)
    return float(np.mean(10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))))


def render_pool(n: int, seed0: int, desc: str = "render"):
    """Scenes ``sample_scene(seed0 + i)`` and their renders (render seed ``seed0 + i``), i < n."""
    from tqdm import tqdm

    scenes = [sample_scene(seed0 + i) for i in range(n)]
    imgs = np.stack([render(s, seed0 + i) for i, s in enumerate(tqdm(scenes, desc=desc, mininterval=5))])
    return scenes, imgs
