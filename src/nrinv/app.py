"""`nrinv app`: a Gradio web app for interactive real-image editing.

Invert once, then every change of target prompt, strength or guidance regenerates from the cached
inversion (per browser session, in ``gr.State``).

Serving it to others is safe by construction:

* users pick a model from the operator's allow-list (``--models``; by default the built-in models and
  the one named with ``--model``): nothing a user types makes the server load a path or a hub id;
* every request is capped (steps, iterations per step, network calls, upload pixels, frames) and one
  queue with one worker serialises the model work, holding at most ``queue_size`` waiting requests:
  a heavy request cannot hold a light one back longer than one capped request takes;
* user errors come back as one friendly line, with no server path, and are logged as one line; an
  unexpected error is logged as one line and shown as a generic message.
"""
from __future__ import annotations

import logging
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .errors import InputError
from .io.images import load_image, to_pil, to_tensor

DEFAULT_MAX_UPLOAD_MB = 20
DTYPE_CHOICES = ("auto", "float32", "float16", "bfloat16")
logger = logging.getLogger("nrinv.app")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (each refused above its cap with a message saying so)."""

    max_steps: int = 50
    max_iterations: int = 5
    #: network calls of one request: inversion (steps x iterations x calls per iteration) plus the
    #: regeneration; bounds how long one request holds the worker
    max_nfe: int = 400
    max_pixels: int = 1024 * 1024
    max_frames: int = 12
    #: requests waiting in the queue at most; more are refused at once ("busy, try again")
    queue_size: int = 8


def _calls_per_iteration(method: str) -> int:
    from .core.solvers import NewtonKrylovOptions

    return 1 + NewtonKrylovOptions().krylov_dim if method == "newton_krylov" else 1


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
            self.pipes[(label, dtype)] = adapter_for(pipe, cuda_graphs=None if self.cuda_graphs else False)
        return self.pipes[(label, dtype)]

    def _image(self, path: Optional[str], size: Optional[tuple[int, int]] = None):
        if not path:
            raise InputError("upload an image (or pick an example) first")
        notes: list[str] = []
        img = load_image(path, max_pixels=self.limits.max_pixels, notes=notes, size=size)
        return img, notes

    def _work_size(self, pipe, img) -> Optional[tuple[int, int]]:
        """The built-in models work at their native size: other sizes are resized to it."""
        size = pipe.default_size()
        return size if pipe.defaults.kind.startswith("shapes") and (img.height, img.width) != size else None

    def _check_request(self, pipe, method: str, steps: Any, iterations: Any, seed: Any, frames: int = 0,
                       inversions: int = 1) -> tuple[Optional[int], Optional[int], int]:
        """Steps, iterations and seed checked against the limits; the request's network calls bounded."""
        from .core.solvers import SOLVERS

        lim = self.limits
        if method not in SOLVERS:
            raise InputError("pick an inversion method from the list")
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
        n_its = 1 if method == "ddim" else (its_i or pipe.defaults.max_iterations)
        nfe = inversions * n_steps * (n_its * _calls_per_iteration(method) + 1) + frames * n_steps
        if nfe > lim.max_nfe:
            raise InputError(f"that request needs about {nfe} network calls, more than the {lim.max_nfe} allowed "
                             "here; use fewer steps or iterations")
        return steps_i or None, None if method == "ddim" else (its_i or None), seed_i

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
                message = _scrub(str(exc).splitlines()[0] if str(exc) else "invalid input")
                logger.info("%s: refused: %s", name, message)
                raise gr.Error(message, print_exception=False) from None
            except Exception as exc:  # noqa: BLE001 - the server stays up; the user gets no internals
                logger.error("%s: failed: %s: %s", name, type(exc).__name__, _scrub(str(exc).splitlines()[0] if str(exc) else ""))
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
        from .metrics import image_psnr

        if not source_prompt or not source_prompt.strip():
            raise InputError("type a source prompt that describes the image")
        pipe = self.pipe(model, dtype)
        steps, iterations, seed = self._check_request(pipe, method, steps, iterations, seed)
        img, _ = self._image(path)
        size = self._work_size(pipe, img)
        if size is not None:
            img = img.resize((size[1], size[0]))
        result = invert(pipe, img, source_prompt, method=method, num_inference_steps=steps, max_iterations=iterations,
                        seed=seed)
        rec = reconstruct(pipe, result, output_type="pt").images[0]
        quality = image_psnr(rec[None], to_tensor(img))
        info = (f"inverted in {result.wall_time:.2f} s ({result.nfe} network calls, {result.status.value}); "
                f"reconstruction PSNR {quality:.2f} dB")
        state = {"result": result, "source": img, "guide_from_source": edit_defaults(pipe)["guide_from_source"]}
        return _display(to_pil(rec)), info, state

    def edit(self, target_prompt, strength, guidance, state):
        from .core.inversion import check_guidance
        from .workflows import regenerate

        if not state or "result" not in state:
            raise InputError("invert an image first (the edit reuses its inversion)")
        if not target_prompt or not target_prompt.strip():
            raise InputError("type a target prompt")
        t0 = time.perf_counter()
        _, images = regenerate(state["result"], [target_prompt], strength=float(strength),
                               guidance_scale=check_guidance(guidance, "guidance"),
                               guide_from_source=state.get("guide_from_source", False), output_type="pil")
        seconds = time.perf_counter() - t0
        edited = images[0]
        return _display(edited), (_display(state["source"]), _display(edited)), \
            f"edited in {seconds:.2f} s from the cached inversion"

    def interpolate(self, path_a, path_b, model, dtype, method, prompt_a, prompt_b, n, iterations, seed, state):
        import gradio as gr

        from .workflows import interpolate

        if not prompt_a or not prompt_a.strip():
            raise InputError("type a prompt for image A")
        frames = int(n or 0)
        if not 1 <= frames <= self.limits.max_frames:
            raise InputError(f"frames must be between 1 and {self.limits.max_frames}")
        pipe = self.pipe(model, dtype)
        _, iterations, seed = self._check_request(pipe, method, 0, iterations, seed, frames=frames, inversions=2)
        a, _ = self._image(path_a)
        b, _ = self._image(path_b)
        size = self._work_size(pipe, a)
        if size is not None:
            a, b = a.resize((size[1], size[0])), b.resize((size[1], size[0]))
        if a.size != b.size:
            raise InputError(f"images A and B differ in size ({a.width}x{a.height} and {b.width}x{b.height}); "
                             "resize them to match")
        prompts = (prompt_a, prompt_b) if prompt_b and prompt_b.strip() else prompt_a
        res = interpolate(pipe, a, b, prompts, n=frames, method=method, max_iterations=iterations, seed=seed)
        shown = [_display(f) for f in res.images]
        return shown[0], {"frames": shown}, gr.update(maximum=len(shown) - 1, value=0)

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

        from .core.defaults import DEFAULT_METHOD
        from .core.solvers import SOLVERS

        methods = list(SOLVERS)
        start = self.pipe(self.default_model).defaults  # the sliders start at the default model's edit settings
        lim = self.limits
        g = self._guarded
        with gr.Blocks(title="nrinv editor") as demo:
            gr.Markdown("# nrinv — invert once, edit interactively")
            # The handlers check every value themselves (one friendly line, one log line); Gradio's own
            # checks of choices and bounds would log a traceback per refusal, so they are not used.
            with gr.Row():
                model = gr.Dropdown(list(self.models), value=self.default_model, label="model", elem_id="model",
                                    allow_custom_value=True)
                dtype = gr.Dropdown(list(DTYPE_CHOICES), value=self.dtype if self.dtype in DTYPE_CHOICES else "auto",
                                    label="precision", elem_id="dtype", allow_custom_value=True)
                method = gr.Dropdown(methods, value=DEFAULT_METHOD, label="inversion method", allow_custom_value=True)
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
                        strength = gr.Slider(0.05, 1.0, value=start.edit_strength, step=0.05, label="strength")
                        guidance = gr.Slider(0.0, 10.0, value=start.edit_guidance, step=0.5, label="guidance")
                        edit_btn = gr.Button("Edit", variant="primary", elem_id="edit")
                        edited = gr.Image(label="edited", type="pil", interactive=False, elem_id="edited")
                        edit_info = gr.Textbox(label="edit", interactive=False, elem_id="edit_info")
                before_after = gr.ImageSlider(label="before / after", type="pil", elem_id="before_after") \
                    if hasattr(gr, "ImageSlider") else gr.Gallery(label="before / after", elem_id="before_after")
                upload.change(g("preview", self.preview), [upload], [source], api_name=False)
                invert_btn.click(g("invert", self.invert),
                                 [upload, model, dtype, method, source_prompt, steps, iterations, seed, state],
                                 [recon, info, state], api_name="invert")
                edit_inputs = [target_prompt, strength, guidance, state]
                edit_outputs = [edited, before_after, edit_info]
                edit_fn = g("edit", self.edit)
                edit_btn.click(edit_fn, edit_inputs, edit_outputs, api_name="edit")
                # the same edit from the sliders and the prompt box: one API endpoint, not four
                for control in (strength, guidance):
                    control.release(edit_fn, edit_inputs, edit_outputs, api_name=False)
                target_prompt.submit(edit_fn, edit_inputs, edit_outputs, api_name=False)
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
                pick = gr.Slider(0, 4, value=0, step=1, label="frame index")
                go.click(g("interpolate", self.interpolate),
                         [a, b, model, dtype, method, prompt_a, prompt_b, n, iterations, seed, istate],
                         [frame, istate, pick], api_name="interpolate")
                pick.change(self.frame, [pick, istate], [frame], api_name=False)
        demo.queue(default_concurrency_limit=1, max_size=lim.queue_size)
        return demo


def default_models(named: Sequence[str] = ()) -> list[str]:
    """The allow-list: what the operator named, then every built-in model."""
    from .loading import BUILTIN_PREFIX, builtin_models

    return list(dict.fromkeys(list(named) + [BUILTIN_PREFIX + name for name in builtin_models()]))


def launch(models: Sequence[str] = ("builtin:shapes",), *, host: str = "127.0.0.1", port: int = 7860,
           max_upload_mb: int = DEFAULT_MAX_UPLOAD_MB, limits: Limits = Limits(), device: str = "auto",
           dtype: str = "auto", cuda_graphs: bool = True, block: bool = True):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = EditorApp(models, device=device, dtype=dtype, limits=limits, cuda_graphs=cuda_graphs)
    demo = app.build()
    demo.launch(server_name=host, server_port=port, max_file_size=f"{max_upload_mb}mb", show_error=True,
                prevent_thread_lock=not block, quiet=True)
    return demo
