"""`nrinv invert-dir`: resumable batch inversion of a folder (``accelerate launch`` splits it)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import UsageError, add_inversion_args, add_model_args, image_size, inversion_args, load_model


def cmd_invert_dir(args) -> int:
    from ..batch import invert_dir, list_images, read_captions
    from ..errors import InputError
    from ..io.files import writable_target
    from ..loading import resolve_device

    if args.prompt is None and args.captions is None:
        raise UsageError("give --prompt (one caption for all) or --captions FILE (.csv or .jsonl)")
    if args.prompt is not None and not args.prompt.strip():
        raise UsageError("the prompt is empty")
    if args.batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    inversion = inversion_args(args)
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} is a file; give the output folder")
    problem = writable_target(out / ".nrinv-write-check")
    if problem:
        raise UsageError(problem)
    try:
        list_images(Path(args.folder))
        captions = read_captions(Path(args.captions)) if args.captions else None
        wanted = resolve_device(args.device)
    except (InputError, ValueError) as exc:
        raise UsageError(str(exc)) from None

    try:
        from accelerate import PartialState

        state = PartialState(cpu=wanted.type == "cpu")
        rank, world = state.process_index, state.num_processes
        # under `accelerate launch` each process takes its own GPU (cuda:rank) unless told otherwise
        device = str(state.device) if args.device in ("auto", "cuda") else args.device
    except Exception:  # accelerate missing or not launched: one process
        state, rank, world, device = None, 0, 1, str(wanted)
    pipe = load_model(args.model, args.dtype, device, args.cuda_graphs)
    summary = invert_dir(pipe, Path(args.folder), Path(args.output), prompt=args.prompt, captions=captions,
                         model=args.model, batch_size=args.batch_size, rank=rank, world_size=world,
                         retry_failed=args.retry_failed, size=args.resize, max_pixels=args.max_pixels,
                         progress=not args.quiet, inversion=inversion)
    if not args.quiet:
        print(f"[process {rank}/{world}] {summary.line()}")
    for name, reason in summary.failed.items():
        print(f"failed: {name}: {reason}", file=sys.stderr)
    if state is not None and world > 1:
        state.wait_for_everyone()
    return 0 if summary.ok else 1


def register(sub) -> None:
    from ..io.limits import DEFAULT_MAX_PIXELS

    p = sub.add_parser("invert-dir", help="invert every image in a folder (resumable; accelerate-aware)")
    p.add_argument("folder")
    p.add_argument("-o", "--output", required=True, help="output folder (latents, sidecars, manifest)")
    p.add_argument("--prompt", default=None, help="one caption for every image")
    p.add_argument("--captions", default=None, help="captions file: .csv (file,caption) or .jsonl")
    p.add_argument("--batch-size", type=int, default=4, help="images per network call")
    add_inversion_args(p)
    p.add_argument("--resize", type=image_size, default=None, metavar="HxW",
                   help="resize every image first to HxW: height then width (sizes in every message are HxW)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS)
    p.add_argument("--skip-failed", dest="retry_failed", action="store_false",
                   help="do not retry images that failed in an earlier run (they still count as failed)")
    p.add_argument("--retry-failed", dest="retry_failed", action="store_true", help=argparse.SUPPRESS)
    add_model_args(p)
    p.set_defaults(func=cmd_invert_dir)
