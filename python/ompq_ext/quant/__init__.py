"""The quantized model: fake-quant ops over the C++ core, quantized layer wrappers,
calibration, reconstruction and QAT helpers."""

from .modules import ActQuantizer, QuantLayer, WeightQuantizer, weight_scale
from .ops import fake_quantize, quant_range

__all__ = ["fake_quantize", "quant_range", "QuantLayer", "WeightQuantizer", "ActQuantizer", "weight_scale"]
