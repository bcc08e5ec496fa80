"""The timing harness of the backbone benchmark (bench/backbones.py): timed repeats after warm-up,
peak memory per case, and torch.profiler views (top ops, the labelled phases of one agent update).
"""
from __future__ import annotations

import pathlib
import time

import torch


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn, device, warmup: int, repeats: int, budget: float, warm_length: int) -> list[float]:
    """fn(length) runs one step on the first `length` steps (None: all); returns the timed ones."""
    for _ in range(warmup):
        fn(warm_length)
    sync(device)
    times = []
    while len(times) < max(1, repeats) and sum(times) <= budget:
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def _proc_status(field: str) -> float:
    """A /proc/self/status size in MiB (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        line = next(l for l in f if l.startswith(field + ":"))
    return int(line.split()[1]) / 1024


class PeakMemory:
    """Peak memory between construction and read(), in MiB: torch's max allocated on CUDA; on CPU
    the peak resident set, reset at construction by `clear_refs 5` (Linux >= 4.0) so that several
    cases in one process each get their own peak (an upper bound: freed heap may stay resident)."""

    def __init__(self, device):
        self.device = device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            self.base = torch.cuda.memory_allocated(device) / 2 ** 20
            return
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        self.base = _proc_status("VmRSS")

    def read(self) -> dict:
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        else:
            peak = _proc_status("VmHWM")
        return {"peak_mb": round(peak, 1), "mem_mb": round(peak - self.base, 1)}


def profiled(fn, device):
    """torch.profiler over one call of fn -> (its key_averages, whether device times exist)."""
    from torch.profiler import ProfilerActivity, profile
    cuda = device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        fn()
        sync(device)
    return prof.key_averages(), cuda


def profile_top(fn, device, path: pathlib.Path, top: int = 8) -> list[dict]:
    """torch.profiler over one call of fn: full table to `path`; returns the top ops (self time)."""
    events, cuda = profiled(fn, device)
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    path.write_text(events.table(sort_by=attr, row_limit=30, max_name_column_width=60))
    total = sum(getattr(e, attr) for e in events) or 1.0
    best = sorted(events, key=lambda e: getattr(e, attr), reverse=True)[:top]
    return [{"op": e.key, "self_ms": round(getattr(e, attr) / 1e3, 1),
             "pct": round(100 * getattr(e, attr) / total, 1), "calls": e.count} for e in best]


# The record_function labels of one Agent.update (world_models/base.py, agent/), in order.
PHASES = ("wm/encode", "wm/observe", "wm/decode_heads_loss", "wm/backward_step", "ac/imagine",
          "ac/heads_loss", "ac/backward_step")


def profile_phases(fn, device) -> dict:
    """Seconds spent in each labelled phase of one call of fn (an Agent.update) under
    torch.profiler; the profiler's overhead inflates the parts with many small ops (RSSM's loop),
    so compare shares within a row, not against the timed update. On CUDA a label's GPU-side
    annotation span is used where the profiler records one (its CPU range only times the kernel
    launches; not yet run on a GPU), else the CPU range."""
    from torch.autograd import DeviceType
    averages, _ = profiled(fn, device)
    chosen = {}
    for e in averages:  # a label may appear as a CPU range and as a GPU annotation
        if e.key in PHASES and (e.key not in chosen or e.device_type != DeviceType.CPU):
            chosen[e.key] = e

    def seconds(e):
        return (e.cpu_time_total if e.device_type == DeviceType.CPU else e.device_time_total) / 1e6
    return {k: round(seconds(chosen[k]), 3) for k in PHASES if k in chosen}
