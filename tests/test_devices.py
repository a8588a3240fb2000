"""Device, dtype and generator correctness, checked on the CPU.

A GPU run crashes when the engine makes a tensor with a bare factory (``torch.zeros(...)``,
``torch.eye(...)``, ``torch.randn(..., generator=cpu)``) and mixes it with data on the GPU.  On a
CPU-only machine both live on the CPU, so such a bug is invisible.  ``ImplicitDeviceGuard`` makes it
visible: every tensor factory called *from nrinv's own code* without an explicit ``device=`` is sent
to the ``meta`` device, which holds no data and refuses to mix with CPU tensors.  Code that derives
its tensors from the data (``x.new_zeros``, ``torch.zeros_like``, ``device=z.device``) is unaffected.
"""
import sys
import types

import pytest
import torch
from torch.overrides import TorchFunctionMode

import nrinv
from nrinv.testing.pipelines import TINY_CASES
from nrinv.core.schedulers import affine_schedule, draw_noise
from nrinv.core.solvers import SOLVERS, NewtonKrylovOptions, Problem, _jvp

PROMPT = "a photo of a cat"
_FACTORIES = {torch.zeros, torch.ones, torch.empty, torch.full, torch.eye, torch.arange, torch.linspace,
              torch.logspace, torch.rand, torch.randn, torch.randint, torch.randperm, torch.tensor, torch.as_tensor}


class ImplicitDeviceGuard(TorchFunctionMode):
    """Tensor factories called from ``nrinv.*`` modules without ``device=`` create ``meta`` tensors."""

    def __init__(self):
        super().__init__()
        self.redirected: list[tuple[str, str]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in _FACTORIES and kwargs.get("device") is None:
            caller = sys._getframe(1).f_globals.get("__name__", "")
            from_data = func in (torch.tensor, torch.as_tensor) and args and isinstance(args[0], torch.Tensor)
            if caller.startswith("nrinv.") and caller != "nrinv.testing" and not from_data:
                kwargs["device"] = "meta"
                self.redirected.append((caller, func.__name__))
        return func(*args, **kwargs)


def test_guard_catches_a_bare_factory_in_engine_code():
    engine = types.ModuleType("nrinv._guard_selftest")
    exec("import torch\n"
         "def bare(x):\n    return x + torch.eye(x.shape[0])\n"
         "def derived(x):\n    return x + torch.eye(x.shape[0], device=x.device)\n", engine.__dict__)
    x = torch.ones(3, 3)
    with ImplicitDeviceGuard() as guard:
        assert torch.equal(engine.derived(x), x + torch.eye(3))
        with pytest.raises(RuntimeError, match="meta"):
            engine.bare(x)
    assert guard.redirected == [("nrinv._guard_selftest", "eye")]


CASES = {kind: (case.quick_steps, case.quick_guidance) for kind, case in TINY_CASES.items()
         if kind in ("sd", "sdxl", "lcm", "flux")}


@pytest.mark.parametrize("kind", sorted(CASES))
@pytest.mark.parametrize("method", sorted(SOLVERS))
def test_every_solver_makes_its_tensors_on_the_data_device(tiny, astronaut32, kind, method):
    pipe = tiny(kind)
    steps, guidance = CASES[kind]
    with ImplicitDeviceGuard():
        res = nrinv.invert(pipe, astronaut32, PROMPT, method=method, num_inference_steps=steps,
                           guidance_scale=guidance, max_iterations=None if method == "ddim" else 3, seed=1,
                           progress=False)
        rec = nrinv.reconstruct(pipe, res, output_type="latent").latents
    assert res.finite and torch.isfinite(rec).all()


def test_uses_of_a_latent_make_their_tensors_on_the_data_device(tiny, astronaut32):
    pipe = tiny("sd")
    kw = dict(num_inference_steps=6, seed=2, progress=False)
    with ImplicitDeviceGuard():
        res = nrinv.edit(pipe, astronaut32, PROMPT, ["a photo of a dog"], strength=0.5, edit_guidance_scale=2.0,
                         mask_threshold=0.3, encode_adjust=0.3, guide_from_source=True, **kw)
        inter = nrinv.interpolate(pipe, astronaut32, astronaut32.rotate(90), PROMPT, n=3, encode_adjust=0.3, **kw)
        seeds = nrinv.seed_from_images(pipe, [astronaut32, astronaut32.rotate(180)], PROMPT, n_samples=2, **kw)
        batch = nrinv.invert_batch(pipe, [astronaut32, astronaut32.rotate(90)], PROMPT, **kw)
        warm = nrinv.invert(pipe, astronaut32, PROMPT, warm_start=True, **kw)
    assert len(res.images) == 1 and len(inter.images) == 3 and len(seeds.images) == 2 and len(batch) == 2
    assert warm.finite


# --------------------------------------------------------------------------------------- generators
def _euler_a_error(pipe, res, generator):
    stock = pipe(PROMPT, num_inference_steps=4, guidance_scale=0.0, latents=res.latents, height=32,
                 width=32, generator=generator, output_type="latent").images
    return float((stock.float() - res.encoded).norm() / res.encoded.norm())


def test_generator_is_drawn_like_the_stock_pipeline_and_not_advanced(tiny, astronaut32):
    pipe = tiny("sdxl")  # Euler-ancestral: one noise draw per step
    generator = torch.Generator().manual_seed(5)
    state = generator.get_state().clone()
    res = nrinv.invert(pipe, astronaut32, PROMPT, method="anderson", max_iterations=6, generator=generator,
                       progress=False)
    assert torch.equal(generator.get_state(), state)  # read, not advanced
    by_seed = nrinv.invert(pipe, astronaut32, PROMPT, method="anderson", max_iterations=6, seed=5, progress=False)
    # seed=5 means torch.Generator().manual_seed(5)
    assert torch.equal(res.scheduler_latents, by_seed.scheduler_latents)
    assert _euler_a_error(pipe, res, torch.Generator().manual_seed(5)) < 1e-3
    assert _euler_a_error(pipe, res, torch.Generator().manual_seed(6)) > 1e-2  # other noise: not regenerated


def test_step_noise_is_drawn_in_the_network_dtype(tiny, astronaut32):
    """diffusers draws Euler-ancestral noise in the model output's dtype, and a bfloat16 draw is not a
    rounded float32 draw: a bf16 pipeline must be inverted with bf16 noise."""
    pipe = tiny("sdxl")
    sched = pipe.scheduler.__class__.from_config(pipe.scheduler.config)
    sched.set_timesteps(4)
    shape = (1, 4, 16, 16)
    schedule = affine_schedule(sched, shape, seed=3, noise_dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(3)
    for noise in schedule.noises:
        assert torch.equal(noise, torch.randn(shape, generator=g, dtype=torch.bfloat16).float())
    pipe.to(torch.bfloat16)
    try:
        res = nrinv.invert(pipe, astronaut32, PROMPT, method="anderson", max_iterations=6, seed=3, progress=False)
        err = _euler_a_error(pipe, res, torch.Generator().manual_seed(3))
        assert err < 0.05, err  # bf16 network rounding (~1e-2 per call) bounds the regeneration
    finally:
        pipe.to(torch.float32)


def test_noise_is_drawn_on_the_generator_device_then_moved():
    g = torch.Generator().manual_seed(0)
    noise = draw_noise((2, 3), g, device="cpu", dtype=torch.float32)
    assert torch.equal(noise, torch.randn((2, 3), generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="generator"):
        # a CUDA generator cannot fill a CPU tensor (diffusers' randn_tensor refuses too)
        draw_noise((2, 3), types.SimpleNamespace(device=torch.device("cuda")), device="cpu", dtype=torch.float32)


# ------------------------------------------------------------------------------------- precision
@pytest.mark.parametrize("dtype, tol", [(torch.bfloat16, 0.05), (torch.float16, 0.01), (torch.float32, 1e-3)])
def test_finite_difference_step_fits_the_network_precision(dtype, tol):
    """J v of a map evaluated in low precision: the identity rounded to ``dtype``."""
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    v = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    fn = lambda x: x.to(dtype).float()
    problem = Problem(fn, z, precision=float(torch.finfo(dtype).eps))
    jv = _jvp(problem, NewtonKrylovOptions(), z, fn(z), v)
    assert float((jv - v).norm() / v.norm()) < tol
    if dtype is torch.bfloat16:  # a float32-sized step measures rounding instead (the old default)
        fixed = _jvp(problem, NewtonKrylovOptions(fd_eps=1e-3), z, fn(z), v)
        assert float((fixed - v).norm() / v.norm()) > 0.5


def test_fp16_sdxl_vae_runs_upcast_and_is_restored(tiny, astronaut32):
    pipe = tiny("sdxl")
    seen = []
    hook = pipe.vae.encoder.register_forward_hook(lambda m, i, o: seen.append(i[0].dtype))
    try:
        pipe.vae.to(torch.float16)
        assert pipe.vae.config.force_upcast
        adapter = nrinv.core.adapter_for(pipe)
        x = torch.from_numpy(__import__("numpy").asarray(astronaut32, dtype="float32") / 255).permute(2, 0, 1)[None]
        z = adapter.encode(x)
        image = adapter.decode(z, (32, 32))
        assert seen == [torch.float32]  # encoded in float32, as the stock SDXL pipeline does
        assert pipe.vae.dtype == torch.float16  # and the VAE is handed back in float16
        assert torch.isfinite(image).all()
    finally:
        hook.remove()
        pipe.vae.to(torch.float32)


def test_given_latent_is_moved_to_the_pipeline(tiny, astronaut32):
    pipe = tiny("sd")
    res = nrinv.invert(pipe, astronaut32, PROMPT, num_inference_steps=4, progress=False)
    again = nrinv.invert(pipe, image_latents=res.encoded.double(), prompt=PROMPT, height=32, width=32,
                         num_inference_steps=4,
                         progress=False)
    assert again.scheduler_latents.dtype == torch.float32
    assert torch.allclose(again.scheduler_latents, res.scheduler_latents, atol=1e-5)


def test_model_cpu_offload_computes_on_the_execution_device_without_graphs(astronaut32):
    from nrinv.core.graphs import GraphedNetwork
    from nrinv.testing import tiny_pipeline

    plain = nrinv.invert(tiny_pipeline("sd"), astronaut32, "a cat", num_inference_steps=3, max_iterations=2)
    pipe = tiny_pipeline("sd")
    pipe.enable_model_cpu_offload(device="cpu")  # on a GPU machine: device="cuda", weights kept on the CPU
    adapter = nrinv.core.adapter_for(pipe, cuda_graphs=True)
    adapter._graphs = GraphedNetwork()  # even where graphs are asked for: the weights move between calls
    assert adapter.device == pipe._execution_device == torch.device("cpu", 0) and adapter.offloaded
    assert adapter.graphs is None
    res = nrinv.invert(adapter, astronaut32, "a cat", num_inference_steps=3, max_iterations=2)
    assert torch.allclose(res.scheduler_latents, plain.scheduler_latents, atol=1e-6)
