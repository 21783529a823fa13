"""HAWQ-style sensitivity: the Hutchinson estimate of each planned weight's Hessian trace of a task
loss, over its weight count, times the squared weight perturbation a bit-width causes,

    Omega_i(b) = Tr(H_i) / n_i * ||Q_b(W_i) - W_i||^2,

minimised exactly (HAWQ-V2/V3). Needs a loss -- labels, or any differentiable objective of the
model -- given as ``loss_fn(model) -> scalar tensor``, one gradient and ``probes`` Hessian-vector
products through it. A negative trace estimate (a saddle, or probe noise) counts as 0.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..errors import OmpqTypeError, OmpqValueError
from ..guard import lent
from ..progress import progress_bar
from .base import Allocator, Scores, ScoringInput
from .perturbation import QuantizedWeights, check_weight_scale


def hutchinson_traces(model, loss_fn: Callable, weights: list[torch.Tensor], probes: int, seed: int = 0,
                      progress=None) -> np.ndarray:
    """Tr(d^2 loss / dW_i^2) for each weight, averaged over ``probes`` Rademacher probes; 0 for a weight the
    loss does not reach. The model is lent: its flags, buffers and parameters' requires_grad come back."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    unique = list({id(w): w for w in weights}.values())
    g = torch.Generator().manual_seed(seed)
    sums = np.zeros(len(unique))
    with lent(model):
        model.eval()
        for w in unique:
            if not w.is_leaf:
                raise OmpqValueError("a planned weight is computed from other tensors (e.g. a parametrization), "
                                     "so its Hessian cannot be taken; exclude it or use another method")
            w.requires_grad_(True)
        with sdpa_kernel(SDPBackend.MATH):  # Hessian-vector products need double backward (math attention)
            loss = loss_fn(model)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.requires_grad:
            raise OmpqValueError("loss_fn(model) must return a scalar tensor computed from the model's outputs "
                                 f"(with gradients), got {type(loss).__name__}"
                                 f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else ''}")
        grads = torch.autograd.grad(loss.reshape(()), unique, create_graph=True, allow_unused=True)
        used = [k for k, gr in enumerate(grads) if gr is not None and gr.requires_grad]
        with progress_bar(probes, "hessian: Hutchinson probes", "probe", progress) as bar:
            for p in range(probes):
                vs = [(torch.randint(0, 2, unique[k].shape, generator=g) * 2 - 1).to(unique[k]) for k in used]
                hv = torch.autograd.grad([grads[k] for k in used], [unique[k] for k in used], grad_outputs=vs,
                                         retain_graph=p < probes - 1, allow_unused=True)
                for k, v, h in zip(used, vs, hv):
                    if h is not None:
                        sums[k] += float((v * h).sum())
                bar.update(1)
    index = {id(w): k for k, w in enumerate(unique)}
    return np.array([sums[index[id(w)]] / probes for w in weights])


class HessianTrace(Allocator):
    """Omega_i(b) = max(Tr(H_i), 0) / n_i * ||Q_b(W_i) - W_i||^2 (see the module docstring).

    loss_fn: model -> scalar loss (e.g. cross-entropy of ``model(x)`` against labels y).
    probes: Rademacher probes for Hutchinson's estimator. weight_scale: the recipe's weight scales.
    traces: {layer name: trace} measured before (an earlier plan's ``.traces``, e.g. at another
    budget): used as they are instead of estimating them again.
    """

    name = "hessian"
    min_samples = 1

    def __init__(self, loss_fn: Callable | None = None, *, probes: int = 32, seed: int = 0,
                 weight_scale: str = "mse", traces: dict[str, float] | None = None):
        if loss_fn is None and traces is None:
            raise OmpqValueError("method 'hessian' needs a loss: pass method=ompq_ext.allocators.HessianTrace("
                                 "loss_fn=lambda model: F.cross_entropy(model(x), y))")
        if loss_fn is not None and not callable(loss_fn):
            raise OmpqTypeError(f"loss_fn must be a function of the model, got {type(loss_fn).__name__}")
        if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
            raise OmpqValueError(f"probes must be a positive integer, got {probes!r}")
        check_weight_scale(weight_scale)
        self.loss_fn, self.probes, self.seed, self.weight_scale = loss_fn, probes, seed, weight_scale
        self.given = dict(traces) if traces is not None else None
        self.traces: dict[str, float] = {}  # the last scoring's estimates, by layer name

    def scores(self, data: ScoringInput) -> Scores:
        if self.given is not None:
            missing = [x.name for x in data.layers if x.name not in self.given]
            if missing:
                raise OmpqValueError(f"traces lack the planned layer(s) {', '.join(map(repr, missing[:8]))}")
            self.traces = {x.name: float(self.given[x.name]) for x in data.layers}
        else:
            traces = hutchinson_traces(data.model, self.loss_fn, [x.weight for x in data.layers], self.probes,
                                       self.seed, data.progress)
            self.traces = {x.name: float(t) for x, t in zip(data.layers, traces)}
        weights = QuantizedWeights.shared(data, self.weight_scale)
        values = {}
        for k, layer in enumerate(data.layers):
            per_weight = max(self.traces[layer.name], 0.0) / layer.weight.numel()
            values[layer.name] = {b: -per_weight * float(weights.delta(k, b).double().square().sum())
                                  for b in data.allowed[layer.name]}
        if self.given is not None:
            return Scores(values=values)
        return Scores(values=values, cost={"forward_passes": 1, "backward_passes": 1 + self.probes,
                                           "labels": True, "gradients": True})

    def settings(self) -> dict:
        return {"probes": self.probes, "seed": self.seed, "weight_scale": self.weight_scale,
                "traces_given": self.given is not None}
