"""The judge: reads a scene's attributes back from any 64x64 image.

A tiny CNN classifier (6 heads) trained on renders with augmentation (blur, noise, colour
jitter, small shifts) so that it also reads imperfect generated images.  Weights are shipped at
``nrinv/shapes/model/judge.safetensors`` (~1 MB).  Retrain with::

    python -m nrinv.shapes.judge --train [--steps 3000] [--threads 1]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from .imaging import images_to_tensor
from .world import ATTRIBUTE_VALUES, ATTRIBUTES, IMAGE_SIZE, render, sample_scene

JUDGE_PATH = Path(__file__).resolve().parent / "model" / "judge.safetensors"

# seed ranges (kept disjoint): judge training scenes / judge validation
JUDGE_TRAIN_SEED0 = 50_000_000
JUDGE_VAL_SEED0 = 60_000_000
JUDGE_TEST_SEED0 = 70_000_000  # used by tests / judge_accuracy default

_model = None


def _build():
    import torch
    from torch import nn

    def block(i, o):
        return nn.Sequential(
            nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
            nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )

    class JudgeNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 24, 4, stride=2, padding=1), nn.BatchNorm2d(24), nn.ReLU(inplace=True),  # 32
                nn.Conv2d(24, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(inplace=True), nn.MaxPool2d(2),  # 16
                block(32, 48),  # 8
                nn.Conv2d(48, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(2),  # 4
            )
            self.fc = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(inplace=True))
            self.heads = nn.ModuleDict({a: nn.Linear(128, len(ATTRIBUTE_VALUES[a])) for a in ATTRIBUTES})

        def forward(self, x):  # x: (B,3,64,64) in [-1,1]
            h = self.fc(self.features(x))
            return {a: head(h) for a, head in self.heads.items()}

    torch.manual_seed(0)
    return JudgeNet()


def load_judge_model():
    """The judge network with the shipped weights, in eval mode (loaded once, then cached)."""
    global _model
    if _model is None:
        from safetensors.torch import load_file

        m = _build()
        m.load_state_dict(load_file(str(JUDGE_PATH)))
        m.eval()
        _model = m
    return _model


def judge_batch(images: np.ndarray, batch_size: int = 256) -> list[dict]:
    """Judge a batch of uint8 images (B, H, W, 3); images not 64x64 are resized."""
    import torch

    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.shape[1:3] != (IMAGE_SIZE, IMAGE_SIZE):
        from PIL import Image

        images = np.stack(
            [np.asarray(Image.fromarray(im).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)) for im in images]
        )
    if images.dtype != np.uint8:
        images = np.clip(np.round(images), 0, 255).astype(np.uint8)
    images = images[..., :3]
    m = load_judge_model()
    out: list[dict] = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            logits = m(images_to_tensor(images[i : i + batch_size]))
            idx = {a: logits[a].argmax(1).tolist() for a in ATTRIBUTES}
            for j in range(len(idx["shape"])):
                out.append({a: ATTRIBUTE_VALUES[a][idx[a][j]] for a in ATTRIBUTES})
    return out


def judge(image: np.ndarray) -> dict:
    """Read (shape, color, size, position, background, background_color) from one uint8 image."""
    return judge_batch(np.asarray(image)[None])[0]


def score(predictions: list[dict], truths: list[dict]) -> dict:
    """Per-attribute accuracy of predictions against truth dicts (None truth values are skipped)."""
    acc = {}
    for a in ATTRIBUTES:
        pairs = [(p[a], t[a]) for p, t in zip(predictions, truths) if t.get(a) is not None]
        acc[a] = float(np.mean([p == t for p, t in pairs])) if pairs else float("nan")
    return acc


def judge_accuracy(n: int = 500, seed: int = JUDGE_TEST_SEED0) -> dict:
    """Per-attribute judge accuracy on n fresh renders (scene seeds seed..seed+n-1)."""
    scenes = [sample_scene(seed + i) for i in range(n)]
    images = np.stack([render(s, seed + i) for i, s in enumerate(scenes)])
    return score(judge_batch(images), [s.as_dict() for s in scenes])


# ------------------------------------------------------------------------------------ training
def _labels(scenes):
    import torch

    return {
        a: torch.tensor([ATTRIBUTE_VALUES[a].index(getattr(s, a)) for s in scenes]) for a in ATTRIBUTES
    }


def augment(x, gen):
    """Augment a batch in [-1,1]: colour jitter, blur, noise, +-1 px shift."""
    import torch
    import torch.nn.functional as F

    B = x.shape[0]
    gain = 1 + 0.06 * (torch.rand(B, 3, 1, 1, generator=gen) * 2 - 1)
    off = 0.06 * (torch.rand(B, 3, 1, 1, generator=gen) * 2 - 1)
    x = (x + 1) * gain - 1 + off
    # blur with random sigma in [0, 1.2] (half the batch)
    sig = torch.rand(B, generator=gen) * 1.2 * (torch.rand(B, generator=gen) < 0.5)
    k = torch.arange(-2, 3).float()
    w = torch.exp(-(k[None] ** 2) / (2 * sig[:, None].clamp_min(1e-3) ** 2))
    w = w / w.sum(1, keepdim=True)  # (B,5)
    xp = F.pad(x, (2, 2, 2, 2), mode="replicate")
    xh = sum(w[:, i, None, None, None] * xp[:, :, :, i : i + IMAGE_SIZE] for i in range(5))
    x = sum(w[:, i, None, None, None] * xh[:, :, i : i + IMAGE_SIZE, :] for i in range(5))
    x = x + torch.randn(x.shape, generator=gen) * (torch.rand(B, 1, 1, 1, generator=gen) * 0.08)
    return x.clamp(-1, 1)


def train_judge(steps: int = 3000, batch: int = 128, pool: int = 30000, seed: int = 0, out=JUDGE_PATH,
                log=print):
    import torch
    from safetensors.torch import save_file
    from tqdm import tqdm

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    scenes = [sample_scene(JUDGE_TRAIN_SEED0 + i) for i in range(pool)]
    imgs = np.stack([render(s, JUDGE_TRAIN_SEED0 + i) for i, s in enumerate(tqdm(scenes, desc="render"))])
    X = torch.from_numpy(imgs)
    Y = _labels(scenes)
    vscenes = [sample_scene(JUDGE_VAL_SEED0 + i) for i in range(1000)]
    vimgs = np.stack([render(s, JUDGE_VAL_SEED0 + i) for i, s in enumerate(vscenes)])
    log(f"rendered {pool} in {time.time() - t0:.0f}s")
    m = _build()
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    ce = torch.nn.CrossEntropyLoss()
    m.train()
    pbar = tqdm(range(steps), desc="judge")
    for step in pbar:
        idx = torch.randint(0, pool, (batch,), generator=gen)
        x = augment(images_to_tensor(X[idx].numpy()), gen)
        logits = m(x)
        loss = sum(ce(logits[a], Y[a][idx]) for a in ATTRIBUTES)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0:
            pbar.set_postfix(loss=f"{loss.item():.3f}")
    m.eval()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(out))
    global _model
    _model = m
    acc = score(judge_batch(vimgs), [s.as_dict() for s in vscenes])
    log(f"judge val acc: {acc}  ({time.time() - t0:.0f}s)")
    return acc


def main(argv=None):
    p = argparse.ArgumentParser(description="train / evaluate the shapes judge")
    p.add_argument("--train", action="store_true")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--pool", type=int, default=30000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(JUDGE_PATH))
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--eval", type=int, default=1000)
    a = p.parse_args(argv)
    import os

    import torch

    torch.set_num_threads(a.threads or os.cpu_count() or 1)
    if a.train:
        train_judge(a.steps, a.batch, a.pool, a.seed, Path(a.out))
    if a.eval:
        print("judge accuracy (fresh renders):", judge_accuracy(a.eval))


if __name__ == "__main__":
    main()
