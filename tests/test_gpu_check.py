"""benchmarks/gpu_check.py: the same code as on a GPU, with scaled-down networks on the CPU (--tiny)."""
import importlib.util
import json
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_gpu_check_measures_every_method_and_writes_its_tables(tmp_path):
    threads = torch.get_num_threads()
    try:
        assert _module().main(["--tiny", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["model"] for r in results["models"]] == ["sdxl-turbo", "flux-schnell"]
    for row in results["models"]:
        assert row["kind"] in ("sdxl-turbo", "flux-schnell") and row["steps"] == 4
        by_method = {m["method"]: m for m in row["methods"]}
        assert set(by_method) == {"ddim", "fixed_point", "renoise", "gnri", "anderson"}
        assert by_method["ddim"]["nfe"] == 4 and all(by_method[m]["nfe"] == 8 for m in by_method if m != "ddim")
        assert by_method["anderson"]["default"] and all(m["status"] != "nonfinite" for m in row["methods"])
        assert all(m["eager_s"] > 0 and m["replayed_s"] > 0 and m["overhead"] > 0 for m in row["methods"])
        assert row["call_eager_s"] > 0 and row["stock_generation_s"] > 0 and row["batch8_images_per_s"] > 0
        assert row["edit_latent_s"] > 0 and row["edit_decoded_s"] >= row["edit_latent_s"] * 0.5
    table = (tmp_path / "results.md").read_text()
    assert "| anderson (default) | 8 |" in table and "## flux-schnell" in table


def test_without_a_gpu_nothing_is_estimated(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _module().main([]) == 0
    assert "no CUDA device here: nothing measured" in capsys.readouterr().out
