"""Interactive editing on one CPU core: `python benchmarks/realtime_cpu.py [--model builtin:shapes-lcm]`.

What the app and ``nrinv edit`` do per request, on a persistent adapter (as the app keeps one), with
``torch.set_num_threads(1)``, 64x64 scenes of the shapes world: the inversion (encode + the default
solver), and an edit regenerated from the cached inversion (latent only, then decoded to a PIL image as
the app shows it), each the median of ``--repeats`` runs after a warm-up; and in the same run the bare
cost of one network call (so the numbers can be read as multiples of it).  Writes
benchmarks/results/realtime_cpu_<model>.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

import torch

from nrinv.bench.measure import median_seconds as median


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:shapes-lcm")
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--scenes", type=int, default=5)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    import nrinv
    from nrinv.core.inversion import prepare
    from nrinv.core.schedulers import draw_noise, seeded_generator
    from nrinv.shapes.editset import edit_set

    adapter = nrinv.core.adapter_for(nrinv.load_pipeline(args.model, device="cpu"))
    d = adapter.defaults
    items = edit_set(args.scenes, seed=4)
    setup = prepare(adapter, items[0]["source_caption"], size=(64, 64), num_inference_steps=d.num_inference_steps)
    step = setup.schedule.steps[len(setup.schedule) // 2]
    z = draw_noise(adapter.latent_shape(64, 64), seeded_generator(0), device="cpu", dtype=torch.float32)
    with torch.no_grad():
        call = median(lambda: adapter.denoise(step.input_scale * z, step.timestep, setup.cond), args.repeats)

    rows = []
    for item in items:
        image, source, target = item["source_image"], item["source_caption"], item["target_caption"]
        # the inversion an edit uses: the model's edit method (e.g. edit_friendly), else its default
        invert = median(lambda: nrinv.invert(adapter, image, source, method=d.edit_method), args.repeats)
        inv = nrinv.invert(adapter, image, source, method=d.edit_method)
        edit_kw = dict(strength=d.edit_strength, edit_guidance_scale=d.edit_guidance,
                       guide_from_source=d.guide_from_source,
                       mask_threshold=d.mask_threshold)
        latent = median(lambda: nrinv.regenerate(inv, target, output_type="latent", **edit_kw), args.repeats)
        shown = median(lambda: nrinv.regenerate(inv, target, output_type="pil", **edit_kw), args.repeats)
        rows.append({"item": item["target_caption"], "invert_s": invert, "nfe": inv.nfe, "edit_latent_s": latent,
                     "edit_shown_s": shown})
        print(f"invert {invert * 1e3:.1f} ms ({inv.nfe} calls); edit {latent * 1e3:.1f} ms, "
              f"shown {shown * 1e3:.1f} ms", flush=True)
    result = {
        "model": args.model, "kind": d.kind, "edit_method": d.edit_method, "threads": torch.get_num_threads(),
        "processor": platform.processor(),
        "torch": torch.__version__, "network_call_s": call, "repeats": args.repeats,
        "median_invert_s": statistics.median(r["invert_s"] for r in rows),
        "median_edit_latent_s": statistics.median(r["edit_latent_s"] for r in rows),
        "median_edit_shown_s": statistics.median(r["edit_shown_s"] for r in rows), "rows": rows,
    }
    print(f"one network call {call * 1e3:.1f} ms; median inversion {result['median_invert_s'] * 1e3:.1f} ms; "
          f"median edit {result['median_edit_latent_s'] * 1e3:.1f} ms ({result['median_edit_shown_s'] * 1e3:.1f} ms "
          "decoded to an image)")
    out = Path(__file__).resolve().parent / "results" / f"realtime_cpu_{args.model.split(':')[-1]}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
