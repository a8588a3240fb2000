"""Benchmark tables: resumable CSV rows, summaries, markdown and plots."""
from __future__ import annotations

import csv
import statistics
from pathlib import Path
from typing import Iterable, Optional, Sequence

from ..io.files import atomic_write

__all__ = ["read_rows", "write_rows", "summarize", "mean_present", "markdown_table", "make_plots", "claim_folder"]

#: the settings a bench folder's rows were run with, beside results.csv
SETTINGS_FILE = "settings.json"


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def write_rows(rows: list[dict], path: Path, columns: Sequence[str]) -> None:
    def write(tmp):
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(columns))
            w.writeheader()
            for r in rows:
                w.writerow({k: r.get(k, "") for k in columns})

    atomic_write(path, write)


def claim_folder(out: Path, settings: dict) -> None:
    """Before a bench runs into ``out``: rows there (a run to resume) must come from the same ``settings``
    (model, precision, images, size, seed, repeats, method options; methods, iterations, steps and
    guidance may differ: they are columns of every row), else ``InputError`` says what differs;
    otherwise ``settings`` are recorded there.  Rows of other settings were merged into one table."""
    import json

    from ..errors import InputError
    from ..io.files import save_json

    out = Path(out)
    recorded = out / SETTINGS_FILE
    if read_rows(out / "results.csv"):
        old = None
        if recorded.is_file():
            try:
                old = json.loads(recorded.read_text())
            except (OSError, ValueError):
                old = None
        if not isinstance(old, dict):
            raise InputError(f"{out} holds bench rows whose settings are not recorded; pass another --out (rows of "
                             "other settings would be merged into one table)")
        differ = [f"{key} {old.get(key)!r}, now {value!r}" for key, value in settings.items()
                  if old.get(key) != value]
        if differ:
            raise InputError(f"{out} holds rows run with other settings ({'; '.join(differ)}); pass another --out, "
                             "or the same settings to resume")
        return
    out.mkdir(parents=True, exist_ok=True)
    save_json(settings, recorded)


def summarize(rows: Iterable[dict]) -> list[dict]:
    """Mean over images per (method, iterations)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], int(r["iterations"]), int(r["steps"]), float(r["guidance"])), []).append(r)
    out = []
    order = lambda kv: (kv[0][2], kv[0][3], kv[0][0], kv[0][1])  # noqa: E731
    for (method, its, steps, guidance), rs in sorted(groups.items(), key=order):
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
            "wall_s": float(timed[0]["wall_s"]),
            "overhead": float(timed[0]["overhead"]) if timed[0].get("overhead") not in (None, "") else None,
            "wall_over_network": float(timed[0]["wall_over_network"])
            if timed[0].get("wall_over_network") not in (None, "") else None,
            "peak_mem_mb": max(float(r["peak_mem_mb"]) for r in rs), "statuses": statuses, "n": len(rs),
            **{k: mean_present(rs, k) for k in ("lpips", "clip_score")},
        })
    return out


def mean_present(rows: Sequence[dict], key: str) -> Optional[float]:
    """Mean of a column over the rows that have it (None when no row does)."""
    vals = [float(r[key]) for r in rows if r.get(key) not in (None, "")]
    return statistics.mean(vals) if vals else None


def markdown_table(summary: list[dict]) -> str:
    titles = {"lpips": "LPIPS", "clip_score": "CLIP score"}
    extra = [k for k in titles if any(s.get(k) is not None for s in summary)]
    head = "| method | iterations | NFE | PSNR dB | SSIM | " + "".join(f"{titles[k]} | " for k in extra)
    lines = [head + "wall s | overhead vs NFE x forward | wall / network time | peak mem MB |",
             "|---" * (9 + len(extra)) + "|"]
    ratio = lambda s, k: "" if s.get(k) is None else format(s[k], ".2f")  # noqa: E731
    for s in summary:
        cells = "".join("n/a | " if s.get(k) is None else f"{s[k]:.3f} | " for k in extra)
        lines.append(f"| {s['method']} | {s['iterations']} | {s['nfe']:.0f} | {s['psnr']:.2f} | {s['ssim']:.3f} | "
                     f"{cells}{s['wall_s']:.3f} | {ratio(s, 'overhead')} | {ratio(s, 'wall_over_network')} | "
                     f"{s['peak_mem_mb']:.0f} |")
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
