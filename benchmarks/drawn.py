"""Images drawn by hand with PIL (``ImageDraw``), as a user would draw them: not the shapes world's renderer.

Hard (aliased) edges, the user's own colour values (close to, not equal to, the world's palette),
hand-made gradients and stripes, at 64x64, 96x64 (width x height) and 256x256.  Each scene is drawn
together with its exact object mask, so an edit can be scored on the pixels it must keep.  Used by
``benchmarks/own_images.py``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

# the user's colours: near the names' usual values, none equal to the renderer's palette
USER_COLORS = {
    "red": (225, 25, 30), "green": (30, 160, 70), "blue": (25, 70, 225), "yellow": (250, 220, 20),
    "purple": (140, 45, 180), "orange": (250, 140, 20), "white": (250, 250, 250), "black": (10, 10, 10),
}
SIZES_WH = ((64, 64), (96, 64), (256, 256))
_FRACTION = {"small": 0.135, "large": 0.22}   # object radius / min(width, height), as the world's 8.5 / 14 of 64
_CENTER = {"center": (0.5, 0.5), "left": (0.31, 0.5), "right": (0.69, 0.5), "top": (0.5, 0.31),
           "bottom": (0.5, 0.69)}
_PHRASE = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
           "center": "in the center"}


@dataclass(frozen=True)
class Drawing:
    shape: str
    color: str
    size: str
    position: str
    background: str          # plain | gradient | striped
    background_color: str
    width: int = 64
    height: int = 64

    def caption(self) -> str:
        return (f"a {self.size} {self.color} {self.shape} {_PHRASE[self.position]}, "
                f"{self.background_color} {self.background} background")

    def attributes(self) -> dict:
        return {"shape": self.shape, "color": self.color, "size": self.size, "position": self.position,
                "background": self.background, "background_color": self.background_color}

    def replace(self, **kw) -> Drawing:
        return replace(self, **kw)


def _second_tone(rgb):
    return tuple(int(round(c + 0.5 * (128 - c))) for c in rgb)


def _background(d: Drawing) -> Image.Image:
    w, h = d.width, d.height
    c1 = USER_COLORS[d.background_color]
    c2 = _second_tone(c1)
    img = Image.new("RGB", (w, h), c1)
    draw = ImageDraw.Draw(img)
    if d.background == "gradient":   # left to right, one line per column
        for x in range(w):
            t = x / max(w - 1, 1)
            draw.line([(x, 0), (x, h)], fill=tuple(int(round(a + t * (b - a))) for a, b in zip(c1, c2)))
    elif d.background == "striped":  # diagonal bands, period ~ 12/64 of the height
        period = max(4, round(12 * min(w, h) / 64))
        for k in range(-h, w + h, period):
            draw.polygon([(k, 0), (k + period // 2, 0), (k + period // 2 - h, h), (k - h, h)], fill=c2)
    return img


def _outline(d: Drawing) -> list:
    """The object as (kind, geometry) items in pixel coordinates."""
    s = min(d.width, d.height)
    cx, cy = _CENTER[d.position][0] * d.width, _CENTER[d.position][1] * d.height
    r = _FRACTION[d.size] * s
    if d.shape == "circle":
        return [("ellipse", [cx - r, cy - r, cx + r, cy + r])]
    if d.shape == "square":
        a = 0.85 * r
        return [("polygon", [(cx - a, cy - a), (cx + a, cy - a), (cx + a, cy + a), (cx - a, cy + a)])]
    if d.shape == "diamond":
        a = 1.12 * r
        return [("polygon", [(cx, cy - a), (cx + 0.8 * a, cy), (cx, cy + a), (cx - 0.8 * a, cy)])]
    if d.shape == "triangle":
        a = 1.05 * r
        return [("polygon", [(cx, cy - a), (cx + 1.05 * a, cy + 0.8 * a), (cx - 1.05 * a, cy + 0.8 * a)])]
    if d.shape == "star":
        pts = []
        for k in range(10):
            ang = -np.pi / 2 + k * np.pi / 5
            rr = r * (1.15 if k % 2 == 0 else 0.48)
            pts.append((cx + rr * np.cos(ang), cy + rr * np.sin(ang) + 0.08 * r))
        return [("polygon", pts)]
    if d.shape == "cross":
        a, b = r, 0.36 * r
        return [("polygon", [(cx - b, cy - a), (cx + b, cy - a), (cx + b, cy + a), (cx - b, cy + a)]),
                ("polygon", [(cx - a, cy - b), (cx + a, cy - b), (cx + a, cy + b), (cx - a, cy + b)])]
    raise ValueError(d.shape)


def _paint(draw: ImageDraw.ImageDraw, d: Drawing, fill) -> None:
    for kind, geom in _outline(d):
        (draw.ellipse if kind == "ellipse" else draw.polygon)(geom, fill=fill)


def draw(d: Drawing) -> np.ndarray:
    """The drawing as uint8 (height, width, 3)."""
    img = _background(d)
    _paint(ImageDraw.Draw(img), d, USER_COLORS[d.color])
    return np.asarray(img)


def object_mask(d: Drawing) -> np.ndarray:
    """(height, width) bool: the object's pixels."""
    m = Image.new("L", (d.width, d.height), 0)
    _paint(ImageDraw.Draw(m), d, 255)
    return np.asarray(m) > 127


def erode(mask: np.ndarray, px: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(px):
        p = np.pad(out, 1, constant_values=False)
        out = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return out


def dilate(mask: np.ndarray, px: int) -> np.ndarray:
    return ~erode(~mask, px)


def margin(d: Drawing) -> int:
    """Pixels of a mask's edge left out of a region score (the VAE blurs edges)."""
    return max(1, round(2 * min(d.width, d.height) / 64))


# a few scenes a user might draw (the report drew a yellow square, a triangle, an orange star, circles)
BASE_SCENES = (
    Drawing("square", "yellow", "large", "center", "plain", "blue"),
    Drawing("triangle", "red", "large", "left", "plain", "white"),
    Drawing("star", "orange", "large", "right", "gradient", "green"),
    Drawing("circle", "green", "small", "top", "striped", "black"),
    Drawing("diamond", "blue", "large", "bottom", "plain", "yellow"),
    Drawing("cross", "purple", "small", "center", "gradient", "white"),
)


def drawings(sizes=SIZES_WH, scenes=BASE_SCENES) -> list[Drawing]:
    """Every base scene at every size, in a fixed order."""
    return [s.replace(width=w, height=h) for (w, h) in sizes for s in scenes]


_NEXT = {"color": ("red", "green", "blue", "yellow", "purple", "orange", "white", "black"),
         "shape": ("circle", "square", "triangle", "star", "diamond", "cross"),
         "background_color": ("black", "white", "blue", "green", "red", "purple", "orange", "yellow")}


def edit_target(d: Drawing, attribute: str, k: int = 0) -> Drawing:
    """A target changing ``attribute`` (``color``, ``shape`` or ``background_color``), deterministic in ``k``."""
    values = [v for v in _NEXT[attribute] if v not in (d.color, d.background_color)]
    if attribute == "shape":
        values = [v for v in _NEXT["shape"] if v != d.shape]
    return d.replace(**{attribute: values[k % len(values)]})


def to_judge_size(image: np.ndarray) -> np.ndarray:
    """The image as the judge reads it: 64x64 (bilinear, as ``nrinv.shapes.judge.judge_batch`` resizes)."""
    if image.shape[:2] == (64, 64):
        return image
    return np.asarray(Image.fromarray(image).resize((64, 64), Image.BILINEAR))
