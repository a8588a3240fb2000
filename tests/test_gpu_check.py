"""benchmarks/gpu_check.py: the same code as on a GPU, with scaled-down networks on the CPU (--tiny)."""
import importlib.util
import json
import shutil
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


def test_builders_make_networks_on_the_device_and_schedulers_on_the_cpu():
    module = _module()
    for name in module.MODELS:  # EulerAncestralDiscreteScheduler made on a device tensor calls numpy on it
        pipe, _ = module.build(name, True, torch.device("meta"))
        assert all(v.device.type == "meta" for v in pipe.components.values() if isinstance(v, torch.nn.Module))
        assert pipe.scheduler.sigmas.device.type == "cpu"


def test_full_size_builders_and_one_network_call_on_meta(capsys):
    out = _module().meta_check(print)
    assert out["sdxl-turbo"]["output_shape"] == [1, 4, 64, 64] and out["sdxl-turbo"]["output_dtype"] == "float32"
    assert out["flux-schnell"]["output_shape"] == [1, 1024, 64]
    assert out["flux-schnell"]["encoder_hidden_states"] == [1, 512, 4096]  # 512 T5 tokens, as the real model
    # the published sizes: SDXL's UNet 2.57 B parameters, FLUX.1's transformer 11.9 B
    assert round(out["sdxl-turbo"]["network_parameters"] / 1e9, 2) == 2.57
    assert round(out["flux-schnell"]["network_parameters"] / 1e9, 1) == 11.9
    assert {c: v[1] for c, v in out["flux-schnell"]["components"].items()}["transformer"] == "bfloat16"
    assert "built on meta" in capsys.readouterr().out


def test_one_model_failing_keeps_the_others_results(monkeypatch, capsys):
    module = _module()
    real = module.check_model

    def check_model(name, *args):
        if name == "sdxl-turbo":
            raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore")
        return real(name, *args)
    monkeypatch.setattr(module, "check_model", check_model)
    threads = torch.get_num_threads()
    try:
        assert module.main(["--tiny", "--models", "sdxl-turbo,flux-schnell"]) == 1
    finally:
        torch.set_num_threads(threads)
    wrote = capsys.readouterr().out.split("wrote ")[-1].split("/results.json")[0]
    tmp_path = Path(wrote)  # by default --tiny writes to a temporary folder, not into the source tree
    assert tmp_path.is_dir() and SCRIPT.parents[1] not in tmp_path.parents
    rows = json.loads((tmp_path / "results.json").read_text())["models"]
    assert rows[0] == {"model": "sdxl-turbo", "error": "RuntimeError: CUDA error: an illegal memory access was "
                                                       "encountered"}
    assert rows[1]["model"] == "flux-schnell" and rows[1]["max_sequence_length"] == 16
    assert "Failed: RuntimeError" in (tmp_path / "results.md").read_text()
    shutil.rmtree(tmp_path)


def test_tiny_gpu_check_with_graphs_forced_through_a_stand_in_capture_releases_each_model(monkeypatch, tmp_path):
    """The graph-replayed path of gpu_check on the CPU; each model's graphs are released before the next model
    is built, even when its pipeline sits in a reference cycle (freed only by the cycle collector)."""
    import gc

    from cuda_rules import force_graphs

    module = _module()
    made = force_graphs(monkeypatch)
    build, seen_at_build = module.build, []

    def cyclic_build(name, tiny, device):
        seen_at_build.append(sum(len(g.entries) for g in made))  # graphs of earlier models still held
        pipe, size = build(name, tiny, device)
        pipe._cycle = [pipe]  # a reference cycle: the pipeline outlives its last name
        return pipe, size
    monkeypatch.setattr(module, "build", cyclic_build)
    threads = torch.get_num_threads()
    gc.disable()
    try:
        assert module.main(["--tiny", "--out", str(tmp_path)]) == 0
    finally:
        gc.enable()
        torch.set_num_threads(threads)
    rows = json.loads((tmp_path / "results.json").read_text())["models"]
    for row in rows:
        g = row["graphs"]
        assert row["cuda_graphs"] and g["captures"] >= 1 and g["replays"] > 0 and not g["fallbacks"], g
        assert row["batch8_replayed"]
    assert len(made) == 2 and seen_at_build == [0, 0]
    assert all(not g.entries for g in made)  # released with the run, not left to the cycle collector


def test_a_sticky_cuda_error_loses_no_later_model(monkeypatch, tmp_path):
    """After a fatal CUDA error every CUDA call of the process fails (the cleanup after the model too): the
    next models run in processes of their own."""
    module = _module()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "a simulated GPU")
    sticky = []

    def cuda_call(*args, **kwargs):
        if sticky:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
    for name in ("empty_cache", "synchronize"):
        monkeypatch.setattr(torch.cuda, name, cuda_call)

    def check_model(name, *args):
        if sticky:
            raise AssertionError(f"{name} measured in the broken process")
        sticky.append(name)
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nCompile with TORCH_USE_CUDA_DSA")
    isolated = []
    monkeypatch.setattr(module, "check_model", check_model)
    monkeypatch.setattr(module, "run_isolated", lambda name, *a: isolated.append(name) or
                        {"model": name, "error": "stub"}, raising=False)
    assert module.main(["--skip-tests", "--out", str(tmp_path)]) == 1
    rows = json.loads((tmp_path / "results.json").read_text())["models"]
    assert rows[0] == {"model": "sdxl-turbo", "error": "RuntimeError: CUDA error: an illegal memory access was "
                                                       "encountered"}
    assert isolated == ["flux-schnell"] and rows[1]["model"] == "flux-schnell"


def test_a_model_runs_in_a_process_of_its_own(capfd):
    row = _module().run_isolated("flux-schnell", True, 1, print)
    assert row["model"] == "flux-schnell" and row["process"] == "own" and "error" not in row
    assert row["max_sequence_length"] == 16 and {m["method"] for m in row["methods"]} >= {"ddim", "anderson"}
