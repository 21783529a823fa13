"""The weight perturbation a bit-width causes: Q_b(W) - W with the recipe's own weight quantizer
(symmetric, per output channel along the weight's channel axis, MSE-searched scales, as
``quantize()`` does), its scales searched once per planned weight and bit-width and shared by the
allocators that measure it."""

from __future__ import annotations

import torch

from ..errors import check_choice
from ..layers import Layer
from ..quant.ops import fake_quantize
from ..quant.scales import SCALE_METHODS, weight_scale


def check_weight_scale(method: str) -> None:
    check_choice("weight_scale", method, SCALE_METHODS)


class QuantizedWeights:
    """``quantized(i, b)`` = Q_b(W_i) and ``delta(i, b)`` = Q_b(W_i) - W_i for ``layers[i]``. Only the
    per-channel scales are cached (the search is the costly part; a model's quantized copies at every
    bit-width would take several times its size): each call quantizes afresh. The float weights are read
    as float32 (a copy only where the model's are in another dtype); planning never writes them."""

    def __init__(self, layers: list[Layer], channel_axes: list[int], method: str = "mse"):
        self.layers, self.axes, self.method = layers, channel_axes, method
        self.float = [layer.weight.detach().float() for layer in layers]
        self._scales: dict[tuple[int, int], torch.Tensor] = {}

    @classmethod
    def shared(cls, data, method: str) -> "QuantizedWeights":
        """The one instance of a plan() call's scoring for ``method`` (candidates share the scale search)."""
        key = ("quantized weights", method)
        if key not in data.shared:
            data.shared[key] = cls(data.layers, data.channel_axes, method)
        return data.shared[key]

    def quantized(self, i: int, bits: int) -> torch.Tensor:
        key = (i, bits)
        if key not in self._scales:
            self._scales[key] = weight_scale(self.float[i], bits, self.method, self.axes[i])
        return fake_quantize(self.float[i], self._scales[key], bits=bits, axis=self.axes[i])

    def delta(self, i: int, bits: int) -> torch.Tensor:
        return self.quantized(i, bits) - self.float[i]
