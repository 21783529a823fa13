"""Helpers shared by the quantization tests."""

import copy

import torch
from torch import nn

from ompq_ext.quant.modules import QuantLayer


def make_qmodel(model: nn.Module, bits: int, x: torch.Tensor, act_bits: int | None = 8) -> nn.Module:
    """A copy of ``model`` with every Conv/Linear wrapped in a calibrated QuantLayer."""
    q = copy.deepcopy(model).eval()
    for name, m in list(q.named_modules()):
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            parent_name, _, child = name.rpartition(".")
            parent = q.get_submodule(parent_name) if parent_name else q
            setattr(parent, child, QuantLayer(m, bits, act_bits, name=name))
    quantizers = [m.input_quantizer for m in q.modules() if isinstance(m, QuantLayer) and m.input_quantizer]
    for a in quantizers:
        a.observing = True
    with torch.no_grad():
        q(x)
    for a in quantizers:
        a.observing = False
        a.finalize()
    return q


def scale_bits_of(model: nn.Module, plan, group_size=None, act_scales: bool = True, bits_per_scale: int = 16) -> int:
    """What a plan's scales take, counted from the model: ``bits_per_scale`` for each output channel (or group
    of ``group_size`` of its weights) of every planned weight, a shared weight once, and one per planned
    layer's input (not an embedding's) when ``act_scales``."""
    seen, scales = set(), 0
    for x in plan.layers:
        try:
            weight = model.get_submodule(x.name).weight
        except AttributeError:
            weight = model.get_parameter(x.name)
        if id(weight) not in seen:
            seen.add(id(weight))
            channels = weight.shape[x.channel_axis]
            per_channel = weight.numel() // channels
            scales += channels * (1 if group_size is None else (per_channel + group_size - 1) // group_size)
        scales += act_scales and x.kind != "Embedding"
    return bits_per_scale * scales
