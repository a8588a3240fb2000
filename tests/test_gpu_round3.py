"""What a first GPU run would meet in the graph path, reproduced on the CPU: PyTorch's capture rules
simulated (tests/cuda_rules.py), two threads for two pipelines, CPU autocast for CUDA's."""
import threading

import pytest
import torch

from cuda_rules import SimulatedCuda
from nrinv.core.graphs import GraphedNetwork


@pytest.fixture
def sim(monkeypatch):
    return SimulatedCuda().install(monkeypatch)


def launching(sim, invalid=(), during_capture=None):
    """A forward whose work is a simulated kernel launch; its captures numbered in ``invalid`` (1: the first)
    make a host read, which invalidates them; ``during_capture()`` runs inside each capture."""
    captures = []

    def forward(x, t, kw, shared):
        out = torch.empty_like(x)
        sim.launch(lambda: out.copy_(x * t + kw["c"].sum()))
        if sim.is_current_stream_capturing():
            captures.append(1)
            if during_capture is not None:
                during_capture()
            if len(captures) in invalid:
                sim.sync()
        return out
    return forward


def call(g, n=2, scale=1.0):
    x = torch.arange(float(n)) * scale
    out = g(x, torch.tensor(2.0), {"c": torch.ones(3)}, {})
    assert torch.equal(out, x * 2 + 3)
    return out


def test_graphs_are_captured_again_after_every_graph_was_dropped(sim):
    g = GraphedNetwork(launching(sim), capture_after=1)
    call(g)
    assert g.captures == 1 and g.replays == 1
    g.clear()  # as after pipe.to(...), a LoRA change or a swapped network: every graph (and its pool) gone
    call(g)
    call(g, 3)  # a second graph of the same cache shares the live pool
    assert g.captures == 3 and not g.fallbacks, g.fallbacks
    # an inexact first capture is discarded: its pool is released with it, and the next capture works
    state = {"first": True}

    def inexact_once(x, t, kw, shared):
        out = torch.empty_like(x)
        offset = 1.0 if sim.is_current_stream_capturing() and state.pop("first", False) else 0.0
        sim.launch(lambda: out.copy_(x * t + kw["c"].sum() + offset))
        return out

    g = GraphedNetwork(inexact_once, capture_after=1, retry_after=1)
    call(g)
    assert g.captures == 0 and "differs" in g.fallbacks[0]
    call(g, 3)
    assert g.captures == 1 and len(g.fallbacks) == 1, g.fallbacks


def test_a_capture_that_failed_midway_does_not_block_the_next_ones(sim):
    g = GraphedNetwork(launching(sim, invalid={1}), capture_after=1, retry_after=1)
    caller = sim.current_stream()
    call(g)  # the capture fails (a host read inside it): eager
    assert g.captures == 0 and "capture failed" in g.fallbacks[0]
    assert sim.current_stream() is caller  # the caller's stream is restored
    call(g)  # retried: captured
    call(g, 3)
    assert g.captures == 2 and len(g.fallbacks) == 1, g.fallbacks
    assert g.replays == 2
    # a capture failing while other graphs of the cache live: its pool (still held by them) stays
    # "recording" for the allocator, so the next capture needs another
    g = GraphedNetwork(launching(sim, invalid={2}), capture_after=1, retry_after=1)
    call(g, 3)
    call(g)
    assert g.captures == 1 and "capture failed" in g.fallbacks[0]
    call(g, 4)
    call(g)
    assert g.captures == 3 and len(g.fallbacks) == 1, g.fallbacks


def test_warm_up_and_capture_run_on_one_persistent_side_stream(sim):
    g = GraphedNetwork(launching(sim), capture_after=1)
    for n in (2, 3, 4):
        call(g, n)
    assert g.captures == 3
    side = set(map(id, sim.capture_streams))
    assert len(side) == 1 and len(sim.streams_made) == 1  # one stream made, for every capture
    warmed = {id(s) for s in sim.warmup_streams if not s.default}
    assert warmed == side


def test_a_capture_on_a_second_device_uses_a_stream_of_that_device(sim):
    g0 = GraphedNetwork(launching(sim), capture_after=1)
    call(g0)
    sim.set_device(1)  # what the graphs' torch.cuda.device(inputs' device) does for a pipeline on cuda:1
    g1 = GraphedNetwork(launching(sim), capture_after=1)
    call(g1)
    assert g0.captures == 1 and g1.captures == 1 and not g1.fallbacks, g1.fallbacks
    assert [s.device for s in sim.capture_streams] == [0, 1]


class _WatchedLock:
    """A reentrant lock that records the threads that had to wait for it."""

    def __init__(self):
        self.lock, self.waited = threading.RLock(), []

    def __enter__(self):
        if not self.lock.acquire(blocking=False):
            self.waited.append(threading.current_thread())
            self.lock.acquire()
        return self

    def __exit__(self, *exc):
        self.lock.release()


def test_two_pipelines_capturing_from_two_threads_take_turns(sim, monkeypatch):
    """Each pipeline has its own lock; PyTorch allows one capture per process: the second thread's
    capture waits for the first's."""
    import nrinv.core.graphs as graphs

    watched = _WatchedLock()
    monkeypatch.setattr(graphs, "CAPTURE_LOCK", watched, raising=False)
    started = threading.Event()

    def hold():  # inside thread A's capture: let thread B try to capture meanwhile
        started.set()
        for _ in range(500):  # until B has begun a capture of its own or waits to (at most 5 s)
            if sim.captures_begun > 1 or watched.waited or errors or b.fallbacks:
                break
            threading.Event().wait(0.01)

    a = GraphedNetwork(launching(sim, during_capture=hold), capture_after=1)
    b = GraphedNetwork(launching(sim), capture_after=1)
    errors = []

    def run_a():
        try:
            call(a)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def run_b():
        started.wait(10)
        try:
            call(b)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run_a), threading.Thread(target=run_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert a.captures == 1 and b.captures == 1, (a.fallbacks, b.fallbacks)
    assert not a.fallbacks and not b.fallbacks


def baked_autocast_capture(run):
    """A stand-in capture that, like a CUDA graph, records the kernels (and dtypes) autocast chose at capture."""
    on = torch.is_autocast_enabled("cpu")
    dtype = torch.get_autocast_dtype("cpu")
    output = run()
    eager = run()

    def replay():
        with torch.autocast("cpu", dtype=dtype, enabled=on):
            output.copy_(run())
    return output, replay, eager


def test_graphs_are_neither_captured_nor_replayed_under_autocast():
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 4)

    def forward(x, t, kw, shared):
        return layer(x) * t

    g = GraphedNetwork(forward, capture=baked_autocast_capture, capture_after=1)
    x, t = torch.randn(2, 4), torch.tensor(2.0)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            under = g(x, t, {}, {})
            assert under.dtype == torch.bfloat16
            g(x, t, {}, {})
        outside = g(x, t, {}, {})
        assert outside.dtype == torch.float32 and torch.equal(outside, forward(x, t, {}, {}))
        g(x, t, {}, {})
    assert g.captures == 1 and g.replays == 2  # the graph outside autocast only
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        again = g(x, t, {}, {})  # not served by the float32 graph
    assert again.dtype == torch.bfloat16 and g.replays == 2


def test_wan_latents_stay_float32_in_a_half_precision_pipeline():
    """WanPipeline steps its latents in float32: ``result.latents`` rounded to the network's dtype would move
    the regeneration for nothing."""
    import numpy as np

    from nrinv.core.inversion import invert_tensor
    from nrinv.testing import tiny_pipeline
    from nrinv.testing.pipelines import tiny_clip

    pipe = tiny_pipeline("wan").to(dtype=torch.bfloat16)
    clip = torch.stack([torch.from_numpy(np.asarray(f, dtype=np.float32) / 255).permute(2, 0, 1)
                        for f in tiny_clip(5)])
    res = invert_tensor(pipe, clip, "a photo of a cat", num_inference_steps=3, guidance_scale=1.0,
                        max_iterations=2, seed=0)
    assert res.latents.dtype == torch.float32
    assert torch.equal(res.latents, res.scheduler_latents / res.setup.schedule.init_noise_sigma)


def _held_bytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (list, tuple)):
        return sum(_held_bytes(v) for v in obj)
    return sum(_held_bytes(v) for v in vars(obj).values()) if hasattr(obj, "__dict__") else 0


def _anderson_in_float64(history, xs, gs):
    """Type-II Anderson mixing over the last ``history`` differences, textbook form, every copy float64."""
    f = [g - x for x, g in zip(xs, gs)][-(history + 1):]
    g = gs[-(history + 1):]
    if len(f) < 2:
        return g[-1]
    df = torch.stack([f[i + 1] - f[i] for i in range(len(f) - 1)], 2)
    dg = torch.stack([g[i + 1] - g[i] for i in range(len(f) - 1)], 2)
    gamma = torch.linalg.lstsq(df, f[-1][:, :, None]).solution
    return g[-1] - (dg @ gamma)[:, :, 0]


def test_whole_trajectory_anderson_mixing_keeps_bounded_float32_copies():
    from nrinv.core.trajectory import _Anderson

    torch.manual_seed(0)
    dim, history = 64, 3
    q, _ = torch.linalg.qr(torch.randn(dim, dim, dtype=torch.float64))
    a = (q * torch.linspace(-0.95, 0.95, dim, dtype=torch.float64)) @ q.T  # a contraction, spectral radius 0.95
    b = torch.randn(2, dim, dtype=torch.float64)
    root = torch.linalg.solve(torch.eye(dim, dtype=torch.float64) - a, b.T).T
    g = lambda x: (x.double() @ a.T + b).float()  # noqa: E731
    mixer = _Anderson(history)
    x, plain, xs, gs = torch.zeros(2, dim), torch.zeros(2, dim), [], []
    for _ in range(40):
        xs.append(x.double())
        gs.append(g(x).double())
        expected = _anderson_in_float64(history, xs, gs)
        x = mixer.step(x, g(x))
        plain = g(plain)
        assert float((x.double() - expected).norm() / expected.norm()) < 1e-4
        # kept: the last g(x) and residual and `history` differences of each, float32 (Wan's default
        # clip: ~0.4 GB a copy; float64 lists of x and g(x) held ~15 GB)
        assert _held_bytes(mixer) <= (2 + 2 * history) * x.numel() * 4
    error = lambda z: float((z.double() - root).norm() / root.norm())  # noqa: E731
    assert error(x) < 0.1 * error(plain), (error(x), error(plain))


def test_release_pipeline_frees_the_graphs_of_a_pipeline_held_in_a_cycle(astronaut32, monkeypatch):
    import gc
    import weakref

    import nrinv
    from cuda_rules import force_graphs
    from nrinv.core.adapters import release_pipeline
    from nrinv.testing import tiny_pipeline

    made = force_graphs(monkeypatch)
    pipe = tiny_pipeline("sd")
    pipe._cycle = [pipe]  # e.g. hooks or callbacks that refer back to the pipeline
    gc.collect()
    gc.disable()
    try:
        nrinv.invert(pipe, astronaut32, "a cat", num_inference_steps=3, max_iterations=2)
        graphs = weakref.ref(made[0])
        assert graphs().captures == 1 and graphs().captured_shapes() == {(1, 4, 16, 16)}
        made.clear()
        release_pipeline(pipe)
        assert graphs() is None  # freed now, the pipeline still alive (its cycle not collected)
        again = nrinv.invert(pipe, astronaut32, "a cat", num_inference_steps=3, max_iterations=2)
        assert again.finite and made[0].captures == 1  # a later call starts afresh
    finally:
        gc.enable()


def test_captured_shapes_and_the_price_of_a_capture():
    def slow(run):
        import time
        time.sleep(0.02)
        output, eager = run(), run()
        return output, lambda: output.copy_(run()), eager

    g = GraphedNetwork(lambda x, t, kw, shared: x * t, capture=slow, capture_after=2)
    x = torch.ones(2, 3)
    assert g.captured_shapes() == set() and g.seconds_per_capture == 0.0
    g(x, torch.tensor(2.0), {}, {})
    assert g.captured_shapes() == set()  # one call: not captured yet
    g(x, torch.tensor(2.0), {}, {})
    assert g.captured_shapes() == {(2, 3)} and g.seconds_per_capture >= 0.02
