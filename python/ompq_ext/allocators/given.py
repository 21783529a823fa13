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
    every planned layer. ``act_values``: {layer name: {activation bits: value}}, the activation term
    where plan(act_bits=(...)) chooses them (with weights, weight * (bits + act bits) needs none).
    ``name``: the method recorded in the plan; ``settings``: anything worth recording with it (JSON values)."""

    def __init__(self, weights: Mapping | None = None, values: Mapping | None = None, *, act_values: Mapping | None = None,
                 name: str = "given", settings: Mapping | None = None):
        if (weights is None) == (values is None):
            raise OmpqValueError("GivenScores takes weights={layer: weight} or values={layer: {bits: value}}, "
                                 "exactly one of them")
        for argument, table in (("weights", weights), ("values", values), ("settings", settings)):
            if table is not None and not isinstance(table, Mapping):
                raise OmpqTypeError(f"GivenScores: {argument} must be a dict" +
                                    (" keyed by layer name" if argument != "settings" else ""))
        self.weights = None if weights is None else {n: _number(w, f"the weight of layer {n!r}", nonnegative=True)
                                                     for n, w in weights.items()}
        self.values = None if values is None else {n: _row(n, row) for n, row in values.items()}
        if act_values is not None and not isinstance(act_values, Mapping):
            raise OmpqTypeError("GivenScores: act_values must be a dict keyed by layer name")
        self.act_values = None if act_values is None else {n: _row(n, row) for n, row in act_values.items()}
        self.scores_act_bits = self.weights is not None or self.act_values is not None
        self.name = name
        self._settings = dict(settings or {})

    def scores(self, data: ScoringInput) -> Scores:
        table = self.weights if self.weights is not None else self.values
        missing = [x.name for x in data.layers if x.name not in table]
        if missing:
            raise OmpqValueError(f"GivenScores has no score for the planned layer(s) {', '.join(map(repr, missing))}")
        names = [x.name for x in data.layers]
        if self.values is not None:
            acts = None if self.act_values is None or not data.act_bits else {n: self.act_values[n] for n in names
                                                                             if n in self.act_values}
            return Scores(values={n: self.values[n] for n in names}, act_values=acts)
        return Scores(weights={n: self.weights[n] for n in names})

    def settings(self) -> dict:
        return self._settings


def _number(value, what: str, *, nonnegative: bool = False) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise OmpqValueError(f"GivenScores: {what} must be a number, got {value!r}") from None
    if not math.isfinite(x) or nonnegative and x < 0:
        raise OmpqValueError(f"GivenScores: {what} must be finite{' and >= 0' if nonnegative else ''}, got {value!r}")
    return x


def _row(name, row) -> dict[int, float]:
    if not isinstance(row, Mapping):
        raise OmpqTypeError(f"GivenScores: the values of layer {name!r} must be a dict {{bits: value}}")
    out = {}
    for b, v in row.items():
        if isinstance(b, bool) or not isinstance(b, int):
            raise OmpqValueError(f"GivenScores: layer {name!r} has a value for bits {b!r}; bits are integers")
        out[b] = _number(v, f"the value of layer {name!r} at {b} bits")
    return out
