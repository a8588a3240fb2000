"""Quality gates of the shapes model, measured with the judge.

    python -m nrinv.shapes.evaluate [--model DIR] [--n 200] [--guidance 4] [--steps 20] [--threads N] [--write]
    python -m nrinv.shapes.evaluate --model model_lcm --steps 2 4 8 --guidance 4 5.5 [--caption-seed0 91010000 --seed 1]

Generates ``n`` held-out captions with the stock pipeline the model folder names (``StableDiffusionPipeline``
with DDIM, 20 steps by default, or ``LatentConsistencyModelPipeline``, 4 steps by default) and reports
per-attribute judged accuracy, plus the VAE held-out PSNR and the judge's own accuracy.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from .imaging import save_grid
from .judge import judge_accuracy, judge_batch, score
from .world import render, sample_scene

EVAL_SEED0 = 91_000_000  # held-out captions (not in the training pool): the gate set
SECOND_EVAL_SEED0 = 91_010_000  # a second held-out caption set (checks that nothing is tuned on the gate set)
VAE_VAL_SEED0 = 90_000_000


def generate_images(pipe, captions, steps=20, guidance=4.0, seed=0, batch=100):
    import torch

    out = []
    for i in range(0, len(captions), batch):
        g = torch.Generator().manual_seed(seed + i)
        r = pipe(list(captions[i : i + batch]), num_inference_steps=steps, guidance_scale=guidance, generator=g,
                 output_type="np")
        out.append(np.clip(np.round(r.images * 255), 0, 255).astype(np.uint8))
    return np.concatenate(out)


def vae_heldout_psnr(vae, n=200, seed0=VAE_VAL_SEED0):
    import torch

    imgs = np.stack([render(sample_scene(seed0 + i), seed0 + i) for i in range(n)])
    with torch.no_grad():
        x = torch.from_numpy(imgs).float().permute(0, 3, 1, 2) / 127.5 - 1
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample
    rec = ((rec.clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 1).numpy()
    mse = ((rec - imgs.astype(np.float64)) ** 2).reshape(n, -1).mean(1)
    return float(np.mean(10 * np.log10(255**2 / np.maximum(mse, 1e-10))))


def evaluate_model(model_dir=None, n=200, guidances=None, steps=None, seed=0, log=print, write=None,
                   grid_dir=None, caption_seed0=EVAL_SEED0, extras=True):
    """Judged per-attribute accuracy of a model folder on ``n`` held-out captions, with the stock pipeline its
    ``model_index.json`` names (``StableDiffusionPipeline`` or ``LatentConsistencyModelPipeline``).

    ``steps``: an int or a list (default: the class's default steps); ``guidances``: a list (default: the class's
    default guidance).  The result holds ``by_steps[str(steps)][str(guidance)]`` and, for the first ``steps``
    value, ``by_guidance`` (the layout of the base model's ``metrics.json``).  ``extras``: also the VAE held-out
    PSNR, the judge's own accuracy and the folder size.
    """
    from . import MODEL_DIR, generation_defaults, pipeline_class_name, stock_pipeline

    t0 = time.time()
    model_dir = Path(model_dir) if model_dir else MODEL_DIR
    default_steps, default_guidance = generation_defaults(model_dir)
    pipe = stock_pipeline(model_dir=model_dir)
    steps_list = [default_steps] if steps is None else ([steps] if isinstance(steps, int) else list(steps))
    guidances = list(guidances) if guidances else [default_guidance]
    scenes = [sample_scene(caption_seed0 + i) for i in range(n)]
    caps = [s.caption() for s in scenes]
    truths = [s.as_dict() for s in scenes]
    res = {"n_captions": n, "steps": steps_list[0], "scheduler": type(pipe.scheduler).__name__.replace("Scheduler", ""),
           "pipeline": pipeline_class_name(model_dir), "caption_seed0": caption_seed0, "generation_seed": seed,
           "by_guidance": {}, "by_steps": {}}
    for st in steps_list:
        res["by_steps"][str(st)] = {}
        for g in guidances:
            imgs = generate_images(pipe, caps, steps=st, guidance=g, seed=seed)
            acc = score(judge_batch(imgs), truths)
            res["by_steps"][str(st)][str(g)] = acc
            log(f"steps {st} guidance {g}: " + ", ".join(f"{k}={v:.3f}" for k, v in acc.items())
                + f" ({time.time() - t0:.0f}s)")
            if grid_dir is not None:
                save_grid(imgs[:64], Path(grid_dir) / f"eval_s{st}_g{g}.png")
    res["by_guidance"] = res["by_steps"][str(steps_list[0])]
    res["default_guidance"] = default_guidance
    if str(default_guidance) in res["by_guidance"]:
        res["gate_at_default_guidance"] = res["by_guidance"][str(default_guidance)]
    if extras:
        res["vae_heldout_psnr_db"] = vae_heldout_psnr(pipe.vae)
        res["judge_accuracy_fresh_renders"] = judge_accuracy(1000)
        res["model_folder_mb"] = round(sum(f.stat().st_size for f in model_dir.rglob("*") if f.is_file()) / 2**20, 2)
        log(f"vae psnr {res['vae_heldout_psnr_db']:.2f} dB; judge {res['judge_accuracy_fresh_renders']}")
    if write:
        Path(write).write_text(json.dumps(res, indent=2))
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None,
                   help="model folder, or a folder name inside the package (model, model_lcm); default: model")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--guidance", type=float, nargs="*", default=None)
    p.add_argument("--steps", type=int, nargs="*", default=None,
                   help="sampling steps, one or more (default: 20 for the base model, 4 for the LCM)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--write", action="store_true", help="write metrics.json into the model folder")
    p.add_argument("--no-extras", action="store_true", help="skip VAE PSNR / judge accuracy / folder size")
    p.add_argument("--grid-dir", default=None)
    p.add_argument("--caption-seed0", type=int, default=EVAL_SEED0,
                   help=f"first scene seed of the held-out captions (default {EVAL_SEED0}, the gate set; "
                        f"{SECOND_EVAL_SEED0}: the second set)")
    p.add_argument("--seed", type=int, default=0, help="generation noise seed")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads or os.cpu_count() or 1)
    from . import MODEL_DIR

    mdir = resolve_model_dir(a.model) if a.model else MODEL_DIR
    res = evaluate_model(mdir, a.n, a.guidance, a.steps, seed=a.seed,
                         write=(mdir / "metrics.json") if a.write else None,
                         grid_dir=a.grid_dir, caption_seed0=a.caption_seed0, extras=not a.no_extras)
    print(json.dumps(res, indent=1))


def resolve_model_dir(model: str) -> Path:
    """``model`` as a path if it exists, else as a folder of the package (``model``, ``model_lcm``)."""
    path = Path(model)
    if path.exists():
        return path
    inside = Path(__file__).resolve().parent / model
    if inside.exists():
        return inside
    raise FileNotFoundError(f"no model folder {model!r} (neither a path nor nrinv/shapes/{model})")


if __name__ == "__main__":
    main()
