"""GPTQ (Frantar et al., 2023): round a layer's weights column by column, each column's rounding error
fed forward into the columns not yet rounded through the inverse of the layer's input second moment.

For a layer ``y = W x`` with inputs ``X`` (one row per sample and position; a convolution's unfolded
patches) the rounding that keeps ``||W X - Q X||^2`` small is sought greedily: with ``H = X^T X / n``
(damped by ``damp`` times its mean diagonal so that it is positive definite) and ``U`` the upper
Cholesky factor of ``H^-1``, column ``i`` is rounded to ``q_i`` and every later column ``j`` moves by
``-(w_i - q_i) U_ij / U_ii``. The columns are processed in blocks of ``block_size`` whose updates to the
later columns are applied at once (the "lazy batch" form; same result). ``act_order`` rounds the
columns with the largest ``H_ii`` first.

The scales are not GPTQ's to choose: every column is rounded on the grid of the layer's
``WeightQuantizer`` (per output channel, or per group of input columns), the same scales round to
nearest would use, fixed before the first column (GPTQ's "static groups"). The result is baked in as
in ``reconstruct.py``: the layer's float weight becomes ``s * q``, which the unchanged quantizer maps to
itself, so the quantized model is an ordinary fake-quant model afterwards.

Layers run one after another in the order the model calls them; each layer's ``H`` comes from its
input in the quantized model as it is at that point (earlier layers already rounded, activation
quantizers on), one partial forward pass per layer, so upstream error is corrected downstream.
"""

from __future__ import annotations

import math
import time
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import OmpqValueError, user_stacklevel
from ..inputs import StopForward, call_order, sample_count, select_samples
from ..progress import progress_bar
from .modules import features_last, quant_layers
from .ops import quant_range
from .padding import padding_mask, valid_rows

__all__ = ["gptq", "gptq_round", "input_moment"]

_CONVS = (nn.Conv1d, nn.Conv2d)


# --------------------------------------------------------------------------- the rounding


def gptq_round(weight: Tensor, moment: Tensor, scales: Tensor, bits: int, *, damp: float = 0.01,
               block_size: int = 128, act_order: bool = False) -> Tensor:
    """The integer codes GPTQ gives ``weight`` (out x k) on the grid ``scales`` (out x k, one scale per
    weight: its channel's or its group's), with ``moment`` (k x k) the input second moment X^T X / n.

    Computed in float64. Columns whose input is always zero (``moment[i, i] == 0``) get code 0, as in
    GPTQ. Raises OmpqValueError when the damped moment is not positive definite.
    """
    qmin, qmax = quant_range(bits, signed=True)
    W = weight.detach().to(torch.float64).clone()
    H = moment.detach().to(torch.float64).clone()
    S = scales.detach().to(torch.float64).expand_as(W).clone()
    k = W.shape[1]
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    perm = torch.argsort(torch.diagonal(H), descending=True, stable=True) if act_order else None
    if perm is not None:
        W, H, S = W[:, perm], H[perm][:, perm], S[:, perm]
    H += damp * torch.diagonal(H).mean() * torch.eye(k, dtype=H.dtype, device=H.device)
    L, info = torch.linalg.cholesky_ex(H)
    if info.item() != 0:
        raise OmpqValueError(f"the damped input second moment is not positive definite (damp={damp}); raise damp")
    U = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    Q = torch.zeros_like(W)
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        W1 = W[:, i1:i2].clone()
        U1 = U[i1:i2, i1:i2]
        err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            w, s = W1[:, i], S[:, i1 + i]
            q = torch.round(w / s).clamp_(qmin, qmax)
            Q[:, i1 + i] = q
            err = (w - q * s) / U1[i, i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            err1[:, i] = err
        W[:, i2:] -= err1 @ U[i1:i2, i2:]
    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    return Q


# --------------------------------------------------------------------------- a layer's input rows


def input_rows(layer: nn.Module, x: Tensor) -> Tensor | None:
    """The rows ``X`` (n x k) such that the layer computes ``W_flat @ row`` per output position, with
    ``W_flat`` its weight as (out channels) x (everything else); None for a layer GPTQ does not handle."""
    if features_last(layer):  # Linear, and GPT-2's Conv1D (x @ W, W is (in, out))
        return valid_rows(x).reshape(-1, x.shape[-1])
    if _plain_conv(layer):
        two_d = isinstance(layer, nn.Conv2d)
        mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
        x = F.pad(x, layer._reversed_padding_repeated_twice, mode=mode)
        if not two_d:
            x = x.unsqueeze(2)
        pair = (lambda v: tuple(v)) if two_d else (lambda v: (1, v[0]))
        cols = F.unfold(x, pair(layer.kernel_size), dilation=pair(layer.dilation), stride=pair(layer.stride))
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return None


def _plain_conv(layer: nn.Module) -> bool:
    return isinstance(layer, _CONVS) and layer.groups == 1


def supported(layer: nn.Module) -> bool:
    """Whether ``input_rows`` knows the layer."""
    return features_last(layer) or _plain_conv(layer)


@torch.no_grad()
def input_moment(qmodel: nn.Module, layer: nn.Module, args, kwargs, n: int, chunk: int,
                 mask_padding: bool = True) -> Tensor:
    """X^T X / rows (float64) of ``layer``'s input over the n samples, as the quantized model feeds it
    (padded positions left out unless ``mask_padding`` is False, see ``padding.py``); forwards of ``chunk``
    samples, each stopped there."""
    total, rows = None, 0

    def pre(_m, a):
        nonlocal total, rows
        X = input_rows(layer, a[0]).to(torch.float64)
        total = X.T @ X if total is None else total.addmm_(X.T, X)
        rows += X.shape[0]
        raise StopForward

    handle = layer.register_forward_pre_hook(pre)
    try:
        for start in range(0, n, chunk):
            idx = torch.arange(start, min(start + chunk, n))
            a, kw = select_samples(args, idx, n), select_samples(kwargs, idx, n)
            with padding_mask(a, kw, mask_padding):
                try:
                    qmodel(*a, **kw)
                except StopForward:
                    pass
    finally:
        handle.remove()
    if total is None:
        raise OmpqValueError("the layer did not run in the forward pass")
    return total / max(rows, 1)


# --------------------------------------------------------------------------- the model


def _flat(weight: Tensor, axis: int) -> Tensor:
    return weight.movedim(axis, 0).reshape(weight.shape[axis], -1)


def _error(delta: Tensor, moment: Tensor) -> float:
    """Mean squared output error of a weight change ``delta`` (out x k) on inputs with this moment."""
    return float(torch.einsum("ok,kl,ol->", delta, moment, delta) / delta.shape[0])


def gptq(qmodel: nn.Module, inputs: tuple[tuple, dict], *, damp: float = 0.01, block_size: int = 128,
         act_order: bool = False, keep_best: bool = True, chunk_size: int = 64, mask_padding: bool = True,
         progress: bool | None = None, records: list | None = None) -> None:
    """Round the weights of ``qmodel``'s QuantLayers with GPTQ, in place, layer by layer in call order.

    inputs: ``(args, kwargs)`` of one model call over the calibration samples. keep_best: a layer
    whose GPTQ output error (on its calibration inputs) exceeds round to nearest's keeps round to
    nearest. Layers GPTQ cannot take (grouped convolutions, Conv3d, embeddings, layers called more
    than once per forward or sharing their weight) stay at round to nearest, named in a warning.
    records: a list that gets one dict per layer (name, mse_rtn, mse_gptq, kept, seconds).
    """
    if not (isinstance(damp, (int, float)) and not isinstance(damp, bool) and 0 < damp and math.isfinite(damp)):
        raise OmpqValueError(f"damp must be a number > 0 (a fraction of the moment's mean diagonal), got {damp!r}")
    for name, value in (("block_size", block_size), ("chunk_size", chunk_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise OmpqValueError(f"{name} must be a positive integer, got {value!r}")
    args, kwargs = inputs
    n = sample_count((args, kwargs))
    layers = dict(quant_layers(qmodel))
    probe = torch.arange(min(n, 2))
    order, counts = call_order(qmodel, list(layers), select_samples(args, probe, n), select_samples(kwargs, probe, n))
    weights: dict[int, int] = {}
    for ql in layers.values():
        weights[id(ql.layer.weight)] = weights.get(id(ql.layer.weight), 0) + 1
    skipped = [name for name, ql in layers.items()
               if counts[name] != 1 or weights[id(ql.layer.weight)] > 1 or not supported(ql.layer)]
    if skipped:
        warnings.warn(f"gptq: {len(skipped)} layer(s) stay at round to nearest (not run exactly once per forward, "
                      f"sharing a weight, or not a Linear/Conv1d/Conv2d with groups=1): "
                      f"{', '.join(skipped[:8])}{', ...' if len(skipped) > 8 else ''}", stacklevel=user_stacklevel())
    todo = [name for name in order if name not in skipped]
    with progress_bar(len(todo), "ompq: gptq", "layer", progress, leave=True) as bar:
        for name in todo:
            t0 = time.perf_counter()
            ql = layers[name]
            wq = ql.weight_quantizer
            moment = input_moment(qmodel, ql.layer, args, kwargs, n, chunk_size, mask_padding)
            weight = ql.layer.weight
            W = _flat(weight.detach(), wq.axis).to(torch.float64)
            S = wq.column_scales(*W.shape).to(torch.float64)
            rtn = _flat(wq(weight).detach(), wq.axis).to(torch.float64)
            codes = gptq_round(W, moment, S, wq.bits, damp=damp, block_size=block_size, act_order=act_order)
            rounded = codes * S
            mse_rtn, mse_gptq = _error(W - rtn, moment), _error(W - rounded, moment)
            kept = "gptq"
            if keep_best and mse_gptq > mse_rtn:
                kept = "nearest"
            else:
                baked = rounded.to(weight.dtype).reshape(weight.movedim(wq.axis, 0).shape).movedim(0, wq.axis)
                with torch.no_grad():
                    weight.copy_(baked)
            if records is not None:
                records.append({"name": name, "mse_rtn": mse_rtn, "mse_gptq": mse_gptq, "kept": kept,
                                "seconds": time.perf_counter() - t0})
            bar.update(1)

