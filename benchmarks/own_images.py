"""Edits, seeds and interpolation on a user's own images: `python benchmarks/own_images.py edits|seeds|interp`.

Measured on images hand-drawn with PIL (``benchmarks/drawn.py``: 6 scenes at 64x64, 96x64 and 256x256,
aliased edges, the user's own colour values, hand-made gradients and stripes) and on renders of the
shapes world, on ``--model`` (builtin:shapes or builtin:shapes-lcm), 1 torch thread.  Prints one
markdown row per (variant, image group) and writes ``--out`` JSON.

* ``edits``: per drawing, a colour, a shape and a background-colour edit (renders: ``edit_set``, the
  background edit changes its kind).  Per changed attribute: the judge reads the target value;
  ``kept``: it reads the attributes the edit must keep as in the source (background edits: the object's
  shape, colour, size, position; colour / shape edits: position, size, background kind and colour);
  ``preservation``: PSNR (dB) against the source over the pixels the edit must keep (background edits:
  the object, its edge left out; others: outside both objects, edges left out).
* ``seeds``: ``seed_from_images`` from 3 examples of one object (same shape and colour, other positions /
  backgrounds); variety = mean absolute pixel difference (of 255) between pairs of samples, the centroid
  sample excluded; fidelity = samples read with the examples' shape and colour.
* ``interp``: pairs differing in several attributes; a middle frame is valid when the judge reads
  every attribute with confidence >= 0.5 and the object colour differs from the background colour
  (the criterion of ``interpolation_eval.py``); endpoints should read as their scenes.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import nrinv  # noqa: E402
from drawn import (Drawing, dilate, draw, drawings, edit_target, erode, margin, object_mask,  # noqa: E402
                   to_judge_size)
from nrinv.shapes.editeval import judge_confident, kept_region, region_psnr  # noqa: E402
from nrinv.workflows import regenerate  # noqa: E402

OBJECT = ("shape", "color", "size", "position")
SCENE = ("position", "size", "background", "background_color")


def judge(images: list[np.ndarray]) -> list[tuple[dict, float]]:
    return judge_confident([to_judge_size(np.ascontiguousarray(im)) for im in images])


def to_uint8(img) -> np.ndarray:
    if isinstance(img, torch.Tensor):
        img = img[0] if img.dim() == 4 else img
        return (img.detach().float().clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return np.asarray(img)


# --------------------------------------------------------------------------------------------- items
def drawn_edit_items() -> list[dict]:
    items = []
    for k, d in enumerate(drawings()):
        src_mask = object_mask(d)
        for attr, changed in (("color", "color"), ("shape", "shape"), ("background_color", "background")):
            t = edit_target(d, attr, k)
            if changed == "background":
                region = erode(src_mask, margin(d))
            else:
                region = ~dilate(src_mask | object_mask(t), margin(d))
            items.append({"group": f"drawn {d.width}x{d.height}", "key": f"d{k}", "source_image": draw(d),
                          "source_caption": d.caption(), "target_caption": t.caption(), "changed": changed,
                          "source_attrs": d.attributes(), "target_attrs": t.attributes(), "region": region})
    return items


def render_edit_items(n: int) -> list[dict]:
    from nrinv.shapes.editset import edit_set
    items = []
    for i, it in enumerate(edit_set(n)):
        items.append({"group": "renders 64x64", "key": f"r{i}", "source_image": it["source_image"],
                      "source_caption": it["source_caption"], "target_caption": it["target_caption"],
                      "changed": it["changed"], "source_attrs": it["source"].as_dict(),
                      "target_attrs": it["target"].as_dict(), "region": kept_region(it)})
    return items


# --------------------------------------------------------------------------------------------- edits
VARIANTS = {
    # what nrinv.edit does with nothing passed
    "default": {},
    # the model's edit before keep_object (the object not kept; builtin:shapes: a global edit,
    # builtin:shapes-lcm: edit-friendly, strength 1, local mask 0.5)
    "before": {"keep_object": False},
    "global": {"mask_threshold": None, "keep_object": False},
    "mask 0.3 (all edits)": {"mask_threshold": 0.3},
    "mask 0.5 (all edits)": {"mask_threshold": 0.5},
}


def run_edits(pipe, args) -> list[dict]:
    items = (drawn_edit_items() if "drawn" in args.sets else []) + \
        (render_edit_items(args.renders) if "renders" in args.sets else [])
    if args.attributes:
        items = [it for it in items if it["changed"] in args.attributes]
    if args.skip_large:
        items = [it for it in items if it["group"] != "drawn 256x256"]
    variants = {v: VARIANTS[v] for v in args.variants}
    rows = []
    by_source: dict[str, list[dict]] = {}
    for it in items:
        by_source.setdefault(it["key"], []).append(it)
    for key, group in by_source.items():
        src = group[0]
        # the inversion nrinv.edit makes (the model's edit method, e.g. edit-friendly on builtin:shapes-lcm)
        inv = nrinv.invert(pipe, src["source_image"], src["source_caption"], seed=args.seed,
                           method=pipe.defaults.edit_method)
        for vname, kw in variants.items():
            d = nrinv.edit_defaults(pipe)
            kwargs = dict(strength=d["strength"], edit_guidance_scale=d["edit_guidance_scale"],
                          guide_from_source=d["guide_from_source"], mask_threshold=d["mask_threshold"],
                          keep_object=d["keep_object"])
            kwargs.update(kw)
            _, images = regenerate(inv, [it["target_caption"] for it in group], output_type="np", **kwargs)
            edited = [(np.clip(im, 0, 1) * 255).round().astype(np.uint8) for im in images]
            for it, img, (read, _) in zip(group, edited, judge(edited)):
                ch = it["changed"]
                attr = "background_color" if ch == "background" and it["group"] != "renders 64x64" else ch
                keep = OBJECT if ch == "background" else tuple(a for a in SCENE if a != ch)
                rows.append({"variant": vname, "group": it["group"], "changed": ch,
                             "target": float(read[attr] == it["target_attrs"][attr]),
                             "kept": float(all(read[a] == it["source_attrs"][a] for a in keep)),
                             "preservation": region_psnr(img, it["source_image"], it["region"])})
        print(f"  {key} done", file=sys.stderr, flush=True)
    return rows


def edit_table(rows: list[dict]) -> str:
    lines = ["| variant | images | edit | n | target read | kept | preservation dB |", "|---" * 7 + "|"]
    keys = sorted({(r["variant"], r["group"], r["changed"]) for r in rows},
                  key=lambda k: (list(VARIANTS).index(k[0]), k[1], k[2]))
    for v, g, c in keys:
        rs = [r for r in rows if (r["variant"], r["group"], r["changed"]) == (v, g, c)]
        lines.append(f"| {v} | {g} | {c} | {len(rs)} | {np.mean([r['target'] for r in rs]):.0%} | "
                     f"{np.mean([r['kept'] for r in rs]):.0%} | {np.mean([r['preservation'] for r in rs]):.2f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- seeds
_SEED_CONCEPTS = (("star", "orange", "large"), ("square", "yellow", "large"), ("circle", "green", "small"),
                  ("triangle", "red", "large"))
_SEED_SCENES = (("left", "plain", "blue"), ("center", "gradient", "white"), ("right", "striped", "black"),
                ("top", "plain", "purple"))


def seed_sets(args) -> list[dict]:
    """Per concept (shape, colour, size): 3 examples in other scenes, drawn at 64x64 and 96x64, or rendered."""
    from nrinv.shapes.editset import concept_examples
    sets = []
    if "drawn" in args.sets:
        for w, h in ((64, 64), (96, 64)):
            for c, (shape, color, size) in enumerate(_SEED_CONCEPTS):
                ex = [Drawing(shape, color, size, pos, bg, bgc, w, h)
                      for pos, bg, bgc in _SEED_SCENES[c % 2: c % 2 + 3] if bgc != color]
                sets.append({"group": f"drawn {w}x{h}", "shape": shape, "color": color, "size": size,
                             "examples": [draw(d) for d in ex]})
        for c, (shape, color, size) in enumerate(_SEED_CONCEPTS):  # alike: one drawing, shifted 2 px
            pos, bg, bgc = _SEED_SCENES[c % 2]
            one = draw(Drawing(shape, color, size, pos, bg, bgc if bgc != color else "white"))
            sets.append({"group": "drawn 64x64 alike", "shape": shape, "color": color, "size": size,
                         "examples": [one, np.roll(one, 2, 1), np.roll(one, -2, 0)],
                         "caption": Drawing(shape, color, size, pos, bg, bgc if bgc != color else "white").caption()})
    if "renders" in args.sets:
        for c in range(args.concepts):
            base, ex = concept_examples(c)
            sets.append({"group": "renders 64x64", "shape": base.shape, "color": base.color, "size": base.size,
                         "examples": ex})
    return sets


def run_seeds(pipe, args) -> list[dict]:
    rows = []
    for c, s in enumerate(seed_sets(args)):
        for prompt_kind in args.prompts:
            if prompt_kind == "caption" and "caption" not in s:
                continue
            prompt = "an object" if prompt_kind == "rare" else s["caption"] if prompt_kind == "caption" \
                else f"a {s['size']} {s['color']} {s['shape']}"
            for spread in args.spreads:
                kw = {"spread": float(spread) if spread[0].isdigit() else spread}
                res = nrinv.seed_from_images(pipe, s["examples"], prompt, n_samples=args.samples, seed=c, **kw)
                images = [np.asarray(im) for im in res.images]
                reads = judge(images)
                pairs = [float(np.abs(a.astype(float) - b.astype(float)).mean())
                         for a, b in itertools.combinations(images[1:], 2)]
                ex_pairs = [float(np.abs(a.astype(float) - b.astype(float)).mean())
                            for a, b in itertools.combinations(s["examples"], 2)]
                rows.append({"group": s["group"], "prompt": prompt_kind, "spread": spread,
                             "used_spread": res.settings["spread"], "variety": float(np.mean(pairs)),
                             "examples_variety": float(np.mean(ex_pairs)),
                             "fidelity": float(np.mean([r["shape"] == s["shape"] and r["color"] == s["color"]
                                                        for r, _ in reads])), "samples": len(images)})
        print(f"  concept {c} done", file=sys.stderr, flush=True)
    return rows


def seed_table(rows: list[dict]) -> str:
    lines = ["| spread | images | prompt | concepts x samples | variety (of 255) | examples' own variety | "
             "spread used (mean) | shape and colour kept |", "|---" * 8 + "|"]
    for key in sorted({(r["spread"], r["group"], r["prompt"]) for r in rows}):
        rs = [r for r in rows if (r["spread"], r["group"], r["prompt"]) == key]
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {len(rs)} x {rs[0]['samples']} | "
                     f"{np.mean([r['variety'] for r in rs]):.2f} | "
                     f"{np.mean([r['examples_variety'] for r in rs]):.1f} | "
                     f"{np.mean([float(r['used_spread']) for r in rs]):.2f} | "
                     f"{sum(r['fidelity'] * r['samples'] for r in rs):.0f}/{sum(r['samples'] for r in rs)} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- interpolation
_PAIRS = ((0, 1), (2, 3), (4, 5), (1, 4))


def interp_pairs(args) -> list[dict]:
    from drawn import BASE_SCENES
    from nrinv.shapes import render, sample_scene
    pairs = []
    if "drawn" in args.sets:
        for w, h in ((64, 64), (96, 64), (256, 256)):
            for i, j in (_PAIRS if w < 256 else _PAIRS[:2]):
                a, b = BASE_SCENES[i].replace(width=w, height=h), BASE_SCENES[j].replace(width=w, height=h)
                pairs.append({"group": f"drawn {w}x{h}", "a": draw(a), "b": draw(b), "pa": a.caption(),
                              "pb": b.caption(), "ta": a.attributes(), "tb": b.attributes()})
    if "renders" in args.sets:
        for k in range(args.pairs):
            sa, sb = sample_scene(90_000_000 + 2 * k), sample_scene(90_000_001 + 2 * k)
            pairs.append({"group": "renders 64x64", "a": render(sa, 90_000_000 + 2 * k),
                          "b": render(sb, 90_000_001 + 2 * k), "pa": sa.caption(), "pb": sb.caption(),
                          "ta": sa.as_dict(), "tb": sb.as_dict()})
    return pairs


INTERP_VARIANTS = {
    # before mix='outputs': lerp the prompt embeddings, the inversion's guidance along the path
    "before": {"mix": "embeddings", "path_guidance": "inversion"},
    "default": {},
}


def run_interp(pipe, args) -> list[dict]:
    rows = []
    for k, pair in enumerate(interp_pairs(args)):
        differ = sum(pair["ta"][a] != pair["tb"][a] for a in pair["ta"])
        for vname in args.interp_variants:
            kw = dict(INTERP_VARIANTS[vname])
            if kw.get("path_guidance") == "inversion":
                kw["path_guidance"] = pipe.defaults.guidance_scale
            res = nrinv.interpolate(pipe, pair["a"], pair["b"], [pair["pa"], pair["pb"]], n=args.frames,
                                    seed=args.seed, **kw)
            reads = judge([np.asarray(im) for im in res.images])
            middle = [float(conf >= 0.5 and read["color"] != read["background_color"]) for read, conf in reads[1:-1]]
            # clean: valid, and every attribute is one of the two images' (no third scene: purple between blue
            # and white, a brown blob)
            clean = [v * float(all(read[a] in (pair["ta"][a], pair["tb"][a]) for a in read))
                     for v, (read, _) in zip(middle, reads[1:-1])]
            rows.append({"variant": vname, "group": pair["group"], "differ": differ, "middle_valid": middle,
                         "middle_clean": clean,
                         "ends": 0.5 * (reads[0][0] == pair["ta"]) + 0.5 * (reads[-1][0] == pair["tb"])})
        print(f"  pair {k} done", file=sys.stderr, flush=True)
    return rows


def interp_table(rows: list[dict]) -> str:
    lines = ["| variant | images | pairs (attributes differing, mean) | middle frames valid | middle frames clean | "
             "endpoints read as their scenes |", "|---" * 6 + "|"]
    order = list(INTERP_VARIANTS)
    for key in sorted({(r["variant"], r["group"]) for r in rows}, key=lambda k: (order.index(k[0]), k[1])):
        rs = [r for r in rows if (r["variant"], r["group"]) == key]
        mids = [m for r in rs for m in r["middle_valid"]]
        clean = [m for r in rs for m in r["middle_clean"]]
        lines.append(f"| {key[0]} | {key[1]} | {len(rs)} ({np.mean([r['differ'] for r in rs]):.1f}) | "
                     f"{sum(mids):.0f}/{len(mids)} | {sum(clean):.0f}/{len(clean)} | "
                     f"{np.mean([r['ends'] for r in rs]):.0%} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["edits", "seeds", "interp"])
    p.add_argument("--model", default="builtin:shapes")
    p.add_argument("--sets", nargs="+", default=["drawn", "renders"])
    p.add_argument("--renders", type=int, default=18, help="render edit items (a third per attribute)")
    p.add_argument("--variants", nargs="+", default=["before", "default"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pairs", type=int, default=4, help="interp: render pairs")
    p.add_argument("--frames", type=int, default=5, help="interp: frames per pair (endpoints included)")
    p.add_argument("--interp-variants", nargs="+", default=["before", "default"])
    p.add_argument("--attributes", nargs="+", default=None, help="edits: only these changed attributes")
    p.add_argument("--skip-large", action="store_true", help="leave out the 256x256 drawings")
    p.add_argument("--concepts", type=int, default=4, help="seeds: render concepts")
    p.add_argument("--samples", type=int, default=4, help="seeds: samples per concept")
    p.add_argument("--prompts", nargs="+", default=["object"],
                   help="seeds: 'object' (its size, colour and shape words), 'caption' (the full caption; alike "
                   "examples only) and/or 'rare' ('an object')")
    p.add_argument("--spreads", nargs="+", default=["0.3", "auto"], help="seeds: spreads to compare (0.3: before)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from nrinv.core import adapter_for
    pipe = adapter_for(nrinv.load_pipeline(args.model, device="cpu"))
    t0 = time.perf_counter()
    if args.what == "edits":
        rows = run_edits(pipe, args)
        table = edit_table(rows)
    elif args.what == "seeds":
        rows = run_seeds(pipe, args)
        table = seed_table(rows)
    else:
        rows = run_interp(pipe, args)
        table = interp_table(rows)
    print(f"\n{args.what}, {args.model} ({time.perf_counter() - t0:.0f} s)\n\n{table}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
