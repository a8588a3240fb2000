"""The persistent state an adapter keeps per pipeline: its prompt conditionings and probed schedules
(least recently used dropped first), its captured CUDA graphs, and the lock that guards them; shared by
every adapter of one pipeline and released with it (or at once by ``release_pipeline``)."""
from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Optional

from ..graphs import GraphedNetwork

__all__ = ["MAX_CONDITIONINGS", "MAX_SCHEDULES", "release_pipeline"]


class _LRU:
    """A small thread-safe least-recently-used cache: a long-running app meets ever new prompts and seeds,
    and must not keep the embeddings and schedules of all of them."""

    def __init__(self, max_size: int):
        self.max_size = int(max_size)
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.max_size:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


#: prompt conditionings and probed schedules kept per pipeline (least recently used dropped first)
MAX_CONDITIONINGS = 32


MAX_SCHEDULES = 16


#: the key of a schedule that records no noise, in place of the seed / generator it was probed with
_NO_NOISE = "no noise"


@dataclass
class _PipeState:
    """What every adapter of one pipeline shares: caches, graphs and the lock of its model work."""

    lock: threading.RLock = field(default_factory=threading.RLock)
    conditionings: _LRU = field(default_factory=lambda: _LRU(MAX_CONDITIONINGS))
    schedules: _LRU = field(default_factory=lambda: _LRU(MAX_SCHEDULES))
    graphs: Optional[GraphedNetwork] = None
    #: the network's (device, dtype) and the stamp they were read at (``Adapter._placement``)
    placement: Optional[tuple] = None
    #: per thread, a video pipeline's clip length (frames) of the last clip that thread encoded
    #: (``WanAdapter.encode``): two threads inverting clips of different lengths must not see each other's
    frames: threading.local = field(default_factory=threading.local)


#: id(pipeline) -> (weak reference to it, its state).  The state holds nothing of the pipeline or its
#: adapters (the graphs get the forward per call), so it goes with the pipeline, freed by reference
#: counting alone: ``nrinv.invert(pipe, ...)`` twice reuses one capture, and results keep no graphs
#: of their own.
_STATES: dict[int, tuple[weakref.ref, _PipeState]] = {}


_STATES_LOCK = threading.Lock()


def _state_of(pipe: Any) -> _PipeState:
    with _STATES_LOCK:
        known = _STATES.get(id(pipe))
        if known is not None and known[0]() is pipe:
            return known[1]
        state = _PipeState()
        key = id(pipe)

        # the dict is bound here: at interpreter exit module globals may already be None when a
        # pipeline's weak reference fires
        def forget(ref: weakref.ref, states: dict = _STATES) -> None:
            if states.get(key, (None,))[0] is ref:
                states.pop(key, None)
        try:
            _STATES[key] = (weakref.ref(pipe, forget), state)
        except TypeError:  # an object without weak references: its adapters keep their own state
            pass
        return state


def release_pipeline(pipe: Any) -> None:
    """Drop what this pipeline's adapters share now: its captured CUDA graphs with their memory pools,
    its prompt embeddings and schedules.  Without this they go with the pipeline, which a reference cycle
    keeps until Python's cycle collector runs; call it when done with a pipeline (before loading or
    measuring the next one).  Takes a pipeline or one of its adapters; a later call starts afresh."""
    pipe = pipe.pipe if hasattr(pipe, "denoise") and hasattr(pipe, "pipe") else pipe  # an adapter: its pipeline
    with _STATES_LOCK:
        known = _STATES.get(id(pipe))
        if known is None or known[0]() is not pipe:
            return
        del _STATES[id(pipe)]
    state = known[1]
    with state.lock:
        if state.graphs is not None:
            state.graphs.clear()
        state.graphs = None
        state.conditionings.clear()
        state.schedules.clear()
