"""The parts of a coupled-schedule inversion (``core/trajectory.py``'s ``TrajectorySolve``), each called alone on
the analytic Gaussian oracle with a multistep sampler: the true trajectory is a root of every entry's residual,
its extrapolated history is a fixed point, and the pass, the check and the sweeps each do what their names say."""
import diffusers
import pytest
import torch

import nrinv
from nrinv.core.methods import make_options
from nrinv.core.solvers import Status
from nrinv.core.trajectory import TrajectorySolve
from nrinv.testing.oracle import OracleAdapter

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000)
SHAPE = (1, 4, 4, 4)


@pytest.fixture(scope="module")
def problem():
    """A DPM-Solver++ 2M oracle, its true trajectory from a known noise (the step model run forward), and the image."""
    scheduler = diffusers.DPMSolverMultistepScheduler.from_config(diffusers.DDIMScheduler(**SD).config)
    adapter = OracleAdapter(scheduler, SHAPE, num_inference_steps=10)
    setup = nrinv.core.inversion.prepare(adapter, "", size=SHAPE[-2:], seed=7)
    steps, cp = setup.schedule.steps, setup.schedule.coupling
    Z = {0: torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)) * setup.schedule.init_noise_sigma}
    M = {}
    with torch.no_grad():
        for k in range(len(steps)):
            M[k] = setup.denoiser(steps[k])(Z[k])
            Z[k + 1] = cp.combine(k, Z, M, steps[k].C)
    truth = [Z[k] for k in range(len(steps) + 1)]
    assert torch.allclose(truth[-1], nrinv.core.sample(setup, truth[0]), atol=1e-5)  # the stock sampler's image
    return setup, truth, [M[k] for k in range(len(steps))]


def _solver(setup, image, **kw):
    return TrajectorySolve(setup, image, "anderson", make_options("anderson", max_iterations=6), "linear", **kw)


def test_the_true_trajectory_is_a_root_of_every_entry_and_a_perturbed_one_is_not(problem):
    setup, truth, _ = problem
    solver = _solver(setup, truth[-1])
    ev = solver.evaluate(list(truth))
    assert bool(ev.settled.all()) and float(ev.norms.max()) < 1e-5
    moved = [z.clone() for z in truth]
    moved[3] = moved[3] + 0.05
    ev = solver.evaluate(moved)
    assert not bool(ev.settled.all())
    bad = ev.settled_entries[:, 0].tolist()
    assert not bad[2] and not bad[3]  # the entries that read z_3: the step from it and the one into it
    assert bad[0]  # an entry before it is untouched


def test_the_extrapolated_history_of_the_true_trajectory_is_itself(problem):
    """Corrected extrapolation adds the current trajectory's difference from the extrapolation: at the true
    trajectory it returns the true history, whatever the extrapolation's own error."""
    setup, truth, outputs = problem
    solver = _solver(setup, truth[-1])
    solver.Z[:] = list(truth)
    solver.M[:] = list(outputs)
    a = 6
    zs, ms, _ = solver.history(a, truth[a], outputs[a], True)
    for j in range(a):
        assert torch.allclose(zs[j], truth[j], atol=1e-5) and torch.allclose(ms[j], outputs[j], atol=1e-5)
    raw, _, _ = solver.history(a, truth[a], outputs[a], False)
    assert max(float((raw[j] - truth[j]).abs().max()) for j in range(a)) > 1e-3  # the extrapolation alone is not


def test_the_pass_then_the_check_and_sweeps_reach_the_true_trajectory(problem):
    setup, truth, _ = problem
    solver = _solver(setup, truth[-1], sweeps=0)
    solver.sequential_pass()  # every group solved once against an extrapolated history
    assert all(r is not None for r in solver.records)
    after_pass = solver.evaluate(list(solver.Z))
    swept = _solver(setup, truth[-1])
    results, trajectory, _, _ = swept.run()
    after_sweeps = swept.evaluate(trajectory)
    assert float(after_sweeps.total) < float(after_pass.total)
    err = float((trajectory[0] - truth[0]).pow(2).mean().sqrt() / truth[0].pow(2).mean().sqrt())
    assert err < 1e-3, err
    # what run() reports agrees with the residual measured here
    assert all((r.status is Status.CONVERGED) == bool(after_sweeps.settled_entries[k].all())
               for k, r in enumerate(results) if r.nfe)
