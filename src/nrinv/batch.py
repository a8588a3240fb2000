"""Invert a folder of images, resumably, split across processes.

Layout of the output folder::

    OUT/<stem>.latent.safetensors   latent + settings (atomic write)
    OUT/<stem>.json                 sidecar: settings and per-step stats (atomic write)
    OUT/manifest-<rank>.jsonl       one line per finished or failed image, appended after its files

A run killed at any moment loses at most the images in flight: their files are either complete
(renamed into place) or absent, and an image counts as done only when the manifest says so *and*
its latent exists.  Re-running skips done images and retries failed ones (unless ``retry_failed`` is
False: then they stay failed, and are still counted as failed).
With ``accelerate launch --num_processes K`` each process takes every K-th image.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from tqdm.auto import tqdm

from .api import InversionOptions
from .errors import InputError
from .io.files import save_json, save_latent
from .io.images import load_image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


@dataclass
class BatchSummary:
    done: list[str] = field(default_factory=list)          # inverted by this run
    skipped: list[str] = field(default_factory=list)       # done by an earlier run
    failed: dict[str, str] = field(default_factory=dict)   # failed in this run (or earlier, not retried)

    @property
    def ok(self) -> bool:
        """Every image of this share has its latent."""
        return not self.failed

    def line(self) -> str:
        return f"{len(self.done)} inverted, {len(self.skipped)} already done, {len(self.failed)} failed"


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise InputError(f"input folder not found: {folder}")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def read_captions(path: Path) -> dict[str, str]:
    """``file,caption`` CSV or ``{"file": ..., "caption": ...}`` JSONL, keyed by file name."""
    if not path.is_file():
        raise InputError(f"captions file not found: {path}")
    captions: dict[str, str] = {}
    try:
        if path.suffix.lower() == ".csv":
            # utf-8-sig: spreadsheets save CSV with a byte-order mark, which would rename the first column
            with open(path, newline="", encoding="utf-8-sig") as fh:
                for row in csv.DictReader(fh):
                    captions[Path(row["file"]).name] = row["caption"]
        else:
            for line in path.read_text(encoding="utf-8-sig").splitlines():
                if line.strip():
                    item = json.loads(line)
                    captions[Path(item["file"]).name] = item["caption"]
    except (KeyError, json.JSONDecodeError, csv.Error, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read captions {path}: expected columns/keys 'file' and 'caption' ({exc})") from None
    return captions


def read_manifest(out: Path) -> dict[str, dict]:
    records: dict[str, dict] = {}
    for path in sorted(out.glob("manifest-*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill: the image is simply redone
            records[rec["file"]] = rec
    return records


def _append(path: Path, record: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def invert_dir(
    pipe: Any,
    folder: Path,
    out: Path,
    *,
    prompt: Optional[str] = None,
    captions: Optional[dict[str, str]] = None,
    model: str = "",
    batch_size: int = 1,
    rank: int = 0,
    world_size: int = 1,
    retry_failed: bool = True,
    size: Optional[tuple[int, int]] = None,
    max_pixels: Optional[int] = None,
    progress: bool = True,
    inversion: Optional[InversionOptions] = None,
) -> BatchSummary:
    """Invert this process's share of ``folder`` into ``out`` with ``inversion``'s parameters; see the
    module docstring."""
    from .api import invert_batch

    if (prompt is None) == (captions is None):
        raise InputError("give either a fixed prompt or a captions file")
    if batch_size < 1:
        raise InputError("batch size must be >= 1")
    files = list_images(Path(folder))[rank::world_size]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / f"manifest-{rank}.jsonl"
    records = read_manifest(out)
    summary = BatchSummary()
    todo: list[Path] = []
    for path in files:
        rec = records.get(path.name)
        latent_path = out / f"{path.stem}.latent.safetensors"
        if rec and rec["status"] == "done" and latent_path.is_file():
            summary.skipped.append(path.name)
            continue
        if rec and rec["status"] == "failed" and not retry_failed:
            summary.failed[path.name] = f"failed in an earlier run: {rec.get('error', 'unknown error')}"
            continue
        todo.append(path)

    def fail(path: Path, reason: str) -> None:
        summary.failed[path.name] = reason
        _append(manifest, {"file": path.name, "status": "failed", "error": reason})

    bar = tqdm(total=len(todo), desc=f"invert-dir[{rank}]", disable=not progress)
    queue: list[tuple[Path, Any, str]] = []

    def flush() -> None:
        groups: dict[tuple, list] = {}
        for item in queue:
            groups.setdefault(item[1].size, []).append(item)
        for group in groups.values():
            try:
                results = invert_batch(pipe, [g[1] for g in group], [g[2] for g in group], progress=False,
                                       inversion=inversion)
            except (InputError, ValueError) as exc:
                for g in group:
                    fail(g[0], str(exc).splitlines()[0])
                bar.update(len(group))
                continue
            for (path, _, _caption), res in zip(group, results):
                stats = res.stats()
                stats.update(model=model, input=path.name)
                latent_path = out / f"{path.stem}.latent.safetensors"
                save_latent({"scheduler_latents": res.scheduler_latents, "latents": res.latents,
                             "encoded": res.encoded},
                            {"nrinv": json.dumps(stats)}, latent_path)
                save_json(stats, out / f"{path.stem}.json")
                _append(manifest, {"file": path.name, "status": "done" if res.finite else "failed",
                                   "latent": latent_path.name, "nfe": res.nfe, "result_status": res.status.value,
                                   **({} if res.finite else {"error": f"solver status {res.status.value}"})})
                if res.finite:
                    summary.done.append(path.name)
                else:
                    summary.failed[path.name] = f"solver status {res.status.value}"
                bar.update(1)
        queue.clear()

    for path in todo:
        caption = prompt if prompt is not None else (captions or {}).get(path.name)
        if not caption or not caption.strip():
            fail(path, "no caption for this image")
            bar.update(1)
            continue
        try:
            notes: list[str] = []
            kwargs = {"notes": notes, "size": size}
            if max_pixels is not None:
                kwargs["max_pixels"] = max_pixels
            image = load_image(path, **kwargs)
        except InputError as exc:
            fail(path, str(exc))
            bar.update(1)
            continue
        queue.append((path, image, caption))
        if len(queue) >= batch_size:
            flush()
    if queue:
        flush()
    bar.close()
    return summary
