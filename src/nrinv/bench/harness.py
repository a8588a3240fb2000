"""Benchmark harness: every method x iteration budget on the same images, seeds and process.

Writes ``results.csv`` / ``results.json`` (rows + machine, versions, device, dtype) and plots:
PSNR vs NFE, PSNR vs wall time (VAE ceiling as a line), per-step residual vs iteration.
Re-running into the same folder skips finished rows.

Timing: a warm-up inversion, then the median of ``repeats`` timed inversions of the first image
(``torch.cuda.synchronize`` around each on GPU), and in the same run the bare cost of one network
call (median of 20), so ``overhead = wall / (NFE x forward)`` is a ratio measured on one machine.
Peak memory: CUDA max allocated on GPU; on CPU the growth of the resident set over the run,
sampled every 2 ms by a thread.
"""
from __future__ import annotations

import csv
import json
import platform
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .._version import __version__
from ..core.adapters import adapter_for
from ..io.images import InputError, load_image, save_json, to_tensor
from ..core.inversion import invert, prepare, sample
from ..metrics import as_numpy, psnr, ssim
from ..core.solvers import get_solver

__all__ = ["BenchImage", "load_image_set", "run_bench", "psnr", "ssim", "COLUMNS"]

COLUMNS = ["image", "method", "iterations", "steps", "guidance", "nfe", "grad_evals", "psnr", "ssim", "lpips",
           "clip_score", "latent_error", "vae_ceiling_psnr", "wall_s", "forward_s", "overhead", "peak_mem_mb", "status",
           "step_statuses", "timed"]


@dataclass
class BenchImage:
    name: str
    image: Any  # PIL image
    prompt: str


def _hwc(t: torch.Tensor) -> np.ndarray:
    return as_numpy(t[0])


SKIMAGE_PHOTOS = {
    "astronaut": "a photo of an astronaut in a white space suit holding a helmet, with a flag",
    "coffee": "a photo of a cup of coffee on a saucer",
    "chelsea": "a photo of a ginger tabby cat",
    "rocket": "a photo of a rocket on a launch pad",
    "hubble": "a photo of a galaxy deep field in space",
}


def load_image_set(spec: str, *, size: tuple[int, int], n: int = 4, seed: int = 0) -> list[BenchImage]:
    """``shapes`` (built-in world renders), ``skimage`` (bundled photos), or a folder with captions.

    A folder holds images plus ``captions.csv`` (``file,caption``) or ``captions.jsonl``
    (``{"file": ..., "caption": ...}`` per line).
    """
    from PIL import Image

    if spec == "shapes":
        from .. import shapes

        out = []
        for i in range(n):
            scene = shapes.sample_scene(seed + 10_000 + i)
            img = Image.fromarray(shapes.render(scene, seed=seed + i)).resize((size[1], size[0]))
            out.append(BenchImage(f"shapes-{seed + i}", img, scene.caption()))
        return out
    if spec == "skimage":
        from skimage import data

        out = []
        for name, caption in list(SKIMAGE_PHOTOS.items())[:n]:
            arr = getattr(data, name)()
            img = load_image(arr if arr.ndim == 3 else np.stack([arr] * 3, -1), size=size)
            out.append(BenchImage(name, img, caption))
        return out
    folder = Path(spec)
    if not folder.is_dir():
        raise InputError(f"--images must be 'shapes', 'skimage' or a folder with captions; got {spec!r}")
    captions: dict[str, str] = {}
    if (folder / "captions.csv").is_file():
        with open(folder / "captions.csv", newline="") as fh:
            for row in csv.DictReader(fh):
                captions[row["file"]] = row["caption"]
    elif (folder / "captions.jsonl").is_file():
        for line in (folder / "captions.jsonl").read_text().splitlines():
            if line.strip():
                item = json.loads(line)
                captions[item["file"]] = item["caption"]
    else:
        raise InputError(f"{folder} has no captions.csv or captions.jsonl")
    out = []
    for file, caption in sorted(captions.items())[:n]:
        out.append(BenchImage(Path(file).stem, load_image(folder / file, size=size), caption))
    return out


class _PeakMemory:
    """Peak memory growth in MB during a block: CUDA max allocated, else sampled resident set."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mb = 0.0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return self
        import psutil

        self.proc = psutil.Process()
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self.running = True

        def sample():
            while self.running:
                self.peak = max(self.peak, self.proc.memory_info().rss)
                time.sleep(0.002)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = (torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20
        else:
            self.running = False
            self.thread.join()
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self.peak_mb = (self.peak - self.base) / 2**20
        return False


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_time(pipe: Any, prompt: str, size: tuple[int, int], steps: int, guidance: float,
                 repeats: int = 20) -> float:
    """Median seconds of one guided network call (what one NFE costs), measured here and now."""
    setup = prepare(pipe, prompt, size=size, num_inference_steps=steps, guidance_scale=guidance)
    adapter = setup.adapter
    step = setup.schedule.steps[len(setup.schedule.steps) // 2]
    z = torch.randn(adapter.latent_shape(*size), generator=torch.Generator().manual_seed(0)).to(adapter.device)
    times = []
    with torch.no_grad():
        for i in range(repeats + 3):
            _sync(adapter.device)
            t0 = time.perf_counter()
            adapter.denoise(step.input_scale * z, step.timestep, setup.cond)
            _sync(adapter.device)
            if i >= 3:
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


def parse_method(spec: str) -> tuple[str, dict]:
    """``"gnri"`` or a labelled variant ``"gnri[lam=0.01,eta=0.001]"`` -> (solver name, options).

    ``warm_start=true`` in the brackets switches on the inversion loop's warm start.
    """
    spec = spec.strip()
    if "[" not in spec:
        get_solver(spec)
        return spec, {}
    if not spec.endswith("]"):
        raise ValueError(f"bad method spec {spec!r}; write e.g. gnri[lam=0.01]")
    name, body = spec[:-1].split("[", 1)
    get_solver(name)
    options: dict[str, Any] = {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value.strip()
    from ..core.solvers import make_options

    make_options(name, {k: v for k, v in options.items() if k != "warm_start"})  # reject unknown keys now
    return name, options


def invert_kwargs(method: tuple[str, dict], iterations: int, *, steps: int, guidance: float, seed: int,
                  method_options: Optional[dict[str, dict]] = None) -> dict:
    """Keyword arguments of ``nrinv.invert`` for a parsed method spec at an iteration budget."""
    solver, options = method
    options = {**(method_options or {}).get(solver, {}), **options}
    warm = bool(options.pop("warm_start", False))  # an inversion-loop option, not a solver option
    return dict(method=solver, num_inference_steps=steps, guidance_scale=guidance, seed=seed, options=options,
                max_iterations=None if solver == "ddim" else iterations, warm_start=warm, progress=False)


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


def _row_key(row: dict) -> tuple:
    return (row["image"], row["method"], int(row["iterations"]), int(row["steps"]), float(row["guidance"]))


def _read_existing(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _write_csv(rows: list[dict], path: Path, columns: Sequence[str] = COLUMNS) -> None:
    from ..io.images import atomic_write

    def write(tmp):
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(columns))
            w.writeheader()
            for r in rows:
                w.writerow({k: r.get(k, "") for k in columns})

    atomic_write(path, write)


def machine_info(pipe: Any) -> dict:
    import diffusers

    adapter = adapter_for(pipe)
    info = {
        "nrinv": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
        "python": platform.python_version(), "platform": platform.platform(), "processor": platform.processor(),
        "cpu_threads": torch.get_num_threads(), "device": str(adapter.device), "dtype": str(adapter.dtype),
        "pipeline": type(pipe).__name__, "scheduler": type(pipe.scheduler).__name__,
    }
    if adapter.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(adapter.device)
    return info


def run_bench(
    pipe: Any,
    images: Sequence[BenchImage],
    *,
    out: Path,
    model: str = "",
    methods: Sequence[str] = ("ddim", "fixed_point", "renoise", "gnri", "gnri_grad", "anderson", "newton_krylov"),
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
    parsed = {m: parse_method(m) for m in methods}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    adapter = adapter_for(pipe)
    defaults = adapter.default_settings()
    steps = int(defaults["num_inference_steps"] if steps is None else steps)
    guidance = float(defaults["guidance_scale"] if guidance is None else guidance)
    size = (images[0].image.height, images[0].image.width)
    rows = _read_existing(out / "results.csv")
    done = {_row_key(r) for r in rows}
    residuals: dict[str, Any] = {}
    if (out / "residuals.json").is_file():
        residuals = json.loads((out / "residuals.json").read_text())

    t_forward = forward_time(pipe, images[0].prompt, size, steps, guidance)
    ceilings: dict[str, float] = {}
    jobs = [(img, m, it) for img in images for m in methods
            for it in ((1,) if parsed[m][0] == "ddim" else iterations)]
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
        kwargs = invert_kwargs(parsed[method], its, steps=steps, guidance=guidance, seed=seed,
                               method_options=method_options)
        timed = img is images[0] and repeats > 0
        if timed:
            invert(pipe, img.image, img.prompt, **kwargs)  # warm-up
            walls = []
            for _ in range(repeats):
                _sync(adapter.device)
                result = invert(pipe, img.image, img.prompt, **kwargs)
                _sync(adapter.device)
                walls.append(result.wall_time)
            wall = statistics.median(walls)
        with _PeakMemory(adapter.device) as mem:
            result = invert(pipe, img.image, img.prompt, **kwargs)
        if not timed:
            wall = result.wall_time
        rec = sample(result.setup, result.latent)
        with torch.no_grad():
            image = adapter.decode(rec, size)
        row = {
            "image": img.name, "method": method, "iterations": its, "steps": steps, "guidance": guidance,
            "nfe": result.nfe, "grad_evals": sum(s.grad_evals for s in result.steps),
            "psnr": round(psnr(_hwc(pixels), _hwc(image)), 3), "ssim": round(ssim(_hwc(pixels), _hwc(image)), 4),
            **perceptual_scores(lpips, clip, _hwc(image), _hwc(pixels), img.prompt),
            "latent_error": f"{float((rec - result.encoded).norm() / result.encoded.norm()):.3e}",
            "vae_ceiling_psnr": round(ceilings[img.name], 3), "wall_s": round(wall, 4),
            "forward_s": round(t_forward, 5), "overhead": round(wall / max(result.nfe * t_forward, 1e-12), 3),
            "peak_mem_mb": round(mem.peak_mb, 1), "status": result.status.value,
            "step_statuses": step_status_counts(result.steps), "timed": int(timed),
        }
        rows.append(row)
        residuals[f"{img.name}|{method}|{its}"] = [s.residual_norms for s in result.steps]
        _write_csv(rows, out / "results.csv")  # after every row: a killed run loses at most one row
        save_json(residuals, out / "residuals.json")
    meta = {"machine": machine_info(pipe), "model": model, "steps": steps, "guidance": guidance, "seed": seed,
            "repeats": repeats, "forward_s": t_forward, "images": [{"name": i.name, "prompt": i.prompt} for i in images],
            "rows": rows}
    save_json(meta, out / "results.json")
    if plots:
        make_plots(rows, residuals, out)
    return rows


def summarize(rows: Iterable[dict]) -> list[dict]:
    """Mean over images per (method, iterations)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], int(r["iterations"]), int(r["steps"]), float(r["guidance"])), []).append(r)
    out = []
    for (method, its, steps, guidance), rs in sorted(groups.items(), key=lambda kv: (kv[0][2], kv[0][3], kv[0][0], kv[0][1])):
        timed = [r for r in rs if int(r["timed"])] or rs
        statuses: dict[str, int] = {}
        for r in rs:
            statuses[r["status"]] = statuses.get(r["status"], 0) + 1
        out.append({
            "method": method, "iterations": its, "steps": steps, "guidance": guidance,
            "nfe": statistics.mean(float(r["nfe"]) for r in rs),
            "psnr": statistics.mean(float(r["psnr"]) for r in rs),
            "ssim": statistics.mean(float(r["ssim"]) for r in rs),
            "vae_ceiling_psnr": statistics.mean(float(r["vae_ceiling_psnr"]) for r in rs),
            "wall_s": float(timed[0]["wall_s"]), "overhead": float(timed[0]["overhead"]),
            "peak_mem_mb": max(float(r["peak_mem_mb"]) for r in rs), "statuses": statuses, "n": len(rs),
            **{k: _mean_present(rs, k) for k in ("lpips", "clip_score")},
        })
    return out


def _mean_present(rows: Sequence[dict], key: str) -> Optional[float]:
    """Mean of a column over the rows that have it (None when no row does)."""
    vals = [float(r[key]) for r in rows if r.get(key) not in (None, "")]
    return statistics.mean(vals) if vals else None


def markdown_table(summary: list[dict]) -> str:
    titles = {"lpips": "LPIPS", "clip_score": "CLIP score"}
    extra = [k for k in titles if any(s.get(k) is not None for s in summary)]
    head = "| method | iterations | NFE | PSNR dB | SSIM | " + "".join(f"{titles[k]} | " for k in extra)
    lines = [head + "wall s | overhead vs NFE x forward | peak mem MB |", "|---" * (8 + len(extra)) + "|"]
    for s in summary:
        cells = "".join("n/a | " if s.get(k) is None else f"{s[k]:.3f} | " for k in extra)
        lines.append(f"| {s['method']} | {s['iterations']} | {s['nfe']:.0f} | {s['psnr']:.2f} | {s['ssim']:.3f} | "
                     f"{cells}{s['wall_s']:.3f} | {s['overhead']:.2f} | {s['peak_mem_mb']:.0f} |")
    return "\n".join(lines)


def make_plots(rows: list[dict], residuals: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(rows)
    if not summary:
        return
    ceiling = statistics.mean(s["vae_ceiling_psnr"] for s in summary)
    methods = sorted({s["method"] for s in summary})
    mem = {m: max(s["peak_mem_mb"] for s in summary if s["method"] == m) for m in methods}
    for xkey, fname, xlabel in (("nfe", "psnr_vs_nfe.png", "network calls (NFE) per image"),
                                ("wall_s", "psnr_vs_time.png", "wall time per image (s)")):
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for m in methods:
            pts = sorted((s[xkey], s["psnr"]) for s in summary if s["method"] == m)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"{m} (peak {mem[m]:.0f} MB)")
        ax.axhline(ceiling, color="k", ls="--", lw=1, label=f"VAE ceiling {ceiling:.1f} dB")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("reconstruction PSNR (dB)")
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for m in methods:
        best = max((k for k in residuals if k.split("|")[1] == m), key=lambda k: int(k.split("|")[2]), default=None)
        if best is None:
            continue
        per_step = residuals[best]
        length = max(len(r) for r in per_step)
        mean = [statistics.mean(r[i] for r in per_step if len(r) > i) for i in range(length)]
        ax.semilogy(range(1, length + 1), mean, "o-", label=f"{m} ({best.split('|')[2]} it.)")
    ax.set_xlabel("iteration within a step")
    ax.set_ylabel("mean rms residual ||z - f(z)||")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "residual_vs_iteration.png", dpi=110)
    plt.close(fig)
