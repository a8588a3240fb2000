import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
import sys  # noqa: E402
import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from nrinv import shapes  # noqa: E402
from nrinv.shapes import world  # noqa: E402
from nrinv.shapes.editset import edit_set  # noqa: E402
from nrinv.shapes.judge import judge_accuracy, judge_batch  # noqa: E402

torch.set_num_threads(1)

MODEL_FILES = ("model_index.json", "vae", "unet", "text_encoder", "tokenizer", "scheduler")
has_model = all((shapes.MODEL_DIR / f).exists() for f in MODEL_FILES)
needs_model = pytest.mark.skipif(not has_model, reason="shapes model not trained/installed yet")


@pytest.fixture(scope="module")
def pipe():
    return shapes.stock_pipeline()


def test_render_deterministic_and_caption_roundtrip():
    for i in range(20):
        s = world.sample_scene(i)
        assert s == world.sample_scene(i)
        assert s.color != s.background_color
        a, b = world.render(s, seed=i), world.render(s, seed=i)
        assert a.dtype == np.uint8 and a.shape == (64, 64, 3)
        assert np.array_equal(a, b)
        assert world.parse_caption(s.caption()) == s.as_dict()
        assert world.Scene(**world.parse_caption(s.caption())) == s
    s = world.sample_scene(0)
    assert not np.array_equal(world.render(s, 0), world.render(s, 1))  # seed drives jitter
    other = next(c for c in world.COLOR_NAMES if c not in (s.color, s.background_color))
    assert s.replace(color=other).color == other
    with pytest.raises(ValueError):
        s.replace(color=s.background_color)


def test_vocabulary():
    assert len(world.SHAPES) >= 5 and len(world.COLORS) >= 8
    assert set(world.SIZES) == {"small", "large"}
    assert set(world.POSITIONS) == {"left", "right", "top", "bottom", "center"}
    assert "plain" in world.BACKGROUNDS and len(world.BACKGROUNDS) >= 3


def test_edit_set():
    items = edit_set(9, seed=3)
    assert [it["changed"] for it in items] == ["color", "shape", "background"] * 3
    for it in items:
        src, tgt = it["source"], it["target"]
        diff = [a for a in world.ATTRIBUTES if getattr(src, a) != getattr(tgt, a)]
        assert diff == [it["changed"]]
        assert np.array_equal(it["target_image"], world.render(tgt, it["render_seed"]))
        assert it["target_caption"] == tgt.caption()


def test_judge_accuracy_fresh_renders():
    acc = judge_accuracy(100, seed=123_456_789)  # seeds never used for training/validation
    for k, v in acc.items():
        assert v >= 0.98, (k, acc)


def test_tokenizer_one_token_per_word():
    from transformers import CLIPTokenizer

    if not has_model:
        pytest.skip("model not installed")
    tok = CLIPTokenizer.from_pretrained(str(shapes.MODEL_DIR / "tokenizer"))
    cap = "a large red triangle on the left, blue striped background"
    ids = tok(cap).input_ids
    assert len(ids) == len(cap.replace(",", " ,").split()) + 2
    for w in world.VOCAB_WORDS:
        assert len(tok(w).input_ids) == 3, w


@needs_model
def test_stock_pipeline(pipe):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    assert isinstance(pipe, StableDiffusionPipeline)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.scheduler.config.steps_offset == 1 and not pipe.scheduler.config.set_alpha_to_one
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == shapes.IMAGE_SIZE
    size = sum(f.stat().st_size for f in Path(shapes.MODEL_DIR).rglob("*") if f.is_file())
    assert size < 40 * 2**20
    meta = json.loads((shapes.MODEL_DIR / "model_index.json").read_text())
    assert meta["safety_checker"] in (None, [None, None])


@needs_model
def test_vae_ceiling_psnr(pipe):
    from nrinv.shapes.evaluate import vae_heldout_psnr

    assert vae_heldout_psnr(pipe.vae, n=16, seed0=123_000_000) >= 30.0


@needs_model
def test_short_generation_matches_caption(pipe):
    scenes = [
        world.Scene("circle", "red", "large", "center", "plain", "blue"),
        world.Scene("square", "yellow", "large", "left", "plain", "purple"),
        world.Scene("star", "white", "large", "center", "gradient", "green"),
        world.Scene("triangle", "blue", "large", "right", "plain", "orange"),
    ]
    g = torch.Generator().manual_seed(0)
    out = pipe([s.caption() for s in scenes], num_inference_steps=10, guidance_scale=shapes.DEFAULT_GUIDANCE,
               generator=g, output_type="np").images
    imgs = np.clip(np.round(out * 255), 0, 255).astype(np.uint8)
    assert imgs.shape == (4, 64, 64, 3)
    preds = judge_batch(imgs)
    hits = sum(p["shape"] == s.shape and p["color"] == s.color for p, s in zip(preds, scenes))
    assert hits >= 3, preds


@pytest.mark.slow
def test_train_script_runs(tmp_path):
    cmd = [
        sys.executable, "-m", "nrinv.shapes.train", "--out", str(tmp_path), "--threads", "1", "--pool", "128",
        "--vae-steps", "3", "--vae-batch", "4", "--decoder-steps", "3", "--unet-steps", "3", "--unet-batch", "4",
        "--grid-every", "0",
        "--eval", "0",
    ]
    subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    from diffusers import StableDiffusionPipeline

    p = StableDiffusionPipeline.from_pretrained(str(tmp_path / "model"), safety_checker=None,
                                                requires_safety_checker=False)
    assert p.unet.config.sample_size == 16


def test_preservation_is_measured_on_exactly_the_pixels_an_edit_must_keep():
    from nrinv.shapes.editeval import kept_region, region_psnr, score_edit

    for item in edit_set(6, seed=5):
        region = kept_region(item)
        assert 0 < region.sum() < 64 * 64
        read = item["target"].as_dict()
        # the exactly rendered target equals the source on the kept region (same render seed)
        assert score_edit(item["target_image"], item, read)["preservation"] == pytest.approx(100.0)
        # a change there is measured exactly: +10 on every kept pixel is PSNR 20 log10(255 / 10)
        changed = item["source_image"].astype(np.int16)
        changed[region] += 10
        changed = np.clip(changed, 0, 255).astype(np.uint8)
        exact = region_psnr(changed, item["source_image"], region)
        clipped = (item["source_image"][region].astype(int) > 245).any()
        assert clipped or exact == pytest.approx(20 * np.log10(255 / 10), abs=1e-6)
        # and a change outside it is not counted
        outside = item["source_image"].copy()
        outside[~region] = 0
        assert region_psnr(outside, item["source_image"], region) == pytest.approx(100.0)


def test_judging_a_read_only_array_gives_no_warning():
    """np.asarray of a PIL image is read-only; torch warned "The given NumPy array is not writable"."""
    import warnings

    from PIL import Image

    from nrinv.shapes import judge

    scene = shapes.sample_scene(5)  # an orange diamond, small, right, on a red striped background
    img = np.asarray(Image.fromarray(shapes.render(scene, seed=0)))
    assert not img.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        verdict = judge(img)
    assert verdict == {a: getattr(scene, a) for a in verdict}
