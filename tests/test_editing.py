"""Editing, interpolation, rare-concept seeds and encoding adjustment: API and CLI on tiny pipelines.

The properties checked are exact consequences of the construction (shared schedule and noise):
strength -> 0 returns the encoded image, target == source at strength 1 regenerates the input to
the inversion's accuracy, interpolation endpoints are the two reconstructions, several targets
share one inversion.  The built-in model tests run when its folder holds model_index.json.
"""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import nrinv
from nrinv.workflows import editing
from nrinv.cli import main
from nrinv.errors import InputError
from conftest import builtin

SRC = "a photo of a cat"
TGT = "a red dog on the left"
STEPS = 4
KINDS = ("sd", "sdxl", "lcm", "sd3", "flux")


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def _edit(pipe, image, targets, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    kw.setdefault("method", "newton_krylov")
    kw.setdefault("max_iterations", 3)
    kw.setdefault("progress", False)
    return nrinv.edit(pipe, image, SRC, targets, **kw)


# ------------------------------------------------------------------------------------------------ API
@pytest.mark.parametrize("kind", KINDS)
def test_edit_same_prompt_full_strength_regenerates_input(tiny, astronaut32, kind):
    pipe = tiny(kind)
    # the tiny random LCM inverts to a noise of rms ~1900, where the default rtol (relative to the iterate) stops
    # the first step at an absolute residual of ~0.2 on one path or 1e-3 on another (a 1e-7 change of the probed
    # coefficients picks the path: 2.4e-2 or 6e-4 here); a tolerance that pins the solve
    options = {"rtol": 1e-7} if kind == "lcm" else None
    res = _edit(pipe, astronaut32, [SRC, TGT], strength=1.0, options=options)
    inv = res.inversion
    assert res.settings["start_step"] == 0 and res.settings["rerun_steps"] == STEPS
    # target == source, strength 1: exactly the reconstruction from the inverted noise ...
    rec = nrinv.reconstruct(pipe, inv, output_type="latent").latents
    assert torch.allclose(res.latents[0], rec, atol=1e-5)
    # ... which is the input latent to the inversion's accuracy
    assert _rel(res.latents[0], inv.encoded) < 5e-3
    # another prompt gives another image
    assert _rel(res.latents[1], inv.encoded) > 2 * _rel(res.latents[0], inv.encoded)
    assert len(res.images) == 2 and res.images[0].size == (32, 32) and res.images[0].mode == "RGB"  # PIL, as diffusers


@pytest.mark.parametrize("kind", ("sd", "sdxl"))
def test_guidance_from_source_follows_the_reconstruction_where_prompts_agree(tiny, astronaut32, kind):
    pipe = tiny(kind)
    kw = dict(strength=0.5, guidance_scale=1.0, edit_guidance_scale=3.0)
    res = _edit(pipe, astronaut32, [SRC, TGT], guide_from_source=True, **kw)
    assert res.settings["guide_from_source"] is True
    k = res.settings["start_step"]
    # e(source) + 3 (e(source) - e(source)) = e(source): the inversion's own path at guidance 1
    expected = nrinv.core.sample(res.inversion.setup, res.inversion.trajectory[k], start=k)
    assert torch.allclose(res.latents[0], expected, atol=1e-5)
    assert _rel(res.latents[1], expected) > 1e-3
    # guided from the empty prompt instead, the same target leaves that path
    plain = _edit(pipe, astronaut32, SRC, guide_from_source=False, **kw)
    assert plain.settings["guide_from_source"] is False
    assert _rel(plain.latents[0], expected) > 1e-3


def test_local_edit_keeps_the_unmasked_latent_on_the_inverted_trajectory(tiny, astronaut32):
    pipe = tiny("sd")
    kw = dict(strength=0.5, guidance_scale=1.0, edit_guidance_scale=3.0, guide_from_source=True, mask_threshold=0.3)
    res = _edit(pipe, astronaut32, [SRC, TGT], **kw)
    assert res.settings["mask_threshold"] == 0.3
    inv = res.inversion
    # same prompt: the predictions agree everywhere, the mask is empty, the edit is the encoded latent
    assert torch.equal(res.latents[0], inv.encoded)
    k = editing.mask_step(len(inv.setup.schedule), res.settings["start_step"])  # read at the middle or later
    cond = inv.setup.adapter.conditioning(TGT, SRC, 3.0, inv.setup.size)
    mask = editing.local_edit_mask(inv.setup, inv.trajectory[k], k, cond, 0.3)
    assert mask.shape == (1, 1) + inv.encoded.shape[2:] and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert 0 < float(mask.mean()) < 1
    # outside the mask the edited latent is the encoded one exactly; inside it changed
    outside, inside = mask.expand_as(inv.encoded) == 0, mask.expand_as(inv.encoded) == 1
    assert torch.equal(res.latents[1][outside], inv.encoded[outside])
    assert float((res.latents[1][inside] - inv.encoded[inside]).abs().mean()) > 1e-3
    with pytest.raises(InputError, match="mask threshold"):
        _edit(pipe, astronaut32, TGT, mask_threshold=1.5)


def test_mask_paste_keeps_the_reconstructions_pixels_outside_the_mask(tiny, astronaut32):
    """With ``mask_paste`` the pixels outside the (widened) mask are the reconstruction's exactly; inside, the
    edit's.  Without it the decoder mixes the edited latents into their neighbours."""
    pipe = tiny("sd")
    kw = dict(strength=0.5, guidance_scale=1.0, edit_guidance_scale=3.0, guide_from_source=True, mask_threshold=0.3,
              output_type="pt")
    pasted = _edit(pipe, astronaut32, TGT, mask_paste=True, **kw)
    plain = _edit(pipe, astronaut32, TGT, mask_paste=False, **kw)
    assert pasted.settings["mask_paste"] is True and plain.settings["mask_paste"] is False
    assert torch.equal(pasted.latents[0], plain.latents[0])  # the lever acts on pixels only
    inv = pasted.inversion
    setup = inv.setup
    recon = setup.adapter.decode(inv.trajectory[-1].float(), setup.size).float().detach()
    k = editing.mask_step(len(setup.schedule), pasted.settings["start_step"])
    cond = setup.adapter.conditioning(TGT, SRC, 3.0, setup.size)
    mask = editing.local_edit_mask(setup, inv.trajectory[k], k, cond, 0.3)
    assert 0 < float(mask.mean()) < 1
    scale = recon.shape[-1] // mask.shape[-1]
    wide = torch.nn.functional.max_pool2d(mask, 5, 1, 2)  # the feather reaches one more latent pixel
    outside = torch.nn.functional.interpolate(wide, scale_factor=scale, mode="nearest") == 0
    inside = torch.nn.functional.interpolate(mask, scale_factor=scale, mode="nearest") == 1
    image, before = (im.images[0].detach().float().reshape(recon.shape) for im in (pasted, plain))
    out3 = outside.expand_as(recon)
    assert bool(out3.any()) and torch.allclose(image[out3], recon[out3], atol=1e-6)
    assert float((before[out3] - recon[out3]).abs().max()) > 1e-3  # the decoder's bleed that the paste removes
    assert torch.allclose(image[inside.expand_as(recon)], before[inside.expand_as(recon)], atol=1e-6)


def test_off_object_alpha_is_the_background_away_from_both_objects():
    """1 on the pixels away from the object of both images (a square recoloured, a rectangle added), 0 on either
    object, a ramp over the one-pixel ring around them (wider by ``margin``); None without an object."""
    recon = torch.empty(1, 3, 32, 32)
    recon[:] = torch.tensor([0.2, 0.3, 0.8]).view(1, 3, 1, 1)
    recon[..., 8:14, 8:14] = torch.tensor([0.9, 0.1, 0.1]).view(1, 3, 1, 1)
    image = recon.clone()
    image[..., 8:14, 8:14] = torch.tensor([0.1, 0.9, 0.1]).view(1, 3, 1, 1)
    disc = torch.zeros(32, 32, dtype=torch.bool)
    disc[20:25, 20:26] = True
    image[0, :, disc] = torch.tensor([0.9, 0.9, 0.1]).view(3, 1)
    off = editing.off_object_alpha(image, recon, 0)[0, 0]
    assert off[8:14, 8:14].max() == 0 and off[disc].max() == 0
    assert 0 < float(off[7, 10]) < 1 and 0 < float(off[14, 10]) < 1     # the ring: a ramp
    assert float(off[5, 10]) == 1 and float(off[16, 10]) == 1 and float(off[0, 0]) == 1
    assert float(off[0:6, 20:32].min()) == 1                              # the background far from both
    wide = editing.off_object_alpha(image, recon, 2)[0, 0]
    assert float(wide[6, 10]) == 0 and 0 < float(wide[5, 10]) < 1 and float(wide[3, 10]) == 1
    plain = torch.full_like(recon, 0.5)
    assert editing.off_object_alpha(plain, recon, 0) is None and editing.off_object_alpha(image, plain, 0) is None


@pytest.mark.parametrize("kind", ("sd", "sdxl"))
def test_small_strength_returns_the_encoded_image(tiny, astronaut32, kind):
    pipe = tiny(kind)
    res = _edit(pipe, astronaut32, TGT, strength=0.01, method="ddim", max_iterations=None, output_type="pt")
    assert res.settings["rerun_steps"] == 0
    assert torch.equal(res.latents[0], res.inversion.encoded)
    with torch.no_grad():
        ceiling = nrinv.core.adapter_for(pipe).decode(res.inversion.encoded, (32, 32))
    assert torch.allclose(res.images[0], ceiling[0])


def test_strength_sets_the_start_step_and_shares_the_trajectory(tiny, astronaut32):
    pipe = tiny("sd")
    res = _edit(pipe, astronaut32, [SRC, TGT], strength=0.5)
    k = res.settings["start_step"]
    assert k == STEPS - 2
    setup = res.inversion.setup
    expected = nrinv.core.sample(setup, res.inversion.trajectory[k], start=k)  # source cond: continues the trajectory
    assert torch.allclose(res.latents[0], expected, atol=1e-6)
    assert _rel(res.latents[0], res.inversion.encoded) < 5e-3


def test_several_targets_share_one_inversion(tiny, astronaut32, monkeypatch):
    calls = []
    real = editing.invert_tensor

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(editing, "invert_tensor", counting)
    res = _edit(tiny("sd"), astronaut32, [SRC, TGT, "a blue cat"], strength=0.75, method="ddim",
                max_iterations=None)
    assert len(calls) == 1
    assert res.inversion.nfe == STEPS  # DDIM inversion: one call per step, once
    assert len(res.images) == 3 and res.target_prompts == [SRC, TGT, "a blue cat"]
    st = res.stats(1)
    assert st["target_prompt"] == TGT and st["inversion"]["nfe"] == STEPS and "regenerate" in st["timings_s"]
    json.dumps(st)


def test_edit_guidance_above_one_uses_cfg(tiny, astronaut32):
    pipe = tiny("sd")
    a = _edit(pipe, astronaut32, TGT, strength=1.0, edit_guidance_scale=1.0, method="ddim", max_iterations=None)
    b = _edit(pipe, astronaut32, TGT, strength=1.0, edit_guidance_scale=3.0, method="ddim", max_iterations=None)
    assert b.settings["edit_guidance_scale"] == 3.0 and b.settings["guidance_scale"] == 1.0
    assert not torch.allclose(a.latents[0], b.latents[0])


def test_adjust_encoding_is_seeded_and_small(tiny, astronaut32):
    pipe = tiny("sd")
    adapter = nrinv.core.adapter_for(pipe)
    with torch.no_grad():
        z = adapter.encode(nrinv.io.images.to_tensor(astronaut32))
    a1 = editing.adjust_encoding(pipe, z, SRC, strength=0.05, seed=0, height=32, width=32, num_inference_steps=STEPS)
    a2 = editing.adjust_encoding(pipe, z, SRC, strength=0.05, seed=0, height=32, width=32, num_inference_steps=STEPS)
    a3 = editing.adjust_encoding(pipe, z, SRC, strength=0.5, seed=0, height=32, width=32, num_inference_steps=STEPS)
    assert torch.equal(a1, a2) and a1.shape == z.shape
    assert 0 < _rel(a1, z) < _rel(a3, z)
    # as the encoded latent of an inversion
    inv = nrinv.invert(pipe, image_latents=a1, prompt=SRC, height=32, width=32, num_inference_steps=STEPS)
    assert torch.equal(inv.encoded, a1)
    res = _edit(pipe, astronaut32, TGT, encode_adjust=0.05, strength=0.5)
    assert res.adjusted is not None and torch.equal(res.inversion.encoded, res.adjusted)
    assert res.settings["encode_adjust"] == 0.05 and "encode_adjust" in res.timings


@pytest.mark.parametrize("kind", ("sd3", "lcm"))
def test_adjust_encoding_other_families(tiny, astronaut32, kind):
    pipe = tiny(kind)
    with torch.no_grad():
        z = nrinv.core.adapter_for(pipe).encode(nrinv.io.images.to_tensor(astronaut32))
    a = editing.adjust_encoding(pipe, z, SRC, strength=0.1, height=32, width=32)
    assert torch.isfinite(a).all() and 0 < _rel(a, z) < 1


def test_slerp_keeps_norms_and_endpoints():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    b = b * (a.norm() / b.norm())
    for w in (0.1, 0.5, 0.9):
        assert math.isclose(float(nrinv.workflows.slerp(a, b, w).norm()), float(a.norm()), rel_tol=1e-5)
    assert torch.equal(nrinv.workflows.slerp(a, b, 0), a) and torch.equal(nrinv.workflows.slerp(a, b, 1), b)
    # the norm follows a straight line between different norms; lerp would shrink it
    c = 2 * b
    assert math.isclose(float(nrinv.workflows.slerp(a, c, 0.5).norm()), 1.5 * float(a.norm()), rel_tol=1e-5)
    assert float(torch.lerp(a, b, 0.5).norm()) < 0.8 * float(a.norm())
    assert torch.allclose(nrinv.workflows.slerp(a, a, 0.3), a, atol=1e-5)


@pytest.mark.parametrize("kind", ("sd", "sdxl"))
def test_interpolate_endpoints_are_the_reconstructions(tiny, astronaut32, kind):
    pipe = tiny(kind)
    other = astronaut32.transpose(Image.FLIP_LEFT_RIGHT)
    res = nrinv.interpolate(pipe, astronaut32, other, [SRC, TGT], n=3, num_inference_steps=STEPS,
                            method="newton_krylov", max_iterations=2, progress=False)
    assert res.weights == [0.0, 0.5, 1.0] and len(res.images) == 3
    inv_a, inv_b = res.inversions
    assert inv_a.settings["prompt"] == SRC and inv_b.settings["prompt"] == TGT
    rec_a = nrinv.reconstruct(pipe, inv_a, output_type="latent").latents
    rec_b = nrinv.reconstruct(pipe, inv_b, output_type="latent").latents
    assert torch.allclose(res.latents[0], rec_a, atol=1e-5) and torch.allclose(res.latents[2], rec_b, atol=1e-5)
    assert _rel(res.latents[0], inv_a.encoded) < 1e-2 and _rel(res.latents[2], inv_b.encoded) < 1e-2
    mid = res.latents[1]
    assert _rel(mid, rec_a) > 1e-3 and _rel(mid, rec_b) > 1e-3
    json.dumps(res.stats())


def test_interpolate_sizes_must_match(tiny, astronaut32):
    small = astronaut32.resize((16, 16))
    with pytest.raises(InputError, match="different sizes"):
        nrinv.interpolate(tiny("sd"), astronaut32, small, SRC, n=2, num_inference_steps=2, progress=False)
    res = nrinv.interpolate(tiny("sd"), astronaut32, small, SRC, n=1, num_inference_steps=2, method="ddim",
                            resize=True, output_type="pt")
    assert res.weights == [0.5] and res.images[0].shape == (3, 32, 32)


@pytest.mark.parametrize("kind", ("sd", "sdxl"))
def test_seed_from_images_centroid(tiny, astronaut32, kind):
    pipe = tiny(kind)
    examples = [astronaut32, astronaut32.transpose(Image.FLIP_LEFT_RIGHT), astronaut32.rotate(90)]
    res = nrinv.seed_from_images(pipe, examples, SRC, n_samples=3, spread=0.2, seed=1,
                                 num_inference_steps=STEPS, method="ddim", progress=False)
    setup = res.inversions[0].setup
    typical = setup.schedule.init_noise_sigma * math.sqrt(res.centroid.numel())
    assert math.isclose(float(res.centroid.norm()), typical, rel_tol=1e-5)
    mean = torch.stack([inv.scheduler_latents for inv in res.inversions]).mean(0)
    cos = float((mean * res.centroid).sum() / (mean.norm() * res.centroid.norm()))
    assert cos > 0.9999  # the centroid's direction
    assert torch.equal(res.noises[0], res.centroid) and len(res.images) == 3
    for z in res.noises[1:]:
        assert math.isclose(float(z.norm()), typical, rel_tol=1e-4)
        c = float((z * res.centroid).sum() / (z.norm() * res.centroid.norm()))
        assert 0.5 < c < 0.9999
    zero = nrinv.seed_from_images(pipe, examples[:2], SRC, n_samples=2, spread=0.0, num_inference_steps=2,
                                  method="ddim", progress=False)
    assert torch.equal(zero.noises[0], zero.noises[1])


@pytest.mark.parametrize("call", [
    lambda p, im: nrinv.edit(p, im, "", TGT, num_inference_steps=2),
    lambda p, im: nrinv.edit(p, im, SRC, "  ", num_inference_steps=2),
    lambda p, im: nrinv.edit(p, im, SRC, [], num_inference_steps=2),
    lambda p, im: nrinv.edit(p, im, SRC, TGT, strength=0.0),
    lambda p, im: nrinv.edit(p, im, SRC, TGT, strength=1.5),
    lambda p, im: nrinv.edit(p, im, SRC, TGT, num_inference_steps=0),
    lambda p, im: nrinv.edit(p, im, SRC, TGT, encode_adjust=2.0),
    lambda p, im: nrinv.edit(p, im, SRC, TGT, max_pixels=100),
    lambda p, im: nrinv.interpolate(p, im, im, SRC, n=0),
    lambda p, im: nrinv.interpolate(p, im, im, [SRC, TGT, SRC]),
    lambda p, im: nrinv.seed_from_images(p, [im], SRC, n_samples=0),
    lambda p, im: nrinv.seed_from_images(p, [], SRC),
    lambda p, im: nrinv.seed_from_images(p, [im], ""),
    lambda p, im: nrinv.edit(p, "/nonexistent/x.png", SRC, TGT),
], ids=["empty-source", "blank-target", "no-target", "strength0", "strength1.5", "steps0", "adjust2",
        "max-pixels", "n0", "three-prompts", "samples0", "no-images", "empty-prompt", "missing-file"])
def test_api_bad_input_raises_input_error(tiny, astronaut32, call):
    with pytest.raises(InputError):
        call(tiny("sd"), astronaut32)


def test_api_size_not_multiple(tiny, astronaut32):
    with pytest.raises(InputError, match="multiple"):
        nrinv.edit(tiny("sd"), astronaut32.resize((31, 31)), SRC, TGT, num_inference_steps=2, progress=False)


# ------------------------------------------------------------------------------------------------ CLI
@pytest.fixture
def cli_pipe(tiny, monkeypatch):
    """The CLI loads the tiny SD pipeline instead of the built-in model (loading is tested in test_cli)."""
    import nrinv.cli.edit as cli_edit

    loaded = []

    def fake_load(model, dtype, device, cuda_graphs=True):
        loaded.append(model)
        return tiny("sd")

    monkeypatch.setattr(cli_edit, "load_model", fake_load)
    return loaded


@pytest.fixture
def image_path(tmp_path, astronaut32):
    path = tmp_path / "in" / "astronaut.png"
    path.parent.mkdir()
    astronaut32.save(path)
    return path


def _files(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_cli_edit_one_and_several_targets(cli_pipe, image_path, tmp_path, capsys):
    out = tmp_path / "out" / "edit.png"
    args = ["edit", str(image_path), "--source", SRC, "--target", TGT, "--steps", "3", "--strength", "0.67",
            "--method", "anderson", "--iterations", "2", "--seed", "3", "-o", str(out), "--quiet"]
    assert main(args) == 0
    assert _files(out.parent) == ["edit.json", "edit.png"]
    meta = json.loads(out.with_suffix(".json").read_text())
    s = meta["settings"]
    got = (s["method"], s["num_inference_steps"], s["seed"], s["strength"], s["rerun_steps"])
    assert got == ("anderson", 3, 3, 0.67, 2)
    assert s["source_prompt"] == SRC and meta["target_prompt"] == TGT and meta["version"] == nrinv.__version__
    assert len(meta["inversion"]["steps"]) == 3 and meta["inversion"]["settings"]["options"]["max_iterations"] == 2
    assert "total" in meta["timings_s"] and "model" in meta
    assert Image.open(out).size == (32, 32)
    assert s["guide_from_source"] is False  # the tiny pipeline's default

    plain, guided = tmp_path / "plain.png", tmp_path / "guided.png"  # with classifier-free guidance
    assert main(args[:-3] + ["--edit-guidance", "3", "-o", str(plain), "--quiet"]) == 0
    assert main(args[:-3] + ["--edit-guidance", "3", "--guide-from-source", "-o", str(guided), "--quiet"]) == 0
    assert json.loads(guided.with_suffix(".json").read_text())["settings"]["guide_from_source"] is True
    assert np.abs(np.asarray(Image.open(guided), float) - np.asarray(Image.open(plain), float)).mean() > 0.1

    multi = tmp_path / "multi" / "e.png"
    assert main(["edit", str(image_path), "--source", SRC, "--target", TGT, "--target", SRC, "--steps", "2",
                 "-o", str(multi), "--quiet"]) == 0
    assert _files(multi.parent) == ["e-0.json", "e-0.png", "e-1.json", "e-1.png"]
    assert json.loads((multi.parent / "e-1.json").read_text())["target_prompt"] == SRC
    assert capsys.readouterr().out == ""  # --quiet


def test_cli_existing_output_needs_force_and_nothing_is_written(cli_pipe, image_path, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "e-1.png").write_bytes(b"keep me")
    args = ["edit", str(image_path), "--source", SRC, "--target", TGT, "--target", SRC, "--steps", "2",
            "-o", str(folder / "e.png"), "--quiet"]
    assert main(args) == 2
    assert _files(folder) == ["e-1.png"] and (folder / "e-1.png").read_bytes() == b"keep me"
    assert cli_pipe == []  # refused before loading the model
    assert main(args + ["--force"]) == 0
    assert (folder / "e-1.png").read_bytes() != b"keep me" and len(_files(folder)) == 4


def test_cli_interpolate_strip_and_gif(cli_pipe, image_path, tmp_path, astronaut32):
    b = image_path.parent / "b.png"
    astronaut32.transpose(Image.FLIP_LEFT_RIGHT).save(b)
    out = tmp_path / "out" / "strip.png"
    gif = tmp_path / "out" / "anim.gif"
    assert main(["interpolate", str(image_path), str(b), "--prompt", SRC, "--prompt-b", TGT, "-n", "3",
                 "--steps", "2", "--method", "ddim", "-o", str(out), "--gif", str(gif), "--quiet"]) == 0
    assert Image.open(out).size == (3 * 32, 32)
    with Image.open(gif) as g:
        assert g.n_frames == 4  # 3 frames there and 1 back
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["settings"]["prompt_b"] == TGT and len(meta["inversions"]) == 2 and meta["gif"] == str(gif)


def test_cli_interpolate_mismatched_sizes(cli_pipe, image_path, tmp_path, astronaut32, capsys):
    b = image_path.parent / "b.png"
    astronaut32.resize((16, 16)).save(b)
    out = tmp_path / "out" / "strip.png"
    args = ["interpolate", str(image_path), str(b), "--prompt", SRC, "-n", "2", "--steps", "2", "--method", "ddim",
            "-o", str(out), "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "different sizes" in err and "--resize" in err and len(err.strip().splitlines()) == 1
    assert not out.parent.exists()
    assert main(args + ["--resize"]) == 0 and Image.open(out).size == (64, 32)


def test_cli_seed_grid(cli_pipe, image_path, tmp_path, astronaut32):
    b = image_path.parent / "b.png"
    astronaut32.rotate(90).save(b)
    out = tmp_path / "out" / "grid.png"
    assert main(["seed", str(image_path), str(b), "--prompt", SRC, "-n", "3", "--columns", "2", "--steps", "2",
                 "--method", "ddim", "-o", str(out), "--quiet"]) == 0
    assert Image.open(out).size == (64, 64)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["settings"]["n_samples"] == 3 and meta["settings"]["n_examples"] == 2


def _bad_images(folder, astronaut32):
    folder.mkdir(exist_ok=True)
    good = folder / "good.png"
    astronaut32.save(good)
    data = good.read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "garbage.png").write_bytes(b"not an image at all")
    return folder


@pytest.mark.parametrize("argv", [
    ["edit", "{dir}/truncated.png", "--source", SRC, "--target", TGT],
    ["edit", "{dir}/garbage.png", "--source", SRC, "--target", TGT],
    ["edit", "{dir}/missing.png", "--source", SRC, "--target", TGT],
    ["edit", "{dir}/good.png", "--source", SRC, "--target", TGT, "--max-pixels", "100"],
    ["edit", "{dir}/good.png", "--source", SRC, "--target", TGT, "--strength", "0"],
    ["edit", "{dir}/good.png", "--source", SRC, "--target", TGT, "--strength", "1.01"],
    ["edit", "{dir}/good.png", "--source", "", "--target", TGT],
    ["edit", "{dir}/good.png", "--source", SRC, "--target", " "],
    ["edit", "{dir}/good.png", "--source", SRC, "--target", TGT, "--steps", "0"],
    ["edit", "{dir}/good.png", "--source", SRC, "--target", TGT, "--method", "nope"],
    ["edit", "{dir}/good.png", "--source", SRC, "--target", TGT, "--encode-adjust", "1.5"],
    ["interpolate", "{dir}/good.png", "{dir}/truncated.png", "--prompt", SRC],
    ["interpolate", "{dir}/good.png", "{dir}/good.png", "--prompt", SRC, "-n", "0"],
    ["interpolate", "{dir}/good.png", "{dir}/good.png", "--prompt", ""],
    ["interpolate", "{dir}/good.png", "{dir}/good.png", "--prompt", SRC, "--steps", "0"],
    ["seed", "{dir}/good.png", "{dir}/garbage.png", "--prompt", SRC],
    ["seed", "{dir}/good.png", "--prompt", SRC, "-n", "0"],
    ["seed", "{dir}/good.png", "--prompt", " "],
    ["seed", "{dir}/good.png", "--prompt", SRC, "--max-pixels", "10"],
])
def test_cli_bad_input_exit_2_nothing_written(cli_pipe, tmp_path, astronaut32, capsys, argv):
    folder = _bad_images(tmp_path / "in", astronaut32)
    out = tmp_path / "out" / "result.png"
    args = [a.replace("{dir}", str(folder)) for a in argv] + ["-o", str(out), "--quiet"]
    if argv[0] == "interpolate":
        args += ["--gif", str(tmp_path / "out" / "a.gif")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"nrinv {argv[0]}: error:") and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
    assert cli_pipe == []  # rejected before the model was loaded
    assert _files(folder) == ["garbage.png", "good.png", "truncated.png"]


@pytest.mark.parametrize("mode", ["RGBA", "L", "I;16"])
def test_cli_converts_image_modes_with_a_note(cli_pipe, tmp_path, astronaut32, capsys, mode):
    path = tmp_path / f"img-{mode.replace(';', '')}.png"
    if mode == "I;16":
        arr = (np.asarray(astronaut32.convert("L"), dtype=np.uint16) * 257)
        Image.fromarray(arr).save(path)  # uint16 -> mode I;16
    else:
        astronaut32.convert(mode).save(path)
    out = tmp_path / "out.png"
    assert main(["edit", str(path), "--source", SRC, "--target", TGT, "--steps", "2", "--method", "ddim",
                 "-o", str(out)]) == 0
    assert "note:" in capsys.readouterr().err
    assert main(["edit", str(path), "--source", SRC, "--target", TGT, "--steps", "2", "--method", "ddim",
                 "-o", str(out), "--quiet", "--force"]) == 0
    assert capsys.readouterr().err == ""  # --quiet: nothing but errors
    assert Image.open(out).mode == "RGB"


# ------------------------------------------------------------------------------------ built-in model


@builtin
def test_builtin_edit_changes_the_attribute(shapes_pipe):
    from nrinv.shapes import judge
    from nrinv.shapes.editset import edit_set

    items = edit_set(6, seed=1)
    hits = preserved = 0
    for item in items:
        res = nrinv.edit(shapes_pipe, item["source_image"], item["source_caption"], item["target_caption"],
                         progress=False)
        img = np.asarray(res.images[0])
        read = judge(img)
        tgt = item["target"].as_dict()
        hits += read[item["changed"]] == tgt[item["changed"]]
        preserved += all(read[a] == tgt[a] for a in ("position", "size"))
    assert hits >= 4 and preserved >= 5


@builtin
def test_builtin_interpolation_frames_are_scenes(shapes_pipe):
    from nrinv.shapes import judge, render, sample_scene

    a, b = sample_scene(11), sample_scene(12)
    res = nrinv.interpolate(shapes_pipe, render(a, 11), render(b, 12), [a.caption(), b.caption()], n=3,
                            progress=False)
    reads = [judge(np.asarray(frame)) for frame in res.images]
    assert reads[0]["shape"] == a.shape and reads[-1]["shape"] == b.shape
    assert reads[0]["color"] == a.color and reads[-1]["color"] == b.color


def _drawn_triangle():
    """A red triangle on a white plain background, drawn with PIL as a user would (not the renderer)."""
    from PIL import ImageDraw

    img = Image.new("RGB", (64, 64), (250, 250, 250))
    ImageDraw.Draw(img).polygon([(20, 17), (35, 43), (5, 43)], fill=(225, 25, 30))
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).polygon([(20, 17), (35, 43), (5, 43)], fill=255)
    inner = torch.from_numpy(np.asarray(mask) > 127).float()[None, None]
    inner = -torch.nn.functional.max_pool2d(-inner, 5, 1, 2)  # 2 px inside the edge
    return np.asarray(img), inner[0, 0].bool().numpy()


@builtin
@pytest.mark.parametrize("model", ["builtin:shapes", "builtin:shapes-lcm"])
def test_builtin_background_edit_keeps_the_object(model):
    """With the old defaults a background edit kept neither the triangle's colour nor its place
    (object-region PSNR 18.5 dB on builtin:shapes); now its pixels are the reconstruction's."""
    from nrinv.shapes import judge
    from nrinv.shapes.editeval import region_psnr

    image, inner = _drawn_triangle()
    source = "a large red triangle on the left, white plain background"
    pipe = nrinv.load_pipeline(model)
    res = nrinv.edit(pipe, image, source, ["a large red triangle on the left, blue plain background",
                                           "a large green triangle on the left, white plain background"])
    assert res.settings["keep_object"] and res.settings["object_kept"] == [True, False]  # the colour edit is global
    background, colour = (np.asarray(im) for im in res.images)
    assert region_psnr(background, image, inner) > 27.0
    read = judge(background)
    assert (read["color"], read["shape"], read["position"]) == ("red", "triangle", "left")
    assert read["background_color"] != "white"  # (the 4-step model reads it purple)
    assert judge(colour)["color"] == "green"
    off = nrinv.edit(pipe, image, source, "a large red triangle on the left, blue plain background", keep_object=False)
    assert off.settings["object_kept"] == [False]


def test_object_pixels_and_otsu():
    image = torch.zeros(1, 3, 16, 16)
    image[:, 2] = 1.0                       # blue background
    image[:, :, 5:10, 4:9] = torch.tensor([1.0, 1.0, 0.0]).view(1, 3, 1, 1)  # yellow square
    mask = editing.object_pixels(image)
    assert mask.shape == (1, 1, 16, 16) and int(mask.sum()) == 25 and bool(mask[0, 0, 5:10, 4:9].all())
    values = torch.tensor([[0.1, 0.2, 0.15, 0.9, 1.0, 0.95]])
    assert 0.2 < float(editing._otsu(values)) < 0.9


@builtin
def test_builtin_seed_spread_follows_the_examples():
    """Three alike examples (one drawing) and a prompt describing it gave near copies at
    the fixed spread 0.3 (mean pairwise difference 1.23/255 on the 4-step model); "auto" (the default)
    raises the variety to the target (at least 4/255)."""
    import itertools
    from PIL import ImageDraw

    img = Image.new("RGB", (64, 64), (25, 70, 225))
    ImageDraw.Draw(img).rectangle([20, 20, 43, 43], fill=(250, 220, 20))
    pipe = nrinv.load_pipeline("builtin:shapes-lcm")
    prompt = "a large yellow square in the center, blue plain background"

    def variety(res):
        ims = [np.asarray(im, dtype=np.float64) for im in res.images[1:]]
        return float(np.mean([np.abs(a - b).mean() for a, b in itertools.combinations(ims, 2)]))

    fixed = nrinv.seed_from_images(pipe, [img] * 3, prompt, n_samples=4, spread=0.3)
    auto = nrinv.seed_from_images(pipe, [img] * 3, prompt, n_samples=4)
    assert variety(fixed) < 2.0
    assert auto.settings["spread_auto"] and auto.settings["variety_target"] == 4.0
    assert variety(auto) >= 4.0


def test_interpolation_mix_checks_and_equal_prompts(tiny, astronaut32):
    """Mixing the model outputs of one prompt with itself is sampling with that prompt: the frames equal
    the embedding lerp's (the default mix is now the model outputs')."""
    pipe = tiny("sd")
    kw = dict(n=3, num_inference_steps=2, method="ddim", output_type="latent", progress=False, path_guidance=1.0,
              guidance_scale=1.0)
    flipped = astronaut32.transpose(Image.FLIP_LEFT_RIGHT)
    mixed = nrinv.interpolate(pipe, astronaut32, flipped, SRC, **kw)
    lerped = nrinv.interpolate(pipe, astronaut32, flipped, SRC, mix="embeddings", **kw)
    assert mixed.settings["mix"] == "predictions"
    for a, b in zip(mixed.images, lerped.images):
        assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(InputError, match="mix must be"):
        nrinv.interpolate(pipe, astronaut32, flipped, SRC, mix="average", **kw)
