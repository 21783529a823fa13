"""plan() on a GPT-2-medium-sized model (transformers' GPT2LMHeadModel from a config: 24 layers, 1024 wide,
16 heads, random weights, 355 M parameters) on the CPU: its time against one forward pass on the same samples,
and each process's peak memory (the model alone, a forward, plan()). Each measurement runs in its own process.

    python bench/report_gpt2.py [--samples 16] [--tokens 64]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from common import load_torchvision, machine


def model_and_batch(samples: int, tokens: int):
    import torch

    load_torchvision()  # transformers imports torchvision wherever it is installed (common.py says why first)
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=24, n_embd=1024, n_head=16, n_positions=1024, vocab_size=50257)
    model = GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, config.vocab_size, (samples, tokens))
    return model, ids


def measure(what: str, samples: int, tokens: int) -> dict:
    import torch

    import ompq_ext

    model, ids = model_and_batch(samples, tokens)
    params = sum(p.numel() for p in model.parameters())
    start = time.perf_counter()
    out = {"what": what, "params": params}
    if what == "forward":
        with torch.no_grad():
            model(ids)
    elif what.startswith("plan"):
        method = what.split(":")[1]
        plan = ompq_ext.plan(model, [ids], "4bits", method=method, num_samples=samples, progress=False)
        out.update(layers=len(plan.layers), avg_bits=plan.totals.avg_bits, timing=plan.timing,
                   forward_passes=plan.settings.cost["forward_passes"])
    out["seconds"] = time.perf_counter() - start
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.samples, args.tokens)))
        return
    rows = {}
    for what in ("model", "forward", "plan:ompq", "plan:verified"):
        done = subprocess.run([sys.executable, __file__, "--one", what, "--samples", str(args.samples),
                               "--tokens", str(args.tokens)], capture_output=True, text=True, check=True)
        rows[what] = json.loads(done.stdout.strip().splitlines()[-1])
        print(what, rows[what], file=sys.stderr, flush=True)
    fwd = rows["forward"]["seconds"]
    print(f"Command: `python bench/report_gpt2.py --samples {args.samples} --tokens {args.tokens}`  \n"
          f"Machine: {machine()}\n")
    print(f"GPT-2-medium-sized GPT2LMHeadModel from a config (random weights, {rows['model']['params'] / 1e6:.0f} M "
          f"parameters), {args.samples} samples of {args.tokens} tokens, budget 4 bits per weight; each row its own "
          f"process (peak RSS includes the model, {rows['model']['peak_rss_mib']:.0f} MiB when only built)\n")
    print("| run | seconds | / one forward | peak RSS (MiB) | above the model alone (MiB) | stages |")
    print("|---|---|---|---|---|---|")
    base = rows["model"]["peak_rss_mib"]
    for what in ("forward", "plan:ompq", "plan:verified"):
        r = rows[what]
        stages = ", ".join(f"{k} {v:.2f} s" for k, v in r.get("timing", {}).items() if k != "total")
        label = "one forward (no grad)" if what == "forward" else f"plan(method={what.split(':')[1]!r})"
        if "forward_passes" in r:
            stages += f"; {r['forward_passes']} forward passes, {r['layers']} layers"
        print(f"| {label} | {r['seconds']:.2f} | {r['seconds'] / fwd:.2f} | {r['peak_rss_mib']:.0f} | "
              f"{r['peak_rss_mib'] - base:.0f} | {stages} |")


if __name__ == "__main__":
    main()
