"""The feature pass: one forward of the N planning samples with a hook on every planned layer.

The pass records the order in which the layers first run, how often each runs and its MACs per
sample (what every allocator and the BOPs budget need), and hands each layer's features to the
allocator's collectors while the forward runs, so that no feature map outlives its layer.
``GramCollector`` is OMPQ's collector: it folds each layer's features into its N x N Gram
matrix through the C++ core (or the CUDA kernels), so memory is O(L N^2), not O(sum N d_i).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import _core, cuda_kernels
from .errors import FeatureError, OmpqValueError, check_choice
from .guard import untouched
from .inputs import call_model, first_tensor, sample_count
from .layers import Layer
from .progress import progress_bar

FEATURE_POINTS = ("output", "activation")
BN_MODES = ("eval", "batch")
# Modules that count as "the following activation" for feature_point="activation"; besides these,
# any module whose class name ends in "Activation" (the Hugging Face convention, e.g. GELUActivation).
ACTIVATION_TYPES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Softplus, nn.Softsign,
)


def is_activation(module: nn.Module) -> bool:
    return isinstance(module, ACTIVATION_TYPES) or type(module).__name__.endswith("Activation")


# ---------------------------------------------------------------- the pass


@dataclass
class Observation:
    """What the feature pass saw of the planned layers (indices into its ``layers`` list)."""

    order: list[int]  # layers in the order they first ran
    calls: list[int]  # how often each layer ran
    macs: list[int]  # MACs per sample of each layer, over all its calls
    activation_calls: int  # activation modules that ran (feature_point="activation")


class FeaturePass:
    """Forward hooks on the planned layers (and, for ``feature_point="activation"``, on the
    activation modules) for one forward pass; each layer's features go to every collector's
    ``add(i, features, source)``.

    ``feature_point="output"``: a layer's features are its own output. ``"activation"``: the
    output of the first activation module that runs after the layer (for a ResNet block's last
    conv and its shortcut that is the block output, after the residual add and ReLU, as in the
    reference code); a layer that no activation follows keeps its own output. A layer called
    twice hands over features twice (a collector concatenates them).
    """

    def __init__(self, layers: list[Layer], num_samples: int, collectors=(), *, feature_point: str = "output",
                 model: nn.Module | None = None, progress=None):
        check_choice("feature_point", feature_point, FEATURE_POINTS)
        if feature_point == "activation" and model is None:
            raise OmpqValueError("feature_point='activation' needs the model, to find its activations")
        self.layers = layers
        self.n = num_samples
        self.collectors = list(collectors)
        self.feature_point = feature_point
        self.model = model
        self.progress = progress  # a progress bar, advanced once per layer that runs
        self.observation = Observation(order=[], calls=[0] * len(layers), macs=[0] * len(layers), activation_calls=0)
        self._pending: dict[int, torch.Tensor] = {}  # layer -> its own output, until an activation runs
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

    def finish(self) -> Observation:
        """After the forward pass: layers that no activation followed hand over their own output;
        then every collector finishes."""
        for i, out in self._pending.items():
            self._hand_over(i, out, f"layer {self.layers[i].name!r}")
        self._pending.clear()
        for c in self.collectors:
            c.finish()
        return self.observation

    def _check_batch(self, out: torch.Tensor, source: str):
        if out.dim() == 0 or out.shape[0] != self.n:
            raise FeatureError(
                f"{source} output has shape {tuple(out.shape)}, whose first dimension is not the "
                f"{self.n} samples; exclude the layer or pass input_fn so the batch dimension comes first"
            )

    def _hand_over(self, i: int, out: torch.Tensor, source: str):
        self._check_batch(out, source)
        out = out.detach()
        for c in self.collectors:
            c.add(i, out, source)

    def _activation_hook(self, module, inputs, output):
        self.observation.activation_calls += 1
        if not self._pending:
            return
        out = first_tensor(output)
        if out is None or not out.is_floating_point():
            return  # not a tensor activation: the pending layers wait for the next one
        for i in self._pending:
            self._hand_over(i, out, f"activation {type(module).__name__} after layer {self.layers[i].name!r}")
        self._pending.clear()

    def _hook(self, i):
        layer = self.layers[i]
        seen = self.observation

        def hook(module, inputs, output):
            out = first_tensor(output)
            if out is None or not out.is_floating_point():
                raise FeatureError(f"layer {layer.name!r} returned no floating-point tensor; exclude it")
            if self.feature_point == "output":
                self._hand_over(i, out, f"layer {layer.name!r}")
            else:
                self._check_batch(out, f"layer {layer.name!r}")
                self._pending[i] = out.detach()
            # MACs per sample: output elements x weight elements per output channel.
            weight = module.weight
            seen.macs[i] += out[0].numel() * (weight.numel() // weight.shape[0])
            if seen.calls[i] == 0:
                seen.order.append(i)
                if self.progress is not None:
                    self.progress.update(1)
            seen.calls[i] += 1

        return hook


def observe(model: nn.Module, layers: list[Layer], samples, collectors=(), *, feature_point: str = "output",
            bn_mode: str = "eval", progress=None) -> Observation:
    """Run the feature pass: ``samples`` = (args, kwargs) of one model call over the N samples.

    The model runs in eval mode (``bn_mode="batch"``: BatchNorm in training mode, as the reference
    code) without gradients, and is left exactly as it was (buffers, train/eval flags, hooks), also
    when the pass raises.
    """
    check_choice("bn_mode", bn_mode, BN_MODES)
    args, kwargs = samples
    n = sample_count(samples)
    with progress_bar(len(layers), "ompq: feature pass", "layer", progress) as bar:
        with untouched(model), torch.no_grad(), FeaturePass(
            layers, n, collectors, feature_point=feature_point, model=model, progress=bar
        ) as feature_pass:
            model.eval()
            if bn_mode == "batch":
                for m in model.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.train()
            call_model(model, args, kwargs, samples="the loader's")
            return feature_pass.finish()


# ---------------------------------------------------------------- OMPQ's collector: Grams


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


class GramCollector:
    """Folds each layer's features into its N x N Gram as they arrive (K += X X^T, additive over
    calls, so a layer called twice has its features concatenated exactly)."""

    def __init__(self, layers: list[Layer], num_samples: int, *, num_threads: int = 0):
        self.layers = layers
        self.n = num_samples
        self.num_threads = num_threads
        self.grams = np.zeros((len(layers), num_samples, num_samples))
        self._device_grams: dict[torch.device, torch.Tensor] = {}  # (L, N, N) float64 per CUDA device
        self._on_device: set[int] = set()  # layers with a Gram on a device, checked in finish()
        self._on_host: set[int] = set()
        self.device_grams: torch.Tensor | None = None  # after finish(): every Gram, when all are on one GPU

    def add(self, i: int, out: torch.Tensor, source: str = ""):
        flat = _flatten_samples(out, self.n)
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

    def finish(self):
        """When every Gram was formed on one GPU they stay there (``device_grams``: the ORM is formed
        there too); otherwise the device Grams are added to the host ones (one copy per device)."""
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
