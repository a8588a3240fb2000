"""`nrinv app`: a Gradio web app for interactive real-image editing.

Invert once, then every change of target prompt, strength or guidance regenerates from the cached
inversion (per browser session, in ``gr.State``).  One lock serialises the model work, so two users
cannot interleave on a pipeline; bad input is shown in the UI and never takes the server down.
"""
from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .io.images import DEFAULT_MAX_PIXELS, InputError, load_image, to_pil, to_tensor

DEFAULT_MAX_UPLOAD_MB = 20


class EditorApp:
    """Models (loaded on first use), the work lock and the UI handlers; no module-level state."""

    def __init__(self, default_model: str = "builtin:shapes", *, device: str = "auto", dtype: str = "auto",
                 max_pixels: int = DEFAULT_MAX_PIXELS, cuda_graphs: bool = True):
        self.default_model = default_model
        self.device = device
        self.dtype = dtype
        self.cuda_graphs = cuda_graphs
        self.max_pixels = max_pixels
        self.pipes: dict[str, Any] = {}
        self.lock = threading.Lock()

    # -- helpers --------------------------------------------------------------------------------
    def pipe(self, model: str) -> Any:
        """The model's adapter, loaded on first use and kept: its prompt embeddings, schedules and
        (on CUDA) captured graphs are reused by every later request."""
        from .core.adapters import adapter_for
        from .loading import load_pipeline

        model = (model or self.default_model).strip()
        if model not in self.pipes:
            try:
                self.pipes[model] = adapter_for(load_pipeline(model, dtype=self.dtype, device=self.device),
                                                cuda_graphs=None if self.cuda_graphs else False)
            except (OSError, ValueError) as exc:
                raise InputError(f"cannot load model {model!r}: {str(exc).splitlines()[0]}") from None
        return self.pipes[model]

    def _image(self, path: Optional[str], size: Optional[tuple[int, int]] = None):
        if not path:
            raise InputError("upload an image (or pick an example) first")
        notes: list[str] = []
        img = load_image(path, max_pixels=self.max_pixels, notes=notes, size=size)
        return img, notes

    # -- handlers (each returns UI values; InputError becomes a message in the UI) ---------------
    def preview(self, path: Optional[str]):
        import gradio as gr

        if not path:
            return None
        try:
            img, notes = self._image(path)
        except InputError as exc:
            raise gr.Error(str(exc)) from None
        if notes:
            gr.Info("; ".join(notes))
        return img

    def invert(self, path, model, method, source_prompt, steps, iterations, seed, state):
        import gradio as gr

        from .api import invert, reconstruct

        try:
            if not source_prompt or not source_prompt.strip():
                raise InputError("type a source prompt that describes the image")
            with self.lock:
                pipe = self.pipe(model)
                size = pipe.default_size()
                img, notes = self._image(path, size=None)
                if (img.height, img.width) != size and pipe.defaults.kind.startswith("shapes"):
                    img = img.resize((size[1], size[0]))  # the built-in model works at its own size
                result = invert(pipe, img, source_prompt, method=method, num_inference_steps=int(steps) or None,
                                max_iterations=None if method == "ddim" else int(iterations), seed=int(seed))
                rec = reconstruct(pipe, result, output_type="pt").images[0]
        except (InputError, ValueError) as exc:
            raise gr.Error(str(exc).splitlines()[0]) from None
        from .metrics import image_psnr

        quality = image_psnr(rec[None], to_tensor(img))
        info = (f"inverted in {result.wall_time:.2f} s ({result.nfe} network calls, {result.status.value}); "
                f"reconstruction PSNR {quality:.2f} dB")
        from .edit import edit_defaults

        state = {"model": model, "result": result, "source": img,
                 "guide_from_source": edit_defaults(pipe)["guide_from_source"]}
        return to_pil(rec), info, state

    def edit(self, target_prompt, strength, guidance, state):
        import gradio as gr

        from .edit import regenerate

        if not state or "result" not in state:
            raise gr.Error("invert an image first (the edit reuses its inversion)")
        try:
            if not target_prompt or not target_prompt.strip():
                raise InputError("type a target prompt")
            t0 = time.perf_counter()
            with self.lock:
                _, images = regenerate(state["result"], [target_prompt], strength=float(strength),
                                       guidance_scale=float(guidance),
                                       guide_from_source=state.get("guide_from_source", False), output_type="pil")
            seconds = time.perf_counter() - t0
        except (InputError, ValueError) as exc:
            raise gr.Error(str(exc).splitlines()[0]) from None
        edited = images[0]
        return edited, (state["source"], edited), f"edited in {seconds:.2f} s from the cached inversion"

    def interpolate(self, path_a, path_b, model, method, prompt_a, prompt_b, n, iterations, seed, state):
        import gradio as gr

        from .edit import interpolate

        try:
            if not prompt_a or not prompt_a.strip():
                raise InputError("type a prompt for image A")
            with self.lock:
                pipe = self.pipe(model)
                size = pipe.default_size()
                builtin = pipe.defaults.kind.startswith("shapes")
                a, _ = self._image(path_a, size=size if builtin else None)
                b, _ = self._image(path_b, size=size if builtin else None)
                if a.size != b.size:
                    raise InputError(f"images A and B differ in size ({a.size} vs {b.size}); resize them to match")
                prompts = (prompt_a, prompt_b) if prompt_b and prompt_b.strip() else prompt_a
                res = interpolate(pipe, a, b, prompts, n=int(n), method=method,
                                  max_iterations=None if method == "ddim" else int(iterations), seed=int(seed))
        except (InputError, ValueError) as exc:
            raise gr.Error(str(exc).splitlines()[0]) from None
        frames = list(res.images)
        return frames[0], {"frames": frames}, gr.update(maximum=len(frames) - 1, value=0)

    @staticmethod
    def frame(index, state):
        if not state or "frames" not in state:
            return None
        frames = state["frames"]
        return frames[max(0, min(int(index), len(frames) - 1))]

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

        with gr.Blocks(title="nrinv editor") as demo:
            gr.Markdown("# nrinv — invert once, edit interactively")
            with gr.Row():
                model = gr.Textbox(self.default_model, label="model (builtin:shapes, HF id or local folder)")
                method = gr.Dropdown(methods, value=DEFAULT_METHOD, label="inversion method")
                steps = gr.Number(0, label="steps (0 = model default)", precision=0)
                iterations = gr.Number(2, label="iterations per step", precision=0)
                seed = gr.Number(0, label="seed", precision=0)
            with gr.Tab("Edit"):
                state = gr.State({})
                with gr.Row():
                    with gr.Column():
                        upload = gr.File(label="image", file_types=["image"], type="filepath", elem_id="upload")
                        source = gr.Image(label="input", type="pil", interactive=False, elem_id="source", height=256)
                        examples = self.examples()
                        if examples:
                            gr.Examples(examples=[[p] for p in examples], inputs=[upload], label="examples")
                        source_prompt = gr.Textbox(label="source prompt (describes the image)", elem_id="source_prompt")
                        invert_btn = gr.Button("Invert", variant="primary", elem_id="invert")
                    with gr.Column():
                        recon = gr.Image(label="reconstruction", type="pil", interactive=False, elem_id="recon", height=256)
                        info = gr.Textbox(label="inversion", interactive=False, elem_id="info")
                    with gr.Column():
                        target_prompt = gr.Textbox(label="target prompt", elem_id="target_prompt")
                        strength = gr.Slider(0.05, 1.0, value=start.edit_strength, step=0.05,
                                             label="strength")
                        guidance = gr.Slider(0.0, 10.0, value=start.edit_guidance, step=0.5,
                                             label="guidance")
                        edit_btn = gr.Button("Edit", variant="primary", elem_id="edit")
                        edited = gr.Image(label="edited", type="pil", interactive=False, elem_id="edited", height=256)
                        edit_info = gr.Textbox(label="edit", interactive=False, elem_id="edit_info")
                before_after = gr.ImageSlider(label="before / after", type="pil", height=320) if hasattr(gr, "ImageSlider") \
                    else gr.Gallery(label="before / after")
                upload.change(self.preview, [upload], [source])
                invert_btn.click(self.invert, [upload, model, method, source_prompt, steps, iterations, seed, state],
                                 [recon, info, state])
                edit_inputs = [target_prompt, strength, guidance, state]
                edit_outputs = [edited, before_after, edit_info]
                edit_btn.click(self.edit, edit_inputs, edit_outputs)
                for control in (strength, guidance):
                    control.release(self.edit, edit_inputs, edit_outputs)
                target_prompt.submit(self.edit, edit_inputs, edit_outputs)
            with gr.Tab("Interpolate"):
                istate = gr.State({})
                with gr.Row():
                    a = gr.File(label="image A", file_types=["image"], type="filepath")
                    b = gr.File(label="image B", file_types=["image"], type="filepath")
                with gr.Row():
                    prompt_a = gr.Textbox(label="prompt A")
                    prompt_b = gr.Textbox(label="prompt B (optional)")
                    n = gr.Slider(3, 12, value=5, step=1, label="frames")
                go = gr.Button("Interpolate", variant="primary")
                frame = gr.Image(label="frame", type="pil", interactive=False, height=256)
                pick = gr.Slider(0, 4, value=0, step=1, label="frame index")
                go.click(self.interpolate, [a, b, model, method, prompt_a, prompt_b, n, iterations, seed, istate],
                         [frame, istate, pick])
                pick.change(self.frame, [pick, istate], [frame])
        demo.queue(default_concurrency_limit=1)
        return demo


def launch(model: str = "builtin:shapes", *, host: str = "127.0.0.1", port: int = 7860,
           max_upload_mb: int = DEFAULT_MAX_UPLOAD_MB, max_pixels: int = DEFAULT_MAX_PIXELS, device: str = "auto",
           dtype: str = "auto", cuda_graphs: bool = True, block: bool = True):
    app = EditorApp(model, device=device, dtype=dtype, max_pixels=max_pixels, cuda_graphs=cuda_graphs)
    demo = app.build()
    demo.launch(server_name=host, server_port=port, max_file_size=f"{max_upload_mb}mb", show_error=True,
                prevent_thread_lock=not block, quiet=True)
    return demo
