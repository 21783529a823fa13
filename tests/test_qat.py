"""Tests of quantization-aware fine-tuning (`ompq_ext.quant.qat.finetune`)."""

from __future__ import annotations


import pytest
import torch
from torch import nn

from ompq_ext import models
from ompq_ext.errors import OmpqError, OmpqValueError
from ompq_ext.quant.modules import QuantLayer
from ompq_ext.quant.qat import finetune, quantizer_parameters
from ompq_ext.quant.reconstruct import reconstruct
from quant_helpers import make_qmodel


def tiny_task(n: int = 512, seed: int = 0):
    """A 4-class problem on 12 features (labels from a random linear teacher) and its batches."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 12, generator=gen)
    y = (x @ torch.randn(12, 4, generator=gen)).argmax(1)
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, n, 32)]
    return x, y, batches


def tiny_qmodel(x, bits=3):
    torch.manual_seed(0)
    model = models.mlp(in_features=12, hidden=(32,), num_classes=4).eval()
    return model, make_qmodel(model, bits, x)


def test_finetune_lowers_training_loss():
    x, y, batches = tiny_task()
    _, q = tiny_qmodel(x)
    with torch.no_grad():
        start = nn.functional.cross_entropy(q(x), y).item()
    torch.manual_seed(0)
    history = finetune(q, batches, nn.CrossEntropyLoss(), steps=48, lr=1e-2, progress=False)
    assert len(history) == 48 and all(isinstance(v, float) for v in history)
    first, last = sum(history[:8]) / 8, sum(history[-8:]) / 8
    assert last < 0.7 * first
    with torch.no_grad():
        end = nn.functional.cross_entropy(q(x), y).item()
    assert end < 0.7 * start
    assert not q.training  # modes restored


def test_gradients_reach_scales_and_weights():
    x, y, _ = tiny_task()
    _, q = tiny_qmodel(x)
    nn.functional.cross_entropy(q(x[:64]), y[:64]).backward()
    for m in q.modules():
        if isinstance(m, QuantLayer):
            assert m.layer.weight.grad is not None and m.layer.weight.grad.abs().sum() > 0
            assert m.weight_quantizer.scale.grad is not None and m.weight_quantizer.scale.grad.abs().sum() > 0
            assert m.input_quantizer.scale.grad is not None and m.input_quantizer.scale.grad.abs().sum() > 0


def test_finetune_trains_scales_unless_frozen():
    x, _, batches = tiny_task()
    _, q = tiny_qmodel(x)
    scales = quantizer_parameters(q)
    assert len(scales) == 4  # two layers: a weight scale vector and an activation scale each
    before = [s.detach().clone() for s in scales]
    finetune(q, batches, nn.CrossEntropyLoss(), steps=10, lr=1e-3, scale_lr=1e-2, progress=False)
    assert all(not torch.equal(a, s.detach()) for a, s in zip(before, scales))
    assert all(bool((s > 0).all()) for s in scales)

    _, q = tiny_qmodel(x)
    scales = quantizer_parameters(q)
    before = [s.detach().clone() for s in scales]
    w0 = q[0].layer.weight.detach().clone()
    finetune(q, batches, nn.CrossEntropyLoss(), steps=10, lr=1e-3, scale_lr=0.0, progress=False)
    assert all(torch.equal(a, s.detach()) for a, s in zip(before, scales))
    assert not torch.equal(w0, q[0].layer.weight.detach())


def test_finetune_after_reconstruction():
    x, _, batches = tiny_task()
    model, q = tiny_qmodel(x)
    reconstruct(q, model, x, method="adaround", iters=5, batch_size=32, progress=False)
    history = finetune(q, batches, nn.CrossEntropyLoss(), steps=5, lr=1e-3, progress=False)
    assert len(history) == 5


def test_finetune_input_fn_sgd_and_eval_mode():
    x, y, _ = tiny_task()
    _, q = tiny_qmodel(x)
    batches = [{"inputs": x[i:i + 32], "labels": y[i:i + 32]} for i in range(0, 128, 32)]
    seen_training = []
    q.register_forward_pre_hook(lambda m, a: seen_training.append(m.training))
    history = finetune(q, batches, nn.CrossEntropyLoss(), steps=6, lr=1e-2, optimizer="sgd",
                       input_fn=lambda b: (b["inputs"], b["labels"]), train_mode=False, progress=False)
    assert len(history) == 6  # the 4 batches are cycled
    assert seen_training == [False] * 6


def test_finetune_deterministic():
    x, _, batches = tiny_task()
    runs = []
    for _ in range(2):
        _, q = tiny_qmodel(x)
        runs.append(finetune(q, batches, nn.CrossEntropyLoss(), steps=8, lr=1e-2, progress=False))
    assert runs[0] == runs[1]


def test_finetune_errors():
    x, _, batches = tiny_task()
    model, q = tiny_qmodel(x)
    loss = nn.CrossEntropyLoss()
    with pytest.raises(OmpqValueError, match="steps"):
        finetune(q, batches, loss, steps=0)
    with pytest.raises(OmpqValueError, match="QuantLayer"):
        finetune(model, batches, loss, steps=1)
    with pytest.raises(OmpqValueError, match="no batch"):
        finetune(q, [], loss, steps=1)
    with pytest.raises(OmpqValueError, match="optimizer"):
        finetune(q, batches, loss, steps=1, optimizer="lbfgs")
    with pytest.raises(OmpqValueError, match="nothing to train"):
        finetune(q, batches, loss, steps=1, lr=0.0, scale_lr=0.0)
    with pytest.raises(OmpqError, match="input_fn"):
        finetune(q, [x[:8]], loss, steps=1)


def test_finetune_inputs_of_any_kind():
    """A tensor, a tuple (positional), a dict (keywords), (args, kwargs), or any other object as it is."""
    x, y, _ = tiny_task(64)
    _, q = tiny_qmodel(x)

    class Wrapped:
        def __init__(self, t):
            self.t = t

    class Model(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, a, scale=1.0):
            return self.inner((a.t if isinstance(a, Wrapped) else a) * scale)

    losses = []
    for inputs in (x, (x,), {"a": x}, ((x,), {"scale": 1.0}), Wrapped(x)):
        torch.manual_seed(0)
        _, q = tiny_qmodel(x)
        losses.append(finetune(Model(q), [(inputs, y)], nn.CrossEntropyLoss(), steps=2, lr=1e-2, progress=False))
    assert all(run == losses[0] for run in losses)
