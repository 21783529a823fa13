"""Print docs/BENCHMARKS.md's plan()-versus-reference figures: end to end, the ORM stage alone,
and peak memory, both sides in the same process (interleaved repeats, medians), plus whether
the two agree and whether the reference's rounding kept the budget.

    python bench/report_reference.py [--samples 32 64] [--repeats 3]

The reference-style pipeline is bench/reference_pipeline.py (METHOD.md section 2).
"""

import argparse

import numpy as np
import torch

import ompq_ext
from ompq_ext import _core
from ompq_ext.budget import parse_budget
from ompq_ext.models import resnet18

import reference_pipeline as ref
from common import interleaved_medians, machine, peak_in_child, peak_rss_bytes

BUDGET = "4.5MiB"


def setup(samples):
    torch.manual_seed(0)
    model = resnet18().eval()
    return model, torch.randn(samples, 3, 224, 224)


def budget_bits():
    """The size limit in bits (a size budget does not depend on the model's parameter split)."""
    return parse_budget(BUDGET).size_limit_bits(planned_params=0, other_params=0)


def other_params(model):
    planned = sum(m.weight.numel() for m in model.modules() if isinstance(m, ref.LAYER_TYPES))
    return sum(p.numel() for p in model.parameters()) - planned


def run_plan(model, x):
    # The reference's objective and bit range, so the two pipelines solve the same problem.
    return ompq_ext.plan(model, [x], BUDGET, bits=range(2, 9), objective="suffix_mean", num_samples=len(x),
                         progress=False)


def run_reference(model, x):
    return ref.run(model, x, budget_bits(), other_params=other_params(model))


def core_orm_stage(feats):
    """What plan() does with the same features: the core's Gram accumulation and one-product ORM."""
    n = feats[0].shape[0]
    grams = np.zeros((len(feats), n, n))
    for f, g in zip(feats, grams):
        _core.gram_accumulate(f, g)
    return _core.orm_matrix(grams, "biased", 0)


def child(kind, samples):
    """Peak RSS (bytes) of a fresh process that runs one plain forward, plan() or the reference.
    (Each in its own process: memory freed by an earlier run stays resident and would hide the rest.)"""
    model, x = setup(samples)
    if kind == "forward":
        with torch.no_grad():
            model(x)
    elif kind == "plan":
        run_plan(model, x)
    elif kind == "reference":
        run_reference(model, x)
    print(peak_rss_bytes())


def report(samples, repeats):
    model, x = setup(samples)
    t = interleaved_medians({"plan": lambda: run_plan(model, x), "reference": lambda: run_reference(model, x)},
                            repeats)
    p, r = run_plan(model, x), run_reference(model, x)
    _, feats, _ = ref.store_features(model, x)
    stage = interleaved_medians({"core": lambda: core_orm_stage(feats), "reference": lambda: ref.orm_stage(feats)},
                                repeats)
    del feats
    mem = {k: peak_in_child(__file__, k, samples) for k in ("forward", "plan", "reference")}
    limit = budget_bits()
    a = r["allocation"]
    print(f"#### ResNet-18 (random init), N = {samples}, 224 px, budget {BUDGET}, bits 2–8\n")
    print("| measure | plan() | reference-style | reference / plan() |")
    print("|---|---|---|---|")
    print(f"| end to end (median of {repeats}) | {t['plan'] * 1e3:.0f} ms | {t['reference'] * 1e3:.0f} ms | "
          f"**{t['reference'] / t['plan']:.1f}×** |")
    print(f"| ORM stage from the same stored features | {stage['core'] * 1e3:.1f} ms | {stage['reference'] * 1e3:.1f} ms | "
          f"**{stage['reference'] / stage['core']:.1f}×** |")
    extra = {k: (mem[k] - mem["forward"]) / 2**20 for k in ("plan", "reference")}
    ratio = "plan() adds none" if extra["plan"] <= 0 else f"{extra['reference'] / extra['plan']:.1f}×"
    print(f"| extra peak RSS over one plain forward (each in a fresh process) | {extra['plan']:.0f} MiB | {extra['reference']:.0f} MiB | {ratio} |")
    print(f"| peak RSS of the process | {mem['plan'] / 2**20:.0f} MiB | {mem['reference'] / 2**20:.0f} MiB | |")
    print(f"| size of the plan (limit {limit / 8 / 2**20:.4f} MiB) | {p.totals['size_bits'] / 8 / 2**20:.4f} MiB | "
          f"{a.size_bits / 8 / 2**20:.4f} MiB{' **over budget**' if r['over_budget'] else ''} | |")
    assert r["names"] == p.layer_names  # both in execution order
    ref_objective = sum(x.weight * b for x, b in zip(p.layers, a.bits))
    print(f"| objective Σ w·b (plan()'s weights for both) | {p.solver['objective']:.6f} | {ref_objective:.6f} | |")
    held = sum(f.nbytes for f in ref.store_features(model, x)[1])
    print(f"| memory held between the forward pass and the ORM | {p.orm.shape[0] * samples**2 * 8 / 2**10:.0f} KiB of Grams | "
          f"{held / 2**20:.0f} MiB of features | {held / (p.orm.shape[0] * samples**2 * 8):.0f}× |")
    print(f"\nORM of the two pipelines: max |difference| {np.abs(p.orm - r['orm']).max():.1e}; "
          f"stage times of the reference: " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in r["timing"].items()) + "\n")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=["forward", "plan", "reference"])
    args = parser.parse_args()
    if args.child:
        child(args.child, args.samples[0])
        return
    print(f"Command: `python bench/report_reference.py`  \nMachine: {machine()}\n")
    for n in args.samples:
        report(n, args.repeats)


if __name__ == "__main__":
    main()
