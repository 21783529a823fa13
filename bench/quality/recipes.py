"""Weight recipes at uniform bits (issue: GPTQ, group-wise weights, calibration): RTN, GPTQ, AdaRound and
BRECQ on MNIST-1D, Fashion-MNIST and MiniLM at 3 and 4 bits, accuracy and time; and MiniLM W4A8
top-1 over three calibration draws before and after the calibration changes. Writes the recipes
section of docs/QUANTIZATION.md.

    python bench/quality/recipes.py --json /tmp/recipes.json   # the documented run
    python bench/quality/recipes.py --quick                    # smoke test: MNIST-1D seed 0, 3 bits, rtn and gptq
    python bench/quality/recipes.py --tables-from /tmp/recipes.json   # the tables of an earlier run again

Every testbed instance is the allocation study's (bench/quality/study.py): the cached trained CNNs
with 256 calibration training inputs per seed, all-MiniLM-L6-v2 with 256 calibration questions per
draw (one tokenisation, padded to the longest), drawn exactly as there. Plans are uniform,
``plan(model, calib, "{b}bits", bits=[b], method="ompq")``, so only the recipe changes; then
``quantize(model, plan, calib, method=..., act_bits=8, num_calib=256)`` with quantize()'s defaults
(MSE weight scales per output channel, 8-bit per-tensor MSE activation ranges, padding masked,
500 Adam steps per layer/block for adaround/brecq; GPTQ damp 0.01, block 128). Group-wise rows
pass ``group_size=`` to quantize() on the same plan; sizes are quant_report's (scales at 16 bits).
MiniLM's top-1 moves in steps of about 5 points (five answers are each shared by 102-121 questions), so
each model of the calibration comparison is evaluated again with its activation scales jittered by a
relative 1e-6 (``--jitter``): the spread under a change of a few ulps is the testbed's noise floor.
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import minilm  # noqa: E402
import study  # noqa: E402
import train as qtrain  # noqa: E402
from common import machine  # noqa: E402
from ptq_table import code_state  # noqa: E402
from study import pct  # noqa: E402

import ompq_ext  # noqa: E402
from ompq_ext.quant.modules import ActQuantizer  # noqa: E402

GROUP = {"mnist1d": 32, "fashion": 32, "minilm": 64}  # group sizes of the group-wise rows (MiniLM: hidden 384)
NAMES = {"mnist1d": "MNIST-1D, 1-D ResNet width 32 (71 k planned weights), 1000 test signals",
         "fashion": "Fashion-MNIST, 2-D ResNet width 16 trained on a 10 k subset (52 k planned weights), 10 000 test images",
         "minilm": study.NAMES["minilm"] + ", 10.6 M planned weights"}


def recipes(testbed: str, methods, group_methods, act_order: bool) -> list[tuple[str, str, dict]]:
    """(label, method, extra quantize() options) of every row of a testbed's table."""
    out = [(m, m, {}) for m in methods]
    if act_order and "gptq" in methods:
        out.append(("gptq, act_order", "gptq", {"act_order": True}))
    out += [(f"{m}, group {GROUP[testbed]}", m, {"group_size": GROUP[testbed]}) for m in group_methods]
    return out


# MiniLM W4A8 calibration before / after (rtn unless named): label -> quantize() options.
CALIB_SETTINGS = {
    "(a) before: act_calib mse, mask_padding=False": dict(act_calib="mse", mask_padding=False),
    "(b) after: act_calib mse, mask_padding=True (default)": dict(act_calib="mse", mask_padding=True),
    "(c) act_calib dynamic (per token)": dict(act_calib="dynamic"),
    "(d) gptq, mask_padding=True": dict(method="gptq", mask_padding=True),
}


# ---------------------------------------------------------------- runs


def jittered(task, q, times: int, rel: float = 1e-6) -> list[float]:
    """Scores of ``q`` with every stored activation scale multiplied by (1 + rel * N(0, 1)), ``times`` draws
    (the scales are put back): how far the metric moves under changes of a few float32 ulps."""
    scales = [m.scale for m in q.modules() if isinstance(m, ActQuantizer)]
    saved = [s.detach().clone() for s in scales]
    g = torch.Generator().manual_seed(task.seed)
    out = []
    with torch.no_grad():
        for _ in range(times):
            for s, v in zip(scales, saved):
                s.copy_(v * (1 + rel * torch.randn(v.shape, generator=g)))
            out.append(task.evaluate(q)["score"])
        for s, v in zip(scales, saved):
            s.copy_(v)
    return out


def quantize_run(task, p, method, options, args, jitter: int = 0) -> dict:
    torch.manual_seed(task.seed)
    records = [] if method != "rtn" else None
    t = time.perf_counter()
    q = ompq_ext.quantize(task.model, p, calib=task.calib, method=method, act_bits=8, num_calib=args.calib,
                          input_fn=task.input_fn, progress=False, records=records, **options)
    seconds = time.perf_counter() - t
    report = ompq_ext.quant_report(q)
    kept = [r["kept"] for r in records or []]
    return dict(seconds=seconds, size_kib=report["size_bytes"] / 1024, scale_kib=report["quantizer_bits"] / 8 / 1024,
                units=len(kept), kept_rtn=sum(k == "nearest" for k in kept), **task.evaluate(q),
                jitter=jittered(task, q, jitter) if jitter else [])


def run_instance(task, args, log) -> list[dict]:
    name = task.testbed
    runs = [dict(testbed=name, seed=task.seed, recipe="FP32", bits=32, score=task.info["fp32"],
                 size_kib=4 * sum(p.numel() for p in task.model.parameters()) / 1024)]
    for b in args.bits:
        p = ompq_ext.plan(task.model, task.calib, f"{b}bits", bits=[b], method="ompq", input_fn=task.input_fn,
                          progress=False, **task.plan_kwargs)
        for label, method, options in recipes(name, args.methods, args.group_methods, args.act_order):
            if method in ("adaround", "brecq") and name == "minilm" and task.seed not in args.minilm_recon_draws:
                continue
            r = quantize_run(task, p, method, options, args)
            runs.append(dict(testbed=name, seed=task.seed, recipe=label, method=method, bits=b, **r))
            log(f"  {name} s{task.seed} W{b}A8 {label:<18} score {r['score']:.4f}  {r['size_kib']:9.1f} KiB  "
                f"{r['seconds']:7.1f} s" + (f"  kept RTN in {r['kept_rtn']}/{r['units']}" if r["units"] else ""))
    if name == "minilm" and args.calib_study:
        p = ompq_ext.plan(task.model, task.calib, "4bits", bits=[4], method="ompq", input_fn=task.input_fn,
                          progress=False, **task.plan_kwargs)
        for label, options in CALIB_SETTINGS.items():
            options = dict(options)
            jitter = 0 if options.get("act_calib") == "dynamic" else args.jitter  # its scales are per token at run time
            r = quantize_run(task, p, options.pop("method", "rtn"), options, args, jitter)
            runs.append(dict(testbed="minilm-calib", seed=task.seed, recipe=label, bits=4, **r))
            log(f"  minilm s{task.seed} W4A8 {label:<55} top-1 {r['score']:.4f}  cosine {r['cosine']:.4f}"
                + (f"  jittered {min(r['jitter']):.4f}-{max(r['jitter']):.4f}" if r["jitter"] else ""))
    return runs


# ---------------------------------------------------------------- tables


def paired_delta(rows, base) -> str:
    """Mean ± sd over seeds of (row - base) in points, and seeds better/equal/worse."""
    ref = {r["seed"]: r["score"] for r in base}
    d = [100 * (r["score"] - ref[r["seed"]]) for r in rows if r["seed"] in ref]
    if not d:
        return "–"
    sd = f" ± {statistics.stdev(d):.2f}" if len(d) > 1 else ""
    return f"{statistics.mean(d):+.2f}{sd} ({sum(x > 0 for x in d)}/{sum(x == 0 for x in d)}/{sum(x < 0 for x in d)})"


def recipe_table(runs, testbed, bits) -> str:
    rows = [r for r in runs if r["testbed"] == testbed]
    what = "calibration draws" if testbed == "minilm" else "training seeds"
    metric = "retrieval top-1" if testbed == "minilm" else "test accuracy"
    cos = testbed == "minilm"  # the mean cosine of the embeddings to FP32 as well
    head = "| recipe (A8) | " + " | ".join(f"W{b}: {metric} % | {'cosine | ' if cos else ''}Δ vs rtn | s | × rtn | KiB"
                                         for b in bits) + " | kept RTN (units) |"
    out = [head, "|---|" + ("---|" * (5 + cos)) * len(bits) + "---|"]
    fp = [r for r in rows if r["recipe"] == "FP32"]
    fp_cells = [pct([r["score"] for r in fp]), *([""] * (3 + cos)), f"{fp[0]['size_kib']:.1f}"] * len(bits)
    out.append("| FP32 | " + " | ".join(fp_cells) + " | |")
    for label in dict.fromkeys(r["recipe"] for r in rows if r["recipe"] != "FP32"):
        cells, kept = [], []
        for b in bits:
            sel = [r for r in rows if r["recipe"] == label and r["bits"] == b]
            rtn = [r for r in rows if r["recipe"] == "rtn" and r["bits"] == b]
            if not sel:
                cells.append(" | ".join(["–"] * (5 + cos)))
                continue
            s = statistics.mean(r["seconds"] for r in sel)
            ratio = f"{s / statistics.mean(r['seconds'] for r in rtn):.0f}×" if rtn and label != "rtn" else ""
            n = f" (n={len(sel)})" if len(sel) != len(fp) else ""
            cosine = f"{statistics.mean(r['cosine'] for r in sel):.4f} | " if cos else ""
            cells.append(f"{pct([r['score'] for r in sel])}{n} | {cosine}{paired_delta(sel, rtn) if label != 'rtn' else ''} | "
                         f"{s:.1f} | {ratio} | {statistics.mean(r['size_kib'] for r in sel):.1f}")
            kept += sel
        units = sum(r["units"] for r in kept)
        k = f"{sum(r['kept_rtn'] for r in kept)} of {units}" if units else ""
        out.append(f"| {label} | " + " | ".join(cells) + f" | {k} |")
    seeds = sorted({r["seed"] for r in fp})
    return (f"{metric} in % (mean ± sd over {what} {seeds}); Δ vs rtn: paired by seed, points "
            f"(seeds better/equal/worse); {'cosine: mean cosine of the embeddings to FP32 (mean over draws); ' if cos else ''}"
            f"s: wall time of one quantize() call (mean); KiB: quant_report's size "
            f"(weights at their bits, scales at 16 bits, every other parameter at 32)\n\n" + "\n".join(out))


def calib_table(runs) -> str:
    rows = [r for r in runs if r["testbed"] == "minilm-calib"]
    seeds = sorted({r["seed"] for r in rows})
    jitter = any(r.get("jitter") for r in rows)
    out = ["| MiniLM W4A8 | top-1 % (mean ± sd) | " + " | ".join(f"draw {s}" for s in seeds) +
           " | Δ vs (a) | mean cosine to FP32 | s |" + (" jittered scales: top-1 % (mean ± sd) | range |" if jitter else ""),
           "|---|---|" + "---|" * len(seeds) + "---|---|---|" + ("---|---|" if jitter else "")]
    before = [r for r in rows if r["recipe"].startswith("(a)")]
    for label in dict.fromkeys(r["recipe"] for r in rows):
        sel = [r for r in rows if r["recipe"] == label]
        by = {r["seed"]: f"{100 * r['score']:.2f}" for r in sel}
        out.append(f"| {label} | {pct([r['score'] for r in sel])} | " + " | ".join(by.get(s, "–") for s in seeds) +
                   f" | {'' if label.startswith('(a)') else paired_delta(sel, before)} | "
                   f"{statistics.mean(r['cosine'] for r in sel):.4f} | {statistics.mean(r['seconds'] for r in sel):.1f} |"
                   + ((f" {pct(j)} | {100 * min(j):.2f}–{100 * max(j):.2f} |" if (j := [x for r in sel for x in r.get("jitter", [])])
                       else " – | – |") if jitter else ""))
    if jitter:
        n = max(len(r.get("jitter", [])) for r in rows)
        out.append(f"\nJittered scales: each model evaluated {n} more times with every stored activation scale "
                   f"multiplied by (1 + 1e-6 · N(0, 1)) (a few float32 ulps; put back after), mean ± sd and range over "
                   f"draws × {n}. Not for dynamic ranges (c): their scales are computed per token at run time.")
    return "\n".join(out)


def render(runs) -> str:
    """Every table of a run (markdown)."""
    lines = []
    for name in dict.fromkeys(r["testbed"] for r in runs if r["testbed"] in NAMES):
        bits = sorted({r["bits"] for r in runs if r["testbed"] == name and r["recipe"] != "FP32"})
        lines += [f"### {NAMES[name]}", "", recipe_table(runs, name, bits), ""]
    if any(r["testbed"] == "minilm-calib" for r in runs):
        lines += ["### MiniLM W4A8 calibration, before and after (uniform 4-bit weights; rtn unless named)", "",
                  calib_table(runs), ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--testbeds", nargs="+", default=["mnist1d", "fashion", "minilm"], choices=list(GROUP))
    p.add_argument("--mnist1d-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--fashion-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--minilm-seeds", type=int, nargs="+", default=[0, 1, 2], help="calibration draws")
    p.add_argument("--minilm-recon-draws", type=int, nargs="*", default=[0],
                   help="the MiniLM draws that also get adaround / brecq (5-8 min per call here, so one by default)")
    p.add_argument("--bits", type=int, nargs="+", default=[3, 4], help="uniform weight bits")
    p.add_argument("--methods", nargs="+", default=["rtn", "gptq", "adaround", "brecq"])
    p.add_argument("--group-methods", nargs="*", default=["rtn", "gptq"], help="also run these group-wise")
    p.add_argument("--no-act-order", dest="act_order", action="store_false", help="leave out gptq with act_order")
    p.add_argument("--no-calib-study", dest="calib_study", action="store_false",
                   help="leave out the MiniLM W4A8 calibration comparison")
    p.add_argument("--jitter", type=int, default=8,
                   help="evaluations of each calibration-study model with activation scales jittered by 1e-6 (0: none)")
    p.add_argument("--calib", type=int, default=256, help="calibration inputs (study.py's)")
    p.add_argument("--batch-size", type=int, default=64, help="calibration batch size (study.py's)")
    p.add_argument("--quick", action="store_true", help="smoke test: MNIST-1D seed 0 at 3 bits, rtn and gptq")
    p.add_argument("--json", type=Path, help="write every run here")
    p.add_argument("--tables-from", type=Path, help="print the tables of an earlier run's --json again (no runs)")
    args = p.parse_args(argv)
    if args.tables_from:
        saved = json.loads(args.tables_from.read_text())
        header = [line for line in saved["header"] if not line.startswith("### ")][:6]  # older runs saved their tables too
        print("\n".join(header) + "\n" + render(saved["runs"]))
        return saved["runs"]
    if args.quick:
        args.testbeds, args.mnist1d_seeds, args.bits = ["mnist1d"], [0], [3]
        args.methods, args.act_order = ["rtn", "gptq"], False
    if "minilm" in args.testbeds and not minilm.available():
        raise SystemExit(f"MiniLM testbed missing: {minilm.MODEL_INSTALL} and {minilm.CORPUS_INSTALL} "
                         f"(or drop it with --testbeds mnist1d fashion)")
    task_args = argparse.Namespace(calib=args.calib, batch_size=args.batch_size, probes=0, minilm_probes=0)

    command = "python bench/quality/recipes.py" + "".join(" " + shlex.quote(a) for a in (sys.argv[1:] if argv is None
                                                                                          else argv))
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    started, code, load0 = datetime.datetime.now(), code_state(), os.getloadavg()[0]
    t0 = time.perf_counter()
    runs, timing = [], {}
    for name in args.testbeds:
        t = time.perf_counter()
        seeds = getattr(args, f"{name}_seeds")
        if name == "minilm":
            for seed in seeds:
                runs += run_instance(study.minilm_task(seed, task_args, log), args, log)
        else:
            split = qtrain.TESTBEDS[name].load_data()
            for seed in seeds:
                runs += run_instance(study.classification_task(name, seed, split, task_args, log), args, log)
        timing[name] = time.perf_counter() - t
    total = time.perf_counter() - t0

    lines = [f"Command: `{command}`  ",
             f"Date: {started.isoformat(timespec='minutes')}; total wall time {total / 60:.1f} min "
             f"({', '.join(f'{k} {v / 60:.1f} min' for k, v in timing.items())}); 1-min load average "
             f"{load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end  ",
             f"Code: ompq_ext {ompq_ext.__version__}, {code}  ",
             f"Machine: {machine()}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}  ",
             f"Recipes: uniform plans (bits=[b]); quantize() defaults: weights per output channel with MSE scales "
             f"(group rows: per group of {', '.join(f'{GROUP[t]} ({t})' for t in args.testbeds)} input columns), "
             f"activations 8-bit per tensor (MSE range, padding masked), {args.calib} calibration inputs; "
             f"adaround/brecq 500 Adam steps per layer/block (MiniLM draws {args.minilm_recon_draws}); "
             f"gptq damp 0.01, block 128, keep_best.", ""]
    print("\n".join(lines) + "\n" + render(runs))
    if args.json:
        args.json.write_text(json.dumps({"command": command, "date": started.isoformat(), "machine": machine(),
                                         "code": code, "total_seconds": total, "header": lines, "runs": runs},
                                        indent=1, default=str))
    return runs


if __name__ == "__main__":
    main()
