"""`nrinv app`: the Gradio editor."""
from __future__ import annotations

import sys

from .common import DTYPE_CHOICES, UsageError, check_device


def cmd_app(args) -> int:
    from ..app import Limits, default_models, launch

    check_device(args.device)
    named = ([args.model] if args.model else []) + [m.strip() for m in (args.models or "").split(",") if m.strip()]
    models = default_models(named)
    if not models:
        raise UsageError("no model to serve: name one with --model or --models")
    limits = Limits(max_steps=args.max_steps, max_iterations=args.max_iterations, max_nfe=args.max_nfe,
                    max_pixels=args.max_pixels, queue_size=args.queue_size, max_seconds=args.max_seconds)
    if not limits.max_seconds > 0 or limits.queue_size < 1:
        raise UsageError("--max-seconds must be above 0 and --queue-size at least 1")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host}: anyone who can reach this address can use the app "
              "(no authentication)", file=sys.stderr)
    print(f"nrinv app on http://{args.host}:{args.port} serving {', '.join(models)} (Ctrl-C to stop); each "
          f"request is capped at {limits.max_seconds:g} s of model work (priced from measured call costs before it "
          "runs, ended at a step past the cap), "
          f"so a request waits about {limits.worst_wait_s(1):g} s at most behind one other and "
          f"{limits.worst_wait_s():g} s behind a full queue of {limits.queue_size}", flush=True)
    launch(models, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb, limits=limits,
           device=args.device, dtype=args.dtype, cuda_graphs=args.cuda_graphs)
    return 0


def register(sub) -> None:
    from ..app import Limits

    d = Limits()
    p = sub.add_parser("app", help="web app: invert once, edit interactively",
                       description="Serve the editor. Users pick a model from an allow-list: the model named by "
                                   "--model and --models, then the built-in models; nothing a user types loads "
                                   "anything else. Requests are capped and queued.")
    p.add_argument("--model", default=None, help="the default model (hub id, local folder or builtin:NAME)")
    p.add_argument("--models", default=None, metavar="M1,M2", help="more models users may pick")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: localhost only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--max-upload-mb", type=int, default=20)
    p.add_argument("--max-pixels", type=int, default=d.max_pixels, help="largest upload, in pixels")
    p.add_argument("--max-steps", type=int, default=d.max_steps, help="steps a request may ask for at most")
    p.add_argument("--max-iterations", type=int, default=d.max_iterations, help="iterations per step at most")
    p.add_argument("--max-nfe", type=int, default=d.max_nfe, help="network calls one request may cost at most")
    p.add_argument("--max-seconds", type=float, default=d.max_seconds,
                   help="seconds of model work one request may take: priced before it runs (network calls at what "
                        "one call of that model, precision and method measured here) and ended at the first step "
                        "past it")
    p.add_argument("--queue-size", type=int, default=d.queue_size, help="requests that may wait; more are refused")
    p.add_argument("--device", default="auto", help="torch device: auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                   help="network dtype; auto: float32 on the CPU, half precision on a GPU")
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                   help="run the network eagerly on CUDA instead of replaying captured CUDA graphs")
    p.set_defaults(func=cmd_app)
