"""Files out: every output is written to a temporary file beside its target, then renamed into place,
so a reader (or a run killed half-way) never sees a partial file."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Union

import torch
from PIL import Image

from ..errors import InputError
from .images import to_pil

__all__ = ["atomic_write", "save_png", "save_json", "save_latent", "load_latent"]


def atomic_write(path: Union[str, os.PathLike], writer, *, force: bool = True) -> Path:
    """Write through ``writer(tmp_path)`` to a temporary file in the same folder, then rename."""
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass --force to overwrite")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_png(image: Union[Image.Image, torch.Tensor], path, *, force: bool = True) -> Path:
    img = image if isinstance(image, Image.Image) else to_pil(image)
    return atomic_write(path, lambda tmp: img.save(tmp, format="PNG"), force=force)


def save_json(data: Any, path, *, force: bool = True) -> Path:
    def write(tmp):
        with open(tmp, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=False, default=str)
            fh.write("\n")
    return atomic_write(path, write, force=force)


def save_latent(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path, *, force: bool = True) -> Path:
    from safetensors.torch import save_file

    tensors = {k: v.detach().float().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata), force=force)


def load_latent(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"latent file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise InputError(f"cannot read latent file {path}: {str(exc).splitlines()[0]}") from None
    # files written before 0.2 name the tensors "latent" and "pipeline_latents"
    for old, new in (("latent", "scheduler_latents"), ("pipeline_latents", "latents")):
        if old in tensors and new not in tensors:
            tensors[new] = tensors.pop(old)
    if "scheduler_latents" not in tensors:
        raise InputError(f"{path} holds no 'scheduler_latents' tensor; was it written by `nrinv invert`?")
    return tensors, meta
