"""The engine: tensors in, tensors out.

``schedulers`` turns a diffusers scheduler into affine steps, ``methods`` is the one registry of
inversion methods and their facts (``METHODS``), ``solvers`` holds the per-step root finders,
``adapters`` wraps each model family into ``model(z, t)`` plus encode/decode/embed,
``defaults`` keys the defaults by what a model is, ``inversion`` is the loop over the steps (its
``parameters``, ``results`` and ``planning`` of calls in their own modules).
User-facing verbs (images in, diffusers-shaped results out) are in ``nrinv`` itself.
"""
from __future__ import annotations

import importlib
from typing import Any

#: public name -> the module defining it; imported on first use, so that importing one light module of
#: the engine (``nrinv.core.options``) does not import torch and diffusers
_WHERE = {
    "Adapter": "adapters", "Conditioning": "adapters", "adapter_for": "adapters",
    "ModelDefaults": "defaults", "model_defaults": "defaults",
    "InversionOptions": "parameters", "InversionResult": "results", "Setup": "results", "StepCallback": "inversion",
    "invert_tensor": "inversion", "invert_tensor_batch": "inversion", "prepare": "inversion",
    "reconstruct_latent": "inversion", "sample": "inversion", "solver_options": "planning",
    "planned_calls": "planning", "sampler_calls": "planning",
    "SUPPORTED_SCHEDULERS": "schedulers", "affine_schedule": "schedulers",
    "SOLVERS": "solvers", "Problem": "solvers", "SolveResult": "solvers", "SolverSpec": "solvers", "Status": "solvers",
    "get_solver": "solvers", "make_options": "methods", "METHODS": "methods", "Method": "methods",
    "get_method": "methods",
}
__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        try:  # a module of the engine (``nrinv.core.inversion``), as a plain import would have bound it
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
