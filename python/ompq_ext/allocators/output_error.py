"""Output error: a bit-width costs the error it causes in its layer's output, measured on the
planning samples in the one feature pass.

For each use of a planned weight the feature pass hands over the op's input as the rows the weight
multiplies (token vectors, or convolution patches); up to ``max_rows`` of them are kept per input,
sampled uniformly (all where there are fewer), which bounds the memory at ``max_rows`` x (the
weight's input width) float32 values per distinct input (a ResNet-18 at 512 rows: about 70 MB). After
the pass, bit-width b of weight i costs the layer-output error per sample

    e_i(b) = (1/N) sum over its uses and rows x of ||(Q_b(W_i) - W_i) x||^2,

which is tr(dW_b Sigma dW_b^T) for the input second moment Sigma (what GPTQ calls the layer
Hessian), estimated from the sample of rows. ``normalize="output"`` divides it by the layer's own
output energy (1/N) sum ||W_i x||^2 (a noise-to-signal ratio); ``"none"`` keeps it as it is. The
solver minimises the sum over the planned weights.

Where the activation bits are chosen too (``plan(act_bits=(4, 8))``), activation bit-width a of
weight i's input costs in the same units the error quantizing its input rows (per tensor, the MSE
range of ``quantize()``'s calibration, fitted to the rows) causes in its float output,

    e_i(a) = (1/N) sum over its uses and rows x of ||W_i (Q_a(x) - x)||^2,

and the solver minimises sum_i e_i(b_i) + e_i(a_i): the two errors are taken as additive (their cross
term averages out when the rounding errors of weights and inputs are uncorrelated). A weight whose
uses have no rows gets no activation cost (every a ties; the solver then takes the largest).

A weight whose uses have no rows (a module of the user's own ``layer_types``, seen through its output)
is costed by its relative weight error times its output energy.
"""

from __future__ import annotations

import weakref

import torch

from ..errors import OmpqValueError, check_choice
from ..quant.ops import fake_quantize
from ..quant.scales import activation_scale
from ..weight_ops import WeightForm
from .base import Allocator, Scores, ScoringInput
from .perturbation import QuantizedWeights, check_weight_scale

NORMALIZE = ("none", "output")


class InputRows:
    """Feature-pass collector: a uniform sample of each planned weight's input rows per use, and the
    energy of its features (for the weights without rows)."""

    def __init__(self, num_layers: int, num_samples: int, max_rows: int, seed: int = 0):
        self.n, self.max_rows = num_samples, max_rows
        self.uses: list[list[tuple[WeightForm, torch.Tensor, float]]] = [[] for _ in range(num_layers)]
        self.energy = [0.0] * num_layers
        self._generator = torch.Generator().manual_seed(seed)
        self._rows = {}  # (id(input), geometry) -> (weakref to the input, rows, scale): q, k, v share one sample
        self._tables = {}  # (layer, scale method) -> (signal, {bits: error}): candidates of one plan share them

    def add(self, i: int, features: torch.Tensor, source: str = ""):
        for f in features:  # sample by sample: a float64 copy of a whole early layer's output is hundreds of MB
            self.energy[i] += float(f.square().sum(dtype=torch.float64)) / self.n

    def add_use(self, i: int, op):
        geometry = None if op.conv is None else repr(sorted(op.conv.items()))
        key = (id(op.x), geometry)
        kept = self._rows.get(key)
        if kept is None or kept[0]() is not op.x:
            rows, scale = op.rows(self.max_rows, self._generator)
            kept = (weakref.ref(op.x), rows.float().cpu(), scale)
            self._rows[key] = kept
        self.uses[i].append((op.form, kept[1], kept[2]))  # not the input itself: it is freed after its op

    def finish(self):
        self._rows.clear()

    def table(self, i: int, k: int, weights: QuantizedWeights, bits) -> tuple[float, dict[int, float]]:
        """(signal, {b: error}) of planned weight ``k`` (layer ``i`` of the pass): the output energy and the
        output error at each bit-width, from the rows; without rows, the relative weight error times
        the output energy."""
        key = (i, weights.method)
        signal, errors = self._tables.get(key, (None, {}))
        w = weights.float[k]
        if signal is None:
            signal = self.error(i, w) if self.uses[i] else self.energy[i]
        for b in bits:
            if b not in errors:
                if self.uses[i]:
                    errors[b] = self.error(i, weights.delta(k, b))
                else:
                    norm = float(w.double().square().sum()) or 1.0
                    errors[b] = signal * float(weights.delta(k, b).double().square().sum()) / norm
        self._tables[key] = (signal, errors)
        return signal, {b: errors[b] for b in bits}

    def act_table(self, i: int, k: int, weights: QuantizedWeights, act_bits) -> dict[int, float]:
        """{a: error} of planned weight ``k``'s input (layer ``i`` of the pass) quantized at ``a`` bits."""
        key = ("act", i)
        errors = self._tables.setdefault(key, {})
        missing = [a for a in act_bits if a not in errors]
        if missing:
            w = weights.float[k].cpu()
            totals = {a: [] for a in missing}
            for form, rows, scale in self.uses[i]:
                matrix = form.matrix(w)  # once per use, for every bit-width
                for a in missing:
                    out = torch.einsum("kgd,god->kgo", _quantized_rows(rows, a) - rows, matrix)
                    totals[a].append(scale * float(out.double().square().sum()))
            errors.update({a: sum(terms) / self.n for a, terms in totals.items()})
        return {a: errors[a] for a in act_bits}

    def error(self, i: int, delta: torch.Tensor) -> float:
        """(1/N) sum over weight i's uses of ||delta x||^2 over every row (estimated from the sample)."""
        total = 0.0
        for form, rows, scale in self.uses[i]:
            out = torch.einsum("kgd,god->kgo", rows, form.matrix(delta.cpu()))
            total += scale * float(out.double().square().sum())
        return total / self.n


def _quantized_rows(rows: torch.Tensor, bits: int) -> torch.Tensor:
    """The rows quantized per tensor at ``bits``, on the MSE range fitted to them (as calibration does)."""
    scale, signed = activation_scale(rows.reshape(-1), bits, "mse")
    return fake_quantize(rows.contiguous(), torch.tensor([scale]), bits=bits, signed=signed)


class OutputError(Allocator):
    """Each bit-width costs the error it causes in its layer's output (see the module docstring).

    normalize: "none" (the error itself) or "output" (relative to the layer's output energy).
    max_rows: input rows kept per weight use (exact where an op has no more). weight_scale: the
    recipe's weight scales ("mse" as quantize()'s default, or "minmax"). seed: the row sample's.
    """

    name = "output_error"
    scores_act_bits = True
    min_samples = 1

    def __init__(self, *, normalize: str = "none", max_rows: int = 512, weight_scale: str = "mse", seed: int = 0):
        check_choice("normalize", normalize, NORMALIZE)
        check_weight_scale(weight_scale)
        if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
            raise OmpqValueError(f"max_rows must be a positive integer, got {max_rows!r}")
        self.normalize, self.max_rows, self.weight_scale, self.seed = normalize, max_rows, weight_scale, seed

    def collectors(self, layers, num_samples):
        return [InputRows(len(layers), num_samples, self.max_rows, self.seed)]

    def collector_key(self):
        return ("input rows", self.max_rows, self.seed)

    def scores(self, data: ScoringInput) -> Scores:
        rows = next(c for c in data.collectors if isinstance(c, InputRows))
        weights = QuantizedWeights.shared(data, self.weight_scale)
        values, act_values = {}, {}
        for k, (i, layer) in enumerate(zip(data.indices, data.layers)):
            signal, errors = rows.table(i, k, weights, data.allowed[layer.name])
            scale = 1.0 / signal if self.normalize == "output" and signal > 0 else 1.0
            values[layer.name] = {b: -e * scale for b, e in errors.items()}
            if data.act_bits:
                act_errors = rows.act_table(i, k, weights, data.act_bits) if layer.kind != "Embedding" else {}
                act_values[layer.name] = {a: -act_errors.get(a, 0.0) * scale for a in data.act_bits}
        return Scores(values=values, act_values=act_values or None)

    def settings(self) -> dict:
        return {"normalize": self.normalize, "max_rows": self.max_rows, "weight_scale": self.weight_scale,
                "seed": self.seed}
