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
