"""plan() under torch.distributed: every rank draws its own samples (its part of the batch) and gets the same
plan, the one a single process gets on all the ranks' samples joined in rank order.

With OMPQ each rank runs the feature pass on its own samples only. A Gram is over all the samples, so each
layer's features are gathered (``all_gather``), each rank forms its own rows of the Gram (its samples
against everyone's), and ``finish()`` sums the ranks' rows (``all_reduce``): the forward and the products
are split between the ranks; the Grams, the ORM, the scores and the solve are then the same on every rank.
Methods that run more forward passes of their own (the default "verified", "output_error", "kl", ...) get
every rank's samples gathered first and plan on all of them on every rank (the same plan, nothing split).
Collectives run on the process group's device: CPU tensors with gloo, the current CUDA device with nccl.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import OmpqError
from .features import GramCollector, _flatten_samples
from .inputs import join_samples, map_tensors, sample_count


@dataclass
class Shard:
    """This rank's part of the samples: every rank's count, in rank order."""

    rank: int
    counts: list[int]
    device: torch.device  # where the process group's collectives run

    @property
    def offset(self) -> int:
        return sum(self.counts[: self.rank])

    @property
    def count(self) -> int:
        return self.counts[self.rank]

    @property
    def total(self) -> int:
        return sum(self.counts)


def active() -> bool:
    """Whether plan() runs under an initialised torch.distributed with more than one rank."""
    return (torch.distributed.is_available() and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1)


def shard_of(samples) -> Shard:
    """The shard of this rank's ``samples`` (a collective: every rank calls it)."""
    dist = torch.distributed
    device = (torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl"
              else torch.device("cpu"))
    counts = [None] * dist.get_world_size()
    dist.all_gather_object(counts, sample_count(samples))
    return Shard(dist.get_rank(), [int(c) for c in counts], device)


def all_samples(samples, shard: Shard):
    """Every rank's samples joined in rank order, on every rank (for methods that do not split their work)."""
    parts = [None] * len(shard.counts)
    torch.distributed.all_gather_object(parts, map_tensors(samples, lambda t: t.detach().cpu()))
    device = next((t.device for t in _tensors(samples)), torch.device("cpu"))
    args = join_samples([p[0] for p in parts], shard.counts)
    kwargs = join_samples([p[1] for p in parts], shard.counts)
    return map_tensors((args, kwargs), lambda t: t.to(device))


def _tensors(obj):
    out = []
    map_tensors(obj, lambda t: out.append(t) or t)
    return out


class ShardedGrams(GramCollector):
    """OMPQ's Grams over every rank's samples from each rank's own feature pass: a layer's features are gathered
    from all ranks, this rank adds its rows (its samples against all, in float64), ``finish()`` sums the rows
    of all ranks. Every rank must see the same layers called the same number of times (the same model)."""

    def __init__(self, layers, shard: Shard, *, num_threads: int = 0):
        super().__init__(layers, shard.total, num_threads=num_threads)
        self.shard = shard

    def add(self, i: int, out: torch.Tensor, source: str = ""):
        shard = self.shard
        flat = _flatten_samples(out, shard.count).to(shard.device, torch.float64)
        width = flat.shape[1]
        padded = torch.zeros((max(shard.counts), width), dtype=torch.float64, device=shard.device)
        padded[: shard.count] = flat
        parts = [torch.empty_like(padded) for _ in shard.counts]
        torch.distributed.all_gather(parts, padded)
        everyone = torch.cat([p[:n] for p, n in zip(parts, shard.counts)])
        rows = (flat @ everyone.T).cpu().numpy()
        self.grams[i, shard.offset: shard.offset + shard.count] += rows
        self._on_host.add(i)
        if not np.all(np.isfinite(rows)):
            self._report_not_finite(i)

    def finish(self):
        grams = torch.from_numpy(self.grams).to(self.shard.device)
        torch.distributed.all_reduce(grams)
        grams = grams.cpu().numpy()
        self.grams = 0.5 * (grams + grams.transpose(0, 2, 1))  # each half was summed in its own order
        if not np.all(np.isfinite(self.grams)):
            raise OmpqError("internal error: the Grams summed over the ranks are not finite")
