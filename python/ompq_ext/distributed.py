"""plan(..., process_group=...) under torch.distributed: every rank of the group draws its own samples (its part
of the batch) and gets the same plan, the one a single process gets on all the ranks' samples joined in rank
order (with bn_mode="eval": batch statistics would differ per rank, so "batch" is refused).

With OMPQ each rank runs the feature pass on its own samples only. A Gram is over all the samples, so each
layer's features are gathered (``all_gather``), each rank forms its own rows of the Gram (its samples
against everyone's), and ``finish()`` sums the ranks' rows (``all_reduce``): the forward and the products
are split between the ranks; the Grams, the ORM, the scores and the solve are then the same on every rank.
Methods that run more forward passes of their own (the default "verified", "output_error", "kl", ...) get
every rank's samples gathered first and plan on all of them on every rank (the same plan, nothing split).
Collectives run on the process group's device: CPU tensors with gloo, the current CUDA device with nccl.
A rank whose checks or samples fail before the pass makes every rank raise (``agreeing``); a rank whose forward
pass fails halfway leaves the others waiting in a collective until the group's timeout.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from .errors import OmpqError, OmpqValueError
from .features import GramCollector, _flatten_samples
from .inputs import join_samples, map_tensors, sample_count, tensors


@dataclass
class Shard:
    """This rank's part of the samples: every rank's count, in rank order, and the group planning together."""

    rank: int
    counts: list[int]
    device: torch.device  # where the process group's collectives run
    group: object = None

    @property
    def offset(self) -> int:
        return sum(self.counts[: self.rank])

    @property
    def count(self) -> int:
        return self.counts[self.rank]

    @property
    def total(self) -> int:
        return sum(self.counts)


@contextmanager
def agreeing(group):
    """The data stage of a plan() with a process group (None: nothing to agree on). Every rank reports
    whether its own checks passed before any collective of the pass: a rank that raised makes every rank
    raise (an OmpqError naming it) instead of leaving the others waiting. Yields ``agree(samples) -> Shard``
    (None without a group), called once this rank's samples are in hand."""
    if group is None:
        yield lambda samples: None
        return
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        raise OmpqValueError("process_group is given but torch.distributed is not initialised; call "
                             "torch.distributed.init_process_group first, or leave process_group=None")
    size = dist.get_world_size(group)
    agreed = []

    def exchange(report):
        reports = [None] * size
        dist.all_gather_object(reports, report, group=group)
        return reports

    def agree(samples) -> Shard:
        reports = exchange(("ok", sample_count(samples)))
        agreed.append(True)
        failed = [(r, text) for r, (kind, text) in enumerate(reports) if kind != "ok"]
        if failed:
            rank, text = failed[0]
            raise OmpqError(f"plan() failed on rank {rank} of the process group: {text}")
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else torch.device("cpu")
        return Shard(dist.get_rank(group), [int(count) for _, count in reports], device, group)

    try:
        yield agree
    except Exception as e:
        if not agreed:  # this rank failed before agreeing: tell the others, then raise here
            exchange(("error", f"{type(e).__name__}: {e}"))
        raise


def all_samples(samples, shard: Shard):
    """Every rank's samples joined in rank order, on every rank (for methods that do not split their work)."""
    parts = [None] * len(shard.counts)
    torch.distributed.all_gather_object(parts, map_tensors(samples, lambda t: t.detach().cpu()), group=shard.group)
    device = next((t.device for t in tensors(samples)), torch.device("cpu"))
    args = join_samples([p[0] for p in parts], shard.counts)
    kwargs = join_samples([p[1] for p in parts], shard.counts)
    return map_tensors((args, kwargs), lambda t: t.to(device))


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
        # The ranks' calls are matched by order alone: check that they agree on the layer and its width.
        here = torch.tensor([i, width], dtype=torch.int64, device=shard.device)
        seen = [torch.empty_like(here) for _ in shard.counts]
        torch.distributed.all_gather(seen, here, group=shard.group)
        if any(not torch.equal(s, here) for s in seen):
            pairs = [tuple(int(v) for v in s.tolist()) for s in seen]
            raise OmpqError(f"the ranks' feature passes went apart: (layer, feature width) per rank {pairs}; every "
                            f"rank must run the same layers in the same order (no data-dependent branches)")
        padded = torch.zeros((max(shard.counts), width), dtype=torch.float64, device=shard.device)
        padded[: shard.count] = flat
        parts = [torch.empty_like(padded) for _ in shard.counts]
        torch.distributed.all_gather(parts, padded, group=shard.group)
        everyone = torch.cat([p[:n] for p, n in zip(parts, shard.counts)])
        rows = (flat @ everyone.T).cpu().numpy()
        self.grams[i, shard.offset: shard.offset + shard.count] += rows
        self._on_host.add(i)
        if not np.all(np.isfinite(rows)):
            self._report_not_finite(i)

    def finish(self):
        grams = torch.from_numpy(self.grams).to(self.shard.device)
        torch.distributed.all_reduce(grams, group=self.shard.group)
        grams = grams.cpu().numpy()
        self.grams = 0.5 * (grams + grams.transpose(0, 2, 1))  # each half was summed in its own order
        if not np.all(np.isfinite(self.grams)):
            raise OmpqError("internal error: the Grams summed over the ranks are not finite")
