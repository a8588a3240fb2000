"""Adapters: a diffusers pipeline turned into one denoiser callable plus encode / decode / embed.

The solvers and the inversion loop never see a UNet: they call ``adapter.denoise(z, t, cond)``
which reproduces exactly what the stock pipeline computes inside its sampling loop for the
model output at latent ``z`` (already multiplied by ``scale_model_input``), including both
classifier-free-guidance branches in one batched call.  Outputs are float32 whatever dtype the
network runs in.

An adapter is also the persistent object of a pipeline: it keeps the prompt embeddings and probed
schedules it computed (the most recently used few) and, on CUDA, captured graphs of the network call, so a
caller that keeps it (``adapter = nrinv.core.adapter_for(pipe)``, passed wherever a pipeline is accepted)
pays for them once.  It never writes onto the pipeline.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError
from .defaults import ModelDefaults, model_defaults
from .graphs import GraphedNetwork
from .schedulers import Schedule, affine_schedule

__all__ = ["Adapter", "Conditioning", "adapter_for", "adapter_class", "require_images", "FAMILIES",
           "SUPPORTED_PIPELINES", "size_error", "size_notes", "release_pipeline"]


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


class _LRU:
    """A small thread-safe least-recently-used cache: a long-running app meets ever new prompts and seeds,
    and must not keep the embeddings and schedules of all of them."""

    def __init__(self, max_size: int):
        self.max_size = int(max_size)
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.max_size:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


#: prompt conditionings and probed schedules kept per pipeline (least recently used dropped first)
MAX_CONDITIONINGS = 32
MAX_SCHEDULES = 16
#: the key of a schedule that records no noise, in place of the seed / generator it was probed with
_NO_NOISE = "no noise"


@dataclass
class _PipeState:
    """What every adapter of one pipeline shares: caches, graphs and the lock of its model work."""

    lock: threading.RLock = field(default_factory=threading.RLock)
    conditionings: _LRU = field(default_factory=lambda: _LRU(MAX_CONDITIONINGS))
    schedules: _LRU = field(default_factory=lambda: _LRU(MAX_SCHEDULES))
    graphs: Optional[GraphedNetwork] = None
    #: the network's (device, dtype) and the stamp they were read at (``Adapter._placement``)
    placement: Optional[tuple] = None
    #: per thread, a video pipeline's clip length (frames) of the last clip that thread encoded
    #: (``WanAdapter.encode``): two threads inverting clips of different lengths must not see each other's
    frames: threading.local = field(default_factory=threading.local)


#: id(pipeline) -> (weak reference to it, its state).  The state holds nothing of the pipeline or its
#: adapters (the graphs get the forward per call), so it goes with the pipeline, freed by reference
#: counting alone: ``nrinv.invert(pipe, ...)`` twice reuses one capture, and results keep no graphs
#: of their own.
_STATES: dict[int, tuple[weakref.ref, _PipeState]] = {}
_STATES_LOCK = threading.Lock()


def _state_of(pipe: Any) -> _PipeState:
    with _STATES_LOCK:
        known = _STATES.get(id(pipe))
        if known is not None and known[0]() is pipe:
            return known[1]
        state = _PipeState()
        key = id(pipe)

        # the dict is bound here: at interpreter exit module globals may already be None when a
        # pipeline's weak reference fires
        def forget(ref: weakref.ref, states: dict = _STATES) -> None:
            if states.get(key, (None,))[0] is ref:
                states.pop(key, None)
        try:
            _STATES[key] = (weakref.ref(pipe, forget), state)
        except TypeError:  # an object without weak references: its adapters keep their own state
            pass
        return state


def release_pipeline(pipe: Any) -> None:
    """Drop what this pipeline's adapters share now: its captured CUDA graphs with their memory pools,
    its prompt embeddings and schedules.  Without this they go with the pipeline, which a reference cycle
    keeps until Python's cycle collector runs; call it when done with a pipeline (before loading or
    measuring the next one).  Takes a pipeline or one of its adapters; a later call starts afresh."""
    pipe = pipe.pipe if isinstance(pipe, Adapter) else pipe
    with _STATES_LOCK:
        known = _STATES.get(id(pipe))
        if known is None or known[0]() is not pipe:
            return
        del _STATES[id(pipe)]
    state = known[1]
    with state.lock:
        if state.graphs is not None:
            state.graphs.clear()
        state.graphs = None
        state.conditionings.clear()
        state.schedules.clear()


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

    def denoise(self, z: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        """The guided model output at (already input-scaled) latent ``z``, float32."""
        batch = z.shape[0]
        x = z.to(self.dtype)
        if cond.cfg:
            kw = {k: torch.cat([_expand(cond.uncond[k], batch), _expand(cond.cond[k], batch)]) for k in cond.cond}
            out = self._network(torch.cat([x, x]), t, kw, cond.shared).float()
            uncond, text = out.chunk(2)
            return uncond + cond.guidance_scale * (text - uncond)
        kw = {k: _expand(v, batch) for k, v in cond.cond.items()}
        return self._network(x, t, kw, cond.shared).float()


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


#: the model families, one adapter class each (its pipelines, precision and geometry on the class)
FAMILIES: tuple[type[Adapter], ...] = (StableDiffusionAdapter, StableDiffusionXLAdapter, LatentConsistencyAdapter,
                                       StableDiffusion3Adapter, FluxAdapter, WanAdapter)
SUPPORTED_PIPELINES: dict[str, type[Adapter]] = {name: cls for cls in FAMILIES for name in cls.pipelines}


def require_images(adapter: Any, what: str) -> None:
    """Refuse a video model where ``what`` (a workflow) takes images only, in one line."""
    if getattr(adapter, "video", False):
        raise InputError(f"{what} takes images, and {type(adapter.pipe).__name__} is a video model: invert or "
                         "edit one clip at a time with nrinv.invert / nrinv.edit")


def adapter_class(pipeline_class: str) -> Optional[type[Adapter]]:
    """The adapter class of a diffusers pipeline class name (``None`` if no family takes it)."""
    return SUPPORTED_PIPELINES.get(pipeline_class)


def adapter_for(pipe: Any, *, cuda_graphs: Optional[bool] = None) -> Adapter:
    """The adapter of a diffusers pipeline; an adapter is returned unchanged (keep one to reuse its
    prompt embeddings, schedules and graphs across calls).  ``cuda_graphs``: replay the network
    call from captured CUDA graphs (``None``: on when the network is on CUDA; ``False``: off)."""
    if isinstance(pipe, Adapter) or hasattr(pipe, "denoise") and hasattr(pipe, "prepare_scheduler"):
        if cuda_graphs is not None:
            pipe.cuda_graphs = cuda_graphs
        return pipe
    for cls in type(pipe).__mro__:
        if cls.__name__ in SUPPORTED_PIPELINES:
            return SUPPORTED_PIPELINES[cls.__name__](pipe, cuda_graphs=cuda_graphs)
    raise InputError(
        f"pipeline {type(pipe).__name__} is not supported; supported pipelines: {', '.join(SUPPORTED_PIPELINES)}"
    )
