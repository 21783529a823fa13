"""The feature pass: one forward of N samples with hooks that fold each
layer's output into its N x N Gram matrix (through the C++ core) while the
forward runs, then drop the tensor. Memory is O(L N^2), not O(sum N d_i).

Also here: gathering N samples from a loader into one batch, and the guard that
leaves the user's model exactly as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from . import _core, cuda_kernels
from .errors import FeatureError, OmpqError, OmpqTypeError, OmpqValueError
from .layers import Layer

# ---------------------------------------------------------------- batches


def _first_tensor(obj):
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, Mapping):
        for v in obj.values():
            t = _first_tensor(v)
            if t is not None:
                return t
    if isinstance(obj, (list, tuple)):
        for v in obj:
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


def _default_input(batch):
    """(args, kwargs) for the model from a batch: a tensor is the input, a
    tuple/list is (inputs, targets, ...) so its first item is the input, a dict
    is passed as keyword arguments."""
    if isinstance(batch, torch.Tensor):
        return (batch,), {}
    if isinstance(batch, (list, tuple)) and batch:
        return (batch[0],), {}
    if isinstance(batch, Mapping):
        return (), dict(batch)
    raise OmpqTypeError(
        f"cannot feed a batch of type {type(batch).__name__} to the model: batches must be tensors, "
        f"(inputs, targets) tuples or dicts; pass input_fn=... to turn a batch into model inputs"
    )


def _as_call(inputs):
    """input_fn may return a tensor, a tuple of positional args, a dict of kwargs, or (args, kwargs)."""
    if isinstance(inputs, torch.Tensor):
        return (inputs,), {}
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    if (isinstance(inputs, tuple) and len(inputs) == 2 and isinstance(inputs[0], tuple)
            and isinstance(inputs[1], Mapping)):
        return inputs[0], dict(inputs[1])
    if isinstance(inputs, (list, tuple)):
        return tuple(inputs), {}
    raise OmpqTypeError(
        f"input_fn returned {type(inputs).__name__}; return a tensor, a tuple of positional arguments, "
        f"a dict of keyword arguments, or (args, kwargs)"
    )


def _concat(parts):
    first = parts[0]
    if isinstance(first, torch.Tensor):
        shapes = {tuple(p.shape[1:]) for p in parts}
        if len(shapes) > 1:
            raise OmpqTypeError(
                f"cannot join batches whose samples have different shapes {sorted(shapes)} (e.g. text padded "
                f"to each batch's longest sequence); pad every batch to one length, or give batches that "
                f"hold all the samples needed at once"
            )
        return torch.cat(parts, dim=0)
    if isinstance(first, Mapping):
        return {k: _concat([p[k] for p in parts]) for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(_concat([p[i] for p in parts]) for i in range(len(first)))
    if all(p == first for p in parts):  # a constant argument such as a flag
        return first
    raise OmpqTypeError(
        f"cannot join batches holding {type(first).__name__} values; pass input_fn=... returning tensors"
    )


def _take(obj, n):
    if isinstance(obj, torch.Tensor):
        return obj[:n]
    if isinstance(obj, Mapping):
        return {k: _take(v, n) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_take(v, n) for v in obj)
    return obj


def gather_samples(loader, num_samples: int, input_fn=None):
    """Draw batches until ``num_samples`` samples are in hand and join them into
    one model call (args, kwargs) of exactly that many samples. The Gram needs
    every pair of samples, so they must go through the model together."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
        raise OmpqValueError(f"num_samples must be an integer >= 2, got {num_samples!r}")
    if isinstance(loader, torch.Tensor):
        loader = [loader]
    try:
        iterator = iter(loader)
    except TypeError:
        raise OmpqTypeError(
            f"loader must be iterable (a DataLoader, a list of batches or a tensor), got {type(loader).__name__}"
        ) from None
    calls, have = [], 0
    for batch in iterator:
        args, kwargs = _as_call(input_fn(batch)) if input_fn is not None else _default_input(batch)
        first = _first_tensor((args, kwargs))
        if first is None or first.dim() == 0:
            raise OmpqTypeError("a batch holds no tensor with a batch dimension; pass input_fn=...")
        calls.append((args, kwargs))
        have += first.shape[0]
        if have >= num_samples:
            break
    if have == 0:
        raise OmpqValueError("the loader yielded no samples; give it at least num_samples inputs")
    if have < num_samples:
        raise OmpqValueError(
            f"the loader yielded only {have} samples but num_samples={num_samples}; "
            f"give more data or lower num_samples"
        )
    args, kwargs = _concat([c[0] for c in calls]), _concat([c[1] for c in calls])
    return _take(args, num_samples), _take(kwargs, num_samples)


def call_model(model: nn.Module, args, kwargs, *, samples: str, error=FeatureError):
    """Run the model on gathered samples; an exception of the model's own becomes ``error``
    saying which samples failed (``samples``: "the loader's", "calib's") and what to check."""
    try:
        return model(*args, **kwargs)
    except OmpqError:
        raise
    except Exception as e:
        raise error(
            f"the model's forward pass failed on {samples} samples ({type(e).__name__}: {e}); "
            f"check that the batches fit the model, or pass input_fn=..."
        ) from e


# ---------------------------------------------------------------- the model guard


@contextlib.contextmanager
def untouched(model: nn.Module):
    """Restore every buffer's values and every module's train/eval flag on exit,
    also when the body raises. (Hooks are removed by their owner.)"""
    flags = [(m, m.training) for m in model.modules()]
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, copy in saved:
                b.copy_(copy)
        for m, flag in flags:
            m.training = flag  # per module: train() would also reset the children


# ---------------------------------------------------------------- the Gram hooks


def _gram_operands(flat: torch.Tensor):
    """A 2-D CPU tensor as (numpy array, dtype tag) for the core, converting only what it cannot read."""
    if flat.device.type != "cpu":
        flat = flat.cpu()  # a device tensor without the CUDA kernels: the Gram is formed on the CPU
    if flat.dtype == torch.bfloat16:
        return flat.view(torch.int16).numpy(), "bf16"
    if flat.dtype not in (torch.float32, torch.float16, torch.float64):
        flat = flat.float()
    return flat.numpy(), "auto"


def _flatten_samples(out: torch.Tensor, n: int) -> torch.Tensor:
    """N x d view of a layer output; the Gram ignores the order of features, so a
    channels-last tensor is read in its memory order without a copy."""
    if out.dim() == 4 and not out.is_contiguous() and out.is_contiguous(memory_format=torch.channels_last):
        out = out.permute(0, 2, 3, 1)
    flat = out.reshape(n, -1)
    if flat.stride(-1) != 1:
        flat = flat.contiguous()
    return flat


FEATURE_POINTS = ("output", "activation")
# Modules that count as "the following activation" for feature_point="activation"; besides these,
# any module whose class name ends in "Activation" (the Hugging Face convention, e.g. GELUActivation).
ACTIVATION_TYPES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Softplus, nn.Softsign,
)


def is_activation(module: nn.Module) -> bool:
    return isinstance(module, ACTIVATION_TYPES) or type(module).__name__.endswith("Activation")


class GramCollector:
    """Forward hooks that fold each planned layer's features into its N x N Gram.

    ``feature_point="output"``: a layer's features are its own output. ``"activation"``: the
    output of the first activation module that runs after the layer (for a ResNet block's last
    conv and its shortcut that is the block output, after the residual add and ReLU, as in the
    reference code); a layer that no activation follows keeps its own output.

    A layer called twice has its features concatenated, which the Gram's additivity makes exact.
    """

    def __init__(self, layers: list[Layer], num_samples: int, *, feature_point: str = "output",
                 model: nn.Module | None = None, num_threads: int = 0, progress=None):
        if feature_point not in FEATURE_POINTS:
            raise OmpqValueError(f"feature_point must be one of {FEATURE_POINTS}, got {feature_point!r}")
        if feature_point == "activation" and model is None:
            raise OmpqValueError("feature_point='activation' needs the model, to find its activations")
        self.layers = layers
        self.n = num_samples
        self.feature_point = feature_point
        self.model = model
        self.num_threads = num_threads
        self.progress = progress
        self.grams = np.zeros((len(layers), num_samples, num_samples))
        self.calls = [0] * len(layers)
        self.macs = [0] * len(layers)
        self.order: list[int] = []  # layer indices in the order they first ran
        self.activation_calls = 0
        self._pending: dict[int, torch.Tensor] = {}  # layer -> its own output, until an activation runs
        self._device_grams: dict[torch.device, torch.Tensor] = {}  # (L, N, N) float64 per CUDA device
        self._on_device: set[int] = set()  # layers with a Gram on a device, checked in finish()
        self._on_host: set[int] = set()
        self.device_grams: torch.Tensor | None = None  # after finish(): every Gram, when all are on one GPU
        self._handles = []

    def __enter__(self):
        for i, layer in enumerate(self.layers):
            self._handles.append(layer.module.register_forward_hook(self._hook(i)))
        if self.feature_point == "activation":
            for module in self.model.modules():
                if is_activation(module):
                    self._handles.append(module.register_forward_hook(self._activation_hook))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return False

    def finish(self):
        """After the forward pass: layers no activation followed use their own output. When every
        Gram was formed on one GPU they stay there (``device_grams``: the ORM is formed there too);
        otherwise the device Grams are added to the host ones (one copy per device)."""
        for i, out in self._pending.items():
            self._accumulate(i, out, self.layers[i].name)
        self._pending.clear()
        if len(self._device_grams) == 1 and not self._on_host:
            (self.device_grams,) = self._device_grams.values()
            diagonals = torch.diagonal(self.device_grams, dim1=1, dim2=2)
            finite = torch.isfinite(diagonals).all(dim=1).cpu().numpy()
        else:
            for grams in self._device_grams.values():
                self.grams += grams.cpu().numpy()
            finite = np.isfinite(np.diagonal(self.grams, axis1=1, axis2=2)).all(axis=1)
        self._device_grams.clear()
        for i in sorted(self._on_device):
            if not finite[i]:
                self._report_not_finite(i)
        self._on_device.clear()

    def grams_of(self, indices: list[int]):
        """The Grams of these layers: a (k, N, N) CUDA tensor when they stayed on a GPU, else a numpy array."""
        if self.device_grams is not None:
            return self.device_grams[torch.as_tensor(indices, device=self.device_grams.device)]
        return self.grams[indices]

    def _report_not_finite(self, i: int):
        raise FeatureError(
            f"layer {self.layers[i].name!r} produced NaN or Inf features (or their squares overflow); "
            f"check the model and its inputs, or exclude the layer"
        )

    def _check_batch(self, out: torch.Tensor, source: str):
        if out.dim() == 0 or out.shape[0] != self.n:
            raise FeatureError(
                f"{source} output has shape {tuple(out.shape)}, whose first dimension is not the "
                f"{self.n} samples; exclude the layer or pass input_fn so the batch dimension comes first"
            )

    def _accumulate(self, i: int, out: torch.Tensor, source: str):
        self._check_batch(out, source)
        flat = _flatten_samples(out.detach(), self.n)
        if flat.device.type == "cuda" and cuda_kernels.usable():
            if flat.device not in self._device_grams:
                self._device_grams[flat.device] = torch.zeros(self.grams.shape, dtype=torch.float64, device=flat.device)
            cuda_kernels.gram_accumulate(flat, self._device_grams[flat.device][i])
            self._on_device.add(i)
            return
        array, tag = _gram_operands(flat)
        _core.gram_accumulate(array, self.grams[i], dtype=tag, num_threads=self.num_threads)
        self._on_host.add(i)
        if not np.all(np.isfinite(np.diagonal(self.grams[i]))):
            self._report_not_finite(i)

    def _activation_hook(self, module, inputs, output):
        self.activation_calls += 1
        if not self._pending:
            return
        out = _first_tensor(output)
        if out is None or not out.is_floating_point():
            return  # not a tensor activation: the pending layers wait for the next one
        for i in self._pending:
            self._accumulate(i, out, f"activation {type(module).__name__} after layer {self.layers[i].name!r}")
        self._pending.clear()

    def _hook(self, i):
        layer = self.layers[i]

        def hook(module, inputs, output):
            out = _first_tensor(output)
            if out is None or not out.is_floating_point():
                raise FeatureError(f"layer {layer.name!r} returned no floating-point tensor; exclude it")
            if self.feature_point == "output":
                self._accumulate(i, out, f"layer {layer.name!r}")
            else:
                self._check_batch(out, f"layer {layer.name!r}")
                self._pending[i] = out.detach()
            # MACs per sample: output elements x weight elements per output channel.
            weight = module.weight
            self.macs[i] += (out[0].numel()) * (weight.numel() // weight.shape[0])
            if self.calls[i] == 0:
                self.order.append(i)
                if self.progress is not None:
                    self.progress.update(1)
            self.calls[i] += 1

        return hook
