"""The weight perturbation a bit-width causes: Q_b(W) - W with the recipe's own weight quantizer
(symmetric, per output channel along the weight's channel axis, MSE-searched scales, as
``quantize()`` does), computed once per planned weight and bit-width and shared by the allocators
that measure it."""

from __future__ import annotations

import torch

from ..errors import check_choice
from ..layers import Layer
from ..quant.ops import fake_quantize
from ..quant.scales import SCALE_METHODS, weight_scale


def check_weight_scale(method: str) -> None:
    check_choice("weight_scale", method, SCALE_METHODS)


class QuantizedWeights:
    """``quantized(i, b)`` = Q_b(W_i) and ``delta(i, b)`` = Q_b(W_i) - W_i for ``layers[i]``, cached;
    the float weights are copied once, so nothing the model does later changes them."""

    def __init__(self, layers: list[Layer], channel_axes: list[int], method: str = "mse"):
        self.layers, self.axes, self.method = layers, channel_axes, method
        self.float = [layer.weight.detach().float().clone() for layer in layers]
        self._cache: dict[tuple[int, int], torch.Tensor] = {}

    def quantized(self, i: int, bits: int) -> torch.Tensor:
        key = (i, bits)
        if key not in self._cache:
            w, axis = self.float[i], self.axes[i]
            scale = weight_scale(w, bits, self.method, axis)
            self._cache[key] = fake_quantize(w, scale, bits=bits, axis=axis)
        return self._cache[key]

    def delta(self, i: int, bits: int) -> torch.Tensor:
        return self.quantized(i, bits) - self.float[i]
