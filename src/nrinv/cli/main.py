"""The ``nrinv`` command line.  Bad input exits with status 2 and a one-line reason, writing nothing."""
from __future__ import annotations

import argparse  # noqa: F401  (the parser classes)
import importlib
import os
import sys
from typing import Optional, Sequence

from .._version import __version__
from ..errors import OutputExistsError
from .common import OneLineParser, UsageError

#: each module has ``register(subparsers)`` adding parsers whose ``func(args) -> int`` may raise UsageError
SUBCOMMAND_MODULES = ("nrinv.cli.invert", "nrinv.cli.edit", "nrinv.cli.batch", "nrinv.cli.bench", "nrinv.cli.demo",
                      "nrinv.cli.app", "nrinv.cli.train_inverter")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="nrinv", description="Fast, exact diffusion inversion and editing.")
    parser.add_argument("--version", action="version", version=f"nrinv {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # an optional feature whose dependency is missing (e.g. gradio)
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # the command line is an application: transformers' import-time notices (e.g. "torchvision not
    # installed, using the PIL image processor") are noise here; a user's own setting wins
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a one-line argument error (status 2)
        return int(exc.code or 0)
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"nrinv {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OutputExistsError as exc:  # another run wrote the output first; nothing overwritten
        print(f"nrinv {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
