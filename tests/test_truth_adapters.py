"""The adapter's per-pipeline state: caches keyed on what matters and bounded, the
network's device and dtype read once per placement (and read again after ``pipe.to()``), and a video's clip
length per call and per thread, never shared between threads."""
import threading

import numpy as np
import pytest
import torch

import nrinv.core.adapters as adapters
from nrinv.core.adapters import adapter_for
from nrinv.testing import tiny_pipeline
from nrinv.testing.pipelines import tiny_clip

PROMPT = "a photo of a cat"


@pytest.fixture
def fresh_sd():
    """A tiny SD pipeline of this test's own: its caches start empty, and the test may move it."""
    return tiny_pipeline("sd")


def _count_probes(monkeypatch) -> list:
    probes = []
    real = adapters.base.affine_schedule

    def counting(scheduler, latent_shape, **kw):
        probes.append((tuple(latent_shape), kw.get("seed")))
        return real(scheduler, latent_shape, **kw)

    monkeypatch.setattr(adapters.base, "affine_schedule", counting)  # where Adapter.schedule looks it up
    return probes


def test_a_scheduler_that_draws_no_noise_is_probed_once_for_every_seed(fresh_sd, monkeypatch):
    probes = _count_probes(monkeypatch)
    adapter = adapter_for(fresh_sd)  # DDIM, eta 0: no noise
    schedules = [adapter.schedule(4, (32, 32), seed=seed) for seed in range(50)]
    generator = torch.Generator().manual_seed(7)
    schedules.append(adapter.schedule(4, (32, 32), generator=generator))
    assert len(probes) == 1
    assert all(s is schedules[0] for s in schedules)
    assert schedules[0].seed is None and schedules[0].noises == [None] * 4
    # what the key still holds: another step count or size is probed again
    adapter.schedule(5, (32, 32), seed=3)
    adapter.schedule(4, (64, 64), seed=3)
    assert len(probes) == 3


def test_a_scheduler_that_draws_noise_is_probed_per_seed_and_kept_within_its_bound(fresh_sd, monkeypatch):
    from diffusers import EulerAncestralDiscreteScheduler

    fresh_sd.scheduler = EulerAncestralDiscreteScheduler.from_config(fresh_sd.scheduler.config)
    probes = _count_probes(monkeypatch)
    adapter = adapter_for(fresh_sd)
    first, second = adapter.schedule(2, (32, 32), seed=1), adapter.schedule(2, (32, 32), seed=2)
    assert len(probes) == 2 and first.seed == 1 and second.seed == 2
    assert not torch.equal(first.noises[0], second.noises[0])  # each seed's own noise
    assert adapter.schedule(2, (32, 32), seed=1) is first and len(probes) == 2
    for seed in range(3, 23):  # 22 seeds in all
        adapter.schedule(2, (32, 32), seed=seed)
    assert len(adapter._state.schedules) == 16
    assert adapters.MAX_SCHEDULES == 16
    # the least recently used went first: seed 1 (read again after seed 2) is gone, the newest kept
    n = len(probes)
    adapter.schedule(2, (32, 32), seed=22)
    assert len(probes) == n
    again = adapter.schedule(2, (32, 32), seed=1)
    assert len(probes) == n + 1 and torch.equal(again.noises[0], first.noises[0])


def test_the_prompt_embedding_cache_stays_within_its_bound(fresh_sd, monkeypatch):
    adapter = adapter_for(fresh_sd)
    embedded = []
    real = type(adapter)._embed

    def counting(self, prompt, *args):
        embedded.append(prompt)
        return real(self, prompt, *args)

    monkeypatch.setattr(type(adapter), "_embed", counting)
    prompts = [f"a cat number {'i' * k}" for k in range(50)]
    conds = [adapter.conditioning(p, None, 1.0, (32, 32)) for p in prompts]
    assert len(embedded) == 50 and len(adapter._state.conditionings) == 32
    assert adapters.MAX_CONDITIONINGS == 32
    # the 32 most recent are kept (the very same embeddings), the first ones were dropped and are embedded again
    assert adapter.conditioning(prompts[-1], None, 1.0, (32, 32)) is conds[-1]
    assert adapter.conditioning(prompts[50 - 32], None, 1.0, (32, 32)) is conds[50 - 32]
    assert len(embedded) == 50
    again = adapter.conditioning(prompts[0], None, 1.0, (32, 32))
    assert len(embedded) == 51 and again is not conds[0]
    assert torch.equal(again.cond["encoder_hidden_states"], conds[0].cond["encoder_hidden_states"])


def test_the_network_device_and_dtype_are_read_once_and_again_after_pipe_to(fresh_sd, monkeypatch):
    network_class = type(fresh_sd.unet)
    reads = {"device": 0, "dtype": 0}

    def counted(name):
        real = getattr(network_class, name)

        def get(module):
            reads[name] += 1
            return real.fget(module)
        return property(get)

    monkeypatch.setattr(network_class, "device", counted("device"))
    monkeypatch.setattr(network_class, "dtype", counted("dtype"))
    adapter = adapter_for(fresh_sd)
    cond = adapter.conditioning(PROMPT, None, 1.0, (32, 32))
    step = adapter.schedule(4, (32, 32)).steps[0]
    z = torch.randn(adapter.latent_shape(32, 32), generator=torch.Generator().manual_seed(0))
    reads.update(device=0, dtype=0)
    for _ in range(10):
        out32 = adapter.denoise(z, step.timestep, cond)
        assert adapter.device == torch.device("cpu") and adapter.dtype == torch.float32 and not adapter.offloaded
    assert reads == {"device": 0, "dtype": 0}, reads  # read once, when the conditioning was made

    fresh_sd.to(torch.float64)  # the cached read must not survive a move or a cast
    reads.update(device=0, dtype=0)  # (pipe.to reads them itself)
    assert adapter.dtype == torch.float64 and adapter.device == torch.device("cpu") and not adapter.offloaded
    assert reads == {"device": 1, "dtype": 1}, reads  # read again once, at the first question after the cast
    cond = adapter.conditioning(PROMPT, None, 1.0, (32, 32))  # keyed on the dtype: embedded again in float64
    assert cond.cond["encoder_hidden_states"].dtype == torch.float64
    out64 = adapter.denoise(z, step.timestep, cond)  # a stale float32 would not run on float64 weights
    assert out64.dtype == torch.float32 and float((out64 - out32).abs().max()) < 1e-5
    assert adapter_for(fresh_sd).to_pipeline_latents(z, 1.0).dtype == torch.float64
    fresh_sd.unet.to("meta")
    assert adapter.device == torch.device("meta")


def test_a_clips_length_is_per_call_and_per_thread(tiny, monkeypatch):
    pipe = tiny("wan")
    adapter = adapter_for(pipe)  # one adapter shared by two threads, as the app shares it
    frames = {5: None, 9: None}
    barrier = threading.Barrier(2, timeout=60)
    errors = []

    def clip(n):
        return torch.stack([torch.from_numpy(np.asarray(f, dtype=np.float32) / 255).permute(2, 0, 1)
                            for f in tiny_clip(n)])

    def run(n, first):
        try:
            if first:
                adapter.encode(clip(n))
            barrier.wait()  # the other thread encodes its clip between this thread's encode and its shape
            if not first:
                adapter.encode(clip(n))
            barrier.wait()
            frames[n] = adapter.latent_shape(32, 32)
        except Exception as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(5, True)), threading.Thread(target=run, args=(9, False))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert frames == {5: (1, 4, 2, 4, 4), 9: (1, 4, 3, 4, 4)}  # (F - 1) / 4 + 1 latent frames
    # passed per call, the clip length is the call's, whatever was encoded last
    assert adapter.latent_shape(32, 32, frames=17) == (1, 4, 5, 4, 4)
    assert adapter.latent_shape(32, 32, batch=2, frames=1) == (2, 4, 1, 4, 4)
    probes = _count_probes(monkeypatch)
    adapter.schedule(3, (32, 32), frames=17)
    assert probes == [((1, 4, 5, 4, 4), None)]


def test_the_network_time_hooks_count_the_inversions_calls(tiny):
    from nrinv.bench.measure import NetworkTime
    from nrinv.bench.report import markdown_table
    from nrinv.core.inversion import invert_tensor

    pipe = tiny("sd")
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with NetworkTime(pipe.unet, torch.device("cpu")) as inside:
        result = invert_tensor(pipe, image, PROMPT, num_inference_steps=3, max_iterations=2, method="anderson")
    assert inside.calls == result.nfe > 0 and inside.seconds > 0
    calls = inside.calls
    invert_tensor(pipe, image, PROMPT, num_inference_steps=3, max_iterations=2, method="anderson")
    assert inside.calls == calls  # the hooks are gone
    row = {"method": "anderson", "iterations": 2, "nfe": 6, "psnr": 20.0, "ssim": 0.5, "wall_s": 0.1,
           "overhead": 1.3, "wall_over_network": 1.04, "peak_mem_mb": 10}
    table = markdown_table([row]).splitlines()
    assert "| wall / network time |" in table[0] and table[2].endswith("| 0.100 | 1.30 | 1.04 | 10 |")
    assert len(table[0].split("|")) == len(table[1].split("|")) == len(table[2].split("|"))
