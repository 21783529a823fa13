"""Batches -> model inputs, for every stage that runs the model on user data: planning,
calibration, reconstruction and fine-tuning.

A batch is a tensor (the input), a tuple/list ``(inputs, targets, ...)`` (its first item is the
input) or a dict (keyword arguments); ``input_fn(batch)`` turns anything else into model inputs.
Samples gathered from several batches are joined along dimension 0 into one model call, because
the stages that need N samples at once (a Gram over every pair of samples) run them together.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from .errors import FeatureError, OmpqError, OmpqTypeError, OmpqValueError, user_stacklevel

# ---------------------------------------------------------------- nested structures of tensors


def tensors(obj) -> Iterator[torch.Tensor]:
    """Every tensor inside ``obj`` (tensors, tuples, lists, mappings, nested), in order."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        for value in obj.values():
            yield from tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from tensors(value)


def first_tensor(obj) -> torch.Tensor | None:
    return next(tensors(obj), None)


def _rebuild(like, items):
    """A container of ``like``'s kind holding ``items`` (namedtuples take them positionally)."""
    if isinstance(like, tuple) and hasattr(like, "_fields"):
        return type(like)(*items)
    return type(like)(items)


def map_tensors(obj, fn):
    """``obj`` with every tensor ``t`` inside it replaced by ``fn(t)``; other values kept."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return _rebuild(obj, [map_tensors(v, fn) for v in obj])
    return obj


def _per_sample(t, n: int) -> bool:
    return isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape[0] == n


def select_samples(obj, index, n: int):
    """Samples ``index`` (indices or a slice) of every tensor whose first dimension is the ``n`` samples."""
    return map_tensors(obj, lambda t: t[index] if _per_sample(t, n) else t)


def join_samples(parts: list, sizes: list[int], *, strict: bool = True):
    """Join structures of the same shape holding ``sizes[k]`` samples each into one: tensors whose
    first dimension is their part's sample count are concatenated; anything else (a flag, a shared
    mask) is kept once, and must be the same in every part unless ``strict`` is False (then the
    first part's is kept: what a module returns besides its per-sample outputs)."""
    first = parts[0]
    if all(_per_sample(p, n) for p, n in zip(parts, sizes)):
        shapes = {tuple(p.shape[1:]) for p in parts}
        if len(shapes) > 1:
            raise OmpqTypeError(
                f"cannot join batches whose samples have different shapes {sorted(shapes)} (e.g. text padded "
                f"to each batch's longest sequence); pad every batch to one length, or give batches that "
                f"hold all the samples needed at once"
            )
        return torch.cat(parts, dim=0)
    if isinstance(first, Mapping):
        return {k: join_samples([p[k] for p in parts], sizes, strict=strict) for k in first}
    if isinstance(first, (list, tuple)):
        return _rebuild(first, [join_samples([p[i] for p in parts], sizes, strict=strict) for i in range(len(first))])
    if not strict or all(_same(p, first) for p in parts):
        return first
    raise OmpqTypeError(
        f"cannot join batches holding {type(first).__name__} values that differ from batch to batch and have no "
        f"sample dimension; pass input_fn=... giving tensors whose first dimension is the batch"
    )


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and bool(torch.equal(a, b))
    try:
        return bool(a == b)
    except Exception:
        return a is b


# ---------------------------------------------------------------- batches -> model calls


def as_call(inputs, what: str = "input_fn") -> tuple[tuple, dict]:
    """(args, kwargs) from model inputs: a tensor, a tuple/list of positional arguments, a dict of
    keyword arguments, or (args, kwargs). ``what`` names the source in the error message."""
    if isinstance(inputs, torch.Tensor):
        return (inputs,), {}
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    if (isinstance(inputs, tuple) and len(inputs) == 2 and isinstance(inputs[0], tuple)
            and isinstance(inputs[1], Mapping)):
        return inputs[0], dict(inputs[1])
    if isinstance(inputs, (list, tuple)):
        return tuple(inputs), {}
    raise OmpqTypeError(
        f"{what} gave {type(inputs).__name__}; give a tensor, a tuple of positional arguments, "
        f"a dict of keyword arguments, or (args, kwargs)"
    )


def batch_call(batch, input_fn=None) -> tuple[tuple, dict]:
    """(args, kwargs) for the model from one batch: ``input_fn(batch)`` if given; else a tensor is
    the input, a tuple/list is (inputs, targets, ...) so its first item is the input, a dict is
    passed as keyword arguments."""
    if input_fn is not None:
        return as_call(input_fn(batch))
    if isinstance(batch, torch.Tensor):
        return (batch,), {}
    if isinstance(batch, (list, tuple)) and batch:
        return (batch[0],), {}
    if isinstance(batch, Mapping):
        return (), dict(batch)
    raise OmpqTypeError(
        f"cannot feed a batch of type {type(batch).__name__} to the model: batches must be tensors, "
        f"(inputs, targets) tuples or dicts; pass input_fn=... to turn a batch into model inputs"
    )


def gather_samples(loader, num_samples: int, input_fn=None, *, loader_name: str = "loader",
                   count_name: str = "num_samples", min_samples: int | None = None,
                   warn: bool = True) -> tuple[tuple, dict]:
    """Draw batches until ``num_samples`` samples are in hand and join them into one model call
    (args, kwargs) of exactly that many samples. With ``min_samples``, ``num_samples`` is an upper
    bound: a loader that runs out after at least ``min_samples`` gives all it has, with a warning
    (``warn=False``: silently, where ``num_samples`` is a default the caller did not choose).
    ``loader_name`` / ``count_name``: how the caller calls these arguments, for the messages."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
        raise OmpqValueError(f"{count_name} must be an integer >= 2, got {num_samples!r}")
    if isinstance(loader, torch.Tensor):
        loader = [loader]
    try:
        iterator = iter(loader)
    except TypeError:
        raise OmpqTypeError(
            f"{loader_name} must be iterable (a DataLoader, a list of batches or a tensor), "
            f"got {type(loader).__name__}"
        ) from None
    calls, sizes = [], []
    for batch in iterator:
        call = batch_call(batch, input_fn)
        first = first_tensor(call)
        if first is None or first.dim() == 0:
            raise OmpqTypeError("a batch holds no tensor with a batch dimension; pass input_fn=...")
        calls.append(call)
        sizes.append(first.shape[0])
        if sum(sizes) >= num_samples:
            break
    have = sum(sizes)
    if have == 0:
        raise OmpqValueError(f"the {loader_name} yielded no samples; give it at least {count_name} inputs")
    if have < num_samples:
        if min_samples is None or have < min_samples:
            at_least = "" if min_samples is None else f" (at least {min_samples})"
            raise OmpqValueError(
                f"the {loader_name} yielded only {have} samples but {count_name}={num_samples}{at_least}; "
                f"give more data or lower {count_name}"
            )
        if warn:
            warnings.warn(f"the {loader_name} yielded {have} samples, fewer than {count_name}={num_samples}: "
                          f"all {have} are used", stacklevel=user_stacklevel())
        num_samples = have
    args, kwargs = join_samples([c[0] for c in calls], sizes), join_samples([c[1] for c in calls], sizes)
    return select_samples(args, slice(0, num_samples), have), select_samples(kwargs, slice(0, num_samples), have)


def sample_count(samples) -> int:
    """The number of samples in (args, kwargs) from ``gather_samples``."""
    return first_tensor(samples).shape[0]


class StopForward(BaseException):
    """Raised by a hook to end a forward pass once the wanted module has run (a BaseException, so that a
    model catching Exception does not swallow it)."""


def call_order(model: nn.Module, names: list[str], args, kwargs) -> tuple[list[str], dict[str, int]]:
    """The order in which the named submodules first run, and how often each runs, in one forward."""
    order, counts, handles = [], {n: 0 for n in names}, []
    for n in names:
        def pre(_m, _a, n=n):
            if counts[n] == 0:
                order.append(n)
            counts[n] += 1
        handles.append(model.get_submodule(n).register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return order, counts


def call_model(model: nn.Module, args, kwargs, *, samples: str, error=FeatureError):
    """Run the model on gathered samples; an exception of the model's own becomes ``error``
    saying which samples failed (``samples``: "the loader's", "the calibration") and what to check."""
    try:
        return model(*args, **kwargs)
    except OmpqError:
        raise
    except Exception as e:
        raise error(
            f"the model's forward pass failed on {samples} samples ({type(e).__name__}: {e}); "
            f"check that the batches fit the model, or pass input_fn=..."
        ) from e
