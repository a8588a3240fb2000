"""Defaults by measurement on choosing and held-out scenes (issue 26): `python benchmarks/defaults_check.py ITEM`.

Every configuration runs on two sets of held-out scenes of the shapes world: the *choosing* scenes
(``--choose-seed``, default 7100) on which a default may be chosen, and the *held-out* scenes
(``--held-seed``, default 7300), never used to choose anything; ``--n-images`` of each (default 8).
Per scene: the stock regeneration (``sample``, the stock pipeline's replay, with the result's
corrections) from ``nrinv.invert``'s noise, decoded; dB below the VAE ceiling PSNR(x, D(E(x))), the
relative latent error of the regeneration and the network calls.  Per set: mean +- std, median and range.

ITEM:
  guided-warm   builtin:shapes, 20 DDIM steps, guidance 3 and 7.5, the model's 2 iterations (40 calls):
                the default warm start (off under guidance unless the model says) against "linear", "last"
  lcm12         builtin:shapes-lcm, 4 steps, 3 iterations (12 calls): the default against "learned" and "linear"
  karras        DPM++ 2M Karras, 20 steps: the default against diffusers' DPMSolverMultistepInverseScheduler at
                20 and 30 steps
  dpm2m         DPM++ 2M, 20 steps: the default row against 2 and 3 iterations in the pass (and at --guidance)
  unipc         UniPC bh2, 20 steps: the default row against 2 and 3 iterations in the pass, 6 sweeps
``--configs`` overrides an item's configurations (``default`` or ``NAME:key=value,key=value`` with keys
warm_start, max_iterations, sweeps, guidance).  Writes benchmarks/results/defaults_check/ITEM[TAG].json
and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from pathlib import Path

import torch

ITEMS = {
    # item: (model, sampler of benchmarks/multistep.py or None, steps, configs)
    "guided-warm": ("builtin:shapes", None, 20,
                    ["default:guidance=3", "linear:guidance=3,warm_start=linear", "last:guidance=3,warm_start=last",
                     "default:guidance=7.5", "linear:guidance=7.5,warm_start=linear",
                     "last:guidance=7.5,warm_start=last"]),
    "lcm12": ("builtin:shapes-lcm", None, 4, ["default", "learned:warm_start=learned,max_iterations=3",
                                              "linear:warm_start=linear,max_iterations=3"]),
    "karras": ("builtin:shapes", "dpm2m-karras", 20, ["inverse-scheduler:steps=20", "inverse-scheduler:steps=30",
                                                       "default"]),
    "dpm2m": ("builtin:shapes", "dpm2m", 20, ["default", "x3:max_iterations=3", "x2:max_iterations=2"]),
    "unipc": ("builtin:shapes", "unipc", 20, ["default", "x3:max_iterations=3", "x2:max_iterations=2"]),
}


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float((a.float() - b.float()).pow(2).mean())
    return 100.0 if mse == 0 else 10 * math.log10(1.0 / mse)


def parse_config(text: str) -> tuple[str, dict]:
    name, _, rest = text.strip().partition(":")
    kw = {}
    for part in filter(None, rest.split(",")):
        k, _, v = part.partition("=")
        kw[k.strip()] = v.strip()
    return name, kw


def spread(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("item", choices=sorted(ITEMS))
    ap.add_argument("--n-images", type=int, default=8, help="scenes per set (choosing, held-out)")
    ap.add_argument("--choose-seed", type=int, default=7100)
    ap.add_argument("--held-seed", type=int, default=7300)
    ap.add_argument("--sets", default="choose,held", help="which sets to run: choose, held or both")
    ap.add_argument("--configs", default=None, help="semicolon-separated configs instead of the item's")
    ap.add_argument("--guidance", type=float, default=None, help="guidance of every config that does not set one")
    ap.add_argument("--steps", type=int, default=None, help="sampler steps instead of the item's")
    ap.add_argument("--tag", default="")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("THREADS", "1")))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    import nrinv
    from nrinv.bench.images import load_image_set
    from nrinv.core.inversion import sample

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from multistep import SAMPLERS, inverse_scheduler

    model, sampler, steps, configs = ITEMS[args.item]
    steps = args.steps or steps
    configs = [parse_config(c) for c in (args.configs.split(";") if args.configs else configs) if c.strip()]
    pipe = nrinv.load_pipeline(model, device="cpu", dtype=torch.float32)
    if sampler is not None:
        pipe.scheduler = SAMPLERS[sampler](pipe.scheduler.config)
    adapter = nrinv.core.adapter_for(pipe)
    sets = {"choose": args.choose_seed, "held": args.held_seed}
    rows = []
    for set_name in [s.strip() for s in args.sets.split(",")]:
        for item in load_image_set("shapes", size=(64, 64), n=args.n_images, seed=sets[set_name]):
            x = torch.from_numpy(__import__("numpy").asarray(item.image.convert("RGB"), dtype="float32") / 255)
            x = x.permute(2, 0, 1)[None]
            with torch.no_grad():
                encoded = adapter.encode(x)
                ceiling = psnr(adapter.decode(encoded, (64, 64)), x)
            for name, kw in configs:
                kw = dict(kw)
                guidance = float(kw.pop("guidance", args.guidance if args.guidance is not None else "nan"))
                given = {} if math.isnan(guidance) else {"guidance_scale": guidance}
                if name == "inverse-scheduler":
                    res = nrinv.invert(pipe, item.image, item.prompt, num_inference_steps=steps, **given)
                    z0, nfe = inverse_scheduler(res.setup, res.encoded, int(kw["steps"]))
                    setup, corrections, enc, status = res.setup, None, res.encoded, "n/a"
                    label = f"inverse-scheduler, {kw['steps']} steps"
                else:
                    opts = {}
                    if "sweeps" in kw:
                        opts["sweeps"] = int(kw.pop("sweeps"))
                    if "max_iterations" in kw:
                        given["max_iterations"] = int(kw.pop("max_iterations"))
                    if "warm_start" in kw:
                        given["warm_start"] = kw.pop("warm_start")
                    res = nrinv.invert(pipe, item.image, item.prompt, num_inference_steps=steps,
                                       options=opts or None, **given)
                    z0, nfe, setup, corrections, enc = (res.scheduler_latents, res.nfe, res.setup, res.corrections,
                                                        res.encoded)
                    status = f"{res.status.value}/{'ok' if res.ok else 'not ok'}"
                    label = name
                with torch.no_grad():
                    z = sample(setup, z0, corrections=corrections)
                    rec = adapter.decode(z, (64, 64))
                rows.append({"set": set_name, "image": item.name, "config": label,
                             "guidance": guidance if not math.isnan(guidance) else None, "nfe": nfe,
                             "nfe_per_step": nfe / steps, "psnr": psnr(rec, x), "ceiling": ceiling,
                             "below": ceiling - psnr(rec, x), "latent_error": float((z - enc).norm() / enc.norm()),
                             "status": status, "settings_warm": (res.settings or {}).get("warm_start"),
                             "guided": bool(getattr(setup.cond, "cfg", False))})
                print(f"{set_name} {item.name} {label} g={guidance:g} nfe={nfe} below={rows[-1]['below']:.2f} "
                      f"err={rows[-1]['latent_error']:.4f} {status} warm={rows[-1]['settings_warm']}", flush=True)
    summary = []
    for key in dict.fromkeys((r["config"], r["guidance"]) for r in rows):
        for set_name in dict.fromkeys(r["set"] for r in rows):
            rs = [r for r in rows if (r["config"], r["guidance"]) == key and r["set"] == set_name]
            if rs:
                summary.append({"config": key[0], "guidance": key[1], "set": set_name,
                                "nfe_per_step": statistics.mean(r["nfe_per_step"] for r in rs),
                                "below": spread([r["below"] for r in rs]),
                                "latent_error": spread([r["latent_error"] for r in rs]),
                                "ok": sum(r["status"].endswith("/ok") for r in rs)})
    out = Path(__file__).resolve().parent / "results" / "defaults_check"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.item}{args.tag}.json").write_text(json.dumps({"rows": rows, "summary": summary}, indent=1) + "\n")
    print(f"\n### {args.item}: {model}{', ' + sampler if sampler else ''}, {steps} steps, {args.n_images} scenes "
          f"per set (choosing seed {args.choose_seed}, held-out seed {args.held_seed})\n")
    print("| config | guidance | scenes | NFE per step | below VAE ceiling dB: mean +- std | median [min, max] | "
          "latent error: mean +- std | median [min, max] | result.ok |")
    print("|---|---|---|---|---|---|---|---|---|")
    for s in summary:
        b, e = s["below"], s["latent_error"]
        print(f"| {s['config']} | {s['guidance'] if s['guidance'] is not None else 'model'} | {s['set']} | "
              f"{s['nfe_per_step']:.2f} | {b['mean']:.2f} +- {b['std']:.2f} | {b['median']:.2f} [{b['min']:.2f}, "
              f"{b['max']:.2f}] | {e['mean']:.4f} +- {e['std']:.4f} | {e['median']:.4f} [{e['min']:.4f}, "
              f"{e['max']:.4f}] | {s['ok']}/{b['n']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
