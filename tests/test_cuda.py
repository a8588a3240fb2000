"""The stock-pipeline regeneration matrix on the GPU: every scheduler family x every solver, float16
and bfloat16 networks, CFG > 1, batches, edits and reconstructions, CUDA generators, graph replay.

Marked ``cuda``: skipped (and reported as skipped) without a CUDA device; ``pytest -m cuda`` on a GPU
machine, or ``python benchmarks/gpu_check.py`` (which runs the back-propagating ``gnri_grad`` tests
in a process of their own, after the others: a fatal CUDA error is sticky for its process).  Run
directly, pytest orders them last (tests/conftest.py).  ``NRINV_CUDA_TESTS_DEVICE=cpu`` runs the same tests
on the CPU (no graphs there) to check them without a GPU.
"""
import os

import pytest
import torch

import nrinv
from nrinv.testing.pipelines import TINY_CASES
from nrinv.core.graphs import GraphedNetwork
from nrinv.core.solvers import SOLVERS

DEVICE = os.environ.get("NRINV_CUDA_TESTS_DEVICE", "cuda")
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="no CUDA device")]

PROMPT = "a photo of a cat"
CASES = {kind: (case.quick_steps, case.quick_guidance) for kind, case in TINY_CASES.items()}
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
#: relative difference between the stock pipeline (running its step arithmetic in the network dtype)
#: and nrinv's float32 step arithmetic over the same noise, per network dtype
STOCK_TOL = {"float16": 0.02, "bfloat16": 0.05}
#: what a convergent solver (anderson / newton_krylov, 4 iterations) reaches in the network dtype
SOLVE_TOL = {"float16": 0.03, "bfloat16": 0.08}
_PIPES: dict = {}


def _pipe(kind: str, dtype: str):
    """A tiny pipeline of ``kind`` on the device in ``dtype`` (built once per session)."""
    from nrinv.testing import tiny_pipeline

    if (kind, dtype) not in _PIPES:
        _PIPES[(kind, dtype)] = tiny_pipeline(kind).to(DEVICE, DTYPES[dtype])
    return _PIPES[(kind, dtype)]


def _generator(seed: int) -> torch.Generator:
    return torch.Generator(device=DEVICE).manual_seed(seed)


def _stock(pipe, kind, latents, steps, guidance, seed):
    extra = {"max_sequence_length": 16} if kind == "flux" else {}
    out = pipe(PROMPT, num_inference_steps=steps, guidance_scale=guidance, latents=latents, height=32, width=32,
               generator=_generator(seed), output_type="latent", **extra).images
    return out.float()


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("method", sorted(SOLVERS))
@pytest.mark.parametrize("kind", sorted(CASES))
def test_stock_pipeline_regenerates_on_the_device(astronaut32, kind, method, dtype):
    pipe = _pipe(kind, dtype)
    steps, guidance = CASES[kind]
    res = nrinv.invert(pipe, astronaut32, PROMPT, method=method, num_inference_steps=steps, guidance_scale=guidance,
                       max_iterations=None if method == "ddim" else 4, generator=_generator(3))
    assert res.finite, res.status
    assert res.latents.device.type == torch.device(DEVICE).type and res.latents.dtype == DTYPES[dtype]
    ours = nrinv.reconstruct(pipe, res, output_type="latent").latents
    # The tiny LCM's exact inverse lies far outside the sampler's range (|z_T| ~ 7000 in float32, where
    # its regeneration error is 6e-4: test_pipelines.py); a half-precision stock pipeline cannot carry
    # that (float16's resolution there is ~4), so the comparison is made where the noise is in range.
    in_range = float(res.scheduler_latents.abs().max()) < 100 * res.setup.schedule.init_noise_sigma
    if in_range:
        assert _rel(_stock(pipe, kind, res.latents, steps, guidance, 3), ours) < STOCK_TOL[dtype]
    else:
        assert kind == "lcm" and method in ("anderson", "newton_krylov", "gnri_grad"), "out of range"
    if method in ("anderson", "newton_krylov") and kind != "lcm":
        assert _rel(ours, res.encoded) < SOLVE_TOL[dtype]


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_classifier_free_guidance_batch_and_edits_on_the_device(astronaut32, dtype):
    pipe = _pipe("sd", dtype)
    images = [astronaut32, astronaut32.rotate(90)]
    batch = nrinv.invert_batch(pipe, images, PROMPT, num_inference_steps=6, guidance_scale=3.0, max_iterations=4)
    for image, res in zip(images, batch):
        alone = nrinv.invert(pipe, image, PROMPT, num_inference_steps=6, guidance_scale=3.0, max_iterations=4)
        assert _rel(res.scheduler_latents, alone.scheduler_latents) < STOCK_TOL[dtype]
        ours = nrinv.reconstruct(pipe, res, output_type="latent").latents
        assert _rel(_stock(pipe, "sd", res.latents, 6, 3.0, 0), ours) < STOCK_TOL[dtype]
    out = nrinv.edit(pipe, astronaut32, PROMPT, ["a photo of a dog", PROMPT], strength=1.0, guidance_scale=3.0,
                     edit_guidance_scale=3.0, num_inference_steps=6, max_iterations=4, mask_threshold=0.3,
                     output_type="pt")
    assert out.images[0].shape == (3, 32, 32) and torch.isfinite(out.images[0]).all()
    assert _rel(out.latents[1], out.inversion.encoded) < SOLVE_TOL[dtype]  # same prompt: the input again
    frames = nrinv.interpolate(pipe, astronaut32, astronaut32.rotate(90), PROMPT, n=3, num_inference_steps=6).images
    seeds = nrinv.seed_from_images(pipe, images, PROMPT, n_samples=2, num_inference_steps=6).images
    assert len(frames) == 3 and len(seeds) == 2


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("kind", ["sd", "sdxl", "flux"])
def test_graph_replay_gives_the_eager_answers(astronaut32, kind):
    pipe = _pipe(kind, "float16")
    steps, guidance = CASES[kind]
    kw = dict(num_inference_steps=steps, guidance_scale=guidance, max_iterations=3, generator=_generator(1))
    eager = nrinv.invert(nrinv.core.adapter_for(pipe, cuda_graphs=False), astronaut32, PROMPT, **kw)
    adapter = nrinv.core.adapter_for(pipe)
    # fresh graphs: the pipeline's own (shared by all its adapters) captured in the tests before
    adapter._graphs = GraphedNetwork(lock=adapter.lock)
    replayed = nrinv.invert(adapter, astronaut32, PROMPT, **kw)
    assert adapter.graphs is not None and adapter.graphs.captures == 1, adapter.graphs.fallbacks
    # captured at the signature's second call (the first runs eagerly), replayed from then on
    assert adapter.graphs.replays == replayed.nfe - 1 and replayed.capture_time > 0
    assert _rel(replayed.scheduler_latents, eager.scheduler_latents) < 1e-3
    again = nrinv.invert(adapter, astronaut32, PROMPT, **kw)  # captured once, replayed after
    assert adapter.graphs.captures == 1 and again.capture_time == 0


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs need a CUDA device")
def test_graphs_capture_again_after_a_clear_a_failed_capture_and_beside_another_thread():
    """PyTorch's capture rules on the device (simulated on the CPU in tests/test_gpu_round3.py): a cache
    emptied or a capture failed midway does not stop later captures; two threads capture in turn;
    calls under autocast run eagerly.  Last in this file: a failed capture is the riskiest thing here."""
    import threading

    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 8).to(DEVICE, torch.float16)
    fail = {"once": True}

    def forward(x, t, kw, shared):
        out = layer(x) * t
        if torch.cuda.is_current_stream_capturing() and fail.pop("once", False):
            out.sum().item()  # a host read: not permitted in a capture, which it invalidates
        return out

    x = torch.randn(4, 8, device=DEVICE, dtype=torch.float16)
    t = torch.tensor(2.0, device=DEVICE, dtype=torch.float16)
    g = GraphedNetwork(forward, capture_after=1, retry_after=1)
    with torch.no_grad():
        expected = forward(x, t, {}, {})
        for _ in range(3):  # fails, then captured on the retry, then replayed
            assert _rel(g(x, t, {}, {}), expected) < 1e-3
        assert g.captures == 1 and len(g.fallbacks) == 1, g.fallbacks
        g.clear()
        for _ in range(2):
            assert _rel(g(x, t, {}, {}), expected) < 1e-3
        assert g.captures == 2 and len(g.fallbacks) == 1, g.fallbacks
        with torch.autocast("cuda", dtype=torch.bfloat16):
            g(x.float(), t.float(), {}, {})
        assert g.captures == 2

        others = [GraphedNetwork(forward, capture_after=1) for _ in range(2)]
        errors = []

        def work(graphs):
            try:
                with torch.no_grad():
                    for _ in range(3):
                        graphs(x * 0.5, t, {}, {})
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
        threads = [threading.Thread(target=work, args=(o,)) for o in others]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors and all(o.captures == 1 and not o.fallbacks for o in others), \
            (errors, [o.fallbacks for o in others])
