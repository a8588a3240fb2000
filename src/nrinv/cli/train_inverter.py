"""`nrinv train-inverter`: train the learned initial guess (``nrinv.core.inverter``) for a model."""
from __future__ import annotations

from .common import UsageError, add_model_args, load_model


def register(sub) -> None:
    p = sub.add_parser("train-inverter", help="train the learned initial guess of the inversion solver for a model "
                       "(saved beside the model, used by `nrinv invert` with warm start \"learned\")")
    add_model_args(p, default="builtin:shapes-lcm")
    p.add_argument("-o", "--output", default=None,
                   help="folder for inverter.safetensors and inverter.json (default: <model folder>/inverter)")
    p.add_argument("--time-budget-min", type=float, default=10.0, help="training time (default: %(default)s)")
    p.add_argument("--steps", default=None, help="comma-separated step counts to train on (default: the model's)")
    p.add_argument("--guidance", default=None, help="comma-separated guidance scales (default: the model's)")
    p.add_argument("--prompts", default=None, help="text file with one prompt per line (default for the built-in "
                   "models: random captions of the shapes world)")
    p.add_argument("--width", type=int, default=32, help="network width (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="examples per update (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd)


def _numbers(text, kind):
    try:
        return [kind(x) for x in text.split(",") if x.strip()] if text else None
    except ValueError:
        raise UsageError(f"expected comma-separated numbers, got {text!r}") from None


def _cmd(args) -> int:
    import json
    from pathlib import Path

    import torch

    from ..core.inverter import inverter_dir
    from ..loading import train_inverter

    if args.threads:
        torch.set_num_threads(args.threads)
    steps, guidance = _numbers(args.steps, int), _numbers(args.guidance, float)
    prompts = None
    if args.prompts:
        path = Path(args.prompts)
        if not path.is_file():
            raise UsageError(f"{path}: no such prompt file")
        prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not prompts:
            raise UsageError(f"{path} holds no prompts")
    adapter = load_model(args.model, args.dtype, args.device, args.cuda_graphs)
    out = Path(args.output) if args.output else inverter_dir(adapter)
    if out is None:
        raise UsageError("the model was not loaded from a local folder: pass --output FOLDER")
    if (out / "inverter.safetensors").exists() and not args.force:
        raise UsageError(f"{out}/inverter.safetensors exists; pass --force to replace it")
    bar = None if args.quiet else _ProgressBar(args.time_budget_min * 60)
    try:
        guess = train_inverter(adapter, out, prompts=prompts, steps=steps or [adapter.defaults.num_inference_steps],
                               guidance=guidance, time_budget_s=args.time_budget_min * 60, width=args.width,
                               batch_size=args.batch_size, seed=args.seed, log=bar and bar.write,
                               progress=bar and bar.update)
    finally:
        if bar is not None:
            bar.close()
    if not args.quiet:
        print(json.dumps({k: v for k, v in guess.info["training"].items() if k != "history"}))
        print(f"wrote {guess.path}")
    return 0


class _ProgressBar:
    """The training's progress on stderr: time spent of the budget, updates and the running loss."""

    def __init__(self, budget_s: float):
        from tqdm import tqdm

        self.bar = tqdm(total=max(1, round(budget_s)), unit="s", desc="training", mininterval=1.0,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s{postfix}")

    def update(self, state: dict) -> None:
        self.bar.set_postfix_str(f"{state['updates']} updates, loss {state['loss']:.4f}", refresh=False)
        self.bar.update(min(float(self.bar.total), state["elapsed_s"]) - self.bar.n)

    def write(self, line: str) -> None:
        self.bar.write(line)

    def close(self) -> None:
        self.bar.close()
