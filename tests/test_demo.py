"""`nrinv demo` end to end on the shipped built-in model (fast settings)."""
import json

from nrinv.cli import main


def test_demo_writes_sheet_and_judged_summary(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--iterations", "1", "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (out / "demo.png").stat().st_size > 1000
    rec = summary["reconstruction"]
    # inversion + regeneration lands near what the VAE itself gives back
    assert rec["psnr_db"] >= rec["vae_ceiling_psnr_db"] - 3.0
    assert rec["status"] in ("converged", "max_iterations")
    # the judge reads the input scene back, and the reconstruction keeps it
    assert all(v["ok"] for v in summary["input_judge"].values())
    assert all(v["ok"] for v in rec["judge"].values())
    assert [e["changed"] for e in summary["edits"]] == ["color", "shape"]
    for e in summary["edits"]:
        assert e["target_caption"] != summary["source_caption"]
        assert set(e["judge"]) == {"shape", "color", "size", "position", "background"}
