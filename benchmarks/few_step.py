"""Solvers at equal network-call budgets in the few-step regime: `python benchmarks/few_step.py REGIME ...`.

Regimes (the built-in models, held-out scenes of the shapes world, the model's own guidance):
  lcm4      builtin:shapes-lcm, LCMScheduler, 4 steps
  ddim20    builtin:shapes, DDIM, 20 steps
  eulera4   builtin:shapes with its scheduler swapped to Euler-ancestral (trailing spacing), 4 steps

Per method and budget: reconstruction PSNR against the input (the stock pipeline's regeneration from
the inverted noise, decoded), the VAE ceiling PSNR(x, D(E(x))), and the relative latent error of the
regeneration; then each method's latent error against renoise's and gnri's at the same budget.
Writes results.csv / results.json / plots (nrinv bench's) and summary.md under
benchmarks/results/few_step/REGIME.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path
from typing import Optional

import torch

REGIMES = {"lcm4": ("builtin:shapes-lcm", None, 4), "ddim20": ("builtin:shapes", None, 20),
           "eulera4": ("builtin:shapes", "euler_a", 4)}
#: NFE per step -> method specs at that cost (newton_krylov costs 1 + krylov_dim per iteration)
METHODS_BY_COST = {
    1: ["ddim"],
    2: ["fixed_point", "renoise", "gnri", "anderson", "newton_krylov[krylov_dim=1]"],
    3: ["fixed_point", "renoise", "gnri", "anderson", "newton_krylov[krylov_dim=2]"],
}


def pipeline(regime: str):
    import nrinv

    model, scheduler, steps = REGIMES[regime]
    pipe = nrinv.load_pipeline(model, device="cpu")
    if scheduler == "euler_a":
        from diffusers import EulerAncestralDiscreteScheduler

        pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    return pipe, steps


def iterations_for(spec: str, cost: int) -> Optional[int]:
    """Iterations per step that spend ``cost`` network calls per step, or None where the method cannot."""
    name = spec.split("[")[0]
    if name == "ddim":
        return 1 if cost == 1 else None
    if name == "newton_krylov":
        return None if cost == 1 else 1
    if name == "edit_friendly":
        # forward trajectory: one call per step; solved trajectory: the solver's iterations plus one
        if "trajectory=solved" in spec:
            return cost - 1 if cost > 1 else None
        return 1 if cost == 1 else None
    return cost


def rows_for(regime: str, n_images: int, per_step: list[int], extra: list[str], out: Path,
             methods: Optional[list[str]] = None) -> list[dict]:
    from nrinv.bench.harness import run_bench
    from nrinv.bench.images import load_image_set

    pipe, steps = pipeline(regime)
    images = load_image_set("shapes", size=(64, 64), n=n_images, seed=7000)
    rows = []
    for cost in per_step:
        specs = (METHODS_BY_COST.get(cost, []) if methods is None else methods) + extra
        for spec in specs:
            its = iterations_for(spec, cost)
            if its is None:
                continue
            got = run_bench(pipe, images, out=out, methods=[spec], iterations=[its], steps=steps, repeats=0,
                            progress=False, plots=False)
            rows += [dict(r, budget=cost * steps) for r in got if r["method"] == spec and int(r["iterations"]) == its]
    return rows


def summarize(rows: list[dict], steps: int) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], int(r["budget"])), []).append(r)
    out = []
    for (method, budget), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        nfe = statistics.mean(float(r["nfe"]) for r in rs)  # below the budget where a step converged early
        out.append({"method": method, "budget": budget, "nfe": nfe, "nfe_per_step": nfe / steps,
                    "psnr": statistics.mean(float(r["psnr"]) for r in rs),
                    "ceiling": statistics.mean(float(r["vae_ceiling_psnr"]) for r in rs),
                    "latent_error": statistics.mean(float(r["latent_error"]) for r in rs), "n": len(rs)})
    by_budget: dict[int, dict[str, dict]] = {}
    for s in out:
        by_budget.setdefault(s["budget"], {})[s["method"]] = s
    for s in out:
        peers = by_budget[s["budget"]]
        for ref in ("renoise", "gnri"):
            # the published form where it was measured, else nrinv's warm-started reproduction
            name = f"{ref}[warm_start=false]" if f"{ref}[warm_start=false]" in peers else ref
            if name in peers:
                s[f"vs_{ref}"] = peers[name]["latent_error"] / max(s["latent_error"], 1e-12)
    return out


def markdown(summary: list[dict], regime: str) -> str:
    lines = [f"### {regime}", "",
             "| method | NFE budget (mean used) | PSNR dB | below VAE ceiling dB | latent error | ReNoise / this | "
             "GNRI / this |", "|---|---|---|---|---|---|---|"]
    for s in summary:
        ratios = [("exact" if s["latent_error"] < 1e-4 else f"{s[k]:.1f}x") if k in s else "" for k in
                  ("vs_renoise", "vs_gnri")]
        lines.append(f"| {s['method']} | {s['budget']} ({s['nfe']:.1f}) | {s['psnr']:.2f} | "
                     f"{s['ceiling'] - s['psnr']:.2f} | "
                     f"{s['latent_error']:.4f} | {ratios[0]} | {ratios[1]} |")
    return "\n".join(lines)


def plot(folder: Path) -> Path:
    """PSNR against network calls per regime (the summaries written by earlier runs), VAE ceiling dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = [r for r in ("lcm4", "eulera4", "ddim20") if (folder / r / "summary.json").is_file()]
    fig, axes = plt.subplots(1, len(regimes), figsize=(5.2 * len(regimes), 4.2), squeeze=False)
    for ax, regime in zip(axes[0], regimes):
        summary = json.loads((folder / regime / "summary.json").read_text())
        ceiling = statistics.mean(s["ceiling"] for s in summary)
        for method in sorted({s["method"] for s in summary}):
            pts = sorted((s["budget"], s["psnr"]) for s in summary if s["method"] == method)
            if len(pts) > 1 or method == "ddim":
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=method, ms=4)
        ax.axhline(ceiling, color="k", ls="--", lw=1, label=f"VAE ceiling {ceiling:.1f} dB")
        ax.set_title(regime)
        ax.set_xlabel("network calls per image (budget)")
        ax.set_ylabel("reconstruction PSNR (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    out = folder / "few_step.png"
    fig.savefig(out, dpi=110)
    return out


def main(argv=None) -> int:
    import sys

    if (argv if argv is not None else sys.argv[1:])[:1] == ["plot"]:
        print(plot(Path(__file__).resolve().parent / "results" / "few_step"))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("regime", choices=sorted(REGIMES))
    ap.add_argument("--n-images", type=int, default=8)
    ap.add_argument("--per-step", default="1,2,3", help="NFE per step budgets")
    ap.add_argument("--extra", default="", help="more method specs (semicolon-separated), run at every budget")
    ap.add_argument("--methods", default=None, help="method specs (semicolon-separated) instead of the default "
                    "set per budget")
    ap.add_argument("--also", default="", help="comma-separated result folders whose budget_rows.json join this "
                    "run's summary (methods measured in an earlier run)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("THREADS", "1")))
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out or Path(__file__).resolve().parent / "results" / "few_step" / args.regime)
    out.mkdir(parents=True, exist_ok=True)
    extra = [m for m in args.extra.split(";") if m.strip()]
    methods = None if args.methods is None else [m for m in args.methods.split(";") if m.strip()]
    rows = rows_for(args.regime, args.n_images, [int(x) for x in args.per_step.split(",")], extra, out, methods)
    (out / "budget_rows.json").write_text(json.dumps(rows, indent=1) + "\n")
    for folder in filter(None, args.also.split(",")):
        rows += json.loads((Path(folder) / "budget_rows.json").read_text())
    steps = REGIMES[args.regime][2]
    summary = summarize(rows, steps)
    table = markdown(summary, args.regime)
    (out / "summary.md").write_text(table + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
