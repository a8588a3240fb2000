"""`nrinv app`: the Gradio editor."""
from __future__ import annotations

import sys

from .common import DEFAULT_MODEL, DTYPE_CHOICES


def cmd_app(args) -> int:
    from ..app import launch

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host}: anyone who can reach this address can use the app "
              "(no authentication)", file=sys.stderr)
    print(f"nrinv app on http://{args.host}:{args.port} (Ctrl-C to stop)", flush=True)
    launch(args.model, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb,
           max_pixels=args.max_pixels, device=args.device, dtype=args.dtype,
           cuda_graphs=args.cuda_graphs)
    return 0


def register(sub) -> None:
    from ..io.images import DEFAULT_MAX_PIXELS

    p = sub.add_parser("app", help="web app: invert once, edit interactively")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: localhost only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--max-upload-mb", type=int, default=20)
    p.add_argument("--max-pixels", type=int, default=2048 * 2048)
    p.add_argument("--device", default="auto", help="torch device: auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                   help="network dtype; auto: float32 on the CPU, half precision on a GPU")
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                   help="run the network eagerly on CUDA instead of replaying captured CUDA graphs")
    p.set_defaults(func=cmd_app)
