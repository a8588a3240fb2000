"""`nrinv bench`: the benchmark harness on the command line."""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from .common import UsageError, add_model_args, check_folder, image_size, load_model, seed_value


def cmd_bench(args) -> int:
    from ..bench.harness import parse_method, run_bench
    from ..bench.images import load_image_set
    from ..bench.report import markdown_table, summarize
    from ..errors import InputError

    from ..core.solvers import SOLVERS

    spec = ",".join(SOLVERS) if args.methods is None else args.methods
    methods = [m.strip() for m in re.split(r",(?![^\[]*\])", spec) if m.strip()]
    try:
        for m in methods:
            parse_method(m)
        iterations = [int(x) for x in args.iterations.split(",")]
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if any(i < 1 for i in iterations) or args.n_images < 1:
        raise UsageError("iterations and --n-images must be >= 1")
    if args.repeats < 0:
        raise UsageError("--repeats must be >= 0 (0: single untimed runs)")
    try:
        options = json.loads(args.method_options) if args.method_options else {}
    except json.JSONDecodeError as exc:
        raise UsageError(f"--method-options is not JSON: {exc}") from None
    if args.edits < 0:
        raise UsageError("--edits must be >= 0")
    if args.edit_strength is not None and not 0 < args.edit_strength <= 1:
        raise UsageError(f"--edit-strength must be in (0, 1], got {args.edit_strength}")
    baselines = [b.strip() for b in (args.edit_baselines or "").split(",") if b.strip()]
    if baselines:
        from ..bench.baselines import TUNED

        unknown = [b for b in baselines if b not in TUNED]
        if unknown:
            raise UsageError(f"unknown edit baseline {unknown[0]!r}; one of {', '.join(TUNED)}")
        if not args.edits:
            raise UsageError("--edit-baselines needs --edits N (the edit items they are scored on)")
    check_folder(Path(args.out), "--out")
    from ..bench.perceptual import load_clip_score, load_lpips

    try:  # before the model loads: a wrong folder fails in a second, and nothing is downloaded
        lpips = load_lpips(args.lpips) if args.lpips else None
        clip = load_clip_score(args.clip) if args.clip else None
    except InputError as exc:
        raise UsageError(str(exc)) from None
    pipe = load_model(args.model, args.dtype, args.device, args.cuda_graphs)
    if args.edits:  # before the output folder is claimed: a refused run leaves nothing behind
        from ..core.defaults import model_kind

        if model_kind(pipe) not in ("shapes", "shapes-lcm"):
            raise UsageError("--edits scores edits with the shapes world's judge: use it with --model builtin:shapes")
    from ..bench.report import claim_folder

    settings = {"model": args.model, "dtype": args.dtype, "images": args.images, "n_images": args.n_images,
                "size": list(args.size) if args.size else None, "seed": args.seed, "repeats": args.repeats,
                "method_options": options}
    try:  # before any work: rows of other settings are never merged into one table
        claim_folder(Path(args.out), json.loads(json.dumps(settings)))
    except InputError as exc:
        raise UsageError(str(exc)) from None
    from ..core.adapters import adapter_for

    size = adapter_for(pipe).default_size() if args.size is None else args.size
    try:
        images = load_image_set(args.images, size=size, n=args.n_images, seed=args.seed)
    except InputError as exc:
        raise UsageError(str(exc)) from None
    rows = run_bench(pipe, images, out=Path(args.out), model=args.model, methods=methods, iterations=iterations,
                     steps=args.steps, guidance=args.guidance, seed=args.seed, repeats=args.repeats,
                     method_options=options, progress=not args.quiet, lpips=lpips, clip=clip)
    if not args.quiet:
        print(markdown_table(summarize(rows)))
        print(f"wrote {args.out}/results.csv, results.json and plots")
    if args.edits:
        from ..bench.edits import markdown_edit_table, run_edit_bench, summarize_edits
        from ..io.files import save_json

        edit_rows = run_edit_bench(pipe, out=Path(args.out), methods=methods, iterations=iterations, n=args.edits,
                                   steps=args.steps, strength=args.edit_strength,
                                   edit_guidance_scale=args.edit_guidance,
                                   guide_from_source=args.guide_from_source,
                                   mask_threshold=-1.0 if args.edit_mask_threshold is None
                                   else (args.edit_mask_threshold or None), keep_object=args.edit_keep_object,
                                   seed=args.seed, method_options=options, lpips=lpips, clip=clip,
                                   progress=not args.quiet, baselines=baselines)
        summary = summarize_edits(edit_rows)
        save_json({"summary": summary, "rows": edit_rows}, Path(args.out) / "edits.json")
        if not args.quiet:
            print(markdown_edit_table(summary))
            print(f"wrote {args.out}/edits.csv and edits.json")
    return 0


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmark inversion methods: quality vs NFE, time and memory")
    p.add_argument("--methods", default=None,
                   help="comma-separated; a labelled variant takes options: gnri[lam=0.01] "
                        "(default: every method of `nrinv methods`)")
    p.add_argument("--iterations", default="1,2,3,5", help="comma-separated iteration budgets per step")
    p.add_argument("--images", default="shapes", help="shapes | skimage | folder with captions.csv/jsonl")
    p.add_argument("--n-images", type=int, default=4)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--seed", type=seed_value, default=0)
    p.add_argument("--repeats", type=int, default=3,
                   help="timed repeats (median) on the first image; 0: no warm-up or repeats")
    p.add_argument("--size", type=image_size, default=None, metavar="HxW",
                   help="image size HxW: height then width (sizes in every message are HxW)")
    p.add_argument("--method-options", default=None, help='JSON, e.g. {"gnri": {"lam": 0.0}}')
    p.add_argument("--out", default="bench-results", help="output folder (re-running resumes)")
    p.add_argument("--edits", type=int, default=0, metavar="N",
                   help="also score N edits of the built-in edit set (judge success, preservation, PSNR to target)")
    p.add_argument("--edit-strength", type=float, default=None, help="edit strength (default: the model's)")
    p.add_argument("--edit-guidance", type=float, default=None, help="edit guidance (default: the model's)")
    p.add_argument("--edit-mask-threshold", type=float, default=None, metavar="T",
                   help="local edits masked at T, e.g. 0.3; 0: global edits (default: the model's)")
    p.add_argument("--edit-keep-object", action=argparse.BooleanOptionalAction, default=None,
                   help="background edits keep the object (default: the model's)")
    p.add_argument("--guide-from-source", action=argparse.BooleanOptionalAction, default=None,
                   help="edits guide away from the source prompt instead of the empty one (default: the model's)")
    p.add_argument("--edit-baselines", default=None, metavar="NAMES",
                   help="with --edits: also edit the items with diffusers' pipelines built from the model's own "
                        "components at their tuned settings, comma-separated: diffedit, ledits++, ledits++sigma_min")
    p.add_argument("--lpips", default=None, metavar="DIR",
                   help="LPIPS from local weights: torchvision AlexNet state dict + lpips alex.pth (never downloads)")
    p.add_argument("--clip", default=None, metavar="DIR",
                   help="CLIP score from a local transformers CLIP folder (never downloads)")
    add_model_args(p)
    p.set_defaults(func=cmd_bench)
