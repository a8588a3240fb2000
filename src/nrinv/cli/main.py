"""The ``nrinv`` command line.  Bad input exits with status 2 and a one-line reason, writing nothing."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from .._version import __version__

DEFAULT_MODEL = "builtin:shapes"
DTYPES = ("float32", "float16", "bfloat16")


class UsageError(Exception):
    """Bad input: reported as one line, exit status 2."""


def parse_option(items: Sequence[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise UsageError(f"--option expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _dtype(name: str):
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def check_output(path: Path, force: bool) -> None:
    """Refuse to overwrite without --force, before any work is done."""
    if path.exists() and not force:
        raise UsageError(f"{path} exists; pass --force to overwrite")
    if path.is_dir():
        raise UsageError(f"{path} is a folder; give a file name")


def load_model(model: str, dtype: str, device: str):
    """Load a pipeline for a subcommand; load errors become UsageError (exit 2)."""
    from ..core.adapters import load_pipeline

    try:
        return load_pipeline(model, torch_dtype=_dtype(dtype), device=device)
    except (FileNotFoundError, OSError, ValueError) as exc:
        raise UsageError(str(exc).splitlines()[0]) from None


def _solver_options(args) -> tuple[str, dict]:
    from ..core.solvers import get_solver, make_options

    try:
        get_solver(args.method)
        overrides = parse_option(args.option)
        if args.iterations is not None:
            overrides["max_iterations"] = args.iterations
        make_options(args.method, overrides)  # validate now, before any work
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None
    return args.method, overrides


def cmd_invert(args) -> int:
    import torch

    from ..io.images import InputError, load_image, save_json, save_latent
    from ..core.inversion import invert

    if not args.prompt or not args.prompt.strip():
        raise UsageError("the prompt is empty; describe the image with --prompt")
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")
    method, options = _solver_options(args)
    image_path = Path(args.image)
    out = Path(args.output) if args.output else image_path.with_suffix(".latent.safetensors")
    sidecar = out.with_suffix(".json")
    check_output(out, args.force)
    check_output(sidecar, args.force)
    notes: list[str] = []
    try:
        image = load_image(image_path, max_pixels=args.max_pixels, notes=notes, size=args.resize)
    except InputError as exc:
        raise UsageError(str(exc)) from None
    for note in notes:
        print(f"note: {note}", file=sys.stderr)

    pipe = load_model(args.model, args.dtype, args.device)
    try:
        result = invert(pipe, image, args.prompt, method=method, options=options,
                        num_inference_steps=args.steps, guidance_scale=args.guidance, seed=args.seed,
                        negative_prompt=args.negative_prompt, warm_start=False if args.no_warm_start else None,
                        progress=not args.quiet)
    except (InputError, ValueError) as exc:
        raise UsageError(str(exc).splitlines()[0]) from None
    stats = result.stats()
    stats["settings"]["notes"] = notes + stats["settings"]["notes"]
    stats["model"] = args.model
    stats["input"] = str(image_path)
    tensors = {"latent": result.latent, "pipeline_latents": result.pipeline_latents, "encoded": result.encoded}
    save_latent(tensors, {"nrinv": json.dumps(stats)}, out, force=args.force)
    stats["output"] = str(out)
    save_json(stats, sidecar, force=args.force)
    if not args.quiet:
        print(f"wrote {out} and {sidecar} ({result.status.value}, {result.nfe} NFE, {result.wall_time:.2f} s)")
    if not result.finite:
        print(f"error: inversion ended with status {result.status.value}; see {sidecar}", file=sys.stderr)
        return 1
    return 0


def cmd_reconstruct(args) -> int:
    from ..io.images import InputError, load_latent, save_json, save_png
    from ..core.inversion import InversionResult, prepare, sample

    out = Path(args.output)
    check_output(out, args.force)
    try:
        tensors, meta = load_latent(args.latent)
    except InputError as exc:
        raise UsageError(str(exc)) from None
    try:
        stats = json.loads(meta["nrinv"])
        s = stats["settings"]
    except (KeyError, json.JSONDecodeError):
        raise UsageError(f"{args.latent} has no nrinv settings; was it written by `nrinv invert`?") from None
    pipe = load_model(args.model or stats.get("model", DEFAULT_MODEL), args.dtype, args.device)
    try:
        setup = prepare(pipe, s["prompt"], size=(s["height"], s["width"]), num_inference_steps=s["num_inference_steps"],
                        guidance_scale=s["guidance_scale"], seed=s["seed"], negative_prompt=s.get("negative_prompt"))
    except ValueError as exc:
        raise UsageError(str(exc).splitlines()[0]) from None
    import torch

    z = sample(setup, tensors["latent"], progress=not args.quiet)
    with torch.no_grad():
        image = setup.adapter.decode(z, setup.size)
    save_png(image, out, force=args.force)
    save_json({"version": __version__, "latent": str(args.latent), "model": args.model or stats.get("model"),
               "settings": s}, out.with_suffix(".json"), force=args.force)
    if not args.quiet:
        print(f"wrote {out}")
    return 0


def cmd_methods(args) -> int:
    from ..core.solvers import SOLVERS

    for name, spec in SOLVERS.items():
        fields = ", ".join(f"{k}={v}" for k, v in spec.options().to_dict().items())
        print(f"{name:14s} {spec.summary}\n{'':14s} options: {fields}")
    return 0


def add_model_args(p: argparse.ArgumentParser, default: Optional[str] = DEFAULT_MODEL) -> None:
    """--model, --dtype, --device, --quiet, --force: shared by every subcommand that loads a model."""
    p.add_argument("--model", default=default,
                   help="Hugging Face id, local diffusers folder, or builtin:shapes (default: %(default)s)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="network dtype (the solver is always float32)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    p.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 512x512, got {text!r}") from None
    return h, w


def build_parser() -> argparse.ArgumentParser:
    from ..io.images import DEFAULT_MAX_PIXELS
    from ..core.inversion import DEFAULT_METHOD

    parser = argparse.ArgumentParser(prog="nrinv", description="Fast, exact diffusion inversion and editing.")
    parser.add_argument("--version", action="version", version=f"nrinv {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("invert", help="invert an image to its noise latent")
    p.add_argument("image")
    p.add_argument("--prompt", required=True, help="text describing the image")
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--method", default=DEFAULT_METHOD, help="solver (see `nrinv methods`; default: %(default)s)")
    p.add_argument("--iterations", type=int, default=None, help="solver iterations per step")
    p.add_argument("--no-warm-start", action="store_true",
                   help="start each step from the known latent instead of the previous step's model output")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="solver option, repeatable")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler's noise (ancestral/LCM samplers)")
    p.add_argument("--resize", type=_size, default=None, metavar="HxW", help="resize the image first")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="reject larger images")
    p.add_argument("-o", "--output", default=None, help="latent file (.safetensors); a .json sidecar is written beside")
    add_model_args(p)
    p.set_defaults(func=cmd_invert)

    p = sub.add_parser("reconstruct", help="regenerate the image from an inverted latent")
    p.add_argument("latent")
    p.add_argument("-o", "--output", required=True, help="output PNG")
    add_model_args(p, default=None)
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("methods", help="list the inversion methods and their options")
    p.set_defaults(func=cmd_methods)

    # Feature modules own their subcommands: each has register(subparsers) adding parsers whose
    # ``func(args) -> int`` may raise UsageError (exit 2).
    import importlib

    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


SUBCOMMAND_MODULES = ("nrinv.cli.edit", "nrinv.cli.bench", "nrinv.cli.batch", "nrinv.cli.demo", "nrinv.cli.app")


def main(argv: Optional[Sequence[str]] = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # the command line is an application: transformers' import-time notices (e.g. "torchvision not
    # installed, using the PIL image processor") are noise here; a user's own setting wins
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"nrinv {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
