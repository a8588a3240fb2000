"""`nrinv invert`, `nrinv reconstruct`, `nrinv methods`."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .._version import __version__
from .common import (DEFAULT_MODEL, UsageError, add_inversion_args, add_model_args, check_clip_target, check_device,
                     check_target, image_size, inversion_args, load_model, negative_prompt_note, note, open_input,
                     report_notes, run, save_clip_output)

#: tensors of a latent file: the noise in scheduler units, what pipe(latents=...) takes, the encoded image
LATENT_KEYS = ("scheduler_latents", "latents", "encoded")


def cmd_invert(args) -> int:
    from ..api import invert
    from ..io.files import save_json, save_latent
    from ..metrics import vae_ceiling_note, vae_ceiling_psnr

    if not args.prompt or not args.prompt.strip():
        raise UsageError("the prompt is empty; describe the image with --prompt")
    inversion = inversion_args(args)
    check_device(args.device)
    image_path = Path(args.image)
    out = Path(args.output) if args.output else image_path.with_suffix(".latent.safetensors")
    sidecar = out.with_suffix(".json")
    check_target(out, args.force, (".safetensors",), "latent file")
    check_target(sidecar, args.force)
    image, pixels, notes = open_input(args.image, args.max_pixels, args.model, args.quiet, args.resize)

    pipe = load_model(args.model, args.dtype, args.device, args.cuda_graphs)
    result = run(invert, pipe=pipe, image=image, prompt=args.prompt, inversion=inversion, progress=not args.quiet)
    stats = result.stats()
    ceiling = vae_ceiling_psnr(result.setup.adapter, pixels)
    low = vae_ceiling_note(ceiling)
    if low:
        notes = notes + [low]
        note(low, args.quiet)
    report_notes(stats, notes, args.quiet)  # a fallback the inversion took (e.g. no learned inverter)
    negative_prompt_note(args.negative_prompt, [stats["settings"]["guidance_scale"]], args.quiet)
    stats["settings"]["notes"] = notes + [n for n in stats["settings"]["notes"] if n not in notes]
    stats["vae_ceiling_psnr_db"] = round(ceiling, 2)
    stats["model"] = args.model
    stats["input"] = str(image_path)
    tensors = dict(zip(LATENT_KEYS, (result.scheduler_latents, result.latents, result.encoded)))
    # an edit-friendly inversion's per-step corrections (`nrinv reconstruct` applies them)
    tensors.update({f"correction.{i}": d for i, d in enumerate(result.corrections or []) if d is not None})
    save_latent(tensors, {"nrinv": json.dumps(stats)}, out, force=args.force)
    stats["output"] = str(out)
    save_json(stats, sidecar, force=args.force)
    if not args.quiet:
        print(f"wrote {out} and {sidecar} ({result.status.value}, {result.nfe} NFE, {result.wall_time:.2f} s; "
              f"VAE ceiling {ceiling:.1f} dB)")
    if not result.finite:
        print(f"error: inversion ended with status {result.status.value}; see {sidecar}", file=sys.stderr)
        return 1
    return 0


def cmd_reconstruct(args) -> int:
    import torch

    from ..core.inversion import prepare, sample
    from ..errors import InputError
    from ..io.files import load_latent, save_json, save_png

    out = Path(args.output)
    check_device(args.device)
    try:
        tensors, meta = load_latent(args.latent)
    except InputError as exc:
        raise UsageError(str(exc)) from None
    video = tensors["scheduler_latents"].dim() == 5 if "scheduler_latents" in tensors else False  # (B, C, F, h, w)
    if video:
        check_clip_target(out, args.force, "reconstructed clip")
    else:
        check_target(out, args.force, (".png",), "image")
    check_target(out.with_suffix(".json"), args.force)
    try:
        stats = json.loads(meta["nrinv"])
        s = stats["settings"]
    except (KeyError, json.JSONDecodeError):
        raise UsageError(f"{args.latent} has no nrinv settings; was it written by `nrinv invert`?") from None
    pipe = load_model(args.model or stats.get("model", DEFAULT_MODEL), args.dtype, args.device, args.cuda_graphs)
    setup = run(prepare, pipe=pipe, prompt=s["prompt"], size=(s["height"], s["width"]),
                num_inference_steps=s["num_inference_steps"], guidance_scale=s["guidance_scale"], seed=s["seed"],
                negative_prompt=s.get("negative_prompt"))
    found = {int(k.split(".")[1]): v for k, v in tensors.items() if k.startswith("correction.")}
    corrections = [found.get(i) for i in range(len(setup.schedule))] if found else None
    z = sample(setup, tensors["scheduler_latents"], progress=not args.quiet, corrections=corrections)
    with torch.no_grad():
        image = setup.adapter.decode(z, setup.size)
    if video:
        save_clip_output(image, out, args.force)
    else:
        save_png(image, out, force=args.force)
    save_json({"version": __version__, "latent": str(args.latent), "model": args.model or stats.get("model"),
               "settings": s}, out.with_suffix(".json"), force=args.force)
    if not args.quiet:
        print(f"wrote {out}")
    return 0


def cmd_methods(args) -> int:
    from ..core.methods import METHODS

    for name, method in METHODS.items():
        fields = ", ".join(f"{k}={v}" for k, v in method.options().to_dict().items())
        where = "" if method.invert else " [a baseline of nrinv bench only]"
        print(f"{name:14s} {method.summary}{where}\n{'':14s} result: {method.contract}\n{'':14s} options: {fields}")
    return 0


def register(sub) -> None:
    from ..io.limits import DEFAULT_MAX_PIXELS

    p = sub.add_parser("invert", help="invert an image (or a clip, for a video model) to its noise latent")
    p.add_argument("image", help="an image; for a video model (Wan) a clip: a folder of frames, a GIF or an MP4")
    p.add_argument("--prompt", required=True, help="text describing the image")
    add_inversion_args(p)
    p.add_argument("--resize", type=image_size, default=None, metavar="HxW",
                   help="resize the image first to HxW: height then width (sizes in every message are HxW)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="reject larger images")
    p.add_argument("-o", "--output", default=None, help="latent file (.safetensors); a .json sidecar is written beside")
    add_model_args(p)
    p.set_defaults(func=cmd_invert)

    p = sub.add_parser("reconstruct", help="regenerate the image from an inverted latent")
    p.add_argument("latent")
    p.add_argument("-o", "--output", required=True,
                   help="output PNG (a video model's clip: .gif, .mp4 or a folder of frames)")
    add_model_args(p, default=None)
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("methods", help="list the inversion methods and their options")
    p.set_defaults(func=cmd_methods)
