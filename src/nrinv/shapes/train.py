"""Train the built-in "shapes" text-to-image model (VAE, then text encoder + UNet on cached latents).

    python -m nrinv.shapes.train [--seed 0] [--out runs/shapes_seed0] [--threads N]
                                 [--time-budget-min 86] [--install]

The default run fits in 90 minutes on 2 CPU cores: render the pool, train the VAE (1100 steps),
train its decoder alone with an edge loss (1800 steps; sharpens small stars and crosses without
moving the latent space), encode latents, then train the text encoder + UNet for whatever the time budget leaves (its
learning-rate schedule follows the clock, so a cut run still ends at the low rate), save, and
evaluate the gates with the judge.

Writes, under ``--out``: ``train.log``, sample grids ``vae_recon_*.png`` / ``samples_*.png`` and the
diffusers folder ``model/`` (loadable with ``StableDiffusionPipeline.from_pretrained``).  With
``--install`` the model components are copied into the package (``nrinv/shapes/model``), keeping
the judge weights that live there.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np

from . import components as C
from .evaluate import VAE_VAL_SEED0, evaluate_model
from .imaging import images_to_tensor, psnr_uint8, render_pool, save_grid, tensor_to_uint8
from .world import sample_scene

PACKAGE_MODEL_DIR = Path(__file__).resolve().parent / "model"
# scene/render seed ranges (disjoint): training pool here; VAE validation / generation evaluation in evaluate.py
TRAIN_SEED0 = 0

GRID_CAPTION_SEED0 = 92_000_000


def make_log(path: Path):
    f = open(path, "a", buffering=1)

    def log(*msg):
        s = " ".join(str(m) for m in msg)
        print(s, flush=True)
        f.write(time.strftime("%H:%M:%S ") + s + "\n")

    return log


# ------------------------------------------------------------------------------------------ VAE
def train_vae(imgs, steps, batch, crop, lr, gen, log, run_dir, val_imgs):
    import torch
    from tqdm import tqdm

    vae = C.make_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    warm = max(1, min(100, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    )
    n = len(imgs)
    X = torch.from_numpy(imgs)
    vae.train()
    pbar = tqdm(range(steps), desc="vae", mininterval=5)
    t0 = time.time()
    for step in pbar:
        idx = torch.randint(0, n, (batch,), generator=gen)
        x = X[idx]
        if crop < 64:
            oy, ox = torch.randint(0, 64 - crop + 1, (2,), generator=gen).tolist()
            x = x[:, oy : oy + crop, ox : ox + crop]
        x = x.float().permute(0, 3, 1, 2) / 127.5 - 1.0
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        loss = (rec - x).abs().mean() + (rec - x).pow(2).mean() + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 20 == 0:
            pbar.set_postfix(loss=f"{loss.item():.4f}")
        if step % 250 == 0 or step == steps - 1:
            vae.eval()
            p = vae_psnr(vae, val_imgs[:64])
            vae.train()
            log(f"vae step {step} loss {loss.item():.4f} val_psnr {p:.2f} dB ({time.time() - t0:.0f}s)")
    vae.eval()
    return vae


def _grad_l1(a, b):
    """Mean absolute difference of horizontal and vertical finite differences (edge fidelity)."""
    dx = (a[..., :, 1:] - a[..., :, :-1]) - (b[..., :, 1:] - b[..., :, :-1])
    dy = (a[..., 1:, :] - a[..., :-1, :]) - (b[..., 1:, :] - b[..., :-1, :])
    return dx.abs().mean() + dy.abs().mean()


def finetune_decoder(vae, imgs, steps, batch, crop, lr, gen, log, val_imgs, edge_weight=1.0):
    """Train only the decoder (and post-quant conv) with an added edge loss; the encoder is frozen.

    The latent space does not move, so a UNet trained on this VAE's latents stays valid; what
    improves is how sharply small shapes (thin star points, cross arms) are drawn from a latent.
    """
    import torch
    from tqdm import tqdm

    vae.requires_grad_(False)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for q in params:
        q.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    )
    X = torch.from_numpy(imgs)
    vae.eval()  # no dropout/batch-norm in these blocks; eval keeps the frozen encoder deterministic
    t0 = time.time()
    for step in tqdm(range(steps), desc="decoder", mininterval=5):
        idx = torch.randint(0, len(X), (batch,), generator=gen)
        x = X[idx]
        if crop < 64:
            oy, ox = torch.randint(0, 64 - crop + 1, (2,), generator=gen).tolist()
            x = x[:, oy : oy + crop, ox : ox + crop]
        x = x.float().permute(0, 3, 1, 2) / 127.5 - 1.0
        with torch.no_grad():
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        loss = (rec - x).abs().mean() + (rec - x).pow(2).mean() + edge_weight * _grad_l1(rec, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 250 == 0 or step == steps - 1:
            log(f"decoder step {step} loss {loss.item():.4f} val_psnr {vae_psnr(vae, val_imgs[:64]):.2f} dB "
                f"({time.time() - t0:.0f}s)")
    vae.requires_grad_(False).eval()
    return vae


def vae_reconstruct(vae, imgs, batch=64, use_mean=True):
    import torch

    outs = []
    with torch.no_grad():
        for i in range(0, len(imgs), batch):
            x = images_to_tensor(imgs[i : i + batch])
            post = vae.encode(x).latent_dist
            outs.append(tensor_to_uint8(vae.decode(post.mean).sample))
    return np.concatenate(outs)


def vae_psnr(vae, imgs) -> float:
    return psnr_uint8(vae_reconstruct(vae, imgs), imgs)


def encode_pool(vae, imgs, batch=128):
    import torch
    from tqdm import tqdm

    lat = []
    with torch.no_grad():
        for i in tqdm(range(0, len(imgs), batch), desc="encode", mininterval=5):
            lat.append(vae.encode(images_to_tensor(imgs[i : i + batch])).latent_dist.mean)
    return torch.cat(lat)


# ----------------------------------------------------------------------------------------- UNet
def tokenize(tokenizer, captions):
    return tokenizer(
        list(captions), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
        return_tensors="pt",
    ).input_ids


def generate(unet, text_encoder, tokenizer, vae, scheduler_config, captions, steps=20, guidance=4.0, seed=0):
    """Minimal DDIM sampler equivalent to StableDiffusionPipeline (used for periodic grids)."""
    import torch
    from diffusers import DDIMScheduler

    sch = DDIMScheduler.from_config(scheduler_config)
    sch.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        cond = text_encoder(tokenize(tokenizer, captions))[0]
        unc = text_encoder(tokenize(tokenizer, [""] * len(captions)))[0]
        ctx = torch.cat([unc, cond])
        lat = torch.randn((len(captions), 4, 16, 16), generator=g) * sch.init_noise_sigma
        for t in sch.timesteps:
            eps = unet(torch.cat([lat, lat]), t, ctx).sample
            eu, ec = eps.chunk(2)
            eps = eu + guidance * (ec - eu)
            lat = sch.step(eps, t, lat).prev_sample
        img = vae.decode(lat / vae.config.scaling_factor).sample
    return tensor_to_uint8(img)


def train_unet(latents, captions, tokenizer, vae, steps, batch, lr, gen, log, run_dir, grid_every,
               time_limit_min=None, ema_decay=0.999, drop_prob=0.1, min_snr=5.0, init=None):
    import torch
    from tqdm import tqdm

    if init is not None:  # resume: (unet, text_encoder) to continue from
        unet, text_encoder = init
        unet.train().requires_grad_(True)
        text_encoder.train().requires_grad_(True)
    else:
        unet = C.make_unet()
        text_encoder = C.make_text_encoder(tokenizer)
    scheduler = C.make_scheduler()
    ema_unet = copy.deepcopy(unet).requires_grad_(False)
    ema_te = copy.deepcopy(text_encoder).requires_grad_(False)
    params = [
        {"params": unet.parameters(), "lr": lr},
        {"params": text_encoder.parameters(), "lr": lr * 0.5},
    ]
    opt = torch.optim.AdamW(params, weight_decay=1e-2)
    base_lrs = [g["lr"] for g in opt.param_groups]
    warm = max(1, min(200, steps // 10))

    def set_lr(step: int, elapsed_s: float) -> None:
        # warm-up, then cosine from 1 to 0.2 over the run; progress is the larger of the step and the
        # time fractions, so a run cut by its time limit still ends its schedule at the low rate
        frac = step / steps
        if time_limit_min:
            frac = max(frac, elapsed_s / (time_limit_min * 60))
        factor = min(1.0, (step + 1) / warm) * (0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
        for g, base in zip(opt.param_groups, base_lrs):
            g["lr"] = base * factor
    ids_all = tokenize(tokenizer, captions)
    ids_empty = tokenize(tokenizer, [""])[0]
    ac = scheduler.alphas_cumprod
    snr = ac / (1 - ac)
    w_all = torch.clamp(snr, max=min_snr) / snr if min_snr else torch.ones_like(snr)
    n = len(latents)
    grid_caps = [sample_scene(GRID_CAPTION_SEED0 + i) for i in range(32)]
    unet.train()
    text_encoder.train()
    pbar = tqdm(range(steps), desc="unet", mininterval=5)
    t0 = time.time()
    done = 0
    for step in pbar:
        set_lr(step, time.time() - t0)
        idx = torch.randint(0, n, (batch,), generator=gen)
        x0 = latents[idx]
        ids = ids_all[idx].clone()
        drop = torch.rand(batch, generator=gen) < drop_prob
        ids[drop] = ids_empty
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=gen)
        a = ac[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        ctx = text_encoder(ids)[0]
        pred = unet(xt, t, ctx).sample
        loss = ((pred - noise) ** 2).mean(dim=(1, 2, 3))
        loss = (loss * w_all[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(unet.parameters()) + list(text_encoder.parameters()), 1.0)
        opt.step()
        d = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for m, e in ((unet, ema_unet), (text_encoder, ema_te)):
                for p, pe in zip(m.parameters(), e.parameters()):
                    pe.lerp_(p, 1 - d)
        done = step + 1
        if step % 20 == 0:
            pbar.set_postfix(loss=f"{loss.item():.4f}")
        if step % 100 == 0:
            log(f"unet step {step} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
        last = step == steps - 1
        over = time_limit_min is not None and (time.time() - t0) > time_limit_min * 60
        if (grid_every and step > 0 and step % grid_every == 0) or last or over:
            _grid(ema_unet, ema_te, tokenizer, vae, scheduler, grid_caps, run_dir / f"samples_{step:06d}.png", log)
        if over:
            log(f"time limit reached after {done} unet steps")
            break
    return ema_unet.eval(), ema_te.eval(), scheduler, done


def _grid(unet, te, tokenizer, vae, scheduler, scenes, path, log):
    unet.eval()
    te.eval()
    imgs = generate(unet, te, tokenizer, vae, scheduler.config, [s.caption() for s in scenes], steps=20,
                    guidance=4.0, seed=0)
    save_grid(imgs, path)
    try:
        from .judge import judge_batch, score

        acc = score(judge_batch(imgs), [s.as_dict() for s in scenes])
        log(f"  grid {path.name}: judged acc " + ", ".join(f"{k}={v:.2f}" for k, v in acc.items()))
    except Exception as e:  # judge weights missing: just save the grid
        log(f"  grid {path.name} (no judge: {e})")


# ----------------------------------------------------------------------------------------- main
def save_model(out: Path, vae, text_encoder, tokenizer, unet, scheduler):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(str(out), safe_serialization=True)
    return pipe


def install(model_dir: Path, dest: Path = PACKAGE_MODEL_DIR):
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("vae", "unet", "text_encoder", "tokenizer", "scheduler"):
        if (dest / name).exists():
            shutil.rmtree(dest / name)
        shutil.copytree(model_dir / name, dest / name)
    for f in ("model_index.json", "train_info.json"):
        if (model_dir / f).exists():
            shutil.copy2(model_dir / f, dest / f)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="run folder (default runs/shapes_seed{seed})")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    p.add_argument("--pool", type=int, default=20000, help="rendered training images")
    p.add_argument("--latent-pool", type=int, default=12000, help="images (of the pool) encoded for the UNet")
    p.add_argument("--vae-steps", type=int, default=1100)
    p.add_argument("--vae-batch", type=int, default=32)
    p.add_argument("--vae-crop", type=int, default=32)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--decoder-steps", type=int, default=1800,
                   help="then train the decoder alone with an edge loss (latent space unchanged; 0: skip)")
    p.add_argument("--decoder-lr", type=float, default=5e-4)
    p.add_argument("--unet-steps", type=int, default=8000,
                   help="UNet steps at most (the time budget usually ends the phase first)")
    p.add_argument("--unet-batch", type=int, default=48)
    p.add_argument("--unet-lr", type=float, default=8e-4)
    p.add_argument("--unet-time-limit-min", type=float, default=None,
                   help="UNet phase length in minutes (default: what --time-budget-min leaves); EMA weights are used")
    p.add_argument("--time-budget-min", type=float, default=86.0,
                   help="whole run incl. the final evaluation; the UNet phase gets what is left (0: no budget)")
    p.add_argument("--grid-every", type=int, default=500)
    p.add_argument("--eval", type=int, default=200, help="held-out captions for the final gate (0: skip)")
    p.add_argument("--guidance", type=float, nargs="*", default=None, help="guidance scales to evaluate")
    p.add_argument("--resume-from", default=None,
                   help="model folder of an earlier run: keep its VAE encoder (and latent space), continue "
                        "training its UNet/text encoder (and its decoder with --decoder-steps)")
    p.add_argument("--install", action="store_true", help="copy the model into the package folder")
    a = p.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads or os.cpu_count() or 1)
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    out = Path(a.out or f"runs/shapes_seed{a.seed}")
    out.mkdir(parents=True, exist_ok=True)
    log = make_log(out / "train.log")
    log(f"args: {vars(a)}  threads={torch.get_num_threads()}")
    T0 = time.time()

    scenes, imgs = render_pool(a.pool, TRAIN_SEED0 + a.seed * 1_000_000)
    _, val_imgs = render_pool(256, VAE_VAL_SEED0, desc="render val")
    log(f"rendered {len(imgs)} training images ({time.time() - T0:.0f}s)")

    init = None
    if a.resume_from:  # continue the UNet/text-encoder phase of an earlier run (VAE kept)
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel

        rd = Path(a.resume_from)
        vae = AutoencoderKL.from_pretrained(str(rd / "vae")).eval()
        init = (UNet2DConditionModel.from_pretrained(str(rd / "unet")),
                CLIPTextModel.from_pretrained(str(rd / "text_encoder")))
        log(f"resuming UNet/text encoder from {rd}")
    else:
        vae = train_vae(imgs, a.vae_steps, a.vae_batch, a.vae_crop, a.vae_lr, gen, log, out, val_imgs)
    if a.decoder_steps:
        vae = finetune_decoder(vae, imgs, a.decoder_steps, a.vae_batch, a.vae_crop, a.decoder_lr, gen, log, val_imgs)
    vp = vae_psnr(vae, val_imgs)
    save_grid(np.concatenate([val_imgs[:16], vae_reconstruct(vae, val_imgs[:16])]), out / "vae_recon.png")
    log(f"VAE held-out PSNR {vp:.2f} dB ({time.time() - T0:.0f}s)")

    scenes, imgs = scenes[: a.latent_pool], imgs[: a.latent_pool]
    lat = encode_pool(vae, imgs[:1] if a.unet_steps == 0 else imgs)
    if a.resume_from:
        std = 1.0 / vae.config.scaling_factor
    else:
        std = lat.std().item()
        vae.register_to_config(scaling_factor=1.0 / std)
    lat = lat / std
    log(f"latents {tuple(lat.shape)} std {std:.4f} -> scaling_factor {1 / std:.4f} ({time.time() - T0:.0f}s)")

    mdir = out / "model"
    C.build_tokenizer_files(out / "_tokenizer")
    tokenizer = C.load_tokenizer(out / "_tokenizer")
    limit = a.unet_time_limit_min
    if limit is None and a.time_budget_min:
        reserve_min = 1.0 + 1.0 * len(a.guidance or [4.0]) * (a.eval / 200)  # saving + final evaluation
        limit = max(1.0, a.time_budget_min - (time.time() - T0) / 60 - reserve_min)
        log(f"UNet phase: {limit:.1f} min of the {a.time_budget_min:g} min budget")
    unet, te, scheduler, done = train_unet(
        lat, [s.caption() for s in scenes], tokenizer, vae, a.unet_steps, a.unet_batch, a.unet_lr, gen, log, out,
        a.grid_every, limit, init=init,
    )
    log(f"unet done: {done} steps ({time.time() - T0:.0f}s)")
    save_model(mdir, vae, te, tokenizer, unet, scheduler)
    info = {
        "seed": a.seed, "args": vars(a), "unet_steps_done": done, "vae_psnr_heldout_db": vp,
        "train_wall_s": time.time() - T0, "threads": torch.get_num_threads(),
    }
    (mdir / "train_info.json").write_text(json.dumps(info, indent=2))
    log(f"saved model to {mdir} ({time.time() - T0:.0f}s)")
    if a.install:
        install(mdir)
        log(f"installed into {PACKAGE_MODEL_DIR}")
    if a.eval:
        res = evaluate_model(mdir, n=a.eval, guidances=a.guidance, log=log, write=mdir / "metrics.json",
                             grid_dir=out)
        if a.install:
            shutil.copy2(mdir / "metrics.json", PACKAGE_MODEL_DIR / "metrics.json")
        log(json.dumps(res, indent=1))
    log(f"total wall time {time.time() - T0:.0f}s")


if __name__ == "__main__":
    main()
