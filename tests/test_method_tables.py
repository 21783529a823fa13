"""The new planning methods' tables against brute force: ``output_error`` (the layer-output error of
each bit-width, from the op's own input rows or patches), ``kl`` (the divergence of the model's
outputs with one weight quantized), ``hessian`` (Hutchinson traces), ``verified`` (the candidate plan
that moves the outputs least), and what they share (``QuantizedWeights``: the recipe's quantized
weights). Every reference here is computed independently: the real op run with the perturbation as
its weight, the model run with the quantized weight swapped in, the exact Hessian."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import ompq_ext
from ompq_ext.allocators import OMPQ, GivenScores, HessianTrace, KLTable, OutputError, Verified
from ompq_ext.allocators.output_error import InputRows
from ompq_ext.allocators.perturbation import QuantizedWeights
from ompq_ext.layers import find_layers
from ompq_ext.quant.modules import quantized_weights
from ompq_ext.quant.ops import fake_quantize
from ompq_ext.quant.scales import weight_scale
from ompq_ext.weight_ops import module_input

# ---------------------------------------------------------------- models


class GPT2Conv1D(nn.Module):
    """Hugging Face's GPT-2 Conv1D: a (in, out) weight used through addmm."""

    def __init__(self, nx: int, nf: int):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.2)
        self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x):
        size_out = x.size()[:-1] + (self.nf,)
        x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return x.view(size_out)


class Mixed(nn.Module):
    """Every kind of weight use the output error reads rows from: a grouped, strided, dilated conv; a
    reflect-padded conv; a Conv1d; a Linear on (batch, tokens, features); a GPT-2 Conv1D (addmm); a
    self-attention and a cross-attention (packed in-projection, batch_first); a classifier head."""

    def __init__(self):
        super().__init__()
        self.conv_g = nn.Conv2d(4, 6, 3, stride=2, dilation=2, padding=1, groups=2)
        self.conv_r = nn.Conv2d(6, 4, 3, padding=1, padding_mode="reflect")
        self.conv1d = nn.Conv1d(4, 8, 3, padding=1)
        self.lin = nn.Linear(8, 16)
        self.gpt = GPT2Conv1D(16, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.cross = nn.MultiheadAttention(16, 4, batch_first=True)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        h = torch.relu(self.conv_g(x))  # (N, 6, 4, 4)
        h = torch.relu(self.conv_r(h))  # (N, 4, 4, 4)
        h = torch.relu(self.conv1d(h.flatten(2)))  # (N, 8, 16)
        h = self.lin(h.transpose(1, 2))  # (N, 16, 16): tokens
        h = torch.tanh(self.gpt(h))
        h = h + self.attn(h, h, h)[0]
        context = h[:, :5]
        h = h + self.cross(h, context, context)[0]
        return self.head(h.mean(1))


def mixed_model():
    torch.manual_seed(0)
    model = Mixed().eval()
    x = torch.randn(6, 4, 9, 9)
    return model, x


# ---------------------------------------------------------------- helpers


def quantized(w: torch.Tensor, b: int, axis: int) -> torch.Tensor:
    """The recipe's quantized weight (symmetric, per channel along ``axis``, MSE scales)."""
    w = w.detach().float()
    return fake_quantize(w, weight_scale(w, b, "mse", axis), bits=b, axis=axis)


def attention_inner(mha: nn.MultiheadAttention, q, k, v) -> torch.Tensor:
    """The attention's output before its out-projection, computed by hand (batch_first, no masks)."""
    e, h = mha.embed_dim, mha.num_heads
    w, bias = mha.in_proj_weight, mha.in_proj_bias
    qp = F.linear(q, w[:e], bias[:e])
    kp = F.linear(k, w[e:2 * e], bias[e:2 * e])
    vp = F.linear(v, w[2 * e:], bias[2 * e:])

    def heads(t):
        return t.reshape(t.shape[0], t.shape[1], h, e // h).transpose(1, 2)

    att = torch.softmax(heads(qp) @ heads(kp).transpose(-1, -2) / math.sqrt(e // h), dim=-1)
    return (att @ heads(vp)).transpose(1, 2).reshape(q.shape[0], q.shape[1], e)


def capture_inputs(model, x):
    """The float input of every planned op of ``Mixed``, in float64, from hooks on a plain forward."""
    seen = {}
    handles = []
    for name in ("conv_g", "conv_r", "conv1d", "lin", "gpt", "head"):
        handles.append(getattr(model, name).register_forward_pre_hook(
            lambda m, args, name=name: seen.__setitem__(name, args[0].detach().clone())))
    for name in ("attn", "cross"):
        handles.append(getattr(model, name).register_forward_pre_hook(
            lambda m, args, name=name: seen.__setitem__(name, tuple(a.detach().clone() for a in args))))
    try:
        with torch.no_grad():
            model(x)
        with torch.no_grad():  # the out-projections' inputs, by hand; checked against the modules
            for name in ("attn", "cross"):
                mha = getattr(model, name)
                q, k, v = seen[name]
                inner = attention_inner(mha, q, k, v)
                torch.testing.assert_close(mha.out_proj(inner), mha(q, k, v)[0], rtol=1e-5, atol=1e-5)
                seen[name + ".out_proj"] = inner
    finally:
        for hd in handles:
            hd.remove()
    return {k: tuple(t.double() for t in v) if isinstance(v, tuple) else v.double() for k, v in seen.items()}


def op_output_energy(model, inputs, name: str, w: torch.Tensor) -> float:
    """sum over the samples of ||op(x; w)||^2, bias left out: the real op of layer ``name`` with weight ``w``."""
    w = w.double()
    if name == "conv_g":
        m = model.conv_g
        y = F.conv2d(inputs[name], w, None, m.stride, m.padding, m.dilation, m.groups)
    elif name == "conv_r":
        m = model.conv_r
        padded = F.pad(inputs[name], m._reversed_padding_repeated_twice, mode="reflect")
        y = F.conv2d(padded, w, None, m.stride, 0, m.dilation, m.groups)
    elif name == "conv1d":
        m = model.conv1d
        y = F.conv1d(inputs[name], w, None, m.stride, m.padding, m.dilation, m.groups)
    elif name in ("lin", "head", "attn.out_proj", "cross.out_proj"):
        y = F.linear(inputs[name], w)
    elif name == "gpt":
        x = inputs[name]
        y = torch.addmm(torch.zeros(w.shape[1], dtype=w.dtype), x.reshape(-1, x.shape[-1]), w)
    elif name in ("attn.in_proj_weight", "cross.in_proj_weight"):
        q, k, v = inputs[name.split(".")[0]]
        e = w.shape[1]
        y = torch.cat([F.linear(t, w[j * e:(j + 1) * e]).flatten() for j, t in enumerate((q, k, v))])
    else:
        raise KeyError(name)
    return float(y.square().sum())


class Recording:
    """Mixin: keeps what ``scores`` returned, and the channel axes it was handed."""

    def scores(self, data):
        s = super().scores(data)
        self.values = s.values
        self.axes = {x.name: a for x, a in zip(data.layers, data.channel_axes)}
        self.num_samples = ompq_ext.inputs.sample_count(data.samples)
        return s


class RecordingOutputError(Recording, OutputError):
    pass


class RecordingKL(Recording, KLTable):
    pass


class RecordingHessian(Recording, HessianTrace):
    pass


def state(model):
    """Everything planning must leave alone: tensors, train flags, requires_grad, grads, hooks."""
    return ({k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
            [m.training for m in model.modules()],
            [p.requires_grad for p in model.parameters()],
            [p.grad for p in model.parameters()],
            [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()])


def assert_same_state(before, after):
    assert before[0].keys() == after[0].keys()
    for k in before[0]:
        assert torch.equal(before[0][k], after[0][k]), k
    assert before[1:] == after[1:]


# ---------------------------------------------------------------- 1. output_error vs brute force

MIXED_LAYERS = ["conv_g", "conv_r", "conv1d", "lin", "gpt", "attn.in_proj_weight", "attn.out_proj",
                "cross.in_proj_weight", "cross.out_proj", "head"]


@pytest.fixture(scope="module")
def mixed():
    model, x = mixed_model()
    return model, x, capture_inputs(model, x)


@pytest.mark.parametrize("normalize", ["none", "output"])
def test_output_error_table_is_the_brute_force_output_error(mixed, normalize):
    model, x, inputs = mixed
    n = x.shape[0]
    method = RecordingOutputError(max_rows=10**6, normalize=normalize)
    p = ompq_ext.plan(model, [x], "4bits", bits=(2, 3, 4, 5, 6), method=method, num_samples=n, progress=False)
    assert sorted(p.layer_names) == sorted(MIXED_LAYERS)
    assert method.num_samples == n and p.settings.method == "output_error"
    assert p.settings.cost == {"forward_passes": 1, "backward_passes": 0, "labels": False, "gradients": False}
    assert method.axes["gpt"] == 1 and all(a == 0 for k, a in method.axes.items() if k != "gpt")
    for name in MIXED_LAYERS:
        w = p_weight(model, name)
        axis = method.axes[name]
        signal = op_output_energy(model, inputs, name, w.detach()) / n
        assert signal > 0
        for b in (2, 3, 4, 5, 6):
            delta = quantized(w, b, axis) - w.detach().float()
            error = op_output_energy(model, inputs, name, delta) / n
            assert error > 0
            expected = -error / signal if normalize == "output" else -error
            assert method.values[name][b] == pytest.approx(expected, rel=1e-4), (name, b)


def p_weight(model, name: str) -> torch.Tensor:
    module, _, attr = name.rpartition(".")
    if attr == "in_proj_weight":
        return getattr(model, module).in_proj_weight
    return model.get_submodule(name).weight


# ---------------------------------------------------------------- 2. row sampling is unbiased


@pytest.mark.parametrize("kind", ["conv", "tokens"])
def test_sampled_rows_estimate_the_error_without_bias(kind):
    """max_rows=16 of thousands of patches (or tokens): each seed's estimate differs from the exact
    error, their mean over 200 seeds does not (the sample's sum is scaled to every row)."""
    torch.manual_seed(1)
    if kind == "conv":
        layer = nn.Conv2d(3, 4, 3, stride=1, padding=1)
        x = torch.randn(8, 3, 16, 16) + torch.linspace(-1, 2, 16)  # 8 x 16 x 16 = 2048 patches
        rows_total = 8 * 16 * 16
    else:
        layer = nn.Linear(6, 5)
        x = torch.randn(8, 300, 6) * torch.linspace(0.2, 3, 6)  # 2400 tokens
        rows_total = 8 * 300
    n = x.shape[0]
    w = layer.weight.detach()
    delta = quantized(w, 2, 0) - w
    if kind == "conv":
        exact = float(F.conv2d(x.double(), delta.double(), None, 1, 1).square().sum()) / n
    else:
        exact = float(F.linear(x.double(), delta.double()).square().sum()) / n
    op = module_input(layer, x)
    everything = InputRows(1, n, 10**6)
    everything.add_use(0, op)
    assert everything.uses[0][0][1].shape[0] == rows_total and everything.uses[0][0][2] == 1.0
    assert everything.error(0, delta) == pytest.approx(exact, rel=1e-5)

    estimates = []
    for seed in range(200):
        rows = InputRows(1, n, 16, seed)
        rows.add_use(0, op)
        assert rows.uses[0][0][1].shape[0] == 16 and rows.uses[0][0][2] == rows_total / 16
        estimates.append(rows.error(0, delta))
    estimates = np.array(estimates)
    assert len(set(estimates.round(12))) > 150  # the seeds sample different rows
    assert not np.any(np.isclose(estimates, exact, rtol=1e-9))
    standard_error = estimates.std() / math.sqrt(len(estimates))
    assert standard_error < 0.03 * exact  # the test can tell a bias of a few %
    assert abs(estimates.mean() - exact) < max(4 * standard_error, 0.005 * exact)
    assert abs(estimates.mean() - exact) < 0.05 * exact


def test_output_error_samples_rows_through_plan():
    """Through plan(): max_rows=16 of 2048 patches gives a sampled value (not the exact one) that
    depends on the seed and is repeatable for one seed."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16 * 16, 3)).eval()
    x = torch.randn(8, 3, 16, 16)

    def table(**kw):
        m = RecordingOutputError(**kw)
        ompq_ext.plan(model, [x], "4bits", method=m, num_samples=8, progress=False)
        return m.values["0"]

    exact, seed0, seed0_again, seed1 = table(max_rows=10**6), table(max_rows=16), table(max_rows=16), table(max_rows=16, seed=1)
    assert seed0 == seed0_again
    for b in exact:
        assert seed0[b] != pytest.approx(exact[b], rel=1e-6) and seed0[b] != seed1[b]
        assert seed0[b] == pytest.approx(exact[b], rel=1.0)  # of the same size


# ---------------------------------------------------------------- 3. kl table vs brute force


class Embedder(nn.Module):
    """A model whose output is a dict holding a sentence embedding (and a decoy tensor first)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 8))
        self.proj = nn.Linear(8, 4)

    def forward(self, x):
        hidden = self.body(x)
        return {"scores": self.proj(hidden), "sentence_embedding": hidden}


def classifier():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 5)).eval()
    return model, torch.randn(16, 6) * 2


def divergence_by_hand(kind: str, out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double().reshape(-1, out.shape[-1]), ref.double().reshape(-1, ref.shape[-1])
    if kind == "kl":  # KL(p || q), p the FP32 softmax, mean over rows
        p, q = torch.softmax(ref, -1), torch.softmax(out, -1)
        return float((p * (p.log() - q.log())).sum(-1).mean())
    if kind == "cosine":
        cos = (out * ref).sum(-1) / (out.norm(dim=-1) * ref.norm(dim=-1))
        return float((1 - cos).mean())
    return float((out - ref).square().mean() / ref.square().mean())


def one_weight_quantized(model, x, name: str, b: int, pick):
    """The model's output (``pick``-ed) with only layer ``name``'s weight at b bits, from a deep copy."""
    q = copy.deepcopy(model)
    w = q.get_submodule(name).weight
    with torch.no_grad():
        w.copy_(quantized(w, b, 0))
        return pick(q(x))


@pytest.mark.parametrize("kind", ["auto", "kl", "cosine", "mse"])
def test_kl_table_is_the_divergence_with_one_weight_quantized(kind):
    model, x = classifier()
    method = RecordingKL(divergence=kind)
    bits = (2, 3, 4)
    p = ompq_ext.plan(model, [x], "3bits", bits=bits, method=method, num_samples=16, progress=False)
    resolved = "kl" if kind == "auto" else kind
    assert p.settings.method == "kl" and p.settings.method_settings["divergence"] == resolved
    # the feature pass, the FP32 reference, and one forward per planned weight and bit-width
    assert p.settings.cost["forward_passes"] == 1 + 1 + 3 * len(bits)
    with torch.no_grad():
        ref = model(x)
    for name in ("0", "2", "4"):
        for b in bits:
            expected = divergence_by_hand(resolved, one_weight_quantized(model, x, name, b, lambda o: o), ref)
            assert expected > 0
            assert method.values[name][b] == pytest.approx(-expected, rel=1e-4, abs=1e-9), (name, b)
        assert method.values[name][2] < method.values[name][4]  # fewer bits, farther from FP32


def test_kl_auto_compares_a_sentence_embedding_by_cosine_and_output_fn_by_kl():
    torch.manual_seed(4)
    model, x = Embedder().eval(), torch.randn(12, 6)
    names = ("body.0", "body.2", "proj")
    with torch.no_grad():
        ref = model(x)

    auto = RecordingKL()
    p = ompq_ext.plan(model, [x], "3bits", bits=(2, 3, 4), method=auto, num_samples=12, progress=False)
    assert p.settings.method_settings["divergence"] == "cosine"
    for name in names:
        for b in (2, 3, 4):
            out = one_weight_quantized(model, x, name, b, lambda o: o["sentence_embedding"])
            expected = divergence_by_hand("cosine", out, ref["sentence_embedding"])
            assert auto.values[name][b] == pytest.approx(-expected, rel=1e-4, abs=1e-9), (name, b)
    assert auto.values["proj"][2] == 0.0  # proj does not reach the embedding

    picked = RecordingKL(output_fn=lambda o: o["scores"])
    p = ompq_ext.plan(model, [x], "3bits", bits=(2, 3, 4), method=picked, num_samples=12, progress=False)
    assert p.settings.method_settings["divergence"] == "kl" and p.settings.method_settings["output_fn"] is True
    for name in names:
        for b in (2, 3, 4):
            out = one_weight_quantized(model, x, name, b, lambda o: o["scores"])
            expected = divergence_by_hand("kl", out, ref["scores"])
            assert expected > 0
            assert picked.values[name][b] == pytest.approx(-expected, rel=1e-4, abs=1e-9), (name, b)
