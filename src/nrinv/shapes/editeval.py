"""Scoring an edit of the shapes world against its exactly rendered target.

For an item of :func:`nrinv.shapes.editset.edit_set` (one attribute changed) and the edited image:

* ``target``: the judge reads the changed attribute as the target value;
* ``preserved``: the judge reads position, size and background (kind and colour) as in the target,
  the changed attribute excepted; ``all_kept`` adds shape and colour;
* ``psnr``: pixel PSNR (dB) of the edited image against the exactly rendered target image;
* ``preservation``: pixel PSNR (dB) of the edited image against the *source* image over the pixels the
  edit must not touch (``kept_region``): for a colour or shape edit, every pixel outside the union of
  the source and target objects; for a background edit, the object (fully covered pixels).  The world
  renders both objects exactly, so the region is exact.
"""
from __future__ import annotations

import numpy as np

from ..metrics import psnr

KEPT = ("position", "size", "background", "background_color")
ALL = ("shape", "color", "size", "position", "background", "background_color")

__all__ = ["KEPT", "ALL", "judge_confident", "score_edit", "kept_region", "region_psnr"]


def judge_confident(images: list[np.ndarray]) -> list[tuple[dict, float]]:
    """Judge reads of uint8 (H, W, 3) images plus, per image, the lowest softmax confidence."""
    import torch

    from .judge import ATTRIBUTE_VALUES, ATTRIBUTES, images_to_tensor, load_judge_model

    with torch.no_grad():
        logits = load_judge_model()(images_to_tensor(np.stack(images)))
    out = []
    for j in range(len(images)):
        read, conf = {}, 1.0
        for a in ATTRIBUTES:
            p = torch.softmax(logits[a][j], 0)
            read[a] = ATTRIBUTE_VALUES[a][int(p.argmax())]
            conf = min(conf, float(p.max()))
        out.append((read, conf))
    return out


def kept_region(item: dict) -> np.ndarray:
    """(64, 64) bool: the pixels an edit of ``item`` must leave as they are in the source."""
    from .world import object_mask

    source = object_mask(item["source"], item["render_seed"])
    target = object_mask(item["target"], item["render_seed"])
    if item["changed"] == "background":
        return (source >= 1.0) & (target >= 1.0)
    return (source <= 0.0) & (target <= 0.0)


def region_psnr(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> float:
    """PSNR (dB) of two uint8 (H, W, 3) images over the pixels where ``region`` is True."""
    diff = (a.astype(np.float64) - b.astype(np.float64))[region] / 255.0
    mse = float((diff ** 2).mean()) if diff.size else 0.0
    return float(10 * np.log10(1.0 / max(mse, 1e-10)))


def score_edit(image: np.ndarray, item: dict, read: dict) -> dict:
    """Scores of one edited uint8 image given the judge's ``read`` of it."""
    tgt = item["target"].as_dict()
    changed = item["changed"]
    kept = [a for a in KEPT if a != changed]
    others = [a for a in ALL if a != changed]
    return {
        "target": float(read[changed] == tgt[changed]),
        "preserved": float(all(read[a] == tgt[a] for a in kept)),
        "all_kept": float(all(read[a] == tgt[a] for a in others)),
        **{f"kept_{a}": float(read[a] == tgt[a]) for a in kept},
        "psnr": psnr(image.astype(np.float64) / 255, item["target_image"].astype(np.float64) / 255),
        "preservation": region_psnr(image, item["source_image"], kept_region(item)),
    }
