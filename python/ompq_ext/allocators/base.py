"""The interface every allocator implements: score the planned layers for the exact solver.

An allocator sees the model, the planning samples and the planned layers (after the one feature
pass that found them) and returns ``Scores``: either one weight per layer (the solver maximises
sum_i weight_i * bits_i, as OMPQ's objective) or one value per layer and bit-width (it maximises
sum_i value_i(bits_i); a sensitivity to minimise is given as its negative). Layers that share
bits are scored as the sum of their layers. Everything an allocator needs from the feature pass
it asks for through ``collectors``, which the pass feeds while the forward runs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from ..errors import OmpqValueError
from ..layers import Layer


@dataclass
class Scores:
    """An allocator's verdict on the planned layers, by layer name."""

    weights: dict[str, float] | None = None  # objective weight per layer (finite, >= 0)
    values: dict[str, dict[int, float]] | None = None  # objective value per layer and bit-width
    # where activation bits are chosen too (plan(act_bits=(4, 8))): the value of each layer's input at each
    # activation bit-width, added to ``values`` (weights instead score bits + act bits alike)
    act_values: dict[str, dict[int, float]] | None = None
    # Recorded in the plan where the method measures them (OMPQ's orthogonality):
    gamma: dict[str, float] | None = None
    log_theta: dict[str, float] | None = None
    orm: np.ndarray | None = None  # L x L, planned layers in execution order
    # What scoring cost beyond the feature pass, recorded in the plan: {"forward_passes": int (its own),
    # "backward_passes": int, "labels": bool, "gradients": bool}; None: nothing beyond the pass.
    cost: dict | None = None

    def check(self, names: list[str], method: str) -> None:
        """Raise unless the scores cover every planned layer (``names``) in the form the solver takes."""
        if (self.weights is None) == (self.values is None):
            raise OmpqValueError(f"the {method!r} allocator must score the layers with weights or values, "
                                 f"exactly one of them")
        for what in ("weights", "values", "act_values", "gamma", "log_theta"):
            table = getattr(self, what)
            missing = [] if table is None else [n for n in names if n not in table]
            if missing:
                raise OmpqValueError(f"the {method!r} allocator's {what} lack the planned layer(s) "
                                     f"{', '.join(map(repr, missing[:8]))}")


@dataclass
class ScoringInput:
    """What an allocator may look at when it scores."""

    model: nn.Module
    samples: tuple  # (args, kwargs) of one model call over the N planning samples
    layers: list[Layer]  # the planned layers, in the order the feature pass ran them
    indices: list[int]  # their positions in the list of layers handed to ``collectors``
    bits: tuple[int, ...]  # the bit-widths the free layers choose from
    collectors: list = field(default_factory=list)  # what ``collectors`` returned, after the pass
    allowed: dict[str, tuple[int, ...]] = field(default_factory=dict)  # each layer's bit-widths (fixed ones too)
    channel_axes: list[int] = field(default_factory=list)  # each planned weight's output-channel axis
    # solve(scores) -> {layer name: bits}: the exact solver on this plan's budgets and bit choices (for
    # allocators that compare candidate plans)
    solve: Callable[[Scores], dict[str, int]] | None = None
    progress: object = None  # plan()'s progress argument, for allocators with long work of their own
    shared: dict = field(default_factory=dict)  # work that allocators of one plan() call share (quantized weights)
    act_bits: tuple[int, ...] = ()  # the activation bit-widths every layer chooses from; () where they are fixed


class Allocator(ABC):
    """Turns a model and its planning samples into scores for the exact solver."""

    name: str = ""  # recorded as the plan's method
    default_samples: int = 32  # plan()'s num_samples when the caller gives none
    min_samples: int = 2  # planning proceeds from this many samples when the loader has fewer than asked
    scores_act_bits: bool = False  # whether it scores activation bits (act_values, or weights: bits + act bits)
    feature_point: str = "output"  # which tensor the collectors get: each layer's "output" or the next "activation"'s

    def check(self, num_samples: int) -> None:
        """Raise before the feature pass if the allocator cannot work from ``num_samples`` samples."""

    def collectors(self, layers: list[Layer], num_samples: int) -> list:
        """Objects with ``add(i, features, source)`` and ``finish()``, fed by the feature pass with the
        features of ``layers[i]``; none by default."""
        return []

    def collector_key(self):
        """Allocators with equal keys collect the same thing: one set of collectors serves them (as when
        several are candidates of one plan); None: never shared."""
        return None

    @abstractmethod
    def scores(self, data: ScoringInput) -> Scores:
        """Score the planned layers."""

    def settings(self) -> dict:
        """The method's settings, recorded in the plan (JSON-serialisable)."""
        return {}
