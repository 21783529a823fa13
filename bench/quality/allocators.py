"""Bit allocators compared in the quality study, all through the same exact solver.

Every allocator here turns one testbed instance (a ``Task``) and OMPQ's own plan at a budget
(``base``: the layers, their groups, the bit choices and the size limit) into a plan of the same
budget, by handing the solver either a weight per layer (maximise sum w_i b_i) or a table of
values per layer and bit-width (maximise sum V_i(b_i)):

* ``params_only``: every weight equal -- parameter counts alone decide (OMPQ with beta -> 0).
* ``random_plans``: weights drawn uniformly from [0, 1): random plans on the budget's frontier.
* ``hessian_values``: HAWQ-V2/V3's sensitivity, the Hutchinson estimate of each layer's Hessian
  trace (of the task loss on labelled calibration data) over its weight count, times the squared
  weight perturbation ||Q_b(W) - W||^2 at each bit-width; minimised.
* ``kl_table``: each layer quantized alone at each bit-width, the others in FP32: the divergence of
  the model's outputs from FP32 on the calibration inputs (KL of the class probabilities; for an
  embedding model, 1 - cosine). ``greedy`` walks it one layer at a time (HAQ/AMP-style); the
  same table also goes into the solver as an exact baseline.

Weights are quantized exactly as ``ompq_ext.quantize`` does (symmetric per output channel, MSE
scale search), so the sensitivities measure the perturbation the recipe will make.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ompq_ext.budget import parse_budget
from ompq_ext.plan import Plan
from ompq_ext.quant.modules import weight_scale
from ompq_ext.quant.ops import fake_quantize
from ompq_ext.solver import GroupSpec, solve


@dataclass
class Task:
    """One testbed instance: a trained model, its calibration data and how to score it."""

    testbed: str
    seed: int
    model: nn.Module
    calib: list                      # unlabeled calibration batches (plan() and quantize() take them)
    input_fn: Callable | None        # batch -> model inputs, where a batch is not a plain tensor
    loss: Callable[[nn.Module], torch.Tensor]        # labelled task loss on calibration data (Hessian)
    outputs: Callable[[nn.Module], torch.Tensor]     # model outputs on calibration inputs (KL table)
    divergence: Callable[[torch.Tensor, torch.Tensor], float]  # (outputs, FP32 outputs) -> divergence
    evaluate: Callable[[nn.Module], dict]            # test metrics; "score" is the one compared
    plan_kwargs: dict = dataclasses.field(default_factory=dict)  # e.g. layers to leave out
    probes: int = 32                 # Hutchinson probes for the Hessian traces
    info: dict = dataclasses.field(default_factory=dict)  # FP32 score, whether the model was cached


# ---------------------------------------------------------------- plans from bits


def size_limit(base: Plan) -> int:
    """The size budget of ``base`` in bits (its first size budget)."""
    budget = next(parse_budget(b["text"]) for b in base.budgets if b["kind"] in ("size", "avg_bits", "fraction"))
    return budget.size_limit_bits(planned_params=base.totals["planned_params"],
                                  other_params=base.totals["other_params"])


def group_specs(base: Plan, weights=None) -> list[GroupSpec]:
    choices = tuple(base.settings["bits"])
    weights = [1.0] * len(base.groups) if weights is None else weights
    return [GroupSpec(name=g["name"], params=g["params"], macs=0, weight=float(w),
                      bits=(g["bits"],) if g["fixed"] else choices)
            for g, w in zip(base.groups, weights)]


def with_bits(base: Plan, group_bits: list[int], allocator: str) -> Plan:
    """``base`` with other bits (one per group): the Plan that quantize() takes."""
    by_group = {g["name"]: int(b) for g, b in zip(base.groups, group_bits)}
    layers = [dataclasses.replace(x, bits=by_group[x.group]) for x in base.layers]
    groups = [{**g, "bits": by_group[g["name"]]} for g in base.groups]
    planned = base.totals["planned_params"]
    size = sum(g["params"] * g["bits"] for g in groups) + 32 * base.totals["other_params"]
    if size > size_limit(base):
        raise AssertionError(f"{allocator}: plan of {size} bits breaks the budget {size_limit(base)}")
    totals = {**base.totals, "size_bits": size, "size_bytes": size / 8, "size_mib": size / 8 / 2**20,
              "avg_bits": (size - 32 * base.totals["other_params"]) / planned}
    return dataclasses.replace(base, layers=layers, groups=groups, totals=totals,
                               settings={**base.settings, "allocator": allocator})


def solve_plan(base: Plan, allocator: str, *, weights=None, values=None) -> Plan:
    """The exact solver on ``base``'s groups, bit choices and size budget."""
    specs = group_specs(base, weights)
    other = 32 * base.totals["other_params"]
    if values is not None:
        values = [values[g["name"]] for g in base.groups]
    alloc = solve(specs, size_budget_bits=size_limit(base), other_bits=other, values=values)
    return with_bits(base, alloc.bits, allocator)


def params_only(base: Plan) -> Plan:
    return solve_plan(base, "params-only", weights=[1.0] * len(base.groups))


def random_plans(base: Plan, n: int, seed: int) -> list[Plan]:
    rng = np.random.default_rng(seed)
    return [solve_plan(base, f"random {k}", weights=rng.random(len(base.groups))) for k in range(n)]


def objective(plan: Plan, weights: dict[str, float]) -> float:
    """sum_i w_i b_i of a plan under another plan's layer weights (OMPQ's proxy)."""
    return sum(weights[x.name] * x.bits for x in plan.layers)


# ---------------------------------------------------------------- weight perturbations


class QuantizedWeights:
    """Q_b(W) for each planned layer and bit-width, as the quantization recipe computes it, cached.
    The FP32 weights are copied at construction, so swapping quantized weights into the model
    (as kl_table does) cannot leak into later results."""

    def __init__(self, model: nn.Module, names: list[str]):
        self.modules = {n: model.get_submodule(n) for n in names}
        self.fp32 = {n: m.weight.detach().clone() for n, m in self.modules.items()}
        self._cache: dict[tuple[str, int], torch.Tensor] = {}
        self._error: dict[tuple[str, int], float] = {}

    def __call__(self, name: str, bits: int) -> torch.Tensor:
        key = (name, bits)
        if key not in self._cache:
            w = self.fp32[name]
            s = weight_scale(w, bits, "mse")
            self._cache[key] = fake_quantize(w.float().reshape(w.shape[0], -1), s, bits=bits,
                                             axis=0).reshape(w.shape).to(w.dtype)
        return self._cache[key]

    def error(self, name: str, bits: int) -> float:
        """||Q_b(W) - W||^2."""
        key = (name, bits)
        if key not in self._error:
            self._error[key] = float((self(name, bits).float() - self.fp32[name].float()).square().sum())
        return self._error[key]


# ---------------------------------------------------------------- Hessian trace (HAWQ)


def hutchinson_traces(task: Task, names: list[str], probes: int, seed: int = 0) -> dict[str, float]:
    """Tr(H_i) of the task loss for each layer's weight, averaged over Rademacher probes."""
    model = task.model
    params = [model.get_submodule(n).weight for n in names]
    flags = [p.requires_grad for p in params]
    training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    sums = np.zeros(len(names))
    from torch.nn.attention import SDPBackend, sdpa_kernel

    try:
        for p in params:
            p.requires_grad_(True)
        # Hessian-vector products need double backward, which only the math attention kernel has.
        with sdpa_kernel(SDPBackend.MATH):
            loss = task.loss(model)
        # A layer that runs but does not reach the loss (e.g. a pooler the loss ignores) has no
        # gradient: its trace is 0.
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        used = [k for k, gr in enumerate(grads) if gr is not None]
        for k in range(probes):
            vs = [torch.randint(0, 2, params[i].shape, generator=g).to(params[i].dtype) * 2 - 1 for i in used]
            hv = torch.autograd.grad([grads[i] for i in used], [params[i] for i in used], grad_outputs=vs,
                                     retain_graph=k < probes - 1, allow_unused=True)
            for i, v, h in zip(used, vs, hv):
                if h is not None:
                    sums[i] += float((v * h).sum())
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)
        model.train(training)
    return {n: s / probes for n, s in zip(names, sums)}


def hessian_cost(traces: dict[str, float], qw: QuantizedWeights, name: str, bits: int) -> float:
    """HAWQ's Omega_i(b) = Tr(H_i) / n_i * ||Q_b(W_i) - W_i||^2."""
    return traces[name] / qw.modules[name].weight.numel() * qw.error(name, bits)


def hessian_values(base: Plan, traces: dict[str, float], qw: QuantizedWeights) -> dict[str, dict[int, float]]:
    """-Omega_g(b), summed over the group's layers (the solver maximises)."""
    return _group_values(base, lambda n, b: hessian_cost(traces, qw, n, b))


# ---------------------------------------------------------------- one layer at a time (KL)


@torch.no_grad()
def kl_table(task: Task, names: list[str], bits: list[int], qw: QuantizedWeights,
             reference: torch.Tensor) -> dict[str, dict[int, float]]:
    """Divergence from FP32 with only layer i quantized at b bits (weights only)."""
    model = task.model
    table = {}
    for n in names:
        weight = qw.modules[n].weight
        table[n] = {}
        try:
            for b in bits:
                weight.data.copy_(qw(n, b))
                table[n][b] = task.divergence(task.outputs(model), reference)
        finally:
            weight.data.copy_(qw.fp32[n])
    return table


def greedy(base: Plan, table: dict[str, dict[int, float]]) -> Plan:
    """Start every group at its largest bits; while over budget, lower the group whose next step
    down adds the least divergence per bit of size saved; then raise groups while they fit
    (most divergence removed per bit first). One layer at a time, no look-ahead."""
    limit = size_limit(base) - 32 * base.totals["other_params"]
    choices = sorted(base.settings["bits"])
    groups = base.groups

    def cost(g, b):
        return sum(table[n][b] for n in g["layers"])

    bits = [g["bits"] if g["fixed"] else choices[-1] for g in groups]
    size = sum(g["params"] * b for g, b in zip(groups, bits))
    while size > limit:
        best = None
        for k, g in enumerate(groups):
            if g["fixed"] or bits[k] == choices[0]:
                continue
            lower = choices[choices.index(bits[k]) - 1]
            rate = (cost(g, lower) - cost(g, bits[k])) / (g["params"] * (bits[k] - lower))
            if best is None or rate < best[0]:
                best = (rate, k, lower)
        _, k, lower = best
        size -= groups[k]["params"] * (bits[k] - lower)
        bits[k] = lower
    while True:
        best = None
        for k, g in enumerate(groups):
            if g["fixed"] or bits[k] == choices[-1]:
                continue
            upper = choices[choices.index(bits[k]) + 1]
            extra = g["params"] * (upper - bits[k])
            if size + extra > limit:
                continue
            rate = (cost(g, bits[k]) - cost(g, upper)) / extra
            if best is None or rate > best[0]:
                best = (rate, k, upper, extra)
        if best is None:
            break
        _, k, upper, extra = best
        size += extra
        bits[k] = upper
    return with_bits(base, bits, "greedy KL")


def table_values(base: Plan, table: dict[str, dict[int, float]]) -> dict[str, dict[int, float]]:
    """A per-layer cost table as solver values per group (negated: the solver maximises)."""
    return _group_values(base, lambda n, b: table[n][b])


def _group_values(base: Plan, cost) -> dict[str, dict[int, float]]:
    """{group: {bits: -sum of cost(layer, bits) over the group's layers}} over each group's choices."""
    out = {}
    for g in base.groups:
        choices = (g["bits"],) if g["fixed"] else tuple(base.settings["bits"])
        out[g["name"]] = {b: -sum(cost(n, b) for n in g["layers"]) for b in choices}
    return out


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t
