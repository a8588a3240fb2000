"""Interpolation frames judged as valid scenes: `python benchmarks/interpolation_eval.py [MODEL] [PAIRS]`.

For pairs of held-out scenes, 5 frames each (endpoints included), a frame is valid when the judge reads
every attribute with softmax confidence >= 0.5 and the object colour differs from the background
colour (the criterion of benchmarks/edit_eval.py); the endpoints should read as the two scenes.
"""
import json
import sys

import numpy as np
import torch

import nrinv
from nrinv.shapes import render, sample_scene
from nrinv.shapes.editeval import judge_confident

torch.set_num_threads(1)
model = sys.argv[1] if len(sys.argv) > 1 else "builtin:shapes"
pairs = int(sys.argv[2]) if len(sys.argv) > 2 else 4
pipe = nrinv.core.adapter_for(nrinv.load_pipeline(model, device="cpu"))
valid, ends = [], []
for k in range(pairs):
    sa, sb = sample_scene(90_000_000 + 2 * k), sample_scene(90_000_001 + 2 * k)
    res = nrinv.interpolate(pipe, render(sa, 90_000_000 + 2 * k), render(sb, 90_000_001 + 2 * k),
                            [sa.caption(), sb.caption()], n=5)
    reads = judge_confident([np.asarray(im) for im in res.images])
    valid += [float(conf >= 0.5 and read["color"] != read["background_color"]) for read, conf in reads]
    ends.append(0.5 * (reads[0][0] == sa.as_dict()) + 0.5 * (reads[-1][0] == sb.as_dict()))
print(json.dumps({"model": model, "pairs": pairs, "frames_valid": float(np.mean(valid)),
                  "endpoints_read_as_their_scenes": float(np.mean(ends))}))
