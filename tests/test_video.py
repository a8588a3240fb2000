"""Video: WanPipeline (Wan 2.1 text-to-video) with its stock flow-match UniPC scheduler.  A clip is inverted
and the *stock* WanPipeline regenerates it from ``result.latents`` (tiny random pipeline, 5 frames of 32x32)."""
import numpy as np
import pytest
import torch

import nrinv
import nrinv.io.clips
import nrinv.io.files
from nrinv.core.adapters import WanAdapter, adapter_for
from nrinv.core.inversion import invert_tensor
from nrinv.errors import InputError
from nrinv.testing.pipelines import WAN_FRAMES, tiny_clip

PROMPT = "a photo of a cat"


def _frames(clip):
    return torch.stack([torch.from_numpy(np.asarray(f, dtype=np.float32) / 255).permute(2, 0, 1) for f in clip])


def _stock(pipe, res, steps, guidance, frames=WAN_FRAMES):
    return pipe(PROMPT, latents=res.latents, num_inference_steps=steps, guidance_scale=guidance, height=32, width=32,
                num_frames=frames, output_type="latent").frames


# (frames, steps, guidance): measured stock regeneration errors 5.3e-6 (5, 8, 1) and 5.6e-6 (9, 20, 5: Wan's own
# guidance), DDIM-style inversion 0.46 / 0.50
@pytest.mark.parametrize("frames, steps, guidance", [(5, 8, 1.0), pytest.param(9, 20, 5.0, marks=pytest.mark.slow)])
def test_stock_wan_pipeline_regenerates_the_inverted_clip(tiny, frames, steps, guidance):
    pipe = tiny("wan")
    adapter = adapter_for(pipe)
    assert isinstance(adapter, WanAdapter) and nrinv.core.model_defaults(pipe).kind == "wan"
    clip = _frames(tiny_clip(frames))
    res = invert_tensor(pipe, clip, PROMPT, num_inference_steps=steps, guidance_scale=guidance, seed=0)
    latent_frames = (frames - 1) // 4 + 1
    assert res.finite and tuple(res.latents.shape) == (1, 4, latent_frames, 4, 4)  # (B, C, F, H, W)
    assert res.setup.schedule.coupling is not None  # UniPC: the coupled multistep solve
    err = float((_stock(pipe, res, steps, guidance, frames) - res.encoded).norm() / res.encoded.norm())
    assert err < 1e-2, err
    ddim = invert_tensor(pipe, clip, PROMPT, method="ddim", num_inference_steps=steps, guidance_scale=guidance)
    naive = float((_stock(pipe, ddim, steps, guidance, frames) - ddim.encoded).norm() / ddim.encoded.norm())
    assert err < 0.01 * naive, (err, naive)


def test_wan_adapter_reproduces_the_stock_latent_normalisation_and_decode(tiny):
    pipe = tiny("wan")
    adapter = adapter_for(pipe)
    frames = _frames(tiny_clip())
    z = adapter.encode(frames)
    cfg = pipe.vae.config
    raw = pipe.vae.encode(frames.permute(1, 0, 2, 3)[None] * 2 - 1).latent_dist.mode()
    mean, std = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1), torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1)
    assert torch.allclose(z, (raw - mean) / std, atol=1e-5)
    assert z.std().item() == pytest.approx(1.0, abs=0.1)  # calibrated: unit-variance latents
    # the stock pipeline's decode of the same latent (output_type="pt": frames in [0, 1])
    ours = adapter.decode(z, (32, 32))
    stock = pipe.vae.decode(z * std + mean, return_dict=False)[0]
    assert ours.shape == (WAN_FRAMES, 3, 32, 32)
    assert torch.allclose(ours, ((stock[0].permute(1, 0, 2, 3) + 1) / 2).clamp(0, 1), atol=1e-6)


def test_a_clip_of_the_wrong_length_is_refused_in_one_line(tiny):
    adapter = adapter_for(tiny("wan"))
    with pytest.raises(InputError, match=r"6 frames .* 4k\+1 frames.* e\.g\. to 5$"):
        adapter.encode(_frames(tiny_clip(6)))


def test_invert_takes_a_clip_in_every_form_and_reconstruct_returns_its_frames(tiny, tmp_path):
    pipe = tiny("wan")
    clip = tiny_clip()
    folder = tmp_path / "frames"
    nrinv.io.clips.save_clip(clip, folder)
    gif = nrinv.io.clips.save_clip(clip, tmp_path / "clip.gif")
    forms = {"list": clip, "folder": folder, "gif": gif, "tensor": _frames(clip)}
    encoded = {}
    for name, source in forms.items():
        res = nrinv.invert(pipe, source, PROMPT, num_inference_steps=4, seed=0)
        assert res.finite and tuple(res.latents.shape) == (1, 4, 2, 4, 4), name
        encoded[name] = res.encoded
    assert torch.equal(encoded["list"], encoded["folder"])  # PNG frames are lossless
    assert torch.allclose(encoded["list"], encoded["tensor"], atol=1e-5)
    # a GIF is palette-quantised: its frames are close, not equal
    assert float((nrinv.io.clips.load_clip(gif) - _frames(clip)).abs().mean()) < 0.03
    rec = nrinv.reconstruct(pipe, res)
    assert len(rec.images) == 1 and len(rec.images[0]) == WAN_FRAMES and rec.images[0][0].size == (32, 32)
    pt = nrinv.reconstruct(pipe, res, output_type="pt").images[0]
    with torch.no_grad():
        ceiling = adapter_for(pipe).decode(res.encoded, (32, 32))
    assert pt.shape == (WAN_FRAMES, 3, 32, 32) and float((pt - ceiling).abs().max()) < 0.02


def test_mp4_clips_read_through_imageio_ffmpeg(tiny, tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    pipe = tiny("wan")
    mp4 = nrinv.io.clips.save_clip(tiny_clip(), tmp_path / "clip.mp4")
    frames = nrinv.io.clips.load_clip(mp4)
    assert frames.shape == (WAN_FRAMES, 3, 32, 32)
    assert float((frames - _frames(tiny_clip())).abs().mean()) < 0.05  # lossy codec, same clip
    assert nrinv.invert(pipe, mp4, PROMPT, num_inference_steps=4).finite


def test_a_clip_for_an_image_model_and_an_image_for_a_video_model_are_refused(tiny, astronaut32):
    with pytest.raises(InputError, match="^this is a video model: pass a clip"):
        nrinv.invert(tiny("wan"), astronaut32, PROMPT, num_inference_steps=4)
    with pytest.raises(InputError, match="^this is an image model: pass one image, not a clip"):
        nrinv.invert(tiny("sd"), tiny_clip(), PROMPT, num_inference_steps=4)
    with pytest.raises(InputError, match="^this is an image model"):
        nrinv.edit(tiny("sd"), tiny_clip(), PROMPT, "a photo of a dog", num_inference_steps=4)


def test_edit_a_clip(tiny):
    pipe = tiny("wan")
    out = nrinv.edit(pipe, tiny_clip(), PROMPT, "a photo of a dog", num_inference_steps=4, strength=1.0)
    assert len(out.images) == 1 and len(out.images[0]) == WAN_FRAMES
    same = nrinv.edit(pipe, tiny_clip(), PROMPT, PROMPT, num_inference_steps=4, strength=1.0, output_type="pt")
    # the source prompt as target regenerates the clip itself (exact inversion), within the VAE's ceiling
    with torch.no_grad():
        ceiling = adapter_for(pipe).decode(same.inversion.encoded, (32, 32))
    assert float((same.images[0] - ceiling).abs().max()) < 0.02


def test_an_unreadable_video_and_a_missing_plugin_say_so_in_one_line(tmp_path, monkeypatch):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    if nrinv.io.clips._video_plugin():
        with pytest.raises(InputError, match=r"^cannot read the video .*bad\.mp4: [^\n]+$"):
            nrinv.io.clips.load_clip(bad)
    monkeypatch.setattr(nrinv.io.clips, "_video_plugin", lambda: False)
    with pytest.raises(InputError, match=r"^reading and writing \.mp4 needs .*pip install imageio\[ffmpeg\]$"):
        nrinv.io.clips.load_clip(bad)


def test_save_latent_copies_tensors_that_share_memory(tmp_path):
    """A flow model's ``latents`` are its ``scheduler_latents`` (no init_noise_sigma): `nrinv invert` on Wan
    (and SD3/Flux in float32 on the CPU) died in safetensors' shared-memory check (seen failing before)."""
    from nrinv.io.files import load_latent, save_latent

    z = torch.randn(1, 4, 2, 4, 4)
    save_latent({"scheduler_latents": z, "latents": z}, {}, tmp_path / "z.safetensors")
    tensors, _ = load_latent(tmp_path / "z.safetensors")
    assert torch.equal(tensors["latents"], z) and torch.equal(tensors["scheduler_latents"], z)


# -- the command line -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    """The tiny Wan saved as a diffusers folder (smooth=None: stock classes, reloadable by name)."""
    from nrinv.testing import tiny_pipeline

    folder = tmp_path_factory.mktemp("tiny-wan")
    tiny_pipeline("wan", smooth=None).save_pretrained(folder, safe_serialization=True)
    return folder


def test_cli_inverts_reconstructs_and_edits_a_clip(wan_dir, tmp_path):
    from PIL import Image

    from nrinv.cli import main

    gif = nrinv.io.clips.save_clip(tiny_clip(), tmp_path / "clip.gif")
    folder = nrinv.io.clips.save_clip(tiny_clip(), tmp_path / "frames")
    latent = tmp_path / "clip.latent.safetensors"
    common = ["--model", str(wan_dir), "--steps", "4", "--quiet"]
    assert main(["invert", str(gif), "--prompt", PROMPT, *common, "-o", str(latent)]) == 0
    tensors, _ = nrinv.io.files.load_latent(latent)
    assert tensors["latents"].shape == (1, 4, 2, 4, 4)
    assert main(["reconstruct", str(latent), "-o", str(tmp_path / "rec.gif"), "--quiet"]) == 0
    with Image.open(tmp_path / "rec.gif") as rec:
        assert rec.n_frames == WAN_FRAMES and rec.size == (32, 32)
    pipe = nrinv.load_pipeline(str(wan_dir))
    with torch.no_grad():
        ceiling = adapter_for(pipe).decode(tensors["encoded"], (32, 32))
    frames = nrinv.io.clips.load_clip(tmp_path / "rec.gif")
    assert float((frames - ceiling).abs().mean()) < 0.03  # exact up to the GIF's palette
    assert main(["edit", str(folder), "--source", PROMPT, "--target", "a photo of a dog", *common,
                 "-o", str(tmp_path / "edited")]) == 0
    assert sorted(p.name for p in (tmp_path / "edited").iterdir()) == [f"frame_{i:04d}.png" for i in range(5)]
    assert (tmp_path / "edited.json").is_file()
    assert main(["edit", str(gif), "--source", PROMPT, "--target", "a photo of a dog", *common]) == 0
    assert (tmp_path / "clip.edit.gif").is_file()  # a clip's default output is a GIF


@pytest.mark.parametrize("case", ["image for video", "clip for image", "clip as png"])
def test_cli_refuses_the_wrong_kind_of_input_in_one_line(wan_dir, model_dir, tmp_path, capsys, case):
    from nrinv.cli import main

    gif = nrinv.io.clips.save_clip(tiny_clip(), tmp_path / "clip.gif")
    png = tmp_path / "one.png"
    tiny_clip()[0].save(png)
    args, message = {
        "image for video": (["invert", str(png), "--prompt", PROMPT, "--model", str(wan_dir)],
                            "this is a video model: pass a clip"),
        "clip for image": (["invert", str(gif), "--prompt", PROMPT, "--model", str(model_dir)],
                           "this is an image model: pass one image, not a clip"),
        "clip as png": (["edit", str(gif), "--source", PROMPT, "--target", "a dog", "--model", str(wan_dir),
                         "-o", str(tmp_path / "out.png")], "written as .gif, .mp4 or a folder of frames"),
    }[case]
    before = set(p.name for p in tmp_path.iterdir())
    assert main([*args, "--steps", "2", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert set(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("workflow", ["invert_batch", "interpolate", "seed_from_images"])
def test_image_only_workflows_refuse_a_video_model_in_one_line(tiny, workflow):
    pipe, clip = tiny("wan"), tiny_clip()
    call = {"invert_batch": lambda: nrinv.invert_batch(pipe, [clip, clip], PROMPT, num_inference_steps=2),
            "interpolate": lambda: nrinv.interpolate(pipe, clip, clip, PROMPT, num_inference_steps=2),
            "seed_from_images": lambda: nrinv.seed_from_images(pipe, [clip], PROMPT, num_inference_steps=2)}[workflow]
    with pytest.raises(InputError, match=rf"^{workflow} takes images, and WanPipeline is a video model: [^\n]+$"):
        call()


def test_a_corrupt_animated_gif_is_one_line(tmp_path):
    """A truncated animated GIF raised PIL's OSError ("image file is truncated") out of the clip
    loader: the CLI printed a traceback (found by tests/test_fuzz.py)."""
    from PIL import Image

    from nrinv.errors import InputError
    from nrinv.io.clips import load_clip

    frames = [Image.new("RGB", (32, 32), (40 * i, 200 - 40 * i, 90)) for i in range(5)]
    path = tmp_path / "clip.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 60])
    with pytest.raises(InputError, match=r"^cannot read image .*clip\.gif: ") as info:
        load_clip(path)
    assert "\n" not in str(info.value)
