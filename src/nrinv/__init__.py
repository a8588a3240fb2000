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
"""
from ._version import __version__
from .api import InversionOptions, InversionResult, ReconstructionOutput, invert, invert_batch, reconstruct
from .core.defaults import model_defaults
from .core.solvers import Status
from .errors import InputError
from .loading import load_pipeline, train_inverter
from .workflows import (EditResult, InterpolationResult, SeedResult, adjust_encoding, edit, edit_defaults, interpolate,
                        regenerate, seed_from_images)

#: user verbs and what they return; the engine (prepare, sample, Setup, SOLVERS, adapters, ...) is nrinv.core
__all__ = [
    "__version__", "load_pipeline", "invert", "invert_batch", "reconstruct", "edit", "regenerate", "interpolate",
    "seed_from_images", "adjust_encoding", "model_defaults", "edit_defaults", "InversionOptions", "InversionResult",
    "ReconstructionOutput", "EditResult", "InterpolationResult", "SeedResult", "Status", "InputError", "train_inverter",
]
