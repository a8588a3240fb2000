"""Adapters: a diffusers pipeline turned into one denoiser callable plus encode / decode / embed.

The solvers and the inversion loop never see a UNet: they call ``adapter.denoise(z, t, cond)``
which reproduces exactly what the stock pipeline computes inside its sampling loop for the
model output at latent ``z`` (already multiplied by ``scale_model_input``), including both
classifier-free-guidance branches in one batched call.  Outputs are float32 whatever dtype the
network runs in.

An adapter is also the persistent object of a pipeline: it keeps the prompt embeddings and probed
schedules it computed (the most recently used few) and, on CUDA, captured graphs of the network call, so a
caller that keeps it (``adapter = nrinv.core.adapter_for(pipe)``, passed wherever a pipeline is accepted)
pays for them once.  It never writes onto the pipeline.

One module per job: ``base`` (the ``Adapter`` contract, conditioning, size checks), ``state`` (what
adapters of one pipeline share: caches, graphs, lock), one module per model family
(``stable_diffusion``, ``flow``, ``video``), and here the registry of families and ``adapter_for``.
"""
from __future__ import annotations

from typing import Any, Optional

from ...errors import InputError
from .base import Adapter, Conditioning, size_error, size_notes
from .flow import FluxAdapter, StableDiffusion3Adapter
from .stable_diffusion import LatentConsistencyAdapter, StableDiffusionAdapter, StableDiffusionXLAdapter
from .state import MAX_CONDITIONINGS, MAX_SCHEDULES, release_pipeline
from .video import WanAdapter

__all__ = ["Adapter", "Conditioning", "adapter_for", "adapter_class", "require_images", "FAMILIES",
           "SUPPORTED_PIPELINES", "size_error", "size_notes", "release_pipeline", "MAX_CONDITIONINGS",
           "MAX_SCHEDULES", "StableDiffusionAdapter", "LatentConsistencyAdapter", "StableDiffusionXLAdapter",
           "StableDiffusion3Adapter", "FluxAdapter", "WanAdapter"]


#: the model families, one adapter class each (its pipelines, precision and geometry on the class)
FAMILIES: tuple[type[Adapter], ...] = (StableDiffusionAdapter, StableDiffusionXLAdapter, LatentConsistencyAdapter,
                                       StableDiffusion3Adapter, FluxAdapter, WanAdapter)


SUPPORTED_PIPELINES: dict[str, type[Adapter]] = {name: cls for cls in FAMILIES for name in cls.pipelines}


def require_images(adapter: Any, what: str) -> None:
    """Refuse a video model where ``what`` (a workflow) takes images only, in one line."""
    if getattr(adapter, "video", False):
        raise InputError(f"{what} takes images, and {type(adapter.pipe).__name__} is a video model: invert or "
                         "edit one clip at a time with nrinv.invert / nrinv.edit")


def _pipelines() -> dict[str, type[Adapter]]:
    """Pipeline class name -> adapter class, read from ``FAMILIES`` at each call (a family listed there is taken)."""
    return {name: cls for cls in FAMILIES for name in cls.pipelines}


def adapter_class(pipeline_class: str) -> Optional[type[Adapter]]:
    """The adapter class of a diffusers pipeline class name (``None`` if no family takes it)."""
    return _pipelines().get(pipeline_class)


def adapter_for(pipe: Any, *, cuda_graphs: Optional[bool] = None) -> Adapter:
    """The adapter of a diffusers pipeline; an adapter is returned unchanged (keep one to reuse its
    prompt embeddings, schedules and graphs across calls).  ``cuda_graphs``: replay the network
    call from captured CUDA graphs (``None``: on when the network is on CUDA; ``False``: off)."""
    if isinstance(pipe, Adapter) or hasattr(pipe, "denoise") and hasattr(pipe, "prepare_scheduler"):
        if cuda_graphs is not None:
            pipe.cuda_graphs = cuda_graphs
        return pipe
    families = _pipelines()
    for cls in type(pipe).__mro__:
        if cls.__name__ in families:
            return families[cls.__name__](pipe, cuda_graphs=cuda_graphs)
    raise InputError(f"pipeline {type(pipe).__name__} is not supported; supported pipelines: {', '.join(families)}")
