"""The web app's server side without a browser: idle cost, the time-based cap, per-model controls,
uploads fitted to the model, Gradio's own checks as one line.  (The browser and ``gradio_client``
tests are in test_app.py.)"""
import logging

import pytest
from PIL import Image

gr = pytest.importorskip("gradio")

from nrinv.app import CallCost, EditorApp, Limits, estimate_seconds, fit_to_model, quiet_checks  # noqa: E402
from nrinv.errors import InputError  # noqa: E402


@pytest.fixture(scope="module")
def app():
    return EditorApp(["builtin:shapes", "builtin:shapes-lcm"], device="cpu", dtype="float32")


def test_the_built_app_does_not_poll_while_idle(app):
    demo = app.build()
    # Gradio 6.31 polls its queue every 1 ms and progress every 10 ms when free: ~1100 wake-ups a second
    # (4.9-6.4% of a core idle here); benchmarks/idle_cpu.py measures the process
    assert demo._queue.sleep_when_free >= 0.05
    assert demo._queue.progress_update_sleep_when_free >= 0.05


def test_call_cost_is_measured_when_a_model_loads(app):
    app.pipe("builtin:shapes")
    cost = app.cost("builtin:shapes")
    assert cost.pixels == 64 * 64 and cost.forward_s > 0 and cost.gradient_s >= cost.forward_s


def test_a_request_is_capped_by_its_estimated_time(app):
    """The issue's request: gnri_grad, 50 steps x 5 iterations, bfloat16 held the worker 50 s within the
    400-call cap.  Priced with the costs measured for it (0.16 s per forward+backward call, 0.12 s
    per forward call), it is refused; the same request in float32 costs (0.055 / 0.028 s) passes."""
    pipe = app.pipe("builtin:shapes")
    half = CallCost(forward_s=0.12, gradient_s=0.16, pixels=64 * 64)
    # 50 x 5 solver calls with a backward pass, 50 reconstruction calls
    assert estimate_seconds(half, True, 250, 50) == pytest.approx(250 * 0.16 + 50 * 0.12)
    with pytest.raises(InputError, match=r"would take about 46 s here, more than the 20 s one request may take; "
                                         r"use fewer steps or iterations, another method"):
        app._check_request(pipe, "gnri_grad", 50, 5, 0, cost=half, pixels=64 * 64)
    single = CallCost(forward_s=0.028, gradient_s=0.055, pixels=64 * 64)
    assert app._check_request(pipe, "gnri_grad", 50, 5, 0, cost=single, pixels=64 * 64) == (50, 5, 0)
    # the forward-only methods are priced per forward call: 50 x 5 + 50 calls at 0.12 s = 36 s
    with pytest.raises(InputError, match="about 36 s"):
        app._check_request(pipe, "anderson", 50, 5, 0, cost=half, pixels=64 * 64)
    # a larger image costs more per call, in proportion to its pixels
    with pytest.raises(InputError, match="about 34 s"):
        app._check_request(pipe, "fixed_point", 50, 5, 0, cost=single, pixels=4 * 64 * 64)


@pytest.mark.parametrize("scheduler, steps, iterations, entries, pass_iterations, sweeps", [
    # multistep: its family's row, 4 iterations in the pass, the check of every entry's true residual, 6 sweeps
    ("UniPCMultistepScheduler", 10, 0, 10, 4, 6),
    ("HeunDiscreteScheduler", 6, 2, 11, 2, 0),     # second order: two calls a step but the last; no check, no sweep
])
def test_the_cap_counts_the_calls_of_multistep_and_second_order_samplers(tiny, astronaut32, scheduler, steps,
                                                                         iterations, entries, pass_iterations,
                                                                         sweeps):
    """The cap priced an inversion at steps x iterations calls (UniPC, 10 steps x 2 iterations: 20 solver
    calls and 10 to reconstruct, 30), while the coupled solve makes up to 10 x 2 in its pass plus 6
    sweeps of 10 (80 then) and Heun's 6 steps are 11 calls each pass: the time cap let through requests
    several times longer than allowed.  The estimate is an upper bound of what ``nrinv.invert`` reports,
    above it by the sweeps a converged solve skips at most."""
    import diffusers

    import nrinv
    from nrinv.core.adapters import adapter_for
    from nrinv.core.inversion import planned_calls, sampler_calls

    pipe = tiny("sd")
    original = pipe.scheduler
    pipe.scheduler = getattr(diffusers, scheduler).from_config(original.config)
    try:
        adapter = adapter_for(pipe)
        its = iterations or None
        planned = planned_calls(adapter, "anderson", steps, its, size=(32, 32), seed=3)
        assert sampler_calls(adapter, steps, size=(32, 32), seed=3) == entries
        checks = entries if sweeps else 0  # the true residual after the pass (multistep only)
        assert planned == entries * pass_iterations + checks + sweeps * entries
        res = nrinv.invert(adapter, astronaut32, "a photo of a cat", method="anderson", num_inference_steps=steps,
                           max_iterations=its, seed=3)
        assert res.nfe <= planned <= res.nfe + sweeps * entries, (res.nfe, planned)
        # the app refuses with the same count: the inversion's calls plus one reconstruction
        capped = EditorApp(["builtin:shapes"], device="cpu", dtype="float32", limits=Limits(max_nfe=1))
        with pytest.raises(InputError, match=rf"needs about {planned + entries} network calls"):
            capped._check_request(adapter, "anderson", steps, iterations, 3, size=(32, 32))
        assert planned + entries >= res.nfe + entries > steps * 2 + steps  # the old estimate (30 / 18)
    finally:
        pipe.scheduler = original


@pytest.mark.parametrize("model", ["builtin:shapes", "builtin:shapes-lcm"])
@pytest.mark.parametrize("method, steps, iterations", [("anderson", 0, 0), ("anderson", 50, 5), ("ddim", 20, 3),
                                                       ("gnri_grad", 12, 4), ("newton_krylov", 8, 2),
                                                       ("edit_friendly", 4, 0)])
def test_single_step_samplers_keep_the_steps_times_iterations_estimate(app, model, method, steps, iterations):
    """The built-in models' samplers (DDIM, LCM) take one call a step: the estimate is what it was."""
    from nrinv.core.inversion import planned_calls, sampler_calls
    from nrinv.core.solvers import SOLVERS

    pipe = app.pipe(model)
    n_steps = steps or pipe.defaults.num_inference_steps
    spec = SOLVERS.get(method)
    iterates = spec is not None and spec.iterates
    per_iteration = spec.calls_per_iteration() if spec is not None else 1
    old = n_steps * ((iterations or pipe.defaults.max_iterations) if iterates else 1) * per_iteration
    assert planned_calls(pipe, method, n_steps, (iterations or None) if iterates else None) == old
    assert sampler_calls(pipe, n_steps) == n_steps


def test_half_precision_on_the_cpu_is_told_to_use_float32(app):
    pipe = app.pipe("builtin:shapes", "bfloat16")
    half = CallCost(forward_s=0.12, gradient_s=0.16, pixels=64 * 64)
    with pytest.raises(InputError, match=r"about 36 s here, .*; use fewer steps or iterations or float32$"):
        app._check_request(pipe, "anderson", 50, 5, 0, cost=half, pixels=64 * 64)


def test_the_worst_wait_of_a_light_request_is_stated():
    limits = Limits(max_seconds=20.0, queue_size=8)
    assert limits.worst_wait_s(requests_ahead=1) == 20.0  # behind one heavy request
    assert limits.worst_wait_s() == 160.0  # behind a full queue: one running, seven waiting
    assert limits.worst_wait_s(requests_ahead=50) == 160.0  # more are refused ("busy")


def test_costs_follow_what_requests_take():
    cost = CallCost(forward_s=0.1, gradient_s=0.3, pixels=4096)
    cost.observe(False, seconds=6.0, calls=20)  # observed 0.3 s per call: halfway there
    assert cost.forward_s == pytest.approx(0.2) and cost.gradient_s == 0.3
    cost.observe(True, seconds=0.0, calls=10)  # nothing learned from an empty observation
    assert cost.gradient_s == 0.3


def test_the_edit_controls_follow_the_selected_model(app):
    """The app kept the previous model's strength / guidance; each model's come from the registry."""
    from nrinv.core.defaults import MODEL_KINDS

    registry = {kind: (d.edit_strength, d.edit_guidance) for kind, _, d in MODEL_KINDS}
    assert registry["shapes-lcm"] != registry["shapes"]  # otherwise this test shows nothing
    assert app.model_settings("builtin:shapes-lcm") == registry["shapes-lcm"]
    assert app.model_settings("builtin:shapes") == registry["shapes"]


@pytest.mark.parametrize("size, expected, note", [
    ((64, 96), (64, 96), None),  # a size the model takes: kept (was squashed to 64x64)
    ((256, 256), (64, 64), "scaled 256x256 to 64x64 (HxW"),
    ((150, 100), (76, 52), "scaled 150x100 to 78x52 (HxW"),  # aspect kept, then cropped to a multiple of 4
    ((75, 101), (72, 100), "cropped 75x101 to 72x100 (HxW), a multiple of 4"),
])
def test_uploads_keep_their_aspect(size, expected, note):
    img = Image.new("RGB", (size[1], size[0]), (200, 30, 30))
    fitted, notes = fit_to_model(img, 4, (64, 64))
    assert (fitted.height, fitted.width) == expected
    assert (note is None and not notes) or any(note in n for n in notes), notes


def test_uploads_that_cannot_work_are_refused_in_the_clis_words():
    from nrinv.core.adapters import size_error

    words = "image size 1x1 (HxW) is not a multiple of 4 for this model; resize it, e.g. to 64x64"
    assert words in size_error(1, 1, 4, (64, 64))
    with pytest.raises(InputError, match=words.replace("(", r"\(").replace(")", r"\)")):
        fit_to_model(Image.new("RGB", (1, 1)), 4, (64, 64))


@pytest.mark.parametrize("size, fitted", [((8, 512), (8, 512)), ((4, 4096), (4, 2048))])
def test_an_extreme_aspect_runs_with_the_clis_note(size, fitted):
    """One input policy: the command line runs an 8x512 image with a note; the app refused it."""
    from nrinv.core.adapters import size_notes

    img, notes = fit_to_model(Image.new("RGB", (size[1], size[0])), 4, (64, 64))
    assert (img.height, img.width) == fitted
    extreme = [n for n in size_notes(*size, (64, 64)) if "aspect" in n]
    assert extreme and extreme[0] in notes


def test_gradios_own_range_checks_refuse_in_one_line(caplog):
    with gr.Blocks():
        strength = gr.Slider(0.05, 1.0, value=0.6, label="strength")
    quiet_checks([strength])
    assert strength.preprocess(0.5) == 0.5
    with caplog.at_level(logging.INFO, logger="nrinv.app"), pytest.raises(gr.Error) as info:
        strength.preprocess(5.0)
    assert info.value.print_exception is False  # Gradio prints a traceback unless this is False
    assert info.value.message == "strength must be between 0.05 and 1"
    assert [r.getMessage() for r in caplog.records] == ["strength: refused: strength must be between 0.05 and 1"]


def test_the_inversion_line_reports_the_vae_ceiling(app, tmp_path):
    from PIL import ImageDraw

    img = Image.new("RGB", (64, 64), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for x in range(0, 64, 2):  # 1-pixel stripes: the built-in VAE gives 8.6 dB
        draw.line((x, 0, x, 63), fill=(30, 30, 200))
    draw.ellipse((16, 16, 48, 48), fill=(240, 200, 20))
    img.save(tmp_path / "striped.png")
    _, info, _ = app.invert(str(tmp_path / "striped.png"), "builtin:shapes", "float32", "ddim",
                            "a yellow circle on a striped background", 2, 0, 0, {})
    assert "(VAE ceiling 8.6 dB); note: the model's VAE alone reproduces this image at 8.6 dB" in info


def test_the_edit_tab_inverts_and_edits_with_the_models_own_edit_settings(app, tmp_path):
    """The app inverted with the dropdown's solver and regenerated without the model's mask: on
    builtin:shapes-lcm (edit method edit-friendly, strength 1, mask 0.5) that was a full-strength
    re-generation from a solved inversion.  With "model default" it follows the registry as
    ``nrinv.edit`` does: an edit-friendly inversion (exact: the reconstruction is the VAE's own) and
    edits with the model's mask."""
    import numpy as np

    from nrinv import shapes
    from nrinv.app import MODEL_DEFAULT
    from nrinv.core.defaults import MODEL_KINDS

    lcm = {kind: d for kind, _, d in MODEL_KINDS}["shapes-lcm"]
    assert lcm.edit_method == "edit_friendly" and lcm.mask_threshold is not None  # else this shows nothing
    scene = shapes.sample_scene(3)
    path = tmp_path / "scene.png"
    Image.fromarray(shapes.render(scene, seed=0)).save(path)
    prompt = scene.caption()
    recon, info, state = app.invert(str(path), "builtin:shapes-lcm", "float32", MODEL_DEFAULT, prompt, 0, 0, 0, {})
    result = state["result"]
    assert result.settings["method"] == "edit_friendly" and result.nfe == lcm.num_inference_steps
    assert state["mask_threshold"] == lcm.mask_threshold and state["keep_object"] == lcm.keep_object
    assert "network calls" in info
    # exact by construction: the reconstruction equals the VAE's decoding of the encoded image
    import torch

    from nrinv.io.images import to_tensor

    adapter = app.pipe("builtin:shapes-lcm", "float32")
    with torch.no_grad():
        ceiling = adapter.decode(result.encoded, (64, 64)).float().clamp(0, 1)
    rec = to_tensor(recon.resize((64, 64), Image.NEAREST)).float()  # shown enlarged, nearest-neighbour
    assert float((rec - ceiling).abs().max()) < 2.5 / 255
    edited, _, edit_info = app.edit(prompt, lcm.edit_strength, lcm.edit_guidance, state)
    # the source prompt with the same noises gives the image back
    assert np.abs(np.asarray(edited, dtype=float) - np.asarray(recon, dtype=float)).max() <= 3, edit_info
    # a solver picked by name still runs that solver
    _, _, state = app.invert(str(path), "builtin:shapes-lcm", "float32", "anderson", prompt, 0, 0, 0, {})
    assert state["result"].settings["method"] == "anderson"


def test_the_edit_tab_edits_as_nrinv_edit_does_by_default(app, tmp_path):
    """builtin:shapes edits from an inversion of its own (``edit_steps`` x ``edit_iterations``, 10 x 1): the
    Edit tab regenerated from the Invert tab's 20-step, 2-iteration inversion, so its default edit was not
    ``nrinv edit``'s.  Left at the model's defaults it inverts again at the edit's settings (once), and its
    edit is ``nrinv.edit``'s pixel for pixel; an inversion whose steps the user chose is used as it is."""
    import numpy as np

    from nrinv import edit
    from nrinv.app import MODEL_DEFAULT, _display
    from nrinv.core.defaults import MODEL_KINDS
    from nrinv.shapes.editset import edit_set

    d = {kind: d for kind, _, d in MODEL_KINDS}["shapes"]
    assert (d.edit_steps, d.edit_iterations) != (d.num_inference_steps, d.max_iterations)  # else this shows nothing
    item = edit_set(1, seed=1)[0]
    path = tmp_path / "item.png"
    Image.fromarray(item["source_image"]).save(path)
    source, target = item["source_caption"], item["target_caption"]
    _, _, state = app.invert(str(path), "builtin:shapes", "float32", MODEL_DEFAULT, source, 0, 0, 0, {})
    assert state["result"].settings["num_inference_steps"] == d.num_inference_steps
    edited, _, info = app.edit(target, d.edit_strength, d.edit_guidance, state)
    pipe = app.pipe("builtin:shapes", "float32")
    expected = _display(edit(pipe, Image.open(path).convert("RGB"), source, [target]).images[0])
    assert np.array_equal(np.asarray(edited), np.asarray(expected)), info
    assert f"edit inversion ({d.edit_steps} steps, {d.edit_steps * d.edit_iterations} network calls, made now)" in info
    again, _, info = app.edit(target, d.edit_strength, d.edit_guidance, state)  # the edit inversion is kept
    assert "cached)" in info and np.array_equal(np.asarray(again), np.asarray(edited))
    # steps chosen by the user: the Invert tab's inversion is the edit's
    _, _, state = app.invert(str(path), "builtin:shapes", "float32", MODEL_DEFAULT, source, 12, 0, 0, {})
    _, _, info = app.edit(target, d.edit_strength, d.edit_guidance, state)
    assert "from the cached inversion" in info
