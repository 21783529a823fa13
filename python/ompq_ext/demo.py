"""``ompq-ext demo``: the embedded default. A 1-D ResNet trained by this project
on MNIST-1D (python/ompq_ext/assets, built by scripts/make_demo_assets.py) is
planned at three budgets from 32 unlabeled calibration signals; the demo prints
where each plan puts the bits. No network and no training are needed.
"""

from __future__ import annotations

import time
from importlib import resources

import numpy as np
import torch

from .models import resnet1d
from .plan import plan

BUDGETS = ("2.5bits", "3bits", "4bits")


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


def run(budgets=BUDGETS, num_samples: int = 32, out=print):
    torch.manual_seed(0)
    model, calib, test_x, test_y = load_demo()
    out(f"MNIST-1D 1-D ResNet ({sum(p.numel() for p in model.parameters()):,} parameters), "
        f"FP32 test accuracy {accuracy(model, test_x, test_y):.2%} on {len(test_y)} signals")
    plans = []
    for budget in budgets:
        t = time.perf_counter()
        result = plan(model, [calib], budget, num_samples=num_samples, progress=False)
        plans.append(result)
        out(f"\nbudget {budget}: {result.totals['size_mib'] * 1024:.1f} KiB, {result.totals['avg_bits']:.3f} bits "
            f"per weight, {result.solver['status']}, planned in {time.perf_counter() - t:.2f} s")
        width = max(len(x.name) for x in result.layers)
        for layer in result.layers:
            out(f"  {layer.name:<{width}} {layer.params:>7,} weights  {'#' * layer.bits:<8} {layer.bits}")
    return plans
