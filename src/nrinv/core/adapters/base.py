"""The adapter contract every model family implements (``Adapter``), the prompt conditioning it
returns, and the size checks read without loading weights."""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from ...errors import InputError
from ..defaults import ModelDefaults, model_defaults
from ..graphs import GraphedNetwork
from ..schedulers import Schedule, affine_schedule
from .state import _NO_NOISE, _state_of

__all__ = ["Adapter", "Conditioning", "size_error", "size_notes"]


def size_error(height: int, width: int, multiple: int, native: tuple[int, int]) -> Optional[str]:
    """Why a ``height`` x ``width`` image cannot go through this model (None if it can), with advice
    that fits the model: a nearby multiple, and its native size."""
    if height % multiple == 0 and width % multiple == 0 and height > 0 and width > 0:
        return None
    near_w = max(multiple, round(width / multiple) * multiple)
    near_h = max(multiple, round(height / multiple) * multiple)
    nearby = "" if (near_h, near_w) == tuple(native) else f" or {near_h}x{near_w}"
    return (f"image size {height}x{width} (HxW) is not a multiple of {multiple} for this model; resize it, e.g. to "
            f"{native[0]}x{native[1]} (the model's native size){nearby}")


def size_notes(height: int, width: int, native: tuple[int, int]) -> list[str]:
    """Warnings for sizes far from what the model was trained on (they run, slowly or poorly)."""
    notes = []
    ratio = (height * width) / float(native[0] * native[1])
    if ratio >= 16:
        notes.append(f"{height}x{width} (HxW) has {ratio:.0f}x the pixels of this model's native "
                     f"{native[0]}x{native[1]}: "
                     "expect a long run, and results unlike what the model was trained on")
    elif ratio <= 1 / 16:
        notes.append(f"{height}x{width} (HxW) is far smaller than this model's native {native[0]}x{native[1]}")
    if max(height, width) >= 4 * min(height, width):
        notes.append(f"{height}x{width} (HxW) has an extreme aspect ratio; this model was trained on "
                     f"{native[0]}x{native[1]}")
    return notes


@dataclass
class Conditioning:
    """Prompt conditioning of one denoiser call; tensors have batch 1 and are expanded per call."""

    guidance_scale: float
    cfg: bool
    cond: dict[str, Tensor]
    uncond: dict[str, Tensor] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)  # not batched (e.g. Flux position ids)
    prompt: str = ""
    negative_prompt: Optional[str] = None

    @staticmethod
    def cat(items: Sequence[Conditioning]) -> Conditioning:
        """One conditioning for a batch: sample i uses ``items[i]`` (same guidance and CFG)."""
        first = items[0]
        if any(c.cfg != first.cfg or c.guidance_scale != first.guidance_scale for c in items):
            raise ValueError("a batch needs one guidance scale")
        if len(items) == 1:
            return first
        join = lambda key: {k: torch.cat([getattr(c, key)[k] for c in items]) for k in getattr(first, key)}
        return Conditioning(first.guidance_scale, first.cfg, join("cond"), join("uncond"), first.shared,
                            prompt=" | ".join(c.prompt for c in items), negative_prompt=first.negative_prompt)

    def lerp(self, other: Conditioning, weight: float) -> Conditioning:
        """Linear interpolation of the embeddings (used by interpolation between two prompts)."""
        mix = lambda a, b: {k: torch.lerp(a[k], b[k], weight) if torch.is_floating_point(a[k]) else a[k] for k in a}
        return Conditioning(self.guidance_scale, self.cfg, mix(self.cond, other.cond),
                            mix(self.uncond, other.uncond) if self.uncond else {}, self.shared,
                            f"lerp({self.prompt!r}, {other.prompt!r}, {weight:.3f})", self.negative_prompt)


def _scheduler_key(scheduler: Any) -> tuple:
    """What a probed schedule depends on: the scheduler's class and configuration (not its ``id``: a
    swapped-in scheduler can reuse a freed one's id, and a configuration can change in place)."""
    config = getattr(scheduler, "config", None)
    items = tuple(sorted((str(k), repr(v)) for k, v in dict(config or {}).items()))
    return type(scheduler).__name__, items, id(scheduler) if config is None else None


def _expand(t: Tensor, batch: int) -> Tensor:
    return t if t.shape[0] == batch else t.expand(batch, *t.shape[1:])


class Adapter:
    """Base adapter; subclasses fill in the family-specific pieces."""

    family = "base"
    #: the diffusers pipeline classes (by name) this adapter takes: one row per model family
    pipelines: tuple[str, ...] = ()
    #: the half precision ``dtype="auto"`` loads this family in on a GPU (the solver stays float32)
    half_dtype: torch.dtype = torch.float16
    #: latent side of the native size when the denoiser's config has no ``sample_size``
    default_sample_size = 64
    #: whether the family's "images" are the frames of a clip (a video model)
    video = False

    @classmethod
    def patch(cls, network_config: Any) -> int:
        """Latent pixels per token side: image sizes are multiples of this times the VAE's factor."""
        return 1

    @classmethod
    def geometry(cls, vae_config: Any, network_config: Any, sample_size: Optional[int] = None) -> tuple[int, int]:
        """``(size multiple, native side)`` in pixels, from the VAE's and the denoiser's configs alone (no
        weights: ``nrinv.loading.model_geometry`` reads them from a model folder)."""
        factor = 2 ** (len(vae_config.get("block_out_channels", [0])) - 1)
        side = network_config.get("sample_size") or sample_size or cls.default_sample_size
        side = side if isinstance(side, int) else side[0]
        return factor * cls.patch(network_config), side * factor
    #: whether ``pipe(latents=...)`` multiplies the given latents by ``init_noise_sigma``
    scales_initial_latents = True

    def __init__(self, pipe: Any, defaults: Optional[ModelDefaults] = None, *, cuda_graphs: Optional[bool] = None):
        self.pipe = pipe
        self.defaults: ModelDefaults = defaults if defaults is not None else model_defaults(pipe)
        #: replay the network call from captured CUDA graphs: None = on when the network is on CUDA
        self.cuda_graphs = cuda_graphs
        self._state = _state_of(pipe)
        self._conditionings = self._state.conditionings
        self._schedules = self._state.schedules

    @property
    def lock(self) -> threading.RLock:
        """The lock of this pipeline's model work (network calls, graph capture and replay, VAE,
        text encoders): one per pipeline, shared by all its adapters, so threads may share them."""
        return self._state.lock

    @property
    def _graphs(self) -> Optional[GraphedNetwork]:
        return self._state.graphs

    @_graphs.setter
    def _graphs(self, graphs: Optional[GraphedNetwork]) -> None:
        self._state.graphs = graphs

    @property
    def graphs(self) -> Optional[GraphedNetwork]:
        """The graph-replayed network call, when on (CUDA only, never with offloaded weights: they move
        between calls); one per pipeline."""
        on = self.device.type == "cuda" if self.cuda_graphs is None else bool(self.cuda_graphs)
        if not on or self.offloaded:
            return None
        if self._graphs is None:
            if self.device.type != "cuda":
                return None
            self._graphs = GraphedNetwork(lock=self.lock)
        return self._graphs

    @property
    def capture_time(self) -> float:
        """Seconds spent capturing graphs so far (by any adapter of this pipeline)."""
        return self._graphs.capture_time if self._graphs is not None else 0.0

    def _network(self, x: Tensor, t: Tensor, kw: dict[str, Tensor], shared: dict[str, Any]) -> Tensor:
        graphs = self.graphs
        with self.lock:
            if graphs is not None and not torch.is_grad_enabled():
                return graphs(x, t, kw, shared, forward=self._forward, network=self.network)
            return self._forward(x, t, kw, shared)

    # -- model --------------------------------------------------------------------------------
    @property
    def network(self) -> torch.nn.Module:
        return self.pipe.unet

    @property
    def device(self) -> torch.device:
        """Where the computation runs: the network's device, or with ``enable_model_cpu_offload()`` /
        ``enable_sequential_cpu_offload()`` (weights kept on the CPU and moved in for each call) the
        pipeline's execution device, as the stock pipeline computes there."""
        placed = self._placement()
        if placed is not None:
            return placed[0]
        network = self.network
        if network is not None and self._offload_hooks(network):
            execution = getattr(self.pipe, "_execution_device", None)
            if execution is not None:
                return torch.device(execution)
        return network.device

    @staticmethod
    def _offload_hooks(network: torch.nn.Module) -> bool:
        # model offload hooks the network itself; sequential offload leaves its parameters on meta
        return hasattr(network, "_hf_hook") or network.device.type == "meta" and \
            any(hasattr(m, "_hf_hook") for m in network.children())

    @property
    def offloaded(self) -> bool:
        """Whether the network's weights are offloaded (moved onto the execution device per call)."""
        if self._placement() is not None:
            return False
        network = self.network
        return network is not None and self._offload_hooks(network)

    @property
    def dtype(self) -> torch.dtype:
        placed = self._placement()
        return placed[1] if placed is not None else self.network.dtype

    def _placement(self) -> Optional[tuple[torch.device, torch.dtype]]:
        """The network's ``(device, dtype)``, read from diffusers once per placement of its weights.

        diffusers' ``unet.device`` / ``unet.dtype`` walk every module, and the denoiser path asks for them
        at every network call, so they are read again only when a stamp read per call (no walk) changes:
        the network's identity (a swapped-in network), its first parameter's identity, device and dtype
        (``pipe.to(...)`` moves or casts it; sequential offload replaces it with a meta tensor) and its
        last parameter's device and dtype (a cast that spares the first module, which diffusers keeps in
        float32 for some models).  ``None`` (read per call, as diffusers answers) while hooks are on the
        network: offloaded weights (the execution device is the pipeline's), group offloading or
        layerwise casting (diffusers answers from its hooks)."""
        network = self.network
        if not isinstance(network, torch.nn.Module) or hasattr(network, "_hf_hook") \
                or hasattr(network, "_diffusers_hook"):
            return None
        first = next(network.parameters(), None)
        if first is None or first.device.type == "meta":
            return None
        known = self._state.placement
        if known is not None:
            refs, stamp, answer = known
            last = refs[2]()
            if refs[0]() is network and refs[1]() is first and last is not None \
                    and stamp == (first.device, first.dtype, last.device, last.dtype):
                return answer
        last = list(network.parameters())[-1]
        answer = (network.device, network.dtype)
        self._state.placement = ((weakref.ref(network), weakref.ref(first), weakref.ref(last)),
                                 (first.device, first.dtype, last.device, last.dtype), answer)
        return answer

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)

    def _geometry(self) -> tuple[int, int]:
        # the network's sample size, else the pipeline's default (Flux's transformer has none)
        return self.geometry(self.pipe.vae.config, self.network.config, getattr(self.pipe, "default_sample_size", None))

    def default_size(self) -> tuple[int, int]:
        if self.defaults.height and self.defaults.width:
            return self.defaults.height, self.defaults.width
        side = self._geometry()[1]
        return side, side

    def check_size(self, height: int, width: int) -> None:
        problem = size_error(height, width, self.size_multiple, self.default_size())
        if problem:
            raise InputError(problem)

    @property
    def size_multiple(self) -> int:
        return self._geometry()[0]

    def latent_shape(self, height: int, width: int, batch: int = 1) -> tuple[int, ...]:
        f = self.vae_scale_factor
        return (batch, self.network.config.in_channels, height // f, width // f)

    # -- scheduler ----------------------------------------------------------------------------
    def prepare_scheduler(self, num_inference_steps: int, height: int, width: int) -> Any:
        """A copy of the pipeline's scheduler with ``set_timesteps`` called as the pipeline calls it."""
        sched = copy.deepcopy(self.pipe.scheduler)
        sched.set_timesteps(num_inference_steps, device=self.device)
        return sched

    @staticmethod
    def _check_timesteps(scheduler: Any, num_inference_steps: int) -> None:
        """A variance-preserving scheduler whose timesteps run past its training range (e.g. DDIM with
        ``steps_offset=1`` at 1000 steps reaches t = 1000) cannot step; say so instead of an IndexError."""
        train = getattr(scheduler.config, "num_train_timesteps", None)
        timesteps = getattr(scheduler, "timesteps", None)
        if train is None or timesteps is None or not hasattr(scheduler, "alphas_cumprod"):
            return
        if len(timesteps) and float(timesteps.max()) > train - 1:
            offset = int(getattr(scheduler.config, "steps_offset", 0) or 0)
            raise InputError(f"{type(scheduler).__name__} cannot run {num_inference_steps} steps with this "
                             f"configuration: its timesteps would pass {train - 1}; use at most {train - offset} steps")

    def step_kwargs(self) -> dict:
        accepts = set(inspect.signature(self.pipe.scheduler.step).parameters)
        return {"eta": 0.0} if "eta" in accepts else {}

    def to_pipeline_latents(self, z_T: Tensor, init_noise_sigma: float) -> Tensor:
        """The ``latents=`` argument that makes the stock pipeline start from ``z_T``: scaled, and in
        the pipeline's dtype (the stock pipelines do not cast given latents)."""
        z = z_T / init_noise_sigma if self.scales_initial_latents else z_T
        return z.to(dtype=self.dtype)

    def schedule(self, num_inference_steps: int, size: tuple[int, int], *, seed: Optional[int] = None,
                 generator: Optional[torch.Generator] = None, frames: Optional[int] = None) -> Schedule:
        """The probed affine schedule for ``num_inference_steps`` at image ``size``, with the noise
        of ``generator`` (else of ``seed``); ``frames``: a video model's clip length (None: the clip
        this thread encoded last).  Computed once per pipeline and kept (the least recently used of
        more than ``MAX_SCHEDULES`` dropped); the seed or generator is part of the key only where the
        scheduler draws noise, which the probe finds out: a schedule that recorded none (DDIM, UniPC,
        flow matching) is kept without it, so one probe serves every seed."""
        shape = self.latent_shape(*size) if frames is None else self.latent_shape(*size, frames=frames)
        key = (num_inference_steps, tuple(size), _scheduler_key(self.pipe.scheduler), str(self.dtype),
               str(self.device), shape)  # the shape: a video's frame count too
        schedule = self._schedules.get(key + (_NO_NOISE,))
        if schedule is not None:
            return schedule
        noise_key = (generator.device.type, bytes(generator.get_state().cpu().numpy())) if generator is not None \
            else seed
        schedule = self._schedules.get(key + (noise_key,))
        if schedule is None:
            try:
                scheduler = self.prepare_scheduler(num_inference_steps, *size)
            except (ValueError, IndexError) as exc:  # diffusers' own limit on the step count
                raise InputError(f"{type(self.pipe.scheduler).__name__} cannot run {num_inference_steps} steps: "
                                 f"{str(exc).splitlines()[0]}") from None
            self._check_timesteps(scheduler, num_inference_steps)
            with torch.inference_mode(False):  # cached: normal tensors, as for the conditioning
                schedule = affine_schedule(
                    scheduler, shape, generator=generator,
                    seed=None if generator is not None else seed, device=self.device, noise_dtype=self.dtype,
                    step_kwargs=self.step_kwargs())
            if all(noise is None for noise in schedule.noises):  # it draws no noise: no seed of its own
                schedule, noise_key = dataclasses.replace(schedule, seed=None), _NO_NOISE
            self._schedules.put(key + (noise_key,), schedule)
        return schedule

    # -- VAE ----------------------------------------------------------------------------------
    def _vae_scale(self, latent: Tensor) -> Tensor:
        return latent * self.pipe.vae.config.scaling_factor

    def _vae_unscale(self, z: Tensor) -> Tensor:
        return z / self.pipe.vae.config.scaling_factor

    def _vae_precision(self) -> contextlib.AbstractContextManager:
        """The dtype the VAE runs in for encode/decode (as the stock pipeline runs it)."""
        return contextlib.nullcontext(self.pipe.vae.dtype)

    def _vae_device(self) -> torch.device:
        # offloaded, the VAE's encode/decode hooks move the VAE (not its inputs) to the execution device
        return self.device if self.offloaded else self.pipe.vae.device

    def encode(self, images: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [0, 1] -> scaled latents, float32 (posterior mode, deterministic)."""
        vae = self.pipe.vae
        with self.lock, self._vae_precision() as dtype:
            x = (images.to(device=self._vae_device(), dtype=dtype) * 2 - 1)
            latent = vae.encode(x).latent_dist.mode()
        return self._vae_scale(latent.float())

    def decode(self, z: Tensor, size: tuple[int, int]) -> Tensor:
        """Scaled latents -> images (B, 3, H, W) in [0, 1], float32."""
        vae = self.pipe.vae
        with self.lock, self._vae_precision() as dtype:
            x = vae.decode(self._vae_unscale(z.float()).to(device=self._vae_device(), dtype=dtype),
                           return_dict=False)[0]
        return ((x.float() + 1) / 2).clamp(0, 1)

    # -- conditioning and the denoiser ----------------------------------------------------------
    def conditioning(self, prompt: str, negative_prompt: Optional[str], guidance_scale: float,
                     size: tuple[int, int]) -> Conditioning:
        """Prompt embeddings for images of ``size = (height, width)``; computed once per pipeline (for
        its text encoders' current weights) and kept (the least recently used of more than
        ``MAX_CONDITIONINGS`` dropped)."""
        key = (prompt, negative_prompt, float(guidance_scale), tuple(size), id(self.network), str(self.dtype),
               str(self.device), self._text_encoders_stamp())
        cond = self._conditionings.get(key)
        if cond is None:
            # normal tensors even under torch.inference_mode(): cached, they may meet autograd later
            with self.lock, torch.inference_mode(False), torch.no_grad():
                cond = self._embed(prompt, negative_prompt, float(guidance_scale), tuple(size))
            self._conditionings.put(key, cond)
        return cond

    def _text_encoders_stamp(self) -> tuple:
        """Which text encoders, where, with a LoRA or not: cached embeddings are shared by every call on
        this pipeline, so a swapped, moved or LoRA-loaded text encoder must not reuse them."""
        stamp = []
        components = getattr(self.pipe, "components", None)
        for name, module in (components.items() if isinstance(components, dict) else ()):
            if name.startswith("text_encoder") and isinstance(module, torch.nn.Module):
                first = next(module.parameters(), None)
                stamp.append((name, id(module), None if first is None else (first.data_ptr(), first.dtype),
                              getattr(module, "_hf_peft_config_loaded", None)))
        return tuple(stamp)

    def _embed(self, prompt: str, negative_prompt: Optional[str], guidance_scale: float,
               size: tuple[int, int]) -> Conditioning:
        raise NotImplementedError

    def _forward(self, x: Tensor, t: Tensor, kw: dict[str, Tensor], shared: dict[str, Any]) -> Tensor:
        raise NotImplementedError

    def denoise(self, z: Tensor, t: Tensor, cond: Conditioning, *, network: Any = None) -> Tensor:
        """The guided model output at (already input-scaled) latent ``z``, float32: with classifier-free
        guidance ``u + w (c - u)`` of both branches from one batched call.  ``t``: one timestep, or one per
        sample.  ``network``: the forward ``(x, t, kw, shared)`` to call (default the graphed one; the learned
        inverter's training passes ``_forward``, which it back-propagates through)."""
        network = self._network if network is None else network
        batch = z.shape[0]
        x = z.to(self.dtype)
        if cond.cfg:
            kw = {k: torch.cat([_expand(cond.uncond[k], batch), _expand(cond.cond[k], batch)]) for k in cond.cond}
            both = torch.cat([t, t]) if t.dim() and t.shape[0] == batch > 1 else t  # per-sample timesteps
            out = network(torch.cat([x, x]), both, kw, cond.shared).float()
            uncond, text = out.chunk(2)
            return uncond + cond.guidance_scale * (text - uncond)
        kw = {k: _expand(v, batch) for k, v in cond.cond.items()}
        return network(x, t, kw, cond.shared).float()
