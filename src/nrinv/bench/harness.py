"""Benchmark harness: every method x iteration budget on the same images, seeds and process.

Writes ``results.csv`` / ``results.json`` (rows + machine, versions, device, dtype) and plots:
PSNR vs NFE, PSNR vs wall time (VAE ceiling as a line), per-step residual vs iteration.
Re-running into the same folder skips finished rows.

Timing: a warm-up inversion, then the median of ``repeats`` timed inversions of the first image
(``torch.cuda.synchronize`` around each on GPU), and in the same run the bare cost of one network
call, so ``overhead = wall / (NFE x forward)`` is a ratio measured on one machine.  Both sides are the
fastest of their runs, and the call is timed again just before each timed row (the fastest call so far
kept): on a loaded machine a median call timed in a busy moment against inversions timed in a quiet one
gave ratios below 1; the fastest inversion cannot beat NFE times the fastest call (:func:`overhead_ratio`).
``wall_over_network`` needs no separate call: in each timed inversion, hooks on the network's forward add up
the time spent inside it (:class:`~nrinv.bench.measure.NetworkTime`), and the inversion's wall time over it,
the median over the repeats, is what the inversion costs beyond its network calls (encoding excluded, as
in ``wall_s``); empty where the hooks saw other than ``nfe`` calls (CUDA graph replays bypass them).
Peak memory: CUDA max allocated on GPU; on CPU the growth of the resident set over the run,
sampled every 2 ms by a thread.
"""
from __future__ import annotations

import functools
import json
import statistics
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.adapters import adapter_for
from ..api import InversionOptions, invert
from ..core.inversion import prepare, sample
from ..core.schedulers import draw_noise, seeded_generator
from ..core.options import parse_key_values
from ..core.methods import DDIM_INVERSION, TRAJECTORY, get_method, make_options
from ..core.solvers import SOLVERS
from ..errors import InputError
from ..io.files import save_json
from ..io.images import to_tensor
from ..metrics import as_numpy, psnr, ssim
from .images import BenchImage
from .measure import NetworkTime, PeakMemory, machine_info, sync
from .report import make_plots, read_rows, write_rows

__all__ = ["run_bench", "forward_time", "overhead_ratio", "parse_method", "inversion_options", "perceptual_scores",
           "step_status_counts", "budgets", "COLUMNS"]

def _row_key(row: dict) -> tuple:
    return (row["image"], row["method"], int(row["iterations"]), int(row["steps"]), float(row["guidance"]))



COLUMNS = ["image", "method", "iterations", "steps", "guidance", "nfe", "grad_evals", "psnr", "ssim", "lpips",
           "clip_score", "latent_error", "vae_ceiling_psnr", "wall_s", "forward_s", "overhead", "network_s",
           "wall_over_network", "peak_mem_mb", "status", "step_statuses", "timed"]




def _hwc(t: torch.Tensor) -> np.ndarray:
    return as_numpy(t[0])


def forward_time(pipe: Any, prompt: str, size: tuple[int, int], steps: int, guidance: float,
                 repeats: int = 20) -> float:
    """Seconds of one guided network call (what one NFE costs), measured here and now: the fastest of
    ``repeats`` (the least disturbed by other work on the machine)."""
    setup = prepare(pipe, prompt, size=size, num_inference_steps=steps, guidance_scale=guidance)
    adapter = setup.adapter
    step = setup.schedule.steps[len(setup.schedule.steps) // 2]
    z = draw_noise(adapter.latent_shape(*size), seeded_generator(0), device=adapter.device, dtype=torch.float32)
    times = []
    with torch.no_grad():
        for i in range(repeats + 3):
            sync(adapter.device)
            t0 = time.perf_counter()
            adapter.denoise(step.input_scale * z, step.timestep, setup.cond)
            sync(adapter.device)
            if i >= 3:
                times.append(time.perf_counter() - t0)
    return min(times)


def overhead_ratio(walls: Sequence[float], nfe: int, forward_s: float) -> float:
    """What an inversion costs beyond its network calls: the fastest of its timed runs over NFE times the
    fastest network call.  Both the least disturbed by other work, so load cannot push it below 1 the
    way a median call timed in a busy moment against inversions timed in a quiet one did."""
    return min(walls) / max(nfe * forward_s, 1e-12)


def parse_method(spec: str) -> tuple[str, dict]:
    """``"gnri"`` or a labelled variant ``"gnri[lam=0.01,eta=0.001]"`` -> (solver name, options).

    ``warm_start=true`` / ``false`` / ``last`` / ``linear`` in the brackets sets the inversion loop's warm
    start (without it, the bench runs what ``nrinv invert`` runs by default); ``negative_prompt=source`` makes the
    guidance's negative prompt the image's own prompt.  Baselines: ``npi`` is negative-prompt inversion (Miyake et
    al. 2023: ``ddim[negative_prompt=source]``); ``null_text[...]`` null-text inversion (``workflows/nulltext.py``,
    bracket keys of ``NullTextOptions``).
    """
    spec = spec.strip()
    if spec.split("[", 1)[0] == "npi":  # an alias: DDIM inversion with the source prompt as the negative prompt
        name, options = parse_method(DDIM_INVERSION + spec[3:])
        return name, {**options, "negative_prompt": "source"}
    name, body = spec, ""
    if "[" in spec:
        if not spec.endswith("]"):
            raise InputError(f"bad method spec {spec!r}; write e.g. gnri[lam=0.01]")
        name, body = spec[:-1].split("[", 1)
    method = get_method(name)  # an InputError naming the registry's methods
    options = parse_key_values(filter(None, body.split(",")), f"method spec {spec!r}")
    if options.get("negative_prompt", "source") != "source":
        raise InputError(f"method spec {spec!r}: negative_prompt takes 'source' (the image's prompt)")
    if method.invert:
        make_options(name, {k: v for k, v in options.items() if k not in _LOOP_KEYS})  # unknown keys fail now
    else:  # a baseline with its own entry point takes its options only
        make_options(name, options)
    return name, options


#: bracket keys of a method spec that set the inversion loop, not the solver
_LOOP_KEYS = ("warm_start", "negative_prompt")


def _takes_iterations(name: str) -> bool:
    """Whether the bench's iteration budgets apply: a solver that iterates, or a trajectory method that
    ``nrinv.invert`` runs (edit-friendly's "solved" trajectory is solved at them); a baseline with its own
    entry point has its budget in its options (null-text inversion's inner steps)."""
    method = get_method(name)
    return method.iterates or (method.kind == TRAJECTORY and method.invert)


def budgets(solver: str, iterations: Sequence[int]) -> Sequence[int]:
    """The iteration budgets a bench runs ``solver`` at: one for a method that does not iterate."""
    return iterations if _takes_iterations(solver) else (1,)


def inversion_options(method: tuple[str, dict], iterations: int, *, steps: int, guidance: float, seed: int,
                      method_options: Optional[dict[str, dict]] = None, prompt: str = "") -> InversionOptions:
    """The inversion parameters of a parsed method spec at an iteration budget (``prompt``: the image's, for
    ``negative_prompt=source``)."""
    solver, options = method
    options = {**(method_options or {}).get(solver, {}), **options}
    negative = prompt if options.pop("negative_prompt", None) == "source" else None
    warm = options.pop("warm_start", None)  # an inversion-loop option, not a solver option; None: auto
    warm = warm if warm in (None, "last", "linear", "learned") else bool(warm)
    return InversionOptions(method=solver, num_inference_steps=steps, guidance_scale=guidance, seed=seed,
                            options=options, max_iterations=iterations if _takes_iterations(solver) else None,
                            warm_start=warm, negative_prompt=negative)


def perceptual_scores(lpips: Any, clip: Any, image: np.ndarray, reference: np.ndarray, prompt: str) -> dict:
    """``lpips`` (to ``reference``) and ``clip_score`` (to ``prompt``) of an (H, W, 3) image in [0, 1];
    empty strings for a metric whose weights were not given."""
    out = {"lpips": "", "clip_score": ""}
    if lpips is not None:
        out["lpips"] = round(lpips.distance(image, reference), 4)
    if clip is not None:
        out["clip_score"] = round(clip([(image * 255).round().astype(np.uint8)], [prompt])[0], 3)
    return out


def step_status_counts(steps) -> str:
    """Per-step solver statuses as counts, e.g. ``converged:12 max_iterations:8``."""
    counts: dict[str, int] = {}
    for st in steps:
        counts[st.status.value] = counts.get(st.status.value, 0) + 1
    return " ".join(f"{k}:{v}" for k, v in sorted(counts.items()))


def run_bench(
    pipe: Any,
    images: Sequence[BenchImage],
    *,
    out: Path,
    model: str = "",
    methods: Optional[Sequence[str]] = None,
    iterations: Sequence[int] = (1, 2, 3, 5),
    steps: Optional[int] = None,
    guidance: Optional[float] = None,
    seed: int = 0,
    repeats: int = 3,
    method_options: Optional[dict[str, dict]] = None,
    progress: bool = True,
    plots: bool = True,
    lpips: Any = None,
    clip: Any = None,
) -> list[dict]:
    """Run (or resume) the benchmark into ``out``; returns all rows.

    ``repeats=0`` skips the warm-up and repeated timing (wall times are then single runs).
    ``lpips`` / ``clip``: scorers from :mod:`nrinv.perceptual` (columns left empty without them).
    """
    methods = list(SOLVERS) if methods is None else list(methods)
    parsed = {m: parse_method(m) for m in methods}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    adapter = adapter_for(pipe)
    defaults = adapter.defaults
    steps = int(defaults.num_inference_steps if steps is None else steps)
    guidance = float(defaults.guidance_scale if guidance is None else guidance)
    size = (images[0].image.height, images[0].image.width)
    rows = read_rows(out / "results.csv")
    done = {_row_key(r) for r in rows}
    residuals: dict[str, Any] = {}
    if (out / "residuals.json").is_file():
        residuals = json.loads((out / "residuals.json").read_text())

    t_forward = forward_time(pipe, images[0].prompt, size, steps, guidance)
    ceilings: dict[str, float] = {}
    jobs = [(img, m, it) for img in images for m in methods
            for it in budgets(parsed[m][0], iterations)]
    bar = tqdm(jobs, desc="bench", disable=not progress)
    for img, method, its in bar:
        key = (img.name, method, its, steps, guidance)
        if key in done:
            continue
        bar.set_postfix(image=img.name, method=method, it=its)
        pixels = to_tensor(img.image)
        if img.name not in ceilings:
            with torch.no_grad():
                ceiling = adapter.decode(adapter.encode(pixels), size)
            ceilings[img.name] = psnr(_hwc(pixels), _hwc(ceiling))
        entry = get_method(parsed[method][0])
        if not entry.invert:  # a baseline: its own entry point, with the registry's shared signature
            run = functools.partial(entry.fn, pipe, to_tensor(img.image), img.prompt, guidance_scale=guidance,
                                    num_inference_steps=steps, options=make_options(entry.name, parsed[method][1]),
                                    seed=seed)
        else:
            inversion = inversion_options(parsed[method], its, steps=steps, guidance=guidance, seed=seed,
                                          method_options=method_options, prompt=img.prompt)
            run = lambda: invert(pipe, img.image, img.prompt, inversion=inversion, progress=False)  # noqa: E731
        timed = img is images[0] and repeats > 0
        if timed:
            t_forward = min(t_forward, forward_time(pipe, images[0].prompt, size, steps, guidance, repeats=5))
            run()  # warm-up
            walls, network = [], []
            for _ in range(repeats):
                sync(adapter.device)
                with NetworkTime(adapter.network, adapter.device) as inside:
                    result = run()
                sync(adapter.device)
                walls.append(result.wall_time)
                if inside.calls == result.nfe > 0:  # the calls it counts, each through the forward (none replayed)
                    network.append((inside.seconds, result.wall_time / inside.seconds))
            wall = statistics.median(walls)
        with PeakMemory(adapter.device) as mem:
            result = run()
        if not timed:
            wall = result.wall_time
        rec = sample(result.setup, result.scheduler_latents, corrections=result.corrections,
                     step_conds=result.step_conds)
        with torch.no_grad():
            image = adapter.decode(rec, size)
        row = {
            "image": img.name, "method": method, "iterations": its, "steps": steps, "guidance": guidance,
            "nfe": result.nfe, "grad_evals": sum(s.grad_evals for s in result.steps),
            "psnr": round(psnr(_hwc(pixels), _hwc(image)), 3), "ssim": round(ssim(_hwc(pixels), _hwc(image)), 4),
            **perceptual_scores(lpips, clip, _hwc(image), _hwc(pixels), img.prompt),
            "latent_error": f"{float((rec - result.encoded).norm() / result.encoded.norm()):.3e}",
            "vae_ceiling_psnr": round(ceilings[img.name], 3), "wall_s": round(wall, 4),
            # the overhead ratio needs a timed run (a warm-up, then repeats); empty without one
            "forward_s": round(t_forward, 5),
            "overhead": round(overhead_ratio(walls, result.nfe, t_forward), 3) if timed else "",
            "network_s": round(statistics.median(n for n, _ in network), 4) if timed and network else "",
            "wall_over_network": round(statistics.median(r for _, r in network), 3) if timed and network else "",
            "peak_mem_mb": round(mem.peak_mb, 1), "status": result.status.value,
            "step_statuses": step_status_counts(result.steps), "timed": int(timed),
        }
        rows.append(row)
        residuals[f"{img.name}|{method}|{its}"] = [s.residual_norms for s in result.steps]
        write_rows(rows, out / "results.csv", COLUMNS)  # after every row: a killed run loses at most one row
        save_json(residuals, out / "residuals.json")
    meta = {"machine": machine_info(pipe), "model": model, "steps": steps, "guidance": guidance, "seed": seed,
            "repeats": repeats, "forward_s": t_forward,
            "images": [{"name": i.name, "prompt": i.prompt} for i in images],
            "rows": rows}
    save_json(meta, out / "results.json")
    if plots:
        make_plots(rows, residuals, out)
    return rows


