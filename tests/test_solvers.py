"""Every solver x every supported scheduler against the analytic Gaussian oracle's exact inverse.

Tolerances (relative error of the recovered z_i, worst over the 4 steps of a 4-step schedule and a
batch of 2; see the table in the README):
* newton_krylov (GMRES(2), finite-difference products): 8 iterations, <= 1e-5 (LCM: <= 2e-4, the
  oracle's own LCM inverse is only accurate to ~3e-5 in float32);
* anderson (history 5): 16 iterations, <= 1e-5 (LCM: <= 5e-3);
* fixed_point and renoise: linear convergence at rate ||J_f||, so 400 iterations, <= 1e-5 (LCM: <= 0.25,
  see LCM_TOL);
* gnri and gnri_grad (GNRI's scalar L1 objective): by construction they converge sublinearly and
  lam > 0 biases the root.  Measured worst errors at 16 iterations vs DDIM: ddim_eps 1.6e-3 vs 3.4e-2,
  flow 4.4e-3 vs 5.0e-2, but euler_a 0.47 vs 0.90 and LCM 1.28 vs 1.45.  We assert they improve on
  DDIM inversion (<= 0.9x) in 16 iterations and keep improving from 4 to 16 iterations.
"""

import dataclasses

import pytest
import torch
from diffusers import (DDIMScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
                       FlowMatchEulerDiscreteScheduler, LCMScheduler)

import nrinv
from nrinv.testing.oracle import GaussianOracle, OracleAdapter
from nrinv.core.schedulers import UnsupportedSchedulerError, affine_schedule
from nrinv.core.solvers import SOLVERS, Problem, Status, make_options

SD = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
SCHEDULERS = {
    "ddim_eps": lambda: DDIMScheduler(**SD, clip_sample=False, set_alpha_to_one=False, steps_offset=1),
    "ddim_v": lambda: DDIMScheduler(**SD, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                    prediction_type="v_prediction"),
    "euler": lambda: EulerDiscreteScheduler(**SD),
    "euler_a": lambda: EulerAncestralDiscreteScheduler(**SD, timestep_spacing="trailing"),
    "lcm": lambda: LCMScheduler(**SD),
    "flow": lambda: FlowMatchEulerDiscreteScheduler(shift=3.0),
}
SHAPE = (2, 4, 4, 4)
TIGHT = {"newton_krylov": (8, 1e-5), "anderson": (16, 1e-5), "fixed_point": (400, 1e-5), "renoise": (400, 1e-5)}
# LCM's first step (a_T ~ 0.005) makes f nearly non-contractive: ||J_f|| ~ 1 - a_T * min(spectrum) ~ 0.998,
# so plain fixed point needs thousands of iterations there; the Newton-type solvers do not.
LCM_TOL = {"newton_krylov": 2e-4, "anderson": 5e-3, "fixed_point": 0.25, "renoise": 0.25}


def _problems(name):
    sched = SCHEDULERS[name]()
    sched.set_timesteps(4)
    schedule = affine_schedule(sched, SHAPE, seed=0)
    oracle = GaussianOracle(sched, SHAPE)
    for step in schedule.steps:
        z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(10 + step.index)) * schedule.init_noise_sigma
        z_next = oracle.sample_step(step, z)
        def fn(zz, step=step, z_next=z_next):
            return step.fixed_point_map(z_next, oracle(step.input_scale * zz, step.timestep))
        problem = Problem(fn, z_next, step.guidance_mean_scale * z_next, step.guidance_beta)
        yield z, problem, oracle.exact_inverse(step, z_next)


def _worst_error(name, method, iterations, **extra):
    worst = 0.0
    for z, problem, exact in _problems(name):
        assert float((exact - z).norm() / z.norm()) < 1e-4  # the oracle's inverse is the truth
        opts = make_options(method, **({} if method == "ddim" else {"max_iterations": iterations}),
                            rtol=0.0, atol=0.0, **extra)
        res = SOLVERS[method].fn(problem, opts)
        assert res.status.finite, res.status
        assert torch.isfinite(res.z).all()
        worst = max(worst, float((res.z - z).norm() / z.norm()))
    return worst


@pytest.mark.parametrize("sched", list(SCHEDULERS))
@pytest.mark.parametrize("method", list(TIGHT))
def test_convergent_solvers_reach_exact_inverse(sched, method):
    iterations, tol = TIGHT[method]
    if sched == "lcm":
        tol = LCM_TOL.get(method, tol)
    assert _worst_error(sched, method, iterations) <= tol


@pytest.mark.parametrize("sched", list(SCHEDULERS))
@pytest.mark.parametrize("method", ["gnri", "gnri_grad"])
def test_gnri_forms_improve_on_ddim(sched, method):
    ddim = _worst_error(sched, "ddim", 1)
    at4, at16 = _worst_error(sched, method, 4), _worst_error(sched, method, 16)
    assert at16 <= 0.9 * ddim
    assert at16 <= at4


@pytest.mark.parametrize("sched", ["euler", "euler_a", "lcm"])
def test_newton_type_beat_fixed_point_at_equal_nfe_on_large_steps(sched):
    # 6 NFE each: newton_krylov 2 iterations of GMRES(2), anderson 6, fixed point 6.  On the
    # strongly contractive DDIM schedules plain fixed point is as good (see the README table).
    fixed = _worst_error(sched, "fixed_point", 6)
    assert _worst_error(sched, "newton_krylov", 2) < 0.1 * fixed
    assert _worst_error(sched, "anderson", 6) < 0.1 * fixed


@pytest.mark.parametrize("sched", ["ddim_eps", "euler_a", "flow"])
def test_full_inversion_loop_on_oracle(sched):
    adapter = OracleAdapter(SCHEDULERS[sched](), (1, 4, 4, 4), num_inference_steps=4)
    setup = nrinv.core.inversion.prepare(adapter, "", size=(4, 4), seed=7)
    z_T = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1)) * setup.schedule.init_noise_sigma
    x = nrinv.core.sample(setup, z_T)
    naive = nrinv.invert(adapter, image_latents=x, method="ddim", seed=7, progress=False)
    exact = nrinv.invert(adapter, image_latents=x, method="newton_krylov", seed=7, max_iterations=8,
                         options={"rtol": 1e-7, "atol": 0.0}, progress=False)
    err = float((exact.scheduler_latents - z_T).norm() / z_T.norm())
    assert err < 1e-4
    assert float((naive.scheduler_latents - z_T).norm() / z_T.norm()) > 100 * err
    assert exact.nfe == sum(s.nfe for s in exact.steps)
    rec = nrinv.reconstruct(adapter, exact, output_type="latent").latents
    assert float((rec - x).norm() / x.norm()) < 1e-5


def test_linear_problem_solved_in_closed_form_by_newton():
    # f(z) = M z + c with ||M|| < 1: GMRES(k) with k >= dim solves the Newton system exactly.
    g = torch.Generator().manual_seed(0)
    m = 0.5 * torch.linalg.qr(torch.randn(6, 6, generator=g))[0]
    c = torch.randn(1, 6, generator=g)
    exact = torch.linalg.solve(torch.eye(6) - m, c.T).T
    problem = Problem(lambda z: z @ m.T + c, torch.zeros(1, 6))
    res = SOLVERS["newton_krylov"].fn(problem, make_options("newton_krylov", max_iterations=2, krylov_dim=6,
                                                            jvp="autograd", rtol=0, atol=0))
    assert torch.allclose(res.z, exact, atol=1e-5)


@pytest.mark.parametrize("method", list(SOLVERS))
@pytest.mark.parametrize("bad_from", [1, 3])
def test_nonfinite_is_reported_not_returned_as_success(method, bad_from):
    """NaN from the ``bad_from``-th network call on: every solver (ddim too: its one call is NaN) reports
    NONFINITE and returns a finite iterate: the start where no evaluation was finite, else one of the
    finite evaluations of f (a contraction toward 0 from 1 here, so within [0, 1])."""
    spec = SOLVERS[method]
    if not spec.iterates and bad_from > 1:
        pytest.skip("a solver that does not iterate makes one call")
    calls = []

    def fn(z):
        calls.append(1)
        return z * 0.5 if len(calls) < bad_from else z * float("nan")

    z0 = torch.ones(2, 3)
    opts = make_options(method, **({"max_iterations": 5} if spec.iterates else {}))
    res = spec.fn(Problem(fn, z0), opts)
    assert res.status is Status.NONFINITE and not res.status.finite, method
    assert torch.isfinite(res.z).all(), method
    if bad_from == 1:
        assert torch.equal(res.z, z0), method  # nothing finite was evaluated: the start, not a NaN
    else:
        assert float(res.z.min()) >= 0 and float(res.z.max()) <= 1, (method, res.z)
    assert len(calls) <= bad_from + (spec.calls_per_iteration(opts) if spec.iterates else 0), method


def test_divergence_is_detected():
    res = SOLVERS["fixed_point"].fn(Problem(lambda z: 3 * z + 1, torch.ones(1, 4)),
                                    make_options("fixed_point", max_iterations=50))
    assert res.status is Status.DIVERGED
    assert res.iterations < 50


def test_batch_equals_one_at_a_time():
    for method in ["gnri", "anderson", "newton_krylov", "fixed_point"]:
        problems = list(_problems("euler_a"))
        z, prob, _ = problems[0]
        opts = make_options(method, max_iterations=4)
        both = SOLVERS[method].fn(prob, opts).z
        for b in range(2):
            single = Problem(lambda zz, b=b: prob.fn(torch.cat([zz, zz]))[b:b + 1],
                             prob.z0[b:b + 1], prob.guidance_mean[b:b + 1], prob.guidance_beta)
            # the batched map couples nothing across samples, so solving sample b alone gives the same z
            alone = SOLVERS[method].fn(single, opts).z
            assert torch.allclose(alone, both[b:b + 1], rtol=1e-4, atol=1e-5), method


def test_options_reject_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match="unknown option.*lamda"):
        make_options("gnri", {"lamda": 0.1})
    with pytest.raises(ValueError, match="max_iterations"):
        make_options("fixed_point", max_iterations=0)
    with pytest.raises(ValueError, match="unknown method"):
        make_options("newton")
    opts = make_options("anderson", {"history": 3})
    assert opts.history == 3 and type(opts).from_dict(opts.to_dict()) == opts
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.history = 4  # frozen


def test_unsupported_scheduler_is_named():
    from diffusers import FlowMatchLCMScheduler  # not supported (yet)

    sched = FlowMatchLCMScheduler()
    sched.set_timesteps(4)
    with pytest.raises(UnsupportedSchedulerError, match="supported schedulers: DDIMScheduler"):
        affine_schedule(sched, SHAPE)
    clipped = DDIMScheduler(**SD, clip_sample=True)
    clipped.set_timesteps(4)
    with pytest.raises(UnsupportedSchedulerError, match="clip_sample"):
        affine_schedule(clipped, SHAPE)


def test_recorded_noise_matches_stock_draws():
    sched = SCHEDULERS["euler_a"]()
    sched.set_timesteps(4)
    schedule = affine_schedule(sched, (1, 4, 8, 8), seed=42)
    g = torch.Generator().manual_seed(42)
    drawn = [n for n in schedule.noises if n is not None]
    assert len(drawn) == 4
    for noise in drawn:
        assert torch.equal(noise, torch.randn((1, 4, 8, 8), generator=g))
    with pytest.raises(ValueError, match="seed"):
        affine_schedule(sched, (1, 4, 8, 8), seed=None)


@pytest.mark.parametrize("name", ["euler_a", "ddim_eps", "lcm"])
def test_anderson_returns_its_extrapolation_not_the_fixed_point_iterate(name):
    """The default method at its default 2 iterations: the Anderson (secant) update is used, so the
    answer is not fixed point's second iterate, and it is closer to the exact inverse."""
    for _z, problem, exact in _problems(name):
        opts = lambda m: make_options(m, max_iterations=2, rtol=0.0, atol=0.0)  # noqa: E731
        a = SOLVERS["anderson"].fn(problem, opts("anderson")).z
        f = SOLVERS["fixed_point"].fn(problem, opts("fixed_point")).z
        err = lambda x: float((x - exact).norm() / exact.norm())  # noqa: E731
        if err(f) < 1e-6:  # a step both solve exactly (DDIM's last): nothing to tell apart
            continue
        assert not torch.allclose(a, f, atol=1e-6)
        assert err(a) < 0.5 * err(f), (err(a), err(f))  # measured: 3-50x closer


def _cuda_gels(a, b, driver=None, **_):
    """torch.linalg.lstsq as it runs on CUDA, whose only driver is ``gels``: QR without a rank check
    (the CPU's ``gels`` raises on rank deficiency; the GPU's returns inf/NaN)."""
    q, r = torch.linalg.qr(a)
    return torch.return_types.linalg_lstsq((torch.linalg.solve_triangular(r, q.mH @ b, upper=True),
                                            a.new_empty(0), a.new_empty(0, dtype=torch.long), a.new_empty(0)))


@pytest.mark.parametrize("jvp", ["fd", "autograd"])
def test_newton_krylov_is_rank_safe_where_lstsq_has_only_gels(monkeypatch, jvp):
    # f(z) = c: J_f = 0, so the Krylov space is exhausted after one vector and the Hessenberg
    # matrix has vanishing columns; the exact answer is z = c after one Newton step.
    monkeypatch.setattr(torch.linalg, "lstsq", _cuda_gels)
    c = torch.tensor([[1.0, 1.0, 1.0, 1.0], [3.0, -3.0, 3.0, -3.0]])
    res = SOLVERS["newton_krylov"].fn(Problem(lambda z: 0 * z + c, torch.zeros(2, 4)),
                                      make_options("newton_krylov", max_iterations=3, jvp=jvp))
    assert res.status is Status.CONVERGED and torch.equal(res.z, c)


def test_least_squares_gives_the_minimum_norm_answer_of_a_rank_deficient_hessenberg():
    from nrinv.core.solvers import _least_squares

    h = torch.tensor([[[2.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
                      [[1.0, 0.5, 0.2], [0.5, 2.0, 0.1], [0.0, 0.3, 1.0], [0.0, 0.0, 0.4]]], dtype=torch.float64)
    b = torch.tensor([[[2.0], [0.0], [0.0], [0.0]], [[1.0], [0.0], [0.0], [0.0]]], dtype=torch.float64)
    y = _least_squares(h, b)
    assert torch.allclose(y[0].flatten(), torch.tensor([0.8, 0.4, 0.0], dtype=torch.float64))  # min-norm
    assert torch.allclose(y, torch.linalg.lstsq(h, b, driver="gelsd").solution, atol=1e-12)


def test_backpropagated_passes_do_not_use_the_cudnn_attention_kernel():
    seen = []

    def fn(z):
        seen.append(torch.backends.cuda.cudnn_sdp_enabled())
        return 0.5 * z

    assert torch.backends.cuda.cudnn_sdp_enabled()  # the default, for the no-grad calls
    res = SOLVERS["gnri_grad"].fn(Problem(fn, torch.ones(1, 3)), make_options("gnri_grad", max_iterations=2))
    assert res.status.finite and seen == [False, False] and torch.backends.cuda.cudnn_sdp_enabled()


@pytest.mark.parametrize("method", list(SOLVERS))
def test_registry_facts_match_what_solvers_do(method):
    """``iterates`` and ``calls_per_iteration`` are what the solver spends: with no early stop, a
    budget of k iterations costs exactly k x calls_per_iteration network calls (1 for ddim)."""
    spec = SOLVERS[method]
    for k in (1, 2):
        if not spec.iterates:
            with pytest.raises(ValueError):
                make_options(method, max_iterations=2)
            if k > 1:
                continue
        opts = make_options(method, **({"max_iterations": k} if spec.iterates else {}), rtol=0, atol=0)
        res = spec.fn(Problem(lambda z: 0.5 * torch.sin(z) + 1, torch.zeros(1, 3)), opts)
        assert res.status is Status.MAX_ITERATIONS, method
        assert res.nfe == k * spec.calls_per_iteration(opts), method
    if method == "newton_krylov":
        assert spec.calls_per_iteration(make_options(method, krylov_dim=4)) == 5
        assert spec.calls_per_iteration(make_options(method, krylov_dim=4, jvp="autograd")) == 1


@pytest.mark.parametrize("method", ["fixed_point", "anderson", "gnri", "renoise"])
def test_a_sample_that_converges_first_returns_what_it_returns_alone(method):
    """Stopping is per sample: a sample whose residual passes the test keeps that iterate, although its batch
    iterates on for a slower one (it iterated on, and came back one tolerance away from its answer alone)."""
    rate = torch.tensor([0.02, 0.7]).reshape(2, 1)
    shift = torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.3, 0.1, -1.0, 2.0]])
    fn = lambda z, r=rate, d=shift: r[: z.shape[0]] * z + d[: z.shape[0]]  # noqa: E731
    z0 = torch.zeros(2, 4)
    opts = make_options(method, max_iterations=60, rtol=1e-3, atol=0.0)
    both = SOLVERS[method].fn(Problem(fn, z0, z0, 1.0), opts)
    assert both.status is Status.CONVERGED
    for b in range(2):
        single = Problem(lambda z, b=b: rate[b] * z + shift[b:b + 1], z0[b:b + 1], z0[b:b + 1], 1.0)
        alone = SOLVERS[method].fn(single, opts)
        assert alone.status is Status.CONVERGED
        assert torch.allclose(alone.z, both.z[b:b + 1], rtol=1e-6, atol=1e-7), (method, b)


def test_anderson_least_squares_is_the_per_sample_minimiser():
    """The one Anderson least squares (the per-step solver's and the whole-trajectory sweeps' mixing):
    per sample, the gamma minimising ||residual - sum_i gamma_i column_i||, as torch.linalg.lstsq finds it."""
    from nrinv.core.solvers import anderson_coefficients, anderson_combination

    g = torch.Generator().manual_seed(0)
    columns = [torch.randn(3, 2, 5, generator=g) for _ in range(3)]
    residual = torch.randn(3, 2, 5, generator=g)
    gamma = anderson_coefficients(columns, residual, 0.0)
    for b in range(3):
        a = torch.stack([c[b].flatten() for c in columns], 1).double()
        want = torch.linalg.lstsq(a, residual[b].flatten().double()[:, None]).solution[:, 0]
        assert torch.allclose(gamma[b], want, atol=1e-9)
    mixed = anderson_combination(gamma, columns)
    assert mixed.shape == residual.shape and mixed.dtype == residual.dtype
    assert torch.allclose(mixed[1], sum(float(gamma[1, i]) * columns[i][1] for i in range(3)), atol=1e-6)
