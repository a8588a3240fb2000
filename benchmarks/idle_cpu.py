"""What an idle app costs: `python benchmarks/idle_cpu.py [--seconds 10]`.

Starts each server in its own process, waits until it answers and settles, then reads the process's
CPU clock ticks (utime + stime in /proc/<pid>/stat) over ``--seconds`` with nobody connected:

* ``nrinv app`` as shipped (builtin:shapes loaded);
* a minimal Gradio Blocks app with a queue, stock (Gradio's own idle cost);
* the same minimal app after ``nrinv.app.quiet_when_idle`` (the fix, alone).

Target: the shipped app under 2% of one core. Linux only (/proc). Writes
benchmarks/results/idle_cpu.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MINIMAL = """
import sys, time
import gradio as gr
from nrinv.app import quiet_when_idle
with gr.Blocks() as demo:
    box = gr.Textbox()
    gr.Button().click(lambda x: x, box, box)
demo.queue(default_concurrency_limit=1, max_size=8)
if sys.argv[2] == "quiet":
    quiet_when_idle(demo)
demo.launch(server_port=int(sys.argv[1]), prevent_thread_lock=True, quiet=True)
while True:
    time.sleep(3600)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))


def measure(cmd: list[str], port: int, seconds: float, settle: float) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", OMP_NUM_THREADS="1")
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 300
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    if proc.poll() is not None or time.time() > deadline:
                        log.seek(0)
                        raise RuntimeError(f"{cmd} did not start: {log.read().decode()[-2000:]}") from None
                    time.sleep(0.5)
            time.sleep(settle)
            t0, w0 = ticks(proc.pid), time.perf_counter()
            time.sleep(seconds)
            used, wall = ticks(proc.pid) - t0, time.perf_counter() - w0
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    hz = os.sysconf("SC_CLK_TCK")
    return {"ticks": used, "clock_ticks_per_s": hz, "wall_s": round(wall, 2),
            "percent_of_a_core": round(100.0 * used / hz / wall, 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--settle", type=float, default=5.0, help="seconds after start-up before measuring")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "idle_cpu.json"))
    args = ap.parse_args(argv)
    import gradio

    rows = {}
    port = free_port()
    rows["nrinv app (builtin:shapes)"] = measure([sys.executable, "-m", "nrinv", "app", "--port", str(port)],
                                                 port, args.seconds, args.settle)
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "minimal.py"
        script.write_text(MINIMAL)
        for mode, label in (("stock", "minimal Gradio app, stock"), ("quiet", "minimal Gradio app + quiet_when_idle")):
            port = free_port()
            rows[label] = measure([sys.executable, str(script), str(port), mode], port, args.seconds, args.settle)
    print(f"idle CPU over {args.seconds:.0f} s, nobody connected (gradio {gradio.__version__}; target < 2% of a core)")
    print("| server | clock ticks | % of one core |")
    print("|---|---|---|")
    for label, row in rows.items():
        print(f"| {label} | {row['ticks']} | {row['percent_of_a_core']:.2f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.platform(), "gradio": gradio.__version__,
                               "seconds": args.seconds, "rows": rows}, indent=2) + "\n")
    ok = rows["nrinv app (builtin:shapes)"]["percent_of_a_core"] < 2.0
    print("target met" if ok else "TARGET MISSED: the idle app uses 2% of a core or more")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
