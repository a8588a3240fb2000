"""The parameters of an inversion, declared once (``InversionOptions``), and the decorator that gives every entry
point them as flat keywords (``inversion_parameters``)."""
from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from ..errors import InputError
from .options import Options


__all__ = ["InversionOptions", "inversion_parameters", "check_guidance", "MAX_GUIDANCE", "WARM_STARTS"]


#: guidance scales accepted: 0 (no guidance, e.g. SDXL-Turbo) up to this; larger values only blow up the
#: guided prediction (guidance 1e9 gave noise of size 1e5 and a black image)
MAX_GUIDANCE = 50.0


#: warm start modes: see ``_solve_steps``
WARM_STARTS = ("last", "linear", "learned")


def check_guidance(value: Any, what: str = "guidance_scale") -> float:
    """A guidance scale: a finite number in [0, MAX_GUIDANCE]."""
    try:
        g = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number in [0, {MAX_GUIDANCE:g}], got {value!r}") from None
    if not math.isfinite(g) or not 0.0 <= g <= MAX_GUIDANCE:
        raise InputError(f"{what} must be a finite number in [0, {MAX_GUIDANCE:g}], got {value!r}")
    return g


@dataclass(frozen=True)
class InversionOptions(Options):
    """The parameters of an inversion, declared once.

    Every entry point that inverts (``nrinv.invert``, ``invert_batch``, ``edit``, ``interpolate``,
    ``seed_from_images``, the bench harness, the CLI) takes them, either as one object,
    ``inversion=InversionOptions(...)``, or as flat keywords of the same names (a flat keyword
    overrides the object's field).  A name means the same everywhere; ``None`` takes the model's
    default (``nrinv.core.defaults``).

    ``method``: a method of the registry (``core/methods.py``: a per-step solver, or ``edit_friendly``).
    ``num_inference_steps``: sampler steps.
    ``guidance_scale``: the classifier-free guidance the image is inverted (and reconstructed) at;
    where a workflow regenerates at another guidance, that one has its own name
    (``edit_guidance_scale``, ``sample_guidance_scale``).  ``negative_prompt``: the guidance's
    unconditional prompt.  ``max_iterations``: solver iterations per step (not for a solver that
    does not iterate).  ``options``: the solver's options (dict or ``SolverOptions``).
    ``warm_start``: start each step from a model output predicted from the steps solved before (no
    extra network call; see ``_solve_steps``): ``None`` turns it on exactly when no classifier-free
    guidance is used, in the model's mode; ``True`` / ``False`` force it; ``"last"`` / ``"linear"``
    choose the mode.  ``seed`` / ``generator``: the noise stochastic samplers (Euler-ancestral, LCM)
    draw, as the stock pipeline draws it with ``generator`` (read, not advanced), else with
    ``torch.Generator().manual_seed(seed)``.
    """

    method: Optional[str] = None
    num_inference_steps: Optional[int] = None
    guidance_scale: Optional[float] = None
    negative_prompt: Optional[str] = None
    max_iterations: Optional[int] = None
    options: Any = None
    warm_start: Any = None
    seed: int = 0
    generator: Optional[torch.Generator] = None

    @classmethod
    def from_dict(cls, values: Any = None, **overrides: Any) -> InversionOptions:
        """The options of ``values`` (and ``overrides``); a ``generator`` written by :meth:`to_dict` (a dict of
        its device and state) becomes a generator in that state again."""
        values = dict(values or {}, **overrides)
        if isinstance(values.get("generator"), dict):
            values["generator"] = _generator_from_dict(values["generator"])
        try:
            return super().from_dict(values)
        except ValueError as exc:  # a user's argument: InputError, as the entry points raise
            raise InputError(str(exc)) from None

    @classmethod
    def merge(cls, base: Optional[InversionOptions], **flat: Any) -> InversionOptions:
        """``base`` (default: all defaults) with the given flat keywords replacing its fields."""
        if base is None:
            return cls.from_dict(flat)
        if not isinstance(base, InversionOptions):
            raise InputError(f"inversion= takes an InversionOptions, got {type(base).__name__}")
        return base.replace(**flat)

    def replace(self, **changes: Any) -> InversionOptions:
        return dataclasses.replace(self, **type(self).from_dict(changes).given(changes))

    def given(self, names: Any = None) -> dict[str, Any]:
        """The fields named in ``names`` (default: all), as a dict of keyword arguments."""
        return {f: getattr(self, f) for f in (self.field_names() if names is None else names)}

    def to_dict(self) -> dict[str, Any]:
        out = self.given()
        out["options"] = self.options.to_dict() if hasattr(self.options, "to_dict") else self.options
        g = self.generator
        # plain data (JSON-safe) from which from_dict rebuilds a generator in this state
        out["generator"] = None if g is None else {"device": str(g.device), "initial_seed": int(g.initial_seed()),
                                                   "state": g.get_state().tolist()}
        return out


def _generator_from_dict(data: dict) -> torch.Generator:
    """A generator in the state :meth:`InversionOptions.to_dict` recorded (or seeded with its initial seed)."""
    try:
        generator = torch.Generator(device=data.get("device", "cpu"))
        if data.get("state") is not None:
            generator.set_state(torch.tensor(data["state"], dtype=torch.uint8))
        else:
            generator.manual_seed(int(data["initial_seed"]))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"generator: expected what InversionOptions.to_dict writes ({exc})") from None
    return generator


def inversion_parameters(fn: Callable) -> Callable:
    """Give ``fn`` the flat keywords of :class:`InversionOptions`, declared once.

    ``fn`` takes a keyword ``inversion: InversionOptions``; the wrapper takes ``inversion=`` and/or
    the flat keywords, merges them and passes ``fn`` one ``InversionOptions``.  The flat keywords
    appear in the wrapper's signature (``help()``, ``inspect.signature``) just before ``inversion``.
    """
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())
    names = [p.name for p in params]
    clash = set(names) & set(InversionOptions.field_names())
    if clash:
        raise TypeError(f"{fn.__qualname__} writes out inversion parameter(s) {sorted(clash)}; they come from "
                        "InversionOptions")
    at = names.index("inversion")
    flat = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
            for f in dataclasses.fields(InversionOptions)]
    fields = frozenset(InversionOptions.field_names())

    @functools.wraps(fn)
    def wrapper(*args: Any, inversion: Optional[InversionOptions] = None, **kwargs: Any) -> Any:
        given = {k: kwargs.pop(k) for k in list(kwargs) if k in fields}
        return fn(*args, inversion=InversionOptions.merge(inversion, **given), **kwargs)

    own = params[at].replace(default=None, annotation="Optional[InversionOptions]")
    wrapper.__signature__ = sig.replace(parameters=params[:at] + flat + [own] + params[at + 1:])  # type: ignore[attr-defined]
    return wrapper
