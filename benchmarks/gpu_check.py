"""One-command GPU check: the cuda tests, then full-size SDXL-Turbo (float16) and Flux-schnell (bfloat16)
at 512x512, 4 steps, eager and graph-replayed.

    python benchmarks/gpu_check.py                  # on one CUDA GPU; about 5 minutes
    python benchmarks/gpu_check.py --tiny           # the same code, scaled-down networks, on the CPU
    python benchmarks/gpu_check.py --meta           # full-size builders + one network call, meta device

Real weights cannot be downloaded here, so the networks are built from the published configs with
random weights: a forward pass costs the same whatever the values.  Per model it measures, in one
run on one machine: one network call eager and replayed from a CUDA graph; the stock pipeline's 4-step
generation (seconds and peak memory); per method (ddim, fixed_point, renoise, gnri, anderson and the
model's default) the seconds per inversion eager and replayed, the NFE, the overhead against
NFE x one replayed call, and peak memory against the stock generation's; an edit regenerated from a
cached inversion; batch-8 inversion throughput; and, at the end, the graphs' captures, capture time
and fallbacks.  Flux runs one text length (``max_sequence_length``, recorded) in the inversion and the
stock timing.  Writes ``results.json`` and ``results.md`` to ``--out`` (default ``benchmarks/gpu``; a new
temporary folder with ``--tiny``) after the cuda tests and after each model; a model that fails is
recorded as failed and the next one runs.  Each model's graphs, their memory pools and its pipeline
are released before the next model is built.  A fatal CUDA error is sticky for its process: once one
is seen, every later model runs in a process of its own.  Without a GPU and without
``--tiny``/``--meta`` it says so and exits 0: GPU numbers are measured, never estimated.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["ddim", "fixed_point", "renoise", "gnri", "anderson"]
PROMPT = "a photo of an astronaut"


# ------------------------------------------------------------------------------------------ models
def _clip(hidden: int, **kw):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=1,
                          num_attention_heads=max(1, hidden // 64), vocab_size=64, bos_token_id=0, eos_token_id=1,
                          pad_token_id=1, **kw)


@contextlib.contextmanager
def made_on(device: torch.device, dtype: torch.dtype):
    """Networks made directly on ``device`` in ``dtype`` (no CPU copy of a full-size model first).
    Only networks: a scheduler or tokenizer made here would get device tensors where its code calls
    numpy (EulerAncestralDiscreteScheduler does: a TypeError on any GPU)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def sdxl_turbo(tiny: bool, device: torch.device = torch.device("cpu"),  # noqa: B008
               dtype: torch.dtype = torch.float32):
    """stabilityai/sdxl-turbo's UNet (and a VAE with its 4 blocks, factor 8); 1-layer text encoders."""
    import diffusers

    from nrinv.testing import clip_tokenizer

    sched = diffusers.EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                                      beta_schedule="scaled_linear", timestep_spacing="trailing")
    tokenizers = dict(tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer())
    with made_on(device, dtype):
        networks = _sdxl_networks(tiny)
    pipe = diffusers.StableDiffusionXLPipeline(scheduler=sched, **tokenizers, **networks)
    return pipe, (32 if tiny else 512)


def _sdxl_networks(tiny: bool) -> dict:
    import diffusers
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if tiny:
        unet = diffusers.UNet2DConditionModel(
            sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 1), attention_head_dim=(2, 4), cross_attention_dim=64,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=80, norm_num_groups=8)
        h1, h2, vae_channels = 32, 32, (8, 8, 8, 8)
    else:  # unet/config.json of stabilityai/sdxl-turbo
        unet = diffusers.UNet2DConditionModel(
            sample_size=64, block_out_channels=(320, 640, 1280), layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816)
        h1, h2, vae_channels = 768, 1280, (128, 256, 512, 512)
    vae = diffusers.AutoencoderKL(block_out_channels=vae_channels, down_block_types=["DownEncoderBlock2D"] * 4,
                                  up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, layers_per_block=2,
                                  norm_num_groups=min(32, vae_channels[0]), scaling_factor=0.13025)
    return dict(vae=vae, text_encoder=CLIPTextModel(_clip(h1)),
                text_encoder_2=CLIPTextModelWithProjection(_clip(h2, projection_dim=h2)), unet=unet)


def flux_schnell(tiny: bool, device: torch.device = torch.device("cpu"),  # noqa: B008
                 dtype: torch.dtype = torch.float32):
    """black-forest-labs/FLUX.1-schnell's transformer (and a 4-block, 16-channel VAE); 1-layer text encoders."""
    import diffusers

    from nrinv.testing import clip_tokenizer, t5_tokenizer

    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    tokenizers = dict(tokenizer=clip_tokenizer(), tokenizer_2=t5_tokenizer())
    if not tiny:
        tokenizers["tokenizer_2"].model_max_length = 512  # FLUX.1-schnell's T5 tokenizer (the test one: 16)
    with made_on(device, dtype):
        networks = _flux_networks(tiny)
    pipe = diffusers.FluxPipeline(scheduler=sched, **tokenizers, **networks)
    return pipe, (32 if tiny else 512)


def _flux_networks(tiny: bool) -> dict:
    import diffusers
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    if tiny:
        tr = diffusers.FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                             attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                             pooled_projection_dim=32, axes_dims_rope=[4, 4, 8])
        d_model, clip_h, vae_channels = 32, 32, (8, 8, 8, 8)
    else:  # transformer/config.json of black-forest-labs/FLUX.1-schnell
        tr = diffusers.FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                                             attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                                             pooled_projection_dim=768, guidance_embeds=False,
                                             axes_dims_rope=[16, 56, 56])
        d_model, clip_h, vae_channels = 4096, 768, (128, 256, 512, 512)
    vae = diffusers.AutoencoderKL(block_out_channels=vae_channels, down_block_types=["DownEncoderBlock2D"] * 4,
                                  up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=16, layers_per_block=2,
                                  norm_num_groups=min(32, vae_channels[0]), use_quant_conv=False,
                                  use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611)
    clip = CLIPTextModel(_clip(clip_h, projection_dim=clip_h))
    t5 = T5EncoderModel(T5Config(vocab_size=32, d_model=d_model, d_kv=64, d_ff=2 * d_model, num_layers=1,
                                 num_heads=max(1, d_model // 64)))
    return dict(vae=vae, text_encoder=clip, text_encoder_2=t5, transformer=tr)


MODELS = {"sdxl-turbo": (sdxl_turbo, torch.float16), "flux-schnell": (flux_schnell, torch.bfloat16)}


def build(name: str, tiny: bool, device: torch.device):
    """Random weights made directly on the device in the model's dtype (schedulers and tokenizers on
    the CPU, as a loaded pipeline has them)."""
    builder, dtype = MODELS[name]
    dtype = torch.float32 if tiny else dtype
    torch.manual_seed(0)
    pipe, size = builder(tiny, device, dtype)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    return pipe.to(device=device, dtype=dtype), size


# ----------------------------------------------------------------------------------------- measure
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int) -> tuple[float, object]:
    """Median seconds of ``fn()`` after one warm-up call, and its last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


class Peak:
    """Peak memory in MB above the model's weights.

    CUDA: the caching allocator's peak *reserved* memory, which includes the private memory pools of
    captured graphs (``max_memory_allocated`` does not count them: pytorch#121932), less what was
    reserved for the weights alone (``base_mb``, measured after building, before any capture); the
    cache is emptied first, so eager, replayed and stock runs are measured the same way.  The
    pools of graphs alive at the time count too: run eager and stock measurements before capturing.
    CPU: resident-set growth."""

    def __init__(self, device: torch.device, base_mb: float = 0.0):
        self.device, self.base_mb = device, base_mb

    def __enter__(self):
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            from nrinv.bench.measure import PeakMemory

            self.cpu = PeakMemory(self.device).__enter__()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            sync(self.device)
            self.mb = torch.cuda.max_memory_reserved(self.device) / 2**20 - self.base_mb
        else:
            self.cpu.__exit__(*exc)
            self.mb = self.cpu.peak_mb
        return False


def weights_mb(device: torch.device) -> float:
    """Reserved memory with nothing but the model alive (the baseline of :class:`Peak`)."""
    if device.type != "cuda":
        return 0.0
    sync(device)
    torch.cuda.empty_cache()
    return torch.cuda.memory_reserved(device) / 2**20


def text_tokens(pipe) -> dict:
    """Flux: the T5 length that the inversion uses (the adapter's rule: the stock default 512, or the
    tokenizer's limit where shorter), passed to the stock timing too, so both run the same text."""
    from nrinv.core.adapters import FluxAdapter

    if type(pipe).__name__ != "FluxPipeline":
        return {}
    return {"max_sequence_length": FluxAdapter._max_sequence_length(pipe.tokenizer_2, 512)}


def network_call(adapter, size: int, device, repeats: int) -> float:
    """Median seconds of one guided network call at the middle step of the 4-step schedule."""
    from nrinv.core.inversion import prepare
    from nrinv.core.schedulers import draw_noise, seeded_generator

    setup = prepare(adapter, PROMPT, size=(size, size), num_inference_steps=4, guidance_scale=0.0)
    step = setup.schedule.steps[2]
    z = draw_noise(adapter.latent_shape(size, size), seeded_generator(0), device=device, dtype=torch.float32)
    with torch.no_grad():
        seconds, _ = timed(lambda: adapter.denoise(step.input_scale * z, step.timestep, setup.cond), device, repeats)
    return seconds


def graph_stats(adapter) -> dict:
    graphs = adapter.graphs
    return graphs.stats() if graphs is not None else {}


def release(pipe, device: torch.device, log) -> None:
    """Free a measured model's graphs (and their memory pools) and cached memory now, not when Python's
    cycle collector gets to its pipeline: the next model is measured without them."""
    from nrinv.core.adapters import release_pipeline

    try:
        release_pipeline(pipe)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    except Exception as exc:  # noqa: BLE001 - a sticky CUDA error: main sees it and isolates the next models
        log(f"  releasing the model failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


def cuda_usable(device: torch.device) -> bool:
    """Whether this process can still use the GPU (a fatal CUDA error fails every later call)."""
    if device.type != "cuda":
        return True
    try:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        return True
    except Exception:  # noqa: BLE001
        return False


def run_isolated(name: str, tiny: bool, repeats: int, log) -> dict:
    """``check_model`` for one model in a new process (after a sticky CUDA error in this one)."""
    with tempfile.TemporaryDirectory(prefix="nrinv-gpu-model-") as folder:
        command = [sys.executable, str(Path(__file__).resolve()), "--models", name, "--skip-tests", "--out", folder,
                   "--repeats", str(repeats)] + (["--tiny"] if tiny else [])
        done = subprocess.run(command, cwd=ROOT)
        written = Path(folder) / "results.json"
        rows = json.loads(written.read_text())["models"] if written.is_file() else []
    if rows:
        return dict(rows[0], process="own")
    log(f"{name}: its own process wrote no results (exit status {done.returncode})")
    return {"model": name, "error": f"its own process wrote no results (exit status {done.returncode})",
            "process": "own"}


def check_model(name: str, tiny: bool, device: torch.device, repeats: int, log) -> dict:
    pipe, size = build(name, tiny, device)
    try:
        return measure(name, pipe, size, device, repeats, log)
    finally:
        release(pipe, device, log)


def measure(name: str, pipe, size: int, device: torch.device, repeats: int, log) -> dict:
    from PIL import Image
    from skimage import data

    import nrinv
    import nrinv.core  # a subpackage: not imported by `import nrinv`

    pipe.set_progress_bar_config(disable=True)
    base_mb = weights_mb(device)
    image = Image.fromarray(data.astronaut()).resize((size, size), Image.LANCZOS)
    images8 = [image.rotate(45 * i) for i in range(8)]
    eager = nrinv.core.adapter_for(pipe, cuda_graphs=False)
    graphed = nrinv.core.adapter_for(pipe)  # graphs on where the network is on CUDA
    default = graphed.defaults
    tokens = text_tokens(pipe)
    row: dict = {"model": name, "size": size, "steps": 4, "dtype": str(graphed.dtype).replace("torch.", ""),
                 "kind": default.kind, "cuda_graphs": graphed.graphs is not None, "weights_reserved_mb": round(base_mb),
                 **tokens}

    # eager and stock first: no graph pool alive yet (see Peak)
    stock = lambda: pipe(PROMPT, num_inference_steps=4, guidance_scale=0.0, height=size, width=size,  # noqa: E731
                         generator=torch.Generator().manual_seed(0), output_type="latent", **tokens)
    with Peak(device, base_mb) as peak:
        row["stock_generation_s"], _ = timed(stock, device, repeats)
    row["stock_peak_mb"] = round(peak.mb, 1)
    token_note = f", {tokens['max_sequence_length']} text tokens" if tokens else ""
    log(f"{name}: {size}x{size}, {row['dtype']}{token_note}; "
        f"stock 4-step generation {row['stock_generation_s']:.3f} s, peak {peak.mb:.0f} MB above the weights")
    row["call_eager_s"] = network_call(eager, size, device, repeats)

    methods = METHODS + ([default.method] if default.method not in METHODS else [])
    entries = [{"method": m, "default": m == default.method} for m in methods]
    runs = {}
    for label, adapter in (("eager", eager), ("replayed", graphed)):
        if label == "replayed":
            row["call_replayed_s"] = network_call(graphed, size, device, repeats)
            log(f"  one network call {row['call_eager_s'] * 1e3:.1f} ms eager, "
                f"{row['call_replayed_s'] * 1e3:.1f} ms replayed")
        for entry in entries:
            method = entry["method"]
            kw = dict(method=method, num_inference_steps=4, guidance_scale=0.0, seed=0,
                      max_iterations=None if method == "ddim" else default.max_iterations)
            with Peak(device, base_mb) as peak:
                seconds, res = timed(lambda: nrinv.invert(adapter, image, PROMPT, **kw), device, repeats)
            entry[f"{label}_s"] = round(seconds, 4)
            entry[f"{label}_peak_mb"] = round(peak.mb, 1)
            entry[f"{label}_solve_s"] = round(res.wall_time, 4)
            runs[method] = res
    for entry in entries:
        res = runs[entry["method"]]
        entry["nfe"] = res.nfe
        entry["status"] = res.status.value
        entry["overhead"] = round(entry["replayed_solve_s"] / (res.nfe * row["call_replayed_s"]), 3)
        entry["peak_vs_stock"] = round(entry["replayed_peak_mb"] / max(row["stock_peak_mb"], 1e-9), 3)
        log(f"  {entry['method']:12s} NFE {res.nfe:2d}: {entry['eager_s']:.3f} s eager, {entry['replayed_s']:.3f} s "
            f"replayed (solve {entry['replayed_solve_s']:.3f} s = {entry['overhead']:.2f} x NFE x call), "
            f"peak {entry['replayed_peak_mb']:.0f} MB = {entry['peak_vs_stock']:.2f} x stock")
    row["methods"] = entries

    inv = nrinv.invert(graphed, image, PROMPT, num_inference_steps=4, guidance_scale=0.0)
    edit = lambda output_type: nrinv.regenerate(inv, "a photo of a robot", strength=0.6,  # noqa: E731
                                                edit_guidance_scale=default.edit_guidance, output_type=output_type)
    row["edit_latent_s"], _ = timed(lambda: edit("latent"), device, repeats)
    row["edit_decoded_s"], _ = timed(lambda: edit("pil"), device, repeats)
    before = graph_stats(graphed)
    seconds, results = timed(lambda: nrinv.invert_batch(graphed, images8, PROMPT, num_inference_steps=4,
                                                        guidance_scale=0.0), device, max(1, repeats // 2))
    after = graph_stats(graphed)
    row["batch8_s"] = round(seconds, 4)
    row["batch8_images_per_s"] = round(8 / seconds, 2)
    # replayed only if its calls were: a failed or inexact batch-8 capture runs eagerly (and says so)
    row["batch8_replayed"] = bool(after) and after["replays"] > before["replays"] \
        and len(after["fallbacks"]) == len(before["fallbacks"])
    log(f"  edit from the cached inversion {row['edit_latent_s']:.3f} s (+ decode: {row['edit_decoded_s']:.3f} s); "
        f"batch of 8 ({'replayed' if row['batch8_replayed'] else 'eager'}): {seconds:.3f} s = "
        f"{row['batch8_images_per_s']:.1f} images/s")
    row["graphs"] = graph_stats(graphed)  # at the end: every capture, fallback and eviction of this model's run
    if row["graphs"]:
        g = row["graphs"]
        log(f"  graphs: {g['captures']} captured in {g['capture_time_s']:.2f} s, {g['replays']} replays, "
            f"{len(g['fallbacks'])} fallbacks{': ' + '; '.join(g['fallbacks']) if g['fallbacks'] else ''}")
    return row


def meta_check(log, models=None) -> dict:
    """Both full-size builders and one full-size network call of each on the ``meta`` device: shapes,
    dtypes and placement at full size, without a GPU and without computing anything."""
    import copy

    import nrinv
    import nrinv.core  # a subpackage: not imported by `import nrinv`

    meta, out = torch.device("meta"), {}
    for name in models or MODELS:
        pipe, size = build(name, False, meta)
        adapter = nrinv.core.adapter_for(pipe)
        cond = adapter.conditioning(PROMPT, None, 0.0, (size, size))
        scheduler = copy.deepcopy(pipe.scheduler)  # timesteps from the CPU: a scheduler cannot step on meta
        scheduler.set_timesteps(4)
        z = torch.zeros(adapter.latent_shape(size, size), device=adapter.device)
        output = adapter.denoise(z, scheduler.timesteps[2].to(adapter.device), cond)
        placed = {k: (str(v.device), str(v.dtype).replace("torch.", "")) for k, v in pipe.components.items()
                  if isinstance(v, torch.nn.Module)}
        out[name] = {"size": size, "network_parameters": sum(p.numel() for p in adapter.network.parameters()),
                     **{k: list(v.shape) for k, v in cond.cond.items() if k == "encoder_hidden_states"},
                     "output_shape": list(output.shape), "output_device": str(output.device),
                     "output_dtype": str(output.dtype).replace("torch.", ""), "components": placed}
        log(f"{name}: {size}x{size} built on meta ({out[name]['network_parameters'] / 1e9:.2f} B network "
            f"parameters), one network call -> {tuple(output.shape)} {out[name]['output_dtype']} on meta")
    return out


def run_cuda_tests(log) -> dict:
    """``pytest -m cuda`` on this machine, in two processes: the autograd (gnri_grad) tests last and on
    their own, so that a fatal CUDA error there (one ended in an illegal memory access on an H100 on
    2026-11-26) cannot fail every test after it."""
    t0 = time.perf_counter()
    parts = {}
    for label, select in (("main", "not gnri_grad"), ("gnri_grad", "gnri_grad")):
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "-k",
                               select, str(ROOT / "tests" / "test_cuda.py")], capture_output=True, text=True, cwd=ROOT)
        last = (done.stdout.strip().splitlines() or [""])[-1]
        parts[label] = {"returncode": done.returncode, "summary": last, "tail": done.stdout[-3000:]}
    summary = "; ".join(f"{label}: {p['summary']}" for label, p in parts.items())
    log(f"cuda tests: {summary} ({time.perf_counter() - t0:.0f} s)")
    return {"returncode": max(p["returncode"] for p in parts.values()), "summary": summary, "parts": parts}


def markdown(results: dict) -> str:
    lines = [f"# GPU check: {results['device']}", "",
             f"torch {results['torch']}, diffusers {results['diffusers']}, nrinv {results['nrinv']}; "
             f"cuda tests: {results.get('cuda_tests', {}).get('summary', 'not run')}", "",
             "Peak memory: peak reserved memory above the weights (graph pools included).", ""]
    for row in results["models"]:
        if "error" in row:
            lines += [f"## {row['model']}", "", f"Failed: {row['error']}", ""]
            continue
        tokens = f", {row['max_sequence_length']} text tokens" if "max_sequence_length" in row else ""
        g = row.get("graphs") or {}
        lines += [f"## {row['model']} ({row['dtype']}, {row['size']}x{row['size']}, {row['steps']} steps{tokens})", "",
                  f"One network call: {row['call_eager_s'] * 1e3:.1f} ms eager, {row['call_replayed_s'] * 1e3:.1f} ms "
                  f"replayed. Stock generation: {row['stock_generation_s']:.3f} s, peak {row['stock_peak_mb']:.0f} MB. "
                  f"Edit from a cached inversion: {row['edit_latent_s']:.3f} s ({row['edit_decoded_s']:.3f} s with "
                  f"decoding). Batch of 8 ({'replayed' if row['batch8_replayed'] else 'eager'}): "
                  f"{row['batch8_images_per_s']:.1f} images/s.", ""]
        if g:
            lines += [f"Graphs: {g['captures']} captured in {g['capture_time_s']:.2f} s, {g['replays']} replays, "
                      f"{len(g['fallbacks'])} fallbacks" + (": " + "; ".join(g["fallbacks"]) if g["fallbacks"] else "")
                      + ".", ""]
        lines += ["| method | NFE | eager s | replayed s | solve / (NFE x replayed call) | peak MB | peak / stock |",
                  "|---|---|---|---|---|---|---|"]
        for m in row["methods"]:
            name = m["method"] + (" (default)" if m["default"] else "")
            lines.append(f"| {name} | {m['nfe']} | {m['eager_s']:.3f} | {m['replayed_s']:.3f} | {m['overhead']:.2f} | "
                         f"{m['replayed_peak_mb']:.0f} | {m['peak_vs_stock']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def write(out: Path, results: dict) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown(results) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="scaled-down networks on the CPU (checks the code path)")
    ap.add_argument("--meta", action="store_true",
                    help="both full-size builders and one network call each on the meta device (no GPU needed)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5; 1 with --tiny)")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--skip-tests", action="store_true", help="do not run the cuda tests first")
    ap.add_argument("--out", default=None, help="folder for results.json and results.md (default benchmarks/gpu; "
                                                "with --tiny a new temporary folder)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    models = [m.strip() for m in args.models.split(",")]
    if args.meta:
        meta_check(log, models)
        return 0
    if not args.tiny and not torch.cuda.is_available():
        print("no CUDA device here: nothing measured (GPU numbers are measured, never estimated); "
              "--tiny checks the code path on the CPU, --meta the full-size models on the meta device")
        return 0
    import diffusers

    import nrinv

    device = torch.device("cpu" if args.tiny else "cuda")
    if args.tiny:
        torch.set_num_threads(1)  # tiny networks gain nothing from threads, and lose much on a busy machine
    repeats = args.repeats or (1 if args.tiny else 5)
    if args.out:
        out = Path(args.out)
    elif args.tiny:  # never into the source tree unless asked
        out = Path(tempfile.mkdtemp(prefix="nrinv-gpu-tiny-"))
    else:
        out = ROOT / "benchmarks" / "gpu"
    out.mkdir(parents=True, exist_ok=True)
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({platform.processor()})",
               "torch": torch.__version__, "diffusers": diffusers.__version__, "nrinv": nrinv.__version__,
               "tiny": args.tiny, "repeats": repeats, "models": []}
    t0 = time.perf_counter()
    if not args.skip_tests and not args.tiny:
        results["cuda_tests"] = run_cuda_tests(log)
        write(out, results)
    failed = isolate = False
    for name in models:
        # everything of one model is guarded: one model's failure must not lose the others' results
        try:
            if isolate:
                row = run_isolated(name, args.tiny, repeats, log)
            else:
                row = check_model(name, args.tiny, device, repeats, log)
        except Exception as exc:  # noqa: BLE001
            row = {"model": name, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
            log(f"{name}: failed: {row['error']}")
        if not isolate and not cuda_usable(device):
            isolate = True
            log("  CUDA is unusable in this process now (a sticky error): each later model runs in its own")
        failed = failed or "error" in row
        results["models"].append(row)
        results["wall_s"] = round(time.perf_counter() - t0, 1)
        write(out, results)  # after each model: a later crash keeps what was measured
    log(f"wrote {out}/results.json and results.md ({results['wall_s']} s)")
    return 1 if failed or results.get("cuda_tests", {}).get("returncode", 0) != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
