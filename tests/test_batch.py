"""Batch inversion: batched == one at a time; invert-dir resumes after a kill; accelerate splits the work."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import nrinv
from nrinv.batch import read_manifest

NAMES = ["astronaut", "coffee", "chelsea", "rocket", "camera", "hubble_deep_field", "immunohistochemistry"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    from skimage import data

    from nrinv.testing import tiny_pipeline

    root = tmp_path_factory.mktemp("batch")
    tiny_pipeline("sd", smooth=None).save_pretrained(root / "model")
    (root / "in").mkdir()
    for n in NAMES:
        arr = getattr(data, n)()
        Image.fromarray(arr).convert("RGB").resize((32, 32)).save(root / "in" / f"{n}.png")
    (root / "in" / "zz_broken.png").write_text("not an image")
    return root


def _cmd(workdir, out, *extra):
    return [sys.executable, "-m", "nrinv", "invert-dir", str(workdir / "in"), "-o", str(out), "--prompt", "a photo",
            "--model", str(workdir / "model"), "--steps", "6", "--batch-size", "2", "--method", "anderson",
            "--iterations", "3", *extra]


def _env():
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


def _latents(out: Path) -> dict:
    return {p.name: load_file(p)["scheduler_latents"] for p in sorted(out.glob("*.latent.safetensors"))}


@pytest.mark.parametrize("kind,guidance", [("sd", 3.0), ("sdxl", 0.0)])
def test_batched_equals_one_at_a_time(tiny, kind, guidance):
    from skimage import data

    images = [Image.fromarray(getattr(data, n)()).convert("RGB").resize((32, 32)) for n in NAMES[:3]]
    prompts = ["a photo of a cat", "a cup of coffee", "a red cat"]
    pipe = tiny(kind)
    kw = dict(method="anderson", num_inference_steps=4, guidance_scale=guidance, max_iterations=3, progress=False)
    batch = nrinv.invert_batch(pipe, images, prompts, **kw)
    for img, prompt, res in zip(images, prompts, batch):
        one = nrinv.invert(pipe, img, prompt, **kw)
        assert float((one.scheduler_latents - res.scheduler_latents).norm() / one.scheduler_latents.norm()) < 1e-5


def test_killed_run_resumes_to_identical_outputs(workdir):
    full, resumed = workdir / "full", workdir / "resumed"
    proc = subprocess.run(_cmd(workdir, full, "--quiet"), env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr  # an image failed: the run says so in its exit status
    assert "failed: zz_broken.png" in proc.stderr  # reported, and the other images are done
    reference = _latents(full)
    assert len(reference) == len(NAMES)

    proc = subprocess.Popen(_cmd(workdir, resumed, "--quiet"), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:  # kill it once some, but not all, images are done
        recs = read_manifest(resumed) if resumed.exists() else {}
        if sum(r["status"] == "done" for r in recs.values()) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = read_manifest(resumed)
    assert 0 < sum(r["status"] == "done" for r in partial.values()) < len(NAMES)
    assert not list(resumed.glob(".*.tmp"))  # no half-written file under a real name...
    proc = subprocess.run(_cmd(workdir, resumed), env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr  # the broken image was retried, and failed again
    assert "already done" in proc.stdout and "1 failed" in proc.stdout and "failed: zz_broken.png" in proc.stderr
    again = _latents(resumed)
    assert again.keys() == reference.keys()
    for name in reference:
        assert torch.equal(again[name], reference[name]), name
    for name in reference:
        meta = json.loads((resumed / name.replace(".latent.safetensors", ".json")).read_text())
        assert meta["settings"]["method"] == "anderson" and len(meta["steps"]) == 6


def test_accelerate_two_processes_cover_every_image_once(workdir):
    out = workdir / "acc"
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "nrinv", *_cmd(workdir, out, "--quiet")[3:]]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "failed: zz_broken.png" in proc.stderr  # the rank with the broken image says so
    seen = []
    for rank in (0, 1):
        lines = (out / f"manifest-{rank}.jsonl").read_text().splitlines()
        seen += [json.loads(line)["file"] for line in lines]
    assert sorted(seen) == sorted([f"{n}.png" for n in NAMES] + ["zz_broken.png"])
    assert len(_latents(out)) == len(NAMES)
    reference = _latents(workdir / "full") if (workdir / "full").exists() else None
    if reference:
        for name, latent in _latents(out).items():
            assert torch.allclose(latent, reference[name], rtol=1e-4, atol=1e-5)


def test_invert_dir_bad_input(workdir, tmp_path, capsys):
    from nrinv.cli import main

    assert main(["invert-dir", str(tmp_path / "nope"), "-o", str(tmp_path / "o"), "--prompt", "x"]) == 2
    assert "input folder not found" in capsys.readouterr().err
    assert main(["invert-dir", str(workdir / "in"), "-o", str(tmp_path / "o")]) == 2
    assert "--prompt" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_failed_images_are_retried_on_resume_and_the_exit_status_follows(workdir, tmp_path):
    from nrinv.cli import main

    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    shutil.copy(workdir / "in" / "astronaut.png", folder / "a.png")
    (folder / "b.png").write_text("not an image yet")
    argv = ["invert-dir", str(folder), "-o", str(out), "--prompt", "a photo", "--model", str(workdir / "model"),
            "--steps", "2", "--quiet"]
    assert main(argv) == 1
    assert main(argv + ["--skip-failed"]) == 1  # kept failed, and still counted as failed
    assert read_manifest(out)["b.png"]["status"] == "failed"
    shutil.copy(workdir / "in" / "coffee.png", folder / "b.png")  # the user fixes the file
    assert main(argv) == 0  # retried on resume: now every image is done
    records = read_manifest(out)
    assert records["a.png"]["status"] == records["b.png"]["status"] == "done"
    assert (out / "b.latent.safetensors").is_file()
