"""nrinv: fast, exact diffusion inversion (guided Newton-Raphson and friends) for diffusers pipelines.

    import nrinv
    pipe = nrinv.load_pipeline("builtin:shapes")
    inv = nrinv.invert(pipe, "photo.png", "a large red star on the left, blue striped background")
    nrinv.reconstruct(pipe, inv).images[0].save("again.png")

Layers (dependencies point one way): ``nrinv.core`` is the engine (schedulers, solvers, adapters,
the inversion loop; tensors in and out: ``invert_tensor``, ``prepare``, ``sample``, ``SOLVERS``);
``nrinv.io`` loads images and writes files; ``nrinv.api`` and ``nrinv.workflows`` are what users
call (images in, diffusers-shaped results out); ``nrinv.cli``, ``nrinv.app`` and ``nrinv.bench`` sit
on top; ``nrinv.shapes`` is the built-in model and world.

The public names are imported on first use (PEP 562), so ``import nrinv`` and ``nrinv --help`` do
not pay for torch and diffusers until something needs them.
"""
from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__
from .errors import InputError

#: public name -> the module defining it (relative to this package)
_WHERE = {
    "InversionOptions": ".api", "InversionResult": ".api", "ReconstructionOutput": ".api", "invert": ".api",
    "invert_batch": ".api", "reconstruct": ".api",
    "model_defaults": ".core.defaults", "Status": ".core.solvers",
    "load_pipeline": ".loading", "train_inverter": ".loading",
    "EditResult": ".workflows", "InterpolationResult": ".workflows", "SeedResult": ".workflows",
    "adjust_encoding": ".workflows", "edit": ".workflows", "edit_defaults": ".workflows", "interpolate": ".workflows",
    "regenerate": ".workflows", "seed_from_images": ".workflows",
}

#: user verbs and what they return; the engine (prepare, sample, Setup, SOLVERS, adapters, ...) is nrinv.core
__all__ = [
    "__version__", "load_pipeline", "invert", "invert_batch", "reconstruct", "edit", "regenerate", "interpolate",
    "seed_from_images", "adjust_encoding", "model_defaults", "edit_defaults", "InversionOptions", "InversionResult",
    "ReconstructionOutput", "EditResult", "InterpolationResult", "SeedResult", "Status", "InputError", "train_inverter",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        try:  # a subpackage (``nrinv.core``, ``nrinv.shapes``, ...), as a plain import would have bound it
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
