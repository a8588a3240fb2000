"""Guided inversion on the trained built-in model: does the step equation have a root at guidance 7.5?

``python benchmarks/guided.py diagnose [--n-images 4] [--set held]``

Per scene (the shapes world's held-out scenes, ``--held-seed 7300``, as benchmarks/defaults_check.py), the
default inversion at guidance 7.5 gives the trajectory; at each sampler step ``i`` its known next latent
``z_{i+1}`` defines ``f(z) = (z_{i+1} - B m_w(z)) / A`` with ``m_w = m_u + w (m_c - m_u)``.  The latent has
1024 elements, so the Jacobians of ``m_u`` and ``m_c`` are computed exactly and in full (reverse mode, one
batched backward per row block) and ``J_f(w) = -(B / A) (J_u + w (J_c - J_u))`` for every ``w`` at once:

* contraction: the spectral radius and the 2-norm of ``J_f`` at the default's answer, per step;
* exact (dense) Newton on ``r(z) = z - f(z)`` with a backtracking line search on ``||r||``, from the
  DDIM start and from the default's answer; where it stalls, Levenberg-Marquardt on ``||r||^2`` and the
  gradient ``J_r^T r`` at its end (a local minimum of ``||r||`` above zero: no root in its basin);
* continuation in the guidance from 1 to w (a root at w=1 followed by Newton in small steps), with the
  smallest singular value of ``I - J_f`` along the branch (it goes to zero at a fold, where the root
  disappears).

Writes benchmarks/results/guided/diagnose[TAG].json.

``python benchmarks/guided.py methods [--sets choose,held] [--configs ...]``: per scene of the choosing and held-out
sets (as benchmarks/defaults_check.py: seeds 7100 and 7300), each configuration inverts at ``--guidance`` and the
stock regeneration (our replay, with the result's corrections and per-step null embeddings) is scored: dB below
the VAE ceiling, relative latent error, calls, wall time, and the per-step additions (latent corrections, rms
relative to the image latent's rms; null embeddings changed from the prompt's).  Writes methods[TAG].json.

``python benchmarks/guided.py edits --n 12``: edits at guidance ``--guidance`` from each configuration's inversion of
the edit set's sources (``nrinv.shapes.editset``): the last ``--strength`` of the schedule re-run with the target
caption, with the inversion's per-step null embeddings and corrections; scored as ``nrinv.shapes.editeval`` does
(target attribute, preserved attributes, PSNR to the exactly rendered target).  The "defaults" row is
``nrinv.edit``'s math at the model's edit defaults (inversion at the model's guidance).  Writes edits[TAG].json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from pathlib import Path

import torch


def _outputs(adapter, step, cond, z):
    """(m_u, m_c): the unconditional and conditional network outputs at ``z`` (batch of latents)."""
    from nrinv.core.adapters import _expand

    batch = z.shape[0]
    x = (step.input_scale * z).to(adapter.dtype)
    kw = {k: torch.cat([_expand(cond.uncond[k], batch), _expand(cond.cond[k], batch)]) for k in cond.cond}
    out = adapter._forward(torch.cat([x, x]), step.timestep, kw, cond.shared).float()
    return out.chunk(2)


def jacobians(adapter, step, cond, z, block: int = 256):
    """Exact Jacobians (D x D) of m_u and m_c at ``z`` (1, C, H, W), rows by reverse mode in blocks."""
    d = z[0].numel()
    ju = torch.empty(d, d, dtype=torch.float64)
    jc = torch.empty(d, d, dtype=torch.float64)
    for start in range(0, d, block):
        rows = torch.arange(start, min(d, start + block))
        n = len(rows)
        with torch.enable_grad():
            zz = z.detach().expand(n, *z.shape[1:]).clone().requires_grad_(True)
            mu, mc = _outputs(adapter, step, cond, zz)
            sel = torch.zeros(n, d, dtype=mu.dtype)
            sel[torch.arange(n), rows] = 1.0
            (gu,) = torch.autograd.grad((mu.flatten(1) * sel).sum(), zz, retain_graph=True)
            (gc,) = torch.autograd.grad((mc.flatten(1) * sel).sum(), zz)
        ju[rows] = gu.flatten(1).double()
        jc[rows] = gc.flatten(1).double()
    return ju, jc


class StepEquation:
    """``r(z) = z - f_w(z)`` of one sampler step with its exact Jacobian."""

    def __init__(self, adapter, step, cond, z_next):
        self.adapter, self.step, self.cond, self.z_next = adapter, step, cond, z_next
        self.calls = 0
        self.jacobians = 0
        self._jac = None

    def f(self, z, w):
        with torch.no_grad():
            mu, mc = _outputs(self.adapter, self.step, self.cond, z)
        self.calls += 1
        return self.step.fixed_point_map(self.z_next, mu + w * (mc - mu))

    def residual(self, z, w):
        return z - self.f(z, w)

    def jf(self, z, w):
        # the Jacobians at z serve every guidance scale: J_f(w) is affine in w
        if self._jac is None or not torch.equal(self._jac[0], z):
            self._jac = (z.clone(), *jacobians(self.adapter, self.step, self.cond, z))
            self.jacobians += 1
        _, ju, jc = self._jac
        return -(self.step.B / self.step.A) * (ju + w * (jc - ju))


def rms(x) -> float:
    return float(x.double().pow(2).mean().sqrt())


def newton(eq: StepEquation, z, w, iterations=12, lm=False, tol=1e-7):
    """Dense Newton (or Levenberg-Marquardt with ``lm``) with a backtracking line search on ||r||.
    Returns (z, residual history, smallest singular value of I - J_f at the end, ||J_r^T r|| / ||r||)."""
    d = z[0].numel()
    eye = torch.eye(d, dtype=torch.float64)
    r = eq.residual(z, w)
    hist = [rms(r)]
    mu = 1e-3
    smin, grad_ratio = float("nan"), float("nan")
    for _ in range(iterations):
        jr = eye - eq.jf(z, w)
        rv = r.flatten().double()
        s = torch.linalg.svdvals(jr)
        smin = float(s[-1])
        grad_ratio = float((jr.T @ rv).norm() / (rv.norm() * s[0]))
        if hist[-1] < tol:
            break
        if lm:
            dz = -torch.linalg.solve(jr.T @ jr + mu * eye, jr.T @ rv)
        else:
            dz = -torch.linalg.lstsq(jr, rv[:, None]).solution[:, 0]
        alpha, accepted = 1.0, False
        for _ls in range(12):
            cand = z + alpha * dz.to(z.dtype).reshape(z.shape)
            rc = eq.residual(cand, w)
            if math.isfinite(rms(rc)) and rms(rc) < (1 - 1e-4 * alpha) * hist[-1]:
                accepted = True
                break
            alpha *= 0.5
        if not accepted:
            if lm:
                mu *= 10
                hist.append(hist[-1])
                continue
            break
        z, r = cand, rc
        hist.append(rms(r))
        mu = max(mu / 3, 1e-8)
    return z, hist, smin, grad_ratio


def spectrum(eq, z, w):
    jf = eq.jf(z, w)
    eig = torch.linalg.eigvals(jf)
    s = torch.linalg.svdvals(jf)
    sr = torch.linalg.svdvals(torch.eye(jf.shape[0], dtype=jf.dtype) - jf)
    return {"spectral_radius": float(eig.abs().max()), "norm2": float(s[0]),
            "sigma_min_I_minus_J": float(sr[-1]), "n_eig_abs_gt_1": int((eig.abs() > 1).sum())}


def power_iteration(eq, z, w, iterations=30, seed=0):
    """The dominant eigenvalue magnitude of J_f by power iteration on exact JVPs (torch.func.jvp)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(z.shape, generator=g)
    v = v / v.norm()
    lam = float("nan")
    fn = lambda x: eq.f(x, w)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    for _ in range(iterations):
        with torch.enable_grad(), sdpa_kernel([SDPBackend.MATH]):
            _, jv = torch.func.jvp(fn, (z,), (v,))
        lam = float(jv.norm())
        v = jv / jv.norm()
    return lam


def diagnose(args):
    import nrinv
    from nrinv.bench.images import load_image_set

    pipe = nrinv.load_pipeline("builtin:shapes", device="cpu", dtype=torch.float32)
    adapter = nrinv.core.adapter_for(pipe)
    w = args.guidance
    seed = {"held": args.held_seed, "choose": args.choose_seed}[args.set]
    out = []
    for item in load_image_set("shapes", size=(64, 64), n=args.n_images, seed=seed):
        t0 = time.time()
        res = nrinv.invert(pipe, item.image, item.prompt, guidance_scale=w)
        setup = res.setup
        scene = {"image": item.name, "prompt": item.prompt, "steps": []}
        for i in [int(s) for s in args.steps.split(",")]:
            step = setup.schedule.steps[i]
            z_next = res.trajectory[i + 1]
            eq = StepEquation(adapter, step, setup.cond, z_next)
            default_z = res.trajectory[i]
            rec = {"step": i, "t": step.t, "A": step.A, "B": step.B,
                   "default_residual": rms(eq.residual(default_z, w)), "latent_rms": rms(z_next)}
            if not args.no_dense:
                rec["spectrum_at_default"] = spectrum(eq, default_z, w)
                rec["spectrum_at_default_w1"] = spectrum(eq, default_z, 1.0)
            if args.power:
                rec["power_iteration_at_default"] = power_iteration(eq, default_z, w, iterations=args.power)
                rec["power_iteration_at_default_w1"] = power_iteration(eq, default_z, 1.0, iterations=args.power)
            if i in [int(s) for s in args.newton_steps.split(",") if s]:
                ddim_start = eq.f(z_next, w)
                starts = {"ddim_start": ddim_start, "default_answer": default_z}
                for name in args.starts.split(","):
                    start = starts[name]
                    z, hist, smin, gr = newton(eq, start, w, iterations=args.newton_iterations)
                    zl, hl, sl, gl = newton(eq, z, w, iterations=args.newton_iterations, lm=True)
                    print(f"  {item.name} step {i} {name}: newton {hist} lm {hl}", flush=True)
                    rec[f"newton_{name}"] = {"residual": hist, "sigma_min": smin, "grad_ratio": gr,
                                             "lm_residual": hl, "lm_sigma_min": sl, "lm_grad_ratio": gl,
                                             "distance_to_default": rms(zl - default_z) / rms(default_z)}
                # continuation from w=1 (the root exists there), Newton at each guidance
                z = eq.f(z_next, 1.0)
                branch = []
                for wk in [1.0 + k * (w - 1.0) / args.continuation for k in range(args.continuation + 1)]:
                    z, hist, smin, gr = newton(eq, z, wk, iterations=args.branch_iterations)
                    branch.append({"w": wk, "residual": hist[-1], "newton_iterations": len(hist) - 1,
                                   "sigma_min": smin, "grad_ratio": gr})
                    print(f"  {item.name} step {i} w={wk:.3f} r={hist[-1]:.2e} smin={smin:.3e}", flush=True)
                rec["continuation"] = branch
            rec["calls"], rec["jacobians"] = eq.calls, eq.jacobians
            scene["steps"].append(rec)
            print(item.name, i, json.dumps({k: v for k, v in rec.items() if k != "continuation"})[:600], flush=True)
        scene["seconds"] = time.time() - t0
        out.append(scene)
        path = Path(__file__).resolve().parent / "results" / "guided"
        path.mkdir(parents=True, exist_ok=True)
        (path / f"diagnose{args.tag}.json").write_text(json.dumps(out, indent=1) + "\n")
    return 0


CONFIGS = {
    # name: (kind, keyword arguments)
    "default": ("invert", {}),
    "anderson_x3": ("invert", {"max_iterations": 3}),
    "anderson_x5": ("invert", {"max_iterations": 5}),
    "npi": ("invert", {"method": "ddim", "negative_prompt": "source"}),
    # our renoise reproduces the official ReNoise code to 3-4 digits (benchmarks/README.md); 2 iterations = 40 calls
    "renoise": ("invert", {"method": "renoise", "max_iterations": 2}),
    "npi_solved": ("invert", {"negative_prompt": "source"}),
    "edit_friendly_solved": ("invert", {"method": "edit_friendly", "options": {"trajectory": "solved"}}),
    "null_text": ("null_text", {}),
    # the default, but a step whose secant estimate of ||J_f|| exceeds 1 returns its best evaluated iterate z^k (its
    # residual measured) instead of f(z^k) (about ||J_f|| times worse there); an experiment, not shipped
    "expanding_iterate": ("expanding_iterate", {}),
    "null_text_guided": ("null_text", {"pivot": "guided", "threshold": 0.01, "inner_steps": 50, "learning_rate": 0.05}),
}


def _psnr(a, b) -> float:
    mse = float((a.float() - b.float()).pow(2).mean())
    return 100.0 if mse == 0 else 10 * math.log10(1.0 / mse)


class _expanding_iterate:
    """Wrap every registered solver: record its evaluations; where the largest secant ratio
    ``||f(z_j) - f(z_{j-1})|| / ||z_j - z_{j-1}||`` exceeds 1, return the evaluated z with the smallest residual."""

    def __enter__(self):
        from nrinv.core import solvers

        # the registry resolves each solver by its module attribute at every call: wrap those
        self.saved = {name: getattr(solvers, name) for name in solvers.SOLVERS}
        for name, fn in self.saved.items():
            setattr(solvers, name, self._wrap(fn))

    def __exit__(self, *exc):
        from nrinv.core import solvers

        for name, fn in self.saved.items():
            setattr(solvers, name, fn)

    @staticmethod
    def _wrap(fn):
        def solver(problem, options):
            seen = []

            def f(z):
                fz = problem.fn(z)
                seen.append((z.detach(), fz.detach()))
                return fz
            res = fn(dataclasses.replace(problem, fn=f), options)
            ratio = max([float((seen[j][1] - seen[j - 1][1]).norm() / (seen[j][0] - seen[j - 1][0]).norm().clamp_min(1e-12))  # noqa: E501
                         for j in range(1, len(seen))] or [0.0])
            if ratio > 1 and not res.status.converged:
                res.z = min(seen, key=lambda p: float((p[0] - p[1]).pow(2).mean()))[0]
            return res
        return solver


def run_config(pipe, name, image, prompt, guidance, seed=0):
    import nrinv
    from nrinv.core.nulltext import NullTextOptions
    from nrinv.workflows.nulltext import invert_null_text

    kind, kw = CONFIGS[name]
    kw = dict(kw)
    t0 = time.perf_counter()
    if kind == "expanding_iterate":
        with _expanding_iterate():
            res = nrinv.invert(pipe, image, prompt, guidance_scale=guidance, seed=seed)
        return res, time.perf_counter() - t0
    if kind == "null_text":
        from nrinv.io.images import to_tensor

        res = invert_null_text(pipe, to_tensor(image), prompt, guidance_scale=guidance, options=NullTextOptions(**kw),
                               seed=seed)
    else:
        if kw.get("negative_prompt") == "source":
            kw["negative_prompt"] = prompt
        res = nrinv.invert(pipe, image, prompt, guidance_scale=guidance, seed=seed, **kw)
    return res, time.perf_counter() - t0


def additions(res) -> dict:
    scale = float(res.encoded.float().pow(2).mean().sqrt())
    corr = [0.0 if d is None else float(d.float().pow(2).mean().sqrt()) / scale for d in (res.corrections or [])]
    changed = 0
    if res.step_conds is not None:
        base = res.setup.cond.uncond["encoder_hidden_states"]
        changed = sum(not torch.equal(c.uncond["encoder_hidden_states"], base) for c in res.step_conds)
    return {"correction_max": max(corr, default=0.0), "correction_sum": sum(corr), "corrections": corr,
            "null_steps_changed": changed}


def methods(args):
    import numpy as np

    import nrinv
    from nrinv.bench.images import load_image_set
    from nrinv.core.inversion import sample

    pipe = nrinv.load_pipeline("builtin:shapes", device="cpu", dtype=torch.float32)
    adapter = nrinv.core.adapter_for(pipe)
    configs = args.configs.split(",")
    rows = []
    out = Path(__file__).resolve().parent / "results" / "guided"
    out.mkdir(parents=True, exist_ok=True)
    for set_name in args.sets.split(","):
        seed = {"held": args.held_seed, "choose": args.choose_seed}[set_name]
        for item in load_image_set("shapes", size=(64, 64), n=args.n_images, seed=seed):
            x = torch.from_numpy(np.asarray(item.image.convert("RGB"), dtype="float32") / 255).permute(2, 0, 1)[None]
            with torch.no_grad():
                enc = adapter.encode(x)
                ceiling = _psnr(adapter.decode(enc, (64, 64)), x)
            for name in configs:
                res, wall = run_config(pipe, name, item.image, item.prompt, args.guidance)
                with torch.no_grad():
                    z = sample(res.setup, res.scheduler_latents, corrections=res.corrections, step_conds=res.step_conds)
                    rec = adapter.decode(z, (64, 64))
                row = {"set": set_name, "image": item.name, "config": name, "guidance": args.guidance, "nfe": res.nfe,
                       "wall_s": wall, "below": ceiling - _psnr(rec, x),
                       "latent_error": float((z - res.encoded).norm() / res.encoded.norm()),
                       "status": res.status.value, **additions(res)}
                if args.stock and (res.corrections is not None or res.step_conds is not None):
                    with torch.no_grad():
                        stock = pipe(item.prompt, output_type="latent", **res.pipeline_kwargs()).images
                    row["stock_vs_replay"] = float((stock.float() - z).abs().max())
                rows.append(row)
                print(f"{set_name} {item.name} {name} nfe={res.nfe} below={row['below']:.2f} "
                      f"err={row['latent_error']:.4f} corr_max={row['correction_max']:.4f} wall={wall:.1f}s", flush=True)  # noqa: E501
                (out / f"methods{args.tag}.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


def edit_latent(res, start, target_cond):
    """Re-run steps ``start ..`` of ``res``'s schedule from its trajectory with ``target_cond``, keeping the
    inversion's per-step null embeddings and corrections."""
    setup = res.setup
    z = res.trajectory[start].float()
    with torch.no_grad():
        for step in setup.schedule.steps[start:]:
            i = step.index
            cond = target_cond
            if res.step_conds is not None:
                cond = dataclasses.replace(target_cond, uncond=dict(res.step_conds[i].uncond))
            z = step.apply(z, setup.denoiser(step, cond)(z))
            if res.corrections is not None and res.corrections[i] is not None:
                z = z + res.corrections[i]
    return z


def edits(args):
    import numpy as np

    import nrinv
    from nrinv.shapes.editeval import judge_confident, score_edit
    from nrinv.shapes.editset import edit_set
    from nrinv.workflows import editing

    pipe = nrinv.load_pipeline("builtin:shapes", device="cpu", dtype=torch.float32)
    adapter = nrinv.core.adapter_for(pipe)
    items = edit_set(args.n, seed=args.edit_seed)
    configs = args.configs.split(",")
    rows = []
    out = Path(__file__).resolve().parent / "results" / "guided"
    out.mkdir(parents=True, exist_ok=True)
    to8 = lambda img: (img[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # noqa: E731
    for name in ["defaults"] + configs:
        imgs, metas = [], []
        for item in items:
            from PIL import Image

            src = Image.fromarray(item["source_image"])
            if name == "defaults":
                t0 = time.perf_counter()
                res = nrinv.invert(pipe, src, item["source_caption"])
                lat, _ = editing.regenerate(res, item["target_caption"], strength=args.strength,
                                            edit_guidance_scale=pipe_defaults(adapter).edit_guidance,
                                            guide_from_source=pipe_defaults(adapter).guide_from_source,
                                            output_type="latent")
                z = lat[0]
                wall = time.perf_counter() - t0
            else:
                res, wall = run_config(pipe, name, src, item["source_caption"], args.guidance)
                start, _ = editing.start_step(len(res.setup.schedule), args.strength)
                target = adapter.conditioning(item["target_caption"], res.setup.cond.negative_prompt
                                              if CONFIGS[name][1].get("negative_prompt") != "source"
                                              else item["source_caption"], args.guidance, (64, 64))
                z = edit_latent(res, start, target)
            with torch.no_grad():
                imgs.append(to8(adapter.decode(z.reshape(1, *z.shape[-3:]), (64, 64))))
            metas.append({"nfe": res.nfe, "wall_s": wall, **({} if name == "defaults" else
                                                              {k: v for k, v in additions(res).items()
                                                               if k != "corrections"})})
        for img, item, meta, (read, _) in zip(imgs, items, metas, judge_confident(imgs)):
            rows.append({"config": name, "changed": item["changed"], **meta, **score_edit(img, item, read)})
        rs = [r for r in rows if r["config"] == name]
        print(f"{name}: target {np.mean([r['target'] for r in rs]):.2f} preserved "
              f"{np.mean([r['preserved'] for r in rs]):.2f} psnr {np.mean([r['psnr'] for r in rs]):.2f}", flush=True)
        (out / f"edits{args.tag}.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


def table(args):
    """Markdown tables of methods[TAG].json and edits[TAG].json (mean +- std per set)."""
    import statistics

    out = Path(__file__).resolve().parent / "results" / "guided"
    sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731
    path = out / f"methods{args.tag}.json"
    if path.exists():
        rows = json.loads(path.read_text())
        print("| config | scenes | n | calls | wall s | below VAE ceiling dB | latent error | max correction / latent "
              "| null steps changed |")
        print("|---|---|---|---|---|---|---|---|---|")
        for c in dict.fromkeys(r["config"] for r in rows):
            for st in dict.fromkeys(r["set"] for r in rows):
                rs = [r for r in rows if r["config"] == c and r["set"] == st]
                if not rs:
                    continue
                v = lambda k: [r[k] for r in rs]  # noqa: E731
                print(f"| {c} | {st} | {len(rs)} | {statistics.mean(v('nfe')):.0f} | {statistics.mean(v('wall_s')):.1f} | "  # noqa: E501
                      f"{statistics.mean(v('below')):.2f} +- {sd(v('below')):.2f} | {statistics.mean(v('latent_error')):.4f} | "  # noqa: E501
                      f"{statistics.mean(v('correction_max')):.3f} | {statistics.mean(v('null_steps_changed')):.1f} |")
    path = out / f"edits{args.tag}.json"
    if path.exists():
        rows = json.loads(path.read_text())
        print("\n| config | items | target | preserved | PSNR to target dB | calls |")
        print("|---|---|---|---|---|---|")
        for c in dict.fromkeys(r["config"] for r in rows):
            rs = [r for r in rows if r["config"] == c]
            m = lambda k: statistics.mean(r[k] for r in rs)  # noqa: E731
            print(f"| {c} | {len(rs)} | {m('target'):.2f} | {m('preserved'):.2f} | {m('psnr'):.2f} +- "
                  f"{sd([r['psnr'] for r in rs]):.2f} | {m('nfe'):.0f} |")
    return 0


def pipe_defaults(adapter):
    return adapter.defaults


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("item", choices=["diagnose", "methods", "edits", "table"])
    ap.add_argument("--sets", default="choose,held")
    ap.add_argument("--configs", default="default,anderson_x5,npi,edit_friendly_solved,null_text_guided,null_text")
    ap.add_argument("--stock", action="store_true", help="also regenerate with the stock pipeline (pipeline_kwargs)")
    ap.add_argument("--n", type=int, default=12, help="edit items")
    ap.add_argument("--edit-seed", type=int, default=0)
    ap.add_argument("--strength", type=float, default=0.6)
    ap.add_argument("--n-images", type=int, default=4)
    ap.add_argument("--set", default="held", choices=["held", "choose"])
    ap.add_argument("--held-seed", type=int, default=7300)
    ap.add_argument("--choose-seed", type=int, default=7100)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--steps", default="18", help="sampler steps to analyse (0 = first of sampling)")
    ap.add_argument("--newton-steps", default="18", help="steps that also get Newton and continuation")
    ap.add_argument("--continuation", type=int, default=26, help="guidance increments from 1 to w")
    ap.add_argument("--newton-iterations", type=int, default=6)
    ap.add_argument("--branch-iterations", type=int, default=3)
    ap.add_argument("--starts", default="ddim_start,default_answer")
    ap.add_argument("--power", type=int, default=0, help="power iterations with torch.func.jvp (0: none)")
    ap.add_argument("--no-dense", action="store_true", help="no dense Jacobian spectrum")
    ap.add_argument("--tag", default="")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("THREADS", "1")))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    return {"diagnose": diagnose, "methods": methods, "edits": edits, "table": table}[args.item](args)


if __name__ == "__main__":
    raise SystemExit(main())
