"""The network call replayed from captured CUDA graphs.

On a GPU, one call of an SDXL-size UNet launches thousands of small kernels, and eager PyTorch spends
more time launching them than the GPU spends running them (``benchmarks/gpu_check.py`` measures
eager against replayed calls; its figures go to ``benchmarks/gpu/results.md``).  A
CUDA graph records the launches once and replays them with one call; it reads its inputs from fixed
("static") buffers and writes its output to a fixed buffer.  So each call copies the latent, the
timestep and the conditioning tensors in, replays, and clones the output out.  Because the
conditioning is an input too, one graph serves every prompt, timestep and guidance scale of one
input signature (shapes, dtypes, device, and the network's identity and weights' addresses); a new
signature (another batch size, image size) is captured once it repeats.

What a graph may never do is change an answer, so:

* a capture must replay the eager output twice, at the captured inputs and at other inputs (an
  empty graph, e.g. captured on the wrong GPU, passes the first and fails the second); a signature
  whose capture is inexact runs eagerly from then on; one whose capture raised (another thread's
  work, a full GPU) is retried a few times, later;
* the key holds the network's identity and a stamp of its weights (first/last parameter address,
  dtype, device, loaded LoRA adapters): after ``pipe.to(...)``, a dtype change, a swapped network or
  a LoRA load/unload, the weights' full address list is read again and graphs of old addresses are
  dropped (they would replay freed memory).  Surgery on the module that this stamp cannot see
  needs :meth:`GraphedNetwork.clear`;
* capture, copy-in, replay and copy-out hold one lock (a graph's buffers are shared state: two
  threads must not interleave them), and run on the tensors' own device;
* one capture at a time in the process (PyTorch's rule, whatever the pipeline or device): a capture
  holds a process-wide lock besides its pipeline's, and warms up and captures on one persistent side
  stream of its device (``torch.cuda.graph``'s own stream is made once, on the first device used);
* a cache's graphs share one memory pool while one of them lives; once none does (cleared,
  invalidated, an inexact capture discarded) or after a capture that failed midway, the next capture
  takes a fresh pool handle: PyTorch's caching allocator asserts on a released pool reused
  ("INTERNAL ASSERT FAILED ... use_count > 0") and refuses one it still counts as recording ("already
  recording to mempool_id");
* calls under ``torch.autocast`` run eagerly: a graph records the kernels and dtypes autocast chose at
  capture (and the addresses of its weight-cast cache, freed when autocast exits), so it must neither
  be captured there nor serve those calls;
* buffers are made outside inference mode (a tensor made inside ``torch.inference_mode()`` cannot
  be written outside it), and inference tensors, which keep no version counter, are always copied.

Calls with autograd enabled (``gnri_grad``, forward-mode Jacobian products) always run eagerly.
The cache is bounded (least recently used graphs are dropped first).
"""
from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor

__all__ = ["GraphedNetwork", "cuda_capture", "Capture", "CAPTURE_LOCK"]

#: ``capture(run)`` -> (static output, replay(), eager output of a warm-up run with the same inputs);
#: called on the inputs' device (``torch.cuda.device``), with the graph lock held
Capture = Callable[[Callable[[], Tensor]], tuple[Tensor, Callable[[], None], Tensor]]
Forward = Callable[[Tensor, Tensor, dict, dict], Tensor]


#: PyTorch allows one CUDA-graph capture underway per process: every capture (of any pipeline, on any
#: device, by any capture function) holds this lock, after its pipeline's
CAPTURE_LOCK = threading.RLock()
#: device index -> the side stream that warm-ups and captures run on (made once per device, under
#: ``CAPTURE_LOCK``; a stream left capturing by a failed capture is replaced)
_SIDE_STREAMS: dict[int, Any] = {}


def _side_stream(device: int) -> Any:
    stream = _SIDE_STREAMS.get(device)
    if stream is None:
        stream = _SIDE_STREAMS[device] = torch.cuda.Stream(device=device)
    return stream


def cuda_capture(run: Callable[[], Tensor], pool: Any = None) -> tuple[Tensor, Callable[[], None], Tensor]:
    """Warm up ``run`` on a side stream (as the PyTorch CUDA-graphs guide prescribes), then capture it on
    the same stream, all on the current CUDA device (the caller makes it the inputs' device)."""
    device = torch.cuda.current_device()
    with CAPTURE_LOCK:
        stream = _side_stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        # our own stream context: it puts the caller's stream back even when ``torch.cuda.graph``'s exit
        # raises midway (a failed capture_end skips its own restoring)
        with torch.cuda.stream(stream):
            try:
                for _ in range(2):
                    eager = run()
                graph = torch.cuda.CUDAGraph()
                # thread_local: work that other threads queue meanwhile (they wait on our locks for the
                # network, but not for everything) does not invalidate this capture
                with torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local"):
                    out = run()
            except BaseException:
                if torch.cuda.is_current_stream_capturing():  # never ended: no later capture could begin on it
                    _SIDE_STREAMS.pop(device, None)
                raise
        torch.cuda.current_stream(device).wait_stream(stream)
    return out, graph.replay, eager  # the bound replay keeps the graph alive


def _on(device: torch.device) -> contextlib.AbstractContextManager:
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


@dataclass
class _Entry:
    names: list[str]
    buffers: list[Tensor]
    output: Tensor
    replay: Callable[[], None]
    sources: list[Optional[tuple[Any, int]]]  # (weak reference, version) of what each buffer last received


@dataclass
class _Failure:
    attempts: int
    at_call: int      # the signature's call count at the last attempt
    final: bool       # an inexact replay: never retried


def _flatten(x: Tensor, t: Tensor, kw: dict[str, Tensor], shared: dict[str, Any]) -> tuple[list[str], list[Tensor]]:
    names = ["x", "t"] + [f"kw.{k}" for k in sorted(kw)] + [f"shared.{k}" for k in sorted(shared)]
    values = [x, t] + [kw[k] for k in sorted(kw)] + [shared[k] for k in sorted(shared)]
    if not all(isinstance(v, Tensor) for v in values):
        raise TypeError("only tensor inputs can be graph buffers")
    return names, values


def _unflatten(names: list[str], values: list[Tensor]) -> tuple[Tensor, Tensor, dict, dict]:
    kw = {n[3:]: v for n, v in zip(names, values) if n.startswith("kw.")}
    shared = {n[7:]: v for n, v in zip(names, values) if n.startswith("shared.")}
    return values[0], values[1], kw, shared


def _same(out: Tensor, eager: Tensor) -> bool:
    if out.shape != eager.shape or out.dtype != eager.dtype:
        return False
    eps = torch.finfo(out.dtype).eps if out.dtype.is_floating_point else 0.0
    scale = float(eager.detach().abs().max().float()) if eager.numel() else 0.0
    return float((out.detach().float() - eager.detach().float()).abs().max()) <= 8 * eps * scale + 1e-12


def _other_inputs(x: Tensor) -> Tensor:
    """Inputs unlike ``x`` (for the second capture check), exact in any floating dtype."""
    return x.flip(-1) * 0.5 + 0.25 if x.is_floating_point() and x.dim() else x * 2


class GraphedNetwork:
    """``forward(x, t, kw, shared)`` replayed from one captured graph per input signature.

    ``capture`` defaults to :func:`cuda_capture` (sharing one memory pool: outputs are cloned at
    once, so a later graph may reuse an earlier graph's memory); tests inject another.  The forward
    and the network are given per call (``graphs(x, t, kw, shared, forward=..., network=...)``), so
    the graphs hold no reference to their adapter; a ``forward`` given here is the default.

    ``max_graphs``: graphs kept (least recently used dropped first); ``capture_after``: a signature
    is captured at its n-th call (the calls before run eagerly: one-off sizes cost no capture);
    a capture that raised is retried after ``retry_after`` more calls of its signature, at most
    ``max_attempts`` times in all.
    """

    def __init__(self, forward: Optional[Forward] = None, capture: Optional[Capture] = None, *,
                 max_graphs: int = 8, capture_after: int = 2, retry_after: int = 8, max_attempts: int = 3,
                 lock: Optional[threading.RLock] = None):
        self.forward = forward
        self._pool = None
        self.capture = capture or self._cuda_capture
        self.max_graphs, self.capture_after = int(max_graphs), max(1, int(capture_after))
        self.retry_after, self.max_attempts = int(retry_after), int(max_attempts)
        self.lock = lock if lock is not None else threading.RLock()
        self.entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self._calls: OrderedDict[tuple, int] = OrderedDict()  # calls per signature not (yet) captured
        self._failures: dict[tuple, _Failure] = {}
        self._stamp: Optional[tuple] = None
        self._weights: Optional[tuple] = None   # the full (address, dtype, device) list of the network
        self._weights_id = 0
        self._ends: Optional[tuple] = None      # weak references to the network, its first and last parameter
        self.capture_time = 0.0
        self.attempts = 0       # captures tried (kept, inexact or raised)
        self.captures = 0
        self.replays = 0
        self.evictions = 0
        self.invalidations = 0
        self.fallbacks: list[str] = []

    def _cuda_capture(self, run: Callable[[], Tensor]):
        # one pool for the graphs of this cache while one of them lives (it holds the pool); a fresh one
        # when none does, and after a capture that raised (the allocator may count it as still recording)
        if self._pool is None or not self.entries:
            self._pool = torch.cuda.graph_pool_handle()
        try:
            return cuda_capture(run, self._pool)
        except BaseException:
            self._pool = None
            raise

    def clear(self) -> None:
        """Drop every graph and its memory pool (e.g. after changing the network in a way the key cannot
        see, or when its pipeline goes: ``nrinv.core.adapters.release_pipeline``)."""
        with self.lock:
            self.entries.clear()
            self._calls.clear()
            self._failures.clear()
            self._stamp = self._weights = self._ends = None
            self._pool = None

    def stats(self) -> dict[str, Any]:
        return {"captures": self.captures, "replays": self.replays, "capture_time_s": round(self.capture_time, 4),
                "graphs": len(self.entries), "evictions": self.evictions, "invalidations": self.invalidations,
                "fallbacks": list(self.fallbacks)}

    def captured_shapes(self) -> set[tuple[int, ...]]:
        """The latent shapes (of ``x``: the batch as the network sees it) that a graph serves now."""
        with self.lock:
            return {next(s for n, s, *_ in key[1:] if n == "x") for key in self.entries}

    @property
    def seconds_per_capture(self) -> float:
        """Mean seconds of one capture so far, failed ones included (0.0 before any)."""
        return self.capture_time / self.attempts if self.attempts else 0.0

    # -- the network's weights ----------------------------------------------------------------
    def _weights_key(self, network: Optional[torch.nn.Module]) -> int:
        """An id of the network's weights (identity, addresses, dtypes, devices): cheap per call (a stamp
        of the first and last parameter and the loaded LoRA adapters); the full list is read only
        when the stamp changes, and graphs of other weights are dropped then."""
        if network is None:
            return 0
        ends = self._ends
        if ends is None or ends[0]() is not network:  # weak: a swapped-out network is not kept alive
            params = list(network.parameters())
            if not params:
                return 0
            ends = self._ends = (weakref.ref(network), weakref.ref(params[0]), weakref.ref(params[-1]))
        first, last = ends[1](), ends[2]()
        if first is None or last is None:
            self._ends = None
            return self._weights_key(network)
        peft = getattr(network, "peft_config", None)
        stamp = (id(network), first.data_ptr(), last.data_ptr(), first.dtype, first.device,
                 getattr(network, "_hf_peft_config_loaded", None), tuple(peft) if isinstance(peft, dict) else None)
        if stamp != self._stamp:
            weights = (id(network), tuple((p.data_ptr(), p.dtype, p.device)
                                          for p in [*network.parameters(), *network.buffers()]))
            if weights != self._weights:
                if self._weights is not None:
                    self.invalidations += 1
                self.entries.clear()  # graphs of freed or moved weights must never replay
                self._calls.clear()
                self._failures.clear()
                self._weights, self._weights_id = weights, self._weights_id + 1
            self._stamp = stamp
        return self._weights_id

    # -- calls --------------------------------------------------------------------------------
    def __call__(self, x: Tensor, t: Tensor, kw: dict[str, Tensor], shared: dict[str, Any],
                 forward: Optional[Forward] = None, network: Optional[torch.nn.Module] = None) -> Tensor:
        forward = forward or self.forward
        try:
            names, values = _flatten(x, t, kw, shared)
        except TypeError:
            return forward(x, t, kw, shared)
        if torch.is_autocast_enabled(x.device.type):
            return forward(x, t, kw, shared)
        with self.lock, _on(values[0].device), self._calling(forward):
            key = (self._weights_key(network),) + tuple(
                (n, tuple(v.shape), v.dtype, str(v.device)) for n, v in zip(names, values))
            entry = self.entries.get(key)
            if entry is None:
                if not self._due(key):
                    return forward(x, t, kw, shared)
                entry = self._capture(forward, names, values, key)
                if entry is None:
                    return forward(x, t, kw, shared)
            self.entries.move_to_end(key)
            for i, v in enumerate(values):
                last = entry.sources[i]
                # the latent and timestep change every call; a conditioning tensor is copied unless the very
                # same tensor (alive, unmodified) was copied last time; inference tensors keep no version
                if i < 2 or last is None or last[0]() is not v or v.is_inference() or last[1] != v._version:
                    entry.buffers[i].copy_(v)
                    entry.sources[i] = None if v.is_inference() else (weakref.ref(v), v._version)
            entry.replay()
            self.replays += 1
            return entry.output.clone()

    @contextlib.contextmanager
    def _calling(self, forward: Forward):
        """``forward`` is the one a capture runs during this call; no graph keeps a reference to it
        (a captured CUDA graph needs none, and a test's capture that re-runs it finds it here)."""
        previous, self._forward_now = getattr(self, "_forward_now", None), forward
        try:
            yield
        finally:
            self._forward_now = previous

    def _due(self, key: tuple) -> bool:
        """Whether to capture this signature now (it has repeated; a failed capture: after a pause)."""
        calls = self._calls.pop(key, 0) + 1
        self._calls[key] = calls
        while len(self._calls) > 16 * max(1, self.max_graphs):
            self._calls.popitem(last=False)
        failure = self._failures.get(key)
        if failure is not None:
            return (not failure.final and failure.attempts < self.max_attempts
                    and calls - failure.at_call >= self.retry_after)
        return calls >= self.capture_after

    def _fail(self, key: tuple, message: str, final: bool) -> None:
        failure = self._failures.get(key) or _Failure(0, 0, final)
        failure.attempts += 1
        failure.at_call = self._calls.get(key, 0)
        failure.final = failure.final or final
        self._failures[key] = failure
        if len(self.fallbacks) < 100:
            self.fallbacks.append(message + (f" (attempt {failure.attempts})" if failure.attempts > 1 else ""))

    def _capture(self, forward: Forward, names: list[str], values: list[Tensor], key: tuple) -> Optional[_Entry]:
        shape = tuple(values[0].shape)
        self.attempts += 1
        t0 = time.perf_counter()
        try:
            # buffers and outputs are normal tensors even when the caller is in inference mode
            with torch.inference_mode(False), torch.no_grad():
                buffers = [v.detach().clone() for v in values]
                this = weakref.ref(self)
                run = lambda: this()._forward_now(*_unflatten(names, buffers))  # noqa: E731
                with CAPTURE_LOCK:
                    output, replay, eager = self.capture(run)
                replay()
                exact = _same(output, eager)
                if exact:  # again at other inputs: an empty graph (nothing recorded) fails here
                    buffers[0].copy_(_other_inputs(buffers[0]))
                    expected = run()
                    replay()
                    exact = _same(output, expected)
            if not exact:
                self._fail(key, f"{names[0]} {shape}: replay differs from the eager call", final=True)
                return None
        except Exception as exc:  # an operation that cannot be captured, or a transient failure: eager for now
            self._fail(key, f"{shape}: capture failed ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''})", final=False)
            return None
        finally:
            if values[0].is_cuda:
                torch.cuda.synchronize(values[0].device)
            self.capture_time += time.perf_counter() - t0
        self.captures += 1
        self._calls.pop(key, None)
        self._failures.pop(key, None)
        while len(self.entries) >= self.max_graphs:
            self.entries.popitem(last=False)
            self.evictions += 1
        entry = _Entry(names, buffers, output, replay, [None] * len(buffers))
        self.entries[key] = entry
        return entry
