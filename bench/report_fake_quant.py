"""Print docs/KERNELS.md's fake-quantization speed tables: `ompq_ext.quant.ops.fake_quantize`
against torch's own fake-quant ops, both sides in the same process, repeats interleaved
(ours, torch, ours, torch, ...), medians reported.

    python bench/report_fake_quant.py            # full table (~2-3 min on 2 cores)
    python bench/report_fake_quant.py --quick    # the two smaller big workloads only
    python bench/report_fake_quant.py --threads 1   # both sides on one thread

Three passes per workload, all float32 on the CPU:

- fwd:      forward only, nothing requires grad. torch: fake_quantize_per_{channel,tensor}_affine.
- fwd+bwd:  x requires grad, fixed scale/zero point (STE with clipping mask). torch: the same ops
            under autograd; both backward passes via torch.autograd.grad with a fixed incoming grad.
- LSQ:      x and scale (and the zero point where asymmetric) require grad. torch:
            _fake_quantize_learnable_per_{channel,tensor}_affine (it always computes every grad).

Ratios are torch time / ours (above 1: ours is faster). "core" is the bare pybind11 binding on
numpy arrays, without the torch custom_op, autograd and numpy<->tensor conversions: ours - core is
the Python/dispatch overhead. bench/bench_fake_quant.py runs the same workloads under
pytest-benchmark.
"""

from __future__ import annotations

import argparse
import functools

import numpy as np
import torch

from ompq_ext import _core as core
from ompq_ext.quant.ops import fake_quantize, quant_range

from common import busy_percent, interleaved_medians, machine

# name -> (shape, axis (None: per tensor), bits, signed)
BIG = {
    "conv weight 512×512×3×3, per-channel axis 0, 4-bit sym.": ((512, 512, 3, 3), 0, 4, True),
    "linear weight 4096×4096, per-channel axis 0, 8-bit sym.": ((4096, 4096), 0, 8, True),
    "activation 32×64×56×56, per-tensor, 8-bit asym.": ((32, 64, 56, 56), None, 8, False),
    "activation 32×256×14×14, per-tensor, 8-bit asym.": ((32, 256, 14, 14), None, 8, False),
}
QUICK = ("conv weight 512×512×3×3, per-channel axis 0, 4-bit sym.", "activation 32×256×14×14, per-tensor, 8-bit asym.")
SMALL = {
    "linear weight 64×64, per-channel axis 0, 4-bit sym.": ((64, 64), 0, 4, True),
    "activation 8×16×8×8, per-tensor, 8-bit asym.": ((8, 16, 8, 8), None, 8, False),
    "conv weight 64×64×3×3, per-channel axis 0, 4-bit sym.": ((64, 64, 3, 3), 0, 4, True),
}
# Per-channel along the last axis: the kernels' column path (tiles of rows x columns); "core" is the
# bare binding along the last axis.
LAST_AXIS = {"activation 16384×256, per-channel axis -1 (last), 8-bit sym.": ((16384, 256), -1, 8, True)}
MODES = ("fwd", "fwd+bwd", "LSQ")


@functools.lru_cache(maxsize=1)
def inputs(shape, axis, bits, signed, seed=0):
    """x (post-ReLU-like for unsigned), per-channel (or per-tensor) min-max scales, zero points, grad."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    qmin, qmax = quant_range(bits, signed)
    if axis is None:
        if signed:
            scale, zp = x.abs().amax().reshape(1) / qmax, torch.zeros(1)
        else:
            lo, hi = x.amin(), x.amax()
            scale = ((hi - lo) / (qmax - qmin)).reshape(1)
            zp = torch.round(qmin - lo / scale).clamp(qmin, qmax).reshape(1)
    else:
        red = [d for d in range(x.dim()) if d != axis % x.dim()]
        scale = x.abs().amax(dim=red) / qmax
        zp = torch.zeros_like(scale) if signed else torch.full_like(scale, float((qmax + qmin + 1) // 2))
    grad = torch.randn(shape, generator=g)
    return {"x": x, "scale": scale.contiguous(), "zp": zp.contiguous(), "grad": grad, "qmin": qmin, "qmax": qmax}


def workloads(shape, axis, bits, signed, mode):
    """name -> zero-argument callable ('ours', 'torch', and 'core' for the forward)."""
    d = inputs(shape, axis, bits, signed)
    x, s, z, gy, qmin, qmax = d["x"], d["scale"], d["zp"], d["grad"], d["qmin"], d["qmax"]
    nd = x.dim()
    zi = z.to(torch.int32)
    gf = 1.0 / float(np.sqrt(x.numel() * qmax))  # LSQ's grad_factor

    def torch_fq(xx):
        if axis is None:
            return torch.fake_quantize_per_tensor_affine(xx, float(s[0]), int(zi[0]), qmin, qmax)
        return torch.fake_quantize_per_channel_affine(xx, s, zi, axis % nd, qmin, qmax)

    def ours_fq(xx, ss=s, zz=z, grad_factor=1.0):
        return fake_quantize(xx, ss, zz, bits=bits, signed=signed, axis=axis, grad_factor=grad_factor)

    if mode == "fwd":
        xn, sn, zn = x.numpy(), s.numpy(), z.numpy()
        return {
            "ours": lambda: ours_fq(x),
            "torch": lambda: torch_fq(x),
            "core": lambda: core.fake_quant_forward(xn, sn, zn, axis, qmin, qmax),
        }
    xg = x.clone().requires_grad_()
    if mode == "fwd+bwd":
        return {
            "ours": lambda: torch.autograd.grad(ours_fq(xg), xg, gy),
            "torch": lambda: torch.autograd.grad(torch_fq(xg), xg, gy),
        }
    sg = s.clone().requires_grad_()
    zg = z.clone().requires_grad_(not signed)  # a learnable zero point where asymmetric
    wrt = [xg, sg] + ([zg] if not signed else [])

    def torch_lsq():
        if axis is None:
            y = torch._fake_quantize_learnable_per_tensor_affine(xg, sg, zg, qmin, qmax, gf)
        else:
            y = torch._fake_quantize_learnable_per_channel_affine(xg, sg, zg, axis % nd, qmin, qmax, gf)
        return torch.autograd.grad(y, wrt, gy)

    return {
        "ours": lambda: torch.autograd.grad(ours_fq(xg, sg, zg, gf), wrt, gy),
        "torch": torch_lsq,
    }


def check_same(shape, axis, bits, signed):
    """Both sides compute the same forward (bit for bit) before anything is timed."""
    d = inputs(shape, axis, bits, signed)
    fns = workloads(shape, axis, bits, signed, "fwd")
    assert torch.equal(fns["ours"](), fns["torch"]()), "ours and torch differ"
    assert np.array_equal(fns["core"](), fns["torch"]().numpy())
    return d["x"].numel()


def repeats(numel: int) -> int:
    return 5 if numel >= 8_000_000 else 9 if numel >= 1_000_000 else 51


def fmt_ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def table(cases, args, small=False):
    rows = []
    for name, (shape, axis, bits, signed) in cases.items():
        numel = check_same(shape, axis, bits, signed)
        reps = max(3, round((201 if small else repeats(numel)) * args.repeat_scale))
        t = {mode: interleaved_medians(workloads(shape, axis, bits, signed, mode), reps) for mode in MODES}
        rows.append((name, numel, t))
        print(f"| {name} | {numel / 1e6:.3g} M | {fmt_ms(t['fwd']['ours'])} | {fmt_ms(t['fwd']['core'])} | "
              f"{fmt_ms(t['fwd']['torch'])} | **{t['fwd']['torch'] / t['fwd']['ours']:.2f}** | "
              f"{fmt_ms(t['fwd+bwd']['ours'])} | {fmt_ms(t['fwd+bwd']['torch'])} | "
              f"**{t['fwd+bwd']['torch'] / t['fwd+bwd']['ours']:.2f}** | "
              f"{fmt_ms(t['LSQ']['ours'])} | {fmt_ms(t['LSQ']['torch'])} | "
              f"**{t['LSQ']['torch'] / t['LSQ']['ours']:.2f}** |", flush=True)
    return rows


HEADER = ("| workload | elements | fwd ours | fwd core | fwd torch | fwd ratio | fwd+bwd ours | fwd+bwd torch "
          "| fwd+bwd ratio | LSQ ours | LSQ torch | LSQ ratio |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="two big workloads and the small ones")
    ap.add_argument("--repeat-scale", type=float, default=1.0, help="multiply every repeat count")
    ap.add_argument("--threads", type=int, default=0,
                    help="threads for both sides (torch.set_num_threads, which also sets the OpenMP default the "
                         "core uses: one libgomp in the process); 0: leave the defaults")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    big = {k: v for k, v in BIG.items() if not args.quick or k in QUICK}

    busy = busy_percent()
    print(f"Machine: {machine()}")
    if busy is not None:
        warn = "  (WARNING: other load, numbers unreliable)" if busy > 10 else ""
        print(f"CPU busy before the run: {busy:.0f}%{warn}")
    print("\nTimes in ms (medians of interleaved repeats); ratio = torch time / ours (above 1: ours is faster)\n")
    print("Weight- and activation-sized tensors:\n")
    print(HEADER)
    rows = table(big, args)
    print("\nSmall tensors (per-call overhead):\n")
    print(HEADER)
    small_rows = table(SMALL, args, small=True)
    print("\nPer-channel along the last axis (the kernels' column path; 'fwd core' is the binding along the "
          "last axis):\n")
    print(HEADER)
    table(LAST_AXIS, args)
    for label, rs in (("big", rows), ("small", small_rows)):
        fb = [r[2]["fwd+bwd"]["torch"] / r[2]["fwd+bwd"]["ours"] for r in rs]
        lsq = [r[2]["LSQ"]["torch"] / r[2]["LSQ"]["ours"] for r in rs]
        over = [(r[2]["fwd"]["ours"] - r[2]["fwd"]["core"]) * 1e6 for r in rs]
        print(f"\n{label}: fwd+bwd ratio {min(fb):.2f}-{max(fb):.2f}, LSQ ratio {min(lsq):.2f}-{max(lsq):.2f}; "
              f"op overhead over the bare binding (fwd) {min(over):.0f}-{max(over):.0f} µs")
    busy = busy_percent()
    if busy is not None and busy > 10:
        print(f"\nWARNING: CPU {busy:.0f}% busy after the run (other processes): rerun on a quiet machine.")


if __name__ == "__main__":
    main()
