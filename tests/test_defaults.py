"""Defaults live in one registry keyed by what the model is; loading is quiet and changes nothing."""
import inspect
import json
import shutil
import subprocess
import sys

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
    assert nrinv.edit_defaults(pipe) == {"strength": 0.6, "edit_guidance_scale": 3.0, "guide_from_source": False,
                                         "mask_threshold": 0.5, "keep_object": True}
    assert (d.edit_steps, d.edit_iterations, d.mask_paste) == (10, 1, True)
    assert (d.background_edit_strength, d.background_edit_guidance, d.move_threshold) == (0.5, 2.0, 0.05)
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


def test_auto_dtype_is_the_family_row_float32_for_the_builtin_models_bfloat16_when_unknown():
    """dtype="auto" on a GPU: each family's half precision from its adapter class; the built-in models
    stay float32 (their figures are float32); a pipeline class that cannot be read (a hub id offline)
    gets bfloat16, which no family overflows (float16 does in Flux)."""
    from nrinv.core.adapters import FAMILIES
    from nrinv.loading import resolve_dtype

    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # only the device's type is read: no GPU needed
    assert resolve_dtype("auto", cuda, "FluxPipeline") == torch.bfloat16
    assert resolve_dtype("auto", cuda, "StableDiffusion3Pipeline") == torch.bfloat16
    assert resolve_dtype("auto", cuda, "StableDiffusionXLPipeline") == torch.float16
    assert resolve_dtype("auto", cuda, "") == torch.bfloat16  # was float16: a Flux read offline overflowed
    assert resolve_dtype("auto", cuda, "StableDiffusionPipeline", builtin=True) == torch.float32  # was float16
    assert resolve_dtype("auto", cpu, "FluxPipeline") == torch.float32
    assert resolve_dtype("float16", cuda, "FluxPipeline", builtin=True) == torch.float16  # asked for: given
    for family in FAMILIES:
        for name in family.pipelines:
            assert resolve_dtype("auto", cuda, name) == family.half_dtype


@pytest.mark.parametrize("cls, net, expected", [
    ("StableDiffusionPipeline", {"sample_size": 64}, (8, 512)),
    ("StableDiffusion3Pipeline", {"sample_size": 128, "patch_size": 2}, (16, 1024)),
    ("FluxPipeline", {"patch_size": 1}, (16, 1024)),  # packed 2x2 latents; no sample_size: the pipeline's 128
])
def test_model_geometry_reads_the_family_row_from_configs_alone(tmp_path, cls, net, expected):
    folder = tmp_path / cls
    (folder / "vae").mkdir(parents=True)
    (folder / ("unet" if "3" not in cls and "Flux" not in cls else "transformer")).mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": cls}))
    (folder / "vae" / "config.json").write_text(json.dumps({"block_out_channels": [128, 256, 512, 512]}))
    net_dir = folder / ("unet" if (folder / "unet").is_dir() else "transformer")
    (net_dir / "config.json").write_text(json.dumps(net))
    from nrinv.loading import model_geometry

    assert model_geometry(str(folder)) == {"multiple": expected[0], "native": (expected[1], expected[1])}


@pytest.mark.parametrize("kind", ["sd", "sd3", "flux"])
def test_adapters_take_their_geometry_from_the_same_row(tiny, kind):
    adapter = nrinv.core.adapter_for(tiny(kind))
    multiple, native = type(adapter).geometry(adapter.pipe.vae.config, adapter.network.config,
                                              getattr(adapter.pipe, "default_sample_size", None))
    assert (adapter.size_multiple, adapter.default_size()) == (multiple, (native, native))
    patch = adapter.network.config.get("patch_size", 1)
    assert adapter.size_multiple == {"sd": 2, "sd3": 2 * patch, "flux": 2}[kind]  # the tiny VAEs' factors: 2, 2, 1
