"""Scoring an edit of the shapes world against its exactly rendered target.

For an item of :func:`nrinv.shapes.editset.edit_set` (one attribute changed) and the edited image:

* ``target``: the judge reads the changed attribute as the target value;
* ``preserved``: the judge reads position, size and background (kind and colour) as in the target,
  the changed attribute excepted; ``all_kept`` adds shape and colour;
* ``psnr``: pixel PSNR (dB) of the edited image against the exactly rendered target image.
"""
from __future__ import annotations

import numpy as np

from ..metrics import psnr

KEPT = ("position", "size", "background", "background_color")
ALL = ("shape", "color", "size", "position", "background", "background_color")

__all__ = ["KEPT", "ALL", "judge_confident", "score_edit"]


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
    }
