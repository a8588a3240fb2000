"""Image metrics shared by the editing API, the demo and the benchmark harness (scikit-image)."""
from __future__ import annotations

import numpy as np
import torch


def as_numpy(t: torch.Tensor) -> np.ndarray:
    """Image tensor in [0, 1] ((C, H, W) or (B, C, H, W)) -> float64 array, channels last."""
    arr = t.detach().float().clamp(0, 1).cpu().numpy().astype(np.float64)
    return np.moveaxis(arr, -3, -1)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Pixel PSNR in dB of two arrays in [0, 1], capped at 100 dB (identical images), as scikit-image's
    ``peak_signal_noise_ratio`` computes it otherwise."""
    mse = float(np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2))
    return float(10 * np.log10(1.0 / max(mse, 1e-10)))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two (H, W, C) arrays in [0, 1]."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, channel_axis=2, data_range=1.0))


def image_psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pixel PSNR in dB of two image tensors in [0, 1] (any matching shapes)."""
    return psnr(as_numpy(a), as_numpy(b))
