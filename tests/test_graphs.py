"""The graph-replayed network call, checked on the CPU with a capture that behaves like a CUDA graph:
the captured function reads only its static input buffers and replay rewrites the static output.
(The CUDA capture itself is exercised by tests/test_cuda.py on a GPU.)"""
import pytest
import torch

import nrinv
from nrinv.core.graphs import GraphedNetwork

from cuda_rules import stand_in_capture as fake_capture  # a capture that behaves like a CUDA graph

PROMPT = "a photo of a cat"


def graphed(pipe, capture=fake_capture, **kw):
    """An adapter of ``pipe`` whose graphs (one per pipeline, fresh here) use ``capture``."""
    adapter = nrinv.core.adapter_for(pipe, cuda_graphs=True)
    adapter._graphs = GraphedNetwork(capture=capture, lock=adapter.lock, **kw)
    return adapter


@pytest.mark.parametrize("kind, guidance", [("sd", 3.0), ("sdxl", 0.0), ("flux", 0.0)])
def test_replayed_calls_give_the_eager_answers(tiny, astronaut32, kind, guidance):
    pipe = tiny(kind)
    kw = dict(num_inference_steps=4, guidance_scale=guidance, max_iterations=3, seed=2)
    eager = nrinv.invert(nrinv.core.adapter_for(pipe, cuda_graphs=False), astronaut32, PROMPT, **kw)
    adapter = graphed(pipe)
    replayed = nrinv.invert(adapter, astronaut32, PROMPT, **kw)
    assert torch.allclose(replayed.scheduler_latents, eager.scheduler_latents, atol=1e-6)
    g = adapter.graphs
    # one graph, captured at the signature's second call and replayed from then on
    assert g.captures == 1 and g.replays == replayed.nfe - 1 and not g.fallbacks
    # other prompts, timesteps and strengths reuse that graph (the conditioning is an input buffer)
    common = dict(strength=0.5, guidance_scale=guidance, edit_guidance_scale=guidance, num_inference_steps=4,
                  max_iterations=3, output_type="latent")
    edited = nrinv.edit(adapter, astronaut32, PROMPT, ["a photo of a dog", "a red cat"], **common)
    reference = nrinv.edit(pipe, astronaut32, PROMPT, ["a photo of a dog", "a red cat"], **common)
    for a, b in zip(edited.latents, reference.latents):
        assert torch.allclose(a, b, atol=1e-6)
    assert g.captures == 1


def test_a_new_signature_is_captured_once_more(tiny, astronaut32):
    adapter = graphed(tiny("sd"))
    nrinv.invert(adapter, astronaut32, PROMPT, num_inference_steps=3)
    nrinv.invert_batch(adapter, [astronaut32, astronaut32.rotate(90)], PROMPT, num_inference_steps=3)
    nrinv.invert(adapter, astronaut32, PROMPT, num_inference_steps=3)
    assert adapter.graphs.captures == 2  # batch 1 and batch 2


def test_failed_or_inexact_captures_fall_back_to_eager(tiny, astronaut32):
    pipe = tiny("sd")
    reference = nrinv.invert(pipe, astronaut32, PROMPT, num_inference_steps=3)

    def failing(run):
        raise RuntimeError("operation not permitted when stream is capturing")

    def inexact(run):
        output, replay, eager = fake_capture(run)
        return output, lambda: (replay(), output.add_(1.0)), eager

    for capture, why in ((failing, "capture failed"), (inexact, "differs")):
        adapter = graphed(pipe, capture)
        res = nrinv.invert(adapter, astronaut32, PROMPT, num_inference_steps=3)
        assert torch.allclose(res.scheduler_latents, reference.scheduler_latents, atol=1e-6)
        assert adapter.graphs.captures == 0 and adapter.graphs.replays == 0
        assert why in adapter.graphs.fallbacks[0] and len(adapter.graphs.fallbacks) == 1  # tried once


def test_autograd_calls_run_eagerly(tiny, astronaut32):
    adapter = graphed(tiny("sd"))
    res = nrinv.invert(adapter, astronaut32, PROMPT, method="gnri_grad", num_inference_steps=3, max_iterations=2)
    assert res.finite and adapter.graphs.replays == 0


def test_conditioning_changed_in_place_is_copied_again():
    calls = []

    def forward(x, t, kw, shared):
        calls.append(1)
        return x * t + kw["c"].sum()

    g = GraphedNetwork(forward, capture=fake_capture, capture_after=1)
    x, t, c = torch.ones(2), torch.tensor(2.0), torch.ones(3)
    assert torch.equal(g(x, t, {"c": c}, {}), torch.full((2,), 5.0))
    c.mul_(2)  # same tensor, new contents
    assert torch.equal(g(x, t, {"c": c}, {}), torch.full((2,), 8.0))
    assert torch.equal(g(x * 3, t + 1, {"c": torch.zeros(3)}, {}), torch.full((2,), 9.0))
    assert g.captures == 1 and g.replays == 3


def test_graphs_are_off_on_the_cpu_and_can_be_switched_off(tiny):
    assert nrinv.core.adapter_for(tiny("sd")).graphs is None  # nothing to capture on the CPU
    assert nrinv.core.adapter_for(tiny("sd"), cuda_graphs=False).graphs is None


def test_replayed_calls_under_inference_mode(tiny, astronaut32):
    pipe = tiny("sd")
    kw = dict(num_inference_steps=3, max_iterations=2)
    eager = nrinv.invert(nrinv.core.adapter_for(pipe, cuda_graphs=False), astronaut32, "an inference-mode cat", **kw)
    adapter = graphed(pipe)
    with torch.inference_mode():  # the usual serving idiom; its tensors keep no version counter
        res = nrinv.invert(adapter, astronaut32, "an inference-mode cat", **kw)
    assert torch.allclose(res.scheduler_latents, eager.scheduler_latents, atol=1e-6)
    assert adapter.graphs.replays == res.nfe - 1
    # the buffers, the graph and the cached embeddings were made outside inference mode: usable after it
    again = nrinv.invert(adapter, astronaut32, "an inference-mode cat", **kw)
    assert torch.allclose(again.scheduler_latents, eager.scheduler_latents, atol=1e-6)
    grad = nrinv.invert(adapter, astronaut32, "an inference-mode cat", method="gnri_grad", num_inference_steps=3,
                        max_iterations=1)
    assert grad.finite and adapter.graphs.captures == 1


def test_every_adapter_of_a_pipeline_shares_its_graphs_and_embeddings(tiny, astronaut32, monkeypatch):
    pipe = tiny("sd")
    first = graphed(pipe)
    nrinv.invert(first, astronaut32, "a shared cat", num_inference_steps=3)
    # a new adapter of the same pipeline (what nrinv.invert(pipe, ...) makes on every call) reuses them
    calls = []
    monkeypatch.setattr(type(pipe), "encode_prompt", lambda *a, **k: calls.append(1) or (_ for _ in ()).throw(
        AssertionError("embedded again")))
    second = nrinv.core.adapter_for(pipe, cuda_graphs=True)
    res = nrinv.invert(second, astronaut32, "a shared cat", num_inference_steps=3)
    assert second.graphs is first.graphs and first.graphs.captures == 1 and not calls
    assert res.capture_time == 0 and len(first.graphs.entries) == 1  # results hold no graphs of their own


def test_graphs_hold_no_reference_to_their_adapter_or_pipeline(astronaut32):
    import gc
    import weakref

    from nrinv.testing import tiny_pipeline

    pipe = tiny_pipeline("sd")
    gc.collect()
    gc.disable()  # freed by reference counting alone: no cycle adapter -> graphs -> bound forward
    try:
        adapter = graphed(pipe)
        res = nrinv.invert(adapter, astronaut32, PROMPT, num_inference_steps=3)
        graphs, pipe_ref = weakref.ref(adapter.graphs), weakref.ref(pipe)
        assert graphs().captures == 1
        del adapter, res
        assert graphs() is not None  # kept with its pipeline, for the next call
        del pipe
        assert pipe_ref() is None and graphs() is None
    finally:
        gc.enable()


def test_total_time_includes_the_capture(tiny, astronaut32):
    def slow(run):
        import time
        time.sleep(0.05)
        return fake_capture(run)

    adapter = graphed(tiny("sd"), slow)
    res = nrinv.invert(adapter, astronaut32, "a timed cat", num_inference_steps=3)
    assert res.capture_time >= 0.05 and res.total_time >= res.wall_time + res.capture_time + res.encode_time
    assert res.stats()["total_time_s"] == round(res.total_time, 4)


def addresses_baked_in(pipe):
    """A fake capture that, like a CUDA graph, bakes in the network and its weights' addresses: a
    replay after they changed reads freed memory (here: raises, as a sticky CUDA error would)."""
    def capture(run):
        net = pipe.unet
        addresses = [p.data_ptr() for p in net.parameters()]
        output, replay, eager = fake_capture(run)

        def checked():
            if pipe.unet is not net or [p.data_ptr() for p in net.parameters()] != addresses:
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            replay()
        return output, checked, eager
    return capture


def test_graphs_of_moved_or_swapped_weights_are_not_replayed(astronaut32):
    import copy

    from nrinv.testing import tiny_pipeline

    pipe = tiny_pipeline("sd")
    adapter = graphed(pipe, addresses_baked_in(pipe))
    kw = dict(num_inference_steps=3, max_iterations=2)
    first = nrinv.invert(adapter, astronaut32, PROMPT, **kw)
    pipe.unet.to(torch.float64).to(torch.float32)  # same values, new addresses (as pipe.to("cpu"); pipe.to("cuda"))
    moved = nrinv.invert(adapter, astronaut32, PROMPT, **kw)
    assert torch.equal(moved.scheduler_latents, first.scheduler_latents) and adapter.graphs.invalidations == 1
    other = copy.deepcopy(pipe.unet)
    with torch.no_grad():
        other.conv_out.bias.add_(0.01)
    pipe.unet = other  # a swapped network
    swapped = nrinv.invert(adapter, astronaut32, PROMPT, **kw)
    eager = nrinv.invert(nrinv.core.adapter_for(pipe, cuda_graphs=False), astronaut32, PROMPT, **kw)
    assert torch.allclose(swapped.scheduler_latents, eager.scheduler_latents, atol=1e-6)
    assert not torch.allclose(swapped.scheduler_latents, first.scheduler_latents, atol=1e-3)
    g = adapter.graphs
    assert g.invalidations == 2 and g.captures == 3 and len(g.entries) == 1


def test_an_empty_graph_fails_the_capture_check(tiny, astronaut32):
    # captured on another GPU than the inputs', a graph records nothing: its output is the warm-up's,
    # right at the captured inputs and stale at every other
    def empty(run):
        output, eager = run(), run()
        return output, lambda: None, eager

    pipe = tiny("sd")
    reference = nrinv.invert(pipe, astronaut32, PROMPT, num_inference_steps=3)
    adapter = graphed(pipe, empty)
    res = nrinv.invert(adapter, astronaut32, PROMPT, num_inference_steps=3)
    assert torch.allclose(res.scheduler_latents, reference.scheduler_latents, atol=1e-6)
    assert adapter.graphs.captures == 0 and "differs" in adapter.graphs.fallbacks[0]


def _counting_forward(x, t, kw, shared):
    return x * t + kw["c"].sum()


def _call(g, n):
    x = torch.arange(float(n))
    return g(x, torch.tensor(2.0), {"c": torch.ones(3)}, {})


def test_graph_cache_is_bounded_and_least_recently_used_first():
    g = GraphedNetwork(_counting_forward, capture=fake_capture, max_graphs=2, capture_after=1)
    for n in (1, 2, 1, 3):  # 3 evicts 2, the least recently used
        assert torch.equal(_call(g, n), torch.arange(float(n)) * 2 + 3)
    assert len(g.entries) == 2 and g.evictions == 1 and g.captures == 3
    _call(g, 1)
    assert g.captures == 3
    _call(g, 2)
    assert g.captures == 4 and g.evictions == 2


def test_a_signature_is_captured_once_it_repeats():
    g = GraphedNetwork(_counting_forward, capture=fake_capture)  # capture_after=2 by default
    for n in (5, 6, 7):  # one-off sizes (app uploads) cost no capture
        _call(g, n)
    assert g.captures == 0 and g.replays == 0
    _call(g, 6)
    assert g.captures == 1 and g.replays == 1


def test_a_failed_capture_is_retried_later_an_inexact_one_never():
    attempts = []

    def flaky(run):
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("CUDA out of memory")  # transient: another request held the memory
        return fake_capture(run)

    g = GraphedNetwork(_counting_forward, capture=flaky, capture_after=1, retry_after=3)
    results = [_call(g, 2) for _ in range(5)]
    assert all(torch.equal(r, torch.tensor([3.0, 5.0])) for r in results)
    assert len(attempts) == 2 and g.captures == 1 and g.replays == 2  # failed at call 1, retried at call 4
    assert "capture failed (RuntimeError: CUDA out of memory)" in g.fallbacks[0]

    def inexact(run):
        attempts.append(1)
        output, replay, eager = fake_capture(run)
        return output, lambda: (replay(), output.add_(1.0)), eager

    attempts.clear()
    g = GraphedNetwork(_counting_forward, capture=inexact, capture_after=1, retry_after=1)
    for _ in range(5):
        assert torch.equal(_call(g, 2), torch.tensor([3.0, 5.0]))
    assert len(attempts) == 1 and g.captures == 0


def test_embeddings_shared_per_pipeline_follow_a_moved_or_swapped_text_encoder(astronaut32):
    import copy

    from nrinv.testing import tiny_pipeline

    pipe = tiny_pipeline("sd")
    first = nrinv.core.adapter_for(pipe).conditioning(PROMPT, None, 1.0, (32, 32)).cond["encoder_hidden_states"]
    other = copy.deepcopy(pipe.text_encoder)
    with torch.no_grad():
        next(other.parameters()).mul_(1.5)
    pipe.text_encoder = other  # e.g. a fine-tuned text encoder swapped in
    swapped = nrinv.core.adapter_for(pipe).conditioning(PROMPT, None, 1.0, (32, 32)).cond["encoder_hidden_states"]
    assert not torch.allclose(first, swapped)
