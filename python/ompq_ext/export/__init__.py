"""Exports of quantized models: ONNX with QuantizeLinear/DequantizeLinear (``onnx``), packed integer weights
in safetensors (``save_packed`` / ``load_packed``). A plan's bit configuration for other toolkits is on the
plan itself (``Plan.to_hawq_bit_config``, ``Plan.to_dict``)."""

from .onnx_graph import onnx
from .packed import load_packed, save_packed

__all__ = ["onnx", "save_packed", "load_packed"]
