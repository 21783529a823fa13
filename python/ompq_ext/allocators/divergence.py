"""How far the model's outputs on the planning samples move from FP32 when some planned weights are
replaced by their quantized values -- one forward pass per evaluation, the replacements in place for
that forward only.

The output compared is the model's tensor output, or from a dict/dataclass output the first of
``logits``, ``sentence_embedding``, ``pooler_output``, ``last_hidden_state`` (else its first tensor);
``output_fn(output) -> tensor`` picks another. Divergences (mean over the output's rows, the last
dimension being the one compared):

* ``"kl"``: KL(softmax(FP32) || softmax(quantized)) of the last dimension read as class logits;
* ``"cosine"``: 1 - cosine similarity of the last dimension (embedding models);
* ``"mse"``: mean squared difference over the FP32 output's mean square;
* ``"auto"``: ``"cosine"`` where the output is an embedding (``sentence_embedding``,
  ``pooler_output``, ``last_hidden_state``, ``embeddings``), else ``"kl"``.

Activation bits (where a plan chooses them): the input of each planned layer its module calls
(Linear, Conv, GPT-2's Conv1D) is quantized per tensor at its bits on the range ``quantize()``'s
calibration would fit on these samples (MSE, padded positions left out); the inputs of weights used
through functional calls stay in float here.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import OmpqTypeError, OmpqValueError, check_choice, user_stacklevel
from ..guard import untouched
from ..inputs import call_model, first_tensor
from ..layers import Layer
from ..quant.ops import fake_quantize
from ..quant.padding import padding_mask, valid_rows
from ..quant.scales import activation_scale

DIVERGENCES = ("auto", "kl", "cosine", "mse")
_OUTPUT_KEYS = ("logits", "sentence_embedding", "pooler_output", "last_hidden_state", "embeddings")
_EMBEDDING_KEYS = ("sentence_embedding", "pooler_output", "last_hidden_state", "embeddings")


def check_divergence(divergence: str, output_fn) -> None:
    check_choice("divergence", divergence, DIVERGENCES)
    if output_fn is not None and not callable(output_fn):
        raise OmpqTypeError(f"output_fn must be a function of the model's output, got {type(output_fn).__name__}")


def _output_tensor(output, output_fn) -> tuple[torch.Tensor, str]:
    """(the tensor compared, the key it came from or "")."""
    if output_fn is not None:
        out, key = output_fn(output), ""
    elif isinstance(output, torch.Tensor):
        out, key = output, ""
    else:
        items = output if isinstance(output, Mapping) else getattr(output, "__dict__", {})
        key = next((k for k in _OUTPUT_KEYS if isinstance(items.get(k), torch.Tensor)), "")
        out = items[key] if key else first_tensor(output)
    if not isinstance(out, torch.Tensor) or not out.is_floating_point() or out.numel() == 0:
        raise OmpqValueError("the model's output has no floating-point tensor to compare with FP32; pass "
                             "output_fn=lambda output: ... returning the logits or embedding tensor")
    return out.detach().float(), key


_CHUNK_VALUES = 1 << 22  # values per float64 chunk of a divergence (32 MiB): a language model's logits are GBs in float64


def _divergence(kind: str, out: torch.Tensor, ref: torch.Tensor) -> float:
    # float64: at high bit-widths the divergence is below float32's resolution of the terms it cancels. In chunks
    # of rows, each chunk's sum exact to float64 and the chunks' sums added in order, so that an output as large as
    # a language model's logits (16 x 64 tokens x 50k words: 412 MiB per float64 copy) needs no full float64 copy.
    width = ref.shape[-1] if ref.dim() > 0 else 1
    out, ref = out.reshape(-1, width), ref.reshape(-1, width)
    rows, step = ref.shape[0], max(1, _CHUNK_VALUES // max(width, 1))
    total, energy = 0.0, 0.0
    for start in range(0, rows, step):
        o, r = out[start:start + step].double(), ref[start:start + step].double()
        if kind == "kl":
            p, q = F.log_softmax(r, -1), F.log_softmax(o, -1)
            total += float(F.kl_div(q, p, log_target=True, reduction="sum"))
        elif kind == "cosine":
            total += float((1 - F.cosine_similarity(o, r, dim=-1)).sum())
        else:
            total += float((o - r).square().sum())
            energy += float(r.square().sum())
    if kind in ("kl", "cosine"):
        return total / rows
    return total / max(energy, 1e-30 * ref.numel())


def weight_owners(model: nn.Module, layers: list[Layer]) -> list[list[tuple[nn.Module, str, str]]]:
    """For each planned weight, every (module, "_parameters" or "_buffers", name) that holds it: a module
    registered under two names once, a weight tied across modules (an embedding and its output layer)
    at each. Empty for a weight computed at each call (a parametrization)."""
    holders: dict[int, list] = {}
    for module in {id(m): m for m in model.modules()}.values():
        for store in ("_parameters", "_buffers"):
            for name, t in getattr(module, store).items():
                if t is not None:
                    holders.setdefault(id(t), []).append((module, store, name))
    return [holders.get(id(layer.weight), []) for layer in layers]


class OutputDivergence:
    """``__call__({i: weight})``: the divergence of the model's outputs, with ``layers[i]``'s weight replaced,
    from its FP32 outputs (computed once here). ``forward_passes`` counts every forward run.

    The replacements are put where the model holds each weight for one forward and the originals put back
    after it, also when it raises (torch.func.functional_call put a replacement back in place of the
    original where a module is registered under two names). A weight computed at each call (a
    parametrization) cannot be replaced: ``strict`` refuses it, otherwise it stays FP32 with a warning.
    """

    def __init__(self, model: nn.Module, samples: tuple, layers: list[Layer], *, divergence: str = "auto",
                 output_fn: Callable | None = None, strict: bool = True):
        check_divergence(divergence, output_fn)
        self.model, self.samples, self.output_fn = model, samples, output_fn
        self.owners = weight_owners(model, layers)
        computed = [x.name for x, o in zip(layers, self.owners) if not o]
        if computed and strict:
            raise OmpqValueError(f"layer {computed[0]!r}: its weight is computed (e.g. a parametrization), not a "
                                 f"parameter or buffer of the model, so its quantized values cannot be swapped in "
                                 f"for this method; exclude it or use method='ompq' or 'output_error'")
        if computed:
            warnings.warn(f"{len(computed)} planned weight(s) are computed at each call (e.g. a parametrization) and "
                          f"stay FP32 when the candidate plans are compared: {', '.join(computed[:8])}", stacklevel=user_stacklevel())
        self.layers = layers
        self.like = [layer.weight for layer in layers]  # dtype and device of what a replacement stands for
        self.forward_passes = 0
        self.reference, key = self._outputs({})
        self.kind = divergence if divergence != "auto" else "cosine" if key in _EMBEDDING_KEYS else "kl"

    @torch.no_grad()
    def _outputs(self, weights: dict[int, torch.Tensor], act_bits: dict[int, int] | None = None):
        args, kwargs = self.samples
        self.forward_passes += 1
        swapped, hooks = [], []
        with untouched(self.model), padding_mask(args, kwargs):
            try:
                for i, a in (act_bits or {}).items():
                    layer = self.layers[i]
                    if layer.attr == "weight" and (isinstance(layer.module, _CALLED)
                                                   or type(layer.module).__name__ == "Conv1D"):
                        hooks.append(layer.module.register_forward_pre_hook(_input_quantizer(a)))
                for i, w in weights.items():
                    w = w.to(dtype=self.like[i].dtype, device=self.like[i].device)
                    for module, store, name in self.owners[i]:
                        swapped.append((module, store, name, getattr(module, store)[name]))
                        getattr(module, store)[name] = w
                self.model.eval()
                output = call_model(self.model, args, kwargs, samples="the planning")
            finally:
                for module, store, name, original in reversed(swapped):
                    getattr(module, store)[name] = original
                for h in hooks:
                    h.remove()
        return _output_tensor(output, self.output_fn)

    def __call__(self, weights: dict[int, torch.Tensor], act_bits: dict[int, int] | None = None) -> float:
        out, _ = self._outputs(weights, act_bits)
        return _divergence(self.kind, out, self.reference)


_CALLED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_MAX_RANGE_SAMPLES = 1 << 18  # values a range is fitted to (ActQuantizer keeps as many)


def _input_quantizer(bits: int):
    """A forward pre-hook quantizing the module's first input per tensor at ``bits``, on the MSE range of
    its values at the real positions (a fixed-stride subsample of them, as calibration keeps)."""
    def hook(_module, args):
        x = args[0]
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            return None
        values = valid_rows(x).detach().float().reshape(-1)
        sample = values[:: max(1, values.numel() // _MAX_RANGE_SAMPLES)][:_MAX_RANGE_SAMPLES]
        scale, signed = activation_scale(sample, bits, "mse", float(values.min()), float(values.max()))
        q = fake_quantize(x.float().contiguous(), torch.tensor([scale], device=x.device), bits=bits, signed=signed)
        return (q.to(x.dtype), *args[1:])
    return hook
