"""UNet families with CLIP text encoders: Stable Diffusion 1.x/2.x, latent consistency models, SDXL."""
from __future__ import annotations

import contextlib
import copy
from typing import Optional

import torch
from torch import Tensor

from .base import Adapter, Conditioning

__all__ = ["StableDiffusionAdapter", "LatentConsistencyAdapter", "StableDiffusionXLAdapter"]


class StableDiffusionAdapter(Adapter):
    """StableDiffusionPipeline (1.x / 2.x, eps or v prediction) and the built-in shapes model."""

    family = "sd"
    pipelines = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline")

    def _guidance_embedding(self, guidance_scale: float) -> Optional[Tensor]:
        dim = self.network.config.time_cond_proj_dim
        if dim is None:
            return None
        # computed on the CPU and then moved, as the stock pipeline computes it
        w = torch.tensor([guidance_scale - 1.0], device="cpu")
        return self.pipe.get_guidance_scale_embedding(w, embedding_dim=dim).to(device=self.device, dtype=self.dtype)

    def _embed(self, prompt, negative_prompt, guidance_scale, size):
        cfg = guidance_scale > 1 and self.network.config.time_cond_proj_dim is None
        pos, neg = self.pipe.encode_prompt(prompt, self.device, 1, cfg, negative_prompt)
        cond, uncond = {"encoder_hidden_states": pos}, ({"encoder_hidden_states": neg} if cfg else {})
        emb = self._guidance_embedding(guidance_scale)
        if emb is not None:
            cond["timestep_cond"] = emb
        return Conditioning(guidance_scale, cfg, cond, uncond, prompt=prompt, negative_prompt=negative_prompt)

    def _forward(self, x, t, kw, shared):
        return self.network(x, t, return_dict=False, **kw)[0]


class LatentConsistencyAdapter(StableDiffusionAdapter):
    """LatentConsistencyModelPipeline: guidance enters through the w-embedding only, no negative prompt."""

    family = "lcm"
    pipelines = ("LatentConsistencyModelPipeline",)

    def prepare_scheduler(self, num_inference_steps, height, width):
        sched = copy.deepcopy(self.pipe.scheduler)
        sched.set_timesteps(num_inference_steps, device=self.device, original_inference_steps=None)
        return sched

    def _embed(self, prompt, negative_prompt, guidance_scale, size):
        if negative_prompt:
            raise ValueError("LatentConsistencyModelPipeline does not support negative prompts")
        pos, _ = self.pipe.encode_prompt(prompt, self.device, 1, False, None)
        w = torch.tensor([guidance_scale - 1.0], device="cpu")  # as the stock pipeline: on the CPU, then moved
        emb = self.pipe.get_guidance_scale_embedding(w, embedding_dim=self.network.config.time_cond_proj_dim)
        cond = {"encoder_hidden_states": pos, "timestep_cond": emb.to(device=self.device, dtype=self.dtype)}
        return Conditioning(guidance_scale, False, cond, prompt=prompt)


class StableDiffusionXLAdapter(StableDiffusionAdapter):
    """StableDiffusionXLPipeline, including SDXL-Turbo (Euler-ancestral, trailing spacing, guidance 0)."""

    family = "sdxl"
    pipelines = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline")

    @contextlib.contextmanager
    def _vae_precision(self):
        """The stock SDXL pipelines run a float16 VAE with ``force_upcast`` in float32 (it overflows in
        float16) and cast it back afterwards; so do we, holding the pipeline's lock (another thread
        must not see the VAE change dtype under it)."""
        vae = self.pipe.vae
        with self.lock:
            if vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
                vae.to(dtype=torch.float32)
                try:
                    yield torch.float32
                finally:
                    vae.to(dtype=torch.float16)
            else:
                yield vae.dtype

    def _latents_stats(self, like: Tensor) -> Optional[tuple[Tensor, Tensor]]:
        cfg = self.pipe.vae.config
        mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
        if mean is None or std is None:
            return None
        as_t = lambda v: torch.tensor(v, dtype=torch.float32, device="cpu").view(1, -1, 1, 1).to(like.device)
        return as_t(mean), as_t(std)

    def _vae_scale(self, latent):
        stats = self._latents_stats(latent)
        if stats is None:
            return super()._vae_scale(latent)
        return (latent - stats[0]) * self.pipe.vae.config.scaling_factor / stats[1]

    def _vae_unscale(self, z):
        stats = self._latents_stats(z)
        if stats is None:
            return super()._vae_unscale(z)
        return z * stats[1] / self.pipe.vae.config.scaling_factor + stats[0]


    def _embed(self, prompt, negative_prompt, guidance_scale, size):
        cfg = guidance_scale > 1 and self.network.config.time_cond_proj_dim is None
        pos, neg, pooled, neg_pooled = self.pipe.encode_prompt(
            prompt, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=cfg,
            negative_prompt=negative_prompt,
        )
        proj_dim = (int(pooled.shape[-1]) if self.pipe.text_encoder_2 is None
                    else self.pipe.text_encoder_2.config.projection_dim)
        h, w = size
        time_ids = self.pipe._get_add_time_ids((h, w), (0, 0), (h, w), dtype=pos.dtype,
                                               text_encoder_projection_dim=proj_dim).to(self.device)
        cond = {"encoder_hidden_states": pos, "text_embeds": pooled, "time_ids": time_ids}
        uncond = {"encoder_hidden_states": neg, "text_embeds": neg_pooled, "time_ids": time_ids} if cfg else {}
        emb = self._guidance_embedding(guidance_scale)
        if emb is not None:
            cond["timestep_cond"] = emb
            if cfg:
                uncond["timestep_cond"] = emb
        return Conditioning(guidance_scale, cfg, cond, uncond, prompt=prompt, negative_prompt=negative_prompt)

    def _forward(self, x, t, kw, shared):
        kw = dict(kw)
        added = {"text_embeds": kw.pop("text_embeds"), "time_ids": kw.pop("time_ids")}
        return self.network(x, t, added_cond_kwargs=added, return_dict=False, **kw)[0]
