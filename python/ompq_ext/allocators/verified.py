"""Candidate verification: a few cheap allocators each propose a plan (the exact solver on their
scores, at this plan's budgets and bit choices), uniform precision joins them where the budget
allows it, and the plan whose quantized weights move the model's outputs on the planning samples
least from FP32 wins -- one forward pass per distinct candidate (``divergence.py`` says what is
compared). Every candidate's features come from the same single feature pass.

On the planning samples the winner is never worse than uniform precision (when uniform fits the
budget) nor than any candidate; docs/QUALITY.md measures how that carries over to test data.
"""

from __future__ import annotations

import dataclasses

from ..errors import OmpqTypeError, OmpqValueError
from ..progress import progress_bar
from .base import Allocator, Scores, ScoringInput
from .divergence import OutputDivergence, check_divergence
from .ompq import OMPQ
from .output_error import OutputError
from .perturbation import QuantizedWeights, check_weight_scale


def default_candidates() -> list[Allocator]:
    return [OutputError(), OutputError(normalize="output"), OMPQ()]


def label(allocator: Allocator) -> str:
    """A candidate's name with the settings that tell it apart, e.g. ``output_error(normalize=output)``."""
    try:
        defaults = type(allocator)().settings()
    except Exception:  # an allocator whose constructor needs arguments: its settings are shown as they are
        defaults = {}
    changed = {k: v for k, v in allocator.settings().items() if defaults.get(k, v) != v}
    return allocator.name + ("(" + ", ".join(f"{k}={v}" for k, v in changed.items()) + ")" if changed else "")


class Verified(Allocator):
    """The candidate plan whose quantized outputs diverge least from FP32 (see the module docstring).

    candidates: allocators whose plans compete (default: output_error, output_error normalised by
    the output energy, ompq); each must work from the feature pass alone (feature_point "output").
    uniform: add the highest uniform precision that fits the budget as a candidate.
    divergence, output_fn: what is compared (allocators/divergence.py). weight_scale: the recipe's.
    """

    name = "verified"
    scores_act_bits = True
    # The divergences of the candidates are heavy-tailed over samples: on 32 they picked uniform precision
    # over a plan 8 points more accurate on test data (Fashion-MNIST), on 128 the test ranking (docs/QUALITY.md).
    default_samples = 128

    def __init__(self, candidates=None, *, uniform: bool = True, divergence: str = "auto", output_fn=None,
                 weight_scale: str = "mse"):
        candidates = default_candidates() if candidates is None else list(candidates)
        if not candidates and not uniform:
            raise OmpqValueError("Verified needs at least one candidate allocator or uniform=True")
        for c in candidates:
            if not isinstance(c, Allocator):
                raise OmpqTypeError(f"candidates must be Allocator instances, got {type(c).__name__}")
            if c.feature_point != "output":
                raise OmpqValueError(f"candidate {c.name!r} reads features at {c.feature_point!r}; the candidates "
                                     f"share one feature pass at each layer's output")
        check_divergence(divergence, output_fn)
        check_weight_scale(weight_scale)
        self.candidates, self.uniform = candidates, uniform
        self.divergence, self.output_fn, self.weight_scale = divergence, output_fn, weight_scale
        self.min_samples = max([c.min_samples for c in candidates] + [1])
        self._slices: list[slice] = []
        self.results: list[tuple[str, float]] = []  # the last scoring's (candidate, divergence), in order
        self.chosen, self._kind = "", divergence

    def check(self, num_samples):
        for c in self.candidates:
            c.check(num_samples)

    def collectors(self, layers, num_samples):
        out, self._slices, seen = [], [], {}
        for c in self.candidates:
            key = c.collector_key()
            if key is not None and key in seen:  # e.g. both output_error forms read the same input rows
                self._slices.append(seen[key])
                continue
            own = c.collectors(layers, num_samples)
            self._slices.append(slice(len(out), len(out) + len(own)))
            out += own
            if key is not None:
                seen[key] = self._slices[-1]
        return out

    def _proposals(self, data: ScoringInput) -> tuple[list[tuple[str, dict[str, tuple]]], dict]:
        """(label, {layer: (bits, activation bits or None)}) of every candidate, and what scoring them cost.
        Where activation bits are chosen, each candidate also proposes its plan at every one activation
        bit-width (the weight-only plans), and uniform precision its highest bits at each: the candidates
        hold those of every weight-only plan, so the winner diverges no more than any of them."""
        joint = bool(data.act_bits)
        proposals, cost = [], {"forward_passes": 0, "backward_passes": 0, "labels": False, "gradients": False}

        def solved(scores, **fixed):
            plan = data.solve(scores, with_act=True, **fixed)
            return {n: (b, a if joint else None) for n, (b, a) in plan.items()}

        for c, part in zip(self.candidates, self._slices):
            scores = c.scores(dataclasses.replace(data, collectors=data.collectors[part]))
            proposals.append((label(c), solved(scores)))
            for a in data.act_bits:
                proposals.append((f"{label(c)} A{a}", solved(scores, fixed_act=a)))
            for k, v in (scores.cost or {}).items():  # passes add up; needs (labels, gradients) are any one's
                if isinstance(v, bool):
                    cost[k] = cost.get(k, False) or v
                elif isinstance(v, int):
                    cost[k] = cost.get(k, 0) + v
        if self.uniform:
            proposals += self._uniform(data, solved)
        return proposals, cost

    def _uniform(self, data: ScoringInput, solved) -> list[tuple[str, dict[str, tuple]]]:
        """The highest uniform bits that fit, at each activation bit-width where those are chosen (so the
        candidates include every weight-only plan's uniform candidate)."""
        names = [x.name for x in data.layers]
        free = [n for n in names if len(data.allowed[n]) > 1]
        out = []
        for a in sorted(data.act_bits, reverse=True) or [None]:
            for b in sorted(data.bits, reverse=True):  # the highest b that every free layer can take
                scores = Scores(values={n: {x: float(x == b) for x in data.allowed[n]} for n in names},
                                act_values=None if a is None else {n: {x: float(x == a) for x in data.act_bits}
                                                                   for n in names})
                plan = solved(scores)
                if all(plan[n][0] == b for n in free) and (a is None or all(plan[n][1] == a for n in names)):
                    out.append((f"uniform {b}" + (f" A{a}" if a is not None else ""), plan))
                    break
        return out

    def scores(self, data: ScoringInput) -> Scores:
        if data.solve is None:
            raise OmpqValueError("the verified allocator compares solved plans: it runs inside plan()")
        compare = OutputDivergence(data.model, data.samples, data.layers, divergence=self.divergence,
                                   output_fn=self.output_fn, strict=False)
        self._kind = compare.kind
        proposals, cost = self._proposals(data)
        weights = QuantizedWeights.shared(data, self.weight_scale)
        measured: dict[tuple, float] = {}
        self.results = []
        with progress_bar(len(proposals), "verified: candidate plans", "forward", data.progress) as bar:
            for name, plan in proposals:
                key = tuple(plan[x.name] for x in data.layers)
                if key not in measured:  # identical plans are measured once
                    measured[key] = compare({k: weights.quantized(k, plan[x.name][0]) for k, x in enumerate(data.layers)},
                                            {k: plan[x.name][1] for k, x in enumerate(data.layers)
                                             if plan[x.name][1] is not None})
                self.results.append((name, measured[key]))
                bar.update(1)
        best = min(range(len(proposals)), key=lambda k: self.results[k][1])  # the first on a tie
        self.chosen, chosen = proposals[best]
        cost["forward_passes"] += compare.forward_passes
        values = {x.name: {b: float(b == chosen[x.name][0]) for b in data.allowed[x.name]} for x in data.layers}
        act_values = None
        if data.act_bits:
            act_values = {x.name: {a: float(a == chosen[x.name][1]) for a in data.act_bits} for x in data.layers}
        return Scores(values=values, act_values=act_values, cost=cost)

    def settings(self) -> dict:
        return {"candidates": [label(c) for c in self.candidates], "uniform": self.uniform,
                "divergence": self._kind, "output_fn": self.output_fn is not None, "weight_scale": self.weight_scale,
                "chosen": self.chosen, "divergences": {name: d for name, d in self.results}}
