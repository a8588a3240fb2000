"""Hostile and odd input gets a clean answer: each case here gave wrong output with exit 0,
a traceback, or a late failure before its fix."""
import json
import os
import stat
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import nrinv
from nrinv.cli import main
from nrinv.errors import InputError

PROMPT = "a photo of a cat"


@pytest.fixture
def image_path(tmp_path, astronaut32):
    path = tmp_path / "astronaut.png"
    astronaut32.save(path)
    return path


def _one_line_error(capsys, code, expected):
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and expected in err, err
    return err


def _no_model(monkeypatch):
    """Fail the test if a command gets as far as loading a model.  Every command module is imported
    first: one first imported while ``common.load_model`` is patched would keep the patched function
    after the test (``nrinv bench`` then failed in a later test with this message)."""
    import importlib

    import nrinv.cli.common as common

    for module in ("invert", "edit", "batch", "bench", "demo", "train_inverter"):
        importlib.import_module(f"nrinv.cli.{module}")

    def forbidden(*a, **k):
        raise AssertionError("the model was loaded before the input was checked")
    for module in ("invert", "edit", "batch"):
        monkeypatch.setattr(f"nrinv.cli.{module}.load_model", forbidden)
    monkeypatch.setattr(common, "load_model", forbidden)


def test_decompression_bomb_is_one_line(tmp_path, capsys, monkeypatch):
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    chunk = lambda k, d: struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d) & 0xFFFFFFFF)  # noqa
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    _no_model(monkeypatch)
    code = main(["invert", str(bomb), "--prompt", PROMPT, "-o", str(tmp_path / "x.safetensors")])
    _one_line_error(capsys, code, "pixels")
    with pytest.raises(InputError):
        nrinv.invert(None, bomb, PROMPT)


def test_16_bit_images_keep_their_range(tmp_path):
    # 8-bit values 35..215 stored as 16-bit: scaled by 255/65535 they come back as 35..215 (not 42..255)
    arr = (np.linspace(35, 215, 32 * 32).reshape(32, 32).round().astype(np.uint16) * 257)
    path = tmp_path / "gray16.png"
    Image.fromarray(arr).save(path)
    notes = []
    out = np.asarray(nrinv.io.images.load_image(path, notes=notes))
    assert out.min() == 35 and out.max() == 215 and "65535" in notes[0]
    dark = tmp_path / "dark16.png"
    Image.fromarray(np.full((8, 8), 1000, np.uint16)).save(dark)  # a dark image stays dark
    assert np.asarray(nrinv.io.images.load_image(dark)).max() == 4


@pytest.mark.parametrize("value", ["inf", "nan", "-3", "1e9", "-inf"])
def test_guidance_must_be_finite_and_in_range(value, image_path, tmp_path, capsys, monkeypatch):
    _no_model(monkeypatch)
    code = main(["invert", str(image_path), "--prompt", PROMPT, f"--guidance={value}", "-o",
                 str(tmp_path / "x.safetensors")])
    _one_line_error(capsys, code, "must be a finite number in [0, 50]")
    assert not (tmp_path / "x.safetensors").exists()


def test_guidance_range_in_the_api(tiny, astronaut32):
    pipe = tiny("sd")
    for bad in (float("inf"), float("nan"), -3.0, 1e9):
        with pytest.raises(InputError, match="finite number"):
            nrinv.invert(pipe, astronaut32, PROMPT, guidance_scale=bad, num_inference_steps=2)
        with pytest.raises(InputError, match="finite number"):
            nrinv.edit(pipe, astronaut32, PROMPT, "a dog", guidance_scale=bad, num_inference_steps=2)
        with pytest.raises(InputError, match="finite number"):
            nrinv.edit(pipe, astronaut32, PROMPT, "a dog", edit_guidance_scale=bad, num_inference_steps=2)
    assert nrinv.invert(pipe, astronaut32, PROMPT, guidance_scale=0.0, num_inference_steps=2).finite


def test_sidecars_are_strict_json(tmp_path):
    from nrinv.io.files import save_json, save_latent

    def strict(text):
        return json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))

    save_json({"residual": float("nan"), "list": [1.0, float("inf")], "ok": 1.5}, tmp_path / "s.json")
    data = strict((tmp_path / "s.json").read_text())
    assert data == {"residual": None, "list": [1.0, None], "ok": 1.5}
    save_latent({"scheduler_latents": torch.zeros(1)}, {"nrinv": json.dumps({"x": float("nan")})},
                tmp_path / "l.safetensors")
    tensors, meta = nrinv.io.files.load_latent(tmp_path / "l.safetensors")
    assert strict(meta["nrinv"]) == {"x": None}


@pytest.mark.parametrize("output, expected", [("lat.png", "ending in .safetensors"),
                                               ("lat.json", "ending in .safetensors")])
def test_latent_output_needs_its_extension(output, expected, image_path, tmp_path, capsys, monkeypatch):
    _no_model(monkeypatch)
    code = main(["invert", str(image_path), "--prompt", PROMPT, "-o", str(tmp_path / output)])
    _one_line_error(capsys, code, expected)
    assert not (tmp_path / output).exists()


def test_edit_outputs_need_their_extensions(image_path, tmp_path, capsys, monkeypatch):
    _no_model(monkeypatch)
    code = main(["edit", str(image_path), "--source", PROMPT, "--target", "a dog", "-o", str(tmp_path / "e.jpg")])
    _one_line_error(capsys, code, "ending in .png")
    code = main(["interpolate", str(image_path), str(image_path), "--prompt", PROMPT, "-o", str(tmp_path / "s.png"),
                 "--gif", str(tmp_path / "a.png")])
    _one_line_error(capsys, code, "ending in .gif")


@pytest.mark.parametrize("where", ["proc", "file-as-folder"])
def test_unwritable_output_is_refused_before_any_work(where, image_path, tmp_path, capsys, monkeypatch):
    _no_model(monkeypatch)
    if where == "proc":
        target = "/proc/nrinv-test.safetensors"
    else:
        (tmp_path / "existing_file").write_text("x")
        target = str(tmp_path / "existing_file" / "x.safetensors")
    code = main(["invert", str(image_path), "--prompt", PROMPT, "-o", target])
    _one_line_error(capsys, code, "cannot write")


@pytest.mark.parametrize("argv, expected", [
    (["--resize", "0x0"], "must be >= 1"),
    (["--resize", "4096x4096", "--max-pixels", "1000000"], "over the limit of 1000000"),
])
def test_resize_is_checked_and_held_to_max_pixels(argv, expected, image_path, tmp_path, capsys, monkeypatch):
    _no_model(monkeypatch)
    code = main(["invert", str(image_path), "--prompt", PROMPT, "-o", str(tmp_path / "x.safetensors"), *argv])
    _one_line_error(capsys, code, expected)


def test_sizes_far_from_the_native_one_get_a_note(tmp_path, capsys, monkeypatch):
    _no_model(monkeypatch)
    Image.new("RGB", (2000, 16)).save(tmp_path / "strip.png")
    with pytest.raises(AssertionError, match="model was loaded"):  # the note is printed before the model loads
        main(["invert", str(tmp_path / "strip.png"), "--prompt", PROMPT, "-o", str(tmp_path / "x.safetensors"),
              "--model", "builtin:shapes"])
    err = capsys.readouterr().err
    assert "note:" in err and "extreme aspect ratio" in err and "16x2000 (HxW)" in err


def test_odd_sizes_get_advice_in_the_models_terms_before_it_loads(tmp_path, capsys, monkeypatch):
    _no_model(monkeypatch)
    Image.new("RGB", (7, 5)).save(tmp_path / "small.png")
    code = main(["invert", str(tmp_path / "small.png"), "--prompt", PROMPT, "-o", str(tmp_path / "x.safetensors"),
                 "--model", "builtin:shapes"])
    _one_line_error(capsys, code, "pass --resize 64x64 (the model's native size)")


def test_size_advice_is_height_by_width_like_resize(tmp_path, capsys, monkeypatch):
    """A 30-wide, 10-high image: the advice is HxW, as --resize reads it (it was 32x8, transposed)."""
    from nrinv.io.images import load_image

    _no_model(monkeypatch)
    Image.new("RGB", (30, 10)).save(tmp_path / "wide.png")
    code = main(["invert", str(tmp_path / "wide.png"), "--prompt", PROMPT, "-o", str(tmp_path / "x.safetensors"),
                 "--model", "builtin:shapes"])
    _one_line_error(capsys, code, "image size 10x30 (HxW) is not a multiple of 4 for this model; "
                                  "pass --resize 64x64 (the model's native size) or 8x32")
    following = load_image(tmp_path / "wide.png", size=(8, 32))  # what --resize 8x32 does
    assert (following.height, following.width) == (8, 32)  # still wider than high


def test_too_many_steps_and_a_missing_device_are_one_line(model_dir, image_path, tmp_path, capsys):
    out = str(tmp_path / "x.safetensors")
    code = main(["invert", str(image_path), "--prompt", PROMPT, "--model", str(model_dir), "--steps", "1000",
                 "-o", out, "--quiet"])
    _one_line_error(capsys, code, "use at most 999 steps")
    if not torch.cuda.is_available():
        code = main(["invert", str(image_path), "--prompt", PROMPT, "--model", str(model_dir), "--device", "cuda",
                     "-o", out])
        _one_line_error(capsys, code, "CUDA is not available")
    code = main(["invert", str(image_path), "--prompt", PROMPT, "--steps", "oops"])
    _one_line_error(capsys, code, "invalid int value")  # argparse errors are one line too


def test_outputs_follow_the_umask(model_dir, image_path, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "x.latent.safetensors"
        assert main(["invert", str(image_path), "--prompt", PROMPT, "--model", str(model_dir), "--steps", "2",
                     "-o", str(out), "--quiet"]) == 0
        for path in (out, out.with_suffix(".json")):
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
        os.umask(0o077)
        out2 = tmp_path / "y.latent.safetensors"
        assert main(["invert", str(image_path), "--prompt", PROMPT, "--model", str(model_dir), "--steps", "2",
                     "-o", str(out2), "--quiet"]) == 0
        assert stat.S_IMODE(out2.stat().st_mode) == 0o600
    finally:
        os.umask(old)


# ------------------------------------------------------------------- the last tracebacks and odd messages
@pytest.mark.parametrize("ms", ["-5", "1000000", "5"])
def test_gif_frame_time_out_of_range_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch, ms, astronaut32):
    _no_model(monkeypatch)
    for name in ("a.png", "b.png"):
        astronaut32.save(tmp_path / name)
    code = main(["interpolate", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--prompt", PROMPT,
                 "-o", str(tmp_path / "strip.png"), "--gif", str(tmp_path / "strip.gif"), "--gif-ms", ms])
    _one_line_error(capsys, code, f"argument --gif-ms: a GIF frame lasts 10 to 655350 ms, got {ms}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]  # the strip PNG was left behind


def test_an_output_name_too_long_for_the_file_system_is_one_line(image_path, tmp_path, capsys, monkeypatch):
    _no_model(monkeypatch)
    code = main(["invert", str(image_path), "--prompt", PROMPT, "-o", str(tmp_path / ("a" * 300 + ".safetensors"))])
    _one_line_error(capsys, code, "is 312 bytes long; this file system allows 241 here; give a shorter name")


@pytest.mark.parametrize("command", [["bench", "--out"], ["demo", "-o"]])
def test_an_output_folder_that_is_a_file_is_one_line(tmp_path, capsys, monkeypatch, command):
    _no_model(monkeypatch)
    monkeypatch.setattr("nrinv.cli.bench.load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    monkeypatch.setattr("nrinv.demo.run_demo", lambda *a, **k: pytest.fail("the demo ran"))
    (tmp_path / "taken").write_text("mine")
    code = main([*command, str(tmp_path / "taken")])
    _one_line_error(capsys, code, f"is a file; {command[1]} names a folder to write into: give a folder name")
    assert (tmp_path / "taken").read_text() == "mine"


def test_an_output_written_meanwhile_by_another_run_is_one_line_and_kept(image_path, tmp_path, capsys,
                                                                         monkeypatch, model_dir):
    import nrinv.io.files as files

    out = tmp_path / "x.safetensors"
    original = files._create_beside

    calls = []

    def another_run_first(path):
        calls.extend([path] if Path(path) == out else [])
        # the first call is the check before any work; at the second this run writes its latent, and the
        # other run has just put its own file in place
        if Path(path) == out and len(calls) == 2:
            out.write_bytes(b"the other run's latent")
        return original(path)

    monkeypatch.setattr(files, "_create_beside", another_run_first)
    code = main(["invert", str(image_path), "--prompt", PROMPT, "--model", str(model_dir), "--steps", "2",
                 "-o", str(out), "--quiet"])
    _one_line_error(capsys, code, "x.safetensors was written by another run while this one worked; nothing was "
                                  "overwritten (pass --force to overwrite)")
    assert out.read_bytes() == b"the other run's latent"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["astronaut.png", "x.safetensors"]  # no sidecar or temporary


def test_a_seed_too_large_is_refused_before_the_model_loads(image_path, tmp_path, capsys, monkeypatch):
    _no_model(monkeypatch)
    code = main(["invert", str(image_path), "--prompt", PROMPT, "-o", str(tmp_path / "x.safetensors"),
                 "--seed", "1180591620717411303424"])
    _one_line_error(capsys, code, "argument --seed: the seed must be between 0 and 9223372036854775807")


@pytest.mark.parametrize("value, words", [("inf", "option mixing must be a number, got 'inf'"),
                                          ("Infinity", "option mixing must be a finite number, got inf"),
                                          ("NaN", "option mixing must be a finite number, got nan"),
                                          ("fast", "option mixing must be a number, got 'fast'")])
def test_solver_options_must_be_finite_numbers(image_path, tmp_path, capsys, monkeypatch, value, words):
    _no_model(monkeypatch)
    code = main(["invert", str(image_path), "--prompt", PROMPT, "-o", str(tmp_path / "x.safetensors"),
                 "--method", "anderson", "--option", f"mixing={value}"])
    _one_line_error(capsys, code, words)


def test_a_captions_csv_with_a_byte_order_mark_is_read(tmp_path):
    from nrinv.batch import read_captions

    path = tmp_path / "captions.csv"
    path.write_bytes("file,caption\nphoto.png,a red circle\n".encode("utf-8-sig"))  # as spreadsheets save it
    assert read_captions(path) == {"photo.png": "a red circle"}
    path = tmp_path / "captions.jsonl"
    path.write_bytes('{"file": "photo.png", "caption": "a red circle"}\n'.encode("utf-8-sig"))
    assert read_captions(path) == {"photo.png": "a red circle"}


def test_a_hub_id_without_a_network_fails_at_once_in_one_line(monkeypatch):
    import nrinv.loading as loading

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(loading, "_hub_unreachable", lambda timeout=5.0: "Name or service not known")
    with pytest.raises(InputError) as info:
        loading.load_pipeline("someone/not-cached-here", device="cpu")
    assert str(info.value) == ("could not load pipeline 'someone/not-cached-here': it is not in the local Hugging "
                               "Face cache and the Hugging Face hub cannot be reached (Name or service not known); "
                               "download it on a machine with a network, or give a local folder")
