"""Edit benchmark set: (source image, source caption) -> (target caption, exact target image).

Each item changes exactly one attribute, cycling colour -> shape -> background (texture kind) by
default, or through the attributes asked for (``GEOMETRY_ATTRIBUTES``: move the object, resize it),
and the target is rendered with the same render seed as the source, so it is the exact ground truth
(the object's placement jitter and the background's texture have their own random streams: a moved
or resized object keeps its jitter, the background stays pixel for pixel).
"""
from __future__ import annotations

import numpy as np

from .world import BACKGROUNDS, COLOR_NAMES, POSITIONS, SHAPES, SIZES, Scene, render, sample_scene

EDIT_ATTRIBUTES = ("color", "shape", "background")
#: the object moved to another position, or made small / large
GEOMETRY_ATTRIBUTES = ("position", "size")
EDITSET_SEED0 = 80_000_000  # disjoint from training / evaluation seeds


def edit_set(n: int, seed: int = 0, attributes: tuple = EDIT_ATTRIBUTES) -> list[dict]:
    """Return ``n`` edit pairs; deterministic given ``seed``; item ``i`` changes ``attributes[i % len]``
    (any of ``EDIT_ATTRIBUTES + GEOMETRY_ATTRIBUTES``).

    Each dict has: ``source`` (Scene), ``target`` (Scene), ``source_image`` / ``target_image``
    (uint8 64x64x3, same render seed), ``source_caption``, ``target_caption``, ``changed``
    (attribute name), ``render_seed``.
    """
    unknown = [a for a in attributes if a not in EDIT_ATTRIBUTES + GEOMETRY_ATTRIBUTES]
    if unknown or not attributes:
        raise ValueError(f"edit attributes must be among {EDIT_ATTRIBUTES + GEOMETRY_ATTRIBUTES}, got {attributes}")
    rng = np.random.default_rng([int(seed), 31337])
    items = []
    for i in range(n):
        scene_seed = EDITSET_SEED0 + int(seed) * 100_000 + i
        src = sample_scene(scene_seed)
        attr = attributes[i % len(attributes)]
        if attr == "color":
            choices = [c for c in COLOR_NAMES if c not in (src.color, src.background_color)]
        elif attr == "shape":
            choices = [s for s in SHAPES if s != src.shape]
        elif attr == "background":
            choices = [b for b in BACKGROUNDS if b != src.background]
        elif attr == "position":
            choices = [p for p in POSITIONS if p != src.position]
        else:
            choices = [s for s in SIZES if s != src.size]
        tgt = src.replace(**{attr: choices[rng.integers(len(choices))]})
        render_seed = scene_seed
        items.append(
            {
                "source": src,
                "target": tgt,
                "source_image": render(src, render_seed),
                "target_image": render(tgt, render_seed),
                "source_caption": src.caption(),
                "target_caption": tgt.caption(),
                "changed": attr,
                "render_seed": render_seed,
            }
        )
    return items


def concept_examples(index: int, n: int = 3) -> tuple[Scene, list[np.ndarray]]:
    """A colour + shape + size concept (held-out scene ``index``) and ``n`` renders of it in other scenes:
    the examples of the rare-concept benchmarks (``benchmarks/rare_concepts.py``, ``seed_spread.py``)."""
    base = sample_scene(60_000_000 + index)
    examples = []
    for j in range(n):
        seed = 60_100_000 + 10 * index + j
        scene = sample_scene(seed)
        background = scene.background_color if scene.background_color != base.color else \
            [c for c in ("blue", "white", "black") if c != base.color][0]
        scene = scene.replace(shape=base.shape, color=base.color, size=base.size, background_color=background)
        examples.append(render(scene, seed))
    return base, examples
