"""Packed integer weights in safetensors: ``save_packed(qmodel, path)`` / ``load_packed(model, path)``.

Each quantized weight is stored as its integers packed at their bits (b bits per value, little-endian
bit order, values offset to be non-negative) with its scales (float32); every other entry of the
quantized model's state (biases, norms, buffers, activation scales) as it is. The file's metadata holds
the plan and the quantizers' settings, so ``load_packed`` rebuilds the same quantized model from the
float architecture: its outputs equal the saved model's bit for bit (the weights come back as
integer x scale, which its quantizers map to themselves).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import OmpqError, OmpqTypeError, OmpqValueError, PlanFileError
from ..quant.api import QuantRecipe, _layer_act_bits, _wrap
from ..quant.configs import make_config
from ..quant.modules import ActQuantizer, WeightQuantizer, quantized_weights
from ..quant.ops import quant_range
from ..record import Plan

FORMAT = "ompq_ext.packed"
VERSION = 1


def _safetensors():
    try:
        import safetensors.torch  # noqa: F401
    except ImportError:
        raise OmpqError("packed export needs safetensors, which is not installed: pip install 'ompq_ext[export]' "
                        "(or pip install safetensors)") from None
    return safetensors


def recipe_of(qmodel) -> QuantRecipe:
    """The recipe quantize() left on ``qmodel``, or an OmpqError saying it was not made by quantize()."""
    if not isinstance(qmodel, nn.Module):
        raise OmpqTypeError(f"qmodel must be a torch.nn.Module made by ompq_ext.quantize(), got {type(qmodel).__name__}")
    recipe = getattr(qmodel, "ompq_recipe", None)
    if not isinstance(recipe, QuantRecipe) or not quantized_weights(qmodel):
        raise OmpqValueError("this model was not quantized by ompq_ext.quantize() (it has no ompq_recipe or no "
                             "quantized weights); export the model quantize() returned")
    return recipe


def pack(values: np.ndarray, bits: int) -> np.ndarray:
    """Non-negative integers below 2**bits, ``bits`` bits each, into bytes (little-endian bit order)."""
    values = np.ascontiguousarray(values, dtype=np.uint16).reshape(-1)
    if bits == 8:
        return values.astype(np.uint8)
    planes = (values[:, None] >> np.arange(bits, dtype=np.uint16)) & 1
    return np.packbits(planes.astype(np.uint8).reshape(-1), bitorder="little")


def unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The inverse of ``pack``: ``count`` integers of ``bits`` bits (uint16)."""
    if bits == 8:
        return packed[:count].astype(np.uint16)
    planes = np.unpackbits(packed, count=count * bits, bitorder="little").reshape(count, bits).astype(np.uint16)
    return (planes << np.arange(bits, dtype=np.uint16)).sum(axis=1, dtype=np.uint16)


def scales_like(quantizer: WeightQuantizer, shape) -> torch.Tensor:
    """Every weight's scale (its channel's or its group's), float32, in the weight's ``shape``."""
    moved = [shape[quantizer.axis], *(n for k, n in enumerate(shape) if k != quantizer.axis)]
    columns = int(np.prod(moved[1:], dtype=np.int64))
    scales = quantizer.column_scales(moved[0], columns).float()
    return scales.reshape(moved).movedim(0, quantizer.axis)


def integers(weight: torch.Tensor, quantizer: WeightQuantizer) -> tuple[torch.Tensor, torch.Tensor]:
    """(signed integers, scales) of a quantized weight: its quantized values divided by their scales, checked
    to lie exactly on the grid (integer x scale gives the quantized weight back bit for bit)."""
    with torch.no_grad():
        quantized = WeightQuantizer.forward(quantizer, weight).float()
        scales = scales_like(quantizer, quantized.shape)
        q = torch.round(quantized / scales)
        if not torch.equal(q * scales, quantized):
            raise OmpqError("internal error: a quantized weight is not on its quantizer's grid")
    return q, quantizer.scale.detach()


def save_packed(qmodel: nn.Module, path) -> Path:
    """Write ``qmodel`` (from ``ompq_ext.quantize``) with its weights packed at their bits; returns the path."""
    save_file = _safetensors().torch.save_file
    recipe = recipe_of(qmodel)
    state = qmodel.state_dict(keep_vars=True)
    key_of, aliases = {}, {}  # a tensor held under several keys (tied weights) is stored once
    for k, t in state.items():
        if id(t) in key_of:
            aliases[k] = key_of[id(t)]
        else:
            key_of[id(t)] = k
    tensors, weights = {}, {}
    skip = set()
    tied = set(aliases.values())
    for w in quantized_weights(qmodel):
        if id(w.weight) not in key_of:
            raise OmpqValueError(f"save_packed: layer {w.name!r} computes its weight through a parametrization "
                                 f"(weight_norm, ...); remove it first (torch.nn.utils.parametrize."
                                 f"remove_parametrizations) and quantize again")
        q, scales = integers(w.weight, w.weight_quantizer)
        lo = quant_range(w.bits, True)[0]
        key = key_of[id(w.weight)]
        # A weight tied to another module (an embedding and an output layer) may be read in float there: kept
        # in float, so that every reader gets what it read before.
        packed = key not in tied
        if packed:
            tensors[f"{key}.packed"] = torch.from_numpy(pack((q.cpu().numpy().astype(np.int32) - lo), w.bits))
        else:
            tensors[key] = w.weight.detach().cpu().contiguous()
        tensors[f"{key}.scales"] = scales.cpu().float().contiguous()
        weights[key] = {"name": w.name, "bits": w.bits, "shape": list(w.weight.shape), "packed": packed,
                        "dtype": str(w.weight.dtype).removeprefix("torch."), "scale_key": key_of[id(w.weight_quantizer.scale)]}
        skip |= {id(w.weight), id(w.weight_quantizer.scale)}
    for key, t in state.items():
        if id(t) not in skip and key not in aliases:
            tensors[key] = t.detach().cpu().contiguous()
    acts = {name: {"bits": m.bits, "method": m.method, "signed": m.signed, "calibrated": m.calibrated,
                   "grad_factor": m.grad_factor}
            for name, m in qmodel.named_modules() if isinstance(m, ActQuantizer)}
    meta = {"format": FORMAT, "version": str(VERSION), "plan": json.dumps(recipe.plan.to_json()),
            "recipe": json.dumps({"act_bits": recipe.act_bits, "act_calib": recipe.act_calib,
                                  "group_size": recipe.group_size}),
            "weights": json.dumps(weights), "acts": json.dumps(acts), "aliases": json.dumps(aliases)}
    path = Path(path)
    save_file(tensors, str(path), metadata=meta)
    return path


def load_packed(model: nn.Module, path) -> nn.Module:
    """The quantized model saved in ``path``, rebuilt on a copy of ``model`` (the float architecture; its own
    weights are not used and not changed). Raises PlanFileError if the file is not a packed ompq_ext model or
    was saved for another model."""
    safe_open = _safetensors().safe_open
    if not isinstance(model, nn.Module):
        raise OmpqTypeError(f"model must be the float torch.nn.Module the file was saved from, got {type(model).__name__}")
    path = Path(path)
    if not path.exists():
        raise OmpqValueError(f"packed model file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except OmpqError:
        raise
    except Exception as e:  # safetensors raises its own error types for a damaged file
        raise PlanFileError(f"{str(path)!r} is not a safetensors file: {e}") from None
    if meta.get("format") != FORMAT:
        raise PlanFileError(f"{str(path)!r} is not a packed ompq_ext model (no format {FORMAT!r} in its metadata)")
    if meta.get("version") != str(VERSION):
        raise PlanFileError(f"{str(path)!r} has packed format version {meta.get('version')!r}; this ompq_ext "
                            f"reads version {VERSION}")
    try:
        plan = Plan.from_json(json.loads(meta["plan"]))
        recipe = json.loads(meta["recipe"])
        weights, acts = json.loads(meta["weights"]), json.loads(meta["acts"])
        aliases = json.loads(meta.get("aliases", "{}"))
        recipe = {k: recipe[k] for k in ("act_bits", "act_calib", "group_size")}
    except (KeyError, TypeError, ValueError) as e:
        raise PlanFileError(f"{str(path)!r} has damaged ompq_ext metadata ({type(e).__name__}: {e})") from None
    plan.check_model(model)  # PlanFileError: another model
    config = make_config("rtn", weight_scale="minmax", act_calib=recipe["act_calib"],
                         **({"act_bits": recipe["act_bits"]} if recipe["act_bits"] is not None else {}))
    qmodel = copy.deepcopy(model)
    _wrap(qmodel, plan, config, _layer_act_bits(config.act_bits, plan), recipe["group_size"])
    qmodel.eval()
    state = qmodel.state_dict(keep_vars=True)
    quantizers = {id(w.weight): w.weight_quantizer for w in quantized_weights(qmodel)}
    with torch.no_grad():
        for key, info in weights.items():
            if key not in state or info["scale_key"] not in state or id(state[key]) not in quantizers:
                raise PlanFileError(f"{str(path)!r} holds weight {key!r}, which the rebuilt model lacks; was it "
                                    f"saved for another model?")
            scale = tensors.pop(f"{key}.scales")
            state[info["scale_key"]].copy_(scale.reshape(state[info["scale_key"]].shape))
            if not info.get("packed", True):  # a tied weight, kept in float
                state[key].copy_(tensors.pop(key))
                continue
            lo = quant_range(info["bits"], True)[0]
            count = int(np.prod(info["shape"]))
            q = unpack(tensors.pop(f"{key}.packed").numpy(), info["bits"], count).astype(np.int32) + lo
            q = torch.from_numpy(q.astype(np.float32)).reshape(info["shape"])
            value = q * scales_like(quantizers[id(state[key])], q.shape)
            state[key].copy_(value.to(state[key].dtype))
    rest = {k for k in state if k not in weights and k not in aliases
            and k not in {i["scale_key"] for i in weights.values()}}
    if rest != set(tensors):
        missing, extra = sorted(rest - set(tensors)), sorted(set(tensors) - rest)
        raise PlanFileError(f"{str(path)!r} does not match the rebuilt model: "
                            + (f"missing {', '.join(missing[:5])}" if missing else "")
                            + ("; " if missing and extra else "") + (f"unexpected {', '.join(extra[:5])}" if extra else ""))
    with torch.no_grad():
        for key in rest:
            value = tensors[key]
            if tuple(value.shape) != tuple(state[key].shape):
                raise PlanFileError(f"{str(path)!r}: {key!r} has shape {tuple(value.shape)}, the model "
                                    f"{tuple(state[key].shape)}")
            state[key].copy_(value)
    modules = dict(qmodel.named_modules())
    for name, a in acts.items():
        m = modules.get(name)
        if not isinstance(m, ActQuantizer):
            raise PlanFileError(f"{str(path)!r} holds activation quantizer {name!r}, which the rebuilt model lacks")
        m.method, m.signed, m.calibrated, m.grad_factor = a["method"], a["signed"], a["calibrated"], a["grad_factor"]
    qmodel.ompq_recipe = QuantRecipe(plan, recipe["act_bits"], recipe["act_calib"], recipe["group_size"])
    return qmodel
