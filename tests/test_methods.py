"""One registry of inversion methods (``core/methods.py``): every caller reads its facts, every method it
lists can be run where it says, and listing it needs no torch."""
import subprocess
import sys

import pytest
import torch

import nrinv
from nrinv.core.methods import METHODS, SOLVER, TRAJECTORY, get_method
from nrinv.errors import InputError


def test_every_entry_resolves_and_its_options_round_trip():
    for name, method in METHODS.items():
        assert callable(method.fn), name
        options = method.options()
        assert method.options.from_dict(options.to_dict()) == options
        assert method.calls_per_iteration() >= 1
        assert method.kind in (SOLVER, TRAJECTORY)
    with pytest.raises(InputError, match="choose one of: .*edit_friendly"):
        get_method("bogus")


def test_nrinv_methods_lists_every_method_without_importing_torch():
    code = ("import sys; from nrinv.cli import main; rc = main(['methods']); "
            "print('TORCH', 'torch' in sys.modules); sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for name in METHODS:
        assert f"\n{name} " in "\n" + out.stdout or out.stdout.startswith(name), name
    assert "TORCH False" in out.stdout


def test_nrinv_help_imports_no_torch():
    code = ("import sys\nfrom nrinv.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "for sub in ('invert', 'edit', 'batch', 'bench', 'app', 'demo', 'train-inverter'):\n"
            "    main([sub, '--help'])\nprint('TORCH', 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "TORCH False" in out.stdout


def test_a_trajectory_method_inverts_in_a_batch_as_alone(tiny):
    """``invert_batch(method="edit_friendly")`` said "unknown method"; now each image gets what it gets alone
    (a trajectory of its own), regenerated through its own pipeline_kwargs."""
    pipe = tiny("lcm")
    images = [torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    batch = nrinv.invert_batch(pipe, images, ["a cat", "a dog"], method="edit_friendly", num_inference_steps=4)
    for image, prompt, got in zip(images, ["a cat", "a dog"], batch):
        alone = nrinv.invert(pipe, image, prompt, method="edit_friendly", num_inference_steps=4)
        assert got.settings["method"] == "edit_friendly"
        assert torch.allclose(got.scheduler_latents, alone.scheduler_latents, atol=1e-6)


def test_a_baseline_is_refused_by_invert_in_one_line_and_run_by_the_bench(tiny):
    from nrinv.bench.harness import budgets, parse_method

    baselines = [n for n, m in METHODS.items() if not m.invert]
    assert baselines
    for name in baselines:
        with pytest.raises(InputError, match="baseline"):
            nrinv.invert(tiny("sd"), torch.zeros(1, 3, 32, 32), "x", method=name)
        assert parse_method(name) == (name, {})
        assert budgets(name, (1, 2, 3)) == (1,)
