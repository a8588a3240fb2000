"""The app's models: loading one of the allow-list on first use, measuring what its network call costs here
(again when that price would refuse a request, refined by every request), the CUDA-graph captures of the
sizes run, and the method registry's facts the pricing reads (``_Models``, a part of ``EditorApp``)."""
from __future__ import annotations

import logging
import re
from collections import OrderedDict
from typing import Any, Optional, Sequence

from ..core.options import PRECISIONS as DTYPE_CHOICES
from ..errors import InputError
from .limits import CallCost, MODEL_DEFAULT, REMEASURE_EVERY_S

__all__ = ["measure_call_cost", "default_models"]

logger = logging.getLogger("nrinv.app")


def _scrub(message: str) -> str:
    """The message without server paths: a path is replaced by its last component."""
    return re.sub(r"(?:[A-Za-z]:)?(?:[/\\][^\s/\\:'\"]+)+[/\\]([^\s/\\:'\"]+)", r"\1", message)


def _methods() -> dict:
    """Every method ``nrinv.invert`` runs, by name (the registry's, ``core/methods.py``): the solvers and the
    trajectory methods (edit-friendly); not the baselines with entry points of their own."""
    from ..core.methods import METHODS

    return {name: method for name, method in METHODS.items() if method.invert}


def _method_facts(method: str) -> tuple[bool, int, bool]:
    """(iterates, network calls per iteration, needs a backward pass) of a method, from the registry; a
    trajectory method (edit-friendly, on its forward trajectory) costs one call per step."""
    spec = _methods()[method]
    return spec.iterates, spec.calls_per_iteration(), spec.needs_grad


def _resolve_method(pipe: Any, method: Any, editing: bool) -> str:
    """The method a request runs: the dropdown's name, or for ``MODEL_DEFAULT`` the model's own (in the
    Edit tab its ``edit_method`` where the registry gives one, as ``nrinv.edit`` does)."""
    if method in (None, "", MODEL_DEFAULT):
        defaults = pipe.defaults
        return (defaults.edit_method if editing else None) or defaults.method
    if method not in _methods():
        raise InputError("pick an inversion method from the list")
    return method


def measure_call_cost(pipe, steps: int = 2) -> CallCost:
    """Time a network call of ``pipe`` (a 2-step inversion with the registry's one-evaluation solver, then
    with one that differentiates through the network for the backward pass, at the model's native size),
    each run twice and the second taken: the first pays for one-time set-up (prompt embeddings,
    schedules, CUDA graph capture).  A fraction of a second for the built-in models on a CPU; done once
    per loaded model and precision."""
    from PIL import Image

    from ..api import invert
    from ..core.solvers import SOLVERS

    forward = next(n for n, s in SOLVERS.items() if not s.iterates and not s.needs_grad)
    backward = next((n for n, s in SOLVERS.items() if s.needs_grad), forward)
    height, width = pipe.default_size()
    image = Image.new("RGB", (width, height), (128, 128, 128))
    seconds = {}
    capture = 0.0
    for method in (forward, backward):
        its = 1 if SOLVERS[method].iterates else None
        for _ in range(2):
            try:
                result = invert(pipe, image, "a grey image", method=method, num_inference_steps=steps,
                                max_iterations=its)
            except InputError:  # a scheduler that cannot take that many steps: its default
                steps = pipe.defaults.num_inference_steps
                result = invert(pipe, image, "a grey image", method=method, num_inference_steps=steps,
                                max_iterations=its)
            capture = max(capture, result.capture_time)  # the first run of a new size captures its graphs
        seconds[method] = result.wall_time / max(1, result.nfe)
    return CallCost(forward_s=seconds[forward], gradient_s=max(seconds[backward], seconds[forward]),
                    pixels=height * width, capture_s=capture)


def default_models(named: Sequence[str] = ()) -> list[str]:
    """The allow-list: what the operator named, then every built-in model."""
    from ..loading import BUILTIN_PREFIX, builtin_models

    return list(dict.fromkeys(list(named) + [BUILTIN_PREFIX + name for name in builtin_models()]))


class _Models:
    """``EditorApp``'s models and their measured costs (its state is set by ``EditorApp.__init__``)."""

    # -- helpers --------------------------------------------------------------------------------
    def pipe(self, model: Optional[str], dtype: Optional[str] = None) -> Any:
        """The adapter of an allowed model, loaded on first use and kept (its prompt embeddings,
        schedules and CUDA graphs are reused by every later request)."""
        from ..core.adapters import adapter_for
        from ..loading import load_pipeline

        label = model or self.default_model
        dtype = dtype or self.dtype
        if label not in self.models:
            raise InputError("that model is not offered here; pick one from the list")
        if dtype not in DTYPE_CHOICES:
            raise InputError(f"precision must be one of {', '.join(DTYPE_CHOICES)}")
        if (label, dtype) not in self.pipes:
            try:
                pipe = load_pipeline(self.models[label], dtype=dtype, device=self.device)
            except (OSError, ValueError) as exc:
                logger.error("loading %s failed: %s", label, _scrub(str(exc).splitlines()[0] if str(exc) else ""))
                raise InputError(f"the model {label} could not be loaded on the server") from None
            adapter = adapter_for(pipe, cuda_graphs=None if self.cuda_graphs else False)
            self.costs[(label, dtype)] = measure_call_cost(adapter)
            self.pipes[(label, dtype)] = adapter
            self._ran((label, dtype), adapter, adapter.default_size())  # measured there: captured
        return self.pipes[(label, dtype)]

    def cost(self, model: Optional[str], dtype: Optional[str] = None) -> CallCost:
        """The measured cost of one network call of a loaded model (load it first with :meth:`pipe`)."""
        return self.costs[(model or self.default_model, dtype or self.dtype)]

    def remeasure(self, model: Optional[str], dtype: Optional[str] = None) -> CallCost:
        """Measure the cost of a loaded model's call again (the price measured while the machine was busy
        would otherwise refuse requests for good); the capture's price is kept until one is measured.
        The first time always, then at most once per ``REMEASURE_EVERY_S``."""
        key = (model or self.default_model, dtype or self.dtype)
        now = self.clock()
        if key in self.remeasured and now - self.remeasured[key] < REMEASURE_EVERY_S:
            return self.costs[key]
        self.remeasured[key] = now
        old, fresh = self.costs[key], measure_call_cost(self.pipes[key])
        fresh.capture_s = fresh.capture_s or old.capture_s
        logger.info("re-measured %s (%s): %.4f s a call (was %.4f s)", key[0], key[1], fresh.forward_s, old.forward_s)
        self.costs[key] = fresh
        return fresh

    def _ran(self, key: tuple[str, str], pipe: Any, size: tuple[int, int]) -> None:
        """``size`` (HxW) ran on ``pipe``: its graphs are captured (on a pipeline that captures any)."""
        sizes = self.sizes.setdefault(key, OrderedDict())
        sizes[tuple(size)] = True
        sizes.move_to_end(tuple(size))
        graphs = getattr(pipe, "graphs", None)
        while len(sizes) > max(1, int(getattr(graphs, "max_graphs", 8))):
            sizes.popitem(last=False)

    def _needs_capture(self, model: Optional[str], dtype: Optional[str], size: tuple[int, int]) -> bool:
        key = (model or self.default_model, dtype or self.dtype)
        return tuple(size) not in self.sizes.get(key, {})

    def _observe(self, cost: CallCost, method: str, seconds: float, calls: int, pixels: int,
                 capture_s: float = 0.0) -> None:
        """Refine ``cost`` from what a request took (at ``pixels``; captures apart)."""
        scale = cost.pixels / max(1, pixels)
        cost.observe(_method_facts(method)[2], seconds * scale, calls)
        if capture_s > 0:
            cost.capture_s = 0.5 * cost.capture_s + 0.5 * capture_s * scale if cost.capture_s else capture_s * scale

    def model_settings(self, model: Optional[str], dtype: Optional[str] = None) -> tuple[float, float]:
        """The edit controls of a model: its registry defaults (edit strength, edit guidance)."""
        defaults = self.pipe(model, dtype).defaults
        return defaults.edit_strength, defaults.edit_guidance
