"""Edit metrics of the benchmark harness, on the built-in shapes model's edit set.

For each item of :func:`nrinv.shapes.editset.edit_set` (a source render, a caption changing one
attribute, the exactly rendered target) and each method x iteration budget: invert the source with
its caption, regenerate the last ``strength`` of the schedule with the target caption (the math of
:func:`nrinv.edit`), and score the edited image with the shapes judge (target attribute read,
position/size/background preserved; :mod:`nrinv.shapes.editeval`), its PSNR to the rendered
target, and, when their local weights are given, LPIPS to the target and CLIP score to the target
caption.  Rows go to ``edits.csv`` after each item; re-running into the same folder resumes.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from .harness import budgets, inversion_options, parse_method, perceptual_scores
from .report import mean_present, read_rows, write_rows
from ..metrics import as_numpy

__all__ = ["EDIT_COLUMNS", "run_edit_bench", "summarize_edits", "markdown_edit_table"]

EDIT_COLUMNS = ["item", "changed", "source_caption", "target_caption", "method", "iterations", "steps", "strength",
                "guidance", "guide_from_source", "mask_threshold", "keep_object", "nfe", "target", "preserved",
                "all_kept", "psnr_target", "preservation", "lpips_target", "clip_target", "wall_s", "batch_rows"]


def _flag(value: Any) -> bool:
    """A boolean column as written (``True``) or read back from the CSV (``"True"``)."""
    return str(value) in ("True", "1", "true")


def _threshold(value: Any) -> Optional[float]:
    """The mask threshold column as written (None / a float) or read back (``""`` / ``"0.3"``)."""
    return None if value in (None, "", "None") else float(value)


def _key(row: dict) -> tuple:
    return (int(row["item"]), row["method"], int(row["iterations"]), int(row["steps"]), float(row["strength"]),
            float(row["guidance"]), _flag(row["guide_from_source"]), _threshold(row.get("mask_threshold")),
            _flag(row.get("keep_object")))


def run_edit_bench(
    pipe: Any,
    *,
    out: Path,
    methods: Sequence[str],
    iterations: Sequence[int],
    n: int,
    steps: Optional[int] = None,
    strength: Optional[float] = None,
    edit_guidance_scale: Optional[float] = None,
    guide_from_source: Optional[bool] = None,
    mask_threshold: Optional[float] = -1.0,
    keep_object: Optional[bool] = None,
    seed: int = 0,
    method_options: Optional[dict[str, dict]] = None,
    lpips: Any = None,
    clip: Any = None,
    progress: bool = True,
    baselines: Sequence[str] = (),
) -> list[dict]:
    """Run (or resume) the edit benchmark on ``n`` items into ``out/edits.csv``; returns all rows.

    ``baselines``: also edit every item with these pipelines diffusers ships, built from ``pipe``'s
    components at their settings tuned on other items (``nrinv.bench.baselines.TUNED``: "diffedit",
    "ledits++", "ledits++sigma_min"); their rows' ``method`` is the name, ``nfe`` the denoiser calls and
    ``batch_rows`` the rows those calls carried (counted by a hook, as for nrinv's rows).

    ``strength`` / ``edit_guidance_scale`` / ``guide_from_source`` default to
    :func:`nrinv.edit_defaults`; inversion
    runs at the pipeline's own default guidance (the source prompt describes the image).
    """
    from tqdm.auto import tqdm

    from ..api import invert
    from .baselines import TUNED, build_baseline, count_calls, run_baseline
    from ..core.adapters import adapter_for
    from ..workflows import edit_defaults, regenerate
    from ..shapes.editeval import judge_confident, score_edit
    from ..shapes.editset import edit_set

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    adapter = adapter_for(pipe)
    defaults = edit_defaults(adapter)
    strength = float(defaults["strength"] if strength is None else strength)
    target_guidance = float(defaults["edit_guidance_scale"] if edit_guidance_scale is None else edit_guidance_scale)
    contrast = bool(defaults["guide_from_source"] if guide_from_source is None else guide_from_source)
    # -1: the model's default (None there means a global edit)
    threshold = defaults["mask_threshold"] if mask_threshold == -1.0 else mask_threshold
    keep = bool(defaults["keep_object"] if keep_object is None else keep_object)
    steps = int(adapter.defaults.num_inference_steps if steps is None else steps)
    inv_guidance = float(adapter.defaults.guidance_scale)
    parsed = {m: parse_method(m) for m in methods}
    rows = read_rows(out / "edits.csv")
    done = {_key(r) for r in rows}
    items = edit_set(n, seed=seed)
    jobs = [(i, m, it) for i in range(n) for m in methods for it in budgets(parsed[m][0], iterations)]
    bar = tqdm(jobs, desc="edits", disable=not progress)
    for i, method, its in bar:
        if (i, method, its, steps, strength, target_guidance, contrast, threshold, keep) in done:
            continue
        item = items[i]
        bar.set_postfix(item=i, method=method, it=its)
        inversion = inversion_options(parsed[method], its, steps=steps, guidance=inv_guidance, seed=seed,
                                      method_options=method_options)
        t0 = time.perf_counter()
        with count_calls(adapter.pipe.unet) as count:
            inv = invert(adapter, item["source_image"], item["source_caption"], inversion=inversion, progress=False)
            _, images = regenerate(inv, item["target_caption"], strength=strength,
                                   edit_guidance_scale=target_guidance, guide_from_source=contrast,
                                   mask_threshold=threshold, keep_object=keep, output_type="pt")
        wall = time.perf_counter() - t0
        edited = as_numpy(images[0])
        as_uint8 = (edited * 255).round().astype(np.uint8)
        read, _ = judge_confident([as_uint8])[0]
        scores = score_edit(as_uint8, item, read)
        extra = perceptual_scores(lpips, clip, edited, item["target_image"].astype(np.float64) / 255,
                                  item["target_caption"])
        rows.append({
            "item": i, "changed": item["changed"], "source_caption": item["source_caption"],
            "target_caption": item["target_caption"], "method": method, "iterations": its, "steps": steps,
            "strength": strength, "guidance": target_guidance, "guide_from_source": contrast,
            "mask_threshold": "" if threshold is None else threshold, "keep_object": keep, "nfe": inv.nfe,
            "target": scores["target"],
            "preserved": scores["preserved"], "all_kept": scores["all_kept"], "psnr_target": round(scores["psnr"], 3),
            "preservation": round(scores["preservation"], 3), "lpips_target": extra["lpips"],
            "clip_target": extra["clip_score"], "wall_s": round(wall, 4), "batch_rows": count.rows,
        })
        write_rows(rows, out / "edits.csv", EDIT_COLUMNS)
    for name in baselines:
        if name not in TUNED:
            from ..errors import InputError

            raise InputError(f"unknown edit baseline {name!r}; one of {', '.join(TUNED)}")
        kind, settings = TUNED[name]
        built = build_baseline(adapter.pipe, kind, settings)  # the diffusers pipeline, as the CLI passes an adapter
        strength_b, guidance_b, steps_b = _baseline_knobs(settings)
        for i in range(n):
            if (i, name, 0, steps_b, strength_b, guidance_b, False, None, False) in done:
                continue
            item = items[i]
            t0 = time.perf_counter()
            image, count = run_baseline(built, kind, item["source_image"], item["source_caption"],
                                        item["target_caption"], settings, seed=seed)
            wall = time.perf_counter() - t0
            read, _ = judge_confident([image])[0]
            scores = score_edit(image, item, read)
            extra = perceptual_scores(lpips, clip, image.astype(np.float64) / 255,
                                      item["target_image"].astype(np.float64) / 255, item["target_caption"])
            rows.append({
                "item": i, "changed": item["changed"], "source_caption": item["source_caption"],
                "target_caption": item["target_caption"], "method": name, "iterations": 0, "steps": steps_b,
                "strength": strength_b, "guidance": guidance_b, "guide_from_source": False, "mask_threshold": "",
                "keep_object": False, "nfe": count.calls, "target": scores["target"],
                "preserved": scores["preserved"], "all_kept": scores["all_kept"],
                "psnr_target": round(scores["psnr"], 3), "preservation": round(scores["preservation"], 3),
                "lpips_target": extra["lpips"], "clip_target": extra["clip_score"], "wall_s": round(wall, 4),
                "batch_rows": count.rows,
            })
            write_rows(rows, out / "edits.csv", EDIT_COLUMNS)
    return rows


def _baseline_knobs(settings: Any) -> tuple[float, float, int]:
    """(strength, guidance, steps) of a baseline's settings, for the table's columns."""
    if hasattr(settings, "inpaint_strength"):
        return float(settings.inpaint_strength), float(settings.guidance_scale), int(settings.num_inference_steps)
    return 1.0 - float(settings.skip), float(settings.edit_guidance_scale), int(settings.num_inversion_steps)


def summarize_edits(rows: Sequence[dict]) -> list[dict]:
    """Means per (method, iterations, strength, guidance, guide_from_source, mask_threshold, keep_object),
    with the target rate and the preservation per changed attribute (a background edit must keep the
    object, a colour or shape edit the rest); ``preservation`` is the mean over the rows that have it."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        key = (r["method"], int(r["iterations"]), float(r["strength"]), float(r["guidance"]),
               _flag(r["guide_from_source"]), _threshold(r.get("mask_threshold")), _flag(r.get("keep_object")))
        groups.setdefault(key, []).append(r)
    out = []
    for (method, its, strength, guidance, contrast, threshold, keep), rs in sorted(
            groups.items(), key=lambda kv: tuple(-1 if v is None else v for v in kv[0])):
        by_attr, kept_by_attr = {}, {}
        for attr in sorted({r["changed"] for r in rs}):
            sel = [float(r["target"]) for r in rs if r["changed"] == attr]
            by_attr[attr] = statistics.mean(sel)
            kept_by_attr[attr] = mean_present([r for r in rs if r["changed"] == attr], "preservation")
        out.append({
            "method": method, "iterations": its, "strength": strength, "guidance": guidance,
            "guide_from_source": contrast, "mask_threshold": threshold, "keep_object": keep, "n": len(rs),
            "nfe": statistics.mean(float(r["nfe"]) for r in rs),
            **{k: statistics.mean(float(r[k]) for r in rs) for k in ("target", "preserved", "all_kept", "psnr_target")},
            "preservation": mean_present(rs, "preservation"),
            "lpips_target": mean_present(rs, "lpips_target"), "clip_target": mean_present(rs, "clip_target"),
            "target_by_attribute": by_attr, "preservation_by_attribute": kept_by_attr,
        })
    return out


def markdown_edit_table(summary: Sequence[dict]) -> str:
    titles = {"lpips_target": "LPIPS to target", "clip_target": "CLIP score (target caption)"}
    extra = [k for k in titles if any(s.get(k) is not None for s in summary)]
    lines = ["| method | iterations | strength / guidance | NFE | target attribute | preserved (pos/size/bg) | "
             "all other attributes | preservation dB | PSNR to target dB | " + "".join(f"{titles[k]} | " for k in extra)
             + "target by attribute | preservation dB by attribute |", "|---" * (11 + len(extra)) + "|"]
    for s in summary:
        cells = "".join("n/a | " if s.get(k) is None else f"{s[k]:.3f} | " for k in extra)
        attrs = ", ".join(f"{a} {v:.0%}" for a, v in s["target_by_attribute"].items())
        kept_attrs = ", ".join(f"{a} {v:.2f}" for a, v in s.get("preservation_by_attribute", {}).items()
                               if v is not None)
        setting = f"{s['strength']:g} / {s['guidance']:g}" + (" vs source" if s["guide_from_source"] else "") \
            + (f", mask {s['mask_threshold']:g}" if s.get("mask_threshold") is not None else "") \
            + (", keep object" if s.get("keep_object") else "")
        kept = "n/a" if s.get("preservation") is None else f"{s['preservation']:.2f}"
        lines.append(f"| {s['method']} | {s['iterations']} | {setting} | {s['nfe']:.0f} | {s['target']:.0%} | "
                     f"{s['preserved']:.0%} | {s['all_kept']:.0%} | {kept} | {s['psnr_target']:.2f} | {cells}{attrs} | "
                     f"{kept_attrs or 'n/a'} |")
    return "\n".join(lines)
