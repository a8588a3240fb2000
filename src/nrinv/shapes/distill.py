"""Distil the shipped shapes model into a few-step latent consistency model (LCM).

    python -m nrinv.shapes.distill [--out runs/lcm] [--threads 1] [--time-budget-min 87] [--install]

Latent consistency distillation (LCD) with a guidance-scale embedding, Luo et al. 2023, "Latent
Consistency Models" (arXiv:2310.04378), Algorithm 1:

* teacher: the shipped UNet (frozen) with classifier-free guidance, in the LCM convention
  ``eps_w = eps_c + w (eps_c - eps_u)`` (paper Eq. 7).  diffusers' ``LatentConsistencyModelPipeline``
  embeds ``w = guidance_scale - 1``, so a pipeline ``guidance_scale`` g is the teacher's ordinary
  (Imagen-style) guidance ``eps_u + g (eps_c - eps_u)``; ``--guidance-min/--guidance-max`` are in that
  pipeline convention;
* student: the shipped UNet plus ``time_embedding.cond_proj`` (``time_cond_proj_dim``), initialised to
  zero so the student starts as the teacher; it reads ``w`` through the sinusoidal embedding of
  ``1000 w`` (:func:`guidance_embedding`, the pipeline's ``get_guidance_scale_embedding``);
* ODE solver: one DDIM step from ``t_{n+k}`` to ``t_n = t_{n+k} - k`` on the skipping-step grid
  ``t = k, 2k, ..., 1000`` minus 1 (``k = 1000 / --solver-steps``), the grid ``LCMScheduler`` uses with
  ``original_inference_steps = --solver-steps``;
* consistency function ``f(x, t) = c_skip(t) x + c_out(t) x0_hat(x, t)`` (paper Eq. 9) with
  ``LCMScheduler``'s boundary scalings (:func:`boundary_scalings`);
* target network: an EMA of the student (decay ``--target-decay``); the shipped weights are a slower
  EMA of the student (``--ema-decay``), taken at the periodic check (4-step samples of held-out check
  captions, judged) that scored best;
* loss: pseudo-Huber ``sqrt(d^2 + c^2) - c`` between student and target outputs.

The text encoder, tokenizer and VAE are the shipped ones (frozen); the training data are cached VAE
latents of rendered scenes (as in :mod:`nrinv.shapes.train`).  The learning-rate schedule follows the
clock, so a run cut by its time budget still ends at the low rate.  Writes ``train.log``, sample
grids and ``model/`` (a ``LatentConsistencyModelPipeline`` folder) under ``--out``; ``--install``
copies the folder to ``nrinv/shapes/model_lcm``.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from .evaluate import EVAL_SEED0, SECOND_EVAL_SEED0, evaluate_model
from .imaging import render_pool, save_grid
from .train import TRAIN_SEED0, encode_pool, make_log, tokenize
from .world import sample_scene

PACKAGE_DIR = Path(__file__).resolve().parent
BASE_MODEL_DIR = PACKAGE_DIR / "model"
PACKAGE_LCM_DIR = PACKAGE_DIR / "model_lcm"
CHECK_CAPTION_SEED0 = 93_000_000  # captions of the periodic checks (disjoint from training / gate sets)
SIGMA_DATA = 0.5  # LCMScheduler's sigma_data


# ------------------------------------------------------------------------------------ the math
def solver_timesteps(num_train_timesteps: int = 1000, solver_steps: int = 50):
    """Skipping-step grid ``t_i = (i + 1) k - 1``, i < solver_steps, ``k = num_train_timesteps // solver_steps``.

    Identical to ``LCMScheduler``'s ``lcm_origin_timesteps`` with ``original_inference_steps = solver_steps``.
    """
    import torch

    k = num_train_timesteps // solver_steps
    return torch.arange(1, solver_steps + 1) * k - 1


def boundary_scalings(t, timestep_scaling: float = 10.0, sigma_data: float = SIGMA_DATA):
    """Consistency boundary scalings (LCM paper Eq. 9; ``LCMScheduler.get_scalings_for_boundary_condition_discrete``).

    With ``s = timestep_scaling * t``: ``c_skip = sigma^2 / (s^2 + sigma^2)``, ``c_out = s / sqrt(s^2 + sigma^2)``,
    so ``c_skip(0) = 1, c_out(0) = 0`` (``f(x, 0) = x``).  ``t``: a tensor (any shape) or a number.
    """
    s = t * timestep_scaling
    c_skip = sigma_data**2 / (s**2 + sigma_data**2)
    c_out = s / (s**2 + sigma_data**2) ** 0.5
    return c_skip, c_out


def guidance_embedding(w, dim: int):
    """Sinusoidal embedding of ``1000 w`` (B,) -> (B, dim): ``[sin(1000 w f_j), cos(1000 w f_j)]``,
    ``f_j = 10000^(-j / (dim/2 - 1))`` (the pipeline's ``get_guidance_scale_embedding``; ``w`` is the LCM guidance,
    pipeline ``guidance_scale - 1``)."""
    import torch

    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=w.device) * -(math.log(10000.0) / (half - 1)))
    arg = (w.float() * 1000.0)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)
    return torch.nn.functional.pad(emb, (0, 1)) if dim % 2 else emb


def predicted_x0(eps, x_t, alpha_bar):
    """``x0_hat = (x_t - sqrt(1 - a) eps) / sqrt(a)`` for eps-prediction (``a = alpha_bar_t``, broadcastable)."""
    return (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()


def consistency_output(eps, x_t, t, alpha_bar, timestep_scaling: float = 10.0):
    """``f(x_t, t) = c_skip(t) x_t + c_out(t) x0_hat(x_t, t)`` (LCM paper Eq. 9), what ``LCMScheduler.step`` returns
    as ``denoised``.  ``t``: (B,) timesteps; ``alpha_bar``: (B, 1, 1, 1)."""
    c_skip, c_out = boundary_scalings(t.to(x_t.dtype), timestep_scaling)
    return c_skip.view(-1, 1, 1, 1) * x_t + c_out.view(-1, 1, 1, 1) * predicted_x0(eps, x_t, alpha_bar)


def guided_eps(eps_uncond, eps_cond, w):
    """Teacher CFG in the LCM convention (paper Eq. 7): ``eps_c + w (eps_c - eps_u)``; ``w``: (B,)."""
    w = w.view(-1, 1, 1, 1).to(eps_cond.dtype)
    return eps_cond + w * (eps_cond - eps_uncond)


def ddim_step(x0, eps, alpha_bar_prev):
    """Deterministic DDIM step to ``t_n``: ``x_{t_n} = sqrt(a_n) x0_hat + sqrt(1 - a_n) eps_hat``."""
    return alpha_bar_prev.sqrt() * x0 + (1 - alpha_bar_prev).sqrt() * eps


def pseudo_huber(a, b, c: float):
    """Mean of ``sqrt((a - b)^2 + c^2) - c`` (c = 0: mean absolute error)."""
    return ((a - b).pow(2) + c * c).sqrt().sub(c).mean()


def lcd_loss(student, teacher, target, x0, noise, ctx, ctx_uncond, w, start_t, k: int, alphas_cumprod,
             timestep_scaling: float = 10.0, huber_c: float = 1e-3):
    """One latent-consistency-distillation loss (LCM paper Algorithm 1, one term).

    ``x_{t_{n+k}} = sqrt(a) x0 + sqrt(1 - a) noise`` with ``t_{n+k} = start_t``; the teacher's guided DDIM step
    gives ``x_{t_n}``, ``t_n = max(t_{n+k} - k, 0)``; the loss compares ``f_student(x_{t_{n+k}}, t_{n+k}, w, c)``
    with ``f_target(x_{t_n}, t_n, w, c)`` (no gradient through the target).
    """
    import torch

    ac = alphas_cumprod.to(x0.device)
    prev_t = (start_t - k).clamp_min(0)
    a_start = ac[start_t].view(-1, 1, 1, 1)
    a_prev = ac[prev_t].view(-1, 1, 1, 1)
    x_t = a_start.sqrt() * x0 + (1 - a_start).sqrt() * noise
    w_emb = guidance_embedding(w, student.config.time_cond_proj_dim).to(x0.dtype)
    eps = student(x_t, start_t, ctx, timestep_cond=w_emb).sample
    pred = consistency_output(eps, x_t, start_t, a_start, timestep_scaling)
    with torch.no_grad():
        eps_u, eps_c = teacher(torch.cat([x_t, x_t]), torch.cat([start_t, start_t]), torch.cat([ctx_uncond, ctx])
                               ).sample.chunk(2)
        eps_w = guided_eps(eps_u, eps_c, w)
        x_prev = ddim_step(predicted_x0(eps_w, x_t, a_start), eps_w, a_prev)
        eps_tgt = target(x_prev, prev_t, ctx, timestep_cond=w_emb).sample
        tgt = consistency_output(eps_tgt, x_prev, prev_t, a_prev, timestep_scaling)
    return pseudo_huber(pred, tgt, huber_c)


def ema_update(ema_model, model, decay: float) -> None:
    """``p_ema <- decay p_ema + (1 - decay) p`` for every parameter."""
    import torch

    with torch.no_grad():
        for pe, p in zip(ema_model.parameters(), model.parameters()):
            pe.lerp_(p, 1 - decay)


def lr_factor(step: int, max_steps: int, elapsed_s: float, limit_s: float | None, warmup: int,
              floor: float = 0.1) -> float:
    """Linear warm-up, then cosine from 1 to ``floor``; progress = max(step fraction, clock fraction)."""
    frac = step / max_steps
    if limit_s:
        frac = max(frac, elapsed_s / limit_s)
    cos = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
    return min(1.0, (step + 1) / warmup) * cos


# ---------------------------------------------------------------------------- model components
def make_student(teacher, cond_dim: int = 256):
    """The teacher's UNet with ``time_cond_proj_dim = cond_dim``; ``time_embedding.cond_proj`` is zero, so the
    student's output equals the teacher's (unguided) output for every ``w``."""
    import torch
    from diffusers import UNet2DConditionModel

    student = UNet2DConditionModel.from_config(teacher.config, time_cond_proj_dim=cond_dim)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    if list(missing) != ["time_embedding.cond_proj.weight"] or unexpected:
        raise RuntimeError(f"unexpected student/teacher mismatch: missing {missing}, unexpected {unexpected}")
    torch.nn.init.zeros_(student.time_embedding.cond_proj.weight)
    return student


def lcm_scheduler(base_scheduler_config, solver_steps: int = 50, timestep_scaling: float = 10.0):
    """``LCMScheduler`` with the base model's noise schedule and the distillation's solver grid."""
    from diffusers import LCMScheduler

    return LCMScheduler.from_config(base_scheduler_config, original_inference_steps=solver_steps,
                                    timestep_scaling=timestep_scaling)


def build_pipeline(unet, vae, text_encoder, tokenizer, scheduler):
    """A stock ``LatentConsistencyModelPipeline`` around in-memory components (no safety checker)."""
    from diffusers import LatentConsistencyModelPipeline

    pipe = LatentConsistencyModelPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_base(model_dir: Path):
    """(unet, vae, text_encoder, tokenizer, scheduler config) of the base model, frozen, in eval mode."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    unet = UNet2DConditionModel.from_pretrained(str(model_dir / "unet")).eval().requires_grad_(False)
    vae = AutoencoderKL.from_pretrained(str(model_dir / "vae")).eval().requires_grad_(False)
    te = CLIPTextModel.from_pretrained(str(model_dir / "text_encoder")).eval().requires_grad_(False)
    tok = CLIPTokenizer.from_pretrained(str(model_dir / "tokenizer"))
    sched_cfg = DDIMScheduler.load_config(str(model_dir / "scheduler"))
    return unet, vae, te, tok, sched_cfg


def encode_text(text_encoder, tokenizer, captions, batch: int = 512):
    """Last hidden states (N, L, D) of the frozen text encoder for ``captions``."""
    import torch

    ids = tokenize(tokenizer, captions)
    with torch.no_grad():
        return torch.cat([text_encoder(ids[i : i + batch])[0] for i in range(0, len(ids), batch)])


# ------------------------------------------------------------------------------------ checking
def check_samples(pipe, scenes, steps: int, guidance: float, seed: int):
    """Generate ``scenes``' captions with the pipeline; (uint8 images, judged per-attribute accuracy)."""
    import torch

    from .judge import judge_batch, score

    g = torch.Generator().manual_seed(seed)
    out = pipe([s.caption() for s in scenes], num_inference_steps=steps, guidance_scale=guidance, generator=g,
               output_type="np").images
    imgs = np.clip(np.round(out * 255), 0, 255).astype(np.uint8)
    return imgs, score(judge_batch(imgs), [s.as_dict() for s in scenes])


def _fmt(acc: dict) -> str:
    return " ".join(f"{k[:5]}={v:.2f}" for k, v in acc.items())


# ------------------------------------------------------------------------------------ training
def train_lcd(student, teacher, vae, text_encoder, tokenizer, sched_cfg, latents, ctx_all, gen, log, run_dir, *,
              max_steps, batch, lr, time_limit_min, guidance_range, solver_steps, timestep_scaling, huber_c,
              target_decay, ema_decay, check_every, check_n, check_guidance, keep_best=True, warmup=100):
    """LCD training loop; returns (shipped student, steps done, step of the shipped weights).

    The shipped student is the EMA student; with ``keep_best`` it is the EMA weights of the check (every
    ``check_every`` steps and at the end; 4 steps, ``check_n`` captions from ``CHECK_CAPTION_SEED0``, disjoint from
    the training pool and both evaluation sets) with the best mean judged accuracy.
    """
    import torch
    from diffusers import DDIMScheduler

    ac = DDIMScheduler.from_config(sched_cfg).alphas_cumprod.to(latents.device)
    grid = solver_timesteps(sched_cfg["num_train_timesteps"], solver_steps).to(latents.device)
    k = sched_cfg["num_train_timesteps"] // solver_steps
    target = copy.deepcopy(student).eval().requires_grad_(False)
    ema = copy.deepcopy(student).eval().requires_grad_(False)
    ctx_uncond = encode_text(text_encoder, tokenizer, [""])
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    scheduler = lcm_scheduler(sched_cfg, solver_steps, timestep_scaling)
    check_scenes = [sample_scene(CHECK_CAPTION_SEED0 + i) for i in range(check_n)]

    best = {"score": -1.0, "step": -1, "state": None}

    def check(step):
        """Judge the EMA student at 4 steps on the check captions; keep its weights if they score best so far."""
        pipe = build_pipeline(ema, vae, text_encoder, tokenizer, scheduler)
        imgs, acc = check_samples(pipe, check_scenes, 4, check_guidance, seed=0)
        sc = float(np.mean(list(acc.values())))
        if keep_best and sc > best["score"]:
            best.update(score=sc, step=step, state={k: v.detach().clone() for k, v in ema.state_dict().items()})
        log(f"  check step {step} ema: 4 steps g={check_guidance}: {_fmt(acc)} mean={sc:.4f} "
            f"(best {best['score']:.4f} at step {best['step']})")
        save_grid(imgs[:32], run_dir / f"samples_{step:06d}.png")

    limit_s = time_limit_min * 60 if time_limit_min else None
    g_lo, g_hi = guidance_range
    student.train()
    t0 = time.time()
    done, run_loss = 0, None
    for step in range(max_steps):
        f = lr_factor(step, max_steps, time.time() - t0, limit_s, warmup)
        for grp in opt.param_groups:
            grp["lr"] = lr * f
        # random draws come from the seeded CPU generator, then move to the data's device
        idx = torch.randint(0, len(latents), (batch,), generator=gen).to(latents.device)
        x0 = latents[idx]
        ctx = ctx_all[idx]
        w = ((g_lo - 1) + (g_hi - g_lo) * torch.rand(batch, generator=gen)).to(x0)  # LCM w = pipeline guidance - 1
        start_t = grid[torch.randint(0, len(grid), (batch,), generator=gen).to(grid.device)]
        noise = torch.randn(x0.shape, generator=gen).to(x0)
        loss = lcd_loss(student, teacher, target, x0, noise, ctx, ctx_uncond.expand(batch, -1, -1), w,
                        start_t, k, ac, timestep_scaling, huber_c)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        ema_update(target, student, target_decay)
        ema_update(ema, student, min(ema_decay, (1 + step) / (10 + step)))
        done = step + 1
        run_loss = loss.item() if run_loss is None else 0.98 * run_loss + 0.02 * loss.item()
        if step % 50 == 0:
            log(f"step {step} loss {loss.item():.5f} avg {run_loss:.5f} lr {lr * f:.2e} ({time.time() - t0:.0f}s)")
        over = limit_s is not None and time.time() - t0 > limit_s
        if (check_every and step > 0 and step % check_every == 0) or over or done == max_steps:
            check(step)
        if over:
            log(f"time limit reached after {done} steps")
            break
    if keep_best and best["state"] is not None:
        ema.load_state_dict(best["state"])
        log(f"shipping the EMA weights of step {best['step']} (check mean {best['score']:.4f})")
        return ema, done, best["step"]
    return ema, done, done


# ---------------------------------------------------------------------------------------- save
def save_lcm(out: Path, unet, base_dir: Path, scheduler, vae, text_encoder, tokenizer):
    """Write a ``LatentConsistencyModelPipeline`` folder (safetensors) whose VAE, text encoder and tokenizer are
    byte-for-byte copies of the base model's."""
    pipe = build_pipeline(unet, vae, text_encoder, tokenizer, scheduler)
    pipe.save_pretrained(str(out), safe_serialization=True)
    for name in ("vae", "text_encoder", "tokenizer"):
        shutil.rmtree(out / name)
        shutil.copytree(base_dir / name, out / name)
    return out


def folder_mb(folder: Path) -> float:
    return round(sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()) / 2**20, 2)


def install(model_dir: Path, dest: Path = PACKAGE_LCM_DIR) -> None:
    """Replace ``dest`` by a copy of the model folder."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(model_dir, dest)


def final_evaluation(mdir: Path, n: int, steps_list, guidances, log) -> dict:
    """Judged accuracy of the saved folder (stock pipeline) on the gate set and on a second caption set."""
    res = {}
    for key, seed0, seed in (("gate_set", EVAL_SEED0, 0), ("second_caption_set", SECOND_EVAL_SEED0, 1)):
        r = evaluate_model(mdir, n=n, guidances=guidances, steps=steps_list, seed=seed, log=log,
                           caption_seed0=seed0, extras=False)
        res[key] = {"caption_seed0": seed0, "generation_seed": seed, "by_steps": r["by_steps"]}
    return res


def pick_guidance(evals: dict, steps: int) -> float:
    """Guidance with the best worst-attribute accuracy at ``steps`` (mean over caption sets), ties by shape."""
    sets = list(evals.values())
    gs = sets[0]["by_steps"][str(steps)].keys()

    def key(g):
        accs = [s["by_steps"][str(steps)][g] for s in sets]
        return (np.mean([min(a.values()) for a in accs]), np.mean([a["shape"] for a in accs]))

    return float(max(gs, key=key))


# ---------------------------------------------------------------------------------------- main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="run folder (default runs/lcm_seed{seed})")
    p.add_argument("--base", default=str(BASE_MODEL_DIR), help="teacher model folder (default: the shipped model)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: with another job on the 2 cores, 2 spin-waiting threads were "
                        "measured up to 15x slower per step, 1 thread steady)")
    p.add_argument("--pool", type=int, default=12000, help="rendered + VAE-encoded training scenes")
    p.add_argument("--steps", type=int, default=20000, help="distillation steps at most (the clock usually ends first)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--cond-dim", type=int, default=256, help="UNet time_cond_proj_dim (guidance embedding size)")
    p.add_argument("--guidance-min", type=float, default=2.0, help="pipeline guidance_scale range sampled in training")
    p.add_argument("--guidance-max", type=float, default=8.0)
    p.add_argument("--solver-steps", type=int, default=50,
                   help="DDIM solver grid = LCMScheduler original_inference_steps")
    p.add_argument("--timestep-scaling", type=float, default=10.0)
    p.add_argument("--huber-c", type=float, default=1e-3)
    p.add_argument("--target-decay", type=float, default=0.95, help="EMA decay of the target network")
    p.add_argument("--ema-decay", type=float, default=0.999, help="EMA decay of the shipped weights")
    p.add_argument("--time-budget-min", type=float, default=87.0,
                   help="whole run incl. the final evaluation; training gets what is left (0: no budget)")
    p.add_argument("--train-time-limit-min", type=float, default=None, help="training phase length (overrides)")
    p.add_argument("--reserve-min", type=float, default=6.0,
                   help="minutes of the budget kept for saving and the final evaluation")
    p.add_argument("--check-every", type=int, default=500)
    p.add_argument("--check-n", type=int, default=200, help="check captions (seeds from CHECK_CAPTION_SEED0)")
    p.add_argument("--check-guidance", type=float, default=5.5)
    p.add_argument("--eval", type=int, default=200, help="held-out captions per final evaluation set (0: skip)")
    p.add_argument("--eval-steps", type=int, nargs="*", default=[2, 4, 8])
    p.add_argument("--eval-guidance", type=float, nargs="*", default=[3.0, 4.5, 6.0, 8.0])
    p.add_argument("--no-keep-best", action="store_true",
                   help="ship the last EMA weights instead of the best-checked ones")
    p.add_argument("--install", action="store_true", help="copy the model into the package (nrinv/shapes/model_lcm)")
    a = p.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    out = Path(a.out or f"runs/lcm_seed{a.seed}")
    out.mkdir(parents=True, exist_ok=True)
    log = make_log(out / "train.log")
    command = "python -m nrinv.shapes.distill " + " ".join(sys.argv[1:] if argv is None else argv)
    log(f"{command}\nargs: {vars(a)}  threads={torch.get_num_threads()}")
    T0 = time.time()

    base = Path(a.base)
    teacher, vae, te, tok, sched_cfg = load_base(base)
    scenes, imgs = render_pool(a.pool, TRAIN_SEED0 + a.seed * 1_000_000)
    latents = encode_pool(vae, imgs) * vae.config.scaling_factor
    ctx_all = encode_text(te, tok, [s.caption() for s in scenes])
    del imgs
    log(f"latents {tuple(latents.shape)} std {latents.std().item():.3f}, text {tuple(ctx_all.shape)} "
        f"({time.time() - T0:.0f}s)")

    limit = a.train_time_limit_min
    if limit is None and a.time_budget_min:
        limit = max(0.5, a.time_budget_min - (time.time() - T0) / 60 - a.reserve_min)
        log(f"training phase: {limit:.1f} min of the {a.time_budget_min:g} min budget")
    student = make_student(teacher, a.cond_dim)
    shipped, done, shipped_step = train_lcd(
        student, teacher, vae, te, tok, sched_cfg, latents, ctx_all, gen, log, out,
        max_steps=a.steps, batch=a.batch, lr=a.lr, time_limit_min=limit,
        guidance_range=(a.guidance_min, a.guidance_max), solver_steps=a.solver_steps,
        timestep_scaling=a.timestep_scaling, huber_c=a.huber_c, target_decay=a.target_decay,
        ema_decay=a.ema_decay, check_every=a.check_every, check_n=a.check_n, check_guidance=a.check_guidance,
        keep_best=not a.no_keep_best,
    )
    train_s = time.time() - T0
    mdir = out / "model"
    save_lcm(mdir, shipped, base, lcm_scheduler(sched_cfg, a.solver_steps, a.timestep_scaling), vae, te, tok)
    info = {
        "command": command, "args": vars(a), "distill_steps_done": done, "shipped_weights_step": shipped_step,
        "batch": a.batch,
        "threads": torch.get_num_threads(), "train_phase_wall_s": round(train_s, 1),
        "teacher": "nrinv/shapes/model (the shipped base model, 20-step DDIM, guidance 5.5)",
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, no GPU",
    }
    (mdir / "train_info.json").write_text(json.dumps(info, indent=2))
    log(f"saved {mdir} ({folder_mb(mdir)} MB) after {done} steps ({time.time() - T0:.0f}s)")
    if a.eval:
        metrics = final_evaluation(mdir, a.eval, a.eval_steps, a.eval_guidance, log)
        metrics.update(n_captions=a.eval, pipeline="LatentConsistencyModelPipeline", scheduler="LCMScheduler",
                       model_folder_mb=folder_mb(mdir))
        if 4 in a.eval_steps:
            metrics["best_guidance_at_4_steps"] = pick_guidance(
                {k: metrics[k] for k in ("gate_set", "second_caption_set")}, 4)
        (mdir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    info["wall_s"] = round(time.time() - T0, 1)
    info["wall_min"] = round(info["wall_s"] / 60, 1)
    (mdir / "train_info.json").write_text(json.dumps(info, indent=2))
    if a.install:
        install(mdir)
        log(f"installed into {PACKAGE_LCM_DIR}")
    log(f"total wall time {time.time() - T0:.0f}s")


if __name__ == "__main__":
    main()
