"""Seconds per inversion on full-size SDXL-Turbo and Flux-schnell architectures (random weights).

Real weights are unreachable offline, so the networks are built from their published configs with
random weights (the cost of a forward pass does not depend on the values).  512x512, 4 steps, fp16,
every method; timing = warm-up, then the median of --repeats inversions with CUDA synchronisation,
plus the bare cost of one network call measured in the same run.

    python benchmarks/gpu_turbo_flux.py                 # on a CUDA machine (target: GNRI <= 0.15 s on H100)
    python benchmarks/gpu_turbo_flux.py --tiny          # the same code path, scaled down, on the CPU

Without a GPU (and without --tiny) it prints a notice and exits 0.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

METHODS = [("ddim", None), ("fixed_point", 2), ("renoise", 2), ("gnri", 2), ("gnri_grad", 2), ("anderson", 2),
           ("newton_krylov", 1)]


def sdxl_turbo(tiny: bool, dtype, device):
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from nrinv.testing import clip_tokenizer

    if tiny:
        unet = diffusers.UNet2DConditionModel(
            sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 1), attention_head_dim=(2, 4), cross_attention_dim=64,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=80, norm_num_groups=8)
        h1, h2 = 32, 32
    else:  # stabilityai/sdxl-turbo unet/config.json
        unet = diffusers.UNet2DConditionModel(
            sample_size=64, block_out_channels=(320, 640, 1280), layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816)
        h1, h2 = 768, 1280
    cfg = lambda h, **kw: CLIPTextConfig(hidden_size=h, intermediate_size=4 * h, num_hidden_layers=1,
                                         num_attention_heads=max(1, h // 64), vocab_size=64, bos_token_id=0,
                                         eos_token_id=1, pad_token_id=1, **kw)
    vae = diffusers.AutoencoderKL(block_out_channels=(32, 32), down_block_types=["DownEncoderBlock2D"] * 2,
                                  up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=8)
    sched = diffusers.EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                      timestep_spacing="trailing")
    pipe = diffusers.StableDiffusionXLPipeline(
        vae=vae, text_encoder=CLIPTextModel(cfg(h1)), text_encoder_2=CLIPTextModelWithProjection(cfg(h2, projection_dim=h2)),
        tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer(), unet=unet, scheduler=sched)
    return pipe.to(device=device, dtype=dtype), (64 if tiny else 512)


def flux_schnell(tiny: bool, dtype, device):
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from nrinv.testing import clip_tokenizer, t5_tokenizer

    if tiny:
        tr = diffusers.FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                             attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                             pooled_projection_dim=32, axes_dims_rope=[4, 4, 8])
        d_model, clip_h, latent_ch = 32, 32, 4
    else:  # black-forest-labs/FLUX.1-schnell transformer/config.json
        tr = diffusers.FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                                             attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                                             pooled_projection_dim=768, guidance_embeds=False,
                                             axes_dims_rope=[16, 56, 56])
        d_model, clip_h, latent_ch = 4096, 768, 16
    vae = diffusers.AutoencoderKL(block_out_channels=(32, 32, 32, 32), down_block_types=["DownEncoderBlock2D"] * 4,
                                  up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=latent_ch,
                                  norm_num_groups=8, use_quant_conv=False, use_post_quant_conv=False,
                                  shift_factor=0.1159, scaling_factor=0.3611)
    clip = CLIPTextModel(CLIPTextConfig(hidden_size=clip_h, intermediate_size=4 * clip_h, num_hidden_layers=1,
                                        num_attention_heads=max(1, clip_h // 64), vocab_size=64, bos_token_id=0,
                                        eos_token_id=1, pad_token_id=1))
    t5 = T5EncoderModel(T5Config(vocab_size=32, d_model=d_model, d_kv=64, d_ff=2 * d_model, num_layers=1,
                                 num_heads=max(1, d_model // 64)))
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    pipe = diffusers.FluxPipeline(scheduler=sched, vae=vae, text_encoder=clip, tokenizer=clip_tokenizer(),
                                  text_encoder_2=t5, tokenizer_2=t5_tokenizer(), transformer=tr)
    pipe._nrinv_max_sequence_length = 64
    return pipe.to(device=device, dtype=dtype), (64 if tiny else 512)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="scaled-down networks on the CPU (checks the code path)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", default="sdxl-turbo,flux-schnell")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    import nrinv
    from nrinv.bench.harness import forward_time

    if not args.tiny and not torch.cuda.is_available():
        print("no CUDA device: skipping (run with --tiny to check the code path on the CPU)")
        return 0
    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.float16
    torch.manual_seed(0)
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "dtype": str(dtype),
               "torch": torch.__version__, "rows": []}
    builders = {"sdxl-turbo": sdxl_turbo, "flux-schnell": flux_schnell}
    for name in args.models.split(","):
        pipe, size = builders[name](args.tiny, dtype, device)
        pipe.set_progress_bar_config(disable=True)
        adapter = nrinv.adapter_for(pipe)
        shape = adapter.latent_shape(size, size)
        latent = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)
        t_fwd = forward_time(pipe, "a photo", (size, size), 4, 0.0)
        print(f"{name}: {size}x{size}, 4 steps, {dtype}, one network call {t_fwd * 1000:.1f} ms", flush=True)
        for method, its in METHODS:
            kw = dict(latent=latent, prompt="a photo", size=(size, size), method=method, num_inference_steps=4,
                      guidance_scale=0.0, max_iterations=its, progress=False)
            nrinv.invert(pipe, **kw)  # warm-up
            times, nfe = [], 0
            for _ in range(args.repeats):
                sync(device)
                t0 = time.perf_counter()
                res = nrinv.invert(pipe, **kw)
                sync(device)
                times.append(time.perf_counter() - t0)
                nfe = res.nfe
            med = statistics.median(times)
            row = {"model": name, "method": method, "iterations": its, "nfe": nfe, "seconds": round(med, 4),
                   "overhead": round(med / (nfe * t_fwd), 3), "status": res.status.value}
            results["rows"].append(row)
            print(f"  {method:14s} it={its!s:4s} NFE={nfe:3d}  {med:.3f} s/inversion  "
                  f"(x{row['overhead']:.2f} of NFE x forward)", flush=True)
        del pipe
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
