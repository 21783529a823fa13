"""Guards that hand a model back exactly as it was lent, also when the body raises."""

from __future__ import annotations

import contextlib

import torch
from torch import nn


@contextlib.contextmanager
def untouched(model: nn.Module):
    """Restore every buffer's values and every module's train/eval flag on exit.
    (Hooks are removed by whoever registered them.)"""
    flags = [(m, m.training) for m in model.modules()]
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield model
    finally:
        with torch.no_grad():
            for b, copy in saved:
                b.copy_(copy)
        for m, flag in flags:
            m.training = flag  # per module: train() would also reset the children


@contextlib.contextmanager
def lent(model: nn.Module):
    """``untouched``, and also the parameters' requires_grad flags and every hook registered
    inside the body (a model lent to reconstruction, which trains and hooks it)."""
    grads = [(p, p.requires_grad) for p in model.parameters()]
    hooks = [(m, dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks))
             for m in model.modules()]
    with untouched(model):
        try:
            yield model
        finally:
            for p, flag in grads:
                p.requires_grad_(flag)
            for m, fwd, pre, bwd in hooks:
                for store, saved in ((m._forward_hooks, fwd), (m._forward_pre_hooks, pre), (m._backward_hooks, bwd)):
                    for key in [k for k in store if k not in saved]:
                        del store[key]
