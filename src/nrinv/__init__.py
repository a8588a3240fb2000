"""nrinv: fast, exact diffusion inversion (guided Newton-Raphson and friends) for diffusers pipelines.

    import nrinv
    pipe = nrinv.load_pipeline("builtin:shapes")
    inv = nrinv.invert(pipe, "photo.png", "a large red star on the left, blue striped background")
    nrinv.reconstruct(pipe, inv).images[0].save("again.png")

Layers (dependencies point one way): ``nrinv.core`` is the engine (schedulers, solvers, adapters,
the inversion loop; tensors in and out); ``nrinv.io`` loads images and writes files; ``nrinv.api``
and ``nrinv.workflows`` are what users call (images in, diffusers-shaped results out); ``nrinv.cli``,
``nrinv.app`` and ``nrinv.bench`` sit on top; ``nrinv.shapes`` is the built-in model and world.
"""
from ._version import __version__
from .api import ReconstructionOutput, invert, invert_batch, reconstruct
from .core.adapters import Adapter, Conditioning, adapter_for
from .core.defaults import DEFAULT_ITERATIONS, DEFAULT_METHOD, ModelDefaults, model_defaults
from .core.inversion import InversionResult, Setup, prepare, sample
from .core.schedulers import SUPPORTED_SCHEDULERS, affine_schedule
from .core.solvers import SOLVERS, Problem, SolveResult, Status, get_solver, make_options
from .workflows import (EditResult, InterpolationResult, SeedResult, adjust_encoding, edit, edit_defaults, interpolate,
                   regenerate, seed_from_images, slerp)
from .errors import InputError
from .loading import load_pipeline

__all__ = [
    "__version__", "load_pipeline", "adapter_for", "Adapter", "Conditioning", "model_defaults", "ModelDefaults",
    "DEFAULT_METHOD", "DEFAULT_ITERATIONS", "invert", "invert_batch", "reconstruct", "ReconstructionOutput",
    "InversionResult", "prepare", "sample", "Setup", "SUPPORTED_SCHEDULERS", "affine_schedule", "SOLVERS",
    "get_solver", "Problem", "SolveResult", "Status", "make_options", "edit", "regenerate", "interpolate",
    "seed_from_images", "adjust_encoding", "slerp", "edit_defaults", "EditResult", "InterpolationResult",
    "SeedResult", "InputError",
]
