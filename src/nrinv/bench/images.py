"""The image sets of the benchmark: the built-in world, scikit-image's photos, or a captioned folder."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..io.images import load_image

__all__ = ["BenchImage", "load_image_set", "SKIMAGE_PHOTOS"]


@dataclass
class BenchImage:
    name: str
    image: Any  # PIL image
    prompt: str


SKIMAGE_PHOTOS = {
    "astronaut": "a photo of an astronaut in a white space suit holding a helmet, with a flag",
    "coffee": "a photo of a cup of coffee on a saucer",
    "chelsea": "a photo of a ginger tabby cat",
    "rocket": "a photo of a rocket on a launch pad",
    "hubble": "a photo of a galaxy deep field in space",
}


def load_image_set(spec: str, *, size: tuple[int, int], n: int = 4, seed: int = 0) -> list[BenchImage]:
    """``shapes`` (built-in world renders), ``skimage`` (bundled photos), or a folder with captions.

    A folder holds images plus ``captions.csv`` (``file,caption``) or ``captions.jsonl``
    (``{"file": ..., "caption": ...}`` per line).
    """
    from PIL import Image

    if spec == "shapes":
        from .. import shapes

        out = []
        for i in range(n):
            scene = shapes.sample_scene(seed + 10_000 + i)
            img = Image.fromarray(shapes.render(scene, seed=seed + i)).resize((size[1], size[0]))
            out.append(BenchImage(f"shapes-{seed + i}", img, scene.caption()))
        return out
    if spec == "skimage":
        from skimage import data

        out = []
        for name, caption in list(SKIMAGE_PHOTOS.items())[:n]:
            arr = getattr(data, name)()
            img = load_image(arr if arr.ndim == 3 else np.stack([arr] * 3, -1), size=size)
            out.append(BenchImage(name, img, caption))
        return out
    folder = Path(spec)
    if not folder.is_dir():
        raise InputError(f"--images must be 'shapes', 'skimage' or a folder with captions; got {spec!r}")
    captions: dict[str, str] = {}
    if (folder / "captions.csv").is_file():
        with open(folder / "captions.csv", newline="") as fh:
            for row in csv.DictReader(fh):
                captions[row["file"]] = row["caption"]
    elif (folder / "captions.jsonl").is_file():
        for line in (folder / "captions.jsonl").read_text().splitlines():
            if line.strip():
                item = json.loads(line)
                captions[item["file"]] = item["caption"]
    else:
        raise InputError(f"{folder} has no captions.csv or captions.jsonl")
    out = []
    for file, caption in sorted(captions.items())[:n]:
        out.append(BenchImage(Path(file).stem, load_image(folder / file, size=size), caption))
    return out
