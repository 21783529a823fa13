"""The core's CUDA kernels on torch tensors.

Each call runs under the tensor's device (so a model on ``cuda:1`` launches there), on torch's
current stream of that device, with its workspace taken from torch's caching allocator on the
same stream. Nothing waits for the GPU, except ``orm_matrix``, which returns its small L x L
result to the host.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

from . import _core
from .errors import OmpqValueError

DTYPE_TAGS = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}


@functools.lru_cache(maxsize=1)
def usable() -> bool:
    """Whether the core was built with its CUDA kernels and a device is visible. Asked only once
    a CUDA tensor shows up: a CPU-only run never touches the CUDA runtime."""
    return bool(getattr(_core, "cuda_built", False)) and _core.cuda_device_available()


def _stream(t: Tensor) -> int:
    return torch.cuda.current_stream(t.device).cuda_stream


def _workspace(nbytes: int, like: Tensor) -> Tensor:
    return torch.empty(nbytes, dtype=torch.uint8, device=like.device)


def gram_accumulate(flat: Tensor, gram: Tensor, kernel: str = "auto") -> None:
    """gram (N x N float64 on flat's device) += flat flatᵀ for N x d features. ``kernel``: "auto"
    (tensor cores for float16 / bfloat16 on sm_80+), "cuda_cores" or "tensor_cores". float64
    features go to torch's float64 matmul, which keeps them exact."""
    n, d = flat.shape
    if (gram.dtype != torch.float64 or gram.shape != (n, n) or gram.device != flat.device
            or not gram.is_contiguous()):
        raise OmpqValueError(f"gram must be a contiguous {n} x {n} float64 tensor on {flat.device}, got "
                             f"{tuple(gram.shape)} {gram.dtype} on {gram.device}")
    if n == 0 or d == 0:
        return
    if flat.dtype == torch.float64:
        gram.addmm_(flat, flat.T)
        return
    if flat.dtype not in DTYPE_TAGS:
        flat = flat.float()
    if flat.stride(-1) != 1:
        flat = flat.contiguous()
    row_stride = flat.stride(0) if n > 1 else d  # one row: its stride is arbitrary
    with torch.cuda.device(flat.device):
        workspace = _workspace(_core.gram_workspace_bytes(n, d), flat)
        _core.gram_accumulate_cuda(flat.data_ptr(), DTYPE_TAGS[flat.dtype], n, d, row_stride, gram.data_ptr(),
                                   workspace.data_ptr(), workspace.numel(), _stream(flat), kernel)


def orm_matrix(grams: Tensor, estimator: str) -> np.ndarray:
    """The L x L linear-CKA matrix of (L, N, N) float64 device Grams, formed on their device; only
    the result is copied back (NaN rows, as on the CPU, mark layers without a centred Gram)."""
    grams = grams.to(torch.float64).contiguous()
    layers, n = grams.shape[0], grams.shape[1]
    with torch.cuda.device(grams.device):
        orm = torch.empty(layers, layers, dtype=torch.float64, device=grams.device)
        workspace = _workspace(_core.orm_workspace_bytes(layers, n), grams)
        _core.orm_matrix_cuda(grams.data_ptr(), layers, n, estimator, orm.data_ptr(), workspace.data_ptr(),
                              workspace.numel(), _stream(grams))
        return orm.cpu().numpy()


def fake_quant_forward(x: Tensor, scale: Tensor, zero_point: Tensor, layout: tuple[int, int, int], qmin: int,
                       qmax: int) -> Tensor:
    """The fake-quant forward of contiguous float32 device tensors; layout = (outer, channels, inner)."""
    if x.numel() == 0:
        return torch.empty_like(x)
    with torch.cuda.device(x.device):
        out = torch.empty_like(x)
        _core.fake_quant_forward_cuda(x.data_ptr(), out.data_ptr(), *layout, scale.data_ptr(), zero_point.data_ptr(),
                                      qmin, qmax, _stream(x))
        return out


def fake_quant_backward(grad: Tensor, x: Tensor, scale: Tensor, zero_point: Tensor, layout: tuple[int, int, int],
                        qmin: int, qmax: int, grad_factor: float, scale_grad: bool,
                        zero_point_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(grad_x, grad_scale, grad_zero_point) of contiguous float32 device tensors; the gradients not
    asked for are zeros. Without them the backward is one elementwise pass."""
    if x.numel() == 0:  # no elements: every gradient is zero (an empty tensor has no data pointer)
        return torch.empty_like(x), torch.zeros_like(scale), torch.zeros_like(zero_point)
    sums = scale_grad or zero_point_grad
    with torch.cuda.device(x.device):
        gx = torch.empty_like(x)
        gs = torch.empty_like(scale) if scale_grad else torch.zeros_like(scale)
        gz = torch.empty_like(zero_point) if zero_point_grad else torch.zeros_like(zero_point)
        workspace = _workspace(_core.fake_quant_backward_workspace_bytes(*layout) if sums else 0, x)
        _core.fake_quant_backward_cuda(x.data_ptr(), grad.data_ptr(), gx.data_ptr(),
                                       gs.data_ptr() if scale_grad else 0, gz.data_ptr() if zero_point_grad else 0,
                                       *layout, scale.data_ptr(), zero_point.data_ptr(), qmin, qmax, grad_factor,
                                       workspace.data_ptr() if sums else 0, workspace.numel(), _stream(x))
        return gx, gs, gz
