"""Post-training reconstruction: learn the rounding of quantized weights (AdaRound)
layer by layer, or block by block in the spirit of BRECQ.

AdaRound (Nagel et al., 2020) keeps each channel's scale ``s`` and learns, per
weight, whether to round down or up: ``W~ = s * clamp(floor(W/s) + h(V), qmin, qmax)``
with the rectified sigmoid ``h(V) = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)``.
``V`` minimises the squared error between the quantized and the float outputs of a
layer (``method="adaround"``) or of a block of layers (``method="brecq"``, Li et
al., 2021) plus ``reg_weight * sum(1 - |2h - 1|^beta)``, which pushes ``h`` to 0 or 1
while ``beta`` is annealed from 20 to 2 after a warm-up.

The target of a layer/block is the float model's output there, on the float
model's input; its input is the quantized model's input there (captured after the
earlier layers were reconstructed), so the error made upstream is corrected
downstream. Activation quantizers stay as calibrated (enabled) throughout.

**What stays in the model.** When a layer is done, its learned hard rounding is
*baked in*: the layer's float weight is overwritten with ``s * q`` (``q`` the
learned integers) and the layer gets back its ordinary :class:`WeightQuantizer`
with the same scale. ``s * q`` is a fixed point of that quantizer, so the forward
is exactly the learned rounding; nothing AdaRound-specific is left in the model
(it is deterministic, has no ``V``), its size/BOPs reports are unchanged, and QAT
(which trains float weights and scales with STE/LSQ) starts from the learned grid
point. The float weights before reconstruction are lost in the quantized copy (the
float model passed in is untouched).
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import OmpqTypeError, OmpqValueError, user_stacklevel
from ..inputs import StopForward, call_order, join_samples, map_tensors, select_samples, tensors
from ..progress import progress_bar
from .modules import QuantLayer, WeightQuantizer, channel_shape, quant_layers
from .ops import check_group_size, from_groups, group_count, quant_range

__all__ = ["METHODS", "AdaRoundQuantizer", "find_blocks", "reconstruct"]

METHODS = ("adaround", "brecq")
ZETA, GAMMA = 1.1, -0.1  # stretch of the rectified sigmoid (AdaRound paper)
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


# --------------------------------------------------------------------------- the quantizer


class AdaRoundQuantizer(nn.Module):
    """Per-output-channel weight quantizer with a learned rounding.

    ``scale`` (one value per output channel, kept fixed) comes from the layer's
    :class:`WeightQuantizer`; ``V`` has the weight's shape and is initialised so that
    ``h(V)`` equals the fractional part of ``W/s``: in ``hard`` mode (``h = 1[V >= 0]``)
    the start is round-to-nearest (ties round up). In soft mode the forward is
    differentiable in ``V`` only.
    """

    def __init__(self, weight: Tensor, scale: Tensor, bits: int, axis: int = 0, group_size: int | None = None):
        super().__init__()
        self.bits, self.axis, self.group_size = bits, axis, check_group_size(group_size)
        self.qmin, self.qmax = quant_range(bits, signed=True)
        scale = scale.detach().float().reshape(-1)
        if not 0 <= axis < weight.dim() or scale.numel() != weight.shape[axis] * group_count(
                weight.numel() // weight.shape[axis], group_size):
            raise OmpqValueError(f"AdaRoundQuantizer: {scale.numel()} scales for a weight of shape "
                                 f"{tuple(weight.shape)} with output channels along axis {axis}"
                                 + (f" in groups of {group_size}" if group_size else ""))
        if not bool((scale > 0).all()):
            raise OmpqValueError("AdaRoundQuantizer: every scale must be > 0")
        self.register_buffer("scale", scale.clone())
        w = weight.detach().float() / self.channel_scale(weight)
        rest = (w - w.floor()).clamp(0.0, 1.0)
        # h(V) = rest  <=>  sigmoid(V) = (rest - gamma) / (zeta - gamma); rest in [0, 1] keeps it inside (0, 1).
        self.V = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1.0))
        self.hard = False

    def h(self) -> Tensor:
        """The rounding offsets in [0, 1]: soft (rectified sigmoid) or hard (0/1)."""
        if self.hard:
            return (self.V >= 0).to(self.V.dtype)
        return (torch.sigmoid(self.V) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)

    def channel_scale(self, weight: Tensor) -> Tensor:
        """The scales shaped to broadcast against ``weight``: one per output channel, or with groups the
        scale of every weight."""
        if self.group_size is None:
            return self.scale.reshape(channel_shape(weight, self.axis))
        channels = weight.shape[self.axis]
        columns = self.scale.reshape(channels, -1).repeat_interleave(self.group_size, dim=1)
        return from_groups(columns.reshape(-1), weight, self.axis)

    def integers(self, weight: Tensor) -> Tensor:
        """The integer grid values of ``weight`` under the current (soft or hard) rounding."""
        return (torch.floor(weight.detach().float() / self.channel_scale(weight)) + self.h()).clamp(self.qmin,
                                                                                                    self.qmax)

    def forward(self, weight: Tensor) -> Tensor:
        if weight.shape != self.V.shape:
            raise OmpqValueError(f"AdaRoundQuantizer built for a weight of shape {tuple(self.V.shape)}, "
                                 f"got {tuple(weight.shape)}")
        return (self.integers(weight) * self.channel_scale(weight)).to(weight.dtype)

    def regularizer(self, beta: float) -> Tensor:
        """Sum over the weights of 1 - |2h - 1|^beta: 0 when every h is 0 or 1, numel when all are 1/2."""
        h = (torch.sigmoid(self.V) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)
        return (1.0 - (2.0 * h - 1.0).abs().pow(beta)).sum()

    def extra_repr(self) -> str:
        return f"bits={self.bits}, per_channel={self.scale.numel()}, hard={self.hard}"


def beta_schedule(step: int, iters: int, warmup: float, beta_range=(20.0, 2.0)) -> float | None:
    """β at ``step``: None during the warm-up (no regulariser), then linear from beta_range[0] to [1]."""
    start = int(warmup * iters)
    if step < start:
        return None
    rel = (step - start) / max(iters - start, 1)
    hi, lo = beta_range
    return lo + (hi - lo) * max(0.0, 1.0 - rel)


# --------------------------------------------------------------------------- nested inputs


def _detach_clone(obj):
    return map_tensors(obj, lambda t: t.detach().clone())


def _normalise_inputs(inputs) -> tuple[tuple, dict, int]:
    if isinstance(inputs, Tensor):
        inputs = ((inputs,), {})
    if not (isinstance(inputs, (tuple, list)) and len(inputs) == 2 and isinstance(inputs[0], (tuple, list))
            and isinstance(inputs[1], dict)):
        raise OmpqTypeError("reconstruct: inputs must be (args, kwargs) of one model call over the calibration "
                            "samples (dim 0 = samples), or a single tensor")
    args, kwargs = tuple(inputs[0]), dict(inputs[1])
    leaves = [t for t in tensors((args, kwargs)) if t.dim() > 0]
    if not leaves:
        raise OmpqValueError("reconstruct: the calibration inputs hold no tensor with a sample dimension")
    return args, kwargs, leaves[0].shape[0]


# --------------------------------------------------------------------------- units (layers / blocks)


def find_blocks(model: nn.Module) -> list[str]:
    """Names of the reconstruction blocks of ``model``, generically.

    Walk the module tree from the root: a :class:`QuantLayer` is a block; the root
    and containers (``nn.Sequential``, ``nn.ModuleList``, ``nn.ModuleDict``) are
    recursed into; any other module holding QuantLayers is one block (e.g. a ResNet
    BasicBlock or a transformer layer). Returned in registration order.
    """
    blocks: list[str] = []

    def visit(name: str, module: nn.Module, root: bool) -> None:
        if isinstance(module, QuantLayer):
            blocks.append(name)
        elif root or isinstance(module, _CONTAINERS):
            for child, sub in module.named_children():
                visit(f"{name}.{child}" if name else child, sub, False)
        elif any(isinstance(m, QuantLayer) for m in module.modules()):
            blocks.append(name)

    visit("", model, True)
    return blocks


def _units(qmodel: nn.Module, method: str, blocks) -> list[str]:
    layers = [name for name, _ in quant_layers(qmodel, "")]
    if not layers:
        raise OmpqValueError("reconstruct: the model has no QuantLayer; quantize it first "
                             "(ompq_ext.quantize) or wrap layers in QuantLayer")
    if method == "adaround":
        if blocks is not None:
            raise OmpqValueError("reconstruct: blocks=... is for method='brecq'")
        return layers
    if blocks is None:
        return find_blocks(qmodel)
    if isinstance(blocks, str):
        blocks = [blocks]
    names = list(blocks)
    covered: dict[str, str] = {}
    for b in names:
        if not isinstance(b, str):
            raise OmpqTypeError(f"reconstruct: block names must be strings, got {b!r}")
        try:
            module = qmodel.get_submodule(b)
        except AttributeError:
            raise OmpqValueError(f"reconstruct: block {b!r} is not a submodule of the model") from None
        inside = quant_layers(module, b)
        if not inside:
            raise OmpqValueError(f"reconstruct: block {b!r} holds no QuantLayer")
        for lname, _ in inside:
            if lname in covered:
                raise OmpqValueError(f"reconstruct: layer {lname!r} is in two blocks, {covered[lname]!r} and {b!r}")
            covered[lname] = b
    # Layers outside every given block are reconstructed alone.
    return names + [name for name in layers if name not in covered]


def _tied_layers(qmodel: nn.Module) -> set[str]:
    """QuantLayers whose weight or weight quantizer is shared with another QuantLayer."""
    layers = quant_layers(qmodel, "")
    uses: dict[int, int] = {}
    for _, ql in layers:
        for key in {id(ql.layer.weight), id(ql.weight_quantizer)}:
            uses[key] = uses.get(key, 0) + 1
    return {name for name, ql in layers if uses[id(ql.layer.weight)] > 1 or uses[id(ql.weight_quantizer)] > 1}


@torch.no_grad()
def _capture(model: nn.Module, name: str, args, kwargs, n: int, chunk: int, want: str):
    """Inputs ((args, kwargs) of the call) or the output of submodule ``name`` over all n samples.

    Runs the model in chunks of ``chunk`` samples and stops each forward as soon as the module has run.
    """
    module = model.get_submodule(name)
    parts, sizes = [], []
    for start in range(0, n, chunk):
        idx = torch.arange(start, min(start + chunk, n))
        box: dict[str, Any] = {}

        def pre(_m, a, kw, box=box):
            if want == "input":
                box["value"] = _detach_clone((a, kw))
                raise StopForward

        def post(_m, _a, _kw, out, box=box):
            box["value"] = _detach_clone(out)
            raise StopForward

        h1 = module.register_forward_pre_hook(pre, with_kwargs=True)
        h2 = module.register_forward_hook(post, with_kwargs=True)
        try:
            model(*select_samples(args, idx, n), **select_samples(kwargs, idx, n))
        except StopForward:
            pass
        finally:
            h1.remove()
            h2.remove()
        if "value" not in box:
            raise OmpqValueError(f"reconstruct: module {name!r} did not run in the forward pass")
        parts.append(box["value"])
        sizes.append(len(idx))
    return join_samples(parts, sizes, strict=False)


def _rec_loss(out, target) -> Tensor:
    """BRECQ's reconstruction loss: squared error summed over dim 1 (channels/features), mean over the rest."""
    total = 0.0
    for o, t in zip(tensors(out), tensors(target)):
        d = (o.float() - t.float()).square()
        total = total + (d.sum(1).mean() if d.dim() > 1 else d.mean())
    return total


def _mse(out, target) -> float:
    total = 0.0
    for o, t in zip(tensors(out), tensors(target)):
        total += (o.float() - t.float()).square().mean().item()
    return total


@torch.no_grad()
def _unit_mse(module, inp, target, n: int, chunk: int) -> float:
    # Chunked forward of the unit; mean of the squared error over all samples.
    sq = 0.0
    for start in range(0, n, chunk):
        idx = torch.arange(start, min(start + chunk, n))
        a, kw = select_samples(inp, idx, n)
        sq += _mse(module(*a, **kw), select_samples(target, idx, n)) * len(idx)
    return sq / n


# --------------------------------------------------------------------------- reconstruct


def reconstruct(
    qmodel: nn.Module,
    fp_model: nn.Module,
    inputs,
    *,
    method: str,
    iters: int = 500,
    reg_weight: float = 0.01,
    batch_size: int = 32,
    lr: float = 1e-2,
    warmup: float = 0.2,
    beta_range: tuple[float, float] = (20.0, 2.0),
    blocks: list[str] | None = None,
    chunk_size: int = 256,
    keep_best: bool = True,
    progress: bool | None = None,
    records: list | None = None,
) -> None:
    """Learn the weight rounding of ``qmodel``'s QuantLayers, in place.

    Parameters
    ----------
    qmodel : the quantized model (QuantLayers with calibrated input quantizers), changed in place.
    fp_model : the float model it was made from (same module names); not changed.
    inputs : ``(args, kwargs)`` of one model call over the N calibration samples (dim 0 = samples),
        or one tensor.
    method : ``"adaround"`` (layer by layer) or ``"brecq"`` (block by block, blocks from
        :func:`find_blocks` or ``blocks``; QuantLayers outside the given blocks go alone).
    iters : Adam steps per layer/block. The default 500 suits a CPU library and small models; the
        papers use 10 000 (AdaRound) to 20 000 (BRECQ) — more steps help large models a little.
    reg_weight : weight of the rounding regulariser Σ(1 − |2h − 1|^β) against the reconstruction
        loss (squared error summed over channels, mean over samples and positions, as in BRECQ).
    batch_size : samples per step (drawn with torch's global RNG: results are deterministic given
        ``torch.manual_seed``). N must be at least ``batch_size``.
    lr : Adam learning rate of V. warmup : fraction of iters without the regulariser.
    beta_range : β is annealed linearly from beta_range[0] to beta_range[1] after the warm-up.
    chunk_size : samples per forward when inputs/outputs are captured (bounds peak memory; only one
        layer's/block's inputs and outputs are held at a time).
    keep_best : if the learned rounding of a unit has a larger calibration MSE than the
        round-to-nearest it started from, keep round-to-nearest for that unit.
    progress : show a tqdm bar (None: when stderr is a terminal).
    records : if a list, one dict per layer/block is appended (name, layers, mse_before, mse_after,
        kept, seconds).

    After each unit the learned hard rounding is baked into the layer's float weight and the
    ordinary WeightQuantizer is restored (see the module docstring).
    """
    if method not in METHODS:
        raise OmpqValueError(f"reconstruct: method must be one of {METHODS}, got {method!r}")
    if not isinstance(qmodel, nn.Module) or not isinstance(fp_model, nn.Module):
        raise OmpqTypeError("reconstruct: qmodel and fp_model must be torch modules")
    if qmodel is fp_model:
        raise OmpqValueError("reconstruct: fp_model must be the float model, not the quantized model itself "
                             "(keep a copy of the float model when quantizing in place)")
    for name, value in (("iters", iters), ("batch_size", batch_size), ("chunk_size", chunk_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise OmpqValueError(f"reconstruct: {name} must be a positive integer, got {value!r}")
    if not (reg_weight >= 0 and lr > 0 and 0 <= warmup < 1):
        raise OmpqValueError("reconstruct: need reg_weight >= 0, lr > 0 and 0 <= warmup < 1")
    args, kwargs, n = _normalise_inputs(inputs)
    if n < batch_size:
        raise OmpqValueError(f"reconstruct: the calibration inputs hold {n} samples, fewer than "
                             f"batch_size={batch_size}; give more samples or a smaller batch_size")
    units = _units(qmodel, method, blocks)
    for u in units:
        try:
            fp_model.get_submodule(u)
        except AttributeError:
            raise OmpqValueError(f"reconstruct: fp_model has no module {u!r}; pass the float model that "
                                 f"qmodel was quantized from") from None

    modes = {m: m.training for m in (*qmodel.modules(), *fp_model.modules())}
    qmodel.eval()
    fp_model.eval()
    try:
        probe = torch.arange(min(n, batch_size))
        order, counts = call_order(qmodel, units, select_samples(args, probe, n), select_samples(kwargs, probe, n))
        for u in units:
            if counts[u] == 0:
                warnings.warn(f"reconstruct: {u!r} does not run in the forward pass; left at round-to-nearest",
                              stacklevel=user_stacklevel())
            elif counts[u] > 1:
                warnings.warn(f"reconstruct: {u!r} runs {counts[u]} times per forward (shared weights); left at "
                              f"round-to-nearest", stacklevel=user_stacklevel())
        order = [u for u in order if counts[u] == 1]
        tied = _tied_layers(qmodel)
        if tied:
            warnings.warn(f"reconstruct: {', '.join(sorted(tied))} share weights or weight quantizers with other "
                          f"layers; left at round-to-nearest", stacklevel=user_stacklevel())
        with progress_bar(len(order) * iters, f"ompq: {method}", "step", progress, leave=True) as bar:
            for u in order:
                rec = _reconstruct_unit(qmodel, fp_model, u, args, kwargs, n, iters=iters, reg_weight=reg_weight,
                                        batch_size=batch_size, lr=lr, warmup=warmup, beta_range=beta_range,
                                        chunk=chunk_size, keep_best=keep_best, bar=bar, skip=tied)
                if records is not None:
                    records.append(rec)
    finally:
        for m, training in modes.items():
            m.training = training


def _reconstruct_unit(qmodel, fp_model, name, args, kwargs, n, *, iters, reg_weight, batch_size, lr, warmup,
                      beta_range, chunk, keep_best, bar, skip) -> dict:
    t0 = time.perf_counter()
    module = qmodel.get_submodule(name)
    layers = [(ln, ql) for ln, ql in quant_layers(module, name) if ln not in skip]
    if not layers:
        bar.update(iters)
        return {"name": name, "layers": [], "mse_before": math.nan, "mse_after": math.nan, "kept": "skipped",
                "seconds": 0.0}
    target = _capture(fp_model, name, args, kwargs, n, chunk, "output")
    inp = _capture(qmodel, name, args, kwargs, n, chunk, "input")
    mse_before = _unit_mse(module, inp, target, n, chunk)

    originals = []
    for lname, ql in layers:
        wq = ql.weight_quantizer
        if not isinstance(wq, WeightQuantizer):
            raise OmpqTypeError(f"reconstruct: layer {lname!r} has a {type(wq).__name__} weight quantizer; "
                                f"reconstruction needs the per-channel WeightQuantizer")
        originals.append((ql, wq, ql.layer.weight.detach().clone()))
        ql.weight_quantizer = AdaRoundQuantizer(ql.layer.weight, wq.scale, wq.bits, wq.axis, wq.group_size)
    quantizers = [ql.weight_quantizer for ql, _, _ in originals]
    params = [q.V for q in quantizers]
    # Only V learns: freeze everything else in the unit for the duration.
    frozen = [p for p in module.parameters() if p.requires_grad and all(p is not v for v in params)]
    for p in frozen:
        p.requires_grad_(False)
    try:
        opt = torch.optim.Adam(params, lr=lr)
        for step in range(iters):
            idx = torch.randperm(n)[:batch_size]
            a, kw = select_samples(inp, idx, n)
            loss = _rec_loss(module(*a, **kw), select_samples(target, idx, n))
            beta = beta_schedule(step, iters, warmup, beta_range)
            if beta is not None and reg_weight > 0:
                loss = loss + reg_weight * sum(q.regularizer(beta) for q in quantizers)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1)
            if step % 50 == 0 or step == iters - 1:
                bar.set_postfix_str(f"{name or '<root>'} loss={loss.item():.4g}", refresh=False)
    finally:
        for p in frozen:
            p.requires_grad_(True)

    with torch.no_grad():
        for (ql, wq, _), q in zip(originals, quantizers):
            q.hard = True
            baked = (q.integers(ql.layer.weight) * q.channel_scale(ql.layer.weight)).to(ql.layer.weight.dtype)
            ql.layer.weight.copy_(baked)
            ql.weight_quantizer = wq
        mse_after = _unit_mse(module, inp, target, n, chunk)
        kept = "learned"
        if keep_best and mse_after > mse_before:
            # Round-to-nearest did better on the calibration data: bake that instead.
            for ql, wq, w in originals:
                ql.layer.weight.copy_(wq(w))
            kept, mse_after = "nearest", _unit_mse(module, inp, target, n, chunk)
    return {"name": name, "layers": [ln for ln, _ in layers], "mse_before": mse_before, "mse_after": mse_after,
            "kept": kept, "seconds": time.perf_counter() - t0}
