"""How far `seed_from_images` perturbs its samples: `python benchmarks/seed_spread.py`.

The setting of benchmarks/rare_concepts.py (10 colour+shape concepts, 3 example renders each, a
prompt the model cannot read, "an object", standing in for a concept text cannot describe), at
several spreads.  Per spread: how many samples the judge reads with the examples' colour and shape
(fidelity), and how different the samples of one concept are from each other (variety: mean
absolute pixel difference between pairs of samples, 0-255, the centroid sample excluded).
Writes benchmarks/results/seed_spread.json.
"""
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch

import nrinv
from nrinv.shapes.editset import concept_examples
from nrinv.shapes.judge import judge_batch

SPREADS = [float(x) for x in sys.argv[1:]] or [0.15, 0.3, 0.45, 0.6, 0.75]
SET = int(__import__("os").environ.get("CONCEPT_SET", "0"))  # 0: concepts 0-9, 1: concepts 10-19, ...
torch.set_num_threads(int(__import__("os").environ.get("THREADS", "1")))
pipe = nrinv.core.adapter_for(nrinv.load_pipeline("builtin:shapes"))
concepts = []
for c in range(10 * SET, 10 * SET + 10):
    concepts.append(concept_examples(c))
rows = []
for spread in SPREADS:
    hits = n = 0
    variety = []
    for c, (base, examples) in enumerate(concepts):
        res = nrinv.seed_from_images(pipe, examples, "an object", n_samples=4, spread=spread, seed=c)
        images = np.stack([np.asarray(im) for im in res.images])
        reads = judge_batch(images)
        hits += sum(r["shape"] == base.shape and r["color"] == base.color for r in reads)
        n += len(reads)
        variety += [float(np.abs(a.astype(float) - b.astype(float)).mean())
                    for a, b in itertools.combinations(images[1:], 2)]
    rows.append({"spread": spread, "fidelity": hits / n, "hits": hits, "samples": n,
                 "variety": float(np.mean(variety))})
    print(rows[-1], flush=True)
out = Path(__file__).resolve().parent / "results" / f"seed_spread_set{SET}.json"
out.write_text(json.dumps({"setting": __doc__.split("\n\n")[1], "rows": rows}, indent=2) + "\n")
