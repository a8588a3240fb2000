"""`nrinv invert` / `nrinv reconstruct` end to end on a tiny pipeline saved to a folder, and bad input."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from nrinv.cli import main

PROMPT = "a photo of a cat"


@pytest.fixture(scope="module")
def image_path(tmp_path_factory, astronaut32):
    path = tmp_path_factory.mktemp("img") / "astronaut.png"
    astronaut32.save(path)
    return path


def _invert(model_dir, image, out, *extra):
    return main(["invert", str(image), "--prompt", PROMPT, "--model", str(model_dir), "--steps", "5",
                 "-o", str(out), "--quiet", *extra])


def test_invert_then_reconstruct(model_dir, image_path, tmp_path):
    out = tmp_path / "lat.safetensors"
    assert _invert(model_dir, image_path, out, "--method", "newton_krylov", "--iterations", "3") == 0
    sidecar = json.loads(out.with_suffix(".json").read_text())
    s = sidecar["settings"]
    assert (s["method"], s["num_inference_steps"], s["prompt"], s["seed"]) == ("newton_krylov", 5, PROMPT, 0)
    assert s["options"]["max_iterations"] == 3
    assert len(sidecar["steps"]) == 5
    assert all(st["status"] in ("converged", "max_iterations") for st in sidecar["steps"])
    assert sidecar["nfe"] == sum(st["nfe"] for st in sidecar["steps"]) > 5

    png = tmp_path / "rec.png"
    assert main(["reconstruct", str(out), "-o", str(png), "--quiet"]) == 0
    rec = np.asarray(Image.open(png), dtype=np.float64)
    # the ceiling: what the VAE gives back for the input image
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model_dir)
    from safetensors.torch import load_file

    encoded = load_file(out)["encoded"]
    with torch.no_grad():
        ceiling = pipe.vae.decode(encoded / pipe.vae.config.scaling_factor).sample
    ceiling = ((ceiling[0].permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1) * 255
    assert np.abs(rec - ceiling).mean() < 2.0  # within ~1% of the reconstruction ceiling


def test_console_script_runs(model_dir, image_path, tmp_path):
    out = tmp_path / "lat.safetensors"
    proc = subprocess.run([sys.executable, "-m", "nrinv", "invert", str(image_path), "--prompt", PROMPT,
                           "--model", str(model_dir), "--steps", "2", "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and out.exists()
    assert "inverting" in proc.stderr  # the progress bar


def test_existing_output_needs_force(model_dir, image_path, tmp_path):
    out = tmp_path / "lat.safetensors"
    out.write_bytes(b"keep me")
    assert _invert(model_dir, image_path, out) == 2
    assert out.read_bytes() == b"keep me"
    assert _invert(model_dir, image_path, out, "--force") == 0


def _bad_inputs(tmp_path):
    truncated = tmp_path / "trunc.png"
    full = tmp_path / "full.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8) + 90).save(full)
    truncated.write_bytes(full.read_bytes()[:40])
    floaty = tmp_path / "float.tif"
    Image.fromarray(np.zeros((32, 32), np.float32)).save(floaty)
    return {
        "missing": ([str(tmp_path / "nope.png"), "--prompt", PROMPT], "not found"),
        "corrupt": ([str(truncated), "--prompt", PROMPT], "cannot read image"),
        "not an image": ([str(tmp_path / "text.png"), "--prompt", PROMPT], "cannot read image"),
        "float mode": ([str(floaty), "--prompt", PROMPT], "unsupported image mode F"),
        "unknown method": ([str(full), "--prompt", PROMPT, "--method", "magic"], "unknown method 'magic'"),
        "empty prompt": ([str(full), "--prompt", "  "], "prompt is empty"),
        "bad option": ([str(full), "--prompt", PROMPT, "--method", "gnri", "--option", "lamda=1"], "unknown option"),
        "zero steps": ([str(full), "--prompt", PROMPT, "--steps", "0"], "--steps must be >= 1"),
        "too large": ([str(full), "--prompt", PROMPT, "--max-pixels", "100"], "over the limit"),
        "missing model": ([str(full), "--prompt", PROMPT, "--model", str(tmp_path / "no-model")],
                          "no model_index.json"),
    }


@pytest.mark.parametrize("case", ["missing", "corrupt", "not an image", "float mode", "unknown method",
                                  "empty prompt", "bad option", "zero steps", "too large", "missing model"])
def test_bad_input_exits_2_and_writes_nothing(model_dir, tmp_path, capsys, case):
    (tmp_path / "text.png").write_text("hello")
    args, message = _bad_inputs(tmp_path)[case]
    before = set(p.name for p in tmp_path.iterdir())
    out = tmp_path / "out.safetensors"
    model = [] if "--model" in args else ["--model", str(model_dir)]
    assert main(["invert", *args, *model, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert set(p.name for p in tmp_path.iterdir()) == before


def test_rgba_and_grayscale_are_converted_with_a_note(model_dir, tmp_path, capsys):
    for mode in ("RGBA", "L"):
        img = Image.new(mode, (32, 32))
        path = tmp_path / f"{mode}.png"
        img.save(path)
        out = tmp_path / f"{mode}.safetensors"
        assert main(["invert", str(path), "--prompt", PROMPT, "--model", str(model_dir), "--steps", "2",
                     "-o", str(out)]) == 0
        assert json.loads(out.with_suffix(".json").read_text())["settings"]["notes"]
    assert "note:" in capsys.readouterr().err  # and nothing under --quiet (test_cli_converts_image_modes_with_a_note)


def test_reconstruct_rejects_foreign_files(tmp_path, capsys):
    bogus = tmp_path / "x.safetensors"
    bogus.write_bytes(b"\x00" * 10)
    assert main(["reconstruct", str(bogus), "-o", str(tmp_path / "o.png")]) == 2
    assert "cannot read latent file" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def _striped(path):
    """A drawing the built-in VAE cannot represent: 1-pixel blue stripes behind a yellow disc."""
    from PIL import ImageDraw

    img = Image.new("RGB", (64, 64), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for x in range(0, 64, 2):
        draw.line((x, 0, x, 63), fill=(30, 30, 200))
    draw.ellipse((16, 16, 48, 48), fill=(240, 200, 20))
    img.save(path)
    return path


def test_the_vae_ceiling_is_reported_with_a_note_when_low(tmp_path, capsys):
    from nrinv import shapes

    striped = _striped(tmp_path / "striped.png")
    out = tmp_path / "striped.safetensors"
    assert main(["invert", str(striped), "--prompt", "a yellow circle on a striped background", "--model",
                 "builtin:shapes", "--steps", "2", "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "VAE ceiling 8.6 dB" in captured.out
    assert "note: the model's VAE alone reproduces this image at 8.6 dB (PSNR of D(E(x))" in captured.err
    assert json.loads(out.with_suffix(".json").read_text())["vae_ceiling_psnr_db"] == pytest.approx(8.61, abs=0.05)

    render = tmp_path / "render.png"
    Image.fromarray(shapes.render(shapes.sample_scene(0), seed=0)).save(render)
    assert main(["edit", str(render), "--source", shapes.sample_scene(0).caption(), "--target", "a blue circle",
                 "--model", "builtin:shapes", "--steps", "2", "-o", str(tmp_path / "edit.png")]) == 0
    captured = capsys.readouterr()
    assert "VAE ceiling 36.3 dB" in captured.out and "VAE alone" not in captured.err  # a render: no note
