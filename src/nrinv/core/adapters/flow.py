"""Flow-matching transformer families: Stable Diffusion 3 and Flux (packed latents)."""
from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from .base import Adapter, Conditioning

__all__ = ["StableDiffusion3Adapter", "FluxAdapter"]


class StableDiffusion3Adapter(Adapter):
    """StableDiffusion3Pipeline (flow matching, MMDiT)."""

    family = "sd3"
    pipelines = ("StableDiffusion3Pipeline",)
    half_dtype = torch.bfloat16  # flow transformers overflow float16
    scales_initial_latents = False

    @property
    def network(self):
        return self.pipe.transformer


    def latent_shape(self, height, width, batch=1):
        f = self.vae_scale_factor
        return (batch, self.network.config.in_channels, height // f, width // f)

    @classmethod
    def patch(cls, network_config):
        return int(network_config.get("patch_size", 1) or 1)

    @staticmethod
    def _max_sequence_length(tokenizer: Any, default: int) -> int:
        """The stock pipeline's default T5 length, or the tokenizer's own limit where it is shorter."""
        limit = getattr(tokenizer, "model_max_length", None)
        return min(default, int(limit)) if limit else default

    def _vae_scale(self, latent):
        cfg = self.pipe.vae.config
        return (latent - (cfg.shift_factor or 0.0)) * cfg.scaling_factor

    def _vae_unscale(self, z):
        cfg = self.pipe.vae.config
        return z / cfg.scaling_factor + (cfg.shift_factor or 0.0)

    def prepare_scheduler(self, num_inference_steps, height, width):
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

        sched = copy.deepcopy(self.pipe.scheduler)
        kwargs = {}
        if sched.config.get("use_dynamic_shifting", None):
            p = self.network.config.patch_size
            f = self.vae_scale_factor
            seq = (height // f // p) * (width // f // p)
            kwargs["mu"] = calculate_shift(seq, sched.config.get("base_image_seq_len", 256),
                                           sched.config.get("max_image_seq_len", 4096),
                                           sched.config.get("base_shift", 0.5), sched.config.get("max_shift", 1.16))
        sched.set_timesteps(num_inference_steps, device=self.device, **kwargs)
        return sched

    def _embed(self, prompt, negative_prompt, guidance_scale, size):
        cfg = guidance_scale > 1
        pos, neg, pooled, neg_pooled = self.pipe.encode_prompt(
            prompt=prompt, prompt_2=None, prompt_3=None, device=self.device, num_images_per_prompt=1,
            do_classifier_free_guidance=cfg, negative_prompt=negative_prompt,
            max_sequence_length=self._max_sequence_length(getattr(self.pipe, "tokenizer_3", None), 256),
        )
        cond = {"encoder_hidden_states": pos, "pooled_projections": pooled}
        uncond = {"encoder_hidden_states": neg, "pooled_projections": neg_pooled} if cfg else {}
        return Conditioning(guidance_scale, cfg, cond, uncond, prompt=prompt, negative_prompt=negative_prompt)

    def _forward(self, x, t, kw, shared):
        return self.network(hidden_states=x, timestep=t.expand(x.shape[0]), return_dict=False, **kw)[0]


class FluxAdapter(StableDiffusion3Adapter):
    """FluxPipeline: packed 2x2 latents, shifted sigmas, distilled guidance embedding (no true CFG)."""

    family = "flux"
    pipelines = ("FluxPipeline",)
    default_sample_size = 128  # FluxPipeline.default_sample_size

    @classmethod
    def patch(cls, network_config):
        return 2  # latents packed 2x2 into tokens

    def latent_shape(self, height, width, batch=1):
        f = self.vae_scale_factor
        h, w = 2 * (height // (f * 2)), 2 * (width // (f * 2))
        return (batch, (h // 2) * (w // 2), (self.network.config.in_channels // 4) * 4)

    def _grid(self, height: int, width: int) -> tuple[int, int]:
        f = self.vae_scale_factor
        return 2 * (height // (f * 2)), 2 * (width // (f * 2))

    def encode(self, images):
        z = super().encode(images)  # (B, C, h, w), shifted and scaled
        b, c, h, w = z.shape
        return self.pipe._pack_latents(z, b, c, h, w)

    def decode(self, z, size):
        unpacked = self.pipe._unpack_latents(z.float(), size[0], size[1], self.vae_scale_factor)
        return super().decode(unpacked, size)

    def prepare_scheduler(self, num_inference_steps, height, width):
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        sched = copy.deepcopy(self.pipe.scheduler)
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        if getattr(sched.config, "use_flow_sigmas", False):
            sigmas = None
        seq = self.latent_shape(height, width)[1]
        mu = calculate_shift(seq, sched.config.get("base_image_seq_len", 256),
                             sched.config.get("max_image_seq_len", 4096),
                             sched.config.get("base_shift", 0.5), sched.config.get("max_shift", 1.15))
        if sigmas is None:
            sched.set_timesteps(num_inference_steps, device=self.device, mu=mu)
        else:
            sched.set_timesteps(sigmas=sigmas, device=self.device, mu=mu)
        return sched

    def _embed(self, prompt, negative_prompt, guidance_scale, size):
        if negative_prompt:
            raise ValueError("the Flux adapter supports distilled guidance only; negative prompts are not used")
        pos, pooled, text_ids = self.pipe.encode_prompt(
            prompt=prompt, prompt_2=None, device=self.device, num_images_per_prompt=1,
            max_sequence_length=self._max_sequence_length(getattr(self.pipe, "tokenizer_2", None), 512),
        )
        h, w = self._grid(*size)
        shared = {
            "txt_ids": text_ids,
            "img_ids": self.pipe._prepare_latent_image_ids(1, h // 2, w // 2, self.device, pos.dtype),
        }
        cond = {"encoder_hidden_states": pos, "pooled_projections": pooled}
        if self.network.config.guidance_embeds:
            cond["guidance"] = torch.full([1], guidance_scale, device=self.device, dtype=torch.float32)
        return Conditioning(guidance_scale, False, cond, {}, shared, prompt=prompt)

    def _forward(self, x, t, kw, shared):
        timestep = t.expand(x.shape[0]).to(x.dtype) / 1000
        return self.network(hidden_states=x, timestep=timestep, return_dict=False, **kw, **shared)[0]
