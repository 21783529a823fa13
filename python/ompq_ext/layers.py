"""Which layers of a model are planned, how big they are, and which must share bits.

Any ``nn.Module`` works: layers are found by type (Conv1d/2d/3d and Linear by
default, plus whatever the user adds) and filtered by name. Nothing here is
specific to an architecture.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import OmpqTypeError, OmpqValueError

DEFAULT_LAYER_TYPES: tuple[type, ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class Layer:
    """A quantizable layer: its qualified name, type name and weight size."""

    name: str
    kind: str
    params: int
    module: nn.Module = field(repr=False, compare=False)

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight


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


def find_layers(model: nn.Module, *, include=None, exclude=None, layer_types=()) -> list[Layer]:
    """Quantizable layers of ``model`` in registration order.

    ``layer_types`` adds module types to the defaults (they need a ``weight``
    parameter). ``include`` keeps only layers matching a name pattern or type;
    ``exclude`` drops matching layers. Unknown patterns are an error, so a typo
    does not silently plan the wrong layers.
    """
    if not isinstance(model, nn.Module):
        raise OmpqTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    types = DEFAULT_LAYER_TYPES + tuple(_as_selectors(layer_types, "layer_types", names=False))
    includes = _as_selectors(include, "include")
    excludes = _as_selectors(exclude, "exclude")
    named = list(model.named_modules())
    for argument, selectors in (("include", includes), ("exclude", excludes)):
        for s in selectors:
            if isinstance(s, str) and not any(fnmatch.fnmatchcase(n, s) for n, _ in named):
                raise OmpqValueError(f"{argument} pattern {s!r} matches no module of the model")

    layers = []
    for name, module in named:
        if not isinstance(module, types):
            continue
        if includes and not _matches(name, module, includes):
            continue
        if _matches(name, module, excludes):
            continue
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor):
            raise OmpqTypeError(
                f"layer {name!r} ({type(module).__name__}) has no weight tensor; exclude it or remove its "
                f"type from layer_types"
            )
        layers.append(Layer(name, type(module).__name__, weight.numel(), module))
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


def count_parameters(model: nn.Module) -> int:
    """Every parameter of the model, each shared tensor once (buffers are not counted)."""
    return sum(p.numel() for p in model.parameters())
