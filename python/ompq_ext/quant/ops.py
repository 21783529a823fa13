"""Fake-quant autograd ops over the C++ core kernels.

``fake_quantize`` is the public entry point. Underneath, ``ompq_ext::fake_quant``
and its backward are ``torch.library.custom_op`` operators, so they work under
autograd and inside ``torch.compile`` graphs; in eager mode the same kernels run
through a plain ``autograd.Function``, which skips the custom-op dispatch. The forward is
bit for bit ``torch.fake_quantize_per_{tensor,channel}_affine``; the backward is
the straight-through estimator with the clipping mask, plus the LSQ gradients
of the scale and zero point when those require grad.
"""

from __future__ import annotations

import math
import operator

import torch
from torch import Tensor

from .. import _core, cuda_kernels
from ..errors import OmpqError, OmpqTypeError, OmpqValueError

PER_TENSOR = -1  # the ops' axis for per-tensor quantization


def quant_range(bits: int, signed: bool) -> tuple[int, int]:
    """Integer grid of ``bits``-bit values: [-2^(b-1), 2^(b-1)-1] signed, [0, 2^b-1] unsigned."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
        raise OmpqValueError(f"bits must be an integer in 1..16, got {bits!r}")
    if signed:
        if bits == 1:
            raise OmpqValueError("signed quantization needs at least 2 bits")
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _numpy(t: Tensor):
    return t.detach().contiguous().numpy()


def _axis(axis: int):
    return None if axis == PER_TENSOR else axis


def _layout(x: Tensor, axis: int) -> tuple[int, int, int]:
    """(outer, channels, inner) of x seen as [outer][channels][inner] for the CUDA kernels."""
    if axis == PER_TENSOR:
        return 1, 1, x.numel()
    return math.prod(x.shape[:axis]), x.shape[axis], math.prod(x.shape[axis + 1:])


def _forward(x: Tensor, scale: Tensor, zero_point: Tensor, axis: int, qmin: int, qmax: int) -> Tensor:
    """The core's forward kernel (CPU or CUDA) on float32 tensors."""
    x, scale, zero_point = x.contiguous(), scale.contiguous(), zero_point.contiguous()
    if x.is_cuda:
        return cuda_kernels.fake_quant_forward(x, scale, zero_point, _layout(x, axis), qmin, qmax)
    return torch.from_numpy(_core.fake_quant_forward(_numpy(x), _numpy(scale), _numpy(zero_point), _axis(axis),
                                                     qmin, qmax))


def _gradients(grad: Tensor, x: Tensor, scale: Tensor, zero_point: Tensor, axis: int, qmin: int, qmax: int,
               grad_factor: float, scale_grad: bool, zero_point_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    """The core's backward kernel: (grad_x, grad_scale, grad_zero_point), zeros where not asked for."""
    x, grad, scale, zero_point = x.contiguous(), grad.contiguous(), scale.contiguous(), zero_point.contiguous()
    if x.is_cuda:
        return cuda_kernels.fake_quant_backward(grad, x, scale, zero_point, _layout(x, axis), qmin, qmax, grad_factor,
                                                scale_grad, zero_point_grad)
    gx, gs, gz = _core.fake_quant_backward(_numpy(x), _numpy(grad), _numpy(scale), _numpy(zero_point), _axis(axis),
                                           qmin, qmax, grad_factor, scale_grad, zero_point_grad)
    gs = torch.from_numpy(gs) if gs is not None else torch.zeros_like(scale)
    gz = torch.from_numpy(gz) if gz is not None else torch.zeros_like(zero_point)
    return torch.from_numpy(gx), gs, gz


@torch.library.custom_op("ompq_ext::fake_quant", mutates_args=())
def _fake_quant(x: Tensor, scale: Tensor, zero_point: Tensor, axis: int, qmin: int, qmax: int,
                grad_factor: float) -> Tensor:
    return _forward(x, scale, zero_point, axis, qmin, qmax)


@_fake_quant.register_fake
def _(x, scale, zero_point, axis, qmin, qmax, grad_factor):
    return x.new_empty(x.shape)  # contiguous, like the real kernel's output


@torch.library.custom_op("ompq_ext::fake_quant_backward", mutates_args=())
def _fake_quant_backward(grad: Tensor, x: Tensor, scale: Tensor, zero_point: Tensor, axis: int, qmin: int,
                         qmax: int, grad_factor: float, scale_grad: bool,
                         zero_point_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    return _gradients(grad, x, scale, zero_point, axis, qmin, qmax, grad_factor, scale_grad, zero_point_grad)


@_fake_quant_backward.register_fake
def _(grad, x, scale, zero_point, axis, qmin, qmax, grad_factor, scale_grad, zero_point_grad):
    return x.new_empty(x.shape), scale.new_empty(scale.shape), zero_point.new_empty(zero_point.shape)


def _setup_context(ctx, inputs, output):
    x, scale, zero_point, axis, qmin, qmax, grad_factor = inputs
    ctx.save_for_backward(x, scale, zero_point)
    ctx.args = (axis, qmin, qmax, grad_factor)


def _backward_with(gradients, ctx, grad):
    x, scale, zero_point = ctx.saved_tensors
    want_scale, want_zero = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
    gx, gs, gz = gradients(grad, x, scale, zero_point, *ctx.args, want_scale, want_zero)
    return gx, gs if want_scale else None, gz if want_zero else None, None, None, None, None


def _backward(ctx, grad):
    return _backward_with(_fake_quant_backward, ctx, grad)


_fake_quant.register_autograd(_backward, setup_context=_setup_context)


class _EagerFakeQuant(torch.autograd.Function):
    """The same kernels as the custom ops, without the custom-op dispatch (about 10 µs a call each
    way, twice the kernel's time on small tensors). fake_quantize uses it in eager mode; under
    torch.compile or tracing it uses the custom ops, which those need."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, axis, qmin, qmax, grad_factor):
        _setup_context(ctx, (x, scale, zero_point, axis, qmin, qmax, grad_factor), None)
        return _forward(x, scale, zero_point, axis, qmin, qmax)

    @staticmethod
    def backward(ctx, grad):
        return _backward_with(_gradients, ctx, grad)


def check_group_size(group_size) -> int | None:
    """None (per channel) or a positive integer, else a named error."""
    if group_size is None:
        return None
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise OmpqValueError(f"group_size must be a positive integer (e.g. 32, 64, 128) or None for one scale per "
                             f"output channel, got {group_size!r}")
    return group_size


def group_count(columns: int, group_size: int | None) -> int:
    """How many groups a channel of ``columns`` weights has (the last one may be shorter)."""
    return 1 if group_size is None else -(-columns // group_size)


def to_groups(x: Tensor, axis: int, group_size: int) -> Tensor:
    """``x`` as (channels x groups) rows of ``group_size``: each channel (along ``axis``) flattened in the
    order of ``x.movedim(axis, 0)`` and cut into groups of consecutive values; a short last group is padded
    with zeros (which every scale represents exactly, so they change no scale and no error)."""
    flat = x.movedim(axis, 0).reshape(x.shape[axis], -1)
    columns = flat.shape[1]
    pad = group_count(columns, group_size) * group_size - columns
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    return flat.reshape(-1, group_size)


def from_groups(rows: Tensor, like: Tensor, axis: int) -> Tensor:
    """The inverse of ``to_groups``: a tensor shaped as ``like``."""
    moved = like.movedim(axis, 0).shape
    columns = like.numel() // like.shape[axis]
    return rows.reshape(like.shape[axis], -1)[:, :columns].reshape(moved).movedim(0, axis)


def fake_quantize(x: Tensor, scale: Tensor, zero_point: Tensor | None = None, *, bits: int = 8, signed: bool = True,
                  axis: int | None = None, group_size: int | None = None, grad_factor: float = 1.0) -> Tensor:
    """Quantize ``x`` to ``bits`` and back: per channel along ``axis``, or per tensor when it is None.

    ``scale`` (and ``zero_point``, default 0) hold one value per channel, or one for the tensor.
    ``group_size``: per group instead, with ``axis``: each channel's values (in the order of
    ``x.movedim(axis, 0)``) in groups of ``group_size`` consecutive ones, the last possibly shorter;
    ``scale`` then holds channels x groups values, channel-major. A group is a channel of the same
    kernels (the tensor seen as rows of ``group_size``), so the values are those of per-channel
    quantization of those rows, on the CPU and CUDA alike.
    A learnable ``zero_point`` is rounded in the forward pass with a straight-through gradient.
    ``grad_factor`` multiplies the scale and zero-point gradients (LSQ uses 1/sqrt(numel * qmax)).
    float32 tensors, all on the CPU or all on one CUDA device (the core's CUDA kernels, on torch's
    current stream; there the scales are not checked for positivity, which would synchronise).
    """
    if not isinstance(x, Tensor) or not isinstance(scale, Tensor):
        raise OmpqTypeError("fake_quantize takes tensors for x and scale")
    if x.dtype != torch.float32:
        raise OmpqTypeError(f"fake_quantize works on float32 tensors, got {x.dtype}; convert with .float()")
    for name, t in (("scale", scale), ("zero_point", zero_point)):
        if t is not None and t.device != x.device:
            raise OmpqError(f"fake_quantize: x is on {x.device} but {name} is on {t.device}; put them on one device")
    if x.device.type == "cuda" and not cuda_kernels.usable():
        raise OmpqError("fake_quantize: x is on a CUDA device but this ompq_ext was built without its CUDA kernels "
                        "(no CUDA toolkit at build time); reinstall with nvcc on PATH, or move the tensors to the CPU")
    if x.device.type not in ("cpu", "cuda"):
        raise OmpqError(f"fake_quantize: tensors on {x.device} are not supported; use the CPU or a CUDA device")
    if axis is not None:
        try:
            if isinstance(axis, bool):
                raise TypeError
            axis = operator.index(axis)  # an int, or an integer scalar such as numpy's int64
        except TypeError:
            raise OmpqTypeError(f"fake_quantize: axis must be an integer (the channel axis) or None (per tensor), "
                                f"got {axis!r} ({type(axis).__name__})") from None
    if check_group_size(group_size) is not None:
        if axis is None:
            raise OmpqValueError("group_size needs axis=: the axis of the output channels whose values are grouped")
        if not -x.dim() <= axis < x.dim():
            raise OmpqValueError(f"axis {axis} is out of range for a {x.dim()}-D tensor")
        rows = to_groups(x, axis % x.dim(), group_size)
        if scale.numel() != rows.shape[0]:
            raise OmpqValueError(f"{x.shape[axis]} channels in groups of {group_size} need {rows.shape[0]} scales, "
                                 f"got {scale.numel()}")
        zp = None if zero_point is None else zero_point.reshape(-1)
        out = fake_quantize(rows, scale.reshape(-1), zp, bits=bits, signed=signed, axis=0, grad_factor=grad_factor)
        return from_groups(out, x, axis % x.dim())
    qmin, qmax = quant_range(bits, signed)
    scale = scale.reshape(-1).float()
    if zero_point is None:
        zero_point = torch.zeros_like(scale)
    else:
        zero_point = zero_point.reshape(-1).float()
        # Round and clamp onto the grid; the gradient passes straight through.
        zero_point = zero_point + (zero_point.detach().round().clamp(qmin, qmax) - zero_point.detach())
    if axis is None:
        if scale.numel() != 1:
            raise OmpqValueError(f"per-tensor quantization takes one scale, got {scale.numel()}; pass axis=...")
        op_axis = PER_TENSOR
    else:
        if not -x.dim() <= axis < x.dim():
            raise OmpqValueError(f"axis {axis} is out of range for a {x.dim()}-D tensor")
        op_axis = axis % x.dim()
        if scale.numel() != x.shape[op_axis]:
            raise OmpqValueError(
                f"axis {axis} has {x.shape[op_axis]} channels but {scale.numel()} scales were given"
            )
    op = _fake_quant if torch.compiler.is_compiling() or torch.jit.is_tracing() else _EagerFakeQuant.apply
    return op(x.contiguous(), scale.contiguous(), zero_point.contiguous(), op_axis, qmin, qmax, float(grad_factor))
