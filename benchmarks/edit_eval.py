"""Editing quality on the built-in shapes model, per inversion method.  `python benchmarks/edit_eval.py --n 50`

For each item of ``nrinv.shapes.editset.edit_set(n)`` (a source scene, a caption changing one
attribute, the exactly rendered target image) and each method, invert the source with its caption
and regenerate with the target caption (``nrinv.edit``'s math, via ``editing.regenerate``), then
score it as ``nrinv.shapes.editeval`` does (target attribute, preserved attributes, PSNR to the
target; the same scores ``nrinv bench --edits N`` writes), plus ``recon``: PSNR of the source
reconstruction (strength 1, source prompt) against the source image.

Before that, a sweep over strength x guidance on ``--sweep-n`` other items (edit set seed + 1) with
the default method picks the edit defaults (the best PSNR among settings meeting target >= 90% and preserved
>= 90%, else the best min(target, preserved)).  Also measured: the effect of the prompt-aware
encoding adjustment (``--adjust``) on reconstruction PSNR, and interpolation frames judged as valid
scenes (every attribute read with softmax confidence >= 0.5, object colour != background colour).
Results: printed tables and ``--out`` JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import nrinv  # noqa: E402
from nrinv.workflows import editing  # noqa: E402
from nrinv.core.defaults import ModelDefaults  # noqa: E402

DEFAULT_METHOD = ModelDefaults.method  # the solver of the built-in model's row
from nrinv.metrics import psnr  # noqa: E402
from nrinv.shapes.editeval import judge_confident, score_edit  # noqa: E402

def to_uint8(img) -> np.ndarray:
    """A PIL image, or a (3, H, W) / (1, 3, H, W) tensor in [0, 1], as uint8 (H, W, 3)."""
    if not isinstance(img, torch.Tensor):
        return np.asarray(img)
    img = img[0] if img.dim() == 4 else img
    return (img.detach().float().clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def pixel_psnr(a: np.ndarray, b: np.ndarray) -> float:
    return psnr(a.astype(np.float64) / 255, b.astype(np.float64) / 255)


def mean_rows(rows: list[dict]) -> dict:
    keys = sorted({k for r in rows for k in r})
    return {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}


class Runner:
    def __init__(self, pipe, args):
        self.pipe, self.args = pipe, args
        self.adapter = nrinv.core.adapter_for(pipe)
        self.cache: dict = {}
        self.guide_from_source = args.guide_from_source

    def invert(self, method: str, idx: int, item: dict, *, latent=None):
        key = (method, item["render_seed"])
        if key not in self.cache or latent is not None:
            it = None if method == "ddim" else self.args.iterations
            t0 = time.perf_counter()
            kw = dict(method=method, max_iterations=it, seed=self.args.seed, progress=False)
            if latent is None:
                inv = nrinv.invert(self.pipe, item["source_image"], item["source_caption"], **kw)
            else:
                inv = nrinv.invert(self.pipe, None, item["source_caption"], image_latents=latent, height=64, width=64,
                                   **kw)
            inv.settings["bench_time_s"] = time.perf_counter() - t0
            if latent is not None:
                return inv
            self.cache[key] = inv
        return self.cache[key]

    def edit_rows(self, method: str, items: list, strength: float, guidance: float) -> list[dict]:
        rows, imgs = [], []
        for idx, item in enumerate(items):
            inv = self.invert(method, idx, item)
            t0 = time.perf_counter()
            _, images = editing.regenerate(inv, item["target_caption"], strength=strength, edit_guidance_scale=guidance,
                                           guide_from_source=self.guide_from_source)
            imgs.append(to_uint8(images[0]))
            rows.append({"time_s": inv.settings["bench_time_s"] + time.perf_counter() - t0, "nfe": inv.nfe})
        for row, img, item, (read, _) in zip(rows, imgs, items, judge_confident(imgs)):
            row.update(score_edit(img, item, read))
        return rows

    def recon_psnr(self, inv, source_image: np.ndarray) -> float:
        img = nrinv.reconstruct(self.pipe, inv).images[0]
        return pixel_psnr(to_uint8(img), source_image)


def choose(sweep: list[dict]) -> dict:
    ok = [s for s in sweep if s["target"] >= 0.9 and s["preserved"] >= 0.9]
    if ok:
        return max(ok, key=lambda s: s["psnr"])
    return max(sweep, key=lambda s: (min(s["target"], s["preserved"]), s["psnr"]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=50, help="edit items per method")
    p.add_argument("--model", default="builtin:shapes", help="builtin:shapes or a diffusers folder of the shapes model")
    p.add_argument("--methods", nargs="+", default=None,
                   help=f"methods (default: {DEFAULT_METHOD} newton_krylov anderson ddim)")
    p.add_argument("--iterations", type=int, default=None, help="solver iterations per step (default: the solver's)")
    p.add_argument("--strengths", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8])
    p.add_argument("--guidances", type=float, nargs="+", default=[2.5, 4.0, 6.0])
    p.add_argument("--sweep-n", type=int, default=12, help="items of the strength x guidance sweep (0: no sweep)")
    p.add_argument("--strength", type=float, default=None, help="evaluate at this strength (default: the sweep's pick)")
    p.add_argument("--guidance", type=float, default=None, help="evaluate at this guidance (default: the sweep's pick)")
    p.add_argument("--guide-from-source", action=argparse.BooleanOptionalAction, default=None,
                   help="guide edits away from the source prompt (default: the model's edit default)")
    p.add_argument("--adjust", type=float, nargs="*", default=[0.02, 0.05, 0.1], help="encode_adjust strengths")
    p.add_argument("--adjust-n", type=int, default=12, help="items of the encode_adjust measurement (0: skip)")
    p.add_argument("--interp-pairs", type=int, default=6, help="interpolation pairs (0: skip)")
    p.add_argument("--interp-frames", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/edit_eval.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from nrinv.shapes import render, sample_scene
    from nrinv.shapes.editset import edit_set

    pipe = nrinv.load_pipeline(args.model, device="cpu")  # builtin:NAME or a folder; defaults follow the weights
    methods = args.methods or list(dict.fromkeys([DEFAULT_METHOD, "newton_krylov", "anderson", "ddim"]))
    items = edit_set(args.n, seed=args.seed)
    if args.guide_from_source is None:
        args.guide_from_source = editing.edit_defaults(pipe)["guide_from_source"]
    run = Runner(pipe, args)
    report: dict = {"args": vars(args), "version": nrinv.__version__, "methods": methods}
    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:7.1f}s] {msg}", flush=True)

    # 1. encode_adjust: reconstruction PSNR with and without, default method
    if args.adjust_n and args.adjust:
        adapter = nrinv.core.adapter_for(pipe)
        rows = []
        for idx, item in enumerate(items[: args.adjust_n]):
            src = item["source_image"]
            pix = nrinv.io.images.to_tensor(nrinv.io.images.load_image(src))
            with torch.no_grad():
                enc = adapter.encode(pix)
                ceiling = pixel_psnr(to_uint8(adapter.decode(enc, (64, 64))), src)
            row = {"vae_ceiling": ceiling, "off": run.recon_psnr(run.invert(DEFAULT_METHOD, idx, item), src)}
            for s in args.adjust:
                adj = editing.adjust_encoding(pipe, enc, item["source_caption"], strength=s, seed=args.seed,
                                              height=64, width=64)
                row[f"adjust_{s:g}"] = run.recon_psnr(run.invert(DEFAULT_METHOD, idx, item, latent=adj), src)
                row[f"adjusted_latent_only_{s:g}"] = pixel_psnr(to_uint8(adapter.decode(adj, (64, 64))), src)
            rows.append(row)
        report["encode_adjust"] = mean_rows(rows)
        adjust = json.dumps({k: round(v, 2) for k, v in report["encode_adjust"].items()})
        log(f"encode_adjust (mean reconstruction PSNR dB, method {DEFAULT_METHOD}): {adjust}")

    # 2. sweep strength x guidance with the default method
    strength, guidance = args.strength, args.guidance
    if args.sweep_n and (strength is None or guidance is None):
        sweep = []
        sub = edit_set(args.sweep_n, seed=args.seed + 1)  # disjoint from the evaluation items
        for s in args.strengths:
            for g in args.guidances:
                m = mean_rows(run.edit_rows(DEFAULT_METHOD, sub, s, g))
                sweep.append({"strength": s, "guidance": g, **m})
                log(f"sweep s={s:g} g={g:g}: target {m['target']:.2f} preserved {m['preserved']:.2f} "
                    f"all_kept {m['all_kept']:.2f} psnr {m['psnr']:.2f}")
        best = choose(sweep)
        report["sweep"], report["chosen"] = sweep, {"strength": best["strength"], "guidance": best["guidance"]}
        strength = best["strength"] if strength is None else strength
        guidance = best["guidance"] if guidance is None else guidance
        log(f"chosen: strength {strength:g}, guidance {guidance:g}")
    defaults = editing.edit_defaults(pipe)
    strength = defaults["strength"] if strength is None else strength
    guidance = defaults["edit_guidance_scale"] if guidance is None else guidance
    report["eval_setting"] = {"strength": strength, "guidance": guidance, "guide_from_source": args.guide_from_source}

    # 3. per-method evaluation on all items
    report["per_method"] = {}
    for method in methods:
        rows = run.edit_rows(method, items, strength, guidance)
        recon = [run.recon_psnr(run.invert(method, i, it), it["source_image"]) for i, it in enumerate(items)]
        m = mean_rows(rows)
        m["recon_psnr"] = float(np.mean(recon))
        m["by_attribute"] = {a: mean_rows([r for r, it in zip(rows, items) if it["changed"] == a])["target"]
                             for a in ("color", "shape", "background") if any(it["changed"] == a for it in items)}
        report["per_method"][method] = m
        log(f"{method}: target {m['target']:.2f} preserved {m['preserved']:.2f} psnr {m['psnr']:.2f} "
            f"recon {m['recon_psnr']:.2f} nfe {m['nfe']:.0f} time {m['time_s']:.2f}s")

    # 4. interpolation frames judged as valid scenes
    if args.interp_pairs:
        valid, conf_all, end_ok = [], [], []
        for k in range(args.interp_pairs):
            sa, sb = sample_scene(90_000_000 + 2 * k), sample_scene(90_000_001 + 2 * k)
            ia, ib = render(sa, 90_000_000 + 2 * k), render(sb, 90_000_001 + 2 * k)
            res = nrinv.interpolate(pipe, ia, ib, [sa.caption(), sb.caption()], n=args.interp_frames,
                                    seed=args.seed, max_iterations=args.iterations, progress=False)
            reads = judge_confident([to_uint8(f) for f in res.images])
            for read, conf in reads:
                valid.append(float(conf >= 0.5 and read["color"] != read["background_color"]))
                conf_all.append(conf)
            end_ok.append(float(reads[0][0] == sa.as_dict()) * 0.5 + float(reads[-1][0] == sb.as_dict()) * 0.5)
        report["interpolation"] = {"frames_valid": float(np.mean(valid)),
                                   "min_confidence_mean": float(np.mean(conf_all)),
                                   "endpoints_exact": float(np.mean(end_ok)), "pairs": args.interp_pairs,
                                   "frames": args.interp_frames}
        log("interpolation: " + json.dumps({k: round(v, 3) for k, v in report["interpolation"].items()}))

    # tables
    print(f"\n### Edit quality, built-in shapes model, n={args.n}, strength {strength:g}, guidance {guidance:g}\n")
    print("| method | target attribute | preserved (pos/size/bg) | all other attributes | PSNR to target dB | "
          "recon PSNR dB | NFE | time/edit s |")
    print("|---|---|---|---|---|---|---|---|")
    for method, m in report["per_method"].items():
        print(f"| {method} | {m['target']:.0%} | {m['preserved']:.0%} | {m['all_kept']:.0%} | {m['psnr']:.2f} | "
              f"{m['recon_psnr']:.2f} | {m['nfe']:.0f} | {m['time_s']:.2f} |")
    if "encode_adjust" in report:
        print("\nencode_adjust, reconstruction PSNR dB (mean): "
              + ", ".join(f"{k} {v:.2f}" for k, v in report["encode_adjust"].items()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out} ({time.perf_counter() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
