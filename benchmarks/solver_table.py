"""Reconstruction error of every solver at 1, 2 and 4 iterations per step, on the analytic oracle
and on the tiny SD pipeline (random weights, smoothed).  `python benchmarks/solver_table.py`

Oracle: full 4-step inversion of a sampled latent (DDIM eps and Euler-ancestral schedules), relative
error of the recovered noise.  Tiny SD: 10 DDIM steps, the astronaut photo at 32x32, relative error
of the latent that the stock pipeline regenerates from the inverted noise.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402
from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler  # noqa: E402
from PIL import Image  # noqa: E402
from skimage import data  # noqa: E402

import nrinv  # noqa: E402
from nrinv.testing.oracle import OracleAdapter  # noqa: E402
from nrinv.testing import tiny_pipeline  # noqa: E402

torch.set_num_threads(1)
SD = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
ITERS = (1, 2, 4)


def oracle_rows(name, sched):
    adapter = OracleAdapter(sched, (1, 4, 4, 4), num_inference_steps=4)
    setup = nrinv.core.inversion.prepare(adapter, "", size=(4, 4), seed=0)
    z_T = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1)) * setup.schedule.init_noise_sigma
    x = nrinv.core.sample(setup, z_T)
    for method in nrinv.core.SOLVERS:
        cells = []
        for it in ITERS:
            if method == "ddim" and it > 1:
                cells.append("")
                continue
            r = nrinv.invert(adapter, image_latents=x, method=method, max_iterations=None if method == "ddim" else it,
                             options={"rtol": 0.0, "atol": 0.0}, progress=False)
            cells.append(f"{float((r.scheduler_latents - z_T).norm() / z_T.norm()):.1e} ({r.nfe})")
        yield f"| oracle {name} | {method} | " + " | ".join(cells) + " |"


def sd_rows():
    pipe = tiny_pipeline("sd")
    img = Image.fromarray(data.astronaut()).resize((32, 32), Image.LANCZOS)
    for method in nrinv.core.SOLVERS:
        cells = []
        for it in ITERS:
            if method == "ddim" and it > 1:
                cells.append("")
                continue
            r = nrinv.invert(pipe, img, "a photo of a cat", method=method, num_inference_steps=10,
                             max_iterations=None if method == "ddim" else it,
                             options={"rtol": 0.0, "atol": 0.0}, progress=False)
            out = pipe("a photo of a cat", num_inference_steps=10, guidance_scale=1.0, latents=r.latents,
                       height=32, width=32, output_type="latent").images
            cells.append(f"{float((out - r.encoded).norm() / r.encoded.norm()):.1e} ({r.nfe})")
        yield f"| tiny SD, DDIM 10 steps | {method} | " + " | ".join(cells) + " |"


if __name__ == "__main__":
    print("| problem | method | 1 iteration (NFE) | 2 iterations (NFE) | 4 iterations (NFE) |")
    print("|---|---|---|---|---|")
    for row in oracle_rows("DDIM eps, 4 steps", DDIMScheduler(**SD, clip_sample=False, set_alpha_to_one=False,
                                                                steps_offset=1)):
        print(row)
    for row in oracle_rows("Euler-a, 4 steps", EulerAncestralDiscreteScheduler(**SD, timestep_spacing="trailing")):
        print(row)
    for row in sd_rows():
        print(row)
