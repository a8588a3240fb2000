"""`nrinv app`: a Gradio web app for interactive real-image editing.

Invert once, then every change of target prompt, strength or guidance regenerates from the cached
inversion (per browser session, in ``gr.State``).

Serving it to others is safe by construction:

* users pick a model from the operator's allow-list (``--models``; by default the built-in models and
  the one named with ``--model``): nothing a user types makes the server load a path or a hub id;
* every request is capped (steps, iterations per step, network calls, upload pixels, frames, and its
  time: network calls priced by what one call of that model, precision and method costs on this
  server, measured when the model loads, measured again when that price would refuse a request, and
  refined by every request; a CUDA-graph capture priced for each image size not captured yet; and a
  deadline checked between steps ends a request that runs past ``max_seconds`` with one line).  A
  request no heavier than the model's default is never refused by the price (the deadline bounds it),
  so a price measured while the machine was busy cannot lock users out.  One queue with one
  worker for every handler that runs or loads a model (one Gradio concurrency group) serialises the
  model work, holding at most ``queue_size`` waiting requests.  The worst wait
  of a light request is therefore about ``max_seconds`` behind one heavy request, and
  ``queue_size * max_seconds`` behind a full queue (:meth:`Limits.worst_wait_s`), the deadline's
  bound (a request stops at its first step boundary past ``max_seconds``);
* user errors come back as one friendly line, with no server path, and are logged as one line; an
  unexpected error is logged as one line and shown as a generic message.

One job per module: ``limits`` (what a request may ask and take; torch-free), ``models`` (loading and
pricing), ``requests`` (checks before a request runs), ``server`` (the handlers, the UI, ``launch``).  Names
are imported on first use, so the command line reads ``Limits`` without torch or Gradio.
"""
from __future__ import annotations

import importlib
from typing import Any

#: public name -> the module defining it
_WHERE = {
    "DEFAULT_MAX_UPLOAD_MB": ".limits",
    "MODEL_WORK": ".limits",
    "REMEASURE_EVERY_S": ".limits",
    "MODEL_DEFAULT": ".limits",
    "Limits": ".limits",
    "CallCost": ".limits",
    "RequestTooLong": ".limits",
    "Deadline": ".limits",
    "estimate_seconds": ".limits",
    "_scrub": ".models",
    "_methods": ".models",
    "_method_facts": ".models",
    "_resolve_method": ".models",
    "measure_call_cost": ".models",
    "default_models": ".models",
    "_display": ".requests",
    "fit_to_model": ".requests",
    "EditorApp": ".server",
    "quiet_checks": ".server",
    "_quiet_preprocess": ".server",
    "IDLE_POLL_S": ".server",
    "quiet_when_idle": ".server",
    "_edit_inversion": ".server",
    "launch": ".server",
}
__all__ = [n for n in _WHERE if not n.startswith("_")]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name], __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
