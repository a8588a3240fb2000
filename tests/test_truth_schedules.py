"""The probed step model of multistep and second-order schedulers, against known answers.

* Grouping: entries join a step only on exact signals (the scheduler's own second call, or an entry that does
  not read its own latent at all), never on a magnitude threshold: UniPC at many steps reads its own latent
  only through its data prediction (an O(h) coefficient) and the previous latent with weight ~1, which is
  history, not a restart.
* Precision: the probes read the stock scheduler's arithmetic in full precision whatever the user's matmul
  settings (TF32 rounding emulated on the CPU).

The analytic oracle (``nrinv.testing.oracle``) gives the known answer: sampling from a known noise with the
stock scheduler loop, then inverting, must give back that noise, and the stock loop must regenerate the image.
"""
import copy

import diffusers
import pytest
import torch

import nrinv
from nrinv.core.schedulers import affine_schedule
from nrinv.testing.oracle import GaussianOracle, OracleAdapter

SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
#: Wan 2.1's scheduler as diffusers' Wan documentation gives its default (flow prediction, flow sigmas, shift 3 for
#: 480p; the tiny Wan of ``nrinv.testing`` too), with UniPC's other defaults that matter written out
WAN = dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, solver_order=2, solver_type="bh2",
           predict_x0=True, lower_order_final=True, final_sigmas_type="zero", num_train_timesteps=1000)
SHAPE = (1, 4, 4, 4)
#: a budget that converges on the (linear) oracle, so the answer is checked, not the budget
TIGHT = {"sweeps": 30, "sweep_mode": "newton", "rtol": 1e-6, "atol": 0.0}


def _oracle_adapter(scheduler, steps):
    adapter = OracleAdapter(scheduler, SHAPE, num_inference_steps=steps)
    if getattr(scheduler.config, "prediction_type", None) == "flow_prediction":
        # the oracle's flow model (v = eps - x at z = (1 - s) x + s eps, s = t / 1000) is what a flow-prediction
        # UniPC reads (x0 = z - sigma v, timesteps = sigmas * 1000)
        adapter.oracle = GaussianOracle(diffusers.FlowMatchEulerDiscreteScheduler(), SHAPE)
    return adapter


def _stock_sample(scheduler, oracle, z, steps):
    """The stock sampler loop (``scale_model_input`` then ``step``) with the oracle as the network, in float64."""
    s = copy.deepcopy(scheduler)
    s.set_timesteps(steps)
    z = z.double()
    for t in s.timesteps:
        z = s.step(oracle(s.scale_model_input(z, t), t), t, z, return_dict=False)[0]
    return z


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("name, make, steps", [
    ("unipc-sd", lambda: diffusers.UniPCMultistepScheduler(**SD_BETAS), 100),   # refused before ("restarts")
    ("wan", lambda: diffusers.UniPCMultistepScheduler(**WAN), 50),             # one 32-entry group before
])
def test_unipc_is_one_step_per_entry_and_inverts_to_the_known_noise(name, make, steps):
    scheduler = make()
    adapter = _oracle_adapter(scheduler, steps)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    image = _stock_sample(scheduler, adapter.oracle, noise, steps).float()
    res = nrinv.invert(adapter, image_latents=image, seed=0, progress=False, options=TIGHT)
    assert res.setup.schedule.coupling.groups == [(k, k) for k in range(steps)]
    assert len(res.steps) == steps and res.ok
    # measured (noise / regeneration): UniPC (SD betas) 100 steps 5.0e-7 / 4.7e-7; Wan 50 steps 1.0e-7 / 9.4e-8
    assert _rel(res.scheduler_latents, noise) < 1e-5
    assert _rel(_stock_sample(scheduler, adapter.oracle, res.scheduler_latents, steps), image) < 1e-5


def test_groups_are_read_from_exact_signals_at_any_number_of_steps():
    """At 100 steps: UniPC (SD betas, v-prediction as SD 2.1 would run it, Wan's flow form) and DPM-Solver++ 2S
    on flow sigmas take one entry per step (under the former magnitude rule, an entry whose own latent weighed
    under 10 % of the largest joined the step before: their grouping followed the step count, UniPC
    v-prediction at 30 steps was (0, 16) + singles); Heun / KDPM2 pair their second call with the first, PLMS
    its first step, PNDM's Runge-Kutta warm-up four calls, as before."""
    flow = dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    singles = [(k, k) for k in range(100)]
    pairs = [(2 * k, 2 * k + 1) for k in range(99)] + [(198, 198)]  # Heun's last step is first order
    cases = {
        "unipc": (diffusers.UniPCMultistepScheduler(**SD_BETAS), singles),
        "unipc-wan": (diffusers.UniPCMultistepScheduler(**WAN), singles),
        "unipc-v": (diffusers.UniPCMultistepScheduler(**SD_BETAS, prediction_type="v_prediction"), singles),
        "dpm++2s-flow": (diffusers.DPMSolverSinglestepScheduler(**flow), singles),
        "heun": (diffusers.HeunDiscreteScheduler(**SD_BETAS), pairs),
        "kdpm2": (diffusers.KDPM2DiscreteScheduler(**SD_BETAS), pairs),
        "plms": (diffusers.PNDMScheduler(**SD_BETAS, skip_prk_steps=True), [(0, 1)] + [(k, k) for k in range(2, 101)]),
        "prk": (diffusers.PNDMScheduler(**SD_BETAS), [(0, 3), (4, 7), (8, 11)] + [(k, k) for k in range(12, 109)]),
    }
    got = {}
    for name, (scheduler, _) in cases.items():
        scheduler.set_timesteps(100)
        got[name] = affine_schedule(scheduler, (1, 1, 2, 2), seed=0).coupling.groups
    assert got == {name: expected for name, (_, expected) in cases.items()}


def _tf32(x):
    """Round a float32 tensor's mantissa to TF32's 10 bits (round to nearest), as an Ampere+ GPU does to matmul
    inputs under ``torch.backends.cuda.matmul.allow_tf32``; other dtypes are untouched (TF32 is float32 only)."""
    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32:
        return x
    bits = x.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


@pytest.fixture
def emulated_tf32(monkeypatch):
    """``torch.backends.cuda.matmul.allow_tf32 = True`` as a user sets it, with its effect on the CPU:
    ``torch.einsum`` (UniPC's corrector and predictor sums) rounds float32 inputs to TF32 while the flag is on."""
    einsum = torch.einsum

    def rounded_einsum(equation, *operands):
        if torch.backends.cuda.matmul.allow_tf32:
            operands = [_tf32(x) for x in operands]
        return einsum(equation, *operands)

    monkeypatch.setattr(torch, "einsum", rounded_einsum)
    flag, precision = torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision()
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = flag
        torch.set_float32_matmul_precision(precision)


def test_probes_run_in_full_precision_under_tf32(emulated_tf32):
    scheduler = diffusers.UniPCMultistepScheduler(**SD_BETAS)
    scheduler.set_timesteps(20)
    precision = torch.get_float32_matmul_precision()
    # the emulation bites: the stock float32 step under TF32 is not the exact one
    g = torch.Generator().manual_seed(0)
    zs = [torch.randn(1, 4, 8, 8, generator=g) for _ in range(4)]
    runs = []
    for tf32 in (True, False):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        s = copy.deepcopy(scheduler)
        runs.append([s.step(m, t, z, return_dict=False)[0] for z, m, t in zip(zs, zs[::-1], s.timesteps)])
    assert _rel(runs[0][-1], runs[1][-1]) > 1e-5
    exact = affine_schedule(scheduler, (1, 4, 8, 8)).coupling  # TF32 off
    torch.backends.cuda.matmul.allow_tf32 = True
    under_tf32 = affine_schedule(scheduler, (1, 4, 8, 8)).coupling  # refused as "not affine" before
    assert (under_tf32.A, under_tf32.B, under_tf32.stored) == (exact.A, exact.B, exact.stored)
    # the user's settings are left as they were
    assert torch.backends.cuda.matmul.allow_tf32 and torch.get_float32_matmul_precision() == precision
