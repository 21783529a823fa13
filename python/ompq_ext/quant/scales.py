"""Weight scales for symmetric per-channel quantization: the largest |w| per channel ("minmax") or
the clipping ratio with the least squared rounding error ("mse", one C++ core kernel on the CPU).
Shared by the quantized modules and by the allocators that measure a bit-width's perturbation."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import _core
from ..errors import OmpqValueError
from .ops import check_group_size, fake_quantize, quant_range, to_groups

SCALE_METHODS = ("minmax", "mse")
ACT_METHODS = ("minmax", "percentile", "mse", "dynamic")
_MSE_GRID = torch.linspace(1.0, 0.2, 81)  # clipping ratios tried by the MSE scale search


def channel_shape(weight: Tensor, axis: int) -> tuple[int, ...]:
    """The shape that broadcasts one value per channel along ``axis`` against ``weight``."""
    return tuple(weight.shape[axis] if d == axis else 1 for d in range(weight.dim()))


def weight_scale(weight: Tensor, bits: int, method: str = "mse", axis: int = 0, group_size: int | None = None) -> Tensor:
    """Per-output-channel scales (channels along ``axis``) for symmetric ``bits``-bit weights, or with
    ``group_size`` one per group of that many consecutive weights of a channel (``ops.to_groups``).

    ``minmax``: the largest |w| of the channel maps to the top of the grid. ``mse``: the
    clipping ratio (1.0 down to 0.2) with the least squared rounding error, per channel (the first
    such ratio on a tie); on the CPU one core kernel (``_core.mse_weight_scales``) searches all channels.
    """
    if method not in SCALE_METHODS:
        raise OmpqValueError(f"weight scale method must be one of {SCALE_METHODS}, got {method!r}")
    qmin, qmax = quant_range(bits, signed=True)
    if check_group_size(group_size) is not None:
        flat = to_groups(weight.detach().float(), axis, group_size)
    else:
        flat = weight.detach().float().movedim(axis, 0)
        flat = flat.reshape(flat.shape[0], -1)
    base = flat.abs().amax(dim=1).clamp_min(1e-12) / qmax
    if method == "minmax":
        return base
    if flat.device.type == "cpu":
        return _mse_search_core(flat, base, qmin, qmax)
    return _mse_search_torch(flat, base, bits)


def _mse_search_core(flat: Tensor, base: Tensor, qmin: int, qmax: int) -> Tensor:
    """The MSE search over ``_MSE_GRID`` for a CPU (channels, k) float32 matrix: one core kernel,
    errors summed in float64 (the first minimum in grid order wins, as in the torch search)."""
    scales = _core.mse_weight_scales(flat.contiguous().numpy(), base.contiguous().numpy(), _MSE_GRID.numpy(),
                                     qmin, qmax)
    return torch.from_numpy(scales)


def _mse_search_torch(flat: Tensor, base: Tensor, bits: int, signed: bool = True) -> Tensor:
    """The same search in torch ops (for CUDA tensors): one fake quantization per ratio, errors in float32."""
    best_err = torch.full((flat.shape[0],), math.inf, device=flat.device)
    best = base.clone()
    for ratio in _MSE_GRID:
        s = base * ratio
        err = (fake_quantize(flat, s, bits=bits, signed=signed, axis=0) - flat).square().sum(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, s, best)
    return best


def activation_scale(samples: Tensor, bits: int, method: str = "mse", low: float | None = None,
                     high: float | None = None) -> tuple[float, bool]:
    """(scale, signed) of per-tensor ``bits``-bit quantization for inputs observed as ``samples`` (a flat
    float tensor, possibly a subsample of inputs whose extremes are ``low`` and ``high``). Inputs never
    negative get the unsigned grid. "minmax" (and "dynamic", whose real scales are per token at run
    time): the largest value; "percentile": the 99.99th percentile of |x|; "mse": the clipping ratio with
    the least squared error on the samples."""
    low = float(samples.min()) if low is None else low
    high = float(samples.max()) if high is None else high
    signed = low < 0
    qmax = quant_range(bits, signed)[1]
    values = samples.abs() if signed else samples
    top = max(max(abs(low), abs(high)) if signed else high, 1e-8)
    if method in ("minmax", "dynamic"):
        return top / qmax, signed
    if method == "percentile":
        k = max(1, int(0.9999 * values.numel()))
        return max(values.kthvalue(k).values.item(), 1e-8) / qmax, signed
    qmin = quant_range(bits, signed)[0]
    flat = samples.float().reshape(1, -1)  # the weights' search, the samples as one channel
    base = torch.tensor([top / qmax], dtype=torch.float32, device=flat.device)
    if flat.device.type == "cpu":
        return float(_mse_search_core(flat, base, qmin, qmax)[0]), signed
    return float(_mse_search_torch(flat, base, bits, signed)[0]), signed
