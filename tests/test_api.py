"""The inversion's parameters are declared once (``InversionOptions``) and every entry point takes all
of them, with the same names, defaults and meaning: a signature that drops or renames one fails here."""
import dataclasses
import inspect
import json

import pytest
import torch

import nrinv
from nrinv.core import inversion as engine
from nrinv.core.inversion import InversionOptions

#: every public function that inverts an image
ENTRY_POINTS = [nrinv.invert, nrinv.invert_batch, nrinv.edit, nrinv.interpolate, nrinv.seed_from_images,
                nrinv.adjust_encoding, engine.invert_tensor, engine.invert_tensor_batch]
#: old names with another meaning; none may come back
RETIRED = {"inversion_guidance", "size", "decode", "latent", "torch_dtype"}


@pytest.mark.parametrize("fn", ENTRY_POINTS, ids=lambda f: f"{f.__module__}.{f.__name__}")
def test_every_entry_point_takes_every_inversion_parameter(fn):
    params = inspect.signature(fn).parameters
    for f in dataclasses.fields(InversionOptions):
        assert f.name in params, f"{fn.__name__} lacks {f.name}"
        p = params[f.name]
        assert (p.kind, p.default) == (inspect.Parameter.KEYWORD_ONLY, f.default), (fn.__name__, f.name)
    assert params["inversion"].default is None
    assert not RETIRED & set(params), (fn.__name__, RETIRED & set(params))


def test_writing_an_inversion_parameter_by_hand_is_refused():
    def invert(pipe, *, inversion, method=None):  # the drift this declaration prevents
        return inversion

    with pytest.raises(TypeError, match="method"):
        engine.inversion_parameters(invert)


def test_flat_keywords_and_the_options_object_are_one_parameter_set(tiny, astronaut32):
    pipe = tiny("sd")
    kw = dict(method="gnri", num_inference_steps=3, guidance_scale=2.0, max_iterations=2, warm_start=False, seed=4)
    flat = nrinv.invert(pipe, astronaut32, "a photo of a cat", **kw)
    boxed = nrinv.invert(pipe, astronaut32, "a photo of a cat", inversion=InversionOptions(**kw))
    # a flat keyword overrides the object's field
    mixed = nrinv.invert(pipe, astronaut32, "a photo of a cat", inversion=InversionOptions(**dict(kw, method="ddim")),
                         method="gnri")
    assert torch.equal(flat.scheduler_latents, boxed.scheduler_latents)
    assert torch.equal(flat.scheduler_latents, mixed.scheduler_latents)
    assert (flat.settings["method"], flat.settings["guidance_scale"], flat.nfe) == ("gnri", 2.0, 6)
    with pytest.raises(ValueError, match="unknown option"):
        InversionOptions.from_dict({"inversion_guidance": 2.0})
    generator = torch.Generator().manual_seed(5)
    torch.randn(3, generator=generator)  # advanced past its seed: the state, not the seed, must survive
    json_ready = InversionOptions(generator=generator, options={"lam": 0.0}).to_dict()
    assert json.loads(json.dumps(json_ready)) == json_ready and json_ready["options"] == {"lam": 0.0}
    assert json_ready["generator"]["device"] == "cpu" and json_ready["generator"]["initial_seed"] == 5
    back = InversionOptions.from_dict(json.loads(json.dumps(json_ready)))
    assert back.generator is not generator and back.options == {"lam": 0.0}
    assert torch.equal(torch.randn(4, generator=back.generator), torch.randn(4, generator=generator))
    assert InversionOptions.from_dict(back.to_dict()).to_dict() == back.to_dict()


def test_workflows_invert_with_the_same_parameters_as_invert(tiny, astronaut32):
    """``edit`` (which lacked warm_start) and ``interpolate`` (which lacked negative_prompt) pass the whole
    set on: their inversion is the one ``invert`` makes with the same keywords."""
    pipe = tiny("sd")
    kw = dict(num_inference_steps=3, guidance_scale=3.0, negative_prompt="a blurry photo", max_iterations=2,
              warm_start=True, seed=1)
    alone = nrinv.invert(pipe, astronaut32, "a photo of a cat", **kw)
    edited = nrinv.edit(pipe, astronaut32, "a photo of a cat", "a photo of a dog", output_type="latent", **kw)
    frames = nrinv.interpolate(pipe, astronaut32, astronaut32, "a photo of a cat", n=1, output_type="latent", **kw)
    assert alone.settings["warm_start"] is not None  # forced on despite the guidance
    for inv in (edited.inversion, frames.inversions[0]):
        assert torch.equal(inv.scheduler_latents, alone.scheduler_latents)
        assert inv.settings["warm_start"] == alone.settings["warm_start"]
        assert inv.settings["negative_prompt"] == "a blurry photo"
    assert edited.settings["guidance_scale"] == 3.0 and "edit_guidance_scale" in edited.settings


def test_the_cli_flags_are_the_parameter_set():
    """Each subcommand that inverts has every flag of the set, read back into one ``InversionOptions``."""
    from nrinv.cli.main import build_parser
    from nrinv.cli.common import inversion_args

    flags = ["--method", "gnri", "--iterations", "3", "--option", "lam=0.0", "--steps", "4", "--guidance", "2.5",
             "--negative-prompt", "blurry", "--warm-start", "linear", "--seed", "7"]
    expected = InversionOptions(method="gnri", num_inference_steps=4, guidance_scale=2.5, negative_prompt="blurry",
                                max_iterations=3, options={"lam": 0.0}, warm_start="linear", seed=7)
    parser = build_parser()
    for command in (["invert", "x.png", "--prompt", "p"], ["invert-dir", "d", "-o", "o", "--prompt", "p"],
                    ["edit", "x.png", "--source", "p", "--target", "q"], ["interpolate", "a", "b", "--prompt", "p",
                                                                            "-o", "s.png"],
                    ["seed", "x.png", "--prompt", "p", "-o", "g.png"]):
        assert inversion_args(parser.parse_args(command + flags)) == expected, command[0]


def test_public_names_are_user_verbs_and_results_each_with_one_meaning():
    """``nrinv`` exports the verbs and their results; the engine lives in ``nrinv.core``; no function name
    is defined twice in the package (two ``check_size`` / ``load_pipeline`` / ``invert`` with different
    contracts were)."""
    import ast
    from pathlib import Path

    import nrinv.core

    assert set(nrinv.__all__) == {
        "__version__", "load_pipeline", "invert", "invert_batch", "reconstruct", "edit", "regenerate", "interpolate",
        "seed_from_images", "adjust_encoding", "model_defaults", "edit_defaults", "InversionOptions",
        "InversionResult", "ReconstructionOutput", "EditResult", "InterpolationResult", "SeedResult", "Status",
        "InputError", "train_inverter"}
    for name in ("prepare", "sample", "Setup", "Problem", "SOLVERS", "adapter_for", "DEFAULT_METHOD"):
        assert not hasattr(nrinv, name), name
    assert not set(nrinv.__all__) & set(nrinv.core.__all__) - {"InversionOptions", "InversionResult", "Status",
                                                                "model_defaults"}
    src = Path(nrinv.__file__).parent
    where: dict[str, list[str]] = {}
    for path in src.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                where.setdefault(node.name, []).append(str(path.relative_to(src)))
    for name in ("invert", "invert_batch", "reconstruct", "load_pipeline", "check_size"):
        assert len(where.get(name, [])) <= 1, (name, where[name])


def test_the_per_step_callback_traces_the_solve_with_real_values(tiny, astronaut32):
    """``callback(info)`` after each step: the latents it sees are the trajectory, the NFE it counts adds up
    to the result's, its residual is each step's last; reconstruct and edit report their sampling steps."""
    pipe = tiny("sd")
    kw = dict(num_inference_steps=4, max_iterations=3, method="anderson", seed=0)
    seen = []
    res = nrinv.invert(pipe, astronaut32, "a photo of a cat", callback=seen.append, **kw)
    assert [s["i"] for s in seen] == [3, 2, 1, 0] and {s["phase"] for s in seen} == {"invert"}
    assert seen[-1]["nfe"] == res.nfe and [b["nfe"] - a["nfe"] for a, b in zip([{"nfe": 0}] + seen, seen)] == \
        [res.steps[s["i"]].nfe for s in seen]
    for s in seen:
        assert torch.equal(s["x"], res.trajectory[s["i"]])
        assert float(s["residual"]) == res.steps[s["i"]].residual_norms[-1]
        assert s["timestep"] == res.setup.schedule.steps[s["i"]].timestep
    assert torch.equal(seen[-1]["x"], res.scheduler_latents)

    sampled = []
    rec = nrinv.reconstruct(pipe, res, output_type="latent", callback=sampled.append)
    assert [s["i"] for s in sampled] == [0, 1, 2, 3] and [s["nfe"] for s in sampled] == [1, 2, 3, 4]
    assert torch.equal(sampled[-1]["x"], rec.latents) and all(s["residual"] is None for s in sampled)

    steps = []
    out = nrinv.edit(pipe, astronaut32, "a photo of a cat", ["a photo of a dog", "a red cat"], strength=0.5,
                     output_type="latent", callback=steps.append, **kw)
    inverting = [s for s in steps if s["phase"] == "invert"]
    regenerating = [s for s in steps if s["phase"] == "sample"]
    assert len(inverting) == 4 and inverting[-1]["nfe"] == out.inversion.nfe
    assert [(s["target"], s["i"]) for s in regenerating] == [(0, 2), (0, 3), (1, 2), (1, 3)]
    assert regenerating[-1]["nfe"] == out.inversion.nfe + 4
    assert torch.equal(regenerating[1]["x"], out.latents[0]) and torch.equal(regenerating[-1]["x"], out.latents[1])
    masked = []
    local = nrinv.edit(pipe, astronaut32, "a photo of a cat", "a photo of a dog", strength=0.5, mask_threshold=0.3,
                       output_type="latent", callback=masked.append, **kw)
    last = [s for s in masked if s["phase"] == "sample"][-1]
    assert torch.equal(last["x"], local.latents[0]) and last["nfe"] == local.inversion.nfe + 2 + 2  # + the mask's 2
