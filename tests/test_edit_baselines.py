"""The editing pipelines diffusers ships, built from the built-in shapes model's components (DiffEdit,
LEDITS++), their call counts, and the position / size items of the edit set."""
import numpy as np
import pytest
from PIL import Image

from nrinv.bench.baselines import (BASELINES, DiffEditSettings, LeditsSettings, count_calls, diffedit_pipeline,
                                   ledits_pipeline, run_baseline)
from nrinv.errors import InputError
from nrinv.metrics import psnr
from nrinv.shapes.editeval import judge_confident, kept_region, score_edit
from nrinv.shapes.editset import EDIT_ATTRIBUTES, GEOMETRY_ATTRIBUTES, edit_set
from nrinv.shapes.world import object_mask
from conftest import builtin




def _float(image):
    return np.asarray(image).astype(np.float64) / 255


# ------------------------------------------------------------------------------------- position / size
def test_geometry_items_are_exact_targets_of_one_changed_attribute():
    items = edit_set(6, seed=2, attributes=GEOMETRY_ATTRIBUTES)
    assert [i["changed"] for i in items] == ["position", "size"] * 3
    for item in items:
        src, tgt = item["source"].as_dict(), item["target"].as_dict()
        assert [a for a in src if src[a] != tgt[a]] == [item["changed"]]
        # the background is the source's pixel for pixel wherever neither object covers it
        region = kept_region(item)
        assert 0.5 < region.mean() < 1.0
        assert np.array_equal(item["source_image"][region], item["target_image"][region])
        # the object moved or changed size: its coverage differs
        seed = item["render_seed"]
        assert not np.allclose(object_mask(item["source"], seed), object_mask(item["target"], seed))
    # the default set is unchanged: colour -> shape -> background
    assert [i["changed"] for i in edit_set(4)] == list(EDIT_ATTRIBUTES) + ["color"]
    with pytest.raises(ValueError, match="edit attributes"):
        edit_set(2, attributes=("weight",))


@builtin
def test_geometry_scores_read_the_exact_target():
    """The exact target of a move / resize scores as a perfect edit; the unedited source fails the target."""
    items = edit_set(4, seed=2, attributes=GEOMETRY_ATTRIBUTES)
    reads = judge_confident([i["target_image"] for i in items] + [i["source_image"] for i in items])
    for item, (read, _) in zip(items, reads[:4]):
        scores = score_edit(item["target_image"], item, read)
        assert scores["target"] == 1.0 and scores["preserved"] == 1.0, (item["target_caption"], read)
        assert scores["psnr"] >= 99.0
    for item, (read, _) in zip(items, reads[4:]):
        assert score_edit(item["source_image"], item, read)["target"] == 0.0


# --------------------------------------------------------------------------------------------- baselines
@builtin
def test_diffedit_on_the_builtin_model_makes_the_edit_and_is_counted(shapes_pipe):
    """DiffEdit at inpaint strength 0.6 of 20 steps: one mask call (10 noise maps x source/target x
    guidance: 40 rows), 12 inversion calls (no guidance: 1 row) and 12 guided sampling calls (2 rows)."""
    item = edit_set(1, seed=1)[0]
    assert item["changed"] == "color"
    settings = DiffEditSettings(inpaint_strength=0.6, guidance_scale=3.0)
    image, count = run_baseline(diffedit_pipeline(shapes_pipe), "diffedit", item["source_image"],
                                item["source_caption"], item["target_caption"], settings)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert (count.calls, count.rows) == (1 + 12 + 12, 40 + 12 + 24)
    read, _ = judge_confident([image])[0]
    scores = score_edit(image, item, read)
    assert scores["target"] == 1.0 and scores["preserved"] == 1.0, read
    assert scores["preservation"] > 25.0


@builtin
def test_ledits_reconstruction_is_exact_only_at_sigma_min(shapes_pipe):
    """LEDITS++'s inversion regenerates the image (no edit prompt) up to the VAE only when its DPM-Solver
    ends at sigma_min; ending at zero adds the last step's error."""
    item = edit_set(1, seed=1)[0]
    from nrinv.core.adapters import adapter_for
    from nrinv.io.images import load_image, to_tensor

    adapter = adapter_for(shapes_pipe)
    pixels = to_tensor(load_image(item["source_image"]))
    with_vae = adapter.decode(adapter.encode(pixels), (64, 64))[0].permute(1, 2, 0).detach().numpy()
    ceiling = psnr(with_vae.astype(np.float64), _float(item["source_image"]))
    recon = {}
    for final in ("zero", "sigma_min"):
        built = ledits_pipeline(shapes_pipe, final)
        with count_calls(built.unet) as count:
            built.invert(image=Image.fromarray(item["source_image"]), source_prompt="", num_inversion_steps=20,
                         skip=0.15)
            out = built(editing_prompt=None, output_type="np").images[0]
        recon[final] = psnr(np.asarray(out, dtype=np.float64), _float(item["source_image"]))
        assert count.calls == 20 + 20  # num_inversion_steps=20 with skip 0.15: 20 calls each way
    assert recon["sigma_min"] >= ceiling - 0.1, (recon, ceiling)
    assert recon["sigma_min"] > recon["zero"] + 1.0, recon


def test_unknown_baseline_is_an_input_error():
    with pytest.raises(InputError, match="unknown baseline"):
        run_baseline(None, "pix2pix", np.zeros((8, 8, 3), np.uint8), "a", "b", LeditsSettings())
    assert set(BASELINES) == {"diffedit", "ledits++"}
