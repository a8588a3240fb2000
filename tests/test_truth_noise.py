"""The noise an inversion records and hands on: forward noising per step, and the user's generator.

Forward noising: every trajectory latent ``z_i = add_noise(z_N, eps, t_i)`` carries step ``i``'s own noise
level, whatever the scheduler family and whatever index state diffusers' scheduler holds (its
``begin_index`` overrides the timestep: ``set_begin_index(0)`` noised every Euler step at sigma_max).
Generators: an inversion with ``generator=`` records that generator's state (not advanced), and
``pipeline_kwargs()`` / ``nrinv.reconstruct`` regenerate with a fresh generator in that state.
"""
import dataclasses
import importlib
import math

import pytest
import torch

import nrinv

PROMPT = "a photo of a cat"
# family -> (diffusers scheduler, tiny pipeline kind, guidance): the forward process is checked against the
# training one, ``_level``; Euler-ancestral with trailing spacing and 4 steps is SDXL-Turbo's sampler
FAMILIES = {
    "euler": ("EulerDiscreteScheduler", "sdxl", 0.0),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", "sdxl", 0.0),
    "lcm": ("LCMScheduler", "lcm", 4.0),
    "ddim": ("DDIMScheduler", "sd", 1.0),
    "ddpm": ("DDPMScheduler", "sd", 1.0),
    "flow": ("FlowMatchEulerDiscreteScheduler", "sd3", 1.0),
}


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def _rms(x):
    return float(x.float().pow(2).mean().sqrt())


def _level(family, scheduler, t):
    """(signal, noise) of the training forward process at timestep ``t``: ``x_t = signal x_0 + noise eps``.
    VP: (sqrt(abar), sqrt(1 - abar)); Euler (sigma units): (1, sqrt((1 - abar) / abar)); flow: (1 - s, s)
    with s = t / num_train_timesteps (its timesteps are its sigmas times that)."""
    if family == "flow":
        s = float(t) / scheduler.config.num_train_timesteps
        return 1.0 - s, s
    abar = float(scheduler.alphas_cumprod[int(t)])
    if family.startswith("euler"):
        return 1.0, math.sqrt((1.0 - abar) / abar)
    return math.sqrt(abar), math.sqrt(1.0 - abar)


def _swapped(tiny, family):
    import diffusers

    name, kind, guidance = FAMILIES[family]
    pipe = tiny(kind)
    if type(pipe.scheduler).__name__ != name:
        pipe.scheduler = getattr(diffusers, name).from_config(pipe.scheduler.config)
    return pipe, guidance


@pytest.fixture
def restore_schedulers(tiny):
    """The tiny pipelines are shared between tests: put their schedulers back."""
    pipes = {kind: tiny(kind) for _, kind, _ in FAMILIES.values()}
    stock = {kind: pipe.scheduler for kind, pipe in pipes.items()}
    yield
    for kind, pipe in pipes.items():
        pipe.scheduler = stock[kind]


# ------------------------------------------------------------------------------------- item 4: noising
@pytest.mark.parametrize("family", list(FAMILIES))
def test_forward_trajectory_noises_each_step_at_its_own_level(tiny, restore_schedulers, family):
    """Zero image: ``z_i = noise_i eps_i``, so rms(z_i) is step i's noise level up to the sampling spread of
    rms(eps_i) (1024 entries: a few %).  Before the fix the Euler families gave [15.2, 14.9, 14.9, 13.9] where
    the levels are [14.6, 4.08, 1.61, 0.69] (tiny SDXL-Turbo, trailing, 4 steps)."""
    from nrinv.core.adapters import adapter_for
    from nrinv.core.edit_friendly import forward_trajectory
    from nrinv.core.inversion import prepare

    pipe, guidance = _swapped(tiny, family)
    adapter = adapter_for(pipe)
    setup = prepare(adapter, PROMPT, size=(32, 32), num_inference_steps=4, guidance_scale=guidance, seed=0)
    zero = torch.zeros(adapter.latent_shape(32, 32))
    trajectory = forward_trajectory(setup, zero, 1)
    scheduler = adapter.prepare_scheduler(4, 32, 32)
    levels = [_level(family, scheduler, step.timestep)[1] for step in setup.schedule.steps]
    ratios = [_rms(z) / level for z, level in zip(trajectory[:-1], levels)]
    assert len(ratios) == 4 and all(abs(r - 1) < 0.1 for r in ratios), (family, ratios, levels)
    assert torch.equal(trajectory[-1], zero)


@pytest.mark.parametrize("helper", ["nrinv.core.noising"])  # the one forward-noising helper
@pytest.mark.parametrize("family", list(FAMILIES))
def test_add_noise_is_the_training_forward_process_at_every_step(tiny, family, helper):
    """``add_noise(scheduler, x, noise, t_i) = signal_i x + level_i noise`` exactly, on a scheduler whose index
    state an img2img run left at step 0 (``set_begin_index(0)``, as ``forward_trajectory`` set it), and
    without touching that state; the workflows' helper is the engine's."""
    import diffusers

    add_noise = importlib.import_module(helper).add_noise
    name, kind, _ = FAMILIES[family]
    stock = tiny(kind).scheduler
    scheduler = getattr(diffusers, name).from_config(stock.config)
    scheduler.set_timesteps(4)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(0)
    x = torch.full((1, 4, 2, 2), 0.5)
    noise = torch.ones_like(x)
    for i, t in enumerate(scheduler.timesteps):
        signal, level = _level(family, scheduler, t)
        out = add_noise(scheduler, x, noise, t)
        expected = torch.full_like(x, 0.5 * signal + level)
        assert torch.allclose(out, expected, rtol=1e-5, atol=1e-6), (family, i, float(out.flatten()[0]),
                                                                    float(expected.flatten()[0]))
    assert getattr(scheduler, "begin_index", None) == (0 if hasattr(scheduler, "set_begin_index") else None)


def test_edit_friendly_last_step_correction_is_small_on_sdxl_turbo(tiny, astronaut32):
    """The forward trajectory ends near the image, so the last step (which draws no noise) needs only a small
    additive correction: measured 0.57 of the image latent's rms (10.1 before, every step at sigma_max)."""
    pipe = tiny("sdxl")
    res = nrinv.invert(pipe, astronaut32, PROMPT, method="edit_friendly", num_inference_steps=4, guidance_scale=0.0,
                       seed=3)
    assert res.noises[-1] is None
    last = _rms(res.corrections[-1]) / _rms(res.encoded)
    assert res.settings["additive_correction"] == pytest.approx(last, rel=1e-4)
    assert last < 1.0, last
    # and the trajectory's rms falls with the noise level instead of staying at sigma_max
    rms = [_rms(z) for z in res.trajectory]
    assert all(a > b for a, b in zip(rms, rms[1:])), rms
    assert _rel(pipe(PROMPT, output_type="latent", **res.pipeline_kwargs()).images, res.encoded) < 1e-5


# ------------------------------------------------------------------------------ item 5: the generator
@pytest.mark.parametrize("kind,guidance", [("lcm", 4.0), ("sdxl", 0.0)])
def test_pipeline_kwargs_regenerate_with_the_users_generator(tiny, astronaut32, kind, guidance):
    """LCM and Euler-ancestral draw noise every step: the stock regeneration needs the inversion's generator
    (measured 1.6e-7 / 7.4e-7 with it; 0.76 / 0.91 with the CPU generator seeded 0 handed out before)."""
    pipe = tiny(kind)
    generator = torch.Generator().manual_seed(1234)
    torch.randn(5, generator=generator)  # a generator the user has already drawn from
    state = generator.get_state().clone()
    res = nrinv.invert(pipe, astronaut32, PROMPT, method="edit_friendly", num_inference_steps=4,
                       guidance_scale=guidance, generator=generator)
    assert torch.equal(generator.get_state(), state)  # read, not advanced
    first = pipe(PROMPT, output_type="latent", **res.pipeline_kwargs()).images
    assert _rel(first, res.encoded) < 1e-5
    # a fresh generator on every call: calling again gives the same image
    kwargs = res.pipeline_kwargs()
    assert kwargs["generator"] is not res.pipeline_kwargs()["generator"]
    assert torch.equal(pipe(PROMPT, output_type="latent", **kwargs).images, first)
    # the engine's own regeneration, also where the result no longer holds its setup (a loaded result)
    for result in (res, dataclasses.replace(res, setup=None)):
        assert _rel(nrinv.reconstruct(pipe, result, output_type="latent").latents, res.encoded) < 1e-5


def test_solved_inversion_and_batch_hand_on_the_generator(tiny, astronaut32):
    """The default (solved) inversion and a batch: ``pipeline_kwargs()`` regenerates exactly as the inversion's
    own generator does (before: seeded 0, 0.75 relative error on tiny LCM)."""
    pipe = tiny("lcm")
    opts = dict(num_inference_steps=4, guidance_scale=4.0, max_iterations=30)
    res = nrinv.invert(pipe, astronaut32, PROMPT, generator=torch.Generator().manual_seed(1234), **opts)
    own = pipe(PROMPT, output_type="latent", latents=res.latents, num_inference_steps=4, guidance_scale=4.0,
               height=32, width=32, generator=torch.Generator().manual_seed(1234)).images
    regenerated = pipe(PROMPT, output_type="latent", **res.pipeline_kwargs()).images
    assert torch.equal(regenerated, own)
    assert _rel(regenerated, res.encoded) < 1e-2
    flipped = astronaut32.transpose(0)  # PIL: left-right
    batch = nrinv.invert_batch(pipe, [astronaut32, flipped], PROMPT, generator=torch.Generator().manual_seed(1234),
                               **opts)
    for one in batch:
        out = pipe(PROMPT, output_type="latent", **one.pipeline_kwargs()).images
        assert _rel(out, one.encoded) < 1e-2, _rel(out, one.encoded)
    assert res.settings["generator"]["device"] == "cpu"


def test_builtin_lcm_regenerates_with_the_users_generator():
    """The trained 4-step model: the stock pipeline given ``pipeline_kwargs()`` regenerates what the inversion
    computed.  Edit-friendly (exact): 4e-7 relative error (1.2 with the CPU generator seeded 0 handed out
    before); the default solve: the stock regeneration equals ``nrinv.reconstruct`` (whose own error, 0.12
    at the default 12 calls, is the solver's; 2.8 before)."""
    from nrinv.bench.images import load_image_set

    pipe = nrinv.load_pipeline("builtin:shapes-lcm", device="cpu")
    img = load_image_set("shapes", size=(64, 64), n=1, seed=7000)[0]
    res = nrinv.invert(pipe, img.image, img.prompt, method="edit_friendly",
                       generator=torch.Generator().manual_seed(1234))
    first = pipe(img.prompt, output_type="latent", **res.pipeline_kwargs()).images
    assert _rel(first, res.encoded) < 1e-5, _rel(first, res.encoded)
    assert torch.equal(pipe(img.prompt, output_type="latent", **res.pipeline_kwargs()).images, first)
    solved = nrinv.invert(pipe, img.image, img.prompt, generator=torch.Generator().manual_seed(1234))
    stock = pipe(img.prompt, output_type="latent", **solved.pipeline_kwargs()).images
    ours = nrinv.reconstruct(pipe, solved, output_type="latent").latents
    assert _rel(stock, ours) < 1e-4, _rel(stock, ours)
