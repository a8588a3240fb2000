"""What every subcommand shares: the error type, model arguments and loading, output checks, solver options."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from ..core.options import PRECISIONS as DTYPE_CHOICES  # torch-free: the CLI parses before importing torch
from ..core.options import parse_key_values
from ..errors import one_line

DEFAULT_MODEL = "builtin:shapes"


class UsageError(Exception):
    """Bad input: reported as one line, exit status 2."""


def check_output(path: Path, force: bool) -> None:
    """Refuse to overwrite without --force, before any work is done."""
    from ..io.files import name_too_long

    too_long = name_too_long(path)
    if too_long:
        raise UsageError(too_long)
    if path.exists() and not force:
        raise UsageError(f"{path} exists; pass --force to overwrite")
    if path.is_dir():
        raise UsageError(f"{path} is a folder; give a file name")


def check_target(path: Path, force: bool, suffixes: Sequence[str] = (), what: str = "output") -> None:
    """Before any work: the file type the command writes, not an existing file unless --force, and a
    place that can be written (a folder that exists or can be made, with room to create a file)."""
    from ..io.files import writable_target

    if suffixes and path.suffix.lower() not in suffixes:
        raise UsageError(f"{path}: the {what} is written as {suffixes[0]}; give a name ending in "
                         + " or ".join(suffixes))
    check_output(path, force)
    problem = writable_target(path)
    if problem:
        raise UsageError(problem)


def check_folder(path: Path, flag: str) -> None:
    """An output folder, before any work: not an existing file, and a place that can be written."""
    from ..io.files import writable_target

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{path} is a file; {flag} names a folder to write into: give a folder name")
    problem = writable_target(path / "results.csv")  # a file inside it, as the command will write
    if problem:
        raise UsageError(problem)


def check_guidances(args) -> None:
    """--guidance / --edit-guidance / --sample-guidance: finite and within the documented range, before any work."""
    from ..core.inversion import check_guidance

    for flag in ("guidance", "edit_guidance", "sample_guidance"):
        value = getattr(args, flag, None)
        if value is not None:
            run(check_guidance, value=value, what="--" + flag.replace("_", "-"))


def check_device(device: str) -> None:
    """The device exists here (checked before anything is loaded)."""
    from ..errors import InputError
    from ..loading import resolve_device

    try:
        resolve_device(device)
    except InputError as exc:
        raise UsageError(str(exc)) from None


def open_image(path: str, max_pixels: int, model: Optional[str], quiet: bool,
               resize: Optional[tuple[int, int]] = None, what: str = "") -> tuple[Any, list[str]]:
    """Open and validate an input image before the model loads: readable, within the pixel limit, and
    (when the model's configs are on disk) of a size the model takes, with advice in its terms.
    Returns the image and the notes printed about it."""
    from ..errors import InputError
    from ..io.images import load_image

    notes: list[str] = []
    try:
        image = load_image(path, max_pixels=max_pixels, notes=notes, size=resize)
    except InputError as exc:
        raise UsageError(str(exc)) from None
    notes += _check_model_size(path, image.height, image.width, model)
    for text in notes:
        note(f"{what or path}: {text}", quiet)
    return image, notes


def _check_model_size(path: str, height: int, width: int, model: Optional[str], with_notes: bool = True) -> list[str]:
    """A size the model takes (when its configs are on disk), refused with advice in ``--resize`` terms
    otherwise; returns the size notes (far from the native size, extreme aspect) when ``with_notes``."""
    from ..core.adapters import size_error, size_notes
    from ..loading import model_geometry

    geometry = model_geometry(model) if model else None
    if geometry is None:
        return []
    problem = size_error(height, width, geometry["multiple"], geometry["native"])
    if problem:
        raise UsageError(f"{path}: {problem.replace('resize it, e.g. to ', 'pass --resize ')}")
    return size_notes(height, width, geometry["native"]) if with_notes else []


def plural(n: int, word: str) -> str:
    """``1 frame``, ``2 frames``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


#: what a clip's output may be: an animated GIF, a video file, or a folder of frames (a name without a suffix)
CLIP_SUFFIXES = (".gif", ".mp4", "")


def input_is_clip(path: str) -> bool:
    """Whether an input path is a clip (a folder of frames, an animated GIF or a video file)."""
    from ..io.clips import is_clip

    return is_clip(path)


def open_input(path: str, max_pixels: int, model: Optional[str], quiet: bool,
               resize: Optional[tuple[int, int]] = None) -> tuple[Any, Any, list[str]]:
    """An image (as ``open_image``) or a clip (a folder of frames, an animated GIF or an MP4: a list of
    PIL frames), validated before the model loads.  Returns ``(input, pixels, notes)``, ``pixels`` the
    (N, 3, H, W) tensor in [0, 1] the VAE ceiling is measured on."""
    from ..errors import InputError
    from ..io.clips import load_clip
    from ..io.images import to_pil, to_tensor

    if not input_is_clip(path):
        image, notes = open_image(path, max_pixels, model, quiet, resize)
        return image, to_tensor(image), notes
    notes: list[str] = []
    try:
        pixels = load_clip(path, size=resize, max_pixels=max_pixels, notes=notes)
    except InputError as exc:
        raise UsageError(str(exc)) from None
    _check_model_size(path, int(pixels.shape[-2]), int(pixels.shape[-1]), model, with_notes=False)
    for text in notes:
        note(f"{path}: {text}", quiet)
    return [to_pil(f) for f in pixels], pixels, notes


def check_clip_target(path: Path, force: bool, what: str = "output clip") -> None:
    """A clip's output before any work: .gif, .mp4 or a folder (no suffix), writable, not overwritten
    without --force."""
    from ..io.files import name_too_long, writable_target

    if path.suffix.lower() not in CLIP_SUFFIXES:
        raise UsageError(f"{path}: the {what} is written as .gif, .mp4 or a folder of frames (a name without a "
                         "suffix); give such a name")
    too_long = name_too_long(path)
    if too_long:
        raise UsageError(too_long)
    if path.exists() and not force and (path.is_file() or any(path.iterdir())):
        raise UsageError(f"{path} exists; pass --force to overwrite")
    if path.suffix == "" and path.is_file():
        raise UsageError(f"{path} is a file; a clip without a suffix is written as a folder of frames")
    problem = writable_target(path / "frame_0000.png" if path.suffix == "" else path)
    if problem:
        raise UsageError(problem)


def save_clip_output(frames: Any, path: Path, force: bool) -> None:
    from ..errors import InputError
    from ..io.clips import save_clip

    try:
        save_clip(list(frames), path, force=force)
    except InputError as exc:
        raise UsageError(str(exc)) from None


class OneLineParser(argparse.ArgumentParser):
    """Argument errors as one line and exit status 2, like every other bad input."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def load_model(model: str, dtype: str, device: str, cuda_graphs: bool = True) -> Any:
    """Load a pipeline for a subcommand, as its adapter (one per run: embeddings, schedules and CUDA
    graphs are computed once); load errors become UsageError (exit 2)."""
    from ..core.adapters import adapter_for
    from ..errors import InputError
    from ..loading import load_pipeline

    try:
        return adapter_for(load_pipeline(model, dtype=dtype, device=device), cuda_graphs=None if cuda_graphs else False)
    except (InputError, OSError, ValueError) as exc:
        raise UsageError(one_line(exc)) from None
    except (KeyError, AttributeError, TypeError) as exc:  # a folder whose files diffusers cannot read
        raise UsageError(f"could not load the model {model}: its files are not a pipeline diffusers can read "
                         f"({type(exc).__name__}: {one_line(exc)})") from None


#: --warm-start's values -> InversionOptions.warm_start
WARM_START = {"auto": None, "on": True, "off": False, "last": "last", "linear": "linear",
              "learned": "learned"}


def inversion_args(args) -> Any:
    """The :class:`~nrinv.core.inversion.InversionOptions` of ``add_inversion_args``' flags, checked now
    (``--method``, ``--iterations``, ``--option``, ``--steps``, ``--guidance``), before any work."""
    from ..core.defaults import ModelDefaults
    from ..core.inversion import InversionOptions
    from ..core.methods import SOLVER, get_method, make_options

    try:
        options = parse_key_values(args.option, "--option")
        method = get_method(args.method or ModelDefaults.method)  # unknown names fail now
        if not method.invert:
            raise ValueError(f"{method.name} is a baseline of nrinv bench, not a method of nrinv invert / edit")
        if args.iterations is not None and args.iterations < 1:
            raise ValueError(f"--iterations must be >= 1, got {args.iterations}")
        if args.steps is not None and args.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {args.steps}")
        # unknown options fail now, against the named method or (before the model is loaded) the method the
        # model defaults start from; a solver's --iterations is one of its options
        make_options(method.name, options, **({} if args.iterations is None or method.kind != SOLVER
                                              else {"max_iterations": args.iterations}))
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None
    check_guidances(args)
    return InversionOptions(method=args.method, num_inference_steps=args.steps, guidance_scale=args.guidance,
                            negative_prompt=args.negative_prompt, max_iterations=args.iterations,
                            options=options or None, warm_start=WARM_START[args.warm_start], seed=args.seed)


def run(fn, **kwargs) -> Any:
    """Call a library function, turning input errors into UsageError (exit 2)."""
    from ..errors import InputError

    try:
        return fn(**kwargs)
    except (InputError, ValueError) as exc:
        raise UsageError(one_line(exc)) from None


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


def add_inversion_args(p: argparse.ArgumentParser) -> None:
    """The flags of :class:`~nrinv.core.inversion.InversionOptions` (read back by ``inversion_args``);
    the same flag means the same in every subcommand."""
    p.add_argument("--method", default=None, help="inversion method (see `nrinv methods`; default: the model's)")
    p.add_argument("--iterations", type=int, default=None, help="solver iterations per step (default: the model's)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="solver option, repeatable")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance of the inversion (and reconstruction) (default: the model's)")
    p.add_argument("--negative-prompt", default=None, help="the guidance's negative prompt")
    p.add_argument("--warm-start", choices=tuple(WARM_START), default="auto",
                   help="start each step from the previous steps' model output; auto: on without classifier-free "
                        "guidance (default: %(default)s)")
    p.add_argument("--seed", type=seed_value, default=0, help="seed of the sampler's noise (ancestral/LCM samplers)")


#: seeds a torch generator takes, with room for the per-image offsets some commands add
MAX_SEED = 2 ** 63 - 1


def seed_value(text: str) -> int:
    """``--seed``: a whole number from 0 to 2**63 - 1 (checked before any work; a larger one overflowed
    inside torch after the model had loaded)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"the seed must be between 0 and {MAX_SEED}, got {text}")
    return value


def image_size(text: str) -> tuple[int, int]:
    """``HxW`` -> (H, W), both >= 1."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW (height x width), e.g. 512x768, got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"height and width must be >= 1, got {text!r}")
    return h, w


def note(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"note: {message}", file=sys.stderr)


def run_notes(record: Any) -> list[str]:
    """Every note a run's JSON record holds (``settings["notes"]`` of the run and of its inversions),
    each once, in order."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key == "notes" and isinstance(item, list):
                    found.extend(str(n) for n in item)
                else:
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(record)
    return list(dict.fromkeys(found))


def report_notes(record: Any, printed: Sequence[str], quiet: bool) -> None:
    """Print, one line each, the notes of a run (a fallback it took, an edit that changed nearly
    nothing) not printed already: the sidecar is not the only place a user hears of them."""
    for text in run_notes(record):
        if text not in printed and not any(text in p for p in printed):
            note(text, quiet)


def negative_prompt_note(negative_prompt: Optional[str], guidances: Sequence[Optional[float]], quiet: bool,
                         flags: str = "--guidance") -> None:
    """``--negative-prompt`` enters only through classifier-free guidance: at guidance 1 or less (every
    guidance the run used) it has no effect, which is said in one line."""
    used = [g for g in guidances if g is not None]
    if negative_prompt and used and max(used) <= 1:
        note(f"--negative-prompt has no effect at guidance {max(used):g} (it enters through classifier-free "
             f"guidance); pass {flags} above 1 to use it", quiet)
