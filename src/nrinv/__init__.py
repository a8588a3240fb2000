"""nrinv: fast, exact diffusion inversion (guided Newton-Raphson and friends) for diffusers pipelines.

    import nrinv
    pipe = nrinv.load_pipeline("builtin:shapes")
    result = nrinv.invert(pipe, "photo.png", "a large red star on the left, blue striped background")
    image = nrinv.reconstruct(pipe, result).image
"""
from ._version import __version__  # noqa: F401

from .core.adapters import Adapter, adapter_for, load_pipeline  # noqa: E402
from .edit.editing import (EditResult, InterpolationResult, SeedResult, adjust_encoding, edit, interpolate,  # noqa: E402
                      seed_from_images, slerp)
from .core.inversion import (DEFAULT_ITERATIONS, DEFAULT_METHOD, InversionResult, invert, invert_batch,  # noqa: E402
                        reconstruct, sample)
from .core.schedulers import SUPPORTED_SCHEDULERS, affine_schedule  # noqa: E402
from .core.solvers import SOLVERS, Problem, SolveResult, Status, make_options  # noqa: E402

__all__ = [
    "__version__", "Adapter", "adapter_for", "load_pipeline", "DEFAULT_METHOD", "DEFAULT_ITERATIONS", "InversionResult", "invert",
    "invert_batch", "reconstruct", "sample", "SUPPORTED_SCHEDULERS", "affine_schedule", "SOLVERS", "Problem", "SolveResult",
    "Status", "make_options", "edit", "interpolate", "seed_from_images", "adjust_encoding", "slerp", "EditResult",
    "InterpolationResult", "SeedResult",
]
