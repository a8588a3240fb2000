"""Rare-concept seeding on the built-in model: `python benchmarks/rare_concepts.py`.

A prompt the model cannot read ("an object", outside its vocabulary) stands in for a concept that
text cannot describe. For 10 colour+shape concepts, 3 example renders each: `nrinv.seed_from_images`
vs plain generation from fresh noise with the same prompt (the model's steps and the guidance seeding
uses: 20 steps / 2 for builtin:shapes, 4 steps / 6 for builtin:shapes-lcm); the judge counts samples
with the examples' colour and shape.  `python benchmarks/rare_concepts.py [MODEL]`.
"""
import sys

import numpy as np
import torch

import nrinv
from nrinv.shapes.editset import concept_examples
from nrinv.shapes.judge import judge_batch

torch.set_num_threads(2)
MODEL = sys.argv[1] if len(sys.argv) > 1 else "builtin:shapes"
pipe = nrinv.load_pipeline(MODEL, device="cpu")
rng = np.random.default_rng(0)
prompt = "an object"
seeded_hits, plain_hits, n_s, n_p = 0, 0, 0, 0
k = 0
for c in range(10):
    base, exs = concept_examples(c)
    res = nrinv.seed_from_images(pipe, exs, prompt, n_samples=4, seed=c, progress=False)
    imgs = np.stack([np.asarray(im) for im in res.images])
    reads = judge_batch(imgs)
    seeded_hits += sum(r["shape"] == base.shape and r["color"] == base.color for r in reads)
    n_s += len(reads)
    d = nrinv.model_defaults(pipe)  # plain generation at the guidance seed_from_images samples with
    out = pipe([prompt] * 4, num_inference_steps=d.num_inference_steps, guidance_scale=d.edit_guidance,
               generator=torch.Generator().manual_seed(c), output_type="np").images
    reads = judge_batch((out * 255).round().astype(np.uint8))
    plain_hits += sum(r["shape"] == base.shape and r["color"] == base.color for r in reads)
    n_p += len(reads)
    print(c, base.color, base.shape, seeded_hits, n_s, plain_hits, n_p, flush=True)
print(f"seeded: {seeded_hits}/{n_s} samples show the examples' colour+shape; plain generation: {plain_hits}/{n_p}")
