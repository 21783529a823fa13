"""Which weights of a model are planned, how big they are, and which must share bits.

The unit of planning is a weight consumed by a linear or convolution op. Candidates are found
here, before the forward pass: the ``weight`` of every Conv1d/2d/3d and Linear module (and of the
module types the user adds), the projection weights of every ``nn.MultiheadAttention``
(``in_proj_weight``, used through ``F.multi_head_attention_forward``), and, as *optional*
candidates, the 2-D or larger ``weight`` of any other module (such as Hugging Face's GPT-2
``Conv1D``), planned only if the feature pass sees an op consume it. A unit is named by its
module (``"layers.0.linear1"``) when it is the module's ``weight``, else by the parameter's
qualified name (``"layers.0.self_attn.in_proj_weight"``). Names are filtered by
include/exclude; module types by the module that owns the weight. Nothing here is specific
to an architecture.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import OmpqTypeError, OmpqValueError

DEFAULT_LAYER_TYPES: tuple[type, ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
# nn.MultiheadAttention's weights that its functional form consumes as linear weights (its out_proj is a Linear).
_ATTENTION_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
# Modules whose 2-D weight no linear or convolution op consumes.
_NOT_LINEAR = (nn.Embedding, nn.EmbeddingBag, nn.modules.conv._ConvTransposeNd, nn.Bilinear)


@dataclass
class Layer:
    """A planned weight: its name, its owner's type name, its size, and where it lives."""

    name: str
    kind: str
    params: int
    module: nn.Module = field(repr=False, compare=False)  # the module that owns the weight
    attr: str = "weight"  # the weight's attribute on ``module``
    by_output: bool = False  # features: the module's output (user layer types), not the consuming op's
    optional: bool = False  # a weight of an unknown module type: planned only if an op consumes it

    @property
    def weight(self) -> torch.Tensor:
        return getattr(self.module, self.attr)


@dataclass
class LayerGroup:
    """Layers that get one bit-width: a weight shared by several modules, or a user tie."""

    name: str
    layers: list[str]
    params: int  # weight parameters, each shared tensor counted once


def _matches(name: str, module: nn.Module, selectors) -> bool:
    for s in selectors:
        if isinstance(s, str) and fnmatch.fnmatchcase(name, s):
            return True
        if isinstance(s, type) and isinstance(module, s):
            return True
    return False


def _as_selectors(value, argument: str, *, names: bool = True) -> list:
    """A selector or a collection of them: glob patterns (when ``names``) and module types."""
    what = "layer names (glob patterns such as 'layer1.*') or module types" if names else "module types"
    if value is None:
        return []
    if isinstance(value, (str, type)):
        items = [value]
    else:
        try:
            items = list(value)
        except TypeError:
            raise OmpqTypeError(f"{argument} takes {what}; got {value!r}") from None
    for s in items:
        if not (isinstance(s, type) or names and isinstance(s, str)):
            raise OmpqTypeError(f"{argument} takes {what}; got {s!r}")
    return items


def find_layers(model: nn.Module, *, include=None, exclude=None, layer_types=(), optional: bool = False,
                embeddings: bool = False) -> list[Layer]:
    """Quantizable weights of ``model`` in registration order (see the module docstring).

    ``layer_types`` adds module types to the defaults (they need a ``weight``
    parameter; their features are the module's output). ``include`` keeps only weights
    matching a name pattern or owner type; ``exclude`` drops matching ones. Unknown patterns
    are an error, so a typo does not silently plan the wrong layers. ``optional``: also the
    weights of unknown module types, which plan() keeps where an op consumes them.
    ``embeddings``: also the weights of ``nn.Embedding`` modules (their rows are looked up, not
    multiplied: no MACs).
    """
    if not isinstance(model, nn.Module):
        raise OmpqTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    types = DEFAULT_LAYER_TYPES + tuple(_as_selectors(layer_types, "layer_types", names=False))
    includes = _as_selectors(include, "include")
    excludes = _as_selectors(exclude, "exclude")
    named = list(model.named_modules())
    unit_names = [n for n, _ in named] + [f"{n}.{a}" if n else a for n, m in named
                                         if isinstance(m, nn.MultiheadAttention) for a in _ATTENTION_WEIGHTS]
    for argument, selectors in (("include", includes), ("exclude", excludes)):
        for s in selectors:
            if isinstance(s, str) and not any(fnmatch.fnmatchcase(n, s) for n in unit_names):
                raise OmpqValueError(f"{argument} pattern {s!r} matches no module of the model")

    def wanted(unit_name, module):
        return (not includes or _matches(unit_name, module, includes)) and not _matches(unit_name, module, excludes)

    layers = []
    for name, module in named:
        if isinstance(module, nn.MultiheadAttention):
            for attr in _ATTENTION_WEIGHTS:
                weight = getattr(module, attr, None)
                unit = f"{name}.{attr}" if name else attr
                if isinstance(weight, nn.Parameter) and wanted(unit, module):
                    layers.append(Layer(unit, f"MultiheadAttention.{attr}", weight.numel(), module, attr=attr))
            continue
        weight = getattr(module, "weight", None)
        if embeddings and isinstance(module, nn.Embedding) and isinstance(weight, nn.Parameter):
            if wanted(name, module):
                layers.append(Layer(name, "Embedding", weight.numel(), module))
            continue
        if not isinstance(module, types):
            if (optional and isinstance(weight, nn.Parameter) and weight.dim() >= 2
                    and not isinstance(module, _NOT_LINEAR) and wanted(name, module)):
                layers.append(Layer(name, type(module).__name__, weight.numel(), module, optional=True))
            continue
        if not wanted(name, module):
            continue
        if not isinstance(weight, torch.Tensor):
            raise OmpqTypeError(
                f"layer {name!r} ({type(module).__name__}) has no weight tensor; exclude it or remove its "
                f"type from layer_types"
            )
        layers.append(Layer(name, type(module).__name__, weight.numel(), module,
                            by_output=not isinstance(module, DEFAULT_LAYER_TYPES)))
    if not layers:
        raise OmpqValueError(
            f"the model ({type(model).__name__}) has no quantizable layers "
            f"({', '.join(t.__name__ for t in types)}) left after include/exclude; "
            f"add its layer types with layer_types=... or loosen include/exclude"
        )
    return layers


def group_layers(layers: list[Layer], ties=()) -> list[LayerGroup]:
    """Union layers that share a weight tensor, and each user tie (a list of layer
    names, e.g. a shortcut conv with its block's last conv). Groups are ordered
    by their first layer."""
    index = {layer.name: i for i, layer in enumerate(layers)}
    parent = list(range(len(layers)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i, j):
        a, b = root(i), root(j)
        if a != b:
            parent[max(a, b)] = min(a, b)

    by_storage: dict[int, int] = {}
    for i, layer in enumerate(layers):
        key = id(layer.weight)
        if key in by_storage:
            union(by_storage[key], i)
        else:
            by_storage[key] = i
    for tie in ties or ():
        if isinstance(tie, str) or len(tie) < 2:
            raise OmpqValueError(f"each entry of ties must list two or more layer names, got {tie!r}")
        for name in tie:
            if name not in index:
                raise OmpqValueError(f"ties names layer {name!r}, which is not a planned layer")
        for name in tie[1:]:
            union(index[tie[0]], index[name])

    members: dict[int, list[int]] = {}
    for i in range(len(layers)):
        members.setdefault(root(i), []).append(i)
    groups = []
    for r in sorted(members):
        seen, params = set(), 0
        for i in members[r]:
            if id(layers[i].weight) not in seen:
                seen.add(id(layers[i].weight))
                params += layers[i].params
        groups.append(LayerGroup(layers[r].name, [layers[i].name for i in members[r]], params))
    return groups


def weight_owner(model: nn.Module, name: str) -> tuple[nn.Module, str] | None:
    """(owner module, attribute) of the planned weight called ``name`` (see the module docstring), or None
    where no module is called so. A module's ``weight`` (which may be missing: the caller checks)."""
    modules = dict(model.named_modules())
    if name in modules:
        return modules[name], "weight"
    parent, _, attr = name.rpartition(".")
    if parent in modules and attr and isinstance(modules[parent]._parameters.get(attr), torch.Tensor):
        return modules[parent], attr
    return None


def scale_count(weight: torch.Tensor, channel_axis: int, group_size: int | None) -> int:
    """How many scales a weight quantized per output channel (along ``channel_axis``) has, or per group
    of ``group_size`` consecutive weights of a channel (the last group of a channel possibly shorter)."""
    channels = weight.shape[channel_axis]
    if group_size is None:
        return channels
    return channels * -(-(weight.numel() // channels) // group_size)


def count_parameters(model: nn.Module) -> int:
    """Every parameter of the model, each shared tensor once (buffers are not counted)."""
    return sum(p.numel() for p in model.parameters())
