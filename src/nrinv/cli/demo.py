"""`nrinv demo` (see ``nrinv.demo``)."""
from __future__ import annotations

from pathlib import Path

from .common import UsageError, check_folder, seed_value


def register(sub) -> None:
    p = sub.add_parser("demo", help="invert, reconstruct and edit a scene with the built-in model")
    p.add_argument("-o", "--output", default="nrinv-demo", help="folder for demo.png and summary.json "
                   "(the demo's own files there are replaced)")
    p.add_argument("--method", default=None)
    p.add_argument("--iterations", type=int, default=None)
    p.add_argument("--scene-seed", type=int, default=7)
    p.add_argument("--seed", type=seed_value, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd)


def _cmd(args) -> int:
    from ..core.methods import get_method
    from ..demo import run_demo

    if args.method:
        try:
            if not get_method(args.method).invert:
                raise ValueError(f"{args.method} is a baseline of nrinv bench, not a method of nrinv demo")
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    check_folder(Path(args.output), "-o")
    summary = run_demo(args.output, method=args.method, max_iterations=args.iterations, scene_seed=args.scene_seed,
                       seed=args.seed, progress=not args.quiet)
    if not args.quiet:
        rec = summary["reconstruction"]
        print(f"source: {summary['source_caption']}")
        print(f"reconstruction: {rec['psnr_db']} dB (VAE ceiling {rec['vae_ceiling_psnr_db']} dB), "
              f"{rec['nfe']} NFE, {rec['inversion_time_s']} s")
        for e in summary["edits"]:
            ok = all(v["ok"] for v in e["judge"].values())
            print(f"edit -> {e['target_caption']}: judge {'agrees' if ok else 'disagrees'}, "
                  f"{e['psnr_to_rendered_target_db']} dB to the rendered target")
        print(f"wrote {args.output}/demo.png and {args.output}/summary.json ({summary['timings_s']['total']} s)")
    return 0
