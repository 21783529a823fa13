"""Bit allocators compared in the quality study, all through ``ompq_ext.plan``'s pipeline.

Every allocator here plans one testbed instance (a ``Task``) at OMPQ's budget and bit choices
(``base``: OMPQ's own plan at that budget) by handing ``plan()`` an allocator -- a weight per
layer (maximise sum w_i b_i) or a table of values per layer and bit-width (maximise sum V_i(b_i)),
as ``ompq_ext.allocators.GivenScores`` -- so every plan has the same groups, budgets, bit choices
and exact solver, and its record (size, BOPs) is computed by the library:

* ``params_only``: every weight equal -- parameter counts alone decide (OMPQ with beta -> 0).
* ``random_plans``: weights drawn uniformly from [0, 1): random plans on the budget's frontier.
* ``hessian_plan``: HAWQ-V2/V3's sensitivity, the Hutchinson estimate of each layer's Hessian
  trace (of the task loss on labelled calibration data) over its weight count, times the squared
  weight perturbation ||Q_b(W) - W||^2 at each bit-width; minimised.
* ``kl_plan``: each layer quantized alone at each bit-width, the others in FP32: the divergence of
  the model's outputs from FP32 on the calibration inputs (KL of the class probabilities; for an
  embedding model, 1 - cosine), minimised exactly. ``greedy`` walks the same table one layer at a
  time (HAQ/AMP-style) and plans the bits it ends at.

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

import ompq_ext
from ompq_ext.allocators import GivenScores
from ompq_ext.quant.modules import weight_scale
from ompq_ext.quant.ops import fake_quantize
from ompq_ext.record import Plan


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


# ---------------------------------------------------------------- plans through plan()


def plan_like(task: Task, base: Plan, allocator) -> Plan:
    """``plan()`` with ``allocator`` at ``base``'s budgets and bit choices."""
    return ompq_ext.plan(task.model, task.calib, [b.text for b in base.budgets], method=allocator,
                         bits=base.settings.bits, input_fn=task.input_fn, progress=False, **task.plan_kwargs)


def params_only(task: Task, base: Plan) -> Plan:
    return plan_like(task, base, GivenScores(weights={n: 1.0 for n in base.layer_names}, name="params-only"))


def random_plans(task: Task, base: Plan, n: int, seed: int) -> list[Plan]:
    rng = np.random.default_rng(seed)
    names = base.layer_names
    return [plan_like(task, base, GivenScores(weights=dict(zip(names, rng.random(len(names)))), name=f"random {k}"))
            for k in range(n)]


def search_seconds(plan: Plan) -> float:
    """What scoring and solving took in ``plan()`` (not the feature pass, which these allocators do not need)."""
    return plan.timing["scores"] + plan.timing["solve"]


def objective(plan: Plan, weights: dict[str, float]) -> float:
    """sum_i w_i b_i of a plan under another plan's layer weights (OMPQ's proxy)."""
    return sum(weights[x.name] * x.bits for x in plan.layers)


def table_bits(base: Plan) -> list[int]:
    """Every bit-width a layer of ``base`` may take: the choices and the fixed bits."""
    return sorted(set(base.settings.bits) | {g.bits for g in base.groups if g.fixed})


def _cost_plan(task: Task, base: Plan, cost, name: str) -> Plan:
    """The plan that minimises sum_i cost(layer i, its bits) exactly."""
    values = {n: {b: -cost(n, b) for b in table_bits(base)} for n in base.layer_names}
    return plan_like(task, base, GivenScores(values=values, name=name))


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


def hessian_plan(task: Task, base: Plan, traces: dict[str, float], qw: QuantizedWeights) -> Plan:
    """The plan that minimises the summed Omega_i(b_i)."""
    return _cost_plan(task, base, lambda n, b: hessian_cost(traces, qw, n, b), "Hessian trace")


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


def greedy(task: Task, base: Plan, table: dict[str, dict[int, float]]) -> Plan:
    """Start every group at its largest bits; while over budget, lower the group whose next step
    down adds the least divergence per bit of size saved; then raise groups while they fit
    (most divergence removed per bit first). One layer at a time, no look-ahead. The bits it ends
    at are planned as a table worth 1 exactly there, which the exact solver then returns as they are."""
    size = next(b for b in base.budgets if b.kind in ("size", "avg_bits", "fraction"))
    limit = size.limit - 32 * base.totals.other_params
    choices = sorted(base.settings.bits)
    groups = base.groups

    def cost(g, b):
        return sum(table[n][b] for n in g.layers)

    bits = [g.bits if g.fixed else choices[-1] for g in groups]
    size = sum(g.params * b for g, b in zip(groups, bits))
    while size > limit:
        best = None
        for k, g in enumerate(groups):
            if g.fixed or bits[k] == choices[0]:
                continue
            lower = choices[choices.index(bits[k]) - 1]
            rate = (cost(g, lower) - cost(g, bits[k])) / (g.params * (bits[k] - lower))
            if best is None or rate < best[0]:
                best = (rate, k, lower)
        _, k, lower = best
        size -= groups[k].params * (bits[k] - lower)
        bits[k] = lower
    while True:
        best = None
        for k, g in enumerate(groups):
            if g.fixed or bits[k] == choices[-1]:
                continue
            upper = choices[choices.index(bits[k]) + 1]
            extra = g.params * (upper - bits[k])
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
    chosen = {n: b for g, b in zip(groups, bits) for n in g.layers}
    values = {n: {b: float(b == chosen[n]) for b in table_bits(base)} for n in chosen}
    return plan_like(task, base, GivenScores(values=values, name="greedy KL"))


def kl_plan(task: Task, base: Plan, table: dict[str, dict[int, float]]) -> Plan:
    """The exact solver on the same table."""
    return _cost_plan(task, base, lambda n, b: table[n][b], "KL table → solver")


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t
