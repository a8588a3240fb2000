"""A learned initial guess for the per-step implicit solve (``warm_start="learned"``).

Inversion solves ``z_i = f_i(z_i)``, ``f_i(z) = (z_{i+1} - B_i m(z) - C_i) / A_i`` per sampler step
(``core/solvers.py``).  A solver started closer to the root needs fewer network calls for the same
answer.  :class:`InitialGuessNet` is a small network that predicts the model output ``m_i = m(z_i)`` at
the unknown root from what the solver knows before it calls the network:

* ``y_i = z_{i+1} - C_i``, the known next latent less the step's fixed (recorded-noise) term;
* the model outputs implied by the two steps solved just before (``m_{i+1}``, ``m_{i+2}``; absent for
  the first solved steps, i.e. the last sampler steps);
* the step's timestep and the next one, the guidance scale and the prompt embedding (mean over tokens).

The solver then starts from ``f_i`` evaluated with the predicted output, ``(y_i - B_i m_hat) / A_i``, and
refines to its usual tolerance, so the answer is the same root and the stock pipeline regenerates it:
the network only moves the start point.

Training (:func:`train_initial_guess`) needs no data set: the pipeline generates its own trajectories from
random noise, random prompts (``prompts``: a list or ``callable(rng) -> str``) and random recorded noise,
and along a sampled trajectory every ``z_i`` is the exact root of step ``i``, ``m_{i+1}`` the exact
implied output.  The loss is the start point's residual, ``||r(z_hat)||^2 = ||z_hat - f(z_hat)||^2``
relative to the root's size (one frozen network call per example, differentiated through): measured on
the 4-step model, the distance to the root is a poor proxy (the "last" warm start is farther from the
root than ``z_hat = y / A`` in distance, but has 3-5x lower residual), because the step suppresses the
error along directions the model output follows.  The result is saved *beside the model*:
``<model folder>/inverter/inverter.safetensors`` plus ``inverter.json`` (architecture, the model it was
trained for, training record); :func:`load_inverter` finds it from the pipeline's ``name_or_path`` and
refuses a file trained for another network (a fingerprint of the denoiser's config and weights).
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..errors import InputError
from .adapters import Adapter, Conditioning, adapter_for
from .solvers import _backprop_attention

__all__ = ["InitialGuessNet", "LearnedGuess", "load_inverter", "inverter_dir", "network_fingerprint",
           "train_initial_guess", "INVERTER_FOLDER", "WEIGHTS_NAME", "CONFIG_NAME"]

INVERTER_FOLDER = "inverter"
WEIGHTS_NAME = "inverter.safetensors"
CONFIG_NAME = "inverter.json"
FORMAT_VERSION = 1


# ------------------------------------------------------------------------------------ the network
def _sinusoid(x: Tensor, dim: int) -> Tensor:
    """``[sin(x f_j), cos(x f_j)]``, ``f_j`` geometric in [1, 1000]; ``x``: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(torch.linspace(0.0, math.log(1000.0), half, device=x.device, dtype=torch.float32))
    arg = x.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


class _Block(nn.Module):
    """Residual block: GroupNorm, SiLU, 3x3 conv, FiLM from the step embedding, GroupNorm, SiLU, 3x3 conv."""

    def __init__(self, channels: int, emb: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(8, channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.film = nn.Linear(emb, 2 * channels)
        self.norm2 = nn.GroupNorm(8, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        scale, shift = self.film(e)[:, :, None, None].chunk(2, dim=1)
        h = nn.functional.silu(self.norm2(h) * (1 + scale) + shift)
        return x + self.conv2(h)


class InitialGuessNet(nn.Module):
    """Predicts a step's model output at its root from ``(y, m_prev, has_prev)`` and the step embedding.

    A two-level U-shaped convolutional network (full and half resolution, then a global
    average-pooled context at quarter resolution), FiLM-conditioned on the timesteps, guidance and
    pooled prompt.  The output is ``has_prev * m_prev + correction``, so an untrained network
    reproduces the "last" warm start.
    """

    def __init__(self, channels: int = 4, width: int = 32, prompt_dim: int = 64, emb: int = 128):
        super().__init__()
        self.config = {"channels": channels, "width": width, "prompt_dim": prompt_dim, "emb": emb}
        self.emb = nn.Sequential(nn.Linear(3 * 32 + prompt_dim, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.inp = nn.Conv2d(3 * channels + 2, width, 3, padding=1)
        self.b1 = _Block(width, emb)
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.b2 = _Block(2 * width, emb)
        self.b3 = _Block(2 * width, emb)
        self.ctx = nn.Linear(2 * width, 2 * width)
        self.b4 = _Block(2 * width, emb)
        self.up = nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1)
        self.b5 = _Block(width, emb)
        self.out = nn.Conv2d(width, channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, y: Tensor, m_prev: Tensor, has_prev: Tensor, m_prev2: Tensor, has_prev2: Tensor, t: Tensor,
                t_next: Tensor, guidance: Tensor, prompt: Tensor) -> Tensor:
        """All (B, ...) float32: ``y``, ``m_prev``, ``m_prev2`` latents; ``has_prev``, ``has_prev2``, ``t``,
        ``t_next``, ``guidance`` (B,); ``prompt`` (B, prompt_dim)."""
        e = self.emb(torch.cat([_sinusoid(t / 1000.0, 32), _sinusoid(t_next / 1000.0, 32),
                                _sinusoid(guidance / 10.0, 32), prompt], dim=1))
        flag = has_prev.view(-1, 1, 1, 1).to(y.dtype)
        flag2 = has_prev2.view(-1, 1, 1, 1).to(y.dtype)
        m_prev = m_prev * flag
        ones = y.new_ones(y.shape[0], 1, *y.shape[2:])
        h0 = self.b1(self.inp(torch.cat([y, m_prev, m_prev2 * flag2, flag * ones, flag2 * ones], dim=1)), e)
        h = self.b3(self.b2(self.down(h0), e), e)
        h = h + self.ctx(h.mean(dim=(2, 3)))[:, :, None, None]
        h = self.b4(h, e)
        h = self.up(h)[..., :h0.shape[-2], :h0.shape[-1]]
        h = self.b5(h + h0, e)
        return m_prev + self.out(nn.functional.silu(h))


# ------------------------------------------------------------------------------ model identity
def _picks(net: nn.Module) -> list[tuple[str, Tensor]]:
    """The parameters a fingerprint reads: the first, the middle and the last (name, tensor)."""
    params = list(net.named_parameters())
    return [params[0], params[len(params) // 2], params[-1]] if params else []


def _fingerprint(net: nn.Module, weights: Sequence[Tensor]) -> str:
    cfg = dict(getattr(net, "config", {}) or {})
    keys = sorted(k for k in cfg if not k.startswith("_"))
    h = hashlib.sha256(json.dumps({k: cfg[k] for k in keys}, sort_keys=True, default=str).encode())
    for p in weights:
        h.update(f"{tuple(p.shape)}:{float(p.detach().double().abs().sum()):.6e}".encode())
    return h.hexdigest()[:16]


def network_fingerprint(adapter: Adapter) -> str:
    """A short hash of the denoiser's configuration and weights (sums of a few parameter tensors)."""
    net = adapter.network
    return _fingerprint(net, [p for _, p in _picks(net)])


def _float32_fingerprint(adapter: Adapter) -> Optional[str]:
    """The fingerprint of a half-precision denoiser at the float32 weights it was cast from: those in the
    safetensors files of its folder (its config's ``_name_or_path``), where the parameters the fingerprint
    reads are exactly their cast; else None.  (Sums of bfloat16 / float16 weights differ from the float32
    sums an inverter trained in float32 recorded, although the network is the same.)"""
    net = adapter.network
    picks = _picks(net)
    if not picks or any(p.dtype == torch.float32 or p.is_meta for _, p in picks):
        return None
    source = dict(getattr(net, "config", {}) or {}).get("_name_or_path")
    folder = Path(str(source)) if source else None
    if folder is None or not folder.is_dir():
        return None
    from safetensors import safe_open

    saved: dict[str, Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):  # float32 weights, sharded or not (not a half variant)
        with safe_open(str(file), framework="pt") as f:
            for name in set(f.keys()) & {name for name, _ in picks}:
                weight = f.get_tensor(name)
                if weight.dtype == torch.float32:
                    saved.setdefault(name, weight)
    if len(saved) < len(picks) or not all(torch.equal(saved[name].to(p.dtype), p.detach().cpu()) for name, p in picks):
        return None
    return _fingerprint(net, [saved[name] for name, _ in picks])


def inverter_dir(pipe: Any) -> Optional[Path]:
    """``<model folder>/inverter`` of a pipeline loaded from a local folder, else ``None``."""
    adapter = adapter_for(pipe)
    source = getattr(adapter.pipe, "name_or_path", None) or dict(getattr(adapter.pipe, "config", {}) or {}).get(
        "_name_or_path")
    if not source:
        return None
    folder = Path(str(source))
    return folder / INVERTER_FOLDER if folder.is_dir() else None


def _prompt_vector(cond: Conditioning, dim: int, batch: int) -> Tensor:
    """The prompt embedding averaged over tokens (the first 3-D float tensor the network is given)."""
    for value in cond.cond.values():
        if torch.is_tensor(value) and value.dim() == 3 and torch.is_floating_point(value):
            v = value.float().mean(dim=1)
            v = v[:, :dim] if v.shape[1] >= dim else nn.functional.pad(v, (0, dim - v.shape[1]))
            return v.expand(batch, -1) if v.shape[0] != batch else v
    raise ValueError("the conditioning has no token embeddings to condition the inverter on")


@dataclass
class LearnedGuess:
    """A trained :class:`InitialGuessNet` and what it was trained for."""

    net: InitialGuessNet
    info: dict
    path: Optional[Path] = None

    def predict(self, y: Tensor, implied: Sequence[tuple[float, Tensor]], t: float, guidance: float,
                cond: Conditioning) -> Tensor:
        """The predicted model output at the step's root (float32, on ``y``'s device)."""
        net = self.net
        param = next(net.parameters())
        if param.device != y.device:
            net.to(y.device)
        """``implied``: ``(t, model output)`` of the steps solved before this one, oldest first."""
        batch = y.shape[0]
        prev = [m.float() for _, m in implied[-2:]]
        t_next = implied[-1][0] if implied else 0.0
        mp = prev[-1] if prev else y.new_zeros(y.shape)
        mp2 = prev[-2] if len(prev) > 1 else y.new_zeros(y.shape)
        with torch.no_grad():
            return net(y.float(), mp, y.new_full((batch,), float(len(prev) > 0)), mp2,
                       y.new_full((batch,), float(len(prev) > 1)), y.new_full((batch,), float(t)),
                       y.new_full((batch,), float(t_next)),
                       y.new_full((batch,), float(guidance)),
                       _prompt_vector(cond, net.config["prompt_dim"], batch).to(y.device)).float()

    def save(self, folder: Union[str, Path]) -> Path:
        from safetensors.torch import save

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        # written as bytes, so the file takes the user's umask (safetensors' save_file makes it 0600,
        # unreadable to the other users of a shared model folder)
        (folder / WEIGHTS_NAME).write_bytes(save(state))
        (folder / CONFIG_NAME).write_text(json.dumps(dict(self.info, architecture=self.net.config,
                                                           format=FORMAT_VERSION), indent=1) + "\n")
        return folder


_CACHE: dict[tuple, LearnedGuess] = {}


def load_inverter(pipe: Any, folder: Union[str, Path, None] = None, *, strict: bool = False) -> Optional[LearnedGuess]:
    """The inverter saved beside ``pipe``'s model (or in ``folder``), or ``None`` when there is none or it
    was trained for another network (``strict=True``: raise instead of ``None`` on a mismatch)."""
    adapter = adapter_for(pipe)
    folder = Path(folder) if folder is not None else inverter_dir(adapter)
    if folder is None or not (folder / WEIGHTS_NAME).is_file() or not (folder / CONFIG_NAME).is_file():
        if strict:
            raise FileNotFoundError(f"no {WEIGHTS_NAME} / {CONFIG_NAME} in {folder}; train one with "
                                    "`nrinv train-inverter`")
        return None
    stamp = (str(folder.resolve()), (folder / WEIGHTS_NAME).stat().st_mtime_ns)
    guess = _CACHE.get(stamp)
    if guess is None:
        from safetensors.torch import load_file

        info = json.loads((folder / CONFIG_NAME).read_text())
        net = InitialGuessNet(**info["architecture"])
        net.load_state_dict(load_file(str(folder / WEIGHTS_NAME)))
        net.eval().requires_grad_(False)
        guess = _CACHE[stamp] = LearnedGuess(net, info, folder)
    # the inverter runs in float32 whatever the network's dtype (``LearnedGuess.predict``): a half-precision
    # copy of the network it was trained for is that network
    trained = guess.info.get("fingerprint")
    if trained != network_fingerprint(adapter) and trained != _float32_fingerprint(adapter):
        if strict:
            dtype = str(adapter.dtype).replace("torch.", "")
            half = "" if dtype == "float32" else \
                f"; in {dtype} its weights are not a cast of float32 weights saved in the network's folder"
            raise ValueError(f"{folder} was trained for another network (fingerprint {trained} != "
                             f"{network_fingerprint(adapter)}{half}); retrain it")
        return None
    return guess


# --------------------------------------------------------------------------------------- training
def _trajectories(adapter: Adapter, prompts: Sequence[str], steps: int, guidance: float, seed: int,
                  size: tuple[int, int], prompt_dim: int = 64) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Sample ``len(prompts)`` trajectories with the stock step (recorded noise of ``seed``) and return per
    step the solver's inputs and the root (one example per (sample, step)), and what a network call at
    those examples needs (timesteps, input scales, conditioning), all on the model's device."""
    schedule = adapter.schedule(steps, size, seed=seed)
    with torch.no_grad():  # not adapter.conditioning: its cache would keep every random prompt
        cond = Conditioning.cat([adapter._embed(p, None, float(guidance), size) for p in prompts])
    batch = len(prompts)
    gen = torch.Generator().manual_seed(seed + 1)
    z = torch.randn(adapter.latent_shape(*size, batch=batch), generator=gen).to(schedule.device)
    z = z * schedule.init_noise_sigma
    zs, ms = [], []
    with torch.no_grad():
        for step in schedule.steps:
            m = adapter.denoise(step.input_scale * z, step.timestep, cond)
            zs.append(z)
            ms.append(m)
            z = step.apply(z, m)
    zs.append(z)
    pv = _prompt_vector(cond, prompt_dim, batch)
    out: dict[str, list] = {k: [] for k in ("y", "m", "m_prev", "has_prev", "m_prev2", "has_prev2", "t", "t_next",
                                            "a", "b", "root", "prompt", "guidance")}
    sched = schedule.steps
    per_sample = lambda value: z.new_full((batch,), float(value))  # noqa: E731
    for i, step in enumerate(sched):
        y = zs[i + 1] - (0 if step.C is None else step.C)
        out["y"].append(y)
        out["m"].append(ms[i])
        last = i + 1 == len(sched)
        out["m_prev"].append(torch.zeros_like(ms[i]) if last else ms[i + 1])
        out["has_prev"].append(per_sample(0.0 if last else 1.0))
        last2 = i + 2 >= len(sched)
        out["m_prev2"].append(torch.zeros_like(ms[i]) if last2 else ms[i + 2])
        out["has_prev2"].append(per_sample(0.0 if last2 else 1.0))
        out["t"].append(per_sample(step.t))
        out["t_next"].append(per_sample(0.0 if last else sched[i + 1].t))
        out["a"].append(per_sample(step.A))
        out["b"].append(per_sample(step.B))
        out["root"].append(zs[i])
        out["prompt"].append(pv)
        out["guidance"].append(per_sample(guidance))
    call = {"timestep": torch.cat([step.timestep.reshape(1).expand(batch) for step in sched]).to(z.device),
            "scale": torch.cat([z.new_full((batch,), step.input_scale) for step in sched]),
            "cond": Conditioning.cat([cond] * len(sched))}
    return {k: torch.cat(v) for k, v in out.items()}, call


def _take(cond: Conditioning, idx: Tensor) -> Conditioning:
    pick = lambda d: {k: v[idx.to(v.device)] for k, v in d.items()}
    return Conditioning(cond.guidance_scale, cond.cfg, pick(cond.cond), pick(cond.uncond), cond.shared)


def _denoise_at(adapter: Adapter, z: Tensor, timesteps: Tensor, cond: Conditioning) -> Tensor:
    """The guided model output at per-sample timesteps, back-propagated: the network's own forward (no
    graphs), with the attention kernels of ``gnri_grad``'s backward pass."""
    with _backprop_attention():
        return adapter.denoise(z, timesteps, cond, network=adapter._forward)


def train_initial_guess(
    pipe: Any,
    out: Union[str, Path, None] = None,
    *,
    prompts: Union[Sequence[str], Callable[[random.Random], str], None] = None,
    steps: Sequence[int] = (4,),
    guidance: Optional[Sequence[float]] = None,
    size: Optional[tuple[int, int]] = None,
    time_budget_s: float = 600.0,
    max_updates: int = 100_000,
    batch_trajectories: int = 32,
    batch_size: int = 32,
    updates_per_batch: int = 4,
    prev_noise: float = 0.2,
    width: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
    log: Optional[Callable[[str], None]] = print,
    progress: Optional[Callable[[dict], None]] = None,
) -> LearnedGuess:
    """Train an :class:`InitialGuessNet` for ``pipe`` on trajectories the pipeline samples itself; save it in
    ``out`` (default: beside the model, ``<model folder>/inverter``) and return it.

    ``prompts``: a list to draw from or ``callable(random.Random) -> str`` (``nrinv.train_inverter``
    defaults to random captions of the shapes world for the built-in models); ``steps``/``guidance``: the step
    counts and guidance scales to draw (default: the model's).  Runs until ``time_budget_s`` or ``max_updates``;
    the learning rate follows the clock (cosine to 5%), so a run cut by its budget ends at the low rate.
    Trains on the pipeline's device.  ``progress``: called after every update with ``{"updates",
    "max_updates", "elapsed_s", "time_budget_s", "loss"}`` (the running root-mean-square relative residual).
    """
    adapter = adapter_for(pipe)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    size = tuple(size) if size else adapter.default_size()
    if not prompts:
        raise InputError("train_inverter needs prompts: a list of prompts or a callable(random.Random) -> str")
    shape = adapter.latent_shape(*size)
    if len(shape) != 4:
        kind = "a video's (B, C, F, H, W)" if len(shape) == 5 else "packed tokens (B, L, C)"
        raise InputError(f"the learned inverter takes image latents (B, C, H, W), and {type(adapter.pipe).__name__}'s "
                         f"are {kind}; invert this model with another warm start")
    draw_prompt = prompts if callable(prompts) else (lambda r: r.choice(list(prompts)))
    guidance = list(guidance) if guidance else [adapter.defaults.guidance_scale]
    channels = shape[1]
    net = InitialGuessNet(channels=channels, width=width).to(adapter.device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    t0 = time.perf_counter()
    gen_time = train_time = 0.0
    updates = trajectories = trajectory_steps = 0
    history: list[dict] = []
    running = None
    while updates < max_updates and time.perf_counter() - t0 < time_budget_s:
        tg = time.perf_counter()
        fresh, call = _trajectories(adapter, [draw_prompt(rng) for _ in range(batch_trajectories)],
                                    rng.choice(list(steps)), rng.choice(guidance), rng.randrange(10**8), size,
                                    net.config["prompt_dim"])
        gen_time += time.perf_counter() - tg
        trajectories += batch_trajectories
        n = fresh["y"].shape[0]
        trajectory_steps += n
        tt = time.perf_counter()
        for _ in range(min(updates_per_batch, max_updates - updates)):
            frac = min(1.0, (time.perf_counter() - t0) / time_budget_s, updates / max_updates)
            for group in opt.param_groups:
                group["lr"] = lr * min(1.0, (updates + 1) / 100) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
            idx = torch.randperm(n)[:batch_size].to(fresh["y"].device)
            f = {k: v[idx] for k, v in fresh.items()}
            # the outputs implied by the steps solved before are themselves approximate in use:
            # perturb them by up to ``prev_noise`` of their size
            for key in ("m_prev", "m_prev2"):
                jitter = torch.rand_like(f[key][:, :1, :1, :1]) * prev_noise * f[key].std()
                f[key] = f[key] + jitter * torch.randn_like(f[key])
            m_hat = net(f["y"], f["m_prev"], f["has_prev"], f["m_prev2"], f["has_prev2"], f["t"], f["t_next"],
                        f["guidance"], f["prompt"])
            z_hat = (f["y"] - f["b"].view(-1, 1, 1, 1) * m_hat) / f["a"].view(-1, 1, 1, 1)
            m_at = _denoise_at(adapter, call["scale"][idx].view(-1, 1, 1, 1) * z_hat, call["timestep"][idx],
                               _take(call["cond"], idx))
            # the residual r(z_hat) = z_hat - f(z_hat) = (B / A) (m(z_hat) - m_hat), relative to the root's size
            res = (f["b"] / f["a"]).view(-1, 1, 1, 1) * (m_at - m_hat)
            loss = (res.pow(2).mean(dim=(1, 2, 3)) / f["root"].pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-6)).mean()
            params = list(net.parameters())
            # gradients for the inverter only (the pipeline's own parameters are not touched)
            for p, g in zip(params, torch.autograd.grad(loss, params)):
                p.grad = g
            nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            updates += 1
            value = float(loss.detach())
            running = value if running is None else 0.98 * running + 0.02 * value
            if progress is not None:
                progress({"updates": updates, "max_updates": max_updates, "time_budget_s": time_budget_s,
                          "elapsed_s": time.perf_counter() - t0, "loss": math.sqrt(max(running, 0.0))})
        train_time += time.perf_counter() - tt
        if log and (trajectories // batch_trajectories) % 10 == 0:
            rec = {"elapsed_s": round(time.perf_counter() - t0, 1), "updates": updates, "trajectories": trajectories,
                   "loss": round(math.sqrt(max(running, 0.0)), 5)}
            history.append(rec)
            log(json.dumps(rec))
    elapsed = time.perf_counter() - t0
    net.eval().requires_grad_(False)
    info = {
        "fingerprint": network_fingerprint(adapter),
        "model_kind": adapter.defaults.kind,
        "pipeline": type(adapter.pipe).__name__,
        "size": list(size),
        "steps": list(steps),
        "guidance": guidance,
        "training": {"elapsed_s": round(elapsed, 1), "updates": updates, "trajectories": trajectories,
                     "generation_s": round(gen_time, 1), "update_s": round(train_time, 1),
                     "generation_s_per_trajectory_step": round(gen_time / max(1, trajectory_steps), 5),
                     "update_s_per_update": round(train_time / max(1, updates), 5),
                     "batch_size": batch_size, "batch_trajectories": batch_trajectories,
                     "threads": torch.get_num_threads(), "seed": seed,
                     "prev_noise": prev_noise, "width": width, "lr": lr, "updates_per_batch": updates_per_batch,
                     "final_loss_sqrt": None if running is None else round(math.sqrt(running), 5),
                     "history": history[-40:]},
        "parameters": sum(p.numel() for p in net.parameters()),
    }
    guess = LearnedGuess(net, info)
    target = Path(out) if out is not None else inverter_dir(adapter)
    if target is not None:
        guess.path = guess.save(target)
    return guess

