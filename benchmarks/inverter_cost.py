"""What the learned initial guess costs: `python benchmarks/inverter_cost.py [--sdxl]`.

On this CPU, 1 thread, builtin:shapes-lcm at 64x64, batch 1: the median time of one network call and of
one inverter prediction (medians of 30, measured in one run, so the ratio is what to read), and their
FLOPs counted by ``torch.utils.flop_counter``.  The training record of the shipped inverter
(``inverter.json``) gives the measured cost per update and per generated trajectory step.

``--sdxl``: the FLOPs of one SDXL(-Turbo) UNet call at 512x512 (latent 64x64, batch 1), counted on the
meta device (no weights, nothing run), to turn the measured tiny-size costs into CPU terms for a
SDXL-Turbo inverter: a training update at batch B costs B frozen network calls forward and backward
(through the input) plus the inverter's own, and generating a trajectory costs one call per step.
"""
from __future__ import annotations

import argparse
import json

import torch
from torch.utils.flop_counter import FlopCounterMode

from nrinv.bench.measure import median_seconds


def _median_time(fn, repeats: int = 30) -> float:
    return median_seconds(fn, repeats, warmup=3)


def _flops(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def sdxl_unet_flops() -> int:
    from diffusers import UNet2DConditionModel

    config = dict(sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280),
                  layers_per_block=2,
                  down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                  transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
                  use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                  projection_class_embeddings_input_dim=2816)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
        x, t = torch.randn(1, 4, 64, 64), torch.tensor([999.0])
        ehs = torch.randn(1, 77, 2048)
        added = {"text_embeds": torch.randn(1, 1280), "time_ids": torch.randn(1, 6)}
        with torch.no_grad():
            return _flops(lambda: unet(x, t, ehs, added_cond_kwargs=added))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sdxl", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    import nrinv
    from nrinv.core.adapters import adapter_for
    from nrinv.core.inversion import prepare
    from nrinv.core.inverter import load_inverter

    pipe = nrinv.load_pipeline("builtin:shapes-lcm", device="cpu")
    adapter = adapter_for(pipe)
    guess = load_inverter(adapter, strict=True)
    setup = prepare(adapter, "a large red star on the left, blue striped background", size=(64, 64))
    step = setup.schedule.steps[1]
    z = torch.randn(1, 4, 16, 16)
    implied = [(259.0, torch.randn(1, 4, 16, 16)), (499.0, torch.randn(1, 4, 16, 16))]
    with torch.no_grad():
        call = lambda: adapter.denoise(z, step.timestep, setup.cond)  # noqa: E731
        predict = lambda: guess.predict(z, implied, step.t, setup.guidance_scale, setup.cond)  # noqa: E731
        out = {"network_call_s": _median_time(call), "inverter_s": _median_time(predict),
               "network_call_flops": _flops(call), "inverter_flops": _flops(predict)}
    out["inverter_per_call"] = out["inverter_s"] / out["network_call_s"]
    training = guess.info["training"]
    out["training"] = {k: training[k] for k in ("elapsed_s", "updates", "trajectories", "update_s_per_update",
                                                "generation_s_per_trajectory_step", "batch_size", "threads")}
    if args.sdxl:
        out["sdxl_unet_flops_512"] = sdxl_unet_flops()
        # this CPU's throughput, 1 thread: on the tiny network (overhead-bound, a pessimistic bound) and on a
        # dense 1024x1024 float32 matmul (what a network of SDXL's size is bound by, an optimistic bound)
        tiny_rate = out["network_call_flops"] / out["network_call_s"]
        a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
        dense_rate = 2 * 1024**3 / _median_time(lambda: a @ b, 10)
        out["cpu_flops_per_s"] = {"tiny_network": tiny_rate, "dense_matmul": dense_rate}
        # per training update: batch_size examples, each one frozen call forward + backward to the input
        # (counted as 3 forward calls) plus its share of trajectory generation (1 call per example)
        per_example_calls = 3 + 1
        for name, rate in out["cpu_flops_per_s"].items():
            call_s = out["sdxl_unet_flops_512"] / rate
            update_s = training["batch_size"] * per_example_calls * call_s
            out[f"sdxl_at_{name}_rate"] = {"call_s": call_s, "update_s": update_s,
                                           "cpu_core_hours_same_updates": update_s * training["updates"] / 3600}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
