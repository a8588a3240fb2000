"""What one request of the web app may ask for and take (``Limits``), the measured cost of a network call
(``CallCost``) and the price and deadline of a request; torch-free, so the command line reads the limits'
defaults while it builds its parser."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

from ..errors import InputError
from ..io.limits import DEFAULT_MAX_PIXELS


__all__ = ["DEFAULT_MAX_UPLOAD_MB", "MODEL_WORK", "REMEASURE_EVERY_S", "MODEL_DEFAULT", "Limits", "CallCost",
           "RequestTooLong", "Deadline", "estimate_seconds"]

DEFAULT_MAX_UPLOAD_MB = 20

#: the concurrency group of every handler that runs a model (one worker for all of them)
MODEL_WORK = "model"

#: a refused request measures the call cost again at most this often (seconds; the first time always)
REMEASURE_EVERY_S = 30.0

#: the method dropdown's first choice: the selected model's own (its edit method in the Edit tab)
MODEL_DEFAULT = "model default"

@dataclass(frozen=True)
class Limits:
    """What one request may ask for (each refused above its cap with a message saying so)."""

    max_steps: int = 50
    max_iterations: int = 5
    #: network calls of one request: inversion (at most, ``core.inversion.planned_calls``: steps x iterations
    #: x calls per iteration for a single-step sampler, more for a multistep or second-order one) plus the
    #: regeneration; bounds how long one request holds the worker
    max_nfe: int = 400
    #: the largest upload (the command line's default limit too: one input policy)
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_frames: int = 12
    #: requests waiting in the queue at most; more are refused at once ("busy, try again")
    queue_size: int = 8
    #: seconds of model work one request may take: priced before it runs (network calls x the measured cost
    #: of one call of that model, precision and method here) and ended by a deadline at the first step past it
    max_seconds: float = 20.0

    def worst_wait_s(self, requests_ahead: Optional[int] = None) -> float:
        """The longest a request waits to start, estimated: every request ahead of it (at most the
        queue: one running and ``queue_size - 1`` waiting) takes at most ``max_seconds``."""
        ahead = self.queue_size if requests_ahead is None else min(requests_ahead, self.queue_size)
        return ahead * self.max_seconds

@dataclass
class CallCost:
    """Seconds one network call of a loaded model costs here (its precision, on its device, at
    ``pixels``): ``forward_s`` for the solvers and the regeneration, ``gradient_s`` (forward and
    backward) for the solvers that differentiate through the network (``gnri_grad``), ``capture_s``
    the CUDA-graph capture of one new image size (0 without graphs).  Measured when the model loads,
    then moved halfway towards what each request observed."""

    forward_s: float
    gradient_s: float
    pixels: int
    capture_s: float = 0.0

    def per_call(self, needs_grad: bool) -> float:
        return self.gradient_s if needs_grad else self.forward_s

    def observe(self, needs_grad: bool, seconds: float, calls: int) -> None:
        if calls <= 0 or not seconds > 0:
            return
        name = "gradient_s" if needs_grad else "forward_s"
        setattr(self, name, 0.5 * getattr(self, name) + 0.5 * seconds / calls)

class RequestTooLong(InputError):
    """A request stopped at its deadline (the time one request may take here)."""

class Deadline:
    """``callback(info)`` for the steps of one request: raises :class:`RequestTooLong` at the first step
    boundary past ``seconds`` from its creation (``clock``: a monotonic clock in seconds).  Records the
    network calls done so far (``calls``), so a stopped request still refines the price."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.perf_counter):
        self.seconds, self.clock = float(seconds), clock
        self.start = clock()
        self.calls = 0

    def elapsed(self) -> float:
        return self.clock() - self.start

    def __call__(self, info: dict) -> None:
        self.calls = max(self.calls, int(info.get("nfe") or 0))
        elapsed = self.elapsed()
        if elapsed > self.seconds:
            raise RequestTooLong(f"stopped after {elapsed:.0f} s, the most one request may take here is "
                                 f"{self.seconds:g} s; use fewer steps or iterations, or a smaller image")

def estimate_seconds(cost: CallCost, needs_grad: bool, solve_calls: int, plain_calls: int,
                     pixels: Optional[int] = None, capture: bool = False) -> float:
    """Seconds a request of ``solve_calls`` solver calls (with a backward pass when ``needs_grad``) and
    ``plain_calls`` forward calls should take, at ``pixels`` (the cost grows with the pixel count),
    plus one CUDA-graph capture when ``capture`` (a size whose graphs are not captured yet)."""
    scale = 1.0 if not pixels else pixels / cost.pixels
    return scale * (solve_calls * cost.per_call(needs_grad) + plain_calls * cost.forward_s
                    + (cost.capture_s if capture else 0.0))
