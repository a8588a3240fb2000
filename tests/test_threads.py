"""Two threads (two app users) sharing one model: each gets its own answer.

On CUDA a graph's input and output buffers are shared state, a capture must not meet another
thread's network work, and the SDXL VAE is upcast in place for each encode/decode; these tests
reproduce those races on the CPU with a fake capture that sleeps inside replay."""
import threading
import time

import torch

import nrinv
from nrinv.core.graphs import GraphedNetwork

PROMPT = "a photo of a cat"


def slow_capture(run):
    """A capture like tests/test_graphs.py's, whose replay gives other threads time to run."""
    output, eager = run(), run()

    def replay():
        time.sleep(0.002)
        output.copy_(run())
    return output, replay, eager


def _in_threads(work, n=2):
    errors, results = [], [None] * n

    def target(i):
        try:
            results[i] = work(i)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            errors.append(f"{type(exc).__name__}: {exc}")
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    return results


def test_two_threads_share_one_graphed_adapter(tiny, astronaut32):
    pipe = tiny("sd")
    images = [astronaut32, astronaut32.rotate(90)]
    kw = dict(num_inference_steps=3, max_iterations=2)
    expected = [nrinv.invert(nrinv.core.adapter_for(pipe, cuda_graphs=False), im, PROMPT, **kw).scheduler_latents
                for im in images]
    adapter = nrinv.core.adapter_for(pipe, cuda_graphs=True)
    adapter._graphs = GraphedNetwork(capture=slow_capture, capture_after=1, lock=adapter.lock)
    results = _in_threads(lambda i: [nrinv.invert(adapter, images[i], PROMPT, **kw).scheduler_latents
                                     for _ in range(2)])
    for i, runs in enumerate(results):
        for z in runs:  # another user's output would differ by far more
            assert torch.allclose(z, expected[i], atol=1e-6)
    assert adapter.graphs.captures == 1 and adapter.graphs.replays > 0


def test_two_threads_encode_through_the_upcast_sdxl_vae():
    from nrinv.testing import tiny_pipeline

    pipe = tiny_pipeline("sdxl").to(dtype=torch.float16)
    assert pipe.vae.config.force_upcast
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    expected = nrinv.core.adapter_for(pipe).encode(images)
    # each thread its own adapter of the one pipeline, as two app requests would have
    results = _in_threads(lambda i: [nrinv.core.adapter_for(pipe).encode(images) for _ in range(8)])
    assert all(torch.equal(z, expected) for runs in results for z in runs)
    assert pipe.vae.dtype == torch.float16


def test_the_app_runs_all_model_work_in_one_concurrency_group():
    from nrinv.app import EditorApp

    demo = EditorApp().build()
    groups = {}
    for fn in demo.fns.values():
        groups.setdefault(fn.name, set()).add((fn.concurrency_id, fn.concurrency_limit))
    model_work = groups["invert"] | groups["edit"] | groups["interpolate"] | groups["model_settings"]  # loads one
    assert model_work == {("model", 1)}  # one worker: /invert, /edit (all four triggers), /interpolate, loading
    assert ("model", 1) not in groups["preview"] | groups["frame"]  # no model there: not held back
