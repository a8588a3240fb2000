"""Tiny offline diffusers pipelines with random weights, for tests and harness checks.

Built from configs with ``torch.manual_seed(0)`` (no hub).  A raw random network is far from
smooth, so ``smooth=k`` wraps it to return the exact prediction for N(0, I) latents plus ``k`` times
the random network: the implicit equations then have reachable
solutions, and solvers differ measurably.  The wrapped classes are subclasses of the diffusers
models, so the stock pipelines run them unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import json
import string
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

__all__ = ["tiny_pipeline", "TINY_KINDS", "TinyCase", "TINY_CASES", "clip_tokenizer", "t5_tokenizer",
           "calibrate_vae", "tiny_clip", "WAN_FRAMES", "tiny_clip_folder", "tiny_lpips_folder"]

TINY_KINDS = ("sd", "sd_v", "sdxl", "lcm", "sd3", "sd35", "flux", "wan")


@dataclass(frozen=True)
class TinyCase:
    """How the tests run one tiny family: ``steps``/``guidance`` where the stock pipeline's regeneration
    is checked to tight tolerances (tests/test_pipelines.py), ``quick_steps``/``quick_guidance`` in the
    sweeps over devices, dtypes and every solver (tests/test_devices.py, tests/test_cuda.py)."""

    steps: int
    guidance: float
    quick_steps: int
    quick_guidance: float
    sampler: str = ""


#: one row per image model family the shared tests run (a new family: its row here and its recipe below); the
#: video family ("wan": its inputs are clips, not images) has its own tests in tests/test_video.py
TINY_CASES = {
    "sd": TinyCase(10, 1.0, 6, 3.0, "DDIM, epsilon (the sweeps with classifier-free guidance)"),
    "sd_v": TinyCase(10, 1.0, 6, 1.0, "DDIM, v-prediction"),
    "sdxl": TinyCase(4, 0.0, 4, 0.0, "Euler-ancestral, trailing: SDXL-Turbo settings"),
    "lcm": TinyCase(4, 8.5, 4, 4.0, "LCM multistep with w-embedding"),
    "sd3": TinyCase(8, 1.0, 4, 1.0, "flow matching"),
    "flux": TinyCase(4, 0.0, 4, 0.0, "flow matching, packed latents, shifted sigmas"),
}


def clip_tokenizer():
    from transformers import CLIPTokenizer

    letters = string.ascii_lowercase
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in letters + ",.":
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    folder = Path(tempfile.mkdtemp(prefix="nrinv-tok-"))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77,
                         pad_token="<|endoftext|>")


def t5_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "</s>", "<unk>"] + "a an the of on in photo cat dog red blue green large small".split()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    # a short limit keeps the tiny Flux fast: the adapter, like the stock pipeline, never exceeds it
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=16)


def _clip_config(**extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37,
                          layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=2, vocab_size=64,
                          **extra)


def _interp(table: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    t = t.float().clamp(0, len(table) - 1)
    lo = t.floor().long()
    hi = (lo + 1).clamp(max=len(table) - 1)
    w = t - lo.float()
    return table[lo] * (1 - w) + table[hi] * w


def _smooth_unet_class():
    from diffusers import UNet2DConditionModel
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

    class SmoothUNet(UNet2DConditionModel):
        """eps(z, t) = sqrt(1 - a_t) z + k unet(z, t, c): exact for N(0, I) latents plus a random term."""

        def smooth(self, alphas_cumprod: torch.Tensor, k: float, prediction_type: str = "epsilon"):
            self.register_buffer("_nr_alphas", alphas_cumprod.float().clone(), persistent=False)
            self._nr_k = float(k)
            self._nr_pred = prediction_type
            return self

        def forward(self, sample, timestep, *args, return_dict: bool = True, **kwargs):
            out = super().forward(sample, timestep, *args, return_dict=False, **kwargs)[0]
            t = torch.as_tensor(timestep, device=sample.device)
            a = _interp(self._nr_alphas, t.reshape(-1)).to(sample.dtype).reshape(-1, 1, 1, 1)
            exact = (1 - a).sqrt() * sample if self._nr_pred == "epsilon" else torch.zeros_like(sample)
            out = exact + self._nr_k * out
            return UNet2DConditionOutput(sample=out) if return_dict else (out,)

    return SmoothUNet


def _smooth_transformer(base_cls, timestep_scale: float):
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    class SmoothTransformer(base_cls):
        """v(z, s) = (2s - 1) z / ((1 - s)^2 + s^2) + k net(z, s): exact flow velocity for N(0, I) latents."""

        def smooth(self, k: float):
            self._nr_k = float(k)
            return self

        def forward(self, hidden_states, *args, timestep=None, return_dict: bool = True, **kwargs):
            out = super().forward(hidden_states, *args, timestep=timestep, return_dict=False, **kwargs)[0]
            s = (timestep.float() / timestep_scale).reshape(-1, *([1] * (hidden_states.dim() - 1)))
            s = s.to(hidden_states.dtype)
            exact = (2 * s - 1) * hidden_states / ((1 - s) ** 2 + s ** 2)
            out = exact + self._nr_k * out
            return Transformer2DModelOutput(sample=out) if return_dict else (out,)

    SmoothTransformer.__name__ = "Smooth" + base_cls.__name__
    return SmoothTransformer


def calibrate_vae(vae, size: int, seed: int = 0) -> None:
    """Set ``scaling_factor`` (and ``shift_factor`` where used) so encoded test images have unit std."""
    from skimage import data
    from PIL import Image

    img = Image.fromarray(data.astronaut()).resize((size, size))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        lat = vae.encode(x).latent_dist.mode()
    vae.register_to_config(scaling_factor=float(1.0 / lat.std()))
    if getattr(vae.config, "shift_factor", None) is not None:
        vae.register_to_config(shift_factor=float(lat.mean()))


def _vae(latent_channels: int = 4, blocks=(4, 8), quant: bool = True):
    from diffusers import AutoencoderKL

    n = len(blocks)
    return AutoencoderKL(block_out_channels=list(blocks), in_channels=3, out_channels=3,
                         down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
                         latent_channels=latent_channels, norm_num_groups=2 if min(blocks) % 2 == 0 else 1,
                         use_quant_conv=quant, use_post_quant_conv=quant, sample_size=32)


def tiny_pipeline(kind: str = "sd", *, smooth: Optional[float] = 0.2, seed: int = 0) -> Any:
    """A tiny random-weight pipeline of ``kind`` in TINY_KINDS (32x32 images), CPU, float32.

    ``smooth=None`` keeps the raw random network (then ``conv_out`` is shrunk so the output is
    small, which keeps a saved-and-reloaded pipeline invertible without the wrapper class).
    """
    import diffusers
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    if kind not in TINY_KINDS:
        raise ValueError(f"unknown tiny pipeline {kind!r}; choose from {TINY_KINDS}")
    torch.manual_seed(seed)
    sd_betas = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    unet_cls = _smooth_unet_class() if smooth is not None else diffusers.UNet2DConditionModel

    if kind in ("sd", "sd_v", "lcm"):
        pred = "v_prediction" if kind == "sd_v" else "epsilon"
        unet = unet_cls(block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=4,
                        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                        norm_num_groups=4, time_cond_proj_dim=32 if kind == "lcm" else None)
        vae = _vae()
        text_encoder = CLIPTextModel(_clip_config())
        if kind == "lcm":
            scheduler = diffusers.LCMScheduler(**sd_betas, clip_sample=False, set_alpha_to_one=False)
        else:
            scheduler = diffusers.DDIMScheduler(**sd_betas, clip_sample=False, set_alpha_to_one=False,
                                                steps_offset=1, prediction_type=pred)
        parts = dict(vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), unet=unet,
                     scheduler=scheduler, safety_checker=None, feature_extractor=None,
                     requires_safety_checker=False)
        cls = diffusers.LatentConsistencyModelPipeline if kind == "lcm" else diffusers.StableDiffusionPipeline
        pipe = cls(**parts)
        if smooth is not None:
            unet.smooth(scheduler.alphas_cumprod, smooth, pred)
    elif kind == "sdxl":
        unet = unet_cls(block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=4,
                        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
                        transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=80,
                        cross_attention_dim=64, norm_num_groups=4)
        vae = _vae()
        scheduler = diffusers.EulerAncestralDiscreteScheduler(**sd_betas, timestep_spacing="trailing")
        pipe = diffusers.StableDiffusionXLPipeline(
            vae=vae, text_encoder=CLIPTextModel(_clip_config()), text_encoder_2=CLIPTextModelWithProjection(
                _clip_config(projection_dim=32)), tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer(),
            unet=unet, scheduler=scheduler)
        if smooth is not None:
            unet.smooth(scheduler.alphas_cumprod, smooth)
    elif kind in ("sd3", "sd35"):
        base = diffusers.SD3Transformer2DModel
        cls = _smooth_transformer(base, 1000.0) if smooth is not None else base
        # SD 3.5 (medium) adds RMS-normed queries/keys and dual-attention (MMDiT-X) blocks
        v35 = dict(qk_norm="rms_norm", dual_attention_layers=(0,)) if kind == "sd35" else {}
        transformer = cls(sample_size=16, patch_size=1, in_channels=4, num_layers=2 if v35 else 1,
                          attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                          joint_attention_dim=32, pooled_projection_dim=64, out_channels=4, **v35)
        vae = diffusers.AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4, 8),
                                      down_block_types=["DownEncoderBlock2D"] * 2,
                                      up_block_types=["UpDecoderBlock2D"] * 2, layers_per_block=1,
                                      latent_channels=4, norm_num_groups=1, use_quant_conv=False,
                                      use_post_quant_conv=False, shift_factor=0.0, scaling_factor=1.0)
        pipe = diffusers.StableDiffusion3Pipeline(
            transformer=transformer, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
            text_encoder=CLIPTextModelWithProjection(_clip_config(projection_dim=32)), tokenizer=clip_tokenizer(),
            text_encoder_2=CLIPTextModelWithProjection(_clip_config(projection_dim=32)),
            tokenizer_2=clip_tokenizer(), text_encoder_3=None, tokenizer_3=None)
        if smooth is not None:
            transformer.smooth(smooth)
    elif kind == "wan":
        return _tiny_wan(smooth, seed)
    else:  # flux
        base = diffusers.FluxTransformer2DModel
        cls = _smooth_transformer(base, 1.0) if smooth is not None else base
        transformer = cls(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
                          num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                          axes_dims_rope=[4, 4, 8])
        vae = diffusers.AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,),
                                      down_block_types=["DownEncoderBlock2D"], up_block_types=["UpDecoderBlock2D"],
                                      layers_per_block=1, latent_channels=1, norm_num_groups=1,
                                      use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0,
                                      scaling_factor=1.0)
        t5 = T5EncoderModel(T5Config(vocab_size=32, d_model=32, d_kv=8, d_ff=37, num_layers=1, num_heads=4,
                                     relative_attention_num_buckets=8))
        pipe = diffusers.FluxPipeline(
            scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=True,
                                                                base_shift=0.5, max_shift=1.15,
                                                                base_image_seq_len=256, max_image_seq_len=4096),
            vae=vae, text_encoder=CLIPTextModel(_clip_config(projection_dim=32)), tokenizer=clip_tokenizer(),
            text_encoder_2=t5, tokenizer_2=t5_tokenizer(), transformer=transformer)
        if smooth is not None:
            transformer.smooth(smooth)
    if smooth is None:
        net = getattr(pipe, "unet", None) or pipe.transformer
        out_layer = getattr(net, "conv_out", None) or net.proj_out
        with torch.no_grad():
            out_layer.weight.mul_(0.05)
            out_layer.bias.mul_(0.05)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()  # built from configs, not from_pretrained: switch off dropout (T5 has 0.1)
    calibrate_vae(pipe.vae, 32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


#: frames of the tiny Wan's test clips (4k + 1: the VAE compresses time by 4)
WAN_FRAMES = 5


def tiny_clip(frames: int = WAN_FRAMES, size: int = 32) -> list:
    """A short test clip: the astronaut panning right by 2 pixels a frame (PIL frames)."""
    from PIL import Image
    from skimage import data

    img = Image.fromarray(data.astronaut()).resize((size + 2 * frames, size + 2 * frames))
    return [img.crop((2 * i, frames, 2 * i + size, frames + size)) for i in range(frames)]


def _tiny_wan(smooth: Optional[float], seed: int) -> Any:
    """WanPipeline (Wan 2.1 text-to-video) with its default flow-match UniPC scheduler (flow_shift 3, as
    Wan 2.1 480p ships it); a 3-D VAE with 8x spatial / 4x temporal compression and 4 latent channels,
    normalised per channel (``latents_mean``/``latents_std`` calibrated on the test clip); a small UMT5."""
    import diffusers
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    base = diffusers.WanTransformer3DModel
    cls = _smooth_transformer(base, 1000.0) if smooth is not None else base
    transformer = cls(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
                      out_channels=4, text_dim=32, freq_dim=32, ffn_dim=32, num_layers=1, cross_attn_norm=True,
                      qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    vae = diffusers.AutoencoderKLWan(base_dim=4, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                     temperal_downsample=[False, True, True], latents_mean=[0.0] * 4,
                                     latents_std=[1.0] * 4)
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=32, d_model=32, d_kv=8, d_ff=37, num_layers=1,
                                               num_heads=4, relative_attention_num_buckets=8))
    scheduler = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                  flow_shift=3.0)
    pipe = diffusers.WanPipeline(tokenizer=t5_tokenizer(), text_encoder=text_encoder, transformer=transformer,
                                 vae=vae, scheduler=scheduler)
    if smooth is not None:
        transformer.smooth(smooth)
    else:
        with torch.no_grad():
            transformer.proj_out.weight.mul_(0.05)
            transformer.proj_out.bias.mul_(0.05)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    clip = torch.stack([torch.from_numpy(np.asarray(f, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)
                        for f in tiny_clip()], dim=1)[None]
    with torch.no_grad():
        lat = vae.encode(clip).latent_dist.mode()
    vae.register_to_config(latents_mean=[float(v) for v in lat.mean((0, 2, 3, 4))],
                           latents_std=[float(v) for v in lat.std((0, 2, 3, 4))])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_clip_folder(folder, seed: int = 0) -> Path:
    """Save a tiny random ``transformers`` CLIP model + processor to ``folder`` (for CLIP-score tests)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPVisionConfig

    folder = Path(folder)
    torch.manual_seed(seed)
    text = _clip_config(projection_dim=16).to_dict()
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                              image_size=32, patch_size=8, projection_dim=16).to_dict()
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=clip_tokenizer(),
    )
    model.save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    return folder


def tiny_lpips_folder(folder, seed: int = 0, lin_value: Optional[float] = None) -> Path:
    """Random AlexNet (torchvision key layout) + LPIPS linear heads saved as two ``.pth`` state dicts.

    ``lin_value`` sets every linear weight to that constant (random non-negative otherwise).
    """
    from ..bench.perceptual import ALEX_CONVS, ALEX_INDEX

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    backbone, lins = {}, {}
    for idx, (i, o, k, _, _) in zip(ALEX_INDEX, ALEX_CONVS):
        backbone[f"features.{idx}.weight"] = torch.randn(o, i, k, k, generator=g) * (2.0 / (i * k * k)) ** 0.5
        backbone[f"features.{idx}.bias"] = torch.randn(o, generator=g) * 0.1
    backbone["classifier.1.weight"] = torch.zeros(4, 4)  # present in torchvision's file, ignored
    for k, (_, o, _, _, _) in enumerate(ALEX_CONVS):
        w = torch.full((1, o, 1, 1), lin_value) if lin_value is not None else torch.rand(1, o, 1, 1, generator=g)
        lins[f"lin{k}.model.1.weight"] = w
    torch.save(backbone, folder / "alexnet-owt-7be5be79.pth")
    torch.save(lins, folder / "alex.pth")
    return folder
