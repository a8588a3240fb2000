"""The video family: Wan (a clip's frames are one 5-D latent)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ...errors import InputError
from .base import Adapter, Conditioning
from .flow import StableDiffusion3Adapter

__all__ = ["WanAdapter"]


class WanAdapter(StableDiffusion3Adapter):
    """WanPipeline (Wan 2.1 text-to-video): 5-D latents (B, C, F, H, W), frames in time compressed by the
    VAE (``4k + 1`` frames -> ``k + 1`` latent frames), normalised per channel with the VAE's
    ``latents_mean``/``latents_std``; timesteps as the scheduler sets them (flow-match UniPC by default);
    T5 prompts padded to the stock pipeline's ``max_sequence_length`` of 512.

    Images here are the frames of one clip, ``(F, 3, H, W)``: ``encode`` takes a clip and ``decode``
    returns its frames.  ``latent_shape`` and ``schedule`` need the clip length: pass ``frames=``, else they
    take the last clip the calling thread encoded on this pipeline.
    """

    family = "wan"
    pipelines = ("WanPipeline",)
    video = True
    #: the stock pipeline's default T5 length; prompts are padded to it, as ``pipe(prompt)`` pads them
    max_sequence_length = 512

    def __init__(self, pipe, defaults=None, *, cuda_graphs=None):
        super().__init__(pipe, defaults, cuda_graphs=cuda_graphs)
        config = getattr(pipe, "config", {})
        if getattr(pipe, "transformer_2", None) is not None or config.get("boundary_ratio") is not None:
            raise InputError("two-transformer Wan pipelines (Wan 2.2 A14B, boundary_ratio) are not supported; "
                             "use a single-transformer WanPipeline (Wan 2.1)")
        if config.get("expand_timesteps"):
            raise InputError("Wan pipelines with expand_timesteps (Wan 2.2 TI2V) are not supported; use Wan 2.1")

    @classmethod
    def patch(cls, network_config):
        patch = network_config.get("patch_size", (1, 2, 2))
        return int(patch[-1])

    @classmethod
    def geometry(cls, vae_config, network_config, sample_size=None):
        return int(vae_config.get("scale_factor_spatial", 8)) * cls.patch(network_config), 480

    def default_size(self):
        if self.defaults.height and self.defaults.width:
            return self.defaults.height, self.defaults.width
        return 480, 832  # WanPipeline's default height and width

    @property
    def vae_scale_factor(self):
        return int(self.pipe.vae_scale_factor_spatial)

    @property
    def temporal_factor(self) -> int:
        return int(self.pipe.vae_scale_factor_temporal)

    @property
    def num_frames(self) -> int:
        """Frames of the clip being inverted: the last one this thread encoded on this pipeline (per thread:
        threads inverting clips of other lengths do not see it); WanPipeline's default 81 before any."""
        return getattr(self._state.frames, "value", None) or 81

    @num_frames.setter
    def num_frames(self, frames: int) -> None:
        self.check_frames(frames)
        self._state.frames.value = int(frames)

    def check_frames(self, frames: int) -> None:
        k = self.temporal_factor
        if frames < 1 or (frames - 1) % k:
            near = max(1, round((frames - 1) / k)) * k + 1
            raise InputError(f"a clip of {frames} frames cannot go through this model: it takes {k}k+1 frames; "
                             f"drop or repeat frames, e.g. to {near}")

    def latent_shape(self, height, width, batch=1, *, frames: Optional[int] = None):
        """``frames``: the clip's length (None: ``num_frames``, the clip this thread encoded last)."""
        f = self.vae_scale_factor
        if frames is not None:
            self.check_frames(frames)
        latent_frames = ((self.num_frames if frames is None else int(frames)) - 1) // self.temporal_factor + 1
        return (batch, self.network.config.in_channels, latent_frames, height // f, width // f)

    def prepare_scheduler(self, num_inference_steps, height, width):
        return Adapter.prepare_scheduler(self, num_inference_steps, height, width)  # set_timesteps(n), as WanPipeline

    def _latents_stats(self, like: Tensor) -> tuple[Tensor, Tensor]:
        cfg = self.pipe.vae.config
        as_t = lambda v: torch.tensor(v, dtype=torch.float32, device="cpu").view(1, -1, 1, 1, 1).to(like.device)
        return as_t(cfg.latents_mean), as_t(cfg.latents_std)

    def _vae_scale(self, latent):
        mean, std = self._latents_stats(latent)
        return (latent - mean) / std

    def _vae_unscale(self, z):
        mean, std = self._latents_stats(z)
        return z * std + mean

    def encode(self, images):
        """The frames of one clip (F, 3, H, W) in [0, 1] -> its latent (1, C, f, h, w), float32."""
        self.num_frames = int(images.shape[0])
        vae = self.pipe.vae
        with self.lock, self._vae_precision() as dtype:
            x = images.to(device=self._vae_device(), dtype=dtype) * 2 - 1
            latent = vae.encode(x.permute(1, 0, 2, 3)[None]).latent_dist.mode()
        return self._vae_scale(latent.float())

    def decode(self, z, size):
        """A clip latent (1, C, f, h, w) -> its frames (F, 3, H, W) in [0, 1], float32."""
        vae = self.pipe.vae
        with self.lock, self._vae_precision() as dtype:
            x = vae.decode(self._vae_unscale(z.float()).to(device=self._vae_device(), dtype=dtype),
                           return_dict=False)[0]
        return ((x[0].float().permute(1, 0, 2, 3) + 1) / 2).clamp(0, 1)

    def _embed(self, prompt, negative_prompt, guidance_scale, size):
        cfg = guidance_scale > 1
        pos, neg = self.pipe.encode_prompt(prompt=prompt, negative_prompt=negative_prompt,
                                           do_classifier_free_guidance=cfg, num_videos_per_prompt=1,
                                           max_sequence_length=self.max_sequence_length, device=self.device)
        cond = {"encoder_hidden_states": pos.to(self.dtype)}
        uncond = {"encoder_hidden_states": neg.to(self.dtype)} if cfg else {}
        return Conditioning(guidance_scale, cfg, cond, uncond, prompt=prompt, negative_prompt=negative_prompt)

    def _forward(self, x, t, kw, shared):
        return self.network(hidden_states=x, timestep=t.expand(x.shape[0]), return_dict=False, **kw)[0]

    def to_pipeline_latents(self, z_T, init_noise_sigma):
        """Float32, whatever the network's dtype: WanPipeline steps its latents in float32 (it casts given
        latents to float32), so rounding them to the network's dtype would only lose precision."""
        z = z_T / init_noise_sigma if self.scales_initial_latents else z_T
        return z.to(dtype=torch.float32)
