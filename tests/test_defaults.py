"""Defaults live in one registry keyed by what the model is; loading is quiet and changes nothing."""
import inspect
import json
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

import nrinv
from nrinv.core.defaults import SHAPES_UNET_FINGERPRINT, model_defaults
from nrinv.shapes import MODEL_DIR

needs_builtin = pytest.mark.skipif(not (MODEL_DIR / "model_index.json").is_file(), reason="built-in model missing")


@needs_builtin
def test_the_shipped_model_matches_its_fingerprint():
    config = json.loads((MODEL_DIR / "unet" / "config.json").read_text())
    for key, value in SHAPES_UNET_FINGERPRINT.items():
        assert (list(config[key]) if isinstance(config[key], list) else config[key]) == value, key


@needs_builtin
def test_builtin_defaults_follow_the_weights_not_the_name(tmp_path):
    copy = tmp_path / "my-copy-of-shapes"
    shutil.copytree(MODEL_DIR, copy, ignore=shutil.ignore_patterns("judge.safetensors"))
    pipe = nrinv.load_pipeline(str(copy), device="cpu")
    d = model_defaults(pipe)
    assert (d.kind, d.num_inference_steps, d.guidance_scale) == ("shapes", 20, 1.0)
    assert nrinv.edit_defaults(pipe) == {"strength": 0.6, "edit_guidance_scale": 2.0, "guide_from_source": True,
                                         "mask_threshold": None}
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    res = nrinv.invert(pipe, image, "a large red star on the left, blue plain background")
    assert res.settings["num_inference_steps"] == 20 and res.nfe == 40  # 20 steps x 2 iterations


def test_kinds_of_the_test_pipelines(tiny):
    assert model_defaults(tiny("sdxl")).kind == "sdxl-turbo"  # Euler-ancestral, trailing spacing
    assert (model_defaults(tiny("sdxl")).num_inference_steps, model_defaults(tiny("sdxl")).guidance_scale) == (4, 0.0)
    assert model_defaults(tiny("lcm")).kind == "lcm"
    assert model_defaults(tiny("flux")).kind == "flux-schnell"
    assert model_defaults(tiny("sd3")).kind == "sd3"
    assert model_defaults(tiny("sd")).kind == "sd"


@needs_builtin
def test_loading_writes_nothing_onto_the_pipeline():
    from diffusers import DiffusionPipeline

    ours = nrinv.load_pipeline("builtin:shapes", device="cpu")
    stock = DiffusionPipeline.from_pretrained(str(MODEL_DIR))
    assert sorted(vars(ours)) == sorted(vars(stock))
    assert not [k for k in vars(ours) if "nrinv" in k]
    nrinv.invert(ours, torch.rand(1, 3, 64, 64), "a small red circle in the center, blue plain background",
                 num_inference_steps=2)
    assert sorted(vars(ours)) == sorted(vars(stock))  # nor does using it


@needs_builtin
def test_import_and_load_print_nothing_and_use_no_deprecated_names():
    code = "import nrinv; pipe = nrinv.load_pipeline('builtin:shapes'); print(type(pipe).__name__, end='')"
    done = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "StableDiffusionPipeline" and done.stderr == ""


def test_removed_aliases_are_gone(tiny, astronaut32):
    """The package was never released: the old spellings are removed, not kept with warnings."""
    pipe = tiny("sd")
    res = nrinv.invert(pipe, astronaut32, "a photo of a cat", num_inference_steps=2)
    for obj, name in [(res, "latent"), (res, "pipeline_latents"), (nrinv.reconstruct(pipe, res), "latent"),
                      (nrinv.reconstruct(pipe, res), "image")]:
        assert not hasattr(obj, name), name
    for fn, kw in [(nrinv.invert, {"size": (32, 32)}), (nrinv.invert, {"latent": res.encoded}),
                   (nrinv.reconstruct, {"decode": False}), (nrinv.load_pipeline, {"torch_dtype": None})]:
        assert not {*kw} & {*inspect.signature(fn).parameters}, (fn.__name__, kw)
    assert "frames" not in vars(nrinv.InterpolationResult)
