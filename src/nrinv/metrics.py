"""Image metrics shared by the editing API, the demo and the benchmark harness (scikit-image)."""
from __future__ import annotations

from typing import Optional

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


#: below this PSNR of D(E(x)) the VAE itself loses visible detail of an image (measured: renders of
#: the shapes world 33.7-37.5 dB, a circle drawn with PIL 27.0 dB, drawn 1- and 4-pixel stripes 8.6 and 10.0 dB)
LOW_VAE_CEILING_DB = 25.0


def vae_ceiling_psnr(adapter, pixels: torch.Tensor) -> float:
    """The VAE ceiling of an image: PSNR in dB of ``x`` against ``D(E(x))``, the best any inversion of
    that model can reconstruct it (``pixels``: a (1, 3, H, W) or (3, H, W) tensor in [0, 1])."""
    pixels = pixels if pixels.dim() == 4 else pixels[None]
    with torch.no_grad():
        decoded = adapter.decode(adapter.encode(pixels), tuple(pixels.shape[-2:]))
    return image_psnr(decoded, pixels)


def vae_ceiling_note(ceiling_db: float) -> Optional[str]:
    """A note for a low VAE ceiling (None when it is not low)."""
    if ceiling_db >= LOW_VAE_CEILING_DB:
        return None
    return (f"the model's VAE alone reproduces this image at {ceiling_db:.1f} dB (PSNR of D(E(x)), below "
            f"{LOW_VAE_CEILING_DB:g} dB): detail it cannot represent (fine stripes, small text, 1-pixel lines) "
            "is lost by every inversion and edit")
