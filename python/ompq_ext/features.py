"""The feature pass: one forward of the N planning samples that sees every use of the planned weights.

The pass records the order in which the weights are first used, how often each is used and its
MACs per sample (what every allocator and the BOPs budget need), and hands each weight's features
(the output of the op that consumed it) to the allocator's collectors while the forward runs, so
that no feature map outlives its op.
``GramCollector`` is OMPQ's collector: it folds each layer's features into its N x N Gram
matrix through the C++ core (or the CUDA kernels), so memory is O(L N^2), not O(sum N d_i).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from . import _core, cuda_kernels
from .errors import FeatureError, OmpqValueError, check_choice
from .guard import untouched
from .inputs import call_model, first_tensor, sample_count
from .layers import Layer
from .progress import progress_bar
from .weight_ops import OpInput, attention_arguments, input_of, module_input, op_input, weight_of

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
    """What the feature pass saw of the planned weights (indices into its ``layers`` list)."""

    order: list[int]  # weights in the order their first use ran
    calls: list[int]  # how often each weight was used
    macs: list[int]  # MACs per sample of each weight, over all its uses
    activation_calls: int  # activation modules that ran (feature_point="activation")
    outside: list[bool] = field(default_factory=list)  # used outside its own module's call (functionally)
    refused: list[str] = field(default_factory=list)  # weights of unknown module types used without a sample dimension
    channel_axis: list[int] = field(default_factory=list)  # each weight's output-channel axis in its first use


class _OpObserver(TorchFunctionMode):
    """Active during the feature pass only: sees every op that consumes a planned weight."""

    def __init__(self, feature_pass: "FeaturePass"):
        super().__init__()
        self.feature_pass = feature_pass

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is F.multi_head_attention_forward:
            self.feature_pass._attention(args, kwargs, out)
            return out
        weight, where = weight_of(func, args, kwargs)
        if weight is not None and id(weight) in self.feature_pass._by_weight:
            self.feature_pass._op_use(weight, out, where.axis, input_of(where, args, kwargs),
                                      lambda: op_input(func, args, kwargs, where))
        return out


class FeaturePass:
    """One forward pass that sees every use of the planned weights and hands each weight's features to
    every collector's ``add(i, features, source)``.

    A weight is seen where an op consumes it (``F.linear``, ``F.conv1d/2d/3d``, ``addmm`` / ``mm`` /
    ``matmul`` with it as the second operand, and ``F.multi_head_attention_forward`` for its
    projection weights), through a ``TorchFunctionMode`` active only during the pass; its features
    are that op's output (over flattened tokens or batch-major windows, the rows regrouped by sample;
    for an attention's packed projection, its q, k and v outputs side by side). Weights of the user's
    own ``layer_types`` are seen through a hook on their module, with the module's output as features.

    ``feature_point="output"``: those features. ``"activation"``: the output of the first activation
    module that runs after the use (for a ResNet block's last conv and its shortcut that is the block
    output, after the residual add and ReLU, as in the reference code); a weight that no activation
    follows keeps its own. A weight used twice hands over features twice (a collector concatenates
    them); a weight shared by two modules belongs to the module whose call uses it.
    """

    def __init__(self, layers: list[Layer], num_samples: int, collectors=(), *, feature_point: str = "output",
                 model: nn.Module | None = None, progress=None):
        check_choice("feature_point", feature_point, FEATURE_POINTS)
        if feature_point == "activation" and model is None:
            raise OmpqValueError("feature_point='activation' needs the model, to find its activations")
        self.layers = layers
        self.n = num_samples
        self.collectors = list(collectors)
        # Collectors that also take each use's input (``add_use(i, OpInput)``), e.g. for the output error.
        self._input_collectors = [c for c in self.collectors if hasattr(c, "add_use")]
        self.feature_point = feature_point
        self.model = model
        self.progress = progress  # a progress bar, advanced once per weight that is used
        self.observation = Observation(order=[], calls=[0] * len(layers), macs=[0] * len(layers), activation_calls=0,
                                       outside=[False] * len(layers), channel_axis=[0] * len(layers))
        self._by_weight: dict[int, list[int]] = {}  # id(weight) -> the weights' indices (several where shared)
        self._weights = []  # the tensors whose ids are keys above, held so that no other tensor takes an id
        for i, layer in enumerate(layers):
            if not layer.by_output:
                self._weights.append(layer.weight)
                self._by_weight.setdefault(id(self._weights[-1]), []).append(i)
        self._running: list[tuple[nn.Module, object, list[int]]] = []  # calls under way: (module, its input, uses then)
        self._own: dict[int, list[int]] = {}  # id(module) -> its planned weights seen through ops
        for i, layer in enumerate(layers):
            if layer.attr == "weight" and not layer.by_output:
                self._own.setdefault(id(layer.module), []).append(i)
        self._pending: dict[int, torch.Tensor] = {}  # weight -> its features, until an activation runs
        self._handles = []
        self._mode = _OpObserver(self)
        self._projections = None  # q, k, v of the attention call under way, from torch's own in-projection
        self._patched = {}

    def __enter__(self):
        owners = {}
        for i, layer in enumerate(self.layers):
            if layer.by_output:
                self._handles.append(layer.module.register_forward_hook(self._output_hook(i)))
            elif layer.attr == "weight":
                owners[id(layer.module)] = layer.module
        for module in owners.values():
            self._handles.append(module.register_forward_pre_hook(self._enter_module))
            self._handles.append(module.register_forward_hook(self._leave_module))
        if self.feature_point == "activation":
            for module in self.model.modules():
                if is_activation(module):
                    self._handles.append(module.register_forward_hook(self._activation_hook))
        # F.multi_head_attention_forward's projections run inside it, where the mode cannot see them: its
        # in-projection helpers are wrapped for the pass to keep their q, k, v (else they are computed again).
        for name in ("_in_projection_packed", "_in_projection"):
            original = getattr(F, name, None)
            if callable(original):
                self._patched[name] = original
                setattr(F, name, self._keeping_projections(original))
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        for name, original in self._patched.items():
            setattr(F, name, original)
        self._patched.clear()
        self._mode.__exit__(*exc)
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return False

    def finish(self) -> Observation:
        """After the forward pass: weights that no activation followed hand over their own features;
        then every collector finishes."""
        for i, out in self._pending.items():
            self._hand_over(i, out, f"layer {self.layers[i].name!r}")
        self._pending.clear()
        for c in self.collectors:
            c.finish()
        return self.observation

    # ------------------------------------------------------------ what the hooks and the mode see

    def _keeping_projections(self, original):
        def projection(*args, **kwargs):
            out = original(*args, **kwargs)
            self._projections = out
            return out

        return projection

    def _enter_module(self, module, args):
        self._running.append((module, first_tensor(args), list(self.observation.calls)))

    def _leave_module(self, module, args, output):
        _, _, calls = self._running.pop()
        # A Linear/Conv weight the ops did not show in its module's call (recomputed on every access, as
        # weight_norm's): its module's output, as module hooks gave it.
        for i in self._own.get(id(module), ()):
            layer = self.layers[i]
            if not layer.optional and layer.kind != "Embedding" and self.observation.calls[i] == calls[i]:
                self._output_hook(i)(module, args, output)

    def _op_use(self, weight: torch.Tensor, out: torch.Tensor, axis, op_input, use=None):
        units = self._by_weight[id(weight)]
        if axis is None:  # a lookup: planned only as an embedding (include_embeddings)
            units = [j for j in units if self.layers[j].kind == "Embedding"]
            if not units:
                return
        i, call = units[0], None
        for entry in reversed(self._running):  # a weight shared by modules: the one whose call this is
            owned = [j for j in units if self.layers[j].module is entry[0] and self.layers[j].attr == "weight"]
            if owned:
                i, call = owned[0], entry
                break
        layer = self.layers[i]
        # Used inside its module's call: quantized as a wrapped module, whose input quantizer takes the
        # module's input; for a module of an unknown type, only where the op's input is that input (a view).
        own_input = call is not None and (not layer.optional or (
            isinstance(op_input, torch.Tensor) and isinstance(call[1], torch.Tensor)
            and op_input.data_ptr() == call[1].data_ptr() and op_input.numel() == call[1].numel()))
        self.observation.outside[i] |= not own_input or axis is None
        out = self._by_sample(out, lookup=axis is None)
        if layer.optional and (out.dim() == 0 or out.shape[0] != self.n):
            if layer.name not in self.observation.refused:  # no sample dimension: not planned (plan() says so)
                self.observation.refused.append(layer.name)
            return
        if axis is not None and self.observation.calls[i] == 0:
            self.observation.channel_axis[i] = axis % weight.dim()  # 1 for a (in, out) weight as GPT-2's Conv1D
        if axis is not None and use is not None:
            self._hand_input(i, use)
        self._use(i, out, 0 if axis is None else out[0].numel() * (weight.numel() // weight.shape[axis]))

    def _attention(self, args, kwargs, out):
        """F.multi_head_attention_forward: the in-projection's q, k, v as torch's helper returned them (or,
        where torch has no such helper, computed once more from the inputs); the out-projection's output
        is the result."""
        kept, self._projections = self._projections, None
        a = attention_arguments(args, kwargs)
        query, key, value = a["query"], a["key"], a["value"]
        if query.dim() != 3:  # unbatched attention: no sample dimension to plan from
            return
        embed = query.shape[-1]
        bias = a["in_proj_bias"]

        def projection(x, w, part):
            if kept is not None:
                return kept[part].transpose(0, 1)  # (L, N, E) -> samples first
            b = None if bias is None else bias[part * embed:(part + 1) * embed]
            return F.linear(x, w, b).transpose(0, 1)

        if a["use_separate_proj_weight"]:
            uses = [(a[f"{p}_proj_weight"], [projection(x, a[f"{p}_proj_weight"], k)], lambda x=x: [OpInput(x)])
                    for k, (p, x) in enumerate(zip("qkv", (query, key, value)))]
        else:
            w = a["in_proj_weight"]
            packed = [projection(x, w[k * embed:(k + 1) * embed], k) for k, x in enumerate((query, key, value))]
            uses = [(w, packed, lambda: [OpInput(query)] if query is key is value else  # one input: the whole matrix
                     [OpInput(x, part=slice(k * embed, (k + 1) * embed)) for k, x in enumerate((query, key, value))])]

        def attended():  # the out-projection's input, inside the call: the attention with an identity out-projection
            w = a["out_proj_weight"]
            eye = torch.eye(w.shape[1], dtype=w.dtype, device=w.device)
            inner = F.multi_head_attention_forward(**{**a, "out_proj_weight": eye, "out_proj_bias": None})[0]
            self._projections = None
            return [OpInput(inner)]

        uses.append((a["out_proj_weight"], [out[0].transpose(0, 1)], attended))
        for weight, parts, inputs in uses:
            units = self._by_weight.get(id(weight))
            if units:
                i = units[0]
                self.observation.outside[i] = True
                feats = torch.cat([p.reshape(self.n, -1) for p in parts], dim=1)
                in_features = weight.shape[1]
                if self._input_collectors:
                    for op in inputs():
                        self._hand_input(i, lambda op=op: op)
                self._use(i, feats, sum(p[0].numel() for p in parts) * in_features)

    def _output_hook(self, i):
        layer = self.layers[i]

        def hook(module, inputs, output):
            out = first_tensor(output)
            if out is None or not out.is_floating_point():
                raise FeatureError(f"layer {layer.name!r} returned no floating-point tensor; exclude it")
            weight = layer.weight
            self._hand_input(i, lambda: module_input(module, first_tensor(inputs)))
            self._use(i, out, out[0].numel() * (weight.numel() // weight.shape[0]))

        return hook

    def _hand_input(self, i: int, use):
        """Give the input of weight i's use (built by ``use()`` only where a collector takes it)."""
        if self._input_collectors:
            op = use()
            if op is not None:
                for c in self._input_collectors:
                    c.add_use(i, op)

    def _use(self, i: int, out: torch.Tensor, macs: int):
        """One use of weight ``i``: its features ``out`` (samples first) and its MACs per sample."""
        layer, seen = self.layers[i], self.observation
        if self.feature_point == "output":
            self._hand_over(i, out, f"layer {layer.name!r}")
        else:
            self._check_batch(out, f"layer {layer.name!r}")
            self._pending[i] = out.detach()
        seen.macs[i] += macs
        if seen.calls[i] == 0:
            seen.order.append(i)
            if self.progress is not None:
                self.progress.update(1)
        seen.calls[i] += 1

    def _by_sample(self, out: torch.Tensor, *, lookup: bool = False) -> torch.Tensor:
        """An op's output with the samples first. Where its first dimension is k x N, its rows are read as
        sample by sample and regrouped as (N, k x ...): a matrix of flattened tokens (N*T, C), or windows
        batch-major (Swin's (N * windows, tokens, C)); not where its second dimension is N (sequence-first
        (L, N, E), which is refused). A lookup shared by every sample (first dimension 1: position
        embeddings) is the same for each. Anything else must have the samples first already."""
        if lookup and out.dim() >= 2 and out.shape[0] == 1 and self.n > 1:
            return out.expand(self.n, *out.shape[1:])
        if (out.dim() >= 2 and out.shape[0] != self.n and out.shape[0] % self.n == 0
                and (out.dim() == 2 or out.shape[1] != self.n)):
            return out.reshape(self.n, -1)
        return out

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
    if flat.stride(-1) != 1 or flat.stride(0) < flat.shape[1]:  # strided, or rows that overlap (broadcast)
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
        self._side: dict[torch.device, torch.cuda.Stream] = {}  # where the Grams are formed, beside the forward
        self._on_device: set[int] = set()  # layers with a Gram on a device, checked in finish()
        self._on_host: set[int] = set()
        self.device_grams: torch.Tensor | None = None  # after finish(): every Gram, when all are on one GPU

    def add(self, i: int, out: torch.Tensor, source: str = ""):
        flat = _flatten_samples(out, self.n)
        if flat.device.type == "cuda" and cuda_kernels.usable():
            # On a side stream that waits for the features (no host synchronisation), so that the forward pass
            # goes on meanwhile; neither the features' nor the Grams' memory is reused before the side stream is
            # done with it (also if the pass fails before finish()).
            if flat.device not in self._device_grams:
                self._device_grams[flat.device] = torch.zeros(self.grams.shape, dtype=torch.float64, device=flat.device)
                self._side[flat.device] = torch.cuda.Stream(flat.device)
                self._device_grams[flat.device].record_stream(self._side[flat.device])
            side = self._side[flat.device]
            side.wait_stream(torch.cuda.current_stream(flat.device))
            with torch.cuda.stream(side):
                cuda_kernels.gram_accumulate(flat, self._device_grams[flat.device][i])
            flat.record_stream(side)
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
        for device, side in self._side.items():  # the Grams are complete before anything reads them
            torch.cuda.current_stream(device).wait_stream(side)
        self._side.clear()
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
