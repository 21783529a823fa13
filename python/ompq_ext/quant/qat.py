"""Quantization-aware fine-tuning (QAT) of a quantized model with an ordinary PyTorch loop.

A model from ``ompq_ext.quantize`` trains as it is: the fake-quant ops pass gradients
straight through to the float weights (STE, zero outside the clipping range) and give
the quantizer scales their LSQ gradients. :func:`finetune` is a small helper around such
a loop; docs/QAT.md shows the loop written out by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from ..errors import OmpqTypeError, OmpqValueError
from ..inputs import as_call
from ..progress import progress_bar
from .modules import quantized_weights

__all__ = ["finetune", "quantizer_parameters"]

_MIN_SCALE = 1e-8  # scales are kept positive (the fake-quant ops reject scale <= 0)


def quantizer_parameters(qmodel: nn.Module) -> list[nn.Parameter]:
    """The quantizers' own parameters (weight and activation scales) of every QuantLayer, each once."""
    seen, out = set(), []
    for m in quantized_weights(qmodel):
        for q in (m.weight_quantizer, m.input_quantizer):
            if q is None:
                continue
            for p in q.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
    return out


def _split_batch(batch):
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise OmpqTypeError("finetune: each batch must be (inputs, target); pass input_fn=... to unpack other batches")


def _batches(loader) -> Iterable:
    """Cycle over ``loader`` forever (a DataLoader reshuffles each pass)."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise OmpqValueError("finetune: the loader yielded no batch")


def finetune(
    qmodel: nn.Module,
    loader,
    loss_fn: Callable,
    *,
    steps: int,
    lr: float = 1e-4,
    scale_lr: float | None = None,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    input_fn: Callable | None = None,
    train_mode: bool = True,
    progress: bool | None = None,
) -> list[float]:
    """Fine-tune a quantized model for ``steps`` optimizer steps; returns the loss of every step.

    qmodel : a model with QuantLayers (``ompq_ext.quantize``), trained in place.
    loader : an iterable of batches (a DataLoader, a list...), cycled until ``steps`` are done.
    loss_fn : ``loss_fn(output, target) -> scalar tensor``.
    steps : number of optimizer steps.
    lr : learning rate of the float parameters (weights, biases, norms). A fine-tune wants a
        small one: 1e-4 (Adam) is a good start for a trained model.
    scale_lr : learning rate of the quantizer scales (LSQ); default ``lr``; 0 freezes them.
    optimizer : "adam" or "sgd" (momentum 0.9). weight_decay : applied to the float parameters only.
    input_fn : turns a batch into ``(inputs, target)``; by default a batch is ``(inputs, target)``.
        ``inputs`` is passed as ``model(inputs)``, ``model(*inputs)`` for a tuple/list,
        ``model(**inputs)`` for a dict, ``model(*args, **kwargs)`` for a pair ``(args tuple, kwargs dict)``.
    train_mode : run in train mode (BatchNorm uses batch statistics and updates its running
        statistics); False keeps every module's mode (e.g. eval: frozen BatchNorm statistics).
        The model's modes are restored at the end either way.
    progress : show a tqdm bar (None: when stderr is a terminal).

    Parameters with ``requires_grad=False`` stay frozen. Scales are clamped to stay positive.
    """
    if not isinstance(qmodel, nn.Module):
        raise OmpqTypeError(f"finetune: qmodel must be a torch.nn.Module, got {type(qmodel).__name__}")
    if not callable(loss_fn):
        raise OmpqTypeError("finetune: loss_fn must be callable, loss_fn(output, target) -> tensor")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise OmpqValueError(f"finetune: steps must be a positive integer, got {steps!r}")
    scale_lr = lr if scale_lr is None else scale_lr
    if not (lr >= 0 and scale_lr >= 0):
        raise OmpqValueError("finetune: lr and scale_lr must be >= 0")
    if optimizer not in ("adam", "sgd"):
        raise OmpqValueError(f"finetune: optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    if not quantized_weights(qmodel):
        raise OmpqValueError("finetune: the model has no QuantLayer; quantize it first (ompq_ext.quantize)")

    scales = [p for p in quantizer_parameters(qmodel) if p.requires_grad]
    scale_ids = {id(p) for p in scales}
    weights = [p for p in qmodel.parameters() if p.requires_grad and id(p) not in scale_ids]
    groups = []
    if weights and lr > 0:
        groups.append({"params": weights, "lr": lr, "weight_decay": weight_decay})
    if scales and scale_lr > 0:
        groups.append({"params": scales, "lr": scale_lr, "weight_decay": 0.0})
    if not groups:
        raise OmpqValueError("finetune: nothing to train (no parameter requires grad, or both learning rates are 0)")
    opt = torch.optim.Adam(groups) if optimizer == "adam" else torch.optim.SGD(groups, momentum=0.9)

    modes = {m: m.training for m in qmodel.modules()}
    if train_mode:
        qmodel.train()
    unpack = input_fn or _split_batch
    history: list[float] = []
    try:
        with progress_bar(steps, "ompq: QAT", "step", progress, leave=True) as bar:
            for _, batch in zip(range(steps), _batches(loader)):
                x, y = unpack(batch)
                args, kwargs = as_call(x, "the batch's inputs") if isinstance(x, (torch.Tensor, Mapping, list, tuple)) \
                    else ((x,), {})
                loss = loss_fn(qmodel(*args, **kwargs), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    for p in scales:
                        p.clamp_(min=_MIN_SCALE)
                history.append(loss.item())
                bar.update(1)
                if len(history) % 10 == 0:
                    bar.set_postfix_str(f"loss={history[-1]:.4g}", refresh=False)
    finally:
        for m, training in modes.items():
            m.training = training
    return history
