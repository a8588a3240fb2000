"""Multistep samplers on the built-in model: `python benchmarks/multistep.py SAMPLER [--steps N] [--n-images 4]`.

builtin:shapes with its scheduler swapped to SAMPLER (dpm2m: DPM-Solver++ 2M; dpm2m-karras: with Karras
sigmas; dpm3m: third order; sde-dpm2m: its SDE form; unipc: UniPC bh2; pndm: PNDM/PLMS as SD 1.5 ships
it; deis; heun; sa: SA-Solver), held-out scenes of the shapes world, guidance 1 (``--guidance``).  Per
method: reconstruction
PSNR against the input (our replay of the stock sampler from the inverted noise, decoded; the replay
is the stock pipeline, tests/test_multistep.py), the VAE ceiling PSNR(x, D(E(x))), the relative
latent error of the regeneration and the network calls used:

* ``inverse-scheduler``: diffusers' DPMSolverMultistepInverseScheduler (DPM-Solver++ 2M run backwards,
  approximate), 1 NFE per step (dpm2m only); ``inverse-scheduler, M steps`` runs it with M steps
  (``--inverse-steps``, e.g. as many calls as a coupled solve spends) and the sampler regenerates with N;
* ``ddim``: DDIM-style inversion of the same step model (each step's model output taken at the known
  latent, history extrapolated), 1 NFE per step;
* ``fixed_point xI, S sweeps`` (config ``fpIxS``): the same with plain fixed-point iteration per step
  (ReNoise-style, without its averaging) at the same budget;
* ``anderson xI, S sweeps``: the coupled trajectory solve (core/trajectory.py) with I Anderson
  iterations per step in the sequential pass and at most S whole-trajectory sweeps (one call per
  entry each; they stop early when every entry converges), with the pass's warm start where named;
* ``(default)``: what ``nrinv.invert`` does with this scheduler at that guidance (the scheduler family's
  row of core/defaults.py ``SCHEDULER_FAMILIES``, the model's warm start).

Writes benchmarks/results/multistep/SAMPLER.json and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import time
from pathlib import Path

import torch

SAMPLERS = {
    "dpm2m": lambda c: __import__("diffusers").DPMSolverMultistepScheduler.from_config(c),
    "dpm2m-karras": lambda c: __import__("diffusers").DPMSolverMultistepScheduler.from_config(
        c, use_karras_sigmas=True),
    "dpm3m": lambda c: __import__("diffusers").DPMSolverMultistepScheduler.from_config(c, solver_order=3),
    "sde-dpm2m": lambda c: __import__("diffusers").DPMSolverMultistepScheduler.from_config(
        c, algorithm_type="sde-dpmsolver++"),
    "pndm": lambda c: __import__("diffusers").PNDMScheduler.from_config(c, skip_prk_steps=True, steps_offset=1,
                                                                         set_alpha_to_one=False),
    "sa": lambda c: __import__("diffusers").SASolverScheduler.from_config(c),
    "unipc": lambda c: __import__("diffusers").UniPCMultistepScheduler.from_config(c),
    "deis": lambda c: __import__("diffusers").DEISMultistepScheduler.from_config(c),
    "heun": lambda c: __import__("diffusers").HeunDiscreteScheduler.from_config(c),
}


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float((a.float() - b.float()).pow(2).mean())
    return 100.0 if mse == 0 else 10 * math.log10(1.0 / mse)


def inverse_scheduler(setup, encoded: torch.Tensor, steps: int) -> tuple[torch.Tensor, int]:
    """diffusers' DPMSolverMultistepInverseScheduler with ``steps`` steps, driven as its docs drive it (scale,
    call, step); ``steps`` may differ from the sampler's (a finer inversion of the same ODE)."""
    from diffusers import DPMSolverMultistepInverseScheduler

    pipe = setup.adapter.pipe
    inv = DPMSolverMultistepInverseScheduler.from_config(pipe.scheduler.config)
    inv.set_timesteps(steps, device=encoded.device)
    z = encoded.clone()
    with torch.no_grad():
        for t in inv.timesteps:
            m = setup.adapter.denoise(inv.scale_model_input(z, t), t, setup.cond)
            z = inv.step(m, t, z, return_dict=False)[0]
    return z, len(inv.timesteps)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sampler", choices=sorted(SAMPLERS))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--n-images", type=int, default=4)
    ap.add_argument("--configs", default="2x0,2x1,2x2,2x6",
                    help="comma-separated ITERATIONSxSWEEPS[gs][+WARM] of the coupled solve (gs: Gauss-Seidel "
                         "sweeps; +last / +linear: the sequential pass's warm start), or 'default' (what "
                         "nrinv.invert does: the scheduler family's row of core/defaults.py, the model's warm start)")
    ap.add_argument("--sweep-mode", default="newton", choices=["newton", "gauss_seidel"],
                    help="whole-trajectory sweeps (the default) or per-step Gauss-Seidel re-solves")
    ap.add_argument("--inverse-steps", default="",
                    help="comma-separated extra step counts of the inverse-scheduler baseline (dpm2m), e.g. 45 "
                         "to give it the calls of a 2.25-calls-per-step solve at 20 steps")
    ap.add_argument("--no-baselines", dest="with_ddim", action="store_false",
                    help="skip the inverse-scheduler and ddim rows")
    ap.add_argument("--history-order", type=int, default=None, choices=[1, 2],
                    help="the pass's extrapolation of unsolved history for the non-default configs (1 linear, 2 "
                         "quadratic; default: the scheduler family's row)")
    ap.add_argument("--guidance", type=float, default=1.0,
                    help="classifier-free guidance of the inversion and the regeneration (the warm start is off by "
                         "default above 1)")
    ap.add_argument("--tag", default="", help="suffix of the results file")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("THREADS", "1")))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    import nrinv
    from nrinv.bench.images import load_image_set
    from nrinv.core.inversion import InversionOptions, _auto_warm, _trajectory_budget, prepare, sample, solver_options
    from nrinv.core.solvers import make_options
    from nrinv.core.trajectory import solve_trajectory

    pipe = nrinv.load_pipeline("builtin:shapes", device="cpu", dtype=torch.float32)
    pipe.scheduler = SAMPLERS[args.sampler](pipe.scheduler.config)
    adapter = nrinv.core.adapter_for(pipe)
    images = load_image_set("shapes", size=(64, 64), n=args.n_images, seed=7000)
    configs = []
    for c in args.configs.split(","):
        if c.strip() == "default":  # what nrinv.invert does with this scheduler (core/defaults.py)
            configs.append(("default",))
            continue
        m = re.fullmatch(r"(fp)?(\d+)x(\d+)(gs)?(?:\+(last|linear))?", c.strip())
        if m is None:
            ap.error(f"bad config {c!r}: [fp]ITERATIONSxSWEEPS[gs][+last|+linear]")
        configs.append(("fixed_point" if m[1] else "anderson", int(m[2]), int(m[3]),
                        "gauss_seidel" if m[4] else args.sweep_mode, m[5]))
    rows = []
    for item in images:
        x = torch.from_numpy(__import__("numpy").asarray(item.image.convert("RGB"), dtype="float32") / 255)
        x = x.permute(2, 0, 1)[None]
        with torch.no_grad():
            encoded = adapter.encode(x)
            ceiling = psnr(adapter.decode(encoded, (64, 64)), x)
        setup = prepare(adapter, item.prompt, size=(64, 64), num_inference_steps=args.steps,
                        guidance_scale=args.guidance)

        def record(method: str, z0: torch.Tensor, nfe: int, seconds: float) -> None:
            with torch.no_grad():
                z = sample(setup, z0)
                rec = adapter.decode(z, (64, 64))
            rows.append({"image": item.name, "method": method, "nfe": nfe, "nfe_per_step": nfe / args.steps,
                         "psnr": psnr(rec, x), "ceiling": ceiling, "seconds": seconds,
                         "latent_error": float((z - encoded).norm() / encoded.norm())})

        if args.sampler.startswith("dpm") and args.with_ddim:  # the inverse scheduler of DPM-Solver++ (ODE)
            t0 = time.perf_counter()
            z0, nfe = inverse_scheduler(setup, encoded, args.steps)
            record("inverse-scheduler", z0, nfe, time.perf_counter() - t0)
            for more in [int(x) for x in args.inverse_steps.split(",") if x.strip()]:
                t0 = time.perf_counter()
                z0, nfe = inverse_scheduler(setup, encoded, more)
                record(f"inverse-scheduler, {more} steps", z0, nfe, time.perf_counter() - t0)
        methods = ([("ddim", 1, 0, "newton", None)] if args.with_ddim else []) + [
            c if c[0] != "default" else ("anderson", "default", None, None, None) for c in configs]
        for method, its, sweeps, mode, warm in methods:
            t0 = time.perf_counter()
            if its == "default":
                method, options = solver_options(adapter, InversionOptions(), guided=setup.cond.cfg)
                options = _trajectory_budget(adapter, options)
                its, sweeps, mode = options.max_iterations, options.sweeps, options.sweep_mode
                warm = _auto_warm(None, setup, its)
                default = " (default)"
            else:
                options, default = make_options(method, max_iterations=its, sweeps=sweeps, sweep_mode=mode), ""
            order = None if default else args.history_order
            results, trajectory, _, _ = solve_trajectory(setup, encoded, method, options, warm_start=warm,
                                                         history_order=order)
            label = "ddim" if method == "ddim" else f"{method} x{its}, {sweeps} sweeps" + (
                " (Gauss-Seidel)" if mode == "gauss_seidel" and sweeps else "") + (f", warm {warm}" if warm else "")
            label += (f", history order {order}" if order else "") + default
            record(label, trajectory[0], sum(r.nfe for r in results), time.perf_counter() - t0)
    summary = []
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == method]
        keys = ("nfe_per_step", "psnr", "ceiling", "latent_error", "seconds")
        summary.append({k: statistics.mean(r[k] for r in rs) for k in keys} | {"method": method})
    out = Path(__file__).resolve().parent / "results" / "multistep"
    out.mkdir(parents=True, exist_ok=True)
    report = json.dumps({"rows": rows, "summary": summary}, indent=1) + "\n"
    (out / f"{args.sampler}{args.steps}{args.tag}.json").write_text(report)
    print(f"### {args.sampler}, {args.steps} steps, guidance {args.guidance:g}, builtin:shapes, {args.n_images} "
          "images\n")
    print("| method | NFE per step | PSNR dB | below VAE ceiling dB | latent error |\n|---|---|---|---|---|")
    for s in summary:
        print(f"| {s['method']} | {s['nfe_per_step']:.2f} | {s['psnr']:.2f} | {s['ceiling'] - s['psnr']:.2f} | "
              f"{s['latent_error']:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
