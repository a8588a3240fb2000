"""Loading pipelines: a Hugging Face id, a local diffusers folder, or a built-in model (``builtin:NAME``).

Safetensors only.  ``device="auto"`` takes CUDA when present (then Apple's MPS, else the CPU);
``dtype="auto"`` takes float32 on the CPU and for the built-in models, and the model family's half
precision on a GPU (``Adapter.half_dtype``: bfloat16 for Flux and SD3, float16 otherwise); the
solver works in float32 whatever the network runs in.  Loading is quiet (no progress bars or notices
from diffusers / transformers) and the pipeline is returned as diffusers built it: nothing is written
onto it.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import torch

from .core.adapters import Adapter, adapter_class
from .core.options import PRECISIONS
from .errors import InputError
from .shapes import dtype_kwarg

__all__ = ["load_pipeline", "resolve_device", "resolve_dtype", "builtin_models", "model_geometry", "BUILTIN_PREFIX",
           "DTYPES", "builtin_prompts", "train_inverter"]

BUILTIN_PREFIX = "builtin:"
DTYPES = {name: getattr(torch, name) for name in PRECISIONS if name != "auto"}


def builtin_models() -> dict[str, Path]:
    """The shipped models: name -> diffusers folder (only those present in this installation)."""
    from . import shapes

    folders = {"shapes": shapes.MODEL_DIR, "shapes-lcm": getattr(shapes, "LCM_MODEL_DIR", None)}
    return {name: path for name, path in folders.items()
            if path is not None and (Path(path) / "model_index.json").is_file()}


def _model_folder(model: str) -> Optional[Path]:
    if model.startswith(BUILTIN_PREFIX):
        return builtin_models().get(model[len(BUILTIN_PREFIX):])
    path = Path(model).expanduser()
    return path if (path / "model_index.json").is_file() else None


def model_geometry(model: str) -> Optional[dict]:
    """What a model's config files say about image sizes, read without loading any weights:
    ``{"multiple": m, "native": (h, w)}``; None where the configs are not on disk (a hub id)."""
    folder = _model_folder(model)
    if folder is None:
        return None
    try:
        index = json.loads((folder / "model_index.json").read_text())
        vae = json.loads((folder / "vae" / "config.json").read_text())
        net_dir = folder / ("unet" if (folder / "unet").is_dir() else "transformer")
        net = json.loads((net_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    family = adapter_class(index.get("_class_name", "")) or Adapter
    multiple, native = family.geometry(vae, net)
    return {"multiple": multiple, "native": (native, native)}


def resolve_device(device: Union[str, torch.device, None] = "auto") -> torch.device:
    """``auto``: CUDA when present, then MPS, else the CPU; anything else is checked to exist."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} asked for, but CUDA is not available here; use --device auto or cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s) here")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("device 'mps' asked for, but MPS is not available here; use --device auto or cpu")
    return dev


def resolve_dtype(dtype: Union[str, torch.dtype, None], device: torch.device, pipeline_class: str = "",
                  builtin: bool = False) -> torch.dtype:
    """``auto``: float32 on the CPU (and MPS) and for the built-in models (every figure of theirs is
    float32); on CUDA the model family's half precision (``Adapter.half_dtype``: bfloat16 for Flux and
    SD3, float16 otherwise), and bfloat16 when the pipeline class cannot be read (e.g. a hub id offline):
    it does not overflow in any family, float16 does in Flux."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.type != "cuda" or builtin:
            return torch.float32
        family = adapter_class(pipeline_class)
        return torch.bfloat16 if family is None else family.half_dtype
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; use auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """diffusers' and transformers' progress bars and notices off for the duration (restored after)."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    saved = [(m, m.get_verbosity(), m.is_progress_bar_enabled()) for m in (dlog, tlog)]
    for m, _, _ in saved:
        m.set_verbosity_error()
        m.disable_progress_bar()
    try:
        yield
    finally:
        for m, level, bar in saved:
            m.set_verbosity(level)
            (m.enable_progress_bar if bar else m.disable_progress_bar)()


def _pipeline_class(source: str, local: bool) -> str:
    """The pipeline class named by a folder's ``model_index.json`` (or the hub's cached copy)."""
    try:
        if local:
            return str(json.loads((Path(source) / "model_index.json").read_text()).get("_class_name", ""))
        from diffusers import DiffusionPipeline

        return str(DiffusionPipeline.load_config(source).get("_class_name", ""))
    except Exception:  # unknown here: dtype="auto" takes bfloat16 on CUDA
        return ""


def load_pipeline(model: str, *, dtype: Union[str, torch.dtype, None] = "auto", device: Any = "auto") -> Any:
    """Load a diffusers pipeline by Hugging Face id, local folder, or ``builtin:shapes`` (and the other
    names of :func:`builtin_models`); safetensors only."""
    dev = resolve_device(device)
    if model.startswith(BUILTIN_PREFIX):
        name = model[len(BUILTIN_PREFIX):]
        available = builtin_models()
        if name not in available:
            raise InputError(f"unknown built-in model {name!r}; built-in models: "
                             + ", ".join(BUILTIN_PREFIX + n for n in available))
        source, local = str(available[name]), True
    else:
        path = Path(model).expanduser()
        local = path.exists() or model.startswith((".", "/", "~")) or os.sep in model and model.count("/") > 1
        if local and not (path / "model_index.json").is_file():
            raise InputError(f"{model} is not a diffusers pipeline folder (no model_index.json)")
        source = str(path) if local else model
    offline = None
    if not local and not _hub_offline():
        # without a network huggingface_hub retries for ~30 s and logs each retry: ask once, quickly
        offline = _hub_unreachable()
    dt = resolve_dtype(dtype, dev, "" if offline else _pipeline_class(source, local),
                       builtin=model.startswith(BUILTIN_PREFIX))
    with quiet_libraries():
        from diffusers import DiffusionPipeline

        try:
            with warnings.catch_warnings():
                # diffusers passes huggingface_hub an argument it deprecated: a 2-line warning per load
                warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
                pipe = DiffusionPipeline.from_pretrained(source, use_safetensors=True,
                                                         local_files_only=local or bool(offline) or _hub_offline(),
                                                         **dtype_kwarg(dt))
        except (OSError, ValueError) as exc:
            if not local and (offline or _hub_offline()):
                why = f"the Hugging Face hub cannot be reached ({offline})" if offline else "HF_HUB_OFFLINE is set"
                raise InputError(f"could not load pipeline {model!r}: it is not in the local Hugging Face cache and "
                                 f"{why}; download it on a machine with a network, or give a local folder") from None
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"could not load pipeline {model!r}: {first}") from None
        return pipe.to(dev)


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub_unreachable(timeout: float = 5.0) -> Optional[str]:
    """Why the Hugging Face hub cannot be reached (one connection attempt, at most ``timeout`` seconds
    including the name lookup), or None when it answers."""
    import socket
    import threading
    from urllib.parse import urlparse

    try:
        from huggingface_hub import constants

        endpoint = urlparse(constants.ENDPOINT)
    except Exception:  # noqa: BLE001 - an unknown hub library: let it try
        return None
    host, port = endpoint.hostname, endpoint.port or (443 if endpoint.scheme == "https" else 80)
    answer: list[Optional[str]] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            answer.append(None)
        except OSError as exc:
            answer.append(exc.strerror or type(exc).__name__)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return answer[0] if answer else f"no answer from {host} in {timeout:g} s"


def builtin_prompts(pipe: Any) -> Optional[Callable[[random.Random], str]]:
    """Random captions of the shapes world for the built-in models (``None`` for any other model)."""
    from .core.defaults import model_defaults

    if model_defaults(pipe).kind not in ("shapes", "shapes-lcm"):
        return None
    from .shapes.world import sample_scene

    return lambda rng: sample_scene(rng.randrange(10**9)).caption()


def train_inverter(pipe: Any, out: Any = None, *, prompts: Any = None, **kwargs: Any) -> Any:
    """:func:`nrinv.core.inverter.train_initial_guess`, with random shapes-world captions as the prompts of the
    built-in models (any other model needs ``prompts``): trains the learned initial guess of the
    inversion solver on trajectories the pipeline samples itself and saves it beside the model."""
    from .core.inverter import train_initial_guess as train

    return train(pipe, out, prompts=prompts if prompts is not None else builtin_prompts(pipe), **kwargs)
