"""PyTorch's CUDA-graph capture rules, simulated on the CPU (no GPU has been at hand to meet them).

``SimulatedCuda.install(monkeypatch)`` replaces the ``torch.cuda`` functions that
``nrinv.core.graphs.cuda_capture`` calls with a model of what they do on a GPU:

* streams: a current stream per thread and device, a default stream per device; ``torch.cuda.stream``
  sets the current stream of *its* device (the current device is left as it is), as PyTorch does;
* ``torch.cuda.graph`` as PyTorch writes it: its own side stream made once, on the device current at
  the first capture in the process; ``capture_begin`` on entry, ``capture_end`` then the stream
  context's exit on the way out (a ``capture_end`` that raises skips restoring the stream);
* ``CUDAGraph.capture_begin``: "CUDA graphs must be captured on a non-default stream"; one capture
  underway per process; the caching allocator's pool rules (``beginAllocateToPool``): a pool whose
  graphs are all gone (use count 0) cannot be recorded into again ("INTERNAL ASSERT FAILED"), nor one
  still recording ("already recording to mempool_id");
* ``CUDAGraph.capture_end``: a capture invalidated by an illegal operation (a host sync) ends the
  stream's capture and raises before the allocator hears of it, so its pool stays "recording";
* kernels: a test's forward launches its work with :meth:`SimulatedCuda.launch`; during a capture the
  work is recorded, not run (outputs hold garbage until replayed), and a graph's replay runs what it
  recorded on the tensors it recorded; :meth:`SimulatedCuda.sync` is a host read (``.item()``), illegal
  during a capture on the calling thread's stream.

Sources: ``torch/cuda/graphs.py`` (class ``graph``), ``aten/src/ATen/cuda/CUDAGraph.cpp``
(``capture_begin`` / ``capture_end``) and ``c10/cuda/CUDACachingAllocator.cpp``
(``beginAllocateToPool`` / ``releasePool``).
"""
from __future__ import annotations

import itertools
import threading
import weakref

import torch


class SimulatedCuda:
    def __init__(self):
        self._local = threading.local()
        self._lock = threading.Lock()
        self._handles = itertools.count(1)
        self.pools: dict = {}             # pool handle -> use count (a released pool stays known)
        self.recording: list = []         # pools with a capture underway, as the allocator sees them
        self.capture = None               # (stream, graph) of the capture underway in the process
        self.defaults: dict[int, _Stream] = {}
        self.streams_made: list[_Stream] = []
        self.warmup_streams: list[_Stream] = []   # where work ran outside a capture
        self.capture_streams: list[_Stream] = []  # where captures ran
        self.captures_begun = 0
        sim = self

        class graph:  # noqa: N801 - torch.cuda.graph, as PyTorch writes it
            default_capture_stream = None

            def __init__(self, cuda_graph, pool=None, stream=None, capture_error_mode="global"):
                if stream is None and type(self).default_capture_stream is None:
                    type(self).default_capture_stream = sim.Stream()
                self.pool = () if pool is None else (pool,)
                self.capture_stream = stream if stream is not None else type(self).default_capture_stream
                self.stream_ctx = sim.stream(self.capture_stream)
                self.cuda_graph = cuda_graph

            def __enter__(self):
                self.stream_ctx.__enter__()
                self.cuda_graph.capture_begin(*self.pool)

            def __exit__(self, *exc):
                self.cuda_graph.capture_end()
                self.stream_ctx.__exit__(*exc)

        self.graph = graph

    # -- devices and streams ---------------------------------------------------------------------
    def current_device(self) -> int:
        return getattr(self._local, "device", 0)

    def set_device(self, device: int) -> None:
        self._local.device = device

    def default_stream(self, device: int) -> _Stream:
        with self._lock:
            if device not in self.defaults:
                self.defaults[device] = _Stream(self, device, default=True)
            return self.defaults[device]

    def Stream(self, device=None, **_):  # noqa: N802 - torch.cuda.Stream
        stream = _Stream(self, self.current_device() if device is None else int(device))
        self.streams_made.append(stream)
        return stream

    def current_stream(self, device=None) -> _Stream:
        device = self.current_device() if device is None else int(device)
        streams = getattr(self._local, "streams", None) or {}
        return streams.get(device) or self.default_stream(device)

    def _set_stream(self, stream: _Stream) -> None:
        if not hasattr(self._local, "streams"):
            self._local.streams = {}
        self._local.streams[stream.device] = stream

    def stream(self, stream: _Stream) -> _StreamContext:
        return _StreamContext(self, stream)

    def is_current_stream_capturing(self) -> bool:
        return self.current_stream().capturing is not None

    def graph_pool_handle(self):
        return (0, next(self._handles))

    def CUDAGraph(self):  # noqa: N802 - torch.cuda.CUDAGraph
        return _Graph(self)

    # -- kernels -----------------------------------------------------------------------------------
    def launch(self, work) -> None:
        """A kernel launch on the calling thread's current stream: recorded during its capture, else run."""
        stream = self.current_stream()
        graph = stream.capturing
        if graph is not None:
            if graph.thread is not threading.current_thread():
                graph.invalidated = True  # another thread's work on a capturing stream
                raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
            graph.tape.append(work)
            return
        self.warmup_streams.append(stream)
        work()

    def sync(self) -> None:
        """A host read (``.item()``, ``bool(tensor)``): illegal on a capturing stream."""
        graph = self.current_stream().capturing
        if graph is not None:
            graph.invalidated = True
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

    def install(self, monkeypatch) -> SimulatedCuda:
        for name in ("current_device", "Stream", "current_stream", "stream", "is_current_stream_capturing",
                     "graph_pool_handle", "CUDAGraph", "graph"):
            monkeypatch.setattr(torch.cuda, name, getattr(self, name))
        import nrinv.core.graphs as graphs

        monkeypatch.setattr(graphs, "_SIDE_STREAMS", {}, raising=False)  # no stream of another simulation
        return self


class _StreamContext:
    """``torch.cuda.StreamContext``: a class, so a context entered and never exited stays entered."""

    def __init__(self, sim: SimulatedCuda, stream: _Stream):
        self.sim, self.stream, self.previous = sim, stream, None

    def __enter__(self):
        self.previous = self.sim.current_stream(self.stream.device)
        self.sim._set_stream(self.stream)

    def __exit__(self, *exc):
        self.sim._set_stream(self.previous)


class _Stream:
    def __init__(self, sim: SimulatedCuda, device: int, default: bool = False):
        self.sim, self.device, self.default = sim, device, default
        self.capturing = None  # the graph being captured on this stream

    def wait_stream(self, other) -> None:
        pass

    def __repr__(self):
        return f"<stream {'default' if self.default else id(self)} of device {self.device}>"


class _Graph:
    def __init__(self, sim: SimulatedCuda):
        self.sim, self.tape, self.pool, self.stream = sim, [], None, None
        self.invalidated, self.captured, self.thread = False, False, None

    def capture_begin(self, pool=None, capture_error_mode="global"):
        sim = self.sim
        stream = sim.current_stream()
        if stream.default:
            raise RuntimeError("CUDA graphs must be captured on a non-default stream. (However, after capture, "
                               "it's ok to replay them on the default stream.)")
        with sim._lock:
            if sim.capture is not None:
                raise RuntimeError("CUDA error: operation not permitted when stream is capturing "
                                   "(another capture is underway in this process)")
            pool = pool if pool is not None else sim.graph_pool_handle()
            if pool in sim.pools:
                if sim.pools[pool] <= 0:
                    raise RuntimeError('INTERNAL ASSERT FAILED at "c10/cuda/CUDACachingAllocator.cpp": '
                                       "it->second->use_count > 0")
                sim.pools[pool] += 1
            else:
                sim.pools[pool] = 1
            # the graph holds the pool from here (``~CUDAGraph`` releases it)
            weakref.finalize(self, _release, sim, pool)
            if pool in sim.recording:
                raise RuntimeError("beginAllocateToPool: already recording to mempool_id")
            sim.recording.append(pool)
            sim.capture = (stream, self)
            sim.captures_begun += 1
        self.pool, self.stream, self.thread = pool, stream, threading.current_thread()
        stream.capturing = self
        sim.capture_streams.append(stream)

    def capture_end(self):
        sim = self.sim
        if sim.current_stream() is not self.stream:
            raise RuntimeError("Capture must end on the same stream it began on.")
        self.stream.capturing = None
        with sim._lock:
            sim.capture = None
            if self.invalidated:  # cudaStreamEndCapture fails before the allocator's endAllocateToPool
                raise RuntimeError("CUDA error: operation failed due to a previous error during capture")
            sim.recording.remove(self.pool)
        self.captured = True

    def replay(self):
        assert self.captured, "replay of a graph that was never captured"
        for work in self.tape:
            work()


def _release(sim: SimulatedCuda, pool) -> None:
    with sim._lock:
        sim.pools[pool] -= 1


def stand_in_capture(run):
    """A capture that behaves like a CUDA graph for code that cannot launch simulated kernels (a real
    network): the captured function reads only its static input buffers, and replay rewrites the static
    output (tests/test_graphs.py and tests/test_new_user3.py use it)."""
    output = run()
    eager = run()

    def replay():
        output.copy_(run())
    return output, replay, eager


def force_graphs(monkeypatch, capture=stand_in_capture) -> list:
    """Graphs on for every adapter (on the CPU too: ``cuda_graphs=False`` still switches them off), each
    pipeline's captured through ``capture``; returns the list of graph caches made."""
    from nrinv.core.adapters import Adapter
    from nrinv.core.graphs import GraphedNetwork

    made = []

    def graphs(self):
        if self.cuda_graphs is False or self.offloaded:
            return None
        if self._graphs is None:
            self._graphs = GraphedNetwork(capture=capture, lock=self.lock)
            made.append(self._graphs)
        return self._graphs

    monkeypatch.setattr(Adapter, "graphs", property(graphs))
    return made
