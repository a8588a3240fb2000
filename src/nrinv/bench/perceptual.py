"""Perceptual metrics from weights the user already has on disk: LPIPS and CLIP score.

Nothing here downloads.  A missing or incomplete folder raises :class:`MetricWeightsMissing`
(an :class:`~nrinv.imageio.InputError`, so the CLI prints one line and exits 2).

LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric", v0.1, AlexNet trunk).  For images x, y in [-1, 1], with f_l the activations after the
l-th ReLU of AlexNet's feature extractor applied to the scaled input (x - shift) / scale,
f^_l = f_l / ||f_l||_channels and w_l the learned non-negative 1x1 weights::

    d(x, y) = sum_l mean_{h,w} sum_c w_{l,c} (f^_l(x) - f^_l(y))_{c,h,w}^2

The folder holds two PyTorch state dicts: the AlexNet backbone as torchvision saves it
(``alexnet-owt-7be5be79.pth``, keys ``features.{0,3,6,8,10}.{weight,bias}``) and the LPIPS
linear heads as the ``lpips`` package ships them (``alex.pth``, keys ``lin{0..4}.model.1.weight``).
Files are recognised by their keys, not their names; only tensors are unpickled.

CLIP score (Hessel et al. 2021, with w = 100 as torchmetrics defines it):
``100 * max(cos(E_img(x), E_txt(prompt)), 0)`` from a local ``transformers`` CLIP folder
(``CLIPModel`` + ``CLIPProcessor`` files, e.g. a saved ``openai/clip-vit-base-patch32``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence, Union

import torch
from torch import Tensor, nn

from ..errors import InputError

__all__ = ["MetricWeightsMissing", "LPIPS", "CLIPScore", "load_lpips", "load_clip_score"]

PathLike = Union[str, Path]

# AlexNet feature layers (torchvision layout): (in, out, kernel, stride, padding), ReLU after each.
ALEX_CONVS = ((3, 64, 11, 4, 2), (64, 192, 5, 1, 2), (192, 384, 3, 1, 1), (384, 256, 3, 1, 1),
               (256, 256, 3, 1, 1))
ALEX_INDEX = (0, 3, 6, 8, 10)  # positions of the convolutions in torchvision's ``features``
_POOL_BEFORE = (False, True, True, False, False)  # 3x3/2 max-pool before conv 2 and conv 3
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


class MetricWeightsMissing(InputError):
    """The weights a metric needs are not in the folder the user gave (nothing is downloaded)."""


def _load_state_dicts(folder: Path) -> list[tuple[Path, dict]]:
    out = []
    for f in sorted(folder.iterdir()):
        if f.suffix == ".safetensors":
            from safetensors.torch import load_file

            out.append((f, load_file(str(f))))
        elif f.suffix in (".pth", ".pt", ".bin"):
            try:
                sd = torch.load(f, map_location="cpu", weights_only=True)
            except Exception as exc:  # not a tensor-only pickle: skip it, say so if nothing fits
                out.append((f, {"__error__": str(exc)}))
                continue
            if isinstance(sd, dict) and "state_dict" in sd:
                sd = sd["state_dict"]
            if isinstance(sd, dict):
                out.append((f, sd))
    return out


class LPIPS(nn.Module):
    """LPIPS v0.1 distance with an AlexNet trunk; ``forward(x, y)`` takes (B, 3, H, W) in [-1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(i, o, k, s, p) for i, o, k, s, p in ALEX_CONVS)
        self.lins = nn.ModuleList(nn.Conv2d(c[1], 1, 1, bias=False) for c in ALEX_CONVS)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False).eval()

    @classmethod
    def from_folder(cls, folder: PathLike) -> LPIPS:
        folder = Path(folder)
        advice = ("LPIPS needs local weights: --lpips DIR with torchvision's AlexNet state dict "
                  "(alexnet-owt-7be5be79.pth) and the LPIPS v0.1 linear heads (alex.pth from the lpips package)")
        if not folder.is_dir():
            raise MetricWeightsMissing(f"{folder} is not a folder. {advice}")
        backbone = lins = None
        for _, sd in _load_state_dicts(folder):
            if "features.0.weight" in sd:
                backbone = sd
            elif "lin0.model.1.weight" in sd:
                lins = sd
        if backbone is None or lins is None:
            missing = " and ".join(n for n, v in (("the AlexNet backbone", backbone), ("the linear heads", lins))
                                   if v is None)
            raise MetricWeightsMissing(f"{folder} lacks {missing}. {advice}")
        model = cls()
        try:
            for conv, idx in zip(model.convs, ALEX_INDEX):
                conv.weight.copy_(backbone[f"features.{idx}.weight"])
                conv.bias.copy_(backbone[f"features.{idx}.bias"])
            for k, lin in enumerate(model.lins):
                lin.weight.copy_(lins[f"lin{k}.model.1.weight"])
        except (KeyError, RuntimeError) as exc:
            raise MetricWeightsMissing(f"{folder}: weights do not fit LPIPS/AlexNet ({exc}). {advice}") from None
        return model

    def features(self, x: Tensor) -> list[Tensor]:
        h = (x - self.shift) / self.scale
        feats = []
        for conv, pool in zip(self.convs, _POOL_BEFORE):
            if pool:
                h = nn.functional.max_pool2d(h, 3, 2)
            h = torch.relu(conv(h))
            feats.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return feats

    @torch.no_grad()
    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Per-image distance, shape (B,)."""
        if x.shape != y.shape:
            raise ValueError(f"LPIPS needs images of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        dist = x.new_zeros(x.shape[0])
        for lin, fx, fy in zip(self.lins, self.features(x.float()), self.features(y.float())):
            dist = dist + lin((fx - fy) ** 2).mean(dim=(1, 2, 3))
        return dist

    def distance(self, a: Any, b: Any) -> float:
        """Distance of two images given as (H, W, 3) arrays in [0, 1] or uint8, or PIL images."""
        return float(self(_to_minus1_1(a), _to_minus1_1(b))[0])


def _to_minus1_1(img: Any) -> Tensor:
    import numpy as np

    arr = np.asarray(img)
    arr = arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1)[None] * 2 - 1


class CLIPScore:
    """CLIP score of images against prompts from a local ``transformers`` CLIP folder."""

    def __init__(self, model: Any, processor: Any) -> None:
        self.model = model.eval()
        self.processor = processor

    @classmethod
    def from_folder(cls, folder: PathLike) -> CLIPScore:
        folder = Path(folder)
        advice = ("CLIP score needs a local transformers CLIP folder: --clip DIR with config.json, the weights, "
                  "the tokenizer and preprocessor_config.json (e.g. a saved openai/clip-vit-base-patch32)")
        if not (folder / "config.json").is_file():
            raise MetricWeightsMissing(f"{folder} has no config.json. {advice}")
        from transformers import CLIPModel, CLIPProcessor
        from transformers.utils import logging as hf_logging

        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # quiet the "torchvision not installed, PIL backend" notice
        try:
            model = CLIPModel.from_pretrained(str(folder), local_files_only=True)
            processor = CLIPProcessor.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MetricWeightsMissing(f"{folder}: cannot load CLIP ({first}). {advice}") from None
        finally:
            hf_logging.set_verbosity(level)
        return cls(model, processor)

    @torch.no_grad()
    def __call__(self, images: Sequence[Any], prompts: Sequence[str]) -> list[float]:
        """Scores in [0, 100], one per (image, prompt) pair; images as PIL or (H, W, 3) uint8 arrays."""
        from PIL import Image
        import numpy as np

        pil = [im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im)) for im in images]
        inputs = self.processor(text=list(prompts), images=pil, return_tensors="pt", padding=True, truncation=True)
        img = self.model.get_image_features(pixel_values=inputs["pixel_values"])
        txt = self.model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"))
        img = _as_embedding(img)
        txt = _as_embedding(txt)
        cos = torch.nn.functional.cosine_similarity(img.float(), txt.float(), dim=-1)
        return [float(100 * max(c, 0.0)) for c in cos.tolist()]


def _as_embedding(out: Any) -> Tensor:
    # transformers 5 may return a model output object instead of a bare tensor
    if isinstance(out, Tensor):
        return out
    for name in ("image_embeds", "text_embeds", "pooler_output"):
        value = getattr(out, name, None)
        if isinstance(value, Tensor):
            return value
    raise TypeError(f"unexpected CLIP feature output {type(out).__name__}")


def load_lpips(folder: PathLike) -> LPIPS:
    return LPIPS.from_folder(folder)


def load_clip_score(folder: PathLike) -> CLIPScore:
    return CLIPScore.from_folder(folder)
