"""Invert with nrinv, regenerate with the *stock* diffusers pipeline, compare latents.

Each tiny pipeline (random weights, smoothed; see nrinv.testing) encodes a real photo; we invert
its latent, then call the stock pipeline with ``latents=`` the inverted noise (and the same
``generator`` seed for the stochastic samplers), ``output_type="latent"``, same steps and guidance.
Measured relative errors (CPU) are in the README; thresholds below leave ~3x margin.
"""
import numpy as np
import pytest
import torch

import nrinv

from nrinv.testing.pipelines import TINY_CASES

CASES = {kind: (case.steps, case.guidance) for kind, case in TINY_CASES.items()}  # kind: (steps, guidance)
PROMPT = "a photo of a cat"


def _stock(pipe, kind, latents, steps, guidance, seed):
    # the tiny Flux's T5 tokenizer is limited to 16 tokens, and the adapter (like a user should) keeps to
    # it; the tiny SD3 has no T5, so both use the stock default
    extra = {"max_sequence_length": 16} if kind == "flux" else {}
    out = pipe(PROMPT, num_inference_steps=steps, guidance_scale=guidance, latents=latents, height=32, width=32,
               generator=torch.Generator().manual_seed(seed), output_type="latent", **extra)
    return out.frames if hasattr(out, "frames") else out.images  # a video pipeline (Wan) returns frames


def _error(pipe, kind, image, method, iterations=None, seed=3, guidance=None):
    steps, default_guidance = CASES[kind]
    guidance = default_guidance if guidance is None else guidance
    res = nrinv.invert(pipe, image, PROMPT, method=method, num_inference_steps=steps, guidance_scale=guidance,
                       seed=seed, max_iterations=iterations, progress=False)
    assert res.finite, res.status
    assert res.scheduler_latents.dtype == torch.float32
    regenerated = _stock(pipe, kind, res.latents, steps, guidance, seed)
    ours = nrinv.reconstruct(pipe, res, output_type="latent").latents
    target = res.encoded
    stock_err = float((regenerated - target).norm() / target.norm())
    ours_err = float((ours - target).norm() / target.norm())
    # our affine replay of the sampler is the stock sampler
    assert abs(stock_err - ours_err) <= 1e-3 * max(stock_err, 1e-3) + 1e-5
    return stock_err, res


@pytest.mark.parametrize("kind", list(CASES))
def test_stock_pipeline_regenerates_inverted_latent(tiny, astronaut32, kind):
    pipe = tiny(kind)
    ddim, _ = _error(pipe, kind, astronaut32, "ddim")
    newton, res = _error(pipe, kind, astronaut32, "newton_krylov", 3)
    anderson, _ = _error(pipe, kind, astronaut32, "anderson", 6)
    gnri, _ = _error(pipe, kind, astronaut32, "gnri", 4)
    assert ddim > 1e-3  # the naive inversion is measurably wrong on every pipeline
    assert newton <= 0.02 * ddim
    assert anderson <= 0.1 * ddim
    if kind in ("sdxl", "lcm"):
        # Published-form GNRI barely moves on these large-step samplers (measured ~0.9x DDIM).
        assert gnri < ddim
    else:
        assert gnri <= 0.5 * ddim
    assert res.nfe == sum(s.nfe for s in res.steps) and len(res.steps) == CASES[kind][0]


@pytest.mark.parametrize("guidance", [3.0, 7.5])
def test_classifier_free_guidance_inverts_exactly(tiny, astronaut32, guidance):
    pipe = tiny("sd")
    ddim, _ = _error(pipe, "sd", astronaut32, "ddim", guidance=guidance)
    newton, res = _error(pipe, "sd", astronaut32, "newton_krylov", 4, guidance=guidance)
    assert res.setup.cond.cfg  # both branches, one batched call
    assert newton <= 0.01 * ddim


def test_stochastic_sampler_needs_the_same_seed(tiny, astronaut32):
    pipe = tiny("sdxl")
    err, res = _error(pipe, "sdxl", astronaut32, "newton_krylov", 3, seed=5)
    wrong_seed = _stock(pipe, "sdxl", res.latents, 4, 0.0, seed=6)
    assert float((wrong_seed - res.encoded).norm() / res.encoded.norm()) > 20 * err


def test_low_precision_network_float32_solver(tiny, astronaut32):
    pipe = tiny("sd")
    pipe.to(torch.bfloat16)
    try:
        res = nrinv.invert(pipe, astronaut32, PROMPT, method="newton_krylov", num_inference_steps=10,
                           max_iterations=3, progress=False)
        assert res.finite and res.scheduler_latents.dtype == torch.float32
        assert torch.isfinite(res.scheduler_latents).all()
        rec = nrinv.reconstruct(pipe, res, output_type="latent").latents
        err = float((rec - res.encoded).norm() / res.encoded.norm())
        # The solve itself is exact here (float32 network: 5.6e-5, measured); what remains is the bf16
        # network's own rounding, unit roundoff 2^-8 = 0.0039 per call: measured 0.0033 (DDIM: 0.067).
        # Bound: twice the unit roundoff, for other CPUs' bf16 kernels.
        assert err < 2 * 2.0 ** -8
    finally:
        pipe.to(torch.float32)


def test_reconstruct_decodes_an_image(tiny, astronaut32):
    pipe = tiny("sd")
    res = nrinv.invert(pipe, astronaut32, PROMPT, method="anderson", num_inference_steps=10, max_iterations=6,
                       progress=False)
    rec = nrinv.reconstruct(pipe, res, output_type="pt")
    assert len(rec.images) == 1 and rec.images[0].shape == (3, 32, 32)
    with torch.no_grad():
        decoded = pipe.vae.decode(res.encoded / pipe.vae.config.scaling_factor).sample
    ceiling = ((decoded[0] + 1) / 2).clamp(0, 1)
    assert float((rec.images[0] - ceiling).abs().max()) < 0.02
    pil = nrinv.reconstruct(pipe, res).images[0]  # the default, as diffusers: a PIL image
    assert pil.size == (32, 32) and pil.mode == "RGB"
    assert abs(np.asarray(pil, dtype=np.float32) / 255 - ceiling.permute(1, 2, 0).numpy()).max() < 0.03


def test_unsupported_pipeline_and_scheduler_errors(tiny):
    with pytest.raises(ValueError, match="not supported; supported pipelines"):
        nrinv.core.adapter_for(object())
    from diffusers import FlowMatchLCMScheduler  # not supported (yet)

    pipe = tiny("sd")
    original = pipe.scheduler
    pipe.scheduler = FlowMatchLCMScheduler()
    try:
        with pytest.raises(ValueError, match="supported schedulers"):
            nrinv.invert(pipe, image_latents=torch.zeros(1, 4, 16, 16), prompt="x", height=32, width=32)
    finally:
        pipe.scheduler = original


def test_newton_krylov_autograd_jvp_matches_finite_differences(tiny, astronaut32):
    # forward-mode AD through the UNet (math attention kernel) gives the same Newton steps as FD
    pipe = tiny("sd")
    kw = dict(method="newton_krylov", num_inference_steps=4, max_iterations=2, progress=False)
    fd = nrinv.invert(pipe, astronaut32, PROMPT, options={"jvp": "fd"}, **kw)
    ad = nrinv.invert(pipe, astronaut32, PROMPT, options={"jvp": "autograd"}, **kw)
    assert sum(s.grad_evals for s in ad.steps) > 0 and sum(s.grad_evals for s in fd.steps) == 0
    assert float((fd.scheduler_latents - ad.scheduler_latents).norm() / ad.scheduler_latents.norm()) < 1e-3


@pytest.mark.parametrize("kind", ["sd", "flux"])
def test_warm_start_costs_nothing_and_helps(tiny, astronaut32, kind):
    pipe = tiny(kind)
    steps = CASES[kind][0]
    kw = dict(method="fixed_point", num_inference_steps=steps, max_iterations=2, progress=False)
    cold = nrinv.invert(pipe, astronaut32, PROMPT, warm_start=False, **kw)
    warm = nrinv.invert(pipe, astronaut32, PROMPT, warm_start=True, **kw)
    assert warm.nfe == cold.nfe
    def err(r):
        return float((nrinv.reconstruct(pipe, r, output_type="latent").latents - r.encoded).norm() / r.encoded.norm())
    assert err(warm) < 0.8 * err(cold)  # measured: sd 1.2e-2 vs 1.8e-2, flux 2.4e-3 vs 6.0e-3


def test_warm_start_modes(tiny, astronaut32):
    pipe = tiny("sd")
    kw = dict(num_inference_steps=6, max_iterations=1)
    last = nrinv.invert(pipe, astronaut32, PROMPT, warm_start="last", **kw)
    linear = nrinv.invert(pipe, astronaut32, PROMPT, warm_start="linear", **kw)
    auto = nrinv.invert(pipe, astronaut32, PROMPT, **kw)  # no CFG: on, in the model's mode ("last" for this one)
    assert (last.settings["warm_start"], linear.settings["warm_start"], auto.settings["warm_start"]) == \
        ("last", "linear", nrinv.model_defaults(pipe).warm_start)
    assert torch.equal(auto.scheduler_latents, last.scheduler_latents)
    assert not torch.allclose(last.scheduler_latents, linear.scheduler_latents)
    assert nrinv.invert(pipe, astronaut32, PROMPT, warm_start=False, **kw).settings["warm_start"] is None
    with pytest.raises(nrinv.InputError, match="warm_start"):
        nrinv.invert(pipe, astronaut32, PROMPT, warm_start="quadratic", **kw)
