"""Quantized module wrappers: a planned layer keeps its float weights and gets a
weight quantizer (per output channel, symmetric, at the planned bits) and an
input activation quantizer (per tensor, at the activation bits).

Works for any layer with a ``weight``: the wrapped layer is called through
``torch.func.functional_call`` with the fake-quantized weight swapped in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.utils import parametrize

from ..errors import OmpqValueError
from .op_inputs import mark
from .padding import valid_rows
from .ops import check_group_size, fake_quantize, quant_range
from .scales import ACT_METHODS, SCALE_METHODS, activation_scale, channel_shape, weight_scale  # noqa: F401 (re-exported)



class WeightQuantizer(nn.Module):
    """Symmetric per-output-channel fake quantization with a learnable (LSQ) scale; the output
    channels lie along ``axis`` (0 for Linear/Conv, 1 for an (in, out) weight as GPT-2's Conv1D).
    With ``group_size``, one scale per group of that many consecutive weights of a channel (its input
    columns; a convolution's in x kernel values), the last group of a channel possibly shorter."""

    def __init__(self, weight: Tensor, bits: int, method: str = "mse", axis: int = 0, group_size: int | None = None):
        super().__init__()
        if not 0 <= axis < weight.dim():
            raise OmpqValueError(f"channel axis {axis} is not an axis of a weight of shape {tuple(weight.shape)}")
        self.bits, self.axis, self.group_size = bits, axis, check_group_size(group_size)
        self.scale = nn.Parameter(weight_scale(weight, bits, method, axis, group_size))
        per_channel = weight.numel() // weight.shape[axis]
        per_scale = per_channel if group_size is None else min(group_size, per_channel)
        self.grad_factor = 1.0 / math.sqrt(per_scale * quant_range(bits, True)[1])

    def forward(self, weight: Tensor) -> Tensor:
        return fake_quantize(weight, self.scale, bits=self.bits, signed=True, axis=self.axis,
                             group_size=self.group_size, grad_factor=self.grad_factor)

    def column_scales(self, channels: int, columns: int) -> Tensor:
        """The scale of every weight of the flattened (channels x columns) weight: its channel's or its group's."""
        scale = self.scale.detach().reshape(channels, -1)
        if self.group_size is None:
            return scale.expand(channels, columns)
        return scale.repeat_interleave(self.group_size, dim=1)[:, :columns]

    def extra_repr(self) -> str:
        per = f"per_channel={self.scale.numel()}" if self.group_size is None else \
            f"group_size={self.group_size}, scales={self.scale.numel()}"
        return f"bits={self.bits}, {per}" + (f", axis={self.axis}" if self.axis else "")


class ActQuantizer(nn.Module):
    """Per-tensor fake quantization of a layer's input with a learnable (LSQ) scale.

    Calibrate first: ``observe`` collects statistics while ``observing`` is set, ``finalize``
    picks the range ("minmax", "percentile": the 99.99th percentile of |x|, or "mse": the clipping
    with the least squared error). Non-negative inputs (after a ReLU) get the unsigned grid
    [0, 2^b - 1]; others the symmetric signed grid. Before calibration it passes inputs through.
    Padded positions of a masked text batch are not observed (``padding.py``).

    "dynamic": no fixed range; every token (each vector along the input's last dimension) gets its
    own scale, its largest |x|, at run time (calibration only decides signed or unsigned). For the
    inputs of linear layers; the scale parameter is then unused.
    """

    def __init__(self, bits: int, method: str = "mse", max_samples: int = 1 << 18):
        super().__init__()
        if method not in ACT_METHODS:
            raise OmpqValueError(f"activation calibration must be one of {ACT_METHODS}, got {method!r}")
        quant_range(bits, signed=True)  # validates bits
        self.bits, self.method, self.max_samples = bits, method, max_samples
        self.signed = True
        self.scale = nn.Parameter(torch.ones(1))
        self.grad_factor = 1.0  # set by finalize from the input size
        self.calibrated = False
        self.observing = False
        self.reset()

    def reset(self) -> None:
        """Forget the statistics observed so far (the current scale stays until finalize)."""
        self._min, self._max, self._samples, self._seen = math.inf, -math.inf, [], 0
        self.nonfinite = 0  # NaN and infinite inputs seen (left out of the range)
        self._calls = 0

    @property
    def has_data(self) -> bool:
        """Whether observe() has seen any input since the last reset or finalize."""
        return self._calls > 0

    @torch.no_grad()
    def observe(self, x: Tensor) -> None:
        x = valid_rows(x.detach()).float().reshape(-1)
        if x.numel() == 0:
            return
        self._calls += 1
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            self.nonfinite += int(x.numel() - finite.sum())
            x = x[finite]
            if x.numel() == 0:
                return
        self._min = min(self._min, x.min().item())
        self._max = max(self._max, x.max().item())
        self._seen += x.numel()
        keep = min(x.numel(), self.max_samples)
        # A fixed-stride subsample: deterministic, and enough for percentiles and the MSE search.
        self._samples.append(x[:: max(1, x.numel() // keep)][:keep].clone())

    @torch.no_grad()
    def finalize(self) -> None:
        if not self._samples:
            if self.nonfinite:
                raise OmpqValueError(f"its input was NaN or infinite in every calibration value ({self.nonfinite:,} "
                                     f"of them), so its range cannot be calibrated; check the calib data and the "
                                     f"layers before it")
            raise OmpqValueError("an activation quantizer saw no data during calibration; give calib data "
                                 "that reaches every planned layer")
        scale, self.signed = activation_scale(torch.cat(self._samples), self.bits, self.method, self._min, self._max)
        qmax = quant_range(self.bits, self.signed)[1]
        self.scale.copy_(torch.tensor([scale]))
        self.grad_factor = 1.0 / math.sqrt(max(self._seen // max(len(self._samples), 1), 1) * qmax)
        self.calibrated = True
        self._samples = []

    def forward(self, x: Tensor) -> Tensor:
        if self.observing:
            self.observe(x)
            return x
        if not self.calibrated:
            return x
        dtype = x.dtype
        if self.method == "dynamic":
            return self._per_token(x.float()).to(dtype)
        y = fake_quantize(x.float(), self.scale, bits=self.bits, signed=self.signed,
                          grad_factor=self.grad_factor)
        return y.to(dtype)

    def _per_token(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, x.shape[-1]) if x.dim() > 0 else x.reshape(1, 1)
        top = (rows.abs() if self.signed else rows.clamp_min(0)).amax(dim=1).detach()
        scale = top.clamp_min(1e-8) / quant_range(self.bits, self.signed)[1]
        return fake_quantize(rows, scale, bits=self.bits, signed=self.signed, axis=0).reshape(x.shape)

    def extra_repr(self) -> str:
        state = ("signed" if self.signed else "unsigned") if self.calibrated else "not calibrated"
        return f"bits={self.bits}, method={self.method}, {state}"


def features_last(layer: nn.Module) -> bool:
    """Whether the layer's input holds its features along the last dimension (tokens x features)."""
    return isinstance(layer, nn.Linear) or type(layer).__name__ == "Conv1D"


class QuantLayer(nn.Module):
    """A planned layer with fake-quantized weights and (optionally) inputs.

    ``layer`` keeps the float weights (trainable in QAT); ``weight_quantizer`` and
    ``input_quantizer`` are swappable (reconstruction replaces the weight quantizer).
    """

    def __init__(self, layer: nn.Module, weight_bits: int, act_bits: int | None, *, weight_scale_method="mse",
                 act_method="mse", name: str = "", macs: int = 0, channel_axis: int = 0,
                 group_size: int | None = None):
        super().__init__()
        self.layer = layer
        self.name = name
        self.macs = macs  # per sample, from the plan
        self.weight_bits = weight_bits
        self.act_bits = act_bits
        self.weight_quantizer = WeightQuantizer(layer.weight, weight_bits, weight_scale_method, channel_axis, group_size)
        if act_method == "dynamic" and not features_last(layer):
            act_method = "mse"  # per-token scales are for inputs whose last dimension is the features
        self.input_quantizer = ActQuantizer(act_bits, act_method).to(layer.weight.device) if act_bits else None

    def quantized_weight(self) -> Tensor:
        return self.weight_quantizer(self.layer.weight)

    @property
    def weight(self) -> Tensor:
        """The quantized weight, for code that reads ``module.weight`` of the layer this wrapper replaced."""
        return self.quantized_weight()

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_"):
                raise
            # The wrapped layer's other public attributes (bias, in_features, ...), for code that reads them.
            return getattr(super().__getattr__("layer"), name)

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        return functional_call(self.layer, {"weight": self.quantized_weight()}, (x, *args), kwargs)

    def extra_repr(self) -> str:
        return f"{self.name!r}, W{self.weight_bits}A{self.act_bits or 'float'}"


def quant_layers(module: nn.Module, prefix: str = "") -> list[tuple[str, QuantLayer]]:
    """Every QuantLayer inside ``module`` with its qualified name (``prefix``: the module's own name)."""
    out = []
    for name, m in module.named_modules():
        if isinstance(m, QuantLayer):
            out.append((f"{prefix}.{name}" if prefix and name else (prefix or name), m))
    return out


class FunctionalWeightQuantizer(WeightQuantizer):
    """The quantizer of a planned weight used outside its module's own call (``F.linear`` on it, an
    attention's packed projection), registered as a parametrization of its owner module: every use
    reads the weight fake-quantized. The weight it returns carries its ``input_quantizer``, which
    ``quant/op_inputs.py`` applies to the input of every op that consumes it."""

    def __init__(self, weight: Tensor, bits: int, method: str = "mse", *, axis: int = 0, name: str = "",
                 kind: str = "", macs: int = 0, input_quantizer: ActQuantizer | None = None,
                 group_size: int | None = None):
        super().__init__(weight, bits, method, axis, group_size)
        self.name, self.kind, self.macs = name, kind, macs
        self.input_quantizer = input_quantizer
        self.reads = 0  # how often the weight was read, for calibration to tell an unused weight

    def forward(self, weight: Tensor) -> Tensor:
        self.reads += 1
        out = super().forward(weight)
        return out if self.input_quantizer is None else mark(out, self.input_quantizer)

    def extra_repr(self) -> str:
        return f"{self.name!r}, {super().extra_repr()}"


@dataclass
class QuantizedWeight:
    """One quantized weight of a model, however it is quantized (a QuantLayer or a parametrization)."""

    name: str
    kind: str
    weight: Tensor  # the float weight
    weight_quantizer: WeightQuantizer
    input_quantizer: ActQuantizer | None
    macs: int  # per sample
    bits: int


def quantized_weights(model: nn.Module) -> list[QuantizedWeight]:
    """Every quantized weight of ``model``: its QuantLayers, then its parametrized weights."""
    out = [QuantizedWeight(name, type(ql.layer).__name__, ql.layer.weight, ql.weight_quantizer, ql.input_quantizer,
                           int(ql.macs), int(ql.weight_bits)) for name, ql in quant_layers(model)]
    for module in model.modules():
        if parametrize.is_parametrized(module):
            for plist in module.parametrizations.values():
                for q in plist:
                    if isinstance(q, FunctionalWeightQuantizer):
                        out.append(QuantizedWeight(q.name, q.kind, plist.original, q, q.input_quantizer, int(q.macs),
                                                   int(q.bits)))
    return out
