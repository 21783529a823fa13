"""Measurement helpers shared by the bench/report_*.py scripts."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import time

import numpy as np
import torch

from ompq_ext import _core as core


def interleaved_medians(fns: dict, repeats: int) -> dict:
    """Median seconds of each callable; one warm-up call each, then the repeats interleaved."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def machine() -> str:
    model = platform.processor() or "unknown"
    cores = os.cpu_count()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        model = fields.get("Model name", model).strip()
        cores = f"{fields.get('Core(s) per socket', '?').strip()} cores/socket × " \
                f"{fields.get('Socket(s)', '?').strip()} socket(s), {fields.get('CPU(s)', '?').strip()} CPUs"
    except (OSError, subprocess.CalledProcessError, ValueError):
        pass
    return (f"{model}; {cores}; torch {torch.__version__} ({torch.get_num_threads()} threads); "
            f"numpy {np.__version__}; core kernels {core.best_isa()}, OpenMP {core.openmp}; "
            f"{datetime.date.today().isoformat()}")


def peak_rss_bytes() -> int:
    """This process's peak resident memory. VmHWM belongs to the process's own address space;
    ru_maxrss would not do for a subprocess: Linux carries the parent's high-water mark over
    fork + exec, so every child of a large parent reports at least the parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def peak_in_child(script: str, kind: str, samples: int, *extra: str) -> int:
    """Peak RSS (bytes) that ``script --child KIND --samples N [extra...]`` prints: each measurement in a
    fresh process."""
    import sys

    out = subprocess.run([sys.executable, script, "--child", kind, "--samples", str(samples), *extra],
                         check=True, capture_output=True, text=True)
    return int(out.stdout.split()[-1])


def busy_percent(seconds: float = 1.0):
    """CPU time used by anything (all processes) over `seconds`, in % of all CPUs (Linux only)."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # total, idle + iowait
    try:
        t1, i1 = sample()
        time.sleep(seconds)
        t2, i2 = sample()
        return 100.0 * (1 - (i2 - i1) / max(t2 - t1, 1))
    except OSError:
        return None


def load_torchvision():
    """torchvision, or None where it is not installed. Its PyPI wheels link CUDA's libraries, so beside a
    CPU build of torch its compiled ops (nms, roi_align, ...) do not load and its import fails where it
    registers their meta kernels; its model definitions are pure Python and need none of them. There
    the import is retried with those registrations left out (only the compiled ops stay unusable).
    tests/conftest.py and the benchmarks call this first, as transformers imports torchvision wherever it is installed."""
    import importlib.util
    import sys
    import types

    if importlib.util.find_spec("torchvision") is None:
        return None
    try:
        import torchvision
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
        import torchvision
    return torchvision
