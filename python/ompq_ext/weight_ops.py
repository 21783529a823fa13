"""The ops that consume a weight, and where in their arguments the weight and the op's input sit.

Shared by the feature pass (which sees each planned weight where an op consumes it) and by the
quantized model (which quantizes the input of an op that consumes a parametrized weight).
"""

from __future__ import annotations

import inspect
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F


class WeightOperand(NamedTuple):
    index: int  # the weight's position in the op's arguments
    keyword: str | None  # ... or its keyword
    axis: int | None  # the weight's output-channel axis (None: a lookup, no MACs; embeddings only)
    source: int  # the op's input: its position
    source_keyword: str | None  # ... or its keyword


WEIGHT_OPERAND = {
    F.linear: WeightOperand(1, "weight", 0, 0, "input"),
    torch.conv1d: WeightOperand(1, "weight", 0, 0, "input"),
    torch.conv2d: WeightOperand(1, "weight", 0, 0, "input"),
    torch.conv3d: WeightOperand(1, "weight", 0, 0, "input"),
    torch.addmm: WeightOperand(2, "mat2", -1, 1, "mat1"),
    torch.mm: WeightOperand(1, "mat2", -1, 0, "input"),
    torch.matmul: WeightOperand(1, "other", -1, 0, "input"),
    torch.Tensor.matmul: WeightOperand(1, "other", -1, 0, None),
    torch.Tensor.__matmul__: WeightOperand(1, None, -1, 0, None),
    F.embedding: WeightOperand(1, "weight", None, 0, "input"),
}

# F.multi_head_attention_forward's signature: its weights and inputs are found by name.
ATTENTION = inspect.signature(F.multi_head_attention_forward)


def weight_of(func, args, kwargs):
    """(the weight operand, its WeightOperand) of a weight-consuming op, else (None, None)."""
    where = WEIGHT_OPERAND.get(func)
    if where is None:
        return None, None
    weight = args[where.index] if len(args) > where.index else kwargs.get(where.keyword)
    return (weight, where) if isinstance(weight, torch.Tensor) else (None, None)


def input_of(where: WeightOperand, args, kwargs):
    """The op's input operand, or None."""
    if len(args) > where.source:
        return args[where.source]
    return kwargs.get(where.source_keyword) if where.source_keyword else None


def with_input(where: WeightOperand, args, kwargs, value):
    """(args, kwargs) with the op's input replaced by ``value``."""
    if len(args) > where.source:
        return (*args[:where.source], value, *args[where.source + 1:]), kwargs
    return args, {**kwargs, where.source_keyword: value}


def attention_arguments(args, kwargs) -> dict:
    """F.multi_head_attention_forward's arguments by name, defaults filled in."""
    bound = ATTENTION.bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


# ---------------------------------------------------------------- the rows an op multiplies its weight with


def _tuple(value, n: int) -> tuple[int, ...]:
    """A convolution's per-dimension argument as n values (torch repeats a single one)."""
    value = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    return value * n if len(value) == 1 else value


class WeightForm(NamedTuple):
    """How an op applies its weight to the input rows: ``matrix(w)`` is the weight as (groups, out /
    groups, in / groups), so that an output row is ``rows @ matrix.T`` per group."""

    transposed: bool = False  # a (in, out) weight as GPT-2's Conv1D
    part: slice | None = None  # only these output rows (a packed projection's q, k or v)
    groups: int | None = None  # a convolution's groups (None: a linear op)

    def matrix(self, w: torch.Tensor) -> torch.Tensor:
        if self.groups is None:
            w = w.t() if self.transposed else w
            return (w if self.part is None else w[self.part]).unsqueeze(0)
        return w.reshape(self.groups, w.shape[0] // self.groups, -1)


class OpInput:
    """The input of one use of a weight, seen as the rows the weight multiplies: a linear op's
    input vectors (tokens), or a convolution's input patches. ``rows(k)`` samples up to k of them
    (all where there are at most k) as a (k', groups, in / groups) tensor and the factor that
    scales sums over the sample to sums over every row; ``form`` applies a weight to them."""

    def __init__(self, x: torch.Tensor, *, transposed: bool = False, conv: dict | None = None,
                 part: slice | None = None):
        self.x, self.conv = x, conv
        self.form = WeightForm(transposed, part, None if conv is None else conv["groups"])

    def rows(self, k: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, float]:
        if self.conv is None:
            flat = self.x.reshape(-1, self.x.shape[-1])
            total = flat.shape[0]
            # a copy either way: the model may change its input in place after the op (kept rows would follow)
            flat = flat[torch.randperm(total, generator=generator)[:k].to(flat.device)] if total > k else flat.clone()
            return flat.unsqueeze(1), total / flat.shape[0]
        return self._patches(k, generator)

    def _patches(self, k, generator):
        c = self.conv
        x, d = self.x, self.x.dim() - 2
        kernel, stride, dilation = c["kernel"], _tuple(c["stride"], d), _tuple(c["dilation"], d)
        padding = c["padding"]
        if padding == "valid":
            padding = (0,) * d
        if padding == "same":
            pads = []
            for i in reversed(range(d)):  # F.pad lists the last dimension first
                total = dilation[i] * (kernel[i] - 1)
                pads += [total // 2, total - total // 2]
        else:
            pads = [p for i in reversed(range(d)) for p in (_tuple(padding, d)[i],) * 2]
        if any(pads):
            x = torch.nn.functional.pad(x, pads)
        view = x
        for i in range(d):  # a view of every window: (N, C, O_1..O_d, span_1..span_d)
            view = view.unfold(2 + i, dilation[i] * (kernel[i] - 1) + 1, stride[i])
        view = view[(Ellipsis, *[slice(None, None, dl) for dl in dilation])]
        outputs = view.shape[2:2 + d]
        total = view.shape[0] * math.prod(outputs)
        index = torch.arange(total) if total <= k else torch.randperm(total, generator=generator)[:k]
        n, *position = torch.unravel_index(index, (view.shape[0], *outputs))
        device = view.device
        patches = view[(n.to(device), slice(None), *[p.to(device) for p in position])]  # (k, C, kernel...)
        return patches.reshape(index.numel(), c["groups"], -1), total / index.numel()


def op_input(func, args, kwargs, where: WeightOperand) -> OpInput | None:
    """The OpInput of a weight-consuming op (None for a lookup, or an input that is not a tensor)."""
    x = input_of(where, args, kwargs)
    if where.axis is None or not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return None
    if func in (torch.conv1d, torch.conv2d, torch.conv3d):
        weight = args[where.index] if len(args) > where.index else kwargs[where.keyword]
        names, defaults = ("stride", "padding", "dilation", "groups"), (1, 0, 1, 1)
        conv = {n: (args[3 + i] if len(args) > 3 + i else kwargs.get(n, defaults[i])) for i, n in enumerate(names)}
        conv["kernel"] = tuple(weight.shape[2:])
        return OpInput(x if x.dim() == weight.dim() else x.unsqueeze(0), conv=conv)  # unbatched: one sample
    return OpInput(x, transposed=where.axis != 0)


def module_input(module: torch.nn.Module, x) -> OpInput | None:
    """The OpInput of a Linear or Conv module's own call on ``x`` (None for other modules)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return None
    if isinstance(module, torch.nn.Linear):
        return OpInput(x)
    if isinstance(module, torch.nn.modules.conv._ConvNd) and not module.transposed:
        padding = module.padding
        if module.padding_mode != "zeros":  # the module pads the input itself, then convolves unpadded
            x = torch.nn.functional.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode)
            padding = 0
        conv = {"stride": module.stride, "padding": padding, "dilation": module.dilation, "groups": module.groups,
                "kernel": tuple(module.kernel_size)}
        return OpInput(x if x.dim() == module.weight.dim() else x.unsqueeze(0), conv=conv)
    return None
