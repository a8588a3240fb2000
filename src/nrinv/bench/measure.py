"""Measurement on the machine at hand: peak memory, device synchronisation, what the machine is."""
from __future__ import annotations

import platform
import threading
import time
from typing import Any

import torch

from .._version import __version__
from ..core.adapters import adapter_for

__all__ = ["PeakMemory", "NetworkTime", "sync", "machine_info", "median_seconds"]


class PeakMemory:
    """Peak memory growth in MB during a block: on CUDA the caching allocator's peak *reserved* memory
    (``max_memory_allocated`` misses the private pools of captured CUDA graphs), else the sampled
    resident set."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mb = 0.0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_reserved(self.device)
            return self
        import psutil

        self.proc = psutil.Process()
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self.running = True

        def sample():
            while self.running:
                self.peak = max(self.peak, self.proc.memory_info().rss)
                time.sleep(0.002)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = (torch.cuda.max_memory_reserved(self.device) - self.base) / 2**20
        else:
            self.running = False
            self.thread.join()
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self.peak_mb = (self.peak - self.base) / 2**20
        return False


class NetworkTime:
    """Seconds spent inside a network's forward during a block, and its number of calls: forward hooks
    on the module (on CUDA the device is synchronised around each call, so the time is the call's).
    Calls replayed from captured CUDA graphs never enter the module's forward and are not counted:
    compare ``calls`` with the calls made before using ``seconds``."""

    def __init__(self, network: torch.nn.Module, device: torch.device):
        self.network, self.device = network, device
        self.seconds, self.calls = 0.0, 0
        self._started: list[float] = []

    def _pre(self, module, args) -> None:
        sync(self.device)
        self._started.append(time.perf_counter())

    def _post(self, module, args, output) -> None:
        sync(self.device)
        self.seconds += time.perf_counter() - self._started.pop()
        self.calls += 1

    def __enter__(self):
        self._hooks = [self.network.register_forward_pre_hook(self._pre),
                       self.network.register_forward_hook(self._post)]
        return self

    def __exit__(self, *exc):
        for hook in self._hooks:
            hook.remove()
        return False


def median_seconds(fn, repeats: int, warmup: int = 1) -> float:
    """The median wall time of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    import statistics

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine_info(pipe: Any) -> dict:
    import diffusers

    adapter = adapter_for(pipe)
    info = {
        "nrinv": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
        "python": platform.python_version(), "platform": platform.platform(), "processor": platform.processor(),
        "cpu_threads": torch.get_num_threads(), "device": str(adapter.device), "dtype": str(adapter.dtype),
        "pipeline": type(adapter.pipe).__name__, "scheduler": type(adapter.pipe.scheduler).__name__,
        "model_kind": adapter.defaults.kind, "cuda_graphs": adapter.graphs is not None,
    }
    if adapter.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(adapter.device)
    return info
