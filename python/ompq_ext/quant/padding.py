"""Leaving padded positions out of calibration statistics.

A batch of text padded to its longest sequence carries an ``attention_mask`` (batch x positions, 1 for a
real token, 0 for padding), as Hugging Face tokenizers give it. The activations at padded positions
are computed but never used, and they can be far from the real ones, so a range (or GPTQ's input
moment) fitted to them is fitted to noise. While ``padding_mask(args, kwargs)`` is active, the mask of
that model call is known, and ``valid_rows(x)`` drops the padded positions of any tensor whose first two
dimensions are (batch, positions); other tensors (a convolution's input, the pooled output) pass whole.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from contextlib import contextmanager

from torch import Tensor

MASK_NAMES = ("attention_mask",)

_current = threading.local()


def find_mask(args, kwargs) -> Tensor | None:
    """The attention mask of a model call: a 2-D tensor named ``attention_mask`` among the keyword
    arguments or inside a dict among the arguments (a SentenceTransformer's features), else None."""
    places = [kwargs, *args, *kwargs.values()]
    for place in places:
        if isinstance(place, Mapping):
            for name in MASK_NAMES:
                mask = place.get(name)
                if isinstance(mask, Tensor) and mask.dim() == 2:
                    return mask
    return None


@contextmanager
def padding_mask(args, kwargs, enabled: bool = True):
    """Within the block, ``valid_rows`` knows the padding of this call (nothing, if it has no mask or
    ``enabled`` is False: then every position counts)."""
    mask = find_mask(args, kwargs) if enabled else None
    previous = getattr(_current, "mask", None)
    _current.mask = None if mask is None else mask.bool()
    try:
        yield
    finally:
        _current.mask = previous


def valid_rows(x: Tensor) -> Tensor:
    """``x`` without its padded positions, (real tokens x rest) when its leading dimensions are the
    current mask's (batch, positions); else ``x`` itself."""
    mask = getattr(_current, "mask", None)
    if mask is None or x.dim() < 3 or tuple(x.shape[:2]) != tuple(mask.shape):
        return x
    return x[mask.to(x.device)]

