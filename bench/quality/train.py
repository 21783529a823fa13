"""Train the quality-benchmark models once and cache them.

    python bench/quality/train.py mnist1d --seeds 0 1 2
    python bench/quality/train.py fashion --seeds 0

A model is keyed by (testbed, seed, epochs, training subset) plus an architecture tag, and is
stored as a state dict with a JSON record (test accuracy, training time, machine) in
``$OMPQ_QUALITY_CACHE`` (default ``~/.cache/ompq_ext/quality``), outside the repository. A cached
model is loaded instead of retrained; ``--force`` retrains.

Recipes (TESTBEDS.md): MNIST-1D, 1-D ResNet width 32, 20 epochs, batch 64 (99.3-99.5 % expected);
Fashion-MNIST, a 10 000-image training subset, 2-D ResNet width 16, 8 epochs, batch 64 (~87.5 %).
Both use AdamW with a one-cycle schedule. Seeds fix the initialisation and the batch order; torch
keeps its default thread count.
"""

from __future__ import annotations

import os

# OpenMP threads that spin while waiting make every torch / ompq_ext op tens of times slower
# when another process shares the 2 cores (measured: 100-step AdaRound on MNIST-1D took 37-141 s
# instead of 5-7 s). Passive waiting keeps the default thread count; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import data as qdata  # noqa: E402

from ompq_ext.models import ResNet, resnet1d  # noqa: E402


def cache_dir() -> Path:
    return Path(os.environ.get("OMPQ_QUALITY_CACHE", Path.home() / ".cache" / "ompq_ext" / "quality")).expanduser()


@dataclass(frozen=True)
class Testbed:
    name: str
    arch: str          # tag in the cache key; change it when the architecture changes
    epochs: int
    subset: int | None  # training images kept (None: all)
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4

    def build(self) -> nn.Module:
        if self.name == "mnist1d":
            return resnet1d(width=32)
        if self.name == "fashion":
            # the 2-D counterpart of resnet1d(width=16): stages (16, 16, 32), 3x3 stem, 52.6 k params
            return ResNet((2, 2, 2), (16, 16, 32), dims=2, in_channels=1, num_classes=10, imagenet_stem=False)
        raise ValueError(f"unknown testbed {self.name!r}")

    def load_data(self) -> qdata.Split:
        if self.name == "mnist1d":
            return qdata.mnist1d()
        return qdata.fashion_mnist(subset=self.subset)


TESTBEDS = {
    "mnist1d": Testbed("mnist1d", "resnet1d-w32", epochs=20, subset=None),
    "fashion": Testbed("fashion", "resnet2d-w16", epochs=8, subset=10_000),
}


def cache_key(testbed: Testbed, seed: int, epochs: int, subset) -> str:
    return f"{testbed.name}-{testbed.arch}-seed{seed}-ep{epochs}-{'full' if subset is None else subset}"


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 200) -> float:
    """Top-1 accuracy in eval mode, without gradients. Batches of 200: activations that stay in
    cache make the Fashion-MNIST ResNet 4x faster than batches of 1000 (0.85 s vs 3.9 s)."""
    was_training = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            correct += (model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
    model.train(was_training)
    return correct / len(x)


def fit(model: nn.Module, split: qdata.Split, testbed: Testbed, epochs: int, seed: int, log=print) -> None:
    torch.manual_seed(seed)
    order_gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = len(split.x_train) // testbed.batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=testbed.lr, weight_decay=testbed.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=testbed.lr, total_steps=epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(split.x_train), generator=order_gen)
        for i in range(steps_per_epoch):
            idx = order[i * testbed.batch_size:(i + 1) * testbed.batch_size]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(split.x_train[idx]), split.y_train[idx]).backward()
            opt.step()
            sched.step()
        if log is not None and (epoch + 1 == epochs or (epoch + 1) % max(1, epochs // 4) == 0):
            log(f"  {testbed.name} seed {seed} epoch {epoch + 1}/{epochs}: "
                f"test accuracy {evaluate(model, split.x_test, split.y_test):.4f}")
    model.eval()


def get_model(name: str, seed: int = 0, *, epochs: int | None = None, subset="default", split=None,
              force: bool = False, log=print):
    """(model in eval mode, record) for a testbed and seed: from the cache, or trained and cached.

    ``record`` holds the key, test accuracy, training seconds (0 when loaded) and where it lives.
    """
    testbed = TESTBEDS[name]
    epochs = testbed.epochs if epochs is None else epochs
    subset = testbed.subset if subset == "default" else subset
    if subset != testbed.subset:
        testbed = Testbed(**{**testbed.__dict__, "subset": subset})
    key = cache_key(testbed, seed, epochs, subset)
    root = cache_dir()
    weights, meta = root / f"{key}.pt", root / f"{key}.json"
    model = testbed.build()
    if weights.exists() and meta.exists() and not force:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        record = json.loads(meta.read_text())
        record.update(loaded=True, path=str(weights))
        return model.eval(), record

    split = testbed.load_data() if split is None else split
    if log is not None:
        log(f"training {key} ({sum(p.numel() for p in model.parameters()):,} parameters, "
            f"{len(split.x_train)} training inputs, {torch.get_num_threads()} threads)")
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model = testbed.build()  # initialisation fixed by the seed
    fit(model, split, testbed, epochs, seed, log=log)
    seconds = time.perf_counter() - t0
    record = {"key": key, "testbed": testbed.name, "arch": testbed.arch, "seed": seed, "epochs": epochs,
              "subset": subset, "test_accuracy": evaluate(model, split.x_test, split.y_test),
              "train_seconds": round(seconds, 2), "threads": torch.get_num_threads(),
              "torch": torch.__version__}
    root.mkdir(parents=True, exist_ok=True)
    tmp = weights.with_suffix(f".tmp{os.getpid()}")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, weights)  # atomic: a concurrent reader sees the old file or the new one
    tmp = meta.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, meta)
    record.update(loaded=False, path=str(weights))
    return model.eval(), record


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("testbed", choices=sorted(TESTBEDS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--subset", type=int, default=None, help="training images kept (default: the testbed's)")
    p.add_argument("--force", action="store_true", help="retrain even when cached")
    args = p.parse_args(argv)
    subset = "default" if args.subset is None else args.subset
    split = None
    for seed in args.seeds:
        model, rec = get_model(args.testbed, seed, epochs=args.epochs, subset=subset, split=split, force=args.force)
        print(f"{rec['key']}: test accuracy {rec['test_accuracy']:.4f}, "
              f"{'loaded from cache' if rec['loaded'] else 'trained in %.1f s' % rec['train_seconds']} ({rec['path']})")


if __name__ == "__main__":
    main()
