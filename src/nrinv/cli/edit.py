"""`nrinv edit`, `nrinv interpolate`, `nrinv seed`: the editing subcommands (see ``nrinv.workflows``).

Every output is written atomically with a JSON sidecar beside it (same name, ``.json``); all outputs
are checked before any work, and existing ones need ``--force``.  Bad input exits with status 2 and
one line, writing nothing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from .._version import __version__
from .common import (UsageError, add_inversion_args, add_model_args, check_clip_target, check_device, check_target,
                     image_size, input_is_clip, inversion_args, load_model, negative_prompt_note, note, open_image,
                     open_input, plural, report_notes, run, save_clip_output, validate)


def _common(p: argparse.ArgumentParser) -> None:
    from ..io.limits import DEFAULT_MAX_PIXELS

    add_inversion_args(p)
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="reject larger images")
    add_model_args(p)


def _load_images(args, paths: Sequence[str], size: Optional[tuple[int, int]] = None):
    """Open every input before any work (unreadable, oversized or a size the model cannot take ->
    UsageError); print conversion notes."""
    return [open_image(path, args.max_pixels, args.model, args.quiet, size)[0] for path in paths]


def _sidecar(png: Path) -> Path:
    return png.with_suffix(".json")


def _base_record(args, stats: dict) -> dict:
    stats = dict(stats)
    stats["model"] = args.model
    stats["version"] = __version__
    return stats


# ---------------------------------------------------------------------------------------------- edit
def edit_output_paths(output: Path, n_targets: int, clip: bool = False) -> list[Path]:
    """``out.png`` for one target; ``out-0.png, out-1.png, ...`` for several (a clip: ``out-0.gif``, or
    folders ``out-0``, ``out-1``, ... for a name without a suffix)."""
    if n_targets == 1:
        return [output]
    suffix = output.suffix if clip else output.suffix or ".png"
    return [output.with_name(f"{output.stem}-{i}{suffix}") for i in range(n_targets)]


def cmd_edit(args) -> int:
    from ..workflows import common as checks
    from ..workflows import edit
    from ..io.files import save_json, save_png
    from ..metrics import vae_ceiling_note, vae_ceiling_psnr

    validate(checks.check_prompt, args.source, "source prompt")
    for target in args.target:
        validate(checks.check_prompt, target, "target prompt")
    if args.strength is not None:
        validate(checks.check_strength, args.strength)
    validate(checks.check_steps, args.steps)
    validate(checks.check_adjust, args.encode_adjust)
    validate(checks.check_mask_threshold, args.mask_threshold)
    inversion = inversion_args(args)
    image_path = Path(args.image)
    clip = input_is_clip(args.image)
    default = image_path.with_name(image_path.stem + (".edit.gif" if clip else ".edit.png"))
    output = Path(args.output) if args.output else default
    pngs = edit_output_paths(output, len(args.target), clip)
    for png in pngs:
        if clip:
            check_clip_target(png, args.force, "edited clip")
        else:
            check_target(png, args.force, (".png",), "edited image")
        check_target(_sidecar(png), args.force)
    check_device(args.device)
    image, pixels, printed = open_input(args.image, args.max_pixels, args.model, args.quiet, args.resize)

    pipe = load_model(args.model, args.dtype, args.device, args.cuda_graphs)
    mask_threshold = args.mask_threshold  # MASK_OFF (0): the library's "no mask", whatever the model's default
    result = run(edit, pipe=pipe, image=image, source_prompt=args.source, target_prompts=args.target,
                  strength=args.strength, edit_guidance_scale=args.edit_guidance, inversion=inversion,
                  guide_from_source=args.guide_from_source, mask_threshold=mask_threshold,
                  keep_object=args.keep_object,
                  encode_adjust=args.encode_adjust, max_pixels=args.max_pixels, progress=not args.quiet)
    ceiling = vae_ceiling_psnr(result.inversion.setup.adapter, pixels)
    low = vae_ceiling_note(ceiling)
    if low:
        note(low, args.quiet)
    report_notes(result.stats(), printed, args.quiet)  # a fallback taken, an edit that changed nearly nothing
    guidances = [result.settings["guidance_scale"], result.settings["edit_guidance_scale"]]
    negative_prompt_note(args.negative_prompt, guidances, args.quiet, "--guidance or --edit-guidance")
    for i, png in enumerate(pngs):
        record = _base_record(args, result.stats(i))
        record["vae_ceiling_psnr_db"] = round(ceiling, 2)
        record["input"] = str(image_path)
        record["output"] = str(png)
        if clip:
            save_clip_output(result.images[i], png, args.force)
        else:
            save_png(result.images[i], png, force=args.force)
        save_json(record, _sidecar(png), force=args.force)
        if not args.quiet:
            print(f"wrote {png} ({result.target_prompts[i]!r}; VAE ceiling {ceiling:.1f} dB)")
    if not result.inversion.finite:
        print(f"warning: inversion ended with status {result.inversion.status.value}; see {_sidecar(pngs[0])}",
              file=sys.stderr)
    return 0


#: ``--mask-threshold off`` (or 0): no mask, whatever the model's default
MASK_OFF = 0.0


def mask_threshold(text: str) -> float:
    """``--mask-threshold``: ``off`` or 0 (no mask), else a number in (0, 1), checked before any work."""
    if text.strip().lower() in ("off", "none", "no"):
        return MASK_OFF
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1) or 'off', got {text!r}") from None
    if value != MASK_OFF and not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), or 0 or 'off' for no mask, got {text}")
    return value


def _mask_defaults() -> str:
    """The model kinds' default masks, as ``--mask-threshold``'s help says them (from the registry)."""
    from ..core.defaults import MODEL_KINDS  # torch-free

    masked = [f"{kind} {d.mask_threshold:g}" for kind, _, d in MODEL_KINDS if d.mask_threshold is not None]
    return ", ".join(masked + ["off for the others" if masked else "off"])


# --------------------------------------------------------------------------------------- interpolate
def _strip(frames) -> Any:
    from PIL import Image


    pils = list(frames)
    w, h = pils[0].size
    strip = Image.new("RGB", (w * len(pils), h))
    for i, im in enumerate(pils):
        strip.paste(im, (i * w, 0))
    return strip, pils


def _grid(frames, ncol: int):
    from PIL import Image


    pils = list(frames)
    w, h = pils[0].size
    nrow = -(-len(pils) // ncol)
    grid = Image.new("RGB", (w * min(ncol, len(pils)), h * nrow))
    for i, im in enumerate(pils):
        grid.paste(im, ((i % ncol) * w, (i // ncol) * h))
    return grid


def gif_ms(text: str) -> int:
    """``--gif-ms``: what a GIF can store (a frame time in hundredths of a second, 16 bits), checked before
    any work (a value out of range failed inside PIL after the strip PNG had been written)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of milliseconds, got {text!r}") from None
    if not 10 <= value <= 655350:
        raise argparse.ArgumentTypeError(f"a GIF frame lasts 10 to 655350 ms, got {text}")
    return value


def _save_gif(pils, path: Path, force: bool, duration_ms: int) -> None:
    from ..io.files import atomic_write

    def write(tmp):
        # there and back again, so the loop has no jump
        seq = pils + pils[-2:0:-1]
        seq[0].save(tmp, format="GIF", save_all=True, append_images=seq[1:], duration=duration_ms, loop=0)

    atomic_write(path, write, force=force)


def cmd_interpolate(args) -> int:
    from ..workflows import common as checks
    from ..workflows import interpolate
    from ..io.files import save_json, save_png

    validate(checks.check_prompt, args.prompt, "prompt")
    if args.prompt_b is not None:
        validate(checks.check_prompt, args.prompt_b, "prompt for image B")
    validate(checks.check_count, args.n, "n")
    validate(checks.check_steps, args.steps)
    validate(checks.check_adjust, args.encode_adjust)
    inversion = inversion_args(args)
    out = Path(args.output)
    check_target(out, args.force, (".png",), "strip")
    check_target(_sidecar(out), args.force)
    if args.gif:
        check_target(Path(args.gif), args.force, (".gif",), "animation")
    check_device(args.device)
    image_a, image_b = _load_images(args, [args.image_a, args.image_b])
    if image_a.size != image_b.size and not args.resize:
        raise UsageError(f"the images have different sizes ({image_a.height}x{image_a.width} and "
                         f"{image_b.height}x{image_b.width}, HxW); resize one to match, or pass --resize to resize "
                         "the second to the first")

    pipe = load_model(args.model, args.dtype, args.device, args.cuda_graphs)
    prompts = [args.prompt] if args.prompt_b is None else [args.prompt, args.prompt_b]
    result = run(interpolate, pipe=pipe, image_a=image_a, image_b=image_b, prompts=prompts, n=args.n,
                  inversion=inversion, encode_adjust=args.encode_adjust, resize=args.resize,
                  max_pixels=args.max_pixels, progress=not args.quiet)
    strip, pils = _strip(result.images)
    record = _base_record(args, result.stats())
    report_notes(record, [], args.quiet)
    record.update(inputs=[str(args.image_a), str(args.image_b)], output=str(out), gif=args.gif)
    save_png(strip, out, force=args.force)
    if args.gif:
        _save_gif(pils, Path(args.gif), args.force, args.gif_ms)
    save_json(record, _sidecar(out), force=args.force)
    if not args.quiet:
        print(f"wrote {out}" + (f" and {args.gif}" if args.gif else "") + f" ({plural(len(pils), 'frame')})")
    return 0


# ---------------------------------------------------------------------------------------------- seed
def _spread(text: str):
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number in [0, 1], got {text!r}") from None


def cmd_seed(args) -> int:
    from ..workflows import common as checks
    from ..workflows import seed_from_images
    from ..io.files import save_json, save_png

    validate(checks.check_prompt, args.prompt, "prompt")
    validate(checks.check_count, args.n, "n")
    validate(checks.check_steps, args.steps)
    validate(checks.check_spread, args.spread)
    validate(checks.check_count, args.columns, "--columns")
    inversion = inversion_args(args)
    out = Path(args.output)
    check_target(out, args.force, (".png",), "grid")
    check_target(_sidecar(out), args.force)
    check_device(args.device)
    images = _load_images(args, args.images, args.resize)
    size = args.resize or (images[0].height, images[0].width)

    pipe = load_model(args.model, args.dtype, args.device, args.cuda_graphs)
    result = run(seed_from_images, pipe=pipe, images=images, prompt=args.prompt, n_samples=args.n,
                  spread=args.spread, sample_guidance_scale=args.sample_guidance, inversion=inversion,
                  height=size[0], width=size[1], max_pixels=args.max_pixels, progress=not args.quiet)
    grid = _grid(result.images, args.columns)
    record = _base_record(args, result.stats())
    report_notes(record, [], args.quiet)
    record.update(inputs=[str(p) for p in args.images], output=str(out))
    save_png(grid, out, force=args.force)
    save_json(record, _sidecar(out), force=args.force)
    if not args.quiet:
        print(f"wrote {out} ({plural(len(result.images), 'sample')})")
    return 0


# ------------------------------------------------------------------------------------------ register
def register(sub) -> None:
    from ..core.defaults import DEFAULT_SEED_SPREAD  # torch-free

    p = sub.add_parser("edit", help="edit an image by changing its prompt",
                       description="Invert IMAGE with the source prompt, regenerate with each target prompt. "
                                   "One target writes OUTPUT; several write OUTPUT-0.png, OUTPUT-1.png, ... "
                                   "Each PNG gets a .json sidecar.")
    p.add_argument("image", help="an image; for a video model (Wan) a clip: a folder of frames, a GIF or an MP4")
    p.add_argument("--source", required=True, help="text describing the image")
    p.add_argument("--target", action="append", required=True, help="text describing the edit; repeatable")
    p.add_argument("--strength", type=float, default=None,
                   help="fraction of the schedule re-run with the target, in (0, 1] (default: the model's)")
    p.add_argument("--edit-guidance", type=float, default=None,
                   help="guidance of the target regeneration (default: the model's edit default)")
    p.add_argument("--guide-from-source", action=argparse.BooleanOptionalAction, default=None,
                   help="guide the regeneration away from the source prompt instead of the empty one "
                        "(default: the model's)")
    p.add_argument("--mask-threshold", type=mask_threshold, default=None, metavar="T",
                   help="local edit: keep the latent on the inverted trajectory where the target and source "
                        "predictions differ less than T of their maximum, T in (0, 1), e.g. 0.3; 'off' or 0: no "
                        f"mask (default: the model kind's: {_mask_defaults()})")
    p.add_argument("--keep-object", action=argparse.BooleanOptionalAction, default=None,
                   help="when a target changes the background, keep the object as it is in the image "
                        "(default: the model's; on for the built-in models)")
    p.add_argument("--encode-adjust", type=float, default=None, metavar="S",
                   help="prompt-aware encoding adjustment strength, e.g. 0.05 (default: off)")
    p.add_argument("--resize", type=image_size, default=None, metavar="HxW",
                   help="resize the image first to HxW: height then width (sizes in every message are HxW)")
    p.add_argument("-o", "--output", default=None,
                   help="output PNG (default: IMAGE.edit.png); a clip: .gif (default), .mp4 or a folder of frames")
    _common(p)
    p.set_defaults(func=cmd_edit)

    p = sub.add_parser("interpolate", help="interpolate between two images through their noise latents",
                       description="Invert A and B, slerp the noises, lerp the prompts, regenerate N frames; "
                                   "writes a horizontal strip PNG (+ .json sidecar) and optionally a GIF.")
    p.add_argument("image_a")
    p.add_argument("image_b")
    p.add_argument("--prompt", required=True, help="text describing image A (and B unless --prompt-b)")
    p.add_argument("--prompt-b", default=None, help="text describing image B")
    p.add_argument("-n", type=int, default=5, help="number of frames, endpoints included (default: %(default)s)")
    p.add_argument("--resize", action="store_true", help="resize B to A's size when they differ")
    p.add_argument("--encode-adjust", type=float, default=None, metavar="S", help="encoding adjustment (default: off)")
    p.add_argument("--gif", default=None, help="also write an animated GIF")
    p.add_argument("--gif-ms", type=gif_ms, default=200,
                   help="GIF frame duration in ms, 10 to 655350 (GIF stores hundredths of a second)")
    p.add_argument("-o", "--output", required=True, help="strip PNG")
    _common(p)
    p.set_defaults(func=cmd_interpolate)

    p = sub.add_parser("seed", help="generate a rare concept from a few example images",
                       description="Invert the examples, take the normalised centroid of their noises and "
                                   "generate from it and from perturbations around it; writes a grid PNG.")
    p.add_argument("images", nargs="+")
    p.add_argument("--prompt", required=True, help="text describing the concept")
    p.add_argument("-n", type=int, default=4, help="number of samples (default: %(default)s)")
    p.add_argument("--spread", type=_spread, default=DEFAULT_SEED_SPREAD,
                   help="slerp weight toward fresh noise, in [0, 1], or 'auto': chosen so the samples differ "
                        "about as much as the examples do (default: %(default)s)")
    p.add_argument("--sample-guidance", type=float, default=None,
                   help="guidance of the generation (default: the model's edit default)")
    p.add_argument("--columns", type=int, default=4, help="grid columns")
    p.add_argument("--resize", type=image_size, default=None, metavar="HxW",
                   help="resize the examples first to HxW: height then width (sizes in every message are HxW)")
    p.add_argument("-o", "--output", required=True, help="grid PNG")
    _common(p)
    p.set_defaults(func=cmd_seed)
