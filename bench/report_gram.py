"""Print docs/KERNELS.md's speed tables: the core's Gram accumulation against torch.mm and the
core's ORM matrix against per-pair numpy CKA, both sides in the same process, repeats
interleaved (core, baseline, core, baseline, ...), medians reported.

    python bench/report_gram.py              # full table (~1-2 min on 2 cores)
    python bench/report_gram.py --quick      # smaller shapes only, for a smoke check

Ratios are baseline time / core time: above 1 the core is faster. bench/bench_gram.py runs the
same workloads (imported from here) under pytest-benchmark.
"""

from __future__ import annotations

import argparse
import contextlib
import functools

import numpy as np
import torch

from ompq_ext import _core as core

from common import busy_percent, interleaved_medians, machine

GRAM_N = (32, 64, 128)
GRAM_D = (10_000, 100_000, 1_000_000)
ORM_L = (16, 64)
ORM_N = (32, 64)


# --------------------------------------------------------------------------- workloads


@functools.lru_cache(maxsize=1)
def gram_inputs(n: int, d: int, seed: int = 0):
    """float32 features (numpy and torch, sharing memory), their bf16 tensor and its int16 view."""
    g = torch.Generator().manual_seed(seed)
    x32 = torch.randn(n, d, generator=g)
    xbf = x32.to(torch.bfloat16)
    return {"x32": x32, "np32": x32.numpy(), "xbf": xbf, "npbf": xbf.view(torch.int16).numpy()}


def gram_workloads(n: int, d: int, dtype: str):
    """name -> zero-argument callable, for one shape and input dtype ('float32' or 'bfloat16').

    The core accumulates into a preallocated float64 Gram (as the feature hooks do); torch
    returns a new float32 matrix. Threads: each library's default (OpenMP / torch intra-op).
    """
    data = gram_inputs(n, d)
    k = np.zeros((n, n))
    if dtype == "float32":
        x, xn = data["x32"], data["np32"]
        return {
            "core": lambda: core.gram_accumulate(xn, k),
            "torch.mm": lambda: torch.mm(x, x.T),
        }
    xb, xn = data["xbf"], data["npbf"]

    def convert_then_mm():
        f = xb.float()
        return torch.mm(f, f.T)

    return {
        "core": lambda: core.gram_accumulate(xn, k, dtype="bf16"),
        "torch bf16->f32 + mm": convert_then_mm,
        "torch.mm bf16": lambda: torch.mm(xb, xb.T),
    }


@functools.lru_cache(maxsize=1)
def orm_inputs(num_layers: int, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 16))
    grams = np.empty((num_layers, n, n))
    for i in range(num_layers):
        f = z @ rng.standard_normal((16, 64)) + rng.standard_normal((n, 64))
        grams[i] = f @ f.T
    return grams


def cka_pairwise_loop(grams):
    """The textbook way: for every pair, centre both Grams (H K H) and take their cosine."""
    num_layers, n = grams.shape[:2]
    h = np.eye(n) - 1.0 / n
    out = np.eye(num_layers)
    for i in range(num_layers):
        for j in range(i + 1, num_layers):
            a = h @ grams[i] @ h
            b = h @ grams[j] @ h
            out[i, j] = out[j, i] = np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b))
    return out


def cka_numpy_one_product(grams):
    """numpy written the way the core works: centre once, flatten, one G Gᵀ product."""
    num_layers, n = grams.shape[:2]
    h = np.eye(n) - 1.0 / n
    g = (h @ grams @ h).reshape(num_layers, -1)
    p = g @ g.T
    s = np.sqrt(np.diag(p))
    return p / np.outer(s, s)


def orm_workloads(num_layers: int, n: int):
    grams = orm_inputs(num_layers, n)
    return {
        "core": lambda: core.orm_matrix(grams),
        "numpy pairwise loop": lambda: cka_pairwise_loop(grams),
        "numpy one product": lambda: cka_numpy_one_product(grams),
    }


def gram_repeats(d: int) -> int:
    return {10_000: 31, 100_000: 11}.get(d, 5)


# --------------------------------------------------------------------------- measurement


@contextlib.contextmanager
def blas_threads(limit: int):
    """Limit numpy's BLAS pool (threadpoolctl, if installed) while the ORM baselines run: its
    worker threads keep spinning after each small product and take the CPUs from the core's
    OpenMP threads in the interleaved loop. 0 leaves the pool as it is. Yields a note."""
    if limit <= 0:
        yield "numpy BLAS threads: default"
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield "numpy BLAS threads: default (threadpoolctl not installed)"
        return
    with threadpool_limits(limit, user_api="blas"):
        yield f"numpy BLAS threads: {limit}"


def fmt_ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="d <= 1e5 and N <= 64 only")
    ap.add_argument("--blas-threads", type=int, default=1,
                    help="numpy BLAS threads during the ORM comparison (0: leave the default)")
    ap.add_argument("--repeat-scale", type=float, default=1.0, help="multiply every repeat count")
    args = ap.parse_args(argv)
    ns = GRAM_N[:2] if args.quick else GRAM_N
    ds = GRAM_D[:2] if args.quick else GRAM_D

    def reps(r):
        return max(3, int(round(r * args.repeat_scale)))

    busy = busy_percent()
    print(f"Machine: {machine()}")
    if busy is not None:
        warn = "  (WARNING: other load, numbers unreliable)" if busy > 10 else ""
        print(f"CPU busy before the run: {busy:.0f}%{warn}")
    print()
    print("Gram K += X Xᵀ, float32 X (N × d); times in ms (median); ratio = torch.mm time / core time\n")
    print("| N | d | core ms | torch.mm ms | ratio |")
    print("|---:|---:|---:|---:|---:|")
    bf_rows = []
    for n in ns:
        for d in ds:
            t = interleaved_medians(gram_workloads(n, d, "float32"), reps(gram_repeats(d)))
            print(f"| {n} | {d:.0e} | {fmt_ms(t['core'])} | {fmt_ms(t['torch.mm'])} | "
                  f"{t['torch.mm'] / t['core']:.2f} |", flush=True)
            tb = interleaved_medians(gram_workloads(n, d, "bfloat16"), reps(gram_repeats(d)))
            bf_rows.append((n, d, tb))
    print("\nGram, bfloat16 X; ratio = baseline time / core time\n")
    print("| N | d | core ms | torch bf16→f32 + mm ms | torch.mm bf16 ms | ratio vs convert+mm | ratio vs mm bf16 |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n, d, t in bf_rows:
        conv, direct = t["torch bf16->f32 + mm"], t["torch.mm bf16"]
        print(f"| {n} | {d:.0e} | {fmt_ms(t['core'])} | {fmt_ms(conv)} | {fmt_ms(direct)} | "
              f"{conv / t['core']:.2f} | {direct / t['core']:.2f} |")
    with blas_threads(args.blas_threads) as blas_note:
        print(f"\nORM matrix from L Grams (N × N, float64); ratio = numpy time / core time; {blas_note}\n")
        print("| L | N | core ms | numpy pairwise loop ms | numpy one product ms | ratio vs loop "
              "| ratio vs one product |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for num_layers in ORM_L:
            for n in ORM_N:
                t = interleaved_medians(orm_workloads(num_layers, n), reps(7 if num_layers > 16 else 21))
                loop, one = t["numpy pairwise loop"], t["numpy one product"]
                print(f"| {num_layers} | {n} | {fmt_ms(t['core'])} | {fmt_ms(loop)} | {fmt_ms(one)} | "
                      f"{loop / t['core']:.1f} | {one / t['core']:.1f} |", flush=True)
    busy = busy_percent()
    if busy is not None and busy > 10:
        print(f"\nWARNING: CPU {busy:.0f}% busy after the run (other processes): rerun on a quiet machine.")


if __name__ == "__main__":
    main()
