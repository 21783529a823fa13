"""The ops that consume a weight, and where in their arguments the weight and the op's input sit.

Shared by the feature pass (which sees each planned weight where an op consumes it) and by the
quantized model (which quantizes the input of an op that consumes a parametrized weight).
"""

from __future__ import annotations

import inspect
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
