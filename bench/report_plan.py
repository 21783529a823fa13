"""Print docs/BENCHMARKS.md's plan() figures: time against one plain forward pass
(interleaved repeats, medians, same process) and extra peak memory against
what storing every layer's features would take.

    python bench/report_plan.py [--samples 32] [--repeats 7] [--arch resnet18|vit_b_16|gpt2] [--method ompq]

--method names the allocator (``ompq_ext.allocators.ALLOCATORS``; "hessian" needs a loss and is not
offered here).

resnet18 and vit_b_16 (torchvision's shapes, built here, random init) take 224 x 224 images and plan
to 4.5 MiB / 4 bits per weight; gpt2 is GPT-2 small from transformers' default config (random init)
on --tokens tokens per sample, planned to 4 bits per weight.
"""

import argparse
import statistics
import time

import torch
from torch import nn

import ompq_ext
from ompq_ext.models import resnet18, vit_b_16

from common import machine, peak_in_child, peak_rss_bytes


BUDGETS = {"resnet18": "4.5MiB", "vit_b_16": "4bits", "gpt2": "4bits"}
TITLES = {"resnet18": "ResNet-18 (random init), {n} x 3 x 224 x 224",
          "vit_b_16": "ViT-B/16 shape (random init), {n} x 3 x 224 x 224",
          "gpt2": "GPT-2 small config (random init), {n} x {t} tokens"}


def setup(samples, arch="resnet18", tokens=128):
    torch.manual_seed(0)
    if arch == "gpt2":
        from common import load_torchvision

        load_torchvision()  # before transformers imports it (see there)
        import transformers

        model = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
        return model, {"input_ids": torch.randint(0, model.config.vocab_size, (samples, tokens))}
    model = {"resnet18": resnet18, "vit_b_16": vit_b_16}[arch]().eval()
    return model, torch.randn(samples, 3, 224, 224)


def forward(model, x):
    with torch.no_grad():
        model(**x) if isinstance(x, dict) else model(x)


def feature_bytes(model, x):
    """Bytes that storing every planned layer's output (float32) would take."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        total += output.numel() * 4

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear)) or type(m).__name__ == "Conv1D"]
    forward(model, x)
    for h in handles:
        h.remove()
    return total


def child(kind, samples, arch, tokens, method):
    """Peak resident memory (bytes) of a process that runs one forward, then (for 'plan') plan()."""
    model, x = setup(samples, arch, tokens)
    forward(model, x)
    if kind == "plan":
        ompq_ext.plan(model, [x], BUDGETS[arch], num_samples=samples, method=method, progress=False)
    print(peak_rss_bytes())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--arch", choices=sorted(BUDGETS), default="resnet18")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per sample (gpt2)")
    parser.add_argument("--method", default="ompq", choices=["ompq", "output_error", "kl", "verified"])
    parser.add_argument("--child", choices=["forward", "plan"])
    args = parser.parse_args()
    if args.child:
        child(args.child, args.samples, args.arch, args.tokens, args.method)
        return

    budget = BUDGETS[args.arch]
    model, x = setup(args.samples, args.arch, args.tokens)
    forward(model, x)  # warm-up
    ompq_ext.plan(model, [x], budget, num_samples=args.samples, method=args.method, progress=False)
    fwd, pln, stages = [], [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        forward(model, x)
        fwd.append(time.perf_counter() - t)
        t = time.perf_counter()
        p = ompq_ext.plan(model, [x], budget, num_samples=args.samples, method=args.method, progress=False)
        pln.append(time.perf_counter() - t)
        stages.append(p.timing)
    f, q = statistics.median(fwd), statistics.median(pln)
    stage = {k: statistics.median(s[k] for s in stages) for k in stages[0]}
    feats = feature_bytes(model, x)
    extra = ["--arch", args.arch, "--tokens", str(args.tokens), "--method", args.method]
    mem_fwd = peak_in_child(__file__, "forward", args.samples, *extra)
    mem_plan = peak_in_child(__file__, "plan", args.samples, *extra)

    print(TITLES[args.arch].format(n=args.samples, t=args.tokens) + f", budget {budget}, "
          f"method {args.method}, {args.repeats} interleaved repeats, medians; {len(p.layers)} weights planned; "
          f"passes over the samples: {p.settings.cost}")
    print(f"machine: {machine()}")
    print()
    print("| measure | value |")
    print("|---|---|")
    print(f"| plain no-grad forward | {f * 1e3:.0f} ms |")
    print(f"| plan() end to end | {q * 1e3:.0f} ms |")
    target = "1.10" if args.method == "ompq" else "10"
    print(f"| **ratio plan / forward** | **{q / f:.3f}** (target <= {target}) |")
    print("| plan() stages | " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in stage.items()) + " |")
    print(f"| peak RSS, forward only | {mem_fwd / 2**20:.0f} MiB |")
    print(f"| peak RSS, forward then plan() | {mem_plan / 2**20:.0f} MiB |")
    print(f"| **extra peak memory of plan()** | **{(mem_plan - mem_fwd) / 2**20:.0f} MiB** |")
    layers = len(p.layers)
    print(f"| the Grams plan() keeps ({layers} weights x N^2 float64) | {layers * args.samples ** 2 * 8 / 2**10:.0f} KiB |")
    print(f"| storing every layer's features instead (float32) | {feats / 2**20:.0f} MiB |")


if __name__ == "__main__":
    main()
