"""Files out: every output is written to a temporary file beside its target, then renamed into place,
so a reader (or a run killed half-way) never sees a partial file."""
from __future__ import annotations

import json
import math
import os
import secrets
from pathlib import Path
from typing import Any, Optional, Union

import torch
from PIL import Image

from ..errors import InputError, OutputExistsError
from .images import to_pil

__all__ = ["atomic_write", "OutputExistsError", "save_png", "save_json", "save_latent", "save_tensors", "load_latent",
           "writable_target", "name_too_long", "strict_json"]


def _create_beside(path: Path) -> str:
    """A new, empty temporary file beside ``path``, created with mode 0666 so the user's umask applies
    (``tempfile.mkstemp`` would force 0600 on every output)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return str(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary file beside {path}")


def atomic_write(path: Union[str, os.PathLike], writer, *, force: bool = True) -> Path:
    """Write through ``writer(tmp_path)`` to a temporary file in the same folder, then rename.

    Without ``force`` the file is put in place by a hard link, which fails if the name exists, so of
    two runs writing the same output the second cannot overwrite what the first wrote even when both
    checked before either wrote: it raises :class:`OutputExistsError` (one line) and leaves nothing."""
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(f"{path} exists; pass --force to overwrite")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_beside(path)
    try:
        writer(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise OutputExistsError(f"{path} was written by another run while this one worked; nothing was "
                                        "overwritten (pass --force to overwrite)") from None
            except OSError:  # a file system without hard links: check, then rename
                if path.exists():
                    raise OutputExistsError(f"{path} was written by another run while this one worked; nothing "
                                            "was overwritten (pass --force to overwrite)") from None
                os.replace(tmp, path)
            if os.path.exists(tmp):
                os.unlink(tmp)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


#: what the temporary file beside an output adds to its name: "." + name + ".xxxxxxxx.tmp"
_TMP_EXTRA = len(".") + len(".12345678.tmp")


def name_too_long(path: Path) -> Optional[str]:
    """Why the file name of ``path`` is too long for its file system (None if it is not), counting the
    temporary name it is first written under."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    try:
        limit = os.pathconf(parent, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        limit = 255
    for part in path.parts:
        if len(os.fsencode(part)) > limit - (_TMP_EXTRA if part == path.name else 0):
            shown = part if len(part) <= 40 else part[:20] + "..." + part[-12:]
            allowed = limit - (_TMP_EXTRA if part == path.name else 0)
            return (f"the name {shown!r} is {len(os.fsencode(part))} bytes long; this file system allows "
                    f"{allowed} here; give a shorter name")
    return None


def writable_target(path: Union[str, os.PathLike]) -> Optional[str]:
    """Why ``path`` cannot be written (one line), or None: checked before any work by creating and
    removing a temporary file in the folder it would go to (its nearest existing ancestor)."""
    path = Path(path)
    too_long = name_too_long(path)
    if too_long:
        return too_long
    if path.is_dir():
        return f"{path} is a folder; give a file name"
    parent = path.parent
    while not parent.exists():
        if parent == parent.parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot write {path}: {parent} is a file, not a folder"
    try:
        os.unlink(_create_beside(parent / path.name))
    except OSError as exc:
        return f"cannot write {path}: {exc.strerror or type(exc).__name__} in {parent}"
    return None


def strict_json(data: Any) -> Any:
    """``data`` with every non-finite float as None: JSON has no NaN or Infinity, and strict parsers
    reject files that contain them."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: strict_json(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [strict_json(v) for v in data]
    return data


def save_png(image: Union[Image.Image, torch.Tensor], path, *, force: bool = True) -> Path:
    img = image if isinstance(image, Image.Image) else to_pil(image)
    return atomic_write(path, lambda tmp: img.save(tmp, format="PNG"), force=force)


def save_json(data: Any, path, *, force: bool = True) -> Path:
    def write(tmp):
        with open(tmp, "w") as fh:
            json.dump(strict_json(json.loads(json.dumps(data, default=str))), fh, indent=2, allow_nan=False)
            fh.write("\n")
    return atomic_write(path, write, force=force)


def save_latent(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path, *, force: bool = True) -> Path:
    # copies: safetensors refuses tensors that share memory (a flow model's latents are its scheduler latents)
    tensors = {k: v.detach().float().cpu().clone(memory_format=torch.contiguous_format) for k, v in tensors.items()}
    metadata = {k: json.dumps(strict_json(json.loads(v)), allow_nan=False) if k == "nrinv" else v
                for k, v in metadata.items()}
    return save_tensors(tensors, path, metadata=metadata, force=force)


def save_tensors(tensors: dict[str, torch.Tensor], path, *, metadata: Optional[dict[str, str]] = None,
                 force: bool = True) -> Path:
    """A safetensors file written atomically with the user's umask (safetensors' ``save_file`` makes
    every file 0600, unreadable to the other users of a shared model folder)."""
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)

    def write(tmp):
        with open(tmp, "wb") as fh:
            fh.write(data)
    return atomic_write(path, write, force=force)


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
