"""nrinv's edits against the editing pipelines diffusers ships (DiffEdit, LEDITS++), on the built-in shapes models.

`python benchmarks/edit_baselines.py --model builtin:shapes --out benchmarks/results/edit_baselines_shapes.json`

Every system edits the same items of ``nrinv.shapes.editset.edit_set`` and is scored as
``benchmarks/edit_eval.py`` scores (``nrinv.shapes.editeval``: the judge reads the changed attribute as
the target and the others as kept; PSNR to the exactly rendered target; preservation PSNR over the
pixels the edit must keep).  Each system's knobs are tuned on ``--tune-n`` items of edit-set seed 1 by
``edit_eval.py``'s rule (``choose``: the best PSNR to the target among settings with target >= 90 %
and preserved >= 90 %, else the best min(target, preserved)), then reported on ``--n`` held-out items
of seed 0 (colour, shape, background), on the identity edit of those items (target = source; PSNR to
the source, beside the VAE's own ceiling) and on ``--geometry-n`` position / size edits (seed 2).
Network calls and batch rows are counted by a hook on the denoiser (``nrinv.bench.baselines``).
Per-item rows are kept, so paired differences (mean +- standard error) are reported against DiffEdit.
``--check --seed S`` scores the shipped default on tuning items only (per attribute).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import nrinv  # noqa: E402
from nrinv.bench.baselines import (DiffEditSettings, LeditsSettings, build_baseline, count_calls,  # noqa: E402
                                   run_baseline)
from nrinv.io.images import load_image, to_tensor  # noqa: E402
from nrinv.metrics import psnr  # noqa: E402
from nrinv.shapes.editeval import judge_confident, score_edit  # noqa: E402
from nrinv.shapes.editset import GEOMETRY_ATTRIBUTES, edit_set  # noqa: E402
from nrinv.workflows import editing  # noqa: E402

SCORES = ("target", "preserved", "all_kept", "psnr", "preservation")


def choose(sweep: list[dict]) -> dict:
    """``benchmarks/edit_eval.py``'s rule."""
    ok = [s for s in sweep if s["target"] >= 0.9 and s["preserved"] >= 0.9]
    if ok:
        return max(ok, key=lambda s: s["psnr"])
    return max(sweep, key=lambda s: (min(s["target"], s["preserved"]), s["psnr"]))


def to_uint8(img) -> np.ndarray:
    img = img[0] if img.dim() == 4 else img
    return (img.detach().float().clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


class NrinvSystem:
    """nrinv's edit with one setting: inversion (cached per item and inversion setting) + regeneration."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.cache: dict = {}

    def inversion(self, item: dict, setting: dict):
        key = (item["render_seed"], setting.get("method"), setting.get("steps"), setting.get("iterations"))
        if key not in self.cache:
            t0 = time.perf_counter()
            with count_calls(self.pipe.unet) as count:
                inv = nrinv.invert(self.pipe, item["source_image"], item["source_caption"],
                                   method=setting.get("method"),
                                   num_inference_steps=setting.get("steps"), max_iterations=setting.get("iterations"),
                                   progress=False)
            self.cache[key] = (inv, count, time.perf_counter() - t0)
        return self.cache[key]

    def edit(self, item: dict, target: str, setting: dict):
        inv, inv_count, inv_s = self.inversion(item, setting)
        t0 = time.perf_counter()
        with count_calls(self.pipe.unet) as count:
            _, images = editing.regenerate(inv, target, strength=setting["strength"],
                                           edit_guidance_scale=setting["guidance"],
                                           guide_from_source=setting["guide_from_source"],
                                           mask_threshold=setting["mask_threshold"],
                                           keep_object=setting["keep_object"],
                                           mask_paste=setting.get("paste", False), output_type="pt")
        seconds = inv_s + time.perf_counter() - t0
        return to_uint8(images[0]), inv_count.calls + count.calls, inv_count.rows + count.rows, seconds


class BaselineSystem:
    def __init__(self, pipe, name: str, settings):
        self.name, self.settings = name, settings
        self.built = build_baseline(pipe, name, settings)

    def edit(self, item: dict, target: str, setting):
        t0 = time.perf_counter()
        image, count = run_baseline(self.built, self.name, item["source_image"], item["source_caption"], target,
                                    setting)
        return image, count.calls, count.rows, time.perf_counter() - t0


def score_items(system, setting, items: list[dict], identity: bool = False) -> list[dict]:
    rows, images = [], []
    for item in items:
        target = item["source_caption"] if identity else item["target_caption"]
        image, calls, batch_rows, seconds = system.edit(item, target, setting)
        images.append(image)
        rows.append({"render_seed": item["render_seed"], "changed": item["changed"], "calls": calls,
                     "rows": batch_rows, "time_s": round(seconds, 4)})
    if identity:
        for row, image, item in zip(rows, images, items):
            row["identity_psnr"] = psnr(image.astype(np.float64) / 255, item["source_image"].astype(np.float64) / 255)
        return rows
    for row, image, item, (read, _) in zip(rows, images, items, judge_confident(images)):
        row.update({k: v for k, v in score_edit(image, item, read).items() if k in SCORES})
    return rows


def mean(rows: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in rows]))


def summary(rows: list[dict]) -> dict:
    out = {k: mean(rows, k) for k in SCORES + ("calls", "rows", "time_s") if rows and k in rows[0]}
    out["n"] = len(rows)
    return out


# ------------------------------------------------------------------------------------------ grids
def nrinv_grid(model_kind: str, new: bool = False) -> list[dict]:
    """The settings tuned: ``new`` adds the levers of this round (the reconstruction's pixels outside the
    mask; for builtin:shapes 10 inversion steps instead of 20, within DiffEdit's call budget)."""
    if model_kind == "shapes-lcm":
        base = {"method": "edit_friendly", "steps": None, "iterations": None, "keep_object": True,
                "guide_from_source": False, "paste": new}
        masks = (0.3, 0.5) if new else (None, 0.3, 0.5)
        return [dict(base, strength=s, guidance=g, mask_threshold=m)
                for s, g, m in itertools.product((0.75, 1.0), (6.0, 8.0) if new else (4.0, 6.0, 8.0), masks)]
    base = {"method": None, "steps": 10 if new else None, "iterations": None, "keep_object": True,
            "guide_from_source": True, "paste": new}
    masks = (0.3, 0.5) if new else (None, 0.5)
    return [dict(base, strength=s, guidance=g, mask_threshold=m)
            for s, g, m in itertools.product((0.4, 0.5, 0.6), (1.5, 2.0), masks)]


def baseline_grid(name: str, sigma: str = "zero") -> list:
    if name == "diffedit":
        return [DiffEditSettings(inpaint_strength=s, guidance_scale=g, mask_thresholding_ratio=r)
                for s, g, r in itertools.product((0.4, 0.6, 0.8), (1.5, 2.0, 3.0), (3.0,))]
    return [LeditsSettings(edit_guidance_scale=g, edit_threshold=t, skip=k, final_sigmas_type=sigma)
            for g, t, k in itertools.product((3.0, 5.0, 8.0), (0.75, 0.9), (0.15,))]


def shipped_default(pipe) -> dict:
    d = editing.edit_defaults(pipe)
    adapter = nrinv.core.adapter_for(pipe)
    return {"method": adapter.defaults.edit_method, "iterations": adapter.defaults.edit_iterations,
            "strength": d["strength"],
            "guidance": d["edit_guidance_scale"], "guide_from_source": d["guide_from_source"],
            "mask_threshold": d["mask_threshold"], "keep_object": d["keep_object"],
            "steps": adapter.defaults.edit_steps, "paste": adapter.defaults.mask_paste}


def _se(values: list[float]) -> float:
    return statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")


def markdown_table(entries: list[tuple[str, dict, dict]], reference: dict | None = None) -> str:
    """Rows ``(label, system entry, its report)``; PSNRs as mean +- standard error over the items, and
    against ``reference`` (DiffEdit's entry) the paired difference per item."""
    head = ("| system | target | preserved | all kept | preservation PSNR dB | PSNR to exact target dB | "
            "identity edit dB (VAE ceiling) | UNet calls (batch rows) | time / edit s | vs DiffEdit: PSNR to target, "
            "preservation (paired, dB) | position / size: target, preserved |")
    lines = [head, "|---" * 11 + "|"]
    for label, e, rep in entries:
        rows = e["heldout_rows"]
        h = e["heldout"]
        cell = lambda k: f"{h[k]:.2f} ± {_se([r[k] for r in rows]):.2f}"  # noqa: E731
        vs = "—"
        if reference is not None and reference is not e:
            d = {k: [a[k] - b[k] for a, b in zip(rows, reference["heldout_rows"])] for k in ("psnr", "preservation")}
            vs = ", ".join(f"{statistics.mean(v):+.2f} ± {_se(v):.2f}" for v in d.values())
        geo = "n/a"
        if "geometry_by_attribute" in e:
            g = e["geometry_by_attribute"]
            geo = " / ".join(f"{g[a]['target']:.0%}, {g[a]['preserved']:.0%}" for a in GEOMETRY_ATTRIBUTES)
        ident = "n/a"
        if "identity_psnr" in e:
            ident = f"{e['identity_psnr']:.2f} ({rep.get('vae_ceiling', float('nan')):.2f})"
        lines.append(f"| {label} | {h['target']:.1%} | {h['preserved']:.1%} | {h['all_kept']:.1%} | "
                     f"{cell('preservation')} | {cell('psnr')} | {ident} | {h['calls']:.1f} ({h['rows']:.1f}) | "
                     f"{h['time_s']:.2f} | {vs} | {geo} |")
    return "\n".join(lines)


def print_table(specs: list[str]) -> None:
    """``FILE:SYSTEM[=LABEL]`` per row; DiffEdit's row (system ``diffedit``) is the paired reference."""
    entries, reference = [], None
    for spec in specs:
        path, _, rest = spec.partition(":")
        system, _, label = rest.partition("=")
        rep = json.loads(Path(path).read_text())
        entry = rep["systems"][system]
        entries.append((label or f"{system}, {rep['model']}", entry, rep))
        if system == "diffedit":
            reference = entry
    print(markdown_table(entries, reference))


def check(argv: list[str]) -> int:
    """``--check``: the shipped default (or ``--strength`` / ``--guidance`` for every edit) on tuning items,
    by attribute: ``--check --seed 4 --attributes color,shape,background --n 30``."""
    p = argparse.ArgumentParser(prog="edit_baselines.py --check")
    p.add_argument("--model", default="builtin:shapes")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--attributes", default="color,shape,background")
    p.add_argument("--n", type=int, default=30)
    p.add_argument("--strength", type=float, default=None)
    p.add_argument("--guidance", type=float, default=None)
    args = p.parse_args(argv)
    if args.seed in (0, 2):
        raise SystemExit("seeds 0 and 2 are the held-out items; tune on others")
    torch.set_num_threads(1)
    pipe = nrinv.load_pipeline(args.model, device="cpu")
    setting = shipped_default(pipe)
    for key in ("strength", "guidance"):
        if getattr(args, key) is not None:
            setting[key] = getattr(args, key)
    items = edit_set(args.n, seed=args.seed, attributes=tuple(args.attributes.split(",")))
    rows = score_items(NrinvSystem(pipe), setting, items)
    by = {a: summary([r for r in rows if r["changed"] == a]) for a in dict.fromkeys(r["changed"] for r in rows)}
    print(json.dumps({"setting": setting, "all": summary(rows), "by_attribute": by}, default=str))
    return 0


def main(argv=None) -> int:
    if argv is None and sys.argv[1:2] == ["--table"]:
        print_table(sys.argv[2:])
        return 0
    if argv is None and sys.argv[1:2] == ["--check"]:
        return check(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="builtin:shapes")
    p.add_argument("--systems", nargs="+", default=None,
                   help="nrinv-default nrinv-tuned nrinv-new diffedit ledits++ ledits++sigma_min (default: all for "
                        "builtin:shapes, "
                        "the nrinv ones for builtin:shapes-lcm)")
    p.add_argument("--tune-n", type=int, default=10)
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--geometry-n", type=int, default=20)
    p.add_argument("--no-identity", action="store_true")
    p.add_argument("--out", default="benchmarks/results/edit_baselines.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    pipe = nrinv.load_pipeline(args.model, device="cpu")
    kind = nrinv.core.adapter_for(pipe).defaults.kind
    nrinv_systems = ["nrinv-default", "nrinv-tuned", "nrinv-new"]
    systems = args.systems or (nrinv_systems + ["diffedit", "ledits++", "ledits++sigma_min"] if kind == "shapes"
                               else nrinv_systems)
    tune_items = edit_set(args.tune_n, seed=1)
    items = edit_set(args.n, seed=0)
    geometry = edit_set(args.geometry_n, seed=2, attributes=GEOMETRY_ATTRIBUTES) if args.geometry_n else []
    out_path = Path(args.out)
    report = json.loads(out_path.read_text()) if out_path.is_file() else {}
    report.update({"model": args.model, "kind": kind, "version": nrinv.__version__, "tune_items": args.tune_n,
                   "heldout_items": args.n, "geometry_items": args.geometry_n,
                   "machine": "2-core shared CPU, 1 torch thread"})
    report.setdefault("systems", {})
    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:7.1f}s] {msg}", flush=True)

    def save():
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report, indent=1, default=str) + "\n")

    nrinv_system = NrinvSystem(pipe)
    for name in systems:
        if name == "nrinv-default":
            system, setting, sweep = nrinv_system, shipped_default(pipe), None
        elif name in ("nrinv-tuned", "nrinv-new"):
            sweep = []
            for setting in nrinv_grid(kind, new=name == "nrinv-new"):
                sweep.append({"setting": setting, **summary(score_items(nrinv_system, setting, tune_items))})
                log(f"tune {name} {setting}: " + json.dumps({k: round(v, 3) for k, v in sweep[-1].items()
                                                             if k in SCORES + ('calls',)}))
            system, setting = nrinv_system, choose(sweep)["setting"]
        else:
            base, sigma = ("ledits++", "sigma_min") if name == "ledits++sigma_min" else (name, "zero")
            grid = baseline_grid(base, sigma)
            system = BaselineSystem(pipe, base, grid[0])
            sweep = []
            for s in grid:
                sweep.append({"setting": s, **summary(score_items(system, s, tune_items))})
                log(f"tune {name} {s}: " + json.dumps({k: round(v, 3) for k, v in sweep[-1].items()
                                                       if k in SCORES + ('calls',)}))
            setting = choose(sweep)["setting"]
        log(f"{name}: chosen {setting}")
        heldout = score_items(system, setting, items)
        entry = {"setting": setting, "sweep": sweep, "heldout": summary(heldout), "heldout_rows": heldout}
        log(f"{name} held-out: " + json.dumps({k: round(v, 3) for k, v in entry["heldout"].items()}))
        if not args.no_identity:
            ident = score_items(system, setting, items, identity=True)
            entry["identity_psnr"] = mean(ident, "identity_psnr")
            entry["identity_rows"] = ident
            log(f"{name} identity: {entry['identity_psnr']:.2f} dB")
        if geometry:
            geo = score_items(system, setting, geometry)
            entry["geometry"] = summary(geo)
            entry["geometry_by_attribute"] = {a: summary([r for r in geo if r["changed"] == a])
                                              for a in GEOMETRY_ATTRIBUTES}
            entry["geometry_rows"] = geo
            log(f"{name} geometry: " + json.dumps({k: round(v, 3) for k, v in entry["geometry"].items()}))
        report["systems"][name] = entry
        save()

    # the VAE's own ceiling on the held-out sources, and paired differences against DiffEdit
    adapter = nrinv.core.adapter_for(pipe)
    ceil = []
    for item in items:
        pix = to_tensor(load_image(item["source_image"]))
        with torch.no_grad():
            image = to_uint8(adapter.decode(adapter.encode(pix), (64, 64)))
        ceil.append(psnr(image.astype(np.float64) / 255, item["source_image"].astype(np.float64) / 255))
    report["vae_ceiling"] = float(np.mean(ceil))
    ref = report["systems"].get("diffedit")
    if ref:
        for entry in report["systems"].values():
            diffs = {}
            for key in ("psnr", "preservation"):
                d = [a[key] - b[key] for a, b in zip(entry["heldout_rows"], ref["heldout_rows"])]
                diffs[key] = {"mean": statistics.mean(d), "se": statistics.stdev(d) / len(d) ** 0.5}
            entry["vs_diffedit"] = diffs
    save()
    log(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
