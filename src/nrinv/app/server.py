"""The web app's handlers and UI: ``EditorApp`` (its models, ``models.py``; its request checks,
``requests.py``; here what each tab does and the Gradio Blocks), the idle-quiet queue, and ``launch``."""
from __future__ import annotations

import logging
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..core.options import PRECISIONS as DTYPE_CHOICES
from ..errors import InputError
from ..io.images import load_image, to_pil, to_tensor
from .limits import CallCost, DEFAULT_MAX_UPLOAD_MB, Deadline, Limits, MODEL_DEFAULT, MODEL_WORK, RequestTooLong
from .models import _Models, _methods, _resolve_method, _scrub
from .requests import _Requests, _display

__all__ = ["EditorApp", "launch", "quiet_checks", "quiet_when_idle", "IDLE_POLL_S"]

logger = logging.getLogger("nrinv.app")


class EditorApp(_Models, _Requests):
    """The web app: its models and their prices (``_Models``, ``models.py``), its request checks (``_Requests``,
    ``requests.py``) and here the UI handlers; no module-level state."""

    def __init__(self, models: Sequence[str] = ("builtin:shapes",), *, device: str = "auto", dtype: str = "auto",
                 limits: Optional[Limits] = None, cuda_graphs: bool = True):
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
        self.limits = Limits() if limits is None else limits
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

    def preview(self, path: Optional[str]):
        import gradio as gr

        if not path:
            return None
        img, notes = self._image(path)
        if notes:
            gr.Info(_scrub("; ".join(notes)))
        return _display(img)

    def invert(self, path, model, dtype, method, source_prompt, steps, iterations, seed, state):
        from ..api import invert, reconstruct
        from ..workflows import edit_defaults
        from ..metrics import image_psnr, vae_ceiling_note, vae_ceiling_psnr

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
        from ..core.inversion import check_guidance
        from ..workflows import regenerate

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
        from ..workflows import interpolate

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
        deadline = Deadline(self.limits.max_seconds, self.clock)  # ends the request between steps, as the others
        res = interpolate(pipe, a, b, prompts, n=frames, method=method, max_iterations=iterations, seed=seed,
                          callback=deadline)
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


def _edit_inversion(state: dict, callback: Any) -> tuple[Any, bool]:
    """The inversion the Edit tab regenerates from, and whether it was made now.  ``nrinv.edit`` inverts at
    the model's ``edit_steps`` / ``edit_iterations`` when none are given; the Invert tab's inversion is
    used as it is when the user chose its method, steps or iterations (they differ from the model's
    defaults), else the image is inverted again at the edit's settings, once per inversion (kept in
    ``state``)."""
    from ..api import invert
    from ..core.inversion import InversionOptions, solver_options

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


def launch(models: Sequence[str] = ("builtin:shapes",), *, host: str = "127.0.0.1", port: int = 7860,
           max_upload_mb: int = DEFAULT_MAX_UPLOAD_MB, limits: Optional[Limits] = None, device: str = "auto",
           dtype: str = "auto", cuda_graphs: bool = True, block: bool = True):
    # the app's own lines at INFO; libraries (httpx's request lines at start-up) only when they warn
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logger.setLevel(logging.INFO)
    app = EditorApp(models, device=device, dtype=dtype, limits=limits, cuda_graphs=cuda_graphs)
    demo = app.build()
    demo.launch(server_name=host, server_port=port, max_file_size=f"{max_upload_mb}mb", show_error=True,
                prevent_thread_lock=not block, quiet=True)
    return demo
