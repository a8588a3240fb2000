"""The "shapes" world: 64x64 RGB images with one coloured object on a (possibly textured) background.

Everything here is pure numpy and deterministic given the seeds.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import numpy as np
from skimage.draw import polygon as _sk_polygon

IMAGE_SIZE = 64
_SS = 4  # supersampling factor for anti-aliased edges

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
COLORS = {
    "red": (215, 35, 35),
    "green": (40, 165, 55),
    "blue": (35, 75, 215),
    "yellow": (240, 215, 35),
    "purple": (135, 50, 175),
    "orange": (245, 135, 25),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
COLOR_NAMES = tuple(COLORS)
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom", "center")
BACKGROUNDS = ("plain", "gradient", "striped", "noisy")

POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
# every word that can appear in a caption (used to build the tokenizer)
VOCAB_WORDS = tuple(
    sorted(
        set(SHAPES)
        | set(COLOR_NAMES)
        | set(SIZES)
        | set(BACKGROUNDS)
        | {w for p in POSITION_PHRASES.values() for w in p.split()}
        | {"a", "background", ","}
    )
)

ATTRIBUTES = ("shape", "color", "size", "position", "background", "background_color")
ATTRIBUTE_VALUES = {
    "shape": SHAPES,
    "color": COLOR_NAMES,
    "size": SIZES,
    "position": POSITIONS,
    "background": BACKGROUNDS,
    "background_color": COLOR_NAMES,
}

_RADIUS = {"small": 8.5, "large": 14.0}
_CENTERS = {
    "left": (20.0, 32.0),
    "right": (44.0, 32.0),
    "top": (32.0, 20.0),
    "bottom": (32.0, 44.0),
    "center": (32.0, 32.0),
}


@dataclass(frozen=True)
class Scene:
    shape: str
    color: str
    size: str
    position: str
    background: str
    background_color: str

    def __post_init__(self):
        for name in ATTRIBUTES:
            v = getattr(self, name)
            if v not in ATTRIBUTE_VALUES[name]:
                raise ValueError(f"invalid {name}: {v!r}")
        if self.color == self.background_color:
            raise ValueError("object colour must differ from background colour")

    def caption(self) -> str:
        return (
            f"a {self.size} {self.color} {self.shape} {POSITION_PHRASES[self.position]}, "
            f"{self.background_color} {self.background} background"
        )

    def replace(self, **changes) -> Scene:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def sample_scene(seed: int) -> Scene:
    """Deterministically sample a uniformly random valid scene."""
    rng = np.random.default_rng([int(seed), 7919])
    color = COLOR_NAMES[rng.integers(len(COLOR_NAMES))]
    others = [c for c in COLOR_NAMES if c != color]
    return Scene(
        shape=SHAPES[rng.integers(len(SHAPES))],
        color=color,
        size=SIZES[rng.integers(len(SIZES))],
        position=POSITIONS[rng.integers(len(POSITIONS))],
        background=BACKGROUNDS[rng.integers(len(BACKGROUNDS))],
        background_color=others[rng.integers(len(others))],
    )


_WORD_RE = re.compile(r"[a-z]+")


def parse_caption(text: str) -> dict:
    """Parse a caption back into attribute values (missing attributes map to None).

    The background colour is the colour word that directly precedes the background kind
    (or the word "background"); the object colour is the colour word before the shape.
    """
    words = _WORD_RE.findall(text.lower())
    out = {k: None for k in ATTRIBUTES}
    bg_idx = None
    for i, w in enumerate(words):
        if w in BACKGROUNDS and out["background"] is None:
            out["background"] = w
            bg_idx = i
        elif w == "background" and bg_idx is None:
            bg_idx = i
    if out["background"] is None and bg_idx is not None:
        out["background"] = "plain"
    for i, w in enumerate(words):
        if w in SHAPES and out["shape"] is None:
            out["shape"] = w
        elif w in SIZES and out["size"] is None:
            out["size"] = w
        elif w in POSITIONS and out["position"] is None:
            out["position"] = w
        elif w in COLORS:
            if bg_idx is not None and i == bg_idx - 1:
                out["background_color"] = w
            elif out["color"] is None:
                out["color"] = w
            elif out["background_color"] is None:
                out["background_color"] = w
    return out


# ----------------------------------------------------------------------------------- rendering
def _second_tone(c: np.ndarray) -> np.ndarray:
    """The texture's second tone: the colour pulled halfway towards mid grey."""
    return c + 0.5 * (128.0 - c)


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _background(kind: str, color: str, rng: np.random.Generator) -> np.ndarray:
    n = IMAGE_SIZE
    c1 = np.asarray(COLORS[color], dtype=np.float64)
    c2 = _second_tone(c1)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64) + 0.5
    if kind == "plain":
        t = np.zeros((n, n))
    elif kind == "gradient":
        ang = rng.uniform(0, 2 * np.pi)
        proj = (xx - n / 2) * np.cos(ang) + (yy - n / 2) * np.sin(ang)
        t = _smoothstep(proj / (n * 0.75) + 0.5)
    elif kind == "striped":
        period = rng.uniform(10.0, 14.0)
        ang = rng.choice([0.0, 0.25, 0.5, 0.75]) * np.pi + rng.uniform(-0.1, 0.1)
        phase = rng.uniform(0, 2 * np.pi)
        proj = xx * np.cos(ang) + yy * np.sin(ang)
        s = np.sin(2 * np.pi * proj / period + phase)
        t = 0.5 + 0.5 * np.tanh(2.0 * s) / np.tanh(2.0)  # soft-edged stripes
    elif kind == "noisy":
        g = 6
        low = rng.uniform(0, 1, size=(g + 3, g + 3))
        # bicubic-ish smooth upsampling via separable cubic (Catmull-Rom) interpolation
        t = _upsample_smooth(low, n)
        t = _smoothstep((t - 0.5) * 2.2 + 0.5)
    else:
        raise ValueError(kind)
    return c1[None, None, :] * (1 - t[..., None]) + c2[None, None, :] * t[..., None]


def _cubic_weights(f):
    # Catmull-Rom weights for fractional offset f
    f2, f3 = f * f, f * f * f
    return np.stack(
        [
            -0.5 * f3 + f2 - 0.5 * f,
            1.5 * f3 - 2.5 * f2 + 1.0,
            -1.5 * f3 + 2.0 * f2 + 0.5 * f,
            0.5 * f3 - 0.5 * f2,
        ],
        axis=-1,
    )


def _interp_matrix(m: int, n: int) -> np.ndarray:
    """(n, m) matrix resampling m control points (with 1-point margins) to n pixels."""
    g = m - 3
    pos = (np.arange(n) + 0.5) / n * g + 1.0  # in [1, g+1]
    i0 = np.floor(pos).astype(int)
    f = pos - i0
    w = _cubic_weights(f)
    mat = np.zeros((n, m))
    for k in range(4):
        idx = np.clip(i0 - 1 + k, 0, m - 1)
        np.add.at(mat, (np.arange(n), idx), w[:, k])
    return mat


def _upsample_smooth(low: np.ndarray, n: int) -> np.ndarray:
    A = _interp_matrix(low.shape[0], n)
    B = _interp_matrix(low.shape[1], n)
    return np.clip(A @ low @ B.T, 0, 1)


def _shape_polygon(shape: str, cx: float, cy: float, r: float):
    """Polygon(s) (list of (rows, cols) arrays) in 64-px coordinates, or None for circle."""
    if shape == "square":
        h = r * 0.85
        return [np.array([[cy - h, cx - h], [cy - h, cx + h], [cy + h, cx + h], [cy + h, cx - h]])]
    if shape == "diamond":
        h = r * 1.12
        return [np.array([[cy - h, cx], [cy, cx + h * 0.8], [cy + h, cx], [cy, cx - h * 0.8]])]
    if shape == "triangle":
        h = r * 1.05
        return [np.array([[cy - h, cx], [cy + h * 0.8, cx + h * 1.05], [cy + h * 0.8, cx - h * 1.05]])]
    if shape == "star":
        pts = []
        for k in range(10):
            a = -np.pi / 2 + k * np.pi / 5
            rr = r * 1.15 if k % 2 == 0 else r * 0.48
            pts.append([cy + rr * np.sin(a) + 0.08 * r, cx + rr * np.cos(a)])
        return [np.array(pts)]
    if shape == "cross":
        a, w = r * 1.0, r * 0.36
        return [
            np.array([[cy - a, cx - w], [cy - a, cx + w], [cy + a, cx + w], [cy + a, cx - w]]),
            np.array([[cy - w, cx - a], [cy - w, cx + a], [cy + w, cx + a], [cy + w, cx - a]]),
        ]
    return None


def _object_alpha(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    """Anti-aliased coverage mask (64x64 float in [0,1]) rendered at 4x and box-downsampled."""
    N = IMAGE_SIZE * _SS
    m = np.zeros((N, N), dtype=np.float32)
    if shape == "circle":
        yy, xx = np.mgrid[0:N, 0:N].astype(np.float32)
        yy = (yy + 0.5) / _SS
        xx = (xx + 0.5) / _SS
        m[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = 1.0
    else:
        for poly in _shape_polygon(shape, cx, cy, r):
            # skimage samples pixel centres at integer coords: shift by -0.5 px (hi-res)
            rr, cc = _sk_polygon(poly[:, 0] * _SS - 0.5, poly[:, 1] * _SS - 0.5, shape=(N, N))
            m[rr, cc] = 1.0
    return m.reshape(IMAGE_SIZE, _SS, IMAGE_SIZE, _SS).mean(axis=(1, 3))


def _placement(scene: Scene, seed: int) -> tuple[float, float, float]:
    """Centre and radius of the object of ``scene`` rendered with ``seed`` (its own random stream)."""
    rng = np.random.default_rng([int(seed), 104729, 1])
    cx, cy = _CENTERS[scene.position]
    cx += rng.uniform(-2.0, 2.0)
    cy += rng.uniform(-2.0, 2.0)
    return cx, cy, _RADIUS[scene.size] * rng.uniform(0.95, 1.05)


def object_mask(scene: Scene, seed: int = 0) -> np.ndarray:
    """The object's exact coverage in ``render(scene, seed)``: a (64, 64) float array in [0, 1]."""
    return _object_alpha(scene.shape, *_placement(scene, seed))


def render(scene: Scene, seed: int = 0) -> np.ndarray:
    """Render a scene to a uint8 (64, 64, 3) image; the seed drives jitter/texture phase."""
    # independent streams: changing the background kind does not move the object (and vice versa)
    bg = _background(scene.background, scene.background_color, np.random.default_rng([int(seed), 104729, 2]))
    a = object_mask(scene, seed)[..., None]
    col = np.asarray(COLORS[scene.color], dtype=np.float64)[None, None, :]
    img = bg * (1 - a) + col * a
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def render_batch(scenes, seeds) -> np.ndarray:
    return np.stack([render(s, sd) for s, sd in zip(scenes, seeds)])
