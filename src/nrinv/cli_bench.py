"""`nrinv bench`: the benchmark harness on the command line."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from .cli import UsageError, add_model_args, load_model


def cmd_bench(args) -> int:
    from .bench import load_image_set, markdown_table, run_bench, summarize
    from .imageio import InputError
    from .solvers import get_solver

    from .bench import parse_method

    methods = [m.strip() for m in re.split(r",(?![^\[]*\])", args.methods) if m.strip()]
    try:
        for m in methods:
            parse_method(m)
        iterations = [int(x) for x in args.iterations.split(",")]
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if any(i < 1 for i in iterations) or args.n_images < 1 or args.repeats < 1:
        raise UsageError("iterations, --n-images and --repeats must be >= 1")
    try:
        options = json.loads(args.method_options) if args.method_options else {}
    except json.JSONDecodeError as exc:
        raise UsageError(f"--method-options is not JSON: {exc}") from None
    pipe = load_model(args.model, args.dtype, args.device)
    from .adapters import adapter_for

    size = adapter_for(pipe).default_size() if args.size is None else args.size
    try:
        images = load_image_set(args.images, size=size, n=args.n_images, seed=args.seed)
    except InputError as exc:
        raise UsageError(str(exc)) from None
    rows = run_bench(pipe, images, out=Path(args.out), model=args.model, methods=methods, iterations=iterations,
                     steps=args.steps, guidance=args.guidance, seed=args.seed, repeats=args.repeats,
                     method_options=options, progress=not args.quiet)
    if not args.quiet:
        print(markdown_table(summarize(rows)))
        print(f"wrote {args.out}/results.csv, results.json and plots")
    return 0


def register(sub) -> None:
    from .cli import _size

    p = sub.add_parser("bench", help="benchmark inversion methods: quality vs NFE, time and memory")
    p.add_argument("--methods", default="ddim,fixed_point,renoise,gnri,gnri_grad,anderson,newton_krylov",
                   help="comma-separated; a labelled variant takes options: gnri[lam=0.01]")
    p.add_argument("--iterations", default="1,2,3,5", help="comma-separated iteration budgets per step")
    p.add_argument("--images", default="shapes", help="shapes | skimage | folder with captions.csv/jsonl")
    p.add_argument("--n-images", type=int, default=4)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (median) on the first image")
    p.add_argument("--size", type=_size, default=None, metavar="HxW")
    p.add_argument("--method-options", default=None, help='JSON, e.g. {"gnri": {"lam": 0.0}}')
    p.add_argument("--out", default="bench-results", help="output folder (re-running resumes)")
    add_model_args(p)
    p.set_defaults(func=cmd_bench)
