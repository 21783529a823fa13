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


GRAM_KERNELS = ("auto", "blas", "cuda_cores", "tensor_cores")
BLAS_CHUNK = 4096  # columns whose products cuBLAS sums in float32; the chunks' sums are added in float64
_BLAS_BATCH_BYTES = 64 << 20  # float32 chunk products in flight at once


@functools.lru_cache(maxsize=None)
def _blas_takes_16bit(device: torch.device) -> bool:
    """Whether this torch has bmm with a float32 result for 16-bit inputs (aten::bmm.dtype, torch >= 2.8)."""
    try:
        one = torch.ones(1, 1, 1, dtype=torch.float16, device=device)
        return torch.bmm(one, one, out_dtype=torch.float32).dtype == torch.float32
    except (RuntimeError, TypeError, NotImplementedError):
        return False


def _use_blas(flat: Tensor) -> bool:
    """The default Gram on a GPU: cuBLAS (through torch) was 1.3-10x faster than the core's own kernels on every
    shape and dtype measured on an H200 (docs/BENCHMARKS.md). Not for float32 when torch may round float32
    products to TF32 (set_float32_matmul_precision below "highest"), nor for 16-bit features where torch cannot
    return a float32 product: there the core's kernels keep the stated accuracy."""
    if flat.dtype == torch.float32:
        return torch.get_float32_matmul_precision() == "highest"
    return _blas_takes_16bit(flat.device)


def gram_blas(flat: Tensor, gram: Tensor, chunk: int = BLAS_CHUNK) -> None:
    """gram (float64) += flat flatᵀ by torch's batched matrix product on flat's device (cuBLAS on a GPU): the
    columns in chunks of ``chunk``, each chunk's N x N product summed in float32 (16-bit features: float32
    products and sums, out_dtype), the chunks summed in float64, the result symmetrised. Reproducible bit for
    bit on the same device, library versions and shapes; not across GPUs or cuBLAS versions (cuBLAS picks its
    algorithm per shape and device)."""
    n, d = flat.shape
    wide = {} if flat.dtype == torch.float32 else {"out_dtype": torch.float32}
    full = d // chunk
    per_batch = max(1, _BLAS_BATCH_BYTES // (4 * n * n))
    total = torch.zeros(n, n, dtype=torch.float64, device=flat.device)
    for start in range(0, full, per_batch):
        count = min(per_batch, full - start)
        # chunk c of the columns as one matrix of a batch: (count, n, chunk), rows keep their stride
        chunks = flat.as_strided((count, n, chunk), (chunk, flat.stride(0), 1), flat.storage_offset() + start * chunk)
        total += torch.bmm(chunks, chunks.transpose(1, 2), **wide).sum(0, dtype=torch.float64)
    if full * chunk < d:
        rest = flat[:, full * chunk:].unsqueeze(0)
        total += torch.bmm(rest, rest.transpose(1, 2), **wide)[0].double()
    gram += (total + total.T) * 0.5


def gram_accumulate(flat: Tensor, gram: Tensor, kernel: str = "auto") -> None:
    """gram (N x N float64 on flat's device) += flat flatᵀ for N x d features. ``kernel``: "auto" (cuBLAS where
    it keeps the accuracy, see _use_blas; else the core's tensor cores for float16 / bfloat16 on sm_80+, CUDA
    cores for float32), "blas", "cuda_cores" or "tensor_cores". float64 features go to torch's float64
    matmul, which keeps them exact."""
    n, d = flat.shape
    if (gram.dtype != torch.float64 or gram.shape != (n, n) or gram.device != flat.device
            or not gram.is_contiguous()):
        raise OmpqValueError(f"gram must be a contiguous {n} x {n} float64 tensor on {flat.device}, got "
                             f"{tuple(gram.shape)} {gram.dtype} on {gram.device}")
    if kernel not in GRAM_KERNELS:
        raise OmpqValueError(f"kernel must be one of {', '.join(GRAM_KERNELS)}, got {kernel!r}")
    if n == 0 or d == 0:
        return
    if flat.dtype == torch.float64:
        gram.addmm_(flat, flat.T)
        return
    if flat.dtype not in DTYPE_TAGS:
        flat = flat.float()
    if flat.stride(-1) != 1:
        flat = flat.contiguous()
    if kernel == "blas" and flat.dtype != torch.float32 and not _blas_takes_16bit(flat.device):
        raise OmpqValueError(f"kernel='blas' needs torch's bmm with a float32 result for {flat.dtype} features "
                             f"(torch >= 2.8), which torch {torch.__version__} lacks; use kernel='auto'")
    if kernel == "blas" or (kernel == "auto" and _use_blas(flat)):
        with torch.cuda.device(flat.device):
            gram_blas(flat, gram)
        return
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
