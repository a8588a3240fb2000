"""Video: WanPipeline (Wan 2.1 text-to-video) with its stock flow-match UniPC scheduler.  A clip is inverted
and the *stock* WanPipeline regenerates it from ``result.latents`` (tiny random pipeline, 5 frames of 32x32)."""
import numpy as np
import pytest
import torch

import nrinv
import nrinv.io.clips
from nrinv.core.adapters import WanAdapter, adapter_for
from nrinv.core.inversion import invert_tensor
from nrinv.errors import InputError
from nrinv.testing.pipelines import WAN_FRAMES, tiny_clip

PROMPT = "a photo of a cat"


def _frames(clip):
    return torch.stack([torch.from_numpy(np.asarray(f, dtype=np.float32) / 255).permute(2, 0, 1) for f in clip])


def _stock(pipe, res, steps, guidance):
    return pipe(PROMPT, latents=res.latents, num_inference_steps=steps, guidance_scale=guidance, height=32, width=32,
                num_frames=WAN_FRAMES, output_type="latent").frames


@pytest.mark.parametrize("guidance", [1.0, pytest.param(3.0, marks=pytest.mark.slow)])
def test_stock_wan_pipeline_regenerates_the_inverted_clip(tiny, guidance):
    pipe = tiny("wan")
    adapter = adapter_for(pipe)
    assert isinstance(adapter, WanAdapter) and nrinv.core.model_defaults(pipe).kind == "wan"
    res = invert_tensor(pipe, _frames(tiny_clip()), PROMPT, num_inference_steps=8, guidance_scale=guidance, seed=0)
    assert res.finite and tuple(res.latents.shape) == (1, 4, 2, 4, 4)  # (B, C, F, H, W): 5 frames -> 2 latent
    assert res.setup.schedule.coupling is not None  # UniPC: the coupled multistep solve
    err = float((_stock(pipe, res, 8, guidance) - res.encoded).norm() / res.encoded.norm())
    assert err < 1e-2, err  # measured 5.3e-6 (guidance 1 and 3)
    ddim = invert_tensor(pipe, _frames(tiny_clip()), PROMPT, method="ddim", num_inference_steps=8,
                         guidance_scale=guidance)
    naive = float((_stock(pipe, ddim, 8, guidance) - ddim.encoded).norm() / ddim.encoded.norm())
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
