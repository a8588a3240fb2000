"""`nrinv app`: a Gradio web app for interactive real-image editing.

Invert once, then every change of target prompt, strength or guidance regenerates from the cached
inversion (per browser session, in ``gr.State``).

Serving it to others is safe by construction:

* users pick a model from the operator's allow-list (``--models``; by default the built-in models and
  the one named with ``--model``): nothing a user types makes the server load a path or a hub id;
* every request is capped (steps, iterations per step, network calls, upload pixels, frames, and its
  time: network calls priced by what one call of that model, precision and method costs on this
  server, measured when the model loads, measured again when that price would refuse a request, and
  refined by every request; a CUDA-graph capture priced for each image size not captured yet; and a
  deadline checked between steps ends a request that runs past ``max_seconds`` with one line).  A
  request no heavier than the model's default is never refused by the price (the deadline bounds it),
  so a price measured while the machine was busy cannot lock users out.  One queue with one
  worker for every handler that runs or loads a model (one Gradio concurrency group) serialises the
  model work, holding at most ``queue_size`` waiting requests.  The worst wait
  of a light request is therefore about ``max_seconds`` behind one heavy request, and
  ``queue_size * max_seconds`` behind a full queue (:meth:`Limits.worst_wait_s`), the deadline's
  bound (a request stops at its first step boundary past ``max_seconds``);
* user errors come back as one friendly line, with no server path, and are logged as one line; an
  unexpected error is logged as one line and shown as a generic message.
"""
from __future__ import annotations

import logging
import re
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .core.options import PRECISIONS as DTYPE_CHOICES
from .errors import InputError, one_line
from .io.images import DEFAULT_MAX_PIXELS, load_image, to_pil, to_tensor

DEFAULT_MAX_UPLOAD_MB = 20
logger = logging.getLogger("nrinv.app")
#: the concurrency group of every handler that runs a model (one worker for all of them)
MODEL_WORK = "model"
#: a refused request measures the call cost again at most this often (seconds; the first time always)
REMEASURE_EVERY_S = 30.0
#: the method dropdown's first choice: the selected model's own (its edit method in the Edit tab)
MODEL_DEFAULT = "model default"


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (each refused above its cap with a message saying so)."""

    max_steps: int = 50
    max_iterations: int = 5
    #: network calls of one request: inversion (at most, ``core.inversion.planned_calls``: steps x iterations
    #: x calls per iteration for a single-step sampler, more for a multistep or second-order one) plus the
    #: regeneration; bounds how long one request holds the worker
    max_nfe: int = 400
    #: the largest upload (the command line's default limit too: one input policy)
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_frames: int = 12
    #: requests waiting in the queue at most; more are refused at once ("busy, try again")
    queue_size: int = 8
    #: seconds of model work one request may take: priced before it runs (network calls x the measured cost
    #: of one call of that model, precision and method here) and ended by a deadline at the first step past it
    max_seconds: float = 20.0

    def worst_wait_s(self, requests_ahead: Optional[int] = None) -> float:
        """The longest a request waits to start, estimated: every request ahead of it (at most the
        queue: one running and ``queue_size - 1`` waiting) takes at most ``max_seconds``."""
        ahead = self.queue_size if requests_ahead is None else min(requests_ahead, self.queue_size)
        return ahead * self.max_seconds


@dataclass
class CallCost:
    """Seconds one network call of a loaded model costs here (its precision, on its device, at
    ``pixels``): ``forward_s`` for the solvers and the regeneration, ``gradient_s`` (forward and
    backward) for the solvers that differentiate through the network (``gnri_grad``), ``capture_s``
    the CUDA-graph capture of one new image size (0 without graphs).  Measured when the model loads,
    then moved halfway towards what each request observed."""

    forward_s: float
    gradient_s: float
    pixels: int
    capture_s: float = 0.0

    def per_call(self, needs_grad: bool) -> float:
        return self.gradient_s if needs_grad else self.forward_s

    def observe(self, needs_grad: bool, seconds: float, calls: int) -> None:
        if calls <= 0 or not seconds > 0:
            return
        name = "gradient_s" if needs_grad else "forward_s"
        setattr(self, name, 0.5 * getattr(self, name) + 0.5 * seconds / calls)


class RequestTooLong(InputError):
    """A request stopped at its deadline (the time one request may take here)."""


class Deadline:
    """``callback(info)`` for the steps of one request: raises :class:`RequestTooLong` at the first step
    boundary past ``seconds`` from its creation (``clock``: a monotonic clock in seconds).  Records the
    network calls done so far (``calls``), so a stopped request still refines the price."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.perf_counter):
        self.seconds, self.clock = float(seconds), clock
        self.start = clock()
        self.calls = 0

    def elapsed(self) -> float:
        return self.clock() - self.start

    def __call__(self, info: dict) -> None:
        self.calls = max(self.calls, int(info.get("nfe") or 0))
        elapsed = self.elapsed()
        if elapsed > self.seconds:
            raise RequestTooLong(f"stopped after {elapsed:.0f} s, the most one request may take here is "
                                 f"{self.seconds:g} s; use fewer steps or iterations, or a smaller image")


def _scrub(message: str) -> str:
    """The message without server paths: a path is replaced by its last component."""
    return re.sub(r"(?:[A-Za-z]:)?(?:[/\\][^\s/\\:'\"]+)+[/\\]([^\s/\\:'\"]+)", r"\1", message)


def _display(image, minimum: int = 384):
    """Small images shown enlarged with nearest-neighbour (crisp pixels, as pixel-art viewers do)."""
    from PIL import Image

    if image is None:
        return None
    factor = max(1, minimum // max(image.size))
    return image if factor == 1 else image.resize((image.width * factor, image.height * factor), Image.NEAREST)


class EditorApp:
    """Models (loaded on first use), the limits and the UI handlers; no module-level state."""

    def __init__(self, models: Sequence[str] = ("builtin:shapes",), *, device: str = "auto", dtype: str = "auto",
                 limits: Limits = Limits(), cuda_graphs: bool = True):
        if not models:
            raise ValueError("the app needs at least one model")
        #: what users see and pick (no server paths) -> what the server loads
        self.models: dict[str, str] = {}
        for model in dict.fromkeys(models):
            label = model if not Path(model).expanduser().exists() else Path(model).expanduser().resolve().name
            while label in self.models:
                label += "'"
            self.models[label] = model
        self.default_model = next(iter(self.models))
        self.device = device
        self.dtype = dtype
        self.limits = limits
        self.cuda_graphs = cuda_graphs
        self.pipes: dict[tuple[str, str], Any] = {}
        #: the measured cost of one network call, per loaded (model, precision)
        self.costs: dict[tuple[str, str], CallCost] = {}
        #: per loaded (model, precision), the image sizes (HxW) run lately: their CUDA graphs are captured
        #: (a new size pays for a capture; as many as the graph cache keeps, least recently used dropped)
        self.sizes: dict[tuple[str, str], OrderedDict] = {}
        #: the clock of request deadlines (seconds, monotonic); a test may give its own
        self.clock: Callable[[], float] = time.perf_counter
        #: when each (model, precision)'s cost was last measured again (a refused request re-measures at most
        #: once per ``REMEASURE_EVERY_S``: refusals cannot keep the worker measuring)
        self.remeasured: dict[tuple[str, str], float] = {}

    # -- helpers --------------------------------------------------------------------------------
    def pipe(self, model: Optional[str], dtype: Optional[str] = None) -> Any:
        """The adapter of an allowed model, loaded on first use and kept (its prompt embeddings,
        schedules and CUDA graphs are reused by every later request)."""
        from .core.adapters import adapter_for
        from .loading import load_pipeline

        label = model or self.default_model
        dtype = dtype or self.dtype
        if label not in self.models:
            raise InputError("that model is not offered here; pick one from the list")
        if dtype not in DTYPE_CHOICES:
            raise InputError(f"precision must be one of {', '.join(DTYPE_CHOICES)}")
        if (label, dtype) not in self.pipes:
            try:
                pipe = load_pipeline(self.models[label], dtype=dtype, device=self.device)
            except (OSError, ValueError) as exc:
                logger.error("loading %s failed: %s", label, _scrub(str(exc).splitlines()[0] if str(exc) else ""))
                raise InputError(f"the model {label} could not be loaded on the server") from None
            adapter = adapter_for(pipe, cuda_graphs=None if self.cuda_graphs else False)
            self.costs[(label, dtype)] = measure_call_cost(adapter)
            self.pipes[(label, dtype)] = adapter
            self._ran((label, dtype), adapter, adapter.default_size())  # measured there: captured
        return self.pipes[(label, dtype)]

    def cost(self, model: Optional[str], dtype: Optional[str] = None) -> CallCost:
        """The measured cost of one network call of a loaded model (load it first with :meth:`pipe`)."""
        return self.costs[(model or self.default_model, dtype or self.dtype)]

    def remeasure(self, model: Optional[str], dtype: Optional[str] = None) -> CallCost:
        """Measure the cost of a loaded model's call again (the price measured while the machine was busy
        would otherwise refuse requests for good); the capture's price is kept until one is measured.
        The first time always, then at most once per ``REMEASURE_EVERY_S``."""
        key = (model or self.default_model, dtype or self.dtype)
        now = self.clock()
        if key in self.remeasured and now - self.remeasured[key] < REMEASURE_EVERY_S:
            return self.costs[key]
        self.remeasured[key] = now
        old, fresh = self.costs[key], measure_call_cost(self.pipes[key])
        fresh.capture_s = fresh.capture_s or old.capture_s
        logger.info("re-measured %s (%s): %.4f s a call (was %.4f s)", key[0], key[1], fresh.forward_s, old.forward_s)
        self.costs[key] = fresh
        return fresh

    def _ran(self, key: tuple[str, str], pipe: Any, size: tuple[int, int]) -> None:
        """``size`` (HxW) ran on ``pipe``: its graphs are captured (on a pipeline that captures any)."""
        sizes = self.sizes.setdefault(key, OrderedDict())
        sizes[tuple(size)] = True
        sizes.move_to_end(tuple(size))
        graphs = getattr(pipe, "graphs", None)
        while len(sizes) > max(1, int(getattr(graphs, "max_graphs", 8))):
            sizes.popitem(last=False)

    def _needs_capture(self, model: Optional[str], dtype: Optional[str], size: tuple[int, int]) -> bool:
        key = (model or self.default_model, dtype or self.dtype)
        return tuple(size) not in self.sizes.get(key, {})

    def _observe(self, cost: CallCost, method: str, seconds: float, calls: int, pixels: int,
                 capture_s: float = 0.0) -> None:
        """Refine ``cost`` from what a request took (at ``pixels``; captures apart)."""
        scale = cost.pixels / max(1, pixels)
        cost.observe(_method_facts(method)[2], seconds * scale, calls)
        if capture_s > 0:
            cost.capture_s = 0.5 * cost.capture_s + 0.5 * capture_s * scale if cost.capture_s else capture_s * scale

    def model_settings(self, model: Optional[str], dtype: Optional[str] = None) -> tuple[float, float]:
        """The edit controls of a model: its registry defaults (edit strength, edit guidance)."""
        defaults = self.pipe(model, dtype).defaults
        return defaults.edit_strength, defaults.edit_guidance

    def _image(self, path: Optional[str], size: Optional[tuple[int, int]] = None):
        if not path:
            raise InputError("upload an image (or pick an example) first")
        notes: list[str] = []
        img = load_image(path, max_pixels=self.limits.max_pixels, notes=notes, size=size)
        return img, notes

    @staticmethod
    def _fit(pipe, img):
        """The upload at a size the model takes, its aspect kept (see :func:`fit_to_model`)."""
        return fit_to_model(img, pipe.size_multiple, pipe.default_size())

    def _check_request(self, pipe, method: str, steps: Any, iterations: Any, seed: Any, frames: int = 0,
                       inversions: int = 1, cost: Optional[CallCost] = None, pixels: Optional[int] = None,
                       size: Optional[tuple[int, int]] = None, capture: bool = False,
                       remeasure: Optional[Callable[[], CallCost]] = None) -> tuple[Optional[int], Optional[int], int]:
        """Steps, iterations and seed checked against the limits; the request's network calls (at most, as
        ``nrinv.invert`` spends them on this model's sampler at ``size``, HxW) and its estimated time
        (with ``cost``, at ``pixels``, plus a graph capture when ``capture``: a size not captured yet)
        bounded.  A price above the limit is measured again (``remeasure()``) before it refuses; a
        request no heavier than the model's default (``_light``) is never refused by its price: the
        deadline bounds it."""
        from .core.inversion import planned_calls, sampler_calls

        lim = self.limits
        try:
            steps_i, its_i, seed_i = int(steps or 0), int(iterations or 0), int(seed or 0)
        except (TypeError, ValueError, OverflowError):
            raise InputError("steps, iterations and seed must be whole numbers") from None
        if not 0 <= steps_i <= lim.max_steps:
            raise InputError(f"steps must be between 1 and {lim.max_steps} (0: the model's default)")
        if not 0 <= its_i <= lim.max_iterations:
            raise InputError(f"iterations per step must be between 1 and {lim.max_iterations}")
        if not 0 <= seed_i < 2 ** 32:
            raise InputError("the seed must be a whole number between 0 and 4294967295")
        n_steps = steps_i or pipe.defaults.num_inference_steps
        iterates, _, needs_grad = _method_facts(method)
        its = (its_i or None) if iterates else None  # None: the model's (or its scheduler family's), as invert
        # a multistep sampler's inversion sweeps the whole trajectory, a second-order one calls twice a step
        solve_calls = inversions * planned_calls(pipe, method, n_steps, its, size=size, seed=seed_i)
        plain_calls = (inversions + frames) * sampler_calls(pipe, n_steps, size=size, seed=seed_i)  # reconstruction
        nfe = solve_calls + plain_calls
        if nfe > lim.max_nfe:
            raise InputError(f"that request needs about {nfe} network calls, more than the {lim.max_nfe} allowed "
                             "here; use fewer steps or iterations")
        if cost is not None:
            seconds = estimate_seconds(cost, needs_grad, solve_calls, plain_calls, pixels, capture)
            if seconds > lim.max_seconds and self._light(pipe, nfe, pixels, size, frames, inversions):
                logger.info("priced at %.0f s, accepted: no heavier than the model's default", seconds)
                seconds = 0.0
            if seconds > lim.max_seconds and remeasure is not None:
                cost = remeasure()
                seconds = estimate_seconds(cost, needs_grad, solve_calls, plain_calls, pixels, capture)
            if seconds > lim.max_seconds:
                # half precision is 4-10x slower than float32 on a CPU (and faster on a GPU)
                on_cpu = getattr(getattr(pipe, "device", None), "type", "") == "cpu"
                half = str(getattr(pipe, "dtype", "")) in ("torch.float16", "torch.bfloat16")
                faster = " or float32" if on_cpu and half else ""
                raise InputError(f"that request would take about {seconds:.0f} s here, more than the "
                                 f"{lim.max_seconds:g} s one request may take; use fewer steps or iterations"
                                 f"{', another method' if needs_grad else ''}{faster}")
        return steps_i or None, (its_i or None) if iterates else None, seed_i

    @staticmethod
    def _light(pipe, nfe: int, pixels: Optional[int], size: Optional[tuple[int, int]], frames: int,
               inversions: int) -> bool:
        """Whether a request is no heavier than the model's default one (its default method, steps and
        iterations: at most as many network calls) at no more than twice its native pixels (what an
        upload is fitted to)."""
        from .core.inversion import planned_calls, sampler_calls

        if frames or inversions != 1:
            return False
        height, width = pipe.default_size()
        if pixels is not None and pixels > 2 * height * width:
            return False
        defaults = pipe.defaults
        method = defaults.edit_method or defaults.method
        default = planned_calls(pipe, method, None, None, size=size) + sampler_calls(pipe, None, size=size)
        return nfe <= default

    # -- handlers (each returns UI values; errors become one friendly line) -----------------------
    def _guarded(self, name: str, fn: Callable) -> Callable:
        import functools

        import gradio as gr

        @functools.wraps(fn)
        def handler(*args):
            try:
                return fn(*args)
            except gr.Error:
                raise
            except (InputError, ValueError) as exc:
                message = _scrub(one_line(exc) or "invalid input")
                logger.info("%s: refused: %s", name, message)
                raise gr.Error(message, print_exception=False) from None
            except Exception as exc:  # noqa: BLE001 - the server stays up; the user gets no internals
                first = str(exc).splitlines()[0] if str(exc) else ""
                logger.error("%s: failed: %s: %s", name, type(exc).__name__, _scrub(first))
                raise gr.Error("the server could not do that; the error was logged", print_exception=False) from None
        return handler

    def preview(self, path: Optional[str]):
        import gradio as gr

        if not path:
            return None
        img, notes = self._image(path)
        if notes:
            gr.Info(_scrub("; ".join(notes)))
        return _display(img)

    def invert(self, path, model, dtype, method, source_prompt, steps, iterations, seed, state):
        from .api import invert, reconstruct
        from .workflows import edit_defaults
        from .metrics import image_psnr, vae_ceiling_note, vae_ceiling_psnr

        if not source_prompt or not source_prompt.strip():
            raise InputError("type a source prompt that describes the image")
        pipe = self.pipe(model, dtype)
        method = _resolve_method(pipe, method, editing=True)
        img, _ = self._image(path)
        img, notes = self._fit(pipe, img)
        size, pixels = (img.height, img.width), img.width * img.height
        steps, iterations, seed = self._check_request(
            pipe, method, steps, iterations, seed, cost=self.cost(model, dtype), pixels=pixels, size=size,
            capture=self._needs_capture(model, dtype, size), remeasure=lambda: self.remeasure(model, dtype))
        cost = self.cost(model, dtype)
        deadline = Deadline(self.limits.max_seconds, self.clock)
        try:
            result = invert(pipe, img, source_prompt, method=method, num_inference_steps=steps,
                            max_iterations=iterations, seed=seed, callback=deadline)
        except RequestTooLong:
            self._observe(cost, method, deadline.elapsed(), deadline.calls, pixels)
            raise
        self._observe(cost, method, result.wall_time, result.nfe, pixels, result.capture_time)
        self._ran((model or self.default_model, dtype or self.dtype), pipe, size)
        rec = reconstruct(pipe, result, output_type="pt", callback=deadline).images[0]
        quality = image_psnr(rec[None], to_tensor(img))
        info = (f"inverted in {result.wall_time:.2f} s ({result.nfe} network calls, {result.status.value}); "
                f"reconstruction PSNR {quality:.2f} dB")
        ceiling = vae_ceiling_psnr(pipe, to_tensor(img))
        info += f" (VAE ceiling {ceiling:.1f} dB)"
        low = vae_ceiling_note(ceiling)
        if low:
            notes = notes + [low]
        if notes:
            info += "; note: " + "; ".join(notes)
        edit = edit_defaults(pipe)  # the model's edit settings beside its sliders' (strength, guidance)
        state = {"result": result, "source": img, "guide_from_source": edit["guide_from_source"],
                 "mask_threshold": edit["mask_threshold"], "keep_object": edit["keep_object"]}
        return _display(to_pil(rec)), info, state

    def edit(self, target_prompt, strength, guidance, state):
        from .core.inversion import check_guidance
        from .workflows import regenerate

        if not state or "result" not in state:
            raise InputError("invert an image first (the edit reuses its inversion)")
        if not target_prompt or not target_prompt.strip():
            raise InputError("type a target prompt")
        deadline = Deadline(self.limits.max_seconds, self.clock)
        notes: list[str] = []  # an edit that changed (almost) nothing inside its mask says so
        t0 = time.perf_counter()
        inversion, again = _edit_inversion(state, deadline)
        _, images = regenerate(inversion, [target_prompt], strength=float(strength),
                               edit_guidance_scale=check_guidance(guidance, "guidance"),
                               guide_from_source=state.get("guide_from_source", False),
                               mask_threshold=state.get("mask_threshold"), keep_object=state.get("keep_object", False),
                               output_type="pil", callback=deadline, notes=notes)
        seconds = time.perf_counter() - t0
        edited = images[0]
        made = (f"from the model's edit inversion ({inversion.settings['num_inference_steps']} steps, "
                f"{inversion.nfe} network calls{', made now' if again else ', cached'})"
                if inversion is not state["result"] else "from the cached inversion")
        info = f"edited in {seconds:.2f} s {made}" + ("; note: " + "; ".join(notes) if notes else "")
        return _display(edited), (_display(state["source"]), _display(edited)), info

    def interpolate(self, path_a, path_b, model, dtype, method, prompt_a, prompt_b, n, iterations, seed, state):
        from .workflows import interpolate

        if not prompt_a or not prompt_a.strip():
            raise InputError("type a prompt for image A")
        frames = int(n or 0)
        if not 1 <= frames <= self.limits.max_frames:
            raise InputError(f"frames must be between 1 and {self.limits.max_frames}")
        pipe = self.pipe(model, dtype)
        method = _resolve_method(pipe, method, editing=False)
        a, _ = self._image(path_a)
        b, _ = self._image(path_b)
        (a, _), (b, _) = self._fit(pipe, a), self._fit(pipe, b)
        _, iterations, seed = self._check_request(pipe, method, 0, iterations, seed, frames=frames, inversions=2,
                                                  cost=self.cost(model, dtype), pixels=a.width * a.height,
                                                  size=(a.height, a.width),
                                                  capture=self._needs_capture(model, dtype, (a.height, a.width)),
                                                  remeasure=lambda: self.remeasure(model, dtype))
        if a.size != b.size:
            raise InputError(f"images A and B differ in size ({a.height}x{a.width} and {b.height}x{b.width}, HxW); "
                             "resize them to match")
        prompts = (prompt_a, prompt_b) if prompt_b and prompt_b.strip() else prompt_a
        res = interpolate(pipe, a, b, prompts, n=frames, method=method, max_iterations=iterations, seed=seed)
        shown = [_display(f) for f in res.images]
        return shown[0], {"frames": shown}, 0

    @staticmethod
    def frame(index, state):
        if not state or "frames" not in state:
            return None
        frames = state["frames"]
        return frames[max(0, min(int(index or 0), len(frames) - 1))]

    # -- layout -----------------------------------------------------------------------------------
    def examples(self) -> list[str]:
        folder = Path(tempfile.mkdtemp(prefix="nrinv-examples-"))
        paths = []
        try:
            from . import shapes

            for i in range(3):
                scene = shapes.sample_scene(100 + i)
                path = folder / f"example-{i}.png"
                to_pil(to_tensor(load_image(shapes.render(scene, seed=i)))).save(path)
                paths.append(str(path))
        except Exception:  # the examples are a convenience; the app works without them
            pass
        return paths

    def build(self):
        import gradio as gr

        methods = [MODEL_DEFAULT] + list(_methods())
        start = self.pipe(self.default_model).defaults  # the sliders start at the default model's edit settings
        lim = self.limits
        g = self._guarded
        # Every handler that runs a model joins one concurrency group of one worker: Gradio gives each
        # handler its own group otherwise, and /invert, /edit and /interpolate would run at once on one
        # adapter (default_concurrency_limit=1 limits each handler, not all of them together).
        work = dict(concurrency_id=MODEL_WORK, concurrency_limit=1)
        with gr.Blocks(title="nrinv editor") as demo:
            gr.Markdown("# nrinv — invert once, edit interactively")
            # The handlers check every value themselves (one friendly line, one log line); Gradio's own
            # checks of choices are not used, and its checks of slider bounds refuse in one line
            # (quiet_checks) instead of logging a traceback per refusal.
            with gr.Row():
                model = gr.Dropdown(list(self.models), value=self.default_model, label="model", elem_id="model",
                                    allow_custom_value=True)
                dtype = gr.Dropdown(list(DTYPE_CHOICES), value=self.dtype if self.dtype in DTYPE_CHOICES else "auto",
                                    label="precision", elem_id="dtype", allow_custom_value=True)
                method = gr.Dropdown(methods, value=MODEL_DEFAULT, label="inversion method",
                                     allow_custom_value=True)
                steps = gr.Number(0, label=f"steps (0 = model default, at most {lim.max_steps})", precision=0)
                iterations = gr.Number(0, label=f"iterations per step (0 = default, at most {lim.max_iterations})",
                                       precision=0)
                seed = gr.Number(0, label="seed (0 to 4294967295)", precision=0, elem_id="seed")
            with gr.Tab("Edit"):
                state = gr.State({})
                with gr.Row():
                    with gr.Column():
                        upload = gr.File(label="image", file_types=["image"], type="filepath", elem_id="upload")
                        source = gr.Image(label="input", type="pil", interactive=False, elem_id="source")
                        examples = self.examples()
                        if examples:
                            gr.Examples(examples=[[p] for p in examples], inputs=[upload], label="examples")
                        source_prompt = gr.Textbox(label="source prompt (describes the image)", elem_id="source_prompt")
                        invert_btn = gr.Button("Invert", variant="primary", elem_id="invert")
                    with gr.Column():
                        recon = gr.Image(label="reconstruction", type="pil", interactive=False, elem_id="recon")
                        info = gr.Textbox(label="inversion", interactive=False, elem_id="info")
                    with gr.Column():
                        target_prompt = gr.Textbox(label="target prompt", elem_id="target_prompt")
                        strength = gr.Slider(0.05, 1.0, value=start.edit_strength, step=0.05, label="strength",
                                             elem_id="strength")
                        guidance = gr.Slider(0.0, 10.0, value=start.edit_guidance, step=0.5, label="guidance",
                                             elem_id="guidance")
                        edit_btn = gr.Button("Edit", variant="primary", elem_id="edit")
                        edited = gr.Image(label="edited", type="pil", interactive=False, elem_id="edited")
                        edit_info = gr.Textbox(label="edit", interactive=False, elem_id="edit_info")
                before_after = gr.ImageSlider(label="before / after", type="pil", elem_id="before_after") \
                    if hasattr(gr, "ImageSlider") else gr.Gallery(label="before / after", elem_id="before_after")
                upload.change(g("preview", self.preview), [upload], [source], api_name=False)
                invert_btn.click(g("invert", self.invert),
                                 [upload, model, dtype, method, source_prompt, steps, iterations, seed, state],
                                 [recon, info, state], api_name="invert", **work)
                edit_inputs = [target_prompt, strength, guidance, state]
                edit_outputs = [edited, before_after, edit_info]
                edit_fn = g("edit", self.edit)
                edit_btn.click(edit_fn, edit_inputs, edit_outputs, api_name="edit", **work)
                # the same edit from the sliders and the prompt box: one API endpoint, not four
                for control in (strength, guidance):
                    control.release(edit_fn, edit_inputs, edit_outputs, api_name=False, **work)
                target_prompt.submit(edit_fn, edit_inputs, edit_outputs, api_name=False, **work)
            with gr.Tab("Interpolate"):
                istate = gr.State({})
                with gr.Row():
                    a = gr.File(label="image A", file_types=["image"], type="filepath")
                    b = gr.File(label="image B", file_types=["image"], type="filepath")
                with gr.Row():
                    prompt_a = gr.Textbox(label="prompt A")
                    prompt_b = gr.Textbox(label="prompt B (optional)")
                    n = gr.Slider(3, lim.max_frames, value=5, step=1, label="frames")
                go = gr.Button("Interpolate", variant="primary")
                frame = gr.Image(label="frame", type="pil", interactive=False)
                # a fixed range (an update of its bounds would re-create it without quiet_checks'
                # wrapper); frame() shows the last frame for an index past it
                pick = gr.Slider(0, lim.max_frames - 1, value=0, step=1, label="frame index")
                go.click(g("interpolate", self.interpolate),
                         [a, b, model, dtype, method, prompt_a, prompt_b, n, iterations, seed, istate],
                         [frame, istate, pick], api_name="interpolate", **work)
                pick.change(self.frame, [pick, istate], [frame], api_name=False)
            # the edit controls follow the selected model's own defaults (not the previous model's)
            model.change(g("model", self.model_settings), [model, dtype], [strength, guidance], api_name=False,
                         **work)  # it loads the model
            quiet_checks([strength, guidance, n, pick, steps, iterations, seed, upload, a, b])
        demo.queue(default_concurrency_limit=1, max_size=lim.queue_size)
        quiet_when_idle(demo)
        return demo


def quiet_checks(components: Sequence[Any]) -> None:
    """Gradio's own input checks (a slider's bounds) raise ``gr.Error`` with ``print_exception=True``,
    which logs a 25-line traceback per refused request: each component's ``preprocess`` is wrapped so a
    refusal is one log line and one line to the user.  (Bound to the component, so Gradio's per-session
    copies keep it; a component re-created by an update of its properties would lose it, so the app
    updates only values.)"""
    import types

    for component in components:
        component.preprocess = types.MethodType(_quiet_preprocess, component)


def _quiet_preprocess(component, payload):
    import gradio as gr

    try:
        return type(component).preprocess(component, payload)
    except Exception as exc:  # noqa: BLE001 - any refusal of a value: one line, no traceback
        label = (getattr(component, "label", None) or "value").split(" (")[0]
        low, high = getattr(component, "minimum", None), getattr(component, "maximum", None)
        if low is not None and high is not None:
            message = f"{label} must be between {low:g} and {high:g}"
        elif isinstance(component, gr.Number):
            message = f"{label} must be a number"
        else:
            text = str(getattr(exc, "message", None) or exc)
            message = f"{label}: " + _scrub(text.splitlines()[0] if text else "invalid value")
        logger.info("%s: refused: %s", label, message)
        raise gr.Error(message, print_exception=False) from None


#: how often Gradio's queue looks for work and for progress to send while nothing runs (seconds)
IDLE_POLL_S = 0.05


def quiet_when_idle(demo, poll_s: float = IDLE_POLL_S):
    """Make an idle app cost (almost) nothing.

    Gradio 6.x's queue polls instead of waiting on an event: ``Queue.start_processing`` sleeps 1 ms
    between looks at an empty queue and ``Queue.start_progress_updates`` 10 ms (``sleep_when_free`` and
    ``progress_update_sleep_when_free``; 50 ms and 100 ms on Windows only), so a server with nobody on it
    wakes ~1100 times a second (measured by benchmarks/idle_cpu.py; figures in the README). Gradio has no
    setting for it, so the two intervals are raised on the queue
    object: a request now waits up to ``poll_s`` longer to start (50 ms against requests of a second or
    more) and idle costs under 1%.
    Without those attributes (another Gradio) nothing is changed."""
    queue = getattr(demo, "_queue", None)
    for name in ("sleep_when_free", "progress_update_sleep_when_free"):
        if isinstance(getattr(queue, name, None), (int, float)):
            setattr(queue, name, max(getattr(queue, name), poll_s))
    return demo


def fit_to_model(img, multiple: int, native: tuple[int, int], max_area_ratio: float = 2.0):
    """An upload at a size the model takes, its aspect ratio kept, and notes saying what was done.

    The command line's policy: refused, in its words, an image with a side under the model's size
    multiple (1x1: it cannot hold one latent pixel; ``size_error``); taken with its note an extreme
    aspect ratio (a side 4x the other or more; ``size_notes``).  Kept as it is: a size that is a
    multiple and within ``max_area_ratio`` of the native pixel count.  Otherwise scaled, aspect kept, to
    about the native pixel count, then centre-cropped by under ``multiple`` pixels per side to a
    multiple.  (The app used to squash every upload of a built-in model to 64x64.)"""
    from PIL import Image

    from .core.adapters import size_error, size_notes

    h, w = img.height, img.width
    if min(h, w) < multiple:
        problem = size_error(h, w, multiple, native) or f"image size {h}x{w} (HxW) is too small"
        size = f"{native[0]}x{native[1]}"  # the nearest multiple may be the native size: named once
        raise InputError(problem.replace(f"{size} (the model's native size) or {size}",
                                         f"{size} (the model's native size)"))
    notes = [n for n in size_notes(h, w, native) if "aspect" in n]
    area, native_area = h * w, native[0] * native[1]
    if not (1 / max_area_ratio <= area / native_area <= max_area_ratio):
        scale = (native_area / area) ** 0.5
        sh, sw = max(multiple, round(h * scale)), max(multiple, round(w * scale))
        img = img.resize((sw, sh), Image.LANCZOS)
        notes.append(f"scaled {h}x{w} to {sh}x{sw} (HxW; about the model's native {native[0]}x{native[1]} "
                     "pixels, aspect kept)")
        h, w = sh, sw
    ch, cw = h - h % multiple, w - w % multiple
    if (ch, cw) != (h, w):
        top, left = (h - ch) // 2, (w - cw) // 2
        img = img.crop((left, top, left + cw, top + ch))
        notes.append(f"cropped {h}x{w} to {ch}x{cw} (HxW), a multiple of {multiple}")
    return img, notes


def _methods() -> dict:
    """Every method ``nrinv.invert`` runs, by name (the registry's, ``core/methods.py``): the solvers and the
    trajectory methods (edit-friendly); not the baselines with entry points of their own."""
    from .core.methods import METHODS

    return {name: method for name, method in METHODS.items() if method.invert}


def _edit_inversion(state: dict, callback: Any) -> tuple[Any, bool]:
    """The inversion the Edit tab regenerates from, and whether it was made now.  ``nrinv.edit`` inverts at
    the model's ``edit_steps`` / ``edit_iterations`` when none are given; the Invert tab's inversion is
    used as it is when the user chose its method, steps or iterations (they differ from the model's
    defaults), else the image is inverted again at the edit's settings, once per inversion (kept in
    ``state``)."""
    from .api import invert
    from .core.inversion import InversionOptions, solver_options

    result = state["result"]
    adapter = result.setup.adapter
    d = adapter.defaults
    if d.edit_steps is None and d.edit_iterations is None:
        return result, False
    s = result.settings
    method = d.edit_method or d.method
    if s.get("method") != method or s.get("num_inference_steps") != d.num_inference_steps:
        return result, False  # the user's choice
    iterates = _methods()[method].iterates and (s.get("options") or {}).get("max_iterations") is not None
    if iterates:
        guided = float(s.get("guidance_scale", 1.0)) > 1.0
        default = solver_options(adapter, InversionOptions(method=method), guided=guided)[1].max_iterations
        if s["options"]["max_iterations"] != default:
            return result, False  # the user's choice
    want = (d.edit_steps or d.num_inference_steps, (d.edit_iterations if iterates else None))
    cached = state.get("edit_inversion")
    if cached is not None and cached[0] is result and cached[1] == want:
        return cached[2], False
    again = invert(adapter, state["source"], s["prompt"], method=method, num_inference_steps=want[0],
                   max_iterations=want[1], seed=s["seed"], guidance_scale=s.get("guidance_scale"),
                   negative_prompt=s.get("negative_prompt"), callback=callback)
    state["edit_inversion"] = (result, want, again)
    return again, True


def _resolve_method(pipe: Any, method: Any, editing: bool) -> str:
    """The method a request runs: the dropdown's name, or for ``MODEL_DEFAULT`` the model's own (in the
    Edit tab its ``edit_method`` where the registry gives one, as ``nrinv.edit`` does)."""
    if method in (None, "", MODEL_DEFAULT):
        defaults = pipe.defaults
        return (defaults.edit_method if editing else None) or defaults.method
    if method not in _methods():
        raise InputError("pick an inversion method from the list")
    return method


def _method_facts(method: str) -> tuple[bool, int, bool]:
    """(iterates, network calls per iteration, needs a backward pass) of a method, from the registry; a
    trajectory method (edit-friendly, on its forward trajectory) costs one call per step."""
    spec = _methods()[method]
    return spec.iterates, spec.calls_per_iteration(), spec.needs_grad


def estimate_seconds(cost: CallCost, needs_grad: bool, solve_calls: int, plain_calls: int,
                     pixels: Optional[int] = None, capture: bool = False) -> float:
    """Seconds a request of ``solve_calls`` solver calls (with a backward pass when ``needs_grad``) and
    ``plain_calls`` forward calls should take, at ``pixels`` (the cost grows with the pixel count),
    plus one CUDA-graph capture when ``capture`` (a size whose graphs are not captured yet)."""
    scale = 1.0 if not pixels else pixels / cost.pixels
    return scale * (solve_calls * cost.per_call(needs_grad) + plain_calls * cost.forward_s
                    + (cost.capture_s if capture else 0.0))


def measure_call_cost(pipe, steps: int = 2) -> CallCost:
    """Time a network call of ``pipe`` (a 2-step inversion with the registry's one-evaluation solver, then
    with one that differentiates through the network for the backward pass, at the model's native size),
    each run twice and the second taken: the first pays for one-time set-up (prompt embeddings,
    schedules, CUDA graph capture).  A fraction of a second for the built-in models on a CPU; done once
    per loaded model and precision."""
    from PIL import Image

    from .api import invert
    from .core.solvers import SOLVERS

    forward = next(n for n, s in SOLVERS.items() if not s.iterates and not s.needs_grad)
    backward = next((n for n, s in SOLVERS.items() if s.needs_grad), forward)
    height, width = pipe.default_size()
    image = Image.new("RGB", (width, height), (128, 128, 128))
    seconds = {}
    capture = 0.0
    for method in (forward, backward):
        its = 1 if SOLVERS[method].iterates else None
        for _ in range(2):
            try:
                result = invert(pipe, image, "a grey image", method=method, num_inference_steps=steps,
                                max_iterations=its)
            except InputError:  # a scheduler that cannot take that many steps: its default
                steps = pipe.defaults.num_inference_steps
                result = invert(pipe, image, "a grey image", method=method, num_inference_steps=steps,
                                max_iterations=its)
            capture = max(capture, result.capture_time)  # the first run of a new size captures its graphs
        seconds[method] = result.wall_time / max(1, result.nfe)
    return CallCost(forward_s=seconds[forward], gradient_s=max(seconds[backward], seconds[forward]),
                    pixels=height * width, capture_s=capture)


def default_models(named: Sequence[str] = ()) -> list[str]:
    """The allow-list: what the operator named, then every built-in model."""
    from .loading import BUILTIN_PREFIX, builtin_models

    return list(dict.fromkeys(list(named) + [BUILTIN_PREFIX + name for name in builtin_models()]))


def launch(models: Sequence[str] = ("builtin:shapes",), *, host: str = "127.0.0.1", port: int = 7860,
           max_upload_mb: int = DEFAULT_MAX_UPLOAD_MB, limits: Limits = Limits(), device: str = "auto",
           dtype: str = "auto", cuda_graphs: bool = True, block: bool = True):
    # the app's own lines at INFO; libraries (httpx's request lines at start-up) only when they warn
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logger.setLevel(logging.INFO)
    app = EditorApp(models, device=device, dtype=dtype, limits=limits, cuda_graphs=cuda_graphs)
    demo = app.build()
    demo.launch(server_name=host, server_port=port, max_file_size=f"{max_upload_mb}mb", show_error=True,
                prevent_thread_lock=not block, quiet=True)
    return demo
