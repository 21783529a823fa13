"""Post-training quantization table (issue 3): FP32 vs uniform vs OMPQ at equal size,
after plain rounding and after reconstruction, on real data.

    python bench/quality/ptq_table.py                      # the documented run
    python bench/quality/ptq_table.py --quick              # one MNIST-1D seed, smoke test

For every testbed and seed: the cached trained model (bench/quality/train.py), a calibration
set of training inputs (never test data), plans at "3bits" and "4bits" (uniform: bits=[b];
OMPQ: one row per --ompq variant, by default plan()'s own defaults and bits 2..8, planned from
the first 32 calibration inputs, unlabeled; the settings each plan used label its row), then
``ompq_ext.quant.api.quantize(model, plan, calib=..., method=..., act_bits=8)`` and the test
accuracy. Weights per output channel at the planned bits, activations 8-bit per tensor.
Reconstruction (adaround / brecq) runs at the budgets in --recon-budgets (default 3 bits).
Prints markdown tables (mean +- sd over seeds) with the command, date, code state and machine;
OMPQ minus uniform paired by seed, with a control: whether each OMPQ plan equals the plan the
same solver gives with all importances equal (beta -> 0, parameter counts only); the wall time of
the runs; and the OMPQ bit allocations of one case. --json writes every run.
"""

from __future__ import annotations

import os

# OpenMP threads that spin while waiting make every torch / ompq_ext op tens of times slower
# when another process shares the 2 cores (measured: 100-step AdaRound on MNIST-1D took 37-141 s
# instead of 5-7 s). Passive waiting keeps the default thread count; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import copy
import datetime
import inspect
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import data as qdata  # noqa: E402
import train as qtrain  # noqa: E402
from common import machine  # noqa: E402

import ompq_ext  # noqa: E402

ITER_NAMES = ("iters", "iterations", "num_iters", "n_iters", "steps", "max_iter")


# ------------------------------------------------------------------ quantize()

def load_quantize(allow_standin: bool):
    """(quantize, quant_report or None, description)."""
    try:
        from ompq_ext.quant.api import quant_report, quantize
        return quantize, quant_report, "ompq_ext.quant.api.quantize"
    except ImportError as exc:
        if not allow_standin:
            raise SystemExit(f"ompq_ext.quant.api is not available ({exc}); it is being written. "
                             f"--allow-standin runs plain rounding with a local stand-in instead.")
        return _standin_quantize, None, "LOCAL STAND-IN (rtn only; ompq_ext.quant.api missing)"


def _standin_quantize(model, plan, calib, method="rtn", act_bits=8, **_):
    """Plain rounding through ompq_ext.quant.modules.QuantLayer, for development only."""
    from ompq_ext.quant.modules import QuantLayer
    if method != "rtn":
        raise NotImplementedError("the local stand-in only does plain rounding")
    q = copy.deepcopy(model).eval()
    for name, bits in plan.bits.items():
        parent_name, _, child = name.rpartition(".")
        parent = q.get_submodule(parent_name) if parent_name else q
        setattr(parent, child, QuantLayer(getattr(parent, child), bits, act_bits, name=name))
    quantizers = [m.input_quantizer for m in q.modules() if isinstance(m, QuantLayer) and m.input_quantizer]
    for aq in quantizers:
        aq.observing = True
    with torch.no_grad():
        for batch in calib:
            q(batch)
    for aq in quantizers:
        aq.observing = False
        aq.finalize()
    return q


def recon_kwargs(quantize, iters):
    """Map --iters onto whatever the quantize() signature calls the iteration count."""
    if iters is None:
        return {}, None
    params = inspect.signature(quantize).parameters
    for name in ITER_NAMES:
        if name in params:
            return {name: iters}, name
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return {"iters": iters}, "iters"
    raise SystemExit(f"quantize() takes no iteration count (looked for {ITER_NAMES}); drop --iters")


# ------------------------------------------------------------------ OMPQ variants

def variant_options(spec: str) -> dict:
    """plan() keyword arguments of an --ompq spec: "default" (plan()'s own defaults) or
    comma-separated overrides such as "bits=2-8" or "bits=2-8,beta=1"."""
    if spec == "default":
        return {}
    opts = {}
    for part in spec.split(","):
        key, sep, value = part.partition("=")
        if not sep:
            raise SystemExit(f"--ompq: {part!r} is not KEY=VALUE (spec {spec!r})")
        if key == "bits":
            lo, _, hi = value.partition("-")
            opts["bits"] = range(int(lo), int(hi or lo) + 1)
        elif key == "beta":
            opts["beta"] = float(value)
        elif key in ("objective", "estimator", "bn_mode"):
            opts[key] = value
        elif key == "num_samples":
            opts[key] = int(value)
        else:
            raise SystemExit(f"--ompq: unknown plan() option {key!r} (spec {spec!r})")
    return opts


def variant_label(p, budget, alloc=None) -> str:
    """Row label from the settings the plan actually used."""
    st = p.settings
    bits = st["bits"]
    rng = f"{min(bits)}–{max(bits)}" if list(bits) == list(range(min(bits), max(bits) + 1)) else ",".join(map(str, bits))
    extra = "" if st.get("objective") == "suffix_mean" else f", {st['objective']}"
    tag = " — plan() defaults" if alloc == "OMPQ default" else ""
    return f"OMPQ \"{budget}bits\", bits {rng}, β {st['beta']:g}{extra}{tag}"


# ------------------------------------------------------------------ one run

def run_testbed(name, seeds, args, quantize, quant_report, log):
    runs, example_plan = [], None
    split = qtrain.TESTBEDS[name].load_data()
    rkw, _ = recon_kwargs(quantize, args.iters) if any(m != "rtn" for m in args.methods) else ({}, None)
    for seed in seeds:
        model, rec = qtrain.get_model(name, seed, split=split, log=log)
        fp32 = qtrain.evaluate(model, split.x_test, split.y_test)
        runs.append(dict(testbed=name, seed=seed, alloc="FP32", budget="32", method="-", accuracy=fp32,
                         seconds=rec["train_seconds"], avg_bits=32.0, size_kib=None, model_key=rec["key"],
                         fp32_kib=4 * sum(p.numel() for p in model.parameters()) / 1024,
                         cached=rec["loaded"]))
        log(f"{name} seed {seed}: FP32 {fp32:.4f} ({'cached' if rec['loaded'] else 'trained'})")
        calib_x = qdata.calibration(split, args.calib, seed)
        calib = qdata.batches(calib_x, args.batch_size)
        for budget in args.budgets:
            b = int(budget)
            plans = {}
            t = time.perf_counter()
            plans["uniform"] = ompq_ext.plan(model, calib, f"{b}bits", bits=[b], num_samples=args.num_samples,
                                             method="ompq", progress=False)
            plan_s_uniform = time.perf_counter() - t
            plan_s = {"uniform": plan_s_uniform}
            same_as_flat = {"uniform": None}
            for spec in args.ompq:
                opts = variant_options(spec)
                if "bits" in opts and (min(opts["bits"]) >= b or max(opts["bits"]) <= b):
                    continue  # only uniform b bits fits: nothing to compare
                t = time.perf_counter()
                p = ompq_ext.plan(model, calib, f"{b}bits", num_samples=args.num_samples, method="ompq", progress=False,
                                  **opts)
                seconds = time.perf_counter() - t
                choices = p.settings["bits"]
                if min(choices) >= b or max(choices) <= b:
                    continue
                alloc = f"OMPQ {spec}"
                if any(variant_label(q, b) == variant_label(p, b) for key, q in plans.items() if key != "uniform"):
                    continue  # the same settings as an earlier variant
                plans[alloc], plan_s[alloc] = p, seconds
                # Control: the same plan with every importance equal (beta -> 0), i.e. parameter counts only.
                flat = ompq_ext.plan(model, calib, f"{b}bits", num_samples=args.num_samples, method="ompq", progress=False,
                                     **{**opts, "bits": p.settings["bits"], "beta": 1e-9})
                same_as_flat[alloc] = flat.bits == p.bits
                if (name == args.show_plan[0] and seed == seeds[0] and str(b) == args.show_plan[1]
                        and example_plan is None):
                    example_plan = (name, seed, b, p, alloc)
            for alloc, p in plans.items():
                methods = args.methods if str(b) in args.recon_budgets else ["rtn"]
                for method in methods:
                    torch.manual_seed(seed)
                    t = time.perf_counter()
                    kw = rkw if method != "rtn" else {}
                    if method != "rtn":
                        kw = {**kw, **args.recon_opt}
                    qmodel = quantize(model, p, calib=calib, method=method, act_bits=8, num_calib=len(calib_x),
                                      progress=False, **kw)
                    q_s = time.perf_counter() - t
                    acc = qtrain.evaluate(qmodel, split.x_test, split.y_test)
                    report = None
                    if quant_report is not None:
                        try:
                            report = quant_report(qmodel)
                        except Exception as exc:  # the report is informative only
                            report = f"quant_report failed: {exc!r}"
                    runs.append(dict(testbed=name, seed=seed, alloc=alloc, budget=str(b), method=method,
                                     accuracy=acc, seconds=q_s, plan_seconds=plan_s[alloc],
                                     avg_bits=p.totals["avg_bits"], size_kib=p.totals["size_bytes"] / 1024,
                                     bits=p.bits, label=variant_label(p, b, alloc),
                                     settings=p.settings, same_as_param_count_only=same_as_flat[alloc],
                                     report=report if isinstance(report, (str, dict)) else str(report)))
                    log(f"  {name} s{seed} {alloc:>14} {b}b {method:<8} acc {acc:.4f}  "
                        f"({p.totals['avg_bits']:.3f} bits/weight, {q_s:.1f} s)")
    return runs, example_plan


# ------------------------------------------------------------------ tables

def fmt(values):
    if not values:
        return "–"
    m = 100 * statistics.mean(values)
    if len(values) == 1:
        return f"{m:.2f}"
    return f"{m:.2f} ± {100 * statistics.stdev(values):.2f}"


def table(runs, testbed, methods):
    rows = [r for r in runs if r["testbed"] == testbed]
    seeds = sorted({r["seed"] for r in rows})
    out = ["| weights (A8) | avg bits | model size (KiB) | " + " | ".join(methods) + " |",
           "|---|---|---|" + "---|" * len(methods)]
    fp = [r["accuracy"] for r in rows if r["alloc"] == "FP32"]
    fp_kib = statistics.mean(r["fp32_kib"] for r in rows if r["alloc"] == "FP32")
    out.append(f"| FP32 (no quantization) | 32 | {fp_kib:.1f} | {fmt(fp)}" + " | " * (len(methods) - 1) + " |")
    for budget in sorted({r["budget"] for r in rows if r["alloc"] != "FP32"}):
        for alloc in dict.fromkeys(r["alloc"] for r in rows if r["budget"] == budget):
            sel = [r for r in rows if r["alloc"] == alloc and r["budget"] == budget]
            label = f"uniform {budget}-bit" if alloc == "uniform" else sel[0]["label"]
            bits = statistics.mean(r["avg_bits"] for r in sel)
            kib = statistics.mean(r["size_kib"] for r in sel)
            cells = [fmt([r["accuracy"] for r in sel if r["method"] == m]) for m in methods]
            out.append(f"| {label} | {bits:.3f} | {kib:.1f} | " + " | ".join(cells) + " |")
    fp_rows = [r for r in rows if r["alloc"] == "FP32"]
    trained = ", ".join(f"{r['seconds']:.0f} s" for r in fp_rows)
    return (f"seeds {seeds}; test accuracy in % (mean ± sd over seeds); model size counts the planned weights "
            f"at their bits and every other parameter at 32 bits; training time of the FP32 models: {trained}"
            f"{' (recorded when they were trained, now loaded from the cache)' if all(r['cached'] for r in fp_rows) else ''}"
            "\n\n" + "\n".join(out))


def paired_table(runs, methods):
    """Each OMPQ row minus uniform at the same budget, seed by seed: mean ± sd in points, and
    how many seeds OMPQ was better / equal / worse."""
    out = ["| testbed | OMPQ row | " + " | ".join(methods) + " | bits equal to β→0 plan |",
           "|---|---|" + "---|" * (len(methods) + 1)]
    for testbed in dict.fromkeys(r["testbed"] for r in runs):
        rows = [r for r in runs if r["testbed"] == testbed and r["alloc"] != "FP32"]
        for budget in sorted({r["budget"] for r in rows}):
            base = {(r["seed"], r["method"]): r["accuracy"] for r in rows
                    if r["alloc"] == "uniform" and r["budget"] == budget}
            for alloc in dict.fromkeys(r["alloc"] for r in rows if r["budget"] == budget and r["alloc"] != "uniform"):
                sel = [r for r in rows if r["alloc"] == alloc and r["budget"] == budget]
                cells = []
                for m in methods:
                    d = [100 * (r["accuracy"] - base[(r["seed"], m)]) for r in sel
                         if r["method"] == m and (r["seed"], m) in base]
                    if not d:
                        cells.append("–")
                        continue
                    sd = f" ± {statistics.stdev(d):.2f}" if len(d) > 1 else ""
                    w, t, l = sum(x > 0 for x in d), sum(x == 0 for x in d), sum(x < 0 for x in d)
                    cells.append(f"{statistics.mean(d):+.2f}{sd} ({w}/{t}/{l})")
                per_seed = {r["seed"]: r["same_as_param_count_only"] for r in sel}
                same = f"{sum(bool(v) for v in per_seed.values())} of {len(per_seed)} seeds"
                out.append(f"| {testbed} | {sel[0]['label']} | " + " | ".join(cells) + f" | {same} |")
    return "\n".join(out)


def allocation_table(runs, testbed, seed, params):
    cols = {}
    for r in runs:
        if r["testbed"] == testbed and r["seed"] == seed and r["alloc"].startswith("OMPQ") and r["method"] == "rtn":
            st = r["settings"]
            cols[f"\"{r['budget']}bits\" {min(st['bits'])}–{max(st['bits'])}"] = r["bits"]
    out = ["| layer | weights | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for name, n in params.items():
        out.append(f"| {name} | {n:,} | " + " | ".join(str(c.get(name, "")) for c in cols.values()) + " |")
    return "\n".join(out)


def time_table(runs, methods):
    out = ["| testbed | " + " | ".join(methods) + " | plan() OMPQ |", "|---|" + "---|" * (len(methods) + 1)]
    for testbed in dict.fromkeys(r["testbed"] for r in runs):
        sel = [r for r in runs if r["testbed"] == testbed and r["alloc"] != "FP32"]
        cells = []
        for m in methods:
            ts = [r["seconds"] for r in sel if r["method"] == m]
            cells.append(f"{statistics.mean(ts):.1f} (n={len(ts)})" if ts else "–")
        ps = [r["plan_seconds"] for r in sel if r["alloc"].startswith("OMPQ") and r["method"] == "rtn"]
        cells.append(f"{statistics.mean(ps):.2f}" if ps else "–")
        out.append(f"| {testbed} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def _parse_opt(text):
    import ast
    key, sep, value = text.partition("=")
    if not sep:
        raise SystemExit(f"--recon-opt needs KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def code_state() -> str:
    """The commit and whether the library's sources differ from it (the numbers depend on both)."""
    import subprocess
    root = HERE.parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "python", "src", "cpp",
                                "CMakeLists.txt"], capture_output=True, text=True, check=True).stdout.split("\n")
        dirty = [line[3:] for line in dirty if line.strip()]
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"commit {head}" + (f" + uncommitted changes to {', '.join(dirty)}" if dirty else "")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--testbeds", nargs="+", default=["mnist1d", "fashion"], choices=sorted(qtrain.TESTBEDS))
    p.add_argument("--mnist1d-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--fashion-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--budgets", nargs="+", default=["3", "4"], help="average weight bits")
    p.add_argument("--methods", nargs="+", default=["rtn", "adaround", "brecq"])
    p.add_argument("--ompq", nargs="+", default=["default", "bits=2-8"], metavar="SPEC",
                   help="OMPQ variants, one row each: 'default' (plan()'s own defaults) or plan() overrides "
                        "such as bits=2-8 or bits=2-4,beta=1 (skipped where only uniform bits fit)")
    p.add_argument("--recon-budgets", nargs="+", default=["3"], help="budgets that also get reconstruction")
    p.add_argument("--iters", type=int, default=None, help="reconstruction iterations (default: quantize()'s)")
    p.add_argument("--recon-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="another reconstruction option for quantize(), e.g. reg_weight=0.01 (repeatable)")
    p.add_argument("--calib", type=int, default=256, help="calibration inputs drawn from the training set")
    p.add_argument("--num-samples", type=int, default=32, help="inputs plan() uses")
    p.add_argument("--batch-size", type=int, default=64, help="calibration batch size")
    p.add_argument("--show-plan", nargs=2, default=["mnist1d", "3"], metavar=("TESTBED", "BITS"),
                   help="print this case's allocation by the first --ompq variant (first seed)")
    p.add_argument("--allow-standin", action="store_true",
                   help="if ompq_ext.quant.api is missing, run rtn with a local stand-in (development only)")
    p.add_argument("--quick", action="store_true", help="smoke test: MNIST-1D seed 0 only")
    p.add_argument("--json", type=Path, default=None, help="write every run here")
    args = p.parse_args(argv)
    args.recon_opt = dict(_parse_opt(o) for o in args.recon_opt)
    for spec in args.ompq:
        variant_options(spec)  # fail early on a bad spec
    if args.quick:
        args.testbeds, args.mnist1d_seeds = ["mnist1d"], [0]
        args.show_plan = ["mnist1d", args.show_plan[1]]
    if args.show_plan[0] not in args.testbeds:
        args.show_plan[0] = args.testbeds[0]
    quantize, quant_report, qdesc = load_quantize(args.allow_standin)
    if quantize is _standin_quantize:
        args.methods = ["rtn"]
    if "fashion" in args.testbeds and not qdata.fashion_available():
        raise SystemExit(f"Fashion-MNIST is not installed: {qdata.FASHION_INSTALL} (or drop it with --testbeds mnist1d)")

    command = "python bench/quality/ptq_table.py" + ("" if argv is None and len(sys.argv) < 2 else
                                                     " " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])))
    started = datetime.datetime.now()
    code = code_state()  # before the run: the library may change on disk while it runs
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    t0 = time.perf_counter()
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    runs, example = [], None
    for name in args.testbeds:
        seeds = args.mnist1d_seeds if name == "mnist1d" else args.fashion_seeds
        r, ex = run_testbed(name, seeds, args, quantize, quant_report, log)
        runs += r
        example = example or ex
    total = time.perf_counter() - t0
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    load = (f"; 1-min load average {load_start:.1f} at the start, {load_end:.1f} at the end "
            f"({os.cpu_count()} CPUs; other jobs running at the same time slow every number here)"
            if load_start is not None else "")

    _, iter_name = recon_kwargs(quantize, args.iters) if args.methods != ["rtn"] else ({}, None)
    lines = [f"Command: `{command}`  ",
             f"Date: {started.isoformat(timespec='minutes')}; total wall time {total / 60:.1f} min{load}  ",
             f"Code: ompq_ext {getattr(ompq_ext, '__version__', '?')}, {code}  ",
             f"Machine: {machine()}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}  ",
             f"Quantizer: {qdesc}; methods {', '.join(args.methods)} (reconstruction at "
             f"{', '.join(b + ' bits' for b in args.recon_budgets)}; iterations: "
             f"{args.iters if args.iters is not None else 'quantize() default'}"
             f"{f' via {iter_name}=' if iter_name else ''}"
             f"{''.join(f', {k}={v}' for k, v in args.recon_opt.items())}); weights per output channel, activations 8-bit "
             f"per tensor; calibration {args.calib} training inputs; plan() from the first "
             f"{args.num_samples} of them, unlabeled.", ""]
    names = {"mnist1d": "MNIST-1D, 1-D ResNet width 32 (20 epochs), 1000 test signals",
             "fashion": "Fashion-MNIST, 2-D ResNet width 16 trained on a 10 k subset (8 epochs), 10 000 test images"}
    for name in args.testbeds:
        lines += [f"### {names[name]}", "", table(runs, name, args.methods), ""]
    lines += [f"–: not run (reconstruction runs at {', '.join(args.recon_budgets)} bits; "
              f"--recon-budgets 3 4 adds 4 bits).", ""]
    lines += ["### OMPQ minus uniform at the same budget, paired by seed (accuracy points; seeds better/equal/worse)",
              "", paired_table(runs, args.methods), "",
              "Last column: in how many seeds the OMPQ plan's bits are identical to the plan the same solver gives "
              "with every layer's importance equal (beta = 1e-9: parameter counts alone decide).", ""]
    lines += ["### Wall time per quantize() call (s, mean over runs; includes calibration and reconstruction)", "",
              time_table(runs, args.methods), ""]
    if example:
        name, seed, b, pl, alloc = example
        uni = sum(x.params for x in pl.layers) * b / 8 / 1024
        got = pl.totals["planned_params"] * pl.totals["avg_bits"] / 8 / 1024
        lines += [f"### Allocation of {variant_label(pl, b, alloc)}: {name} seed {seed} "
                  f"(planned weights {got:.2f} KiB; uniform {b}-bit: {uni:.2f} KiB)", "", "```", pl.summary(), "```", ""]
        lines += [f"### Every OMPQ allocation of {name} seed {seed} (weight bits per layer)", "",
                  allocation_table(runs, name, seed, {x.name: x.params for x in pl.layers}), ""]
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"command": command, "date": started.isoformat(), "machine": machine(),
                                         "quantizer": qdesc, "code": code, "total_seconds": total, "loadavg": [load_start, load_end],
                                         "runs": runs}, indent=1, default=str))


if __name__ == "__main__":
    main()
