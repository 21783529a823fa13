"""ONNX with QuantizeLinear / DequantizeLinear: ``onnx(qmodel, example_inputs, path)``.

The quantized model is traced (torch's TorchScript exporter) with its quantizers in export form:
- a quantized weight of at most 8 bits becomes its integers as an int8 initializer, dequantized per output
  channel (``DequantizeLinear`` along the channel axis, zero point 0): the integers keep their planned range,
  so the graph holds the plan's bits in an 8-bit container, and dequantizing gives the fake-quant weight
  exactly (integer x scale in float32); a weight above 8 bits is written in float (its dequantized values);
- a calibrated input quantizer becomes ``QuantizeLinear`` -> ``DequantizeLinear`` per tensor (uint8 for
  the unsigned grid, int8 for the signed one), preceded by a ``Clip`` to the grid's range where it is
  narrower than the container's (below 8 bits).
Group-wise weights and per-token (dynamic) input quantizers have no per-axis QDQ form before opset 21 and
are refused with a clear error.
"""

from __future__ import annotations

import importlib.util
import inspect
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import OmpqError, OmpqValueError
from ..quant.modules import ActQuantizer, FunctionalWeightQuantizer, QuantLayer, WeightQuantizer, quantized_weights
from ..quant.op_inputs import mark
from ..quant.ops import quant_range
from .packed import integers, recipe_of

DEFAULT_OPSET = 17
# torch >= 2.5 exports through dynamo by default; the TorchScript exporter is what the symbolic functions use.
_TORCHSCRIPT = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}


class _DequantizeWeight(torch.autograd.Function):
    """int8 integers x per-channel scales along ``axis``: DequantizeLinear in the graph."""

    @staticmethod
    def forward(ctx, q, scale, axis: int):
        shape = [1] * q.dim()
        shape[axis] = -1
        return q.float() * scale.reshape(shape)

    @staticmethod
    def symbolic(g, q, scale, axis: int):
        zero = g.op("Constant", value_t=torch.zeros(_length(scale), dtype=torch.int8))
        return g.op("DequantizeLinear", q, scale, zero, axis_i=axis)


class _QuantizeDequantize(torch.autograd.Function):
    """Per-tensor QDQ of an input at scale ``s`` on the grid [lo, hi] of a uint8 (unsigned) or int8 (signed)
    container (the scale a Python float: a constant of the graph)."""

    @staticmethod
    def forward(ctx, x, s: float, lo: int, hi: int, signed: bool):
        scale = torch.tensor(s, dtype=torch.float32)
        return torch.clamp(torch.round(x / scale), lo, hi) * scale

    @staticmethod
    def symbolic(g, x, s: float, lo: int, hi: int, signed: bool):
        def constant(value, dtype):
            return g.op("Constant", value_t=torch.tensor(value, dtype=dtype))

        if (lo, hi) != ((-128, 127) if signed else (0, 255)):  # a grid narrower than the container: clip first
            scale32 = torch.tensor(s, dtype=torch.float32)
            x = g.op("Clip", x, constant((lo * scale32).item(), torch.float32), constant((hi * scale32).item(), torch.float32))
        scale, zero = constant(s, torch.float32), constant(0, torch.int8 if signed else torch.uint8)
        return g.op("DequantizeLinear", g.op("QuantizeLinear", x, scale, zero), scale, zero)


def _length(t) -> int:
    sizes = t.type().sizes()
    return int(sizes[0]) if sizes else 1


def _weight_forward(quantizer: WeightQuantizer, weight: torch.Tensor):
    """The export form of a weight quantizer (DequantizeLinear of constant integers), or its float values."""
    if quantizer.group_size is not None:
        raise OmpqValueError(f"ONNX export: weight {getattr(quantizer, 'name', '') or '?'!r} is quantized per group "
                             f"of {quantizer.group_size}; DequantizeLinear has no group form before opset 21. "
                             f"Quantize per channel (plan(group_size=None)) to export it")
    if quantizer.bits > 8:
        values = WeightQuantizer.forward(quantizer, weight).detach().clone()
        return lambda w: values
    q, scale = integers(weight, quantizer)
    q8, scale = q.to(torch.int8), scale.detach().float().reshape(-1).clone()
    axis = quantizer.axis
    if isinstance(quantizer, FunctionalWeightQuantizer) and quantizer.input_quantizer is not None:
        carried = quantizer.input_quantizer
        return lambda w: mark(_DequantizeWeight.apply(q8, scale, axis), carried)
    return lambda w: _DequantizeWeight.apply(q8, scale, axis)


def _act_forward(quantizer: ActQuantizer):
    if not quantizer.calibrated or quantizer.observing:
        return lambda x: x
    if quantizer.method == "dynamic":
        raise OmpqValueError("ONNX export: an input is quantized per token at run time (act_calib='dynamic'), "
                             "which has no static QDQ form; quantize with a static act_calib ('mse', 'minmax' "
                             "or 'percentile') to export")
    lo, hi = quant_range(quantizer.bits, quantizer.signed)
    if quantizer.bits > 8:
        raise OmpqValueError(f"ONNX export: an input quantized at {quantizer.bits} bits has no 8-bit container")
    s, signed = float(quantizer.scale.detach().float().reshape(-1)[0]), quantizer.signed
    return lambda x: _QuantizeDequantize.apply(x.float(), s, lo, hi, signed).to(x.dtype)


def _layer_forward(ql: QuantLayer):
    """A QuantLayer's call without torch.func.functional_call (which tracing refuses): the layer runs with its
    quantized weight in place of its parameter."""
    layer = ql.layer

    def forward(x, *args, **kwargs):
        if ql.input_quantizer is not None:
            x = ql.input_quantizer(x)
        # An instance attribute shadows the parameter for the call (the parameters, and their order, stay).
        object.__setattr__(layer, "weight", ql.quantized_weight())
        try:
            return layer(x, *args, **kwargs)
        finally:
            layer.__dict__.pop("weight", None)
    return forward


@contextmanager
def _export_form(qmodel: nn.Module):
    """Every quantizer of ``qmodel`` in its export form for the duration (instance ``forward`` attributes)."""
    forms = {}  # id -> (module, its export forward): all built before any is set (building may raise)
    for m in qmodel.modules():
        if isinstance(m, QuantLayer) and parametrize.is_parametrized(m.layer, "weight"):
            raise OmpqValueError(f"ONNX export: layer {m.name!r} computes its weight through a parametrization "
                                 f"(weight_norm, ...); remove it first (torch.nn.utils.parametrize.remove_"
                                 f"parametrizations(layer, 'weight')) and quantize again")
    for w in quantized_weights(qmodel):
        forms.setdefault(id(w.weight_quantizer), (w.weight_quantizer, _weight_forward(w.weight_quantizer, w.weight)))
    for m in qmodel.modules():
        if isinstance(m, ActQuantizer):
            forms[id(m)] = (m, _act_forward(m))
        elif isinstance(m, QuantLayer):
            forms[id(m)] = (m, _layer_forward(m))
    taken = [m for m, _ in forms.values() if "forward" not in m.__dict__]
    try:
        for m in taken:
            m.forward = forms[id(m)][1]
        yield
    finally:
        for m in taken:
            m.__dict__.pop("forward", None)


def onnx(qmodel: nn.Module, example_inputs, path, *, opset: int = DEFAULT_OPSET, input_names=None,
         output_names=None, dynamic_axes=None) -> Path:
    """Write ``qmodel`` (from ``ompq_ext.quantize``) as ONNX with QuantizeLinear/DequantizeLinear to ``path``.

    example_inputs: a tensor or a tuple of the model's positional inputs (traced once). opset >= 13 (per-axis
    DequantizeLinear). dynamic_axes, input_names, output_names: as ``torch.onnx.export`` takes them. The graph's
    outputs match the fake-quant model's up to the rounding of the two runtimes (docs/EXPORTS.md).
    """
    recipe_of(qmodel)
    if importlib.util.find_spec("onnx") is None:
        raise OmpqError("ONNX export needs the onnx package, which is not installed: pip install 'ompq_ext[export]' "
                        "(or pip install onnx)")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 13:
        raise OmpqValueError(f"opset must be an integer >= 13 (per-channel DequantizeLinear), got {opset!r}")
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    if not all(isinstance(a, torch.Tensor) for a in args):
        raise OmpqValueError("example_inputs must be a tensor or a tuple of tensors (the model's positional inputs)")
    path = Path(path)
    if not path.parent.exists():
        raise OmpqValueError(f"cannot write {str(path)!r}: its folder does not exist")
    flags = [(m, m.training) for m in qmodel.modules()]
    qmodel.eval()
    try:
        with _export_form(qmodel), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the constants are meant to be constants
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's own notice
            torch.onnx.export(qmodel, args, str(path), **_TORCHSCRIPT, opset_version=opset,
                              input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes,
                              do_constant_folding=True)
    except OmpqError:
        raise
    except Exception as e:
        raise OmpqError(f"ONNX export failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    finally:
        for m, training in flags:
            m.training = training
    return path
