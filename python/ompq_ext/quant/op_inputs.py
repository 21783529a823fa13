"""Quantizing the inputs of the ops that consume a weight used outside its module's call.

Such a weight (``F.linear(x, self.qkv.weight)`` as torchvision's Swin, ``nn.MultiheadAttention``'s
projections) is quantized by a parametrization (``FunctionalWeightQuantizer``), so there is no module
call whose input a wrapper could quantize. Instead the quantized weight carries its input quantizer,
and while a module that holds such a weight runs, a ``TorchFunctionMode`` quantizes the input of
every op that receives a carrying weight as its weight operand (``weight_ops.WEIGHT_OPERAND``), the
uses the feature pass saw; an op that gets a view of the weight (``w.t()``) is not followed (nor
seen by the feature pass).

``F.multi_head_attention_forward`` runs its projections where the mode cannot see them: its query,
key and value (the in-projection's inputs) are quantized before the call, and where the
out-projection's input is quantized the attention runs with an identity out-projection, whose output
(exactly the out-projection's input) is then quantized and projected. That costs one more
embed x embed product per token, in a simulation model only.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..weight_ops import attention_arguments, input_of, weight_of, with_input

MARK = "_ompq_input_quantizer"  # the attribute of a quantized weight that holds its input quantizer


def mark(weight: Tensor, input_quantizer: nn.Module) -> Tensor:
    setattr(weight, MARK, input_quantizer)
    return weight


def _quantizer(t):
    return getattr(t, MARK, None) if isinstance(t, Tensor) else None


class _QuantizingInputs(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.multi_head_attention_forward:
            return _attention(func, args, kwargs)
        weight, where = weight_of(func, args, kwargs)
        quantizer = _quantizer(weight)
        if quantizer is not None and where.axis is not None:
            x = input_of(where, args, kwargs)
            if isinstance(x, Tensor) and x.is_floating_point():
                args, kwargs = with_input(where, args, kwargs, quantizer(x))
        return func(*args, **kwargs)


def _attention(func, args, kwargs):
    a = attention_arguments(args, kwargs)
    separate = a["use_separate_proj_weight"]
    quantized = {}  # (input, quantizer) -> quantized input: a self-attention's query, key and value stay one tensor
    for name, weight in zip(("query", "key", "value"), ("q_proj_weight", "k_proj_weight", "v_proj_weight")):
        quantizer = _quantizer(a[weight] if separate else a["in_proj_weight"])
        x = a[name]
        if quantizer is not None and isinstance(x, Tensor) and x.is_floating_point():
            key = (id(x), id(quantizer))
            if key not in quantized:
                quantized[key] = quantizer(x)
            a[name] = quantized[key]
    w, b = a["out_proj_weight"], a["out_proj_bias"]
    quantizer = _quantizer(w)
    if quantizer is None:
        return func(**a)
    a["out_proj_weight"] = torch.eye(w.shape[1], dtype=w.dtype, device=w.device)
    a["out_proj_bias"] = None
    attended, attention_weights = func(**a)
    return F.linear(quantizer(attended), w, b), attention_weights


_active = threading.local()  # whether this thread runs under the mode already


@contextmanager
def quantizing_inputs():
    """The mode, entered once however deeply the wrapped calls nest; left also on a BaseException."""
    if getattr(_active, "on", False):
        yield
        return
    _active.on = True
    try:
        with _QuantizingInputs():
            yield
    finally:
        _active.on = False


class QuantizingForward:
    """A module's ``forward`` run under the mode: set as the module's own ``forward`` attribute (so the
    module keeps its class, copies and pickles as before). An active mode also keeps torch's fused
    transformer kernels off (they skip the quantized layers' own calls)."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __call__(self, *args, **kwargs):
        with quantizing_inputs():
            return type(self.module).forward(self.module, *args, **kwargs)


def quantize_op_inputs(model: nn.Module, owners: list[nn.Module], fused: list[nn.Module] = ()) -> None:
    """Run under the mode every call of a module that holds one of ``owners`` (or is one), so that the
    model, or any part of it called alone, quantizes the inputs of the ops the owners' weights reach;
    and every call of the ``fused`` modules (transformer layers holding quantized layers)."""
    wanted = {id(m) for m in owners}
    prefixes = set()
    for name, module in model.named_modules(remove_duplicate=False):
        if id(module) in wanted:
            parts = name.split(".") if name else []
            prefixes.update(".".join(parts[:k]) for k in range(len(parts) + 1))
    chosen = {id(m): m for name, m in model.named_modules(remove_duplicate=False) if name in prefixes}
    chosen.update((id(m), m) for m in fused)
    for module in chosen.values():
        if not isinstance(module.__dict__.get("forward"), QuantizingForward):
            module.forward = QuantizingForward(module)
