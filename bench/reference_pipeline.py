"""A reference-style OMPQ pipeline, written from METHOD.md section 2, as the baseline that
plan() is measured against.

It does what the authors' scripts do, in the form most favourable to them that still keeps
their structure: run the batch once and STORE every layer's output (float32, on the CPU); form
each layer's Gram X Xᵀ in numpy once (the scripts recompute it per pair); centre it; loop over
every pair (i, j) for linear CKA; importance and theta as plan() (log domain, so the relaxation
is not degenerate); SLSQP on the continuous relaxation with x in [min bits, max bits]; round to
nearest (``ompq_ext.solver.solve_relaxed``), which may break the budget.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from ompq_ext.orthogonality import importance, log_theta, objective_weights
from ompq_ext.solver import GroupSpec, solve_relaxed

LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Linear)


def store_features(model: nn.Module, x: torch.Tensor) -> tuple[list[str], list[np.ndarray], list[int]]:
    """One no-grad forward; every Conv/Linear output kept as an (N, d) float32 array."""
    names, feats, params = [], [], []
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, LAYER_TYPES):
            def hook(module, inputs, output, name=name):
                names.append(name)
                feats.append(output.detach().reshape(output.shape[0], -1).numpy().copy())
                params.append(module.weight.numel())
            handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()
            model(x)
    finally:
        for h in handles:
            h.remove()
    return names, feats, params


def centred_grams(feats: list[np.ndarray]) -> list[np.ndarray]:
    out = []
    for f in feats:
        k = (f @ f.T).astype(np.float64)
        n = k.shape[0]
        h = np.eye(n) - 1.0 / n
        out.append(h @ k @ h)
    return out


def pairwise_cka(grams: list[np.ndarray]) -> np.ndarray:
    """ORM(i, j) = <K_i, K_j>_F / (|K_i|_F |K_j|_F), one pair at a time."""
    n = len(grams)
    orm = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            hsic = np.sum(grams[i] * grams[j])
            orm[i, j] = orm[j, i] = hsic / (np.linalg.norm(grams[i]) * np.linalg.norm(grams[j]))
    return orm


def orm_stage(feats: list[np.ndarray]) -> np.ndarray:
    return pairwise_cka(centred_grams(feats))


def run(model: nn.Module, x: torch.Tensor, size_budget_bits: int, *, bits=range(2, 9), beta: float = 0.1,
        other_params: int = 0) -> dict:
    """The whole reference-style pipeline; returns the bits, the allocation and stage times."""
    timing = {}
    t = time.perf_counter()
    names, feats, params = store_features(model, x)
    timing["features"] = time.perf_counter() - t
    t = time.perf_counter()
    orm = orm_stage(feats)
    timing["orthogonality"] = time.perf_counter() - t
    del feats
    t = time.perf_counter()
    weights = objective_weights(log_theta(importance(orm), beta), "suffix_mean")
    groups = [GroupSpec(n, p, 0, float(w), tuple(bits)) for n, p, w in zip(names, params, weights)]
    alloc = solve_relaxed(groups, size_budget_bits=size_budget_bits, other_bits=32 * other_params, rounding="nearest")
    timing["solve"] = time.perf_counter() - t
    timing["total"] = sum(timing.values())
    return {"names": names, "orm": orm, "allocation": alloc, "timing": timing,
            "over_budget": alloc.size_bits > size_budget_bits}
