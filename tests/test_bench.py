"""`nrinv bench` on a tiny pipeline: files, rows, columns, the VAE ceiling, resuming."""
import csv
import json

import pytest

import nrinv.bench as bench
from nrinv.bench import COLUMNS, load_image_set, run_bench


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    from nrinv.testing import tiny_pipeline

    pipe = tiny_pipeline("sd")
    images = load_image_set("skimage", size=(32, 32), n=2)
    out = tmp_path_factory.mktemp("bench")
    rows = run_bench(pipe, images, out=out, methods=["ddim", "anderson"], iterations=[1, 3], steps=6, repeats=2,
                     progress=False)
    return pipe, images, out, rows


def test_outputs_rows_and_columns(bench_run):
    _, images, out, rows = bench_run
    for name in ("results.csv", "results.json", "psnr_vs_nfe.png", "psnr_vs_time.png", "residual_vs_iteration.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    with open(out / "results.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0].keys()) == COLUMNS
    # ddim has one budget, anderson two, for each of 2 images
    assert sorted((r["image"], r["method"], r["iterations"]) for r in table) == sorted(
        [(i.name, "ddim", "1") for i in images] + [(i.name, "anderson", str(k)) for i in images for k in (1, 3)])
    meta = json.loads((out / "results.json").read_text())
    for key in ("torch", "diffusers", "device", "dtype"):
        assert meta["machine"][key]
    assert meta["forward_s"] > 0 and len(meta["rows"]) == 6


def test_vae_ceiling_bounds_every_method_and_anderson_beats_ddim(bench_run):
    _, _, _, rows = bench_run
    for r in rows:
        assert float(r["psnr"]) <= float(r["vae_ceiling_psnr"]) + 0.05, r
        assert float(r["nfe"]) >= 6 and r["status"] in ("converged", "max_iterations")
    err = {(r["image"], r["method"], int(r["iterations"])): float(r["latent_error"]) for r in rows}
    for (image, method, its), e in err.items():
        if method == "anderson" and its == 3:
            assert e < 0.2 * err[(image, "ddim", 1)]


def test_rerun_resumes_without_recomputing(bench_run, monkeypatch):
    pipe, images, out, rows = bench_run

    def forbidden(*a, **k):
        raise AssertionError("a finished row was recomputed")

    monkeypatch.setattr(bench, "invert", forbidden)
    again = run_bench(pipe, images, out=out, methods=["ddim", "anderson"], iterations=[1, 3], steps=6, repeats=2,
                      progress=False, plots=False)
    assert len(again) == len(rows)


def test_bench_cli_rejects_bad_methods(capsys):
    from nrinv.cli import main

    assert main(["bench", "--methods", "ddim,magic", "--quiet"]) == 2
    assert "unknown method 'magic'" in capsys.readouterr().err
