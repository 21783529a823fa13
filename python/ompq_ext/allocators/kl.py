"""The KL table: each planned weight quantized alone at each bit-width, every other weight in FP32;
the divergence of the model's outputs on the planning samples from FP32 is that bit-width's cost,
and the exact solver minimises the sum (HAQ/AMP-style sensitivities, solved exactly instead of
greedily). One forward pass per weight and free bit-width: the most faithful and the most
expensive of the one-batch methods (``divergence.py`` says what is compared).
"""

from __future__ import annotations

from ..progress import progress_bar
from .base import Allocator, Scores, ScoringInput
from .divergence import OutputDivergence, check_divergence
from .perturbation import QuantizedWeights, check_weight_scale


class KLTable(Allocator):
    """Cost of bit-width b for weight i = divergence(outputs with only W_i at b bits, FP32 outputs).

    divergence: "auto" (the default), "kl", "cosine" or "mse" (allocators/divergence.py).
    output_fn: output -> the tensor compared (default: the logits or embedding the output holds).
    weight_scale: the recipe's weight scales ("mse" as quantize()'s default, or "minmax").
    """

    name = "kl"
    min_samples = 1

    def __init__(self, *, divergence: str = "auto", output_fn=None, weight_scale: str = "mse"):
        check_divergence(divergence, output_fn)
        check_weight_scale(weight_scale)
        self.divergence, self.output_fn, self.weight_scale = divergence, output_fn, weight_scale
        self._resolved = divergence

    def scores(self, data: ScoringInput) -> Scores:
        compare = OutputDivergence(data.model, data.samples, data.layers, divergence=self.divergence,
                                   output_fn=self.output_fn)
        self._resolved = compare.kind
        weights = QuantizedWeights.shared(data, self.weight_scale)
        values = {}
        free = sum(len(data.allowed[x.name]) for x in data.layers if len(data.allowed[x.name]) > 1)
        with progress_bar(free, "kl: one weight quantized at a time", "forward", data.progress) as bar:
            for k, layer in enumerate(data.layers):
                allowed = data.allowed[layer.name]
                if len(allowed) == 1:  # fixed bits: a constant, nothing to compare
                    values[layer.name] = {allowed[0]: 0.0}
                    continue
                values[layer.name] = {}
                for b in allowed:
                    values[layer.name][b] = -compare({k: weights.quantized(k, b)})
                    bar.update(1)
        return Scores(values=values, cost={"forward_passes": compare.forward_passes, "labels": False,
                                           "gradients": False})

    def settings(self) -> dict:
        return {"divergence": self._resolved, "output_fn": self.output_fn is not None,
                "weight_scale": self.weight_scale}
