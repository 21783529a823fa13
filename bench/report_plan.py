"""Print docs/BENCHMARKS.md's plan() figures: time against one plain forward pass
(interleaved repeats, medians, same process) and extra peak memory against
what storing every layer's features would take.

    python bench/report_plan.py [--samples 32] [--repeats 7]
"""

import argparse
import statistics
import time

import torch
from torch import nn

import ompq_ext
from ompq_ext.models import resnet18

from common import machine, peak_in_child, peak_rss_bytes


def setup(samples):
    torch.manual_seed(0)
    model = resnet18().eval()
    x = torch.randn(samples, 3, 224, 224)
    return model, x


def forward(model, x):
    with torch.no_grad():
        model(x)


def feature_bytes(model, x):
    """Bytes that storing every planned layer's output (float32) would take."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        total += output.numel() * 4

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    forward(model, x)
    for h in handles:
        h.remove()
    return total


def child(kind, samples):
    """Peak resident memory (bytes) of a process that runs one forward, then (for 'plan') plan()."""
    model, x = setup(samples)
    forward(model, x)
    if kind == "plan":
        ompq_ext.plan(model, [x], "4.5MiB", num_samples=samples, progress=False)
    print(peak_rss_bytes())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--child", choices=["forward", "plan"])
    args = parser.parse_args()
    if args.child:
        child(args.child, args.samples)
        return

    model, x = setup(args.samples)
    forward(model, x)  # warm-up
    ompq_ext.plan(model, [x], "4.5MiB", num_samples=args.samples, progress=False)
    fwd, pln, stages = [], [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        forward(model, x)
        fwd.append(time.perf_counter() - t)
        t = time.perf_counter()
        p = ompq_ext.plan(model, [x], "4.5MiB", num_samples=args.samples, progress=False)
        pln.append(time.perf_counter() - t)
        stages.append(p.timing)
    f, q = statistics.median(fwd), statistics.median(pln)
    stage = {k: statistics.median(s[k] for s in stages) for k in stages[0]}
    feats = feature_bytes(model, x)
    mem_fwd, mem_plan = peak_in_child(__file__, "forward", args.samples), peak_in_child(__file__, "plan", args.samples)

    print(f"ResNet-18 (random init), {args.samples} x 3 x 224 x 224, {args.repeats} interleaved repeats, medians")
    print(f"machine: {machine()}")
    print()
    print("| measure | value |")
    print("|---|---|")
    print(f"| plain no-grad forward | {f * 1e3:.0f} ms |")
    print(f"| plan() end to end | {q * 1e3:.0f} ms |")
    print(f"| **ratio plan / forward** | **{q / f:.3f}** (target <= 1.25) |")
    print("| plan() stages | " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in stage.items()) + " |")
    print(f"| peak RSS, forward only | {mem_fwd / 2**20:.0f} MiB |")
    print(f"| peak RSS, forward then plan() | {mem_plan / 2**20:.0f} MiB |")
    print(f"| **extra peak memory of plan()** | **{(mem_plan - mem_fwd) / 2**20:.0f} MiB** |")
    layers = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    print(f"| the Grams plan() keeps ({layers} layers x N^2 float64) | {layers * args.samples ** 2 * 8 / 2**10:.0f} KiB |")
    print(f"| storing every layer's features instead (float32) | {feats / 2**20:.0f} MiB |")


if __name__ == "__main__":
    main()
