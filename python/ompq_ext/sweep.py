"""``sweep()``: plans at several budgets from one feature pass, each measured when asked, with uniform
precision as the reference: the size-against-quality front a user picks a budget from.

Each plan is exactly what ``plan()`` gives for its budget with the same settings (the samples and the
feature pass are shared; the scoring and the solve run per budget, as the default method's candidates
depend on the budget). The uniform references are the planned layers all at one bit-width (fixed layers
at theirs), at each bit-width any of the plans could choose.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path

from torch import nn

from .errors import OmpqTypeError, OmpqValueError
from .plan import _plans, plan
from .problem import allocation_at
from .progress import progress_bar
from .record import Plan

PLAN_OPTIONS = tuple(name for name in inspect.signature(plan).parameters if name not in ("model", "loader", "budget"))


@dataclass
class SweepPoint:
    """One plan of a sweep: a budget's, or a uniform reference."""

    label: str  # the budget as given ("3bits"), or "uniform 4 bits"
    plan: Plan
    metric: float | None = None  # evaluate(quantized model), where evaluate was given
    uniform: bool = False

    @property
    def size_mib(self) -> float:
        return self.plan.totals.size_mib

    @property
    def objective(self) -> float | None:
        """The plan's objective under the sweep's scores (None for a reference they do not score)."""
        value = self.plan.solver.objective
        return None if value is None or math.isnan(value) else value

    def to_json(self) -> dict:
        t = self.plan.totals
        return {"label": self.label, "uniform": self.uniform, "size_bits": t.size_bits, "size_mib": t.size_mib,
                "avg_bits": t.avg_bits, "bops": t.bops, "objective": self.objective, "metric": self.metric,
                "bits": self.plan.bits}


@dataclass
class Sweep:
    """Plans at several budgets (``points``, in the order given) and uniform references (``references``)."""

    points: list[SweepPoint]
    references: list[SweepPoint] = field(default_factory=list)
    metric_name: str | None = None  # None where nothing was measured
    maximize: bool = True  # whether a larger metric is better (for the front)
    comparable: bool = True  # whether every plan was scored alike (then objectives compare across points)

    @property
    def plans(self) -> list[Plan]:
        return [p.plan for p in self.points]

    def front(self) -> list[SweepPoint]:
        """The points (plans and references) no other point beats: no larger and at least as good, on the
        metric where measured, else on the objective where the plans' objectives compare; none otherwise."""
        def quality(p):
            if self.metric_name is not None:
                return p.metric if self.maximize else -p.metric
            return p.objective if self.comparable else None

        everyone = self.points + self.references
        out = []
        for p in everyone:
            q = quality(p)
            if q is None:
                continue
            beaten = any(o is not p and quality(o) is not None and o.size_mib <= p.size_mib and quality(o) >= q
                         and (o.size_mib < p.size_mib or quality(o) > q) for o in everyone)
            if not beaten:
                out.append(p)
        return out

    def table(self) -> str:
        """One row per point, plans first then references, smallest first within each; * marks the front."""
        front = {id(p) for p in self.front()}
        metric = self.metric_name
        head = f"  {'budget':<16} {'size MiB':>10} {'bits/w':>7} {'GBOPs':>9}" + \
            (f" {'objective':>12}" if self.comparable else "") + (f" {metric[:12]:>12}" if metric else "") + "  bits used"
        rows = [head, "-" * len(head)]
        for group in (self.points, self.references):
            for p in sorted(group, key=lambda q: q.size_mib):
                t = p.plan.totals
                objective = "-" if p.objective is None else f"{p.objective:.6g}"
                used = {}
                for x in p.plan.layers:
                    used[x.bits] = used.get(x.bits, 0) + 1
                rows.append(f"{'*' if id(p) in front else ' '} {p.label:<16} {t.size_mib:>10.4f} {t.avg_bits:>7.3f} "
                            f"{t.bops / 1e9:>9.4f}" + (f" {objective:>12}" if self.comparable else "")
                            + (f" {p.metric:>12.6g}" if metric else "")
                            + "  " + " ".join(f"{b}:{n}" for b, n in sorted(used.items())))
        notes = ["* on the front: no smaller point is at least as good"
                 + (f" ({'larger' if self.maximize else 'smaller'} {metric} is better)" if metric else "")
                 if front else "no front: nothing measured, and the objectives do not compare"]
        if not self.comparable:
            notes.append(f"no objective column: {self.plans[0].settings.method!r} scores each budget's layers anew, so "
                         "objectives do not compare across rows" + ("; compare the metric" if metric else
                                                                    "; give evaluate= to compare the plans"))
        return "\n".join(rows + notes)

    def plot(self, path) -> Path:
        """Draw size against objective (and against the metric where measured) to ``path`` (a PNG)."""
        from .plots import pareto

        return pareto(self, path)

    def to_json(self) -> dict:
        return {"metric": self.metric_name, "maximize": self.maximize, "comparable": self.comparable,
                "points": [p.to_json() for p in self.points], "references": [p.to_json() for p in self.references]}

    def save(self, path) -> None:
        """The table's numbers as JSON (each plan in full: ``sweep.points[i].plan.save(...)``)."""
        Path(path).write_text(json.dumps(self.to_json(), indent=1))

    def __repr__(self):
        return f"Sweep({len(self.points)} budgets, {len(self.references)} uniform references)"


def sweep(model: nn.Module, loader, budgets, *, evaluate=None, recipe: str = "rtn", calib=None,
          quantize_options: dict | None = None, uniform: bool = True, metric_name: str = "metric",
          maximize: bool = True, progress: bool | None = None, **plan_options) -> Sweep:
    """Plan ``model`` at each of ``budgets`` from one feature pass; measure each plan where ``evaluate`` is given.

    budgets: a list of what plan() takes as a budget ("2.5bits", "4MiB", 0.15, or a [size, BOPs] pair).
    evaluate: ``evaluate(qmodel) -> float``, called on ``quantize(model, plan, calib=calib or loader,
        method=recipe, **quantize_options)`` for every plan and uniform reference (the loader must then
        be iterable again, as a list or a DataLoader is); ``metric_name`` names it, ``maximize`` says
        whether larger is better (accuracy) or smaller (a loss).
    uniform: add the uniform references (every planned layer at one bit-width, for each bit-width any
        plan could choose).
    plan_options: plan()'s keyword arguments (method, bits, act_bits, num_samples, ...), the same for every
        budget. Each plan equals ``plan(model, loader, budget, **plan_options)``.
    """
    unknown = sorted(set(plan_options) - set(PLAN_OPTIONS))
    if unknown:
        raise OmpqTypeError(f"sweep() got unknown option(s) {', '.join(map(repr, unknown))}; it takes plan()'s "
                            f"options ({', '.join(PLAN_OPTIONS)}) and its own")
    if isinstance(budgets, (str, bytes, Real)) or not isinstance(budgets, (list, tuple)) or not budgets:
        raise OmpqTypeError(f"budgets must be a non-empty list of budgets such as ['3bits', '4bits'], "
                            f"got {budgets!r}")
    if evaluate is not None and not callable(evaluate):
        raise OmpqTypeError(f"evaluate must be a function of the quantized model returning a number, "
                            f"got {type(evaluate).__name__}")
    if quantize_options is not None and not isinstance(quantize_options, dict):
        raise OmpqTypeError(f"quantize_options must be a dict of quantize()'s keyword arguments, "
                            f"got {type(quantize_options).__name__}")
    planned = list(_plans(model, loader, list(budgets), progress=progress, **plan_options))
    points = [SweepPoint(_label(b), p.plan) for b, p in zip(budgets, planned)]
    first = planned[0]
    # Objectives compare where every plan was scored alike and the inputs' bits are not decided too (the
    # references keep every input at the largest choice, whose score the plans' objectives do not share).
    comparable = all(_same_scores(first.scores, p.scores) for p in planned[1:]) and not first.problem.specs[0].act_choices
    references = []
    if uniform:
        fixed = set(first.plan.settings.fixed_bits)
        for b in sorted({b for p in points for b in p.plan.settings.bits}):
            bits = [g.bits if set(g.layers) & fixed else b for g in first.plan.groups]
            allocation = allocation_at(first.problem, first.scores, bits)
            if not comparable:
                allocation.objective = allocation.bound = math.nan
            reference = first.record(allocation, settings=dataclasses.replace(first.plan.settings, bits=[b]))
            reference.budgets = []
            references.append(SweepPoint(f"uniform {b} bits", reference, uniform=True))
    result = Sweep(points, references, metric_name if evaluate is not None else None, maximize, comparable)
    if evaluate is not None:
        _measure(model, result.points + result.references, evaluate, recipe, calib if calib is not None else loader,
                 quantize_options or {}, progress)
    return result


def _label(budget) -> str:
    if isinstance(budget, (list, tuple)):
        return " + ".join(map(str, budget))
    return str(budget)


def _same_scores(a, b) -> bool:
    return a.weights == b.weights and a.values == b.values and a.act_values == b.act_values


def _measure(model, points, evaluate, recipe, calib, options, progress) -> None:
    from .quant.api import quantize

    with progress_bar(len(points), "evaluate", "plan", progress) as bar:
        for p in points:
            qmodel = quantize(model, p.plan, calib=calib, method=recipe, progress=False, **options)
            value = evaluate(qmodel)
            if isinstance(value, bool) or not isinstance(value, Real) and not hasattr(value, "item"):
                raise OmpqTypeError(f"evaluate must return a number, got {type(value).__name__} for {p.label}")
            value = float(value.item() if hasattr(value, "item") else value)
            if not math.isfinite(value):
                raise OmpqValueError(f"evaluate returned {value} for {p.label}; it must be a finite number")
            p.metric = value
            bar.update(1)
