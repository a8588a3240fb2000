"""Video: WanPipeline (Wan 2.1 text-to-video) with its stock flow-match UniPC scheduler.  A clip is inverted
and the *stock* WanPipeline regenerates it from ``result.latents`` (tiny random pipeline, 5 frames of 32x32)."""
import numpy as np
import pytest
import torch

import nrinv
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
