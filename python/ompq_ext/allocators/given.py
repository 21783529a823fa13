"""Scores computed elsewhere -- a sensitivity table of your own, another tool's layer weights --
planned exactly under the same budgets, with the same record as any other method."""

from __future__ import annotations

import math
from collections.abc import Mapping

from ..errors import OmpqTypeError, OmpqValueError
from .base import Allocator, Scores, ScoringInput


class GivenScores(Allocator):
    """``weights``: {layer name: weight >= 0} (maximise sum weight * bits), or ``values``:
    {layer name: {bits: value}} (maximise sum value(bits); give a cost as its negative), covering
    every planned layer. ``name``: the method recorded in the plan; ``settings``: anything worth
    recording with it."""

    def __init__(self, weights: Mapping | None = None, values: Mapping | None = None, *, name: str = "given",
                 settings: dict | None = None):
        if (weights is None) == (values is None):
            raise OmpqValueError("GivenScores takes weights={layer: weight} or values={layer: {bits: value}}, "
                                 "exactly one of them")
        for argument, table in (("weights", weights), ("values", values)):
            if table is not None and not isinstance(table, Mapping):
                raise OmpqTypeError(f"GivenScores: {argument} must be a dict keyed by layer name")
        self.weights = None if weights is None else dict(weights)
        self.values = None if values is None else {n: dict(row) for n, row in values.items()}
        self.name = name
        self._settings = dict(settings or {})

    def scores(self, data: ScoringInput) -> Scores:
        table = self.weights if self.weights is not None else self.values
        missing = [x.name for x in data.layers if x.name not in table]
        if missing:
            raise OmpqValueError(f"GivenScores has no score for the planned layer(s) {', '.join(map(repr, missing))}")
        names = [x.name for x in data.layers]
        if self.values is not None:
            return Scores(values={n: self.values[n] for n in names})
        for n in names:
            w = self.weights[n]
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
                raise OmpqValueError(f"GivenScores: the weight of layer {n!r} must be finite and >= 0, got {w!r}")
        return Scores(weights={n: float(self.weights[n]) for n in names})

    def settings(self) -> dict:
        return self._settings
