"""``ompq-ext demo``: the embedded default. A 1-D ResNet trained by this project
on MNIST-1D (python/ompq_ext/assets, built by scripts/make_demo_assets.py) is
planned at two budgets by plan()'s default method from its unlabeled calibration signals, quantized
(weights per output channel at the planned bits, activations at 8 bits), and
compared with FP32 and with uniform precision at the same size. No network and
no training are needed.
"""

from __future__ import annotations

import time
from importlib import resources

import numpy as np
import torch

from .models import resnet1d
from .plan import plan
from .quant.api import quant_report, quantize

BUDGET_BITS = (3, 4)


def load_demo():
    """(model in eval mode, calibration signals, test signals, test labels)."""
    assets = resources.files("ompq_ext") / "assets"
    model = resnet1d(width=32)
    with resources.as_file(assets / "mnist1d_resnet.pt") as path:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    with resources.as_file(assets / "mnist1d.npz") as path, np.load(path) as data:
        calib = torch.from_numpy(data["calib_x"])
        test_x, test_y = torch.from_numpy(data["test_x"]), torch.from_numpy(data["test_y"])
    return model.eval(), calib, test_x, test_y


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def run(budget_bits=BUDGET_BITS, method: str = "rtn", num_samples: int | None = None, plot: str | None = None,
        beta: float | None = None, bits=None, planner: str | None = None, out=print):
    """Plan (with ``planner``, plan()'s method; its default where None), quantize and evaluate; returns one
    row per budget: (budget, uniform plan, mixed plan, uniform accuracy, mixed accuracy)."""
    torch.manual_seed(0)
    start = time.perf_counter()
    model, calib, test_x, test_y = load_demo()
    fp32 = accuracy(model, test_x, test_y)
    out(f"MNIST-1D 1-D ResNet, {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"FP32 test accuracy {fp32:.2%} on {len(test_y)} signals.")
    rows, lines = [], []
    for b in budget_bits:
        budget = f"{b}bits"
        uniform = plan(model, [calib], budget, bits=[b], method="ompq", num_samples=num_samples, progress=False)
        ompq = plan(model, [calib], budget, method=planner, num_samples=num_samples, beta=beta, bits=bits,
                    progress=False)
        acc = []
        for p in (uniform, ompq):
            qmodel = quantize(model, p, calib=[calib], method=method, progress=False)
            acc.append(accuracy(qmodel, test_x, test_y))
        size = quant_report(qmodel)["size_bytes"] / 1024
        lines.append(f"{budget:<8} {size:>6.1f} KiB  {acc[0]:>8.2%}  {acc[1]:>10.2%}   "
                     + " ".join(str(x.bits) for x in ompq.layers)
                     + (f"   (won: {ompq.settings['chosen']})" if ompq.settings.method == "verified" else ""))
        rows.append((budget, uniform, ompq, acc[0], acc[1]))
    name, s = ompq.settings.method, ompq.settings
    detail = f", beta {s['beta']:g}" if name == "ompq" else ""
    out(f"Weights per output channel ({'plain rounding' if method == 'rtn' else method}), activations 8 bits; "
        f"plan(method={name!r}{detail}{', bits ' + ','.join(map(str, bits)) if bits else ''}) from "
        f"{s.num_samples} unlabeled signals ({s.cost['forward_passes']} forward passes), calibration on {len(calib)}.\n")
    out(f"{'budget':<8} {'size':>9}  {'uniform':>8}  {name:>10}   {name} bits per layer, input to output")
    for line in lines:
        out(line)
    out(f"\nFP32 {fp32:.2%}. Same size for uniform and {name} at each budget (planned weights at the budget's "
        f"average bits). {time.perf_counter() - start:.1f} s in all.")
    if plot:
        _plot(rows, plot, out)
    return rows


def _plot(rows, path, out):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        out("matplotlib is not installed: no plot (pip install matplotlib)")
        return
    fig, axes = plt.subplots(len(rows), 1, figsize=(9, 2.4 * len(rows)), squeeze=False)
    for ax, (budget, uniform, ompq, acc_u, acc_o) in zip(axes[:, 0], rows):
        names = [x.name for x in ompq.layers]
        ax.bar(range(len(names)), [x.bits for x in ompq.layers], color="tab:blue", label=f"OMPQ ({acc_o:.1%})")
        ax.axhline(uniform.layers[0].bits, color="tab:gray", ls="--", label=f"uniform ({acc_u:.1%})")
        ax.set_ylabel("bits")
        ax.set_title(f"budget {budget}")
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
        ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    out(f"plot written to {path}")
