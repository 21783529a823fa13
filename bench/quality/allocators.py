"""The study's plans, all through ``ompq_ext.plan`` and the library's allocators
(``ompq_ext.allocators``): every method plans one testbed instance (a ``Task``) at the budget and
bit choices of OMPQ's default plan (``base``), so every plan has the same groups, size limit, bit
choices and exact solver, and its record (size, BOPs, cost) comes from the library.

Here only what the library does not offer as a method: parameter counts alone and random plans
(baselines), and ``Recorded``, which keeps an allocator's value table for the study's correlation
table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

import ompq_ext
from ompq_ext.allocators import Allocator, GivenScores
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
    evaluate: Callable[[nn.Module], dict]            # test metrics; "score" is the one compared
    plan_kwargs: dict = dataclasses.field(default_factory=dict)  # e.g. layers to leave out
    probes: int = 32                 # Hutchinson probes for the Hessian traces
    info: dict = dataclasses.field(default_factory=dict)  # FP32 score, whether the model was cached


def plan_like(task: Task, base: Plan, method, **kwargs) -> Plan:
    """``plan()`` with ``method`` at ``base``'s budgets and bit choices (from the method's own number of samples)."""
    return ompq_ext.plan(task.model, task.calib, [b.text for b in base.budgets], method=method,
                         bits=base.settings.bits, input_fn=task.input_fn, progress=False, **task.plan_kwargs, **kwargs)


def params_only(task: Task, base: Plan) -> Plan:
    return plan_like(task, base, GivenScores(weights={n: 1.0 for n in base.layer_names}, name="params-only"))


def random_plans(task: Task, base: Plan, n: int, seed: int) -> list[Plan]:
    rng = np.random.default_rng(seed)
    names = base.layer_names
    return [plan_like(task, base, GivenScores(weights=dict(zip(names, rng.random(len(names)))), name=f"random {k}"))
            for k in range(n)]


def objective(plan: Plan, weights: dict[str, float]) -> float:
    """sum_i w_i b_i of a plan under another plan's layer weights (OMPQ's proxy)."""
    return sum(weights[x.name] * x.bits for x in plan.layers)


def table_value(plan: Plan, values: dict[str, dict[int, float]]) -> float | None:
    """sum_i V_i(b_i) of a plan under a value table (None where the table lacks a plan's bit-width)."""
    if not all(x.bits in values[x.name] for x in plan.layers):
        return None
    return sum(values[x.name][x.bits] for x in plan.layers)


class Recorded(Allocator):
    """An allocator that keeps the scores it gave (``.scores_``), otherwise the allocator itself."""

    def __init__(self, inner: Allocator):
        self.inner, self.scores_ = inner, None
        self.name, self.min_samples, self.feature_point = inner.name, inner.min_samples, inner.feature_point
        self.default_samples = inner.default_samples

    def check(self, num_samples):
        self.inner.check(num_samples)

    def collectors(self, layers, num_samples):
        return self.inner.collectors(layers, num_samples)

    def scores(self, data):
        self.scores_ = self.inner.scores(data)
        return self.scores_

    def settings(self):
        return self.inner.settings()
