"""Allocation-quality study (issue 4): which bit allocator gives the most accurate model at
the same size? Writes the results section of docs/QUALITY.md.

    python bench/quality/study.py --output docs/QUALITY.results.md --json study.json   # the documented run
    python bench/quality/study.py --quick                                               # one seed, 3 bits

For every testbed instance (MNIST-1D 1-D ResNet seeds 0-4, Fashion-MNIST 2-D ResNet seeds 0-2,
all-MiniLM-L6-v2 on chatterbot-corpus retrieval) and every budget (average 2.5, 3, 4 bits per
planned weight), plans from every allocator in bench/quality/allocators.py -- OMPQ with plan()'s
defaults and its variants, parameter counts only, random plans, Hessian trace, greedy KL and the
KL table through the solver -- share the bit choices of OMPQ's default plan and the exact solver,
so each plan has the same size limit. Every plan is quantized by ``ompq_ext.quantize``: weights
per output channel at the planned bits, activations 8-bit per tensor, plain rounding; at the --recon-budgets also BRECQ-style block reconstruction for the
allocators in --recon-allocators. Identical bit vectors are quantized once per instance.
"""

from __future__ import annotations

import os

# Spinning OpenMP threads slow every op tens of times when another process shares the cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import datetime
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import allocators as al  # noqa: E402
import data as qdata  # noqa: E402
import minilm  # noqa: E402
import train as qtrain  # noqa: E402
from common import machine  # noqa: E402
from ptq_table import code_state  # noqa: E402

import ompq_ext  # noqa: E402
from ompq_ext.cli import PLAN_DEFAULTS  # noqa: E402
from ompq_ext.features import FEATURE_POINTS  # noqa: E402
from ompq_ext.orthogonality import OBJECTIVES  # noqa: E402
from ompq_ext.quant.api import quantize  # noqa: E402

DATA_NEEDS = {
    "uniform": "none",
    "OMPQ": "N unlabeled inputs, one forward pass",
    "params-only": "none (parameter counts)",
    "random": "none",
    "Hessian trace": "labelled calibration set; gradients and Hessian-vector products",
    "greedy KL": "unlabeled calibration set; one forward per layer and bit-width",
    "KL table → solver": "the same as greedy KL",
}


# ---------------------------------------------------------------- testbeds


def classification_task(name: str, seed: int, split, args, log) -> al.Task:
    model, rec = qtrain.get_model(name, seed, split=split, log=log)
    model.eval()
    x, y = qdata.calibration(split, args.calib, seed, labels=True)

    def outputs(m):
        with torch.no_grad():
            return m(x)

    def divergence(out, ref):
        return float(F.kl_div(F.log_softmax(out, 1), F.log_softmax(ref, 1), log_target=True, reduction="batchmean"))

    return al.Task(
        testbed=name, seed=seed, model=model, calib=qdata.batches(x, args.batch_size), input_fn=None,
        loss=lambda m: F.cross_entropy(m(x), y), outputs=outputs, divergence=divergence,
        evaluate=lambda m: {"score": qtrain.evaluate(m, split.x_test, split.y_test)},
        probes=args.probes, info={"fp32": qtrain.evaluate(model, split.x_test, split.y_test), "cached": rec["loaded"]},
    )


def minilm_task(seed: int, args, log) -> al.Task:
    model = minilm.load_model()
    pairs = minilm.load_pairs()
    corpus = minilm.corpus(model, pairs)
    g = torch.Generator().manual_seed(10_000 + seed)
    pick = torch.randperm(len(pairs), generator=g)[:args.calib].tolist()
    questions = [pairs[i][0] for i in pick]
    # One tokenisation for all calibration questions: every batch has the same padded length.
    calib_all = minilm.tokenize(model, questions)[0]
    calib = [{k: v[i:i + args.batch_size] for k, v in calib_all.items()} for i in range(0, len(pick), args.batch_size)]
    kl_inputs = {k: v[:64] for k, v in calib_all.items()}
    q_pairs = minilm.tokenize(model, [pairs[i][0] for i in pick[:64]])[0]
    a_pairs = minilm.tokenize(model, [pairs[i][1] for i in pick[:64]])[0]

    def loss(m):  # in-batch contrastive retrieval loss on 64 labelled question-answer pairs
        q = F.normalize(m(q_pairs)["sentence_embedding"], dim=1)
        a = F.normalize(m(a_pairs)["sentence_embedding"], dim=1)
        return F.cross_entropy(q @ a.T / 0.05, torch.arange(len(q)))

    def outputs(m):
        with torch.no_grad():
            return m(kl_inputs)["sentence_embedding"]

    fp32 = minilm.evaluate(model, corpus)
    reference = fp32.pop("embeddings")

    def evaluate(m):
        r = minilm.evaluate(m, corpus, reference)
        return {"score": r["top1"], "cosine": r["cosine"]}

    log(f"minilm: FP32 top-1 {fp32['top1']:.4f}, {len(pairs)} pairs, {len(corpus.answers)} distinct answers")
    return al.Task(
        testbed="minilm", seed=seed, model=model, calib=calib, input_fn=minilm.as_call, loss=loss,
        outputs=outputs, divergence=lambda out, ref: float(1 - F.cosine_similarity(out, ref).mean()),
        evaluate=evaluate, probes=args.minilm_probes, info={"fp32": fp32["top1"], "cached": True},
        # mean pooling never reads the pooler: its output reaches no embedding, so it is not planned
        plan_kwargs={"exclude": ["*pooler*"]},
    )


# ---------------------------------------------------------------- one instance


def ompq_variants(args):
    """(label, plan() overrides) of OMPQ's variants; the first is plan()'s defaults, each other
    one changes one setting away from them."""
    out = [("OMPQ default", {})]
    for key, choices in (("objective", OBJECTIVES), ("feature_point", FEATURE_POINTS)):
        for value in choices:
            if value != PLAN_DEFAULTS[key]:
                out.append((f"OMPQ {key}={value}", {key: value}))
    for beta in args.betas:
        out.append((f"OMPQ β={beta:g}", {"beta": beta}))
    for n in args.samples:
        out.append((f"OMPQ N={n}", {"num_samples": n}))
    out.append(("OMPQ bits 2–8", {"bits": range(2, 9)}))
    return out


def run_instance(task: al.Task, args, log) -> list[dict]:
    runs = []
    model = task.model
    kw = dict(input_fn=task.input_fn, progress=False, **task.plan_kwargs)
    qkw = dict(input_fn=task.input_fn, progress=False)
    log(f"{task.testbed} seed {task.seed}: FP32 score {task.info['fp32']:.4f}")
    runs.append(dict(testbed=task.testbed, seed=task.seed, budget="32", allocator="FP32", family="FP32",
                     method="-", score=task.info["fp32"], avg_bits=32.0))

    # Budget-independent measurements, once per instance. The first plan() is a warm-up (its time
    # would include loading the solver); OMPQ's plan at each budget is then timed once and reused.
    names = ompq_ext.plan(model, task.calib, f"{args.budgets[0]}bits", **kw).layer_names
    bases = {budget: al.timed(ompq_ext.plan, model, task.calib, f"{budget}bits", **kw) for budget in args.budgets}
    qw = al.QuantizedWeights(model, names)
    all_bits = sorted({b for base, _ in bases.values() for b in base.settings["bits"]})
    (traces, t_hessian) = al.timed(al.hutchinson_traces, task, names, task.probes, task.seed)
    reference = task.outputs(model)
    t = time.perf_counter()
    table = al.kl_table(task, names, all_bits, qw, reference)
    t_kl = time.perf_counter() - t
    t = time.perf_counter()
    for n in names:  # the squared weight perturbations (shared by the Hessian allocator)
        for b in all_bits:
            qw.error(n, b)
    t_qw = time.perf_counter() - t
    log(f"  Hessian traces {t_hessian:.1f} s ({task.probes} probes), KL table {t_kl:.1f} s, "
        f"quantized weights {t_qw:.1f} s")

    if task.testbed == "minilm":  # what 8-bit per-tensor activations cost the transformer alone
        for wb in (8, 4):
            for ab in (8, 0):
                p = ompq_ext.plan(model, task.calib, f"{wb}bits", bits=[wb], **kw)
                q = quantize(model, p, calib=task.calib, method="rtn", act_bits=ab, num_calib=args.calib, **qkw)
                r = task.evaluate(q)
                runs.append(dict(testbed=task.testbed, seed=task.seed, budget=str(wb), allocator=f"uniform W{wb}A{ab or 32}",
                                 family="activation check", method="rtn", avg_bits=float(wb), **r))
                log(f"  uniform W{wb}A{ab or 32}: {r}")

    for budget in args.budgets:
        base, t_base = bases[budget]
        plans = []  # (allocator, family, plan, search seconds)
        b = float(budget)
        if b == int(b):
            t = time.perf_counter()
            plans.append(("uniform", "uniform", ompq_ext.plan(model, task.calib, f"{budget}bits", bits=[int(b)], **kw),
                          time.perf_counter() - t))
        plans.append(("OMPQ default", "OMPQ", base, t_base))
        for label, opts in ompq_variants(args)[1:]:
            t = time.perf_counter()
            p = ompq_ext.plan(model, task.calib, f"{budget}bits", **kw, **opts)
            plans.append((label, "OMPQ variant", p, time.perf_counter() - t))
        # Search time of the allocators below: their scores and solve (the feature pass that plan() also
        # runs for them is not theirs to pay) plus the sensitivities they measured once per instance.
        p = al.params_only(task, base)
        plans.append(("params-only", "params-only", p, al.search_seconds(p)))
        p = al.hessian_plan(task, base, traces, qw)
        plans.append(("Hessian trace", "Hessian trace", p, al.search_seconds(p) + t_hessian + t_qw))
        p = al.greedy(task, base, table)
        plans.append(("greedy KL", "greedy KL", p, al.search_seconds(p) + t_kl))
        p = al.kl_plan(task, base, table)
        plans.append(("KL table → solver", "KL table → solver", p, al.search_seconds(p) + t_kl))
        for k, p in enumerate(al.random_plans(task, base, args.random, seed=1000 * task.seed + int(10 * b))):
            plans.append((f"random {k}", "random", p, 0.0))

        weights = {x.name: x.weight for x in base.layers}
        done: dict[tuple, dict] = {}
        for allocator, family, p, seconds in plans:
            methods = ["rtn"]
            if budget in args.recon_budgets and allocator in args.recon_allocators:
                methods.append(args.recon_method)
            key_bits = tuple(x.bits for x in p.layers)
            for method in methods:
                key = (key_bits, method)
                if key not in done:
                    torch.manual_seed(task.seed)
                    t = time.perf_counter()
                    extra = {"iters": args.iters} if method != "rtn" else {}
                    q = quantize(model, p, calib=task.calib, method=method, act_bits=8,
                                 num_calib=args.calib, **qkw, **extra)
                    q_s = time.perf_counter() - t
                    done[key] = {**task.evaluate(q), "quantize_seconds": q_s}
                r = done[key]
                runs.append(dict(
                    testbed=task.testbed, seed=task.seed, budget=budget, allocator=allocator, family=family,
                    method=method, avg_bits=p.totals["avg_bits"], search_seconds=seconds,
                    bit_choices=list(p.settings["bits"]), bits=p.bits,
                    ompq_objective=al.objective(p, weights),
                    hessian_proxy=-sum(al.hessian_cost(traces, qw, x.name, x.bits) for x in p.layers),
                    kl_proxy=(-sum(table[x.name][x.bits] for x in p.layers)
                              if all(x.bits in table[x.name] for x in p.layers) else None),
                    **r))
                if family != "random" or method != "rtn" or allocator == "random 0":
                    log(f"  {task.testbed} s{task.seed} {budget:>3}b {allocator:<30} {method:<6} "
                        f"score {r['score']:.4f} ({p.totals['avg_bits']:.3f} bits)")
    return runs


# ---------------------------------------------------------------- tables


def pct(values, sd=True):
    if not values:
        return "–"
    m = 100 * statistics.mean(values)
    if len(values) == 1 or not sd:
        return f"{m:.2f}"
    return f"{m:.2f} ± {100 * statistics.stdev(values):.2f}"


def per_seed(rows, fn):
    """fn over each seed's rows, as a list over seeds."""
    seeds = sorted({r["seed"] for r in rows})
    return [fn([r for r in rows if r["seed"] == s]) for s in seeds if any(r["seed"] == s for r in rows)]


def score_table(runs, testbed, budgets, recon_method):
    rows = [r for r in runs if r["testbed"] == testbed]
    metric = "retrieval top-1" if testbed == "minilm" else "test accuracy"
    cols = [(b, "rtn") for b in budgets] + [(b, recon_method) for b in budgets
                                           if any(r["budget"] == b and r["method"] == recon_method for r in rows)]
    head = "| allocator | " + " | ".join(f"{b} bits {'RTN' if m == 'rtn' else m}" for b, m in cols) + " |"
    out = [head, "|---|" + "---|" * len(cols)]
    fp = [r["score"] for r in rows if r["allocator"] == "FP32"]
    out.append(f"| FP32 | {pct(fp)}" + " |" * len(cols))
    allocs = list(dict.fromkeys(r["allocator"] for r in rows if r["family"] not in ("FP32", "random", "activation check")))
    for a in allocs:
        cells = [pct([r["score"] for r in rows if r["allocator"] == a and r["budget"] == b and r["method"] == m])
                 for b, m in cols]
        out.append(f"| {a} | " + " | ".join(cells) + " |")
    for label, pick in (("random plans: median", statistics.median), ("random plans: best", max)):
        cells = []
        for b, m in cols:
            sel = [r for r in rows if r["family"] == "random" and r["budget"] == b and r["method"] == m]
            cells.append(pct(per_seed(sel, lambda rs: pick([r["score"] for r in rs]))) if sel else "–")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    if testbed == "minilm":
        out += ["", "Mean cosine of the quantized embeddings to FP32 (RTN):", "",
                "| allocator | " + " | ".join(f"{b} bits" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
        for a in allocs:
            cells = [f"{statistics.mean(v):.4f}" if (v := [r["cosine"] for r in rows if r["allocator"] == a
                                                          and r["budget"] == b and r["method"] == "rtn"]) else "–"
                     for b in budgets]
            out.append(f"| {a} | " + " | ".join(cells) + " |")
        checks = [r for r in rows if r["family"] == "activation check"]
        if checks:
            out += ["", "Activation check (uniform weights with and without the 8-bit per-tensor activations): " + "; ".join(
                f"{r['allocator']} top-1 {100 * r['score']:.2f} (cosine {r['cosine']:.4f})" for r in checks) + "."]
    seeds = sorted({r["seed"] for r in rows})
    return f"{metric} in % (mean ± sd over seeds {seeds}; random plans: each seed's median or best, then mean ± sd)\n\n" + "\n".join(out)


def paired(runs, testbed, budgets, recon_method, reference="OMPQ default"):
    """Reference minus each allocator, paired by seed: mean ± sd in points (seeds better/equal/worse)."""
    rows = [r for r in runs if r["testbed"] == testbed]
    cols = [(b, m) for b in budgets for m in ("rtn", recon_method)
            if any(r["budget"] == b and r["method"] == m and r["allocator"] == reference for r in rows)]
    out = ["| OMPQ default minus | " + " | ".join(f"{b} bits {'RTN' if m == 'rtn' else m}" for b, m in cols) + " |",
           "|---|" + "---|" * len(cols)]
    others = [a for a in dict.fromkeys(r["allocator"] for r in rows)
              if a != reference and not a.startswith("random") and a != "FP32" and not a.startswith("uniform W")]
    others += ["random plans: median"]
    for a in others:
        cells = []
        for b, m in cols:
            ref = {r["seed"]: r["score"] for r in rows if r["allocator"] == reference and r["budget"] == b and r["method"] == m}
            if a == "random plans: median":
                sel = [r for r in rows if r["family"] == "random" and r["budget"] == b and r["method"] == m]
                other = {s: statistics.median([r["score"] for r in sel if r["seed"] == s]) for s in {r["seed"] for r in sel}}
            else:
                other = {r["seed"]: r["score"] for r in rows if r["allocator"] == a and r["budget"] == b and r["method"] == m}
            d = [100 * (ref[s] - other[s]) for s in ref if s in other]
            if not d:
                cells.append("–")
                continue
            sd = f" ± {statistics.stdev(d):.2f}" if len(d) > 1 else ""
            cells.append(f"{statistics.mean(d):+.2f}{sd} ({sum(x > 0 for x in d)}/{sum(x == 0 for x in d)}/{sum(x < 0 for x in d)})")
        out.append(f"| {a} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def spearman(runs, budgets):
    from scipy.stats import spearmanr

    out = ["| testbed | budget | OMPQ objective | Hessian proxy (−ΣΩ) | KL proxy (−ΣKL) | plans per seed |",
           "|---|---|---|---|---|---|"]
    for testbed in dict.fromkeys(r["testbed"] for r in runs):
        for b in budgets:
            sel = [r for r in runs if r["testbed"] == testbed and r["budget"] == b and r["family"] == "random"
                   and r["method"] == "rtn"]
            if not sel:
                continue
            cells = []
            for key in ("ompq_objective", "hessian_proxy", "kl_proxy"):
                rhos = []
                for s in sorted({r["seed"] for r in sel}):
                    rs = [r for r in sel if r["seed"] == s]
                    rho = spearmanr([r[key] for r in rs], [r["score"] for r in rs]).statistic
                    if rho == rho:  # NaN when a column is constant
                        rhos.append(rho)
                cells.append(f"{statistics.mean(rhos):+.2f}" + (f" ± {statistics.stdev(rhos):.2f}" if len(rhos) > 1 else "")
                             if rhos else "–")
            n = len(sel) // len({r['seed'] for r in sel})
            out.append(f"| {testbed} | {b} | " + " | ".join(cells) + f" | {n} |")
    return "\n".join(out)


def cost_table(runs):
    fams = ["OMPQ", "params-only", "random", "Hessian trace", "greedy KL", "KL table → solver"]
    testbeds = list(dict.fromkeys(r["testbed"] for r in runs))
    out = ["| allocator | data it needs | " + " | ".join(f"search time {t} (s)" for t in testbeds) + " |",
           "|---|---|" + "---|" * len(testbeds)]
    for f in fams:
        cells = []
        for t in testbeds:
            s = [r["search_seconds"] for r in runs if r["testbed"] == t and r["family"] == f and r["method"] == "rtn"]
            cells.append(f"{statistics.mean(s):.2f}" if s else "–")
        out.append(f"| {f} | {DATA_NEEDS.get(f, '')} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def variant_ranking(runs, recon_method):
    """Each OMPQ variant minus OMPQ default over every instance, budget and method (points)."""
    out = ["| variant | mean difference to the default (points) | instances better/equal/worse |", "|---|---|---|"]
    base = {(r["testbed"], r["seed"], r["budget"], r["method"]): r["score"] for r in runs if r["allocator"] == "OMPQ default"}
    variants = list(dict.fromkeys(r["allocator"] for r in runs if r["family"] in ("OMPQ variant", "params-only",
                                                                                    "Hessian trace", "greedy KL",
                                                                                    "KL table → solver", "uniform")))
    for v in variants:
        d = [100 * (r["score"] - base[k]) for r in runs if r["allocator"] == v
             and (k := (r["testbed"], r["seed"], r["budget"], r["method"])) in base]
        if d:
            out.append(f"| {v} | {statistics.mean(d):+.2f} | {sum(x > 0 for x in d)}/{sum(x == 0 for x in d)}/{sum(x < 0 for x in d)} |")
    return "\n".join(out)


def bits_table(runs, testbed, seed, budget):
    sel = [r for r in runs if r["testbed"] == testbed and r["seed"] == seed and r["budget"] == budget
           and r["method"] == "rtn" and r["family"] not in ("random", "FP32", "activation check")]
    if not sel:
        return ""
    cols = list(dict.fromkeys(r["allocator"] for r in sel))
    by = {r["allocator"]: r["bits"] for r in sel}
    names = list(sel[0]["bits"])
    out = ["| layer | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for n in names:
        out.append(f"| {n} | " + " | ".join(str(by[c][n]) for c in cols) + " |")
    return "\n".join(out)


# ---------------------------------------------------------------- main


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--testbeds", nargs="+", default=["mnist1d", "fashion", "minilm"])
    p.add_argument("--mnist1d-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--fashion-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--minilm-seeds", type=int, nargs="+", default=[0], help="calibration draws")
    p.add_argument("--budgets", nargs="+", default=["2.5", "3", "4"], help="average weight bits")
    p.add_argument("--random", type=int, default=20, help="random plans per budget")
    p.add_argument("--betas", type=float, nargs="+", default=[0.03, 0.3, 1.0, 3.0, 10.0])
    p.add_argument("--samples", type=int, nargs="+", default=[16, 64], help="num_samples variants of OMPQ")
    p.add_argument("--probes", type=int, default=32, help="Hutchinson probes for the Hessian traces")
    p.add_argument("--minilm-probes", type=int, default=8, help="the same for MiniLM (about 10 s each)")
    p.add_argument("--recon-budgets", nargs="+", default=["3"])
    p.add_argument("--recon-method", default="brecq")
    p.add_argument("--recon-allocators", nargs="+",
                   default=["uniform", "OMPQ default", "params-only", "Hessian trace", "greedy KL"])
    p.add_argument("--recon-testbeds", nargs="+", default=["mnist1d", "fashion"])
    p.add_argument("--iters", type=int, default=200, help="reconstruction steps per block")
    p.add_argument("--calib", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--quick", action="store_true", help="MNIST-1D seed 0, 3 bits, 5 random plans, no reconstruction")
    p.add_argument("--output", type=Path, help="write the markdown here as well as to stdout")
    p.add_argument("--json", type=Path, help="write every run here")
    args = p.parse_args(argv)
    if args.quick:
        args.testbeds, args.mnist1d_seeds, args.budgets, args.random = ["mnist1d"], [0], ["3"], 5
        args.recon_budgets, args.betas, args.samples = [], [], []
    command = "python bench/quality/study.py" + "".join(" " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    started = datetime.datetime.now()
    code = code_state()
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    runs, timing = [], {}
    for name in args.testbeds:
        t = time.perf_counter()
        recon_budgets = args.recon_budgets
        args.recon_budgets = recon_budgets if name in args.recon_testbeds else []
        if name == "minilm":
            if not minilm.available():
                raise SystemExit(f"MiniLM testbed missing: {minilm.MODEL_INSTALL} and {minilm.CORPUS_INSTALL} "
                                 f"(or drop it with --testbeds mnist1d fashion)")
            for seed in args.minilm_seeds:
                runs += run_instance(minilm_task(seed, args, log), args, log)
        else:
            split = qtrain.TESTBEDS[name].load_data()
            for seed in getattr(args, f"{name}_seeds"):
                runs += run_instance(classification_task(name, seed, split, args, log), args, log)
        args.recon_budgets = recon_budgets
        timing[name] = time.perf_counter() - t
    total = time.perf_counter() - t0
    load1 = os.getloadavg()[0]

    names = {"mnist1d": "MNIST-1D, 1-D ResNet width 32 (57 k weights), 1000 test signals",
             "fashion": "Fashion-MNIST, 2-D ResNet width 16 trained on a 10 k subset, 10 000 test images",
             "minilm": "all-MiniLM-L6-v2, chatterbot-corpus question → answer retrieval (2026 questions)"}
    lines = [f"Command: `{command}`  ",
             f"Date: {started.isoformat(timespec='minutes')}; total wall time {total / 60:.1f} min "
             f"({', '.join(f'{k} {v / 60:.1f} min' for k, v in timing.items())}); 1-min load average "
             f"{load0:.1f} at the start, {load1:.1f} at the end  ",
             f"Code: ompq_ext {ompq_ext.__version__}, {code}  ",
             f"Machine: {machine()}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}  ",
             f"Recipe: weights per output channel (MSE scales), activations 8-bit per tensor, "
             f"plain rounding (RTN); {args.recon_method} ({args.iters} steps per block) at "
             f"{', '.join(args.recon_budgets) or 'no'} bits for {', '.join(args.recon_allocators)} on "
             f"{', '.join(args.recon_testbeds)}; calibration {args.calib} training inputs; OMPQ plans from the first "
             f"{PLAN_DEFAULTS['num_samples']} (plan()'s defaults: objective {PLAN_DEFAULTS['objective']}, "
             f"β {PLAN_DEFAULTS['beta']}, feature point {PLAN_DEFAULTS['feature_point']}, bits within one bit of "
             f"the budget); {args.random} random plans per budget; Hessian traces from {args.probes} "
             f"Hutchinson probes ({args.minilm_probes} for MiniLM).", ""]
    for name in args.testbeds:
        lines += [f"### {names[name]}", "", score_table(runs, name, args.budgets, args.recon_method), "",
                  "OMPQ default minus each allocator, paired by seed (points; seeds where OMPQ is better/equal/worse):",
                  "", paired(runs, name, args.budgets, args.recon_method), ""]
    lines += ["### Does the OMPQ objective predict accuracy? Spearman ρ over the random plans (mean ± sd over seeds)", "",
              spearman(runs, args.budgets), "",
              "### What each allocator needs and how long its search takes (mean per plan, s)", "", cost_table(runs), "",
              "Search time of OMPQ is the whole plan() call; of Hessian trace and the KL tables it includes measuring "
              "the sensitivities (once per instance, shared by the budgets) and the solve.", "",
              "### OMPQ variants and the other allocators against OMPQ's defaults, over every instance, budget and method", "",
              variant_ranking(runs, args.recon_method), ""]
    first = args.testbeds[0]
    seed0 = (args.mnist1d_seeds if first == "mnist1d" else args.fashion_seeds if first == "fashion" else args.minilm_seeds)[0]
    b0 = "3" if "3" in args.budgets else args.budgets[0]
    lines += [f"### Bits per layer, {first} seed {seed0}, {b0} bits", "", bits_table(runs, first, seed0, b0), ""]
    text = "\n".join(lines)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    if args.json:
        args.json.write_text(json.dumps({"command": command, "date": started.isoformat(), "machine": machine(),
                                         "code": code, "total_seconds": total, "runs": runs}, indent=1, default=str))
    return runs


if __name__ == "__main__":
    main()
