"""What every subcommand shares: the error type, model arguments and loading, output checks, solver options."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

DEFAULT_MODEL = "builtin:shapes"
DTYPE_CHOICES = ("auto", "float32", "float16", "bfloat16")


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


def check_output(path: Path, force: bool) -> None:
    """Refuse to overwrite without --force, before any work is done."""
    if path.exists() and not force:
        raise UsageError(f"{path} exists; pass --force to overwrite")
    if path.is_dir():
        raise UsageError(f"{path} is a folder; give a file name")


def check_outputs(paths: Sequence[Path], force: bool) -> None:
    for path in paths:
        check_output(path, force)


def load_model(model: str, dtype: str, device: str, cuda_graphs: bool = True) -> Any:
    """Load a pipeline for a subcommand, as its adapter (one per run: embeddings, schedules and CUDA
    graphs are computed once); load errors become UsageError (exit 2)."""
    from ..core.adapters import adapter_for
    from ..errors import InputError
    from ..loading import load_pipeline

    try:
        return adapter_for(load_pipeline(model, dtype=dtype, device=device), cuda_graphs=None if cuda_graphs else False)
    except (InputError, OSError, ValueError) as exc:
        raise UsageError(str(exc).splitlines()[0]) from None


def solver_args(args) -> tuple[Optional[str], dict]:
    """``--method``, ``--iterations`` and ``--option`` checked now, before any work."""
    from ..core.solvers import get_solver, make_options

    try:
        if args.method is not None:
            get_solver(args.method)
        overrides = parse_option(args.option)
        if args.iterations is not None:
            if args.iterations < 1:
                raise ValueError(f"--iterations must be >= 1, got {args.iterations}")
            overrides["max_iterations"] = args.iterations
        if args.method is not None:
            make_options(args.method, overrides)
        else:
            from ..core.defaults import DEFAULT_METHOD

            make_options(DEFAULT_METHOD, overrides)
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None
    return args.method, overrides


def run(fn, **kwargs) -> Any:
    """Call a library function, turning input errors into UsageError (exit 2)."""
    from ..errors import InputError

    try:
        return fn(**kwargs)
    except (InputError, ValueError) as exc:
        raise UsageError(str(exc).splitlines()[0]) from None


def validate(fn, *values) -> Any:
    from ..errors import InputError

    try:
        return fn(*values)
    except InputError as exc:
        raise UsageError(str(exc)) from None


def add_model_args(p: argparse.ArgumentParser, default: Optional[str] = DEFAULT_MODEL) -> None:
    """--model, --dtype, --device, --quiet, --force: shared by every subcommand that loads a model."""
    p.add_argument("--model", default=default,
                   help="Hugging Face id, local diffusers folder, or builtin:shapes (default: %(default)s)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                   help="network dtype; auto: float32 on the CPU, half precision on a GPU (the solver is float32)")
    p.add_argument("--device", default="auto", help="torch device: auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                   help="run the network eagerly on CUDA instead of replaying captured CUDA graphs")
    p.add_argument("--quiet", action="store_true", help="no progress bars or messages, only errors")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")


def add_solver_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default=None, help="inversion solver (see `nrinv methods`; default: the model's)")
    p.add_argument("--iterations", type=int, default=None, help="solver iterations per step (default: the model's)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="solver option, repeatable")


def image_size(text: str) -> tuple[int, int]:
    """``HxW`` -> (H, W)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 512x512, got {text!r}") from None
    return h, w


def note(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"note: {message}", file=sys.stderr)
