"""`nrinv bench` on a tiny pipeline: files, rows, columns, the VAE ceiling, resuming."""
import csv
import json

import pytest
import torch

import nrinv
import nrinv.bench.harness as bench
from nrinv.bench.harness import COLUMNS, run_bench
from nrinv.bench.images import load_image_set


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
    # the overhead ratio is a timed measurement: the first image's rows have it, the others leave it empty
    for r in table:
        assert (r["overhead"] != "") == (r["timed"] == "1"), r


def test_bench_measures_what_invert_runs_by_default(tiny, astronaut32):
    """anderson x1 in the bench is the default inversion's anderson x1 (warm start and all), not DDIM."""
    from nrinv.bench.harness import inversion_options, parse_method

    pipe = tiny("sd")
    inversion = inversion_options(parse_method("anderson"), 1, steps=6, guidance=1.0, seed=0)
    bench = nrinv.invert(pipe, astronaut32, "a photo of a cat", inversion=inversion)
    default = nrinv.invert(pipe, astronaut32, "a photo of a cat", num_inference_steps=6, max_iterations=1)
    ddim = nrinv.invert(pipe, astronaut32, "a photo of a cat", num_inference_steps=6, method="ddim")
    assert torch.equal(bench.scheduler_latents, default.scheduler_latents)
    assert not torch.allclose(bench.scheduler_latents, ddim.scheduler_latents, atol=1e-4)


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


# ------------------------------------------------------------------ LPIPS / CLIP from local weights
def test_lpips_from_local_weights_is_a_weighted_feature_distance(tmp_path):
    import numpy as np

    from nrinv.bench.perceptual import LPIPS
    from nrinv.testing import tiny_lpips_folder

    rng = np.random.default_rng(0)
    a, b = (rng.random((64, 64, 3)) for _ in range(2))
    lp = LPIPS.from_folder(tiny_lpips_folder(tmp_path / "w1", seed=3))
    d_ab, d_ba = lp.distance(a, b), lp.distance(b, a)
    assert lp.distance(a, a) == 0.0
    assert d_ab > 1e-3 and abs(d_ab - d_ba) < 1e-6 * d_ab
    # the heads weight squared differences of unit-normalised features linearly: with every weight
    # 1, each layer contributes mean_hw ||f^(a) - f^(b)||^2 in [0, 4], so the sum lies in (0, 20],
    # and weights 2 give exactly twice the distance of weights 1
    one = LPIPS.from_folder(tiny_lpips_folder(tmp_path / "one", seed=3, lin_value=1.0)).distance(a, b)
    two = LPIPS.from_folder(tiny_lpips_folder(tmp_path / "two", seed=3, lin_value=2.0)).distance(a, b)
    assert 0 < one <= 20 and abs(two - 2 * one) < 1e-5 * one
    # closer images are closer: a small perturbation of a is nearer to a than an unrelated image
    near = np.clip(a + 0.02 * rng.standard_normal(a.shape), 0, 1)
    assert lp.distance(a, near) < d_ab


def test_lpips_missing_or_wrong_weights_say_what_to_provide(tmp_path):
    import torch

    from nrinv.bench.perceptual import LPIPS, MetricWeightsMissing

    with pytest.raises(MetricWeightsMissing, match="not a folder"):
        LPIPS.from_folder(tmp_path / "absent")
    (tmp_path / "w").mkdir()
    torch.save({"lin0.model.1.weight": torch.ones(1, 64, 1, 1)}, tmp_path / "w" / "alex.pth")
    with pytest.raises(MetricWeightsMissing, match="lacks the AlexNet backbone.*alexnet-owt"):
        LPIPS.from_folder(tmp_path / "w")
    torch.save({"features.0.weight": torch.ones(2, 2)}, tmp_path / "w" / "alexnet.pth")
    with pytest.raises(MetricWeightsMissing, match="do not fit"):
        LPIPS.from_folder(tmp_path / "w")


def test_clip_score_matches_the_models_own_logits(tmp_path):
    import numpy as np
    import torch
    from PIL import Image

    from nrinv.bench.perceptual import CLIPScore
    from nrinv.testing import tiny_clip_folder

    folder = tiny_clip_folder(tmp_path / "clip")
    scorer = CLIPScore.from_folder(folder)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (48, 48, 3), dtype=np.uint8) for _ in range(3)]
    prompts = ["a red circle", "blue", "a large green star on the left"]
    got = scorer(images, prompts)
    # CLIPModel's forward: logits_per_image = exp(logit_scale) * cos(image, text), all pairs
    inputs = scorer.processor(text=prompts, images=[Image.fromarray(i) for i in images], return_tensors="pt",
                              padding=True)
    with torch.no_grad():
        out = scorer.model(**inputs)
        cos = torch.diagonal(out.logits_per_image) / scorer.model.logit_scale.exp()
    want = [100 * max(float(c), 0.0) for c in cos]
    assert got == pytest.approx(want, abs=1e-3)
    assert all(0 <= g <= 100 for g in got) and max(got) > 0


def test_bench_cli_missing_metric_weights_exit_2_before_any_work(tmp_path, capsys):
    from nrinv.cli import main

    out = tmp_path / "res"
    assert main(["bench", "--lpips", str(tmp_path / "nope"), "--out", str(out), "--quiet"]) == 2
    assert "LPIPS needs local weights" in capsys.readouterr().err
    assert main(["bench", "--clip", str(tmp_path), "--out", str(out), "--quiet"]) == 2
    assert "CLIP score needs a local transformers CLIP folder" in capsys.readouterr().err
    assert not out.exists()


# ------------------------------------------------------------------ edit metrics on the built-in model
@pytest.fixture(scope="module")
def edit_run(tmp_path_factory):
    import nrinv
    from nrinv.bench.edits import run_edit_bench
    from nrinv.testing import tiny_lpips_folder
    from nrinv.bench.perceptual import LPIPS

    pipe = nrinv.load_pipeline("builtin:shapes")
    out = tmp_path_factory.mktemp("edits")
    lp = LPIPS.from_folder(tiny_lpips_folder(tmp_path_factory.mktemp("lp")))
    rows = run_edit_bench(pipe, out=out, methods=["ddim", "anderson"], iterations=[2], n=3, lpips=lp,
                          progress=False)
    return pipe, out, rows, lp


def test_edit_bench_rows_scores_and_resume(edit_run, monkeypatch):
    import nrinv.api
    from nrinv.bench.edits import EDIT_COLUMNS, run_edit_bench, summarize_edits
    from nrinv.workflows import edit_defaults

    pipe, out, rows, lp = edit_run
    with open(out / "edits.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0].keys()) == EDIT_COLUMNS
    assert sorted((r["item"], r["method"], r["iterations"]) for r in table) == sorted(
        [(str(i), "ddim", "1") for i in range(3)] + [(str(i), "anderson", "2") for i in range(3)])
    assert [r["changed"] for r in table if r["method"] == "ddim"] == ["color", "shape", "background"]
    for r in rows:
        assert r["target"] in (0.0, 1.0) and r["preserved"] in (0.0, 1.0)
        assert 15 < r["psnr_target"] < 50 and r["lpips_target"] > 0 and r["clip_target"] == ""
        assert r["nfe"] == (20 if r["method"] == "ddim" else 40)
        assert r["batch_rows"] >= r["nfe"]  # counted by a hook on the denoiser: the inversion's and the edit's
        d = edit_defaults(pipe)
        assert (r["strength"], r["guidance"], r["guide_from_source"]) == (d["strength"], d["edit_guidance_scale"],
                                                                           d["guide_from_source"])
    summary = {s["method"]: s for s in summarize_edits(rows)}
    # the shipped model edits colour and background reliably (measured 100% on the edit set)
    assert summary["anderson"]["target_by_attribute"]["color"] == 1.0
    assert summary["anderson"]["preserved"] >= 2 / 3

    def forbidden(*a, **k):
        raise AssertionError("a finished edit was recomputed")

    monkeypatch.setattr(nrinv.api, "invert", forbidden)
    again = run_edit_bench(pipe, out=out, methods=["ddim", "anderson"], iterations=[2], n=3, lpips=lp, progress=False)
    assert len(again) == len(rows)


def test_edit_bench_baseline_rows_count_the_denoisers_calls(edit_run, tmp_path):
    """DiffEdit as a baseline row of the edit bench, at its tuned settings (inpaint strength 0.6 of 20 steps):
    1 mask call carrying 40 rows, 12 inversion calls of 1 row, 12 guided sampling calls of 2 rows."""
    import pytest

    from nrinv.bench.edits import run_edit_bench
    from nrinv.errors import InputError

    pipe = edit_run[0]
    rows = run_edit_bench(pipe, out=tmp_path, methods=[], iterations=[2], n=1, baselines=["diffedit"], progress=False)
    (row,) = rows
    assert (row["method"], row["nfe"], row["batch_rows"], row["strength"]) == ("diffedit", 25, 76, 0.6)
    assert row["target"] == 1.0 and row["preserved"] == 1.0 and 20 < row["psnr_target"] < 50
    with pytest.raises(InputError, match="unknown edit baseline"):
        run_edit_bench(pipe, out=tmp_path, methods=[], iterations=[2], n=1, baselines=["pix2pix"], progress=False)


def test_bench_cli_edits_need_the_builtin_model(tmp_path, capsys):
    from nrinv.cli import main
    from nrinv.testing import tiny_pipeline

    folder = tmp_path / "tiny-sd"
    tiny_pipeline("sd", smooth=None).save_pretrained(folder, safe_serialization=True)
    out = tmp_path / "res"
    assert main(["bench", "--edits", "2", "--model", str(folder), "--out", str(out), "--quiet"]) == 2
    assert "--model builtin:shapes" in capsys.readouterr().err
    assert main(["bench", "--edits", "2", "--edit-strength", "1.5", "--out", str(out), "--quiet"]) == 2
    assert "--edit-strength must be in (0, 1]" in capsys.readouterr().err
    assert not out.exists()


def test_bench_cli_edit_baselines_reach_the_edit_bench(tmp_path, capsys):
    """``--edit-baselines`` adds DiffEdit's row to edits.csv (at its tuned settings: 25 calls carrying 76
    batch rows, measured on the built-in model); unknown names and baselines without ``--edits`` are refused
    before any work."""
    import csv

    from nrinv.cli import main

    out = tmp_path / "res"
    assert main(["bench", "--edits", "1", "--edit-baselines", "pix2pix", "--out", str(out), "--quiet"]) == 2
    assert "unknown edit baseline 'pix2pix'; one of diffedit, ledits++, ledits++sigma_min" in capsys.readouterr().err
    assert main(["bench", "--edit-baselines", "diffedit", "--out", str(out), "--quiet"]) == 2
    assert "--edit-baselines needs --edits N" in capsys.readouterr().err
    assert not out.exists()
    assert main(["bench", "--methods", "ddim", "--iterations", "1", "--n-images", "1", "--repeats", "0",
                 "--steps", "2", "--edits", "1", "--edit-baselines", "diffedit", "--out", str(out), "--quiet"]) == 0
    with open(out / "edits.csv", newline="") as fh:
        rows = {r["method"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"ddim", "diffedit"}
    assert (int(rows["diffedit"]["nfe"]), int(rows["diffedit"]["batch_rows"])) == (25, 76)


def test_the_overhead_ratio_cannot_fall_below_one_under_load():
    """Under load the call was timed (median) in a busy moment and the inversions in a quiet one: 0.58.
    The fastest inversion over NFE times the fastest call cannot be below 1 (each call costs at least
    the fastest call)."""
    from nrinv.bench.harness import overhead_ratio

    calls = [0.06, 0.06, 0.03]  # two of three probes slowed by another job
    walls = [0.36, 0.35, 0.34]  # 10 calls of >= 0.03 s plus the solver's own work
    assert 0.35 / (10 * sorted(calls)[1]) == pytest.approx(0.583, abs=1e-3)  # the old median-based ratio
    assert overhead_ratio(walls, 10, min(calls)) == pytest.approx(0.34 / 0.30)


def test_bench_peak_memory_on_cuda_counts_reserved_memory(monkeypatch):
    """A captured CUDA graph's private pool is reserved but not allocated (pytorch#121932): the bench's
    peak must be reserved-memory growth.  The CUDA counters are faked: 100 MB reserved at the start,
    a block that reserves 700 MB at its peak of which only 40 MB is ever allocated."""
    import torch

    from nrinv.bench.measure import PeakMemory

    mb = 2 ** 20
    counters = {"reserved": 100 * mb, "max_reserved": 100 * mb, "allocated": 10 * mb, "max_allocated": 10 * mb}
    for name, fn in {"synchronize": lambda *a: None, "reset_peak_memory_stats": lambda *a: None,
                     "memory_reserved": lambda *a: counters["reserved"],
                     "max_memory_reserved": lambda *a: counters["max_reserved"],
                     "memory_allocated": lambda *a: counters["allocated"],
                     "max_memory_allocated": lambda *a: counters["max_allocated"]}.items():
        monkeypatch.setattr(torch.cuda, name, fn)
    with PeakMemory(torch.device("cuda")) as mem:
        counters.update(max_reserved=800 * mb, max_allocated=50 * mb)
    assert mem.peak_mb == 700.0
