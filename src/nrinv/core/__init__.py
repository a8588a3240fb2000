"""The engine: tensors in, tensors out.

``schedulers`` turns a diffusers scheduler into affine steps, ``solvers`` holds the root finders
(``SOLVERS``), ``adapters`` wraps each model family into ``model(z, t)`` plus encode/decode/embed,
``defaults`` keys the defaults by what a model is, ``inversion`` is the loop over the steps.
User-facing verbs (images in, diffusers-shaped results out) are in ``nrinv`` itself.
"""
from .adapters import Adapter, Conditioning, adapter_for
from .defaults import ModelDefaults, model_defaults
from .inversion import (InversionOptions, InversionResult, Setup, invert_tensor, invert_tensor_batch, prepare,
                        reconstruct_latent, sample, solver_options)
from .schedulers import SUPPORTED_SCHEDULERS, affine_schedule
from .solvers import SOLVERS, Problem, SolveResult, SolverSpec, Status, get_solver, make_options

__all__ = [
    "Adapter", "Conditioning", "adapter_for", "ModelDefaults", "model_defaults", "InversionOptions", "InversionResult",
    "Setup", "invert_tensor", "invert_tensor_batch", "prepare", "reconstruct_latent", "sample", "solver_options",
    "SUPPORTED_SCHEDULERS", "affine_schedule", "SOLVERS", "Problem", "SolveResult", "SolverSpec", "Status",
    "get_solver", "make_options",
]
