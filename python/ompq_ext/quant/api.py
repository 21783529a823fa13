"""``quantize(model, plan, calib, config)``: a fake-quant copy of a model at a plan's bits, and
``quant_report(qmodel)``: its real size and BOPs.

Every planned layer called as a module is replaced, at its qualified name, by a ``QuantLayer`` that
keeps the float weight and fake-quantizes it per output channel at the planned bits (and its input per
tensor at the activation bits); a weight used outside its module's call is fake-quantized by a
parametrization, and the inputs of the ops that consume it by ``op_inputs.py``. Input quantizers are calibrated by one forward pass over
``num_calib`` samples; ``AdaRoundConfig`` / ``BRECQConfig`` (``configs.py``) then learn the
rounding on the same samples (``quant/reconstruct.py``). The result trains with ordinary PyTorch loops (QAT):
gradients reach the float weights (straight-through) and the quantizer scales (LSQ).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import OmpqError, OmpqTypeError, OmpqValueError, user_stacklevel
from ..guard import lent, untouched
from ..inputs import call_model, gather_samples
from ..progress import progress_bar, show_progress
from ..layers import weight_owner
from ..record import Plan
from .configs import CONFIGS, NUM_CALIB, RTNConfig, as_config, make_config
from .modules import ActQuantizer, FunctionalWeightQuantizer, QuantLayer, quantized_weights
from .op_inputs import quantize_op_inputs
from .padding import padding_mask

METHODS = tuple(CONFIGS)
RECONSTRUCTION_METHODS = ("adaround", "brecq")
CALIBRATED_METHODS = ("gptq", *RECONSTRUCTION_METHODS)  # the recipes that need calibration data


# ---------------------------------------------------------------- helpers


@dataclass
class QuantRecipe:
    """How ``quantize()`` made a model, kept on it as ``qmodel.ompq_recipe`` for the exports: the plan and the
    options that shape its quantizers (the rounding recipe is in the weights)."""

    plan: Plan
    act_bits: int | None  # quantize()'s act_bits (None: the plan's)
    act_calib: str
    group_size: int | None


def _as_plan(plan):
    if isinstance(plan, Plan):
        return plan
    if isinstance(plan, (str, Path)):
        return Plan.load(plan)
    raise OmpqTypeError(
        f"plan must be an ompq_ext.Plan (from ompq_ext.plan(...)) or the path of a saved plan, got {type(plan).__name__}"
    )


def _resolve_act_bits(act_bits, plan) -> int | None:
    """None -> the plan's activation bits; 0 / False -> weights only. 32 bits means float activations."""
    if act_bits is None:
        act_bits = plan.settings.act_bits
        where = "the plan's settings['act_bits']"
    else:
        where = "act_bits"
    if act_bits is False or (type(act_bits) is int and act_bits == 0):
        return None
    if isinstance(act_bits, bool) or not isinstance(act_bits, int):
        raise OmpqValueError(f"{where} must be an integer in 2..16, 32 (float) or 0 (weights only), got {act_bits!r}")
    if act_bits == 32:
        return None
    if not 2 <= act_bits <= 16:
        raise OmpqValueError(f"{where} must be an integer in 2..16, 32 (float) or 0 (weights only), got {act_bits!r}")
    return act_bits


def _layer_act_bits(act_bits, plan) -> dict[str, int | None]:
    """Each planned layer's input bits (None: float): ``act_bits`` for all where given, else the plan's
    (its per-layer choices where it made them)."""
    if act_bits is not None:
        act = _resolve_act_bits(act_bits, plan)
        return {x.name: act for x in plan.layers}
    fixed = plan.settings.act_bits
    default = _resolve_act_bits(fixed, plan) if isinstance(fixed, int) else None
    return {x.name: _resolve_act_bits(x.act_bits, plan) if x.act_bits is not None else default for x in plan.layers}


def _gather(calib, num_calib, input_fn):
    """At most ``num_calib`` samples (None: NUM_CALIB); fewer if that is all ``calib`` has, with a
    warning when the caller chose ``num_calib``."""
    return gather_samples(calib, num_calib or NUM_CALIB, input_fn, loader_name="calib", count_name="num_calib",
                          min_samples=2, warn=num_calib is not None)


# torch's fused transformer kernels read the weights directly and would skip the quantized layers' own calls.
_FUSED = (nn.TransformerEncoder, nn.TransformerEncoderLayer, nn.TransformerDecoder, nn.TransformerDecoderLayer)


def _occurrences(model: nn.Module) -> dict[int, list[tuple[nn.Module, str]]]:
    """id(module) -> every (parent, attribute name) that holds it; a module registered under
    two names (shared) is listed twice, and every place gets the same wrapper."""
    out: dict[int, list[tuple[nn.Module, str]]] = {}
    for parent in model.modules():
        for child_name, child in parent._modules.items():
            if child is not None:
                out.setdefault(id(child), []).append((parent, child_name))
    return out


# ---------------------------------------------------------------- calibration


def _calibrate_on(qmodel: nn.Module, args, kwargs, show: bool, mask_padding: bool = True) -> None:
    """One forward pass with every input quantizer observing, then each picks its range. The input
    quantizer of a weight used outside its module's call that was read but whose op was not recognised
    (``quant/op_inputs.py``) is removed, with a warning: those inputs stay in float."""
    weights, seen_quantizers = [], set()
    for qw in quantized_weights(qmodel):
        if qw.input_quantizer is not None and id(qw.input_quantizer) not in seen_quantizers:
            seen_quantizers.add(id(qw.input_quantizer))
            weights.append(qw)
    if not weights:
        return
    with progress_bar(len(weights), "ompq: calibration", "layer", show) as bar:
        with untouched(qmodel), torch.no_grad():
            try:
                for qw in weights:
                    qw.input_quantizer.reset()
                    qw.input_quantizer.observing = True
                    if isinstance(qw.weight_quantizer, FunctionalWeightQuantizer):
                        qw.weight_quantizer.reads = 0
                qmodel.eval()
                with padding_mask(args, kwargs, mask_padding):
                    call_model(qmodel, args, kwargs, samples="the calibration", error=OmpqError)
            finally:
                for qw in weights:
                    qw.input_quantizer.observing = False
        silent, unseen, partly = [], [], []
        for qw in weights:
            q = qw.input_quantizer
            if q.has_data:
                if q.nonfinite:
                    partly.append(f"{qw.name} ({q.nonfinite:,})")
                try:
                    q.finalize()
                except OmpqValueError as e:
                    raise OmpqValueError(f"the input quantizer of layer {qw.name!r}: {e}") from None
            elif isinstance(qw.weight_quantizer, FunctionalWeightQuantizer) and qw.weight_quantizer.reads:
                unseen.append(qw)
            else:
                silent.append(qw.name)
            bar.update(1)
        if silent:
            raise OmpqValueError(
                f"{len(silent)} quantized layer(s) never ran in the calibration pass, so their input ranges are "
                f"unknown: {', '.join(silent[:8])}{', ...' if len(silent) > 8 else ''}; give calib data that "
                f"reaches every planned layer"
            )
        if partly:
            warnings.warn(f"{len(partly)} quantized layer(s) got NaN or infinite inputs in the calibration pass, left "
                          f"out of their ranges: {', '.join(partly[:8])}{', ...' if len(partly) > 8 else ''}",
                          stacklevel=user_stacklevel())
        for qw in unseen:
            qw.weight_quantizer.input_quantizer = None
        if unseen:
            names = [qw.name for qw in unseen]
            warnings.warn(f"{len(names)} weight(s) reach their ops in a way ompq_ext does not follow, so their inputs "
                          f"stay in float (quant_report counts 32-bit activations for them): "
                          f"{', '.join(names[:8])}{', ...' if len(names) > 8 else ''}", stacklevel=user_stacklevel())


def calibrate(qmodel: nn.Module, calib, num_calib: int | None = None, *, input_fn=None, mask_padding: bool = True,
              progress=None) -> nn.Module:
    """Calibrate (again) the input quantizers of a quantized model on at most ``num_calib`` (None: 256) samples of
    ``calib`` (a DataLoader, a list of batches or a tensor; ``input_fn`` turns a batch into model
    inputs), in one forward pass. Earlier statistics are forgotten. ``mask_padding``: leave out the padded
    positions of batches that carry an ``attention_mask`` (``quant/padding.py``). Buffers (BatchNorm running
    statistics) and train/eval flags are left as they were. Returns ``qmodel``."""
    if not isinstance(qmodel, nn.Module):
        raise OmpqTypeError(f"qmodel must be a torch.nn.Module, got {type(qmodel).__name__}")
    if not quantized_weights(qmodel):
        raise OmpqValueError("the model has no quantized layers; make it with ompq_ext.quantize(model, plan, ...)")
    if calib is None:
        raise OmpqValueError("calibrate needs calib data: a DataLoader, a list of batches or a tensor of inputs")
    args, kwargs = _gather(calib, num_calib, input_fn)
    _calibrate_on(qmodel, args, kwargs, show_progress(progress), mask_padding)
    return qmodel


# ---------------------------------------------------------------- quantize


def quantize(
    model: nn.Module,
    plan,
    calib=None,
    config: RTNConfig | None = None,
    *,
    method: str | None = None,
    weight_scale: str | None = None,
    group_size: int | None = None,
    act_bits: int | None = None,
    act_calib: str | None = None,
    num_calib: int | None = None,
    mask_padding: bool | None = None,
    input_fn=None,
    inplace: bool = False,
    progress: bool | None = None,
    records: list | None = None,
    **reconstruction_options,
) -> nn.Module:
    """A fake-quantized copy of ``model`` at the bits of ``plan``, calibrated on ``calib``.

    plan: an ``ompq_ext.Plan`` or the path of a saved one; it must match the model (every planned
        layer present with the same weight size), else PlanFileError names the missing layers.
    calib: a DataLoader, a list of batches or a tensor; up to ``num_calib`` samples are drawn and run
        through the model together (``input_fn`` turns a batch into model inputs). Needed when
        activations are quantized, for GPTQ and for reconstruction.
    config: the recipe, ``RTNConfig`` (the default), ``GPTQConfig``, ``AdaRoundConfig`` or ``BRECQConfig``
        (``ompq_ext.quant.configs``). Or give it as keywords, a shorthand for the same configs:
    method: "rtn" (round to nearest), "gptq" (each layer's rounding error fed forward through its
        inputs' inverse second moment; ``damp=``, ``block_size=``, ``act_order=``), or "adaround" /
        "brecq" (learned rounding, layer-wise or block-wise; ``reconstruction_options`` such as
        ``iters=`` and ``reg_weight=`` are the fields of the config classes, passed to
        ``ompq_ext.quant.gptq.gptq`` / ``ompq_ext.quant.reconstruct.reconstruct``).
    weight_scale: "minmax" or "mse" (default) scales for the symmetric weight grid, one per output channel,
        or per group of ``group_size`` input columns (default: the plan's ``group_size``).
    act_bits: activation bits for every layer's input, default the plan's (8, or each layer's where the
        plan chose them); 0 or False quantizes weights only.
    act_calib: "minmax", "percentile", "mse" (default) range for the per-tensor input quantizers, or
        "dynamic" (per token at run time, for the inputs of linear layers; convolutions keep "mse");
        inputs that are never negative (after a ReLU) get the unsigned grid.
    num_calib: at most this many samples (default 256; a calib with fewer gives all it has, with a warning
        when num_calib was given). mask_padding: leave the padded positions of batches with an
        ``attention_mask`` out of the ranges and of GPTQ's moments (default True).
    inplace: modify and return ``model`` itself instead of a copy (if this raises part way, the
        model may be left partly quantized). Otherwise ``model`` is left exactly as it was.
    records: a list that GPTQ or reconstruction appends one dict per layer/block to (errors before and after).

    The result is in eval mode. Call ``quant_report`` on it for its size and BOPs.
    """
    if not isinstance(model, nn.Module):
        raise OmpqTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    keywords = {k: v for k, v in dict(weight_scale=weight_scale, group_size=group_size, act_bits=act_bits,
                                      act_calib=act_calib, num_calib=num_calib, mask_padding=mask_padding,
                                      **reconstruction_options).items() if v is not None}
    if config is None:
        config = make_config(method or "rtn", **keywords)
    elif method is not None or keywords:
        raise OmpqValueError("give the recipe either as config=... or as keywords (method=, act_bits=, ...), "
                             "not both")
    config = as_config(config)
    if records is not None and config.method not in CALIBRATED_METHODS:
        raise OmpqValueError(f"records collects what reconstruction did; method={config.method!r} reconstructs "
                             f"nothing (use 'gptq', 'adaround' or 'brecq')")
    plan = _as_plan(plan)
    acts = _layer_act_bits(config.act_bits, plan)  # layer -> activation bits (None: float)
    act = next((a for a in acts.values() if a is not None), None)  # any quantized input: calibration needed
    group_size = config.group_size if config.group_size is not None else plan.settings.group_size
    reconstructing = config.method in RECONSTRUCTION_METHODS
    calibrated = config.method in CALIBRATED_METHODS
    if calib is None and (act is not None or calibrated):
        need = "activation calibration" if act is not None else f"method={config.method!r}"
        raise OmpqValueError(
            f"{need} needs calibration data: pass calib= (a DataLoader, a list of batches or a tensor of "
            f"inputs, up to {config.num_calib or NUM_CALIB} samples)"
            + (", or act_bits=0 to quantize the weights only" if act is not None and not calibrated else "")
        )
    plan.check_model(model)
    if any(layer.name == "" for layer in plan.layers):
        raise OmpqValueError("the plan names the model itself as a layer; wrap the model in a container module")
    show = show_progress(progress)
    inputs = _gather(calib, config.num_calib, input_fn) if (act is not None or calibrated) else None

    if inplace:
        fp_model = copy.deepcopy(model) if reconstructing else None
        qmodel = model
    else:
        fp_model = model
        try:
            qmodel = copy.deepcopy(model)
        except Exception as e:
            raise OmpqError(
                f"cannot copy the model ({type(e).__name__}: {e}); pass inplace=True to quantize it in place"
            ) from e

    wrappers, functional = _wrap(qmodel, plan, config, acts, group_size)
    qmodel.eval()
    if act is not None:
        _calibrate_on(qmodel, *inputs, show, config.mask_padding)
    if config.method == "gptq":
        from .gptq import gptq

        _warn_outside(functional, "gptq")
        gptq(qmodel, inputs, progress=show, records=records, mask_padding=config.mask_padding,
             **config.reconstruction_options())
        qmodel.eval()
    if reconstructing:
        try:
            from .reconstruct import reconstruct
        except ImportError as e:
            raise OmpqError(f"method={config.method!r} needs ompq_ext.quant.reconstruct, which failed to import: {e}") from e
        _warn_outside(functional, config.method)
        if wrappers:
            with lent(fp_model):
                fp_model.eval()
                reconstruct(qmodel, fp_model, inputs, method=config.method, progress=show, records=records,
                            **config.reconstruction_options())
        qmodel.eval()
    # What the exports need to build the same quantizers again (ompq_ext.export).
    qmodel.ompq_recipe = QuantRecipe(plan, config.act_bits, config.act_calib, group_size)
    return qmodel


def _wrap(qmodel: nn.Module, plan: Plan, config, acts: dict, group_size) -> tuple[list, list]:
    """Put the quantizers of ``plan`` into ``qmodel`` (uncalibrated): a QuantLayer in place of every planned
    layer called as a module, a parametrization on every other planned weight. Returns (wrappers, functional)."""
    # Build every wrapper first (a bad bit-width fails before the model is touched), then swap.
    modules = dict(qmodel.named_modules())
    places = _occurrences(qmodel)
    wrappers: list[tuple[nn.Module, QuantLayer]] = []
    functional: list[tuple[nn.Module, str, FunctionalWeightQuantizer]] = []
    shared: dict[int, object] = {}  # id(weight) -> weight quantizer of tied layers
    for layer in plan.layers:
        owner, attr = weight_owner(qmodel, layer.name)
        if layer.functional or attr != "weight":
            weight = getattr(owner, attr)
            q = shared.get(id(weight))  # a weight also used by a wrapped layer (a tied embedding): one quantizer
            if q is None:
                try:
                    input_quantizer = (ActQuantizer(acts[layer.name], config.act_calib).to(weight.device)
                                       if acts[layer.name] is not None and layer.kind != "Embedding" else None)  # ids stay ids
                    q = FunctionalWeightQuantizer(weight, layer.bits, config.weight_scale, axis=layer.channel_axis,
                                                  name=layer.name, kind=layer.kind, macs=layer.macs,
                                                  input_quantizer=input_quantizer, group_size=group_size)
                except OmpqError as e:
                    raise type(e)(f"layer {layer.name!r}: {e}") from None
                shared[id(weight)] = q
            functional.append((owner, attr, q))
            continue
        module = modules[layer.name]
        try:
            ql = QuantLayer(module, layer.bits, acts[layer.name], weight_scale_method=config.weight_scale,
                            act_method=config.act_calib, name=layer.name, macs=layer.macs,
                            channel_axis=layer.channel_axis, group_size=group_size)
        except OmpqError as e:
            raise type(e)(f"layer {layer.name!r}: {e}") from None
        wq = shared.setdefault(id(module.weight), ql.weight_quantizer)
        if wq is not ql.weight_quantizer:  # a weight shared with an earlier layer: one scale for both
            if getattr(wq, "bits", layer.bits) != layer.bits:
                raise OmpqValueError(
                    f"layer {layer.name!r} shares its weight with another planned layer at different bits "
                    f"({layer.bits} vs {wq.bits}); tied layers must share bits"
                )
            ql.weight_quantizer = wq
        wrappers.append((module, ql))
    for module, ql in wrappers:
        for parent, child_name in places[id(module)]:
            setattr(parent, child_name, ql)
    for owner, attr, q in functional:
        parametrize.register_parametrization(owner, attr, q)
    fused = [m for m in qmodel.modules() if isinstance(m, _FUSED) and any(isinstance(x, QuantLayer) for x in m.modules())]
    quantize_op_inputs(qmodel, [owner for owner, _, q in functional if getattr(q, "input_quantizer", None)], fused)

    return wrappers, functional


def _warn_outside(functional, method: str) -> None:
    outside = [q.name for _, _, q in functional if isinstance(q, FunctionalWeightQuantizer)]
    if outside:
        warnings.warn(f"{method}: {len(outside)} weight(s) used outside their module's call are left at "
                      f"round-to-nearest ({method} rounds the weights of wrapped layers): "
                      f"{', '.join(outside[:8])}{', ...' if len(outside) > 8 else ''}", stacklevel=user_stacklevel())


# ---------------------------------------------------------------- report


def quant_report(qmodel: nn.Module, scale_bits: int = 16) -> dict:
    """The real size and BOPs of a quantized model.

    Size counts every parameter of the model once (a shared tensor once): the weights of
    quantized layers at their bits, every other parameter (biases, norms, layers left in
    float) at 32 bits, and the quantizers' own parameters (weight scales, one per output
    channel or group; activation scales, one per layer) at ``scale_bits`` (16: stored as float16),
    since a deployed model needs them. Buffers are not counted.

    Keys: ``size_bits`` / ``size_bytes`` / ``size_mib`` (MiB = 2^20 bytes), all of the above, which
    equals ``plan.totals["size_bits"]`` for the model the plan was made from, quantized at the plan's
    activation bits and group size and counted with the plan's ``scale_bits``;
    ``quantizer_params`` and ``quantizer_bits`` (``scale_bits`` each), the scales' share;
    ``weight_bits``: the size without them; ``fp32_size_bytes``
    (the float model: every parameter but the quantizers' at 32 bits); ``avg_bits`` over the
    quantized weights; ``quantized_params``, ``other_params``; ``bops`` per sample
    = sum over quantized layers of MACs per sample x weight bits x activation bits (32 where a
    layer's input is not quantized: ``act_bits=0``, or a weight whose ops quantize() could not follow,
    named in a warning), which equals ``plan.totals["bops"]`` when the activation bits are the plan's
    and every planned weight's inputs are quantized; ``layers``, one dict per quantized layer.
    """
    if not isinstance(qmodel, nn.Module):
        raise OmpqTypeError(f"qmodel must be a torch.nn.Module, got {type(qmodel).__name__}")
    if isinstance(scale_bits, bool) or scale_bits not in (0, 16, 32):
        raise OmpqValueError(f"scale_bits must be 16 (float16 scales), 32 or 0 (not counted), got {scale_bits!r}")
    qweights = quantized_weights(qmodel)
    if not qweights:
        raise OmpqValueError("the model has no quantized layers; make it with ompq_ext.quantize(model, plan, ...)")
    weight_bits: dict[int, int] = {}
    quantizer_ids: set[int] = set()
    rows = []
    bops = 0
    for qw in qweights:
        name, weight, bits = qw.name, qw.weight, qw.bits
        if weight_bits.get(id(weight), bits) != bits:
            raise OmpqValueError(f"layer {name!r} shares its weight with a layer at other bits; the size is ambiguous")
        weight_bits[id(weight)] = bits
        for q in (qw.weight_quantizer, qw.input_quantizer):
            if q is not None:
                quantizer_ids.update(id(p) for p in q.parameters())
        iq = qw.input_quantizer
        act = int(iq.bits) if iq is not None else 32
        layer_bops = qw.macs * bits * act
        bops += layer_bops
        rows.append({
            "name": name, "kind": qw.kind, "params": weight.numel(), "macs": qw.macs,
            "weight_bits": bits, "act_bits": act,
            "act_signed": (bool(iq.signed) if iq.calibrated else None) if iq is not None else None,
            "size_bits": weight.numel() * bits, "bops": layer_bops,
        })
    quantized = other = quantizer = quantized_bits = 0
    for p in qmodel.parameters():  # each shared tensor once
        if id(p) in weight_bits:
            quantized += p.numel()
            quantized_bits += p.numel() * weight_bits[id(p)]
        elif id(p) in quantizer_ids:
            quantizer += p.numel()
        else:
            other += p.numel()
    weights_and_others = quantized_bits + 32 * other
    size_bits = weights_and_others + scale_bits * quantizer
    fp32_bytes = 4 * (quantized + other)
    return {
        "size_bits": size_bits,
        "size_bytes": size_bits / 8,
        "size_mib": size_bits / 8 / 2**20,
        "weight_bits": weights_and_others,
        "quantizer_params": quantizer,
        "quantizer_bits": scale_bits * quantizer,
        "scale_bits": scale_bits,
        "fp32_size_bytes": fp32_bytes,
        "fp32_size_mib": fp32_bytes / 2**20,
        "compression": fp32_bytes * 8 / size_bits,
        "avg_bits": quantized_bits / quantized,
        "quantized_params": quantized,
        "other_params": other,
        "bops": bops,
        "units": {"size": "bits, bytes, MiB (2^20 bytes)", "bops": "per sample: MACs x weight bits x activation bits"},
        "layers": rows,
    }
