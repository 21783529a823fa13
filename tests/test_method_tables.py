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
from quant_helpers import scale_bits_of


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: one thread is faster than several, and much faster beside other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


def p_weight(model, name: str) -> torch.Tensor:
    """A planned weight of ``model`` by its layer name."""
    module, _, attr = name.rpartition(".")
    if attr == "in_proj_weight":
        return getattr(model, module).in_proj_weight
    return model.get_submodule(name).weight


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
            [None if p.grad is None else p.grad.clone() for p in model.parameters()],
            [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()])


def assert_same_state(before, after):
    assert before[0].keys() == after[0].keys()
    for k in before[0]:
        assert torch.equal(before[0][k], after[0][k]), k
    assert before[1] == after[1] and before[2] == after[2] and before[4] == after[4]
    assert [g is None for g in before[3]] == [g is None for g in after[3]]
    assert all(g is None or torch.equal(g, h) for g, h in zip(before[3], after[3]))


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


class SeparateProjections(nn.Module):
    """An attention with kdim, vdim != embed_dim (separate q, k, v weights), sequence first, masked keys."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, kdim=6, vdim=5)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        q = x.transpose(0, 1)  # (T, N, 8)
        mask = torch.zeros(x.shape[0], x.shape[1], dtype=torch.bool)
        mask[:, -1] = True
        return self.head(self.attn(q, q[..., :6], q[..., 2:7], key_padding_mask=mask)[0].mean(0))


def test_output_error_of_separate_attention_projections():
    torch.manual_seed(2)
    model, x = SeparateProjections().eval(), torch.randn(4, 5, 8)
    method = RecordingOutputError(max_rows=10**6)
    p = ompq_ext.plan(model, [x], "4bits", bits=(3, 4, 5), method=method, num_samples=4, progress=False)
    assert p.layer_names == ["attn.q_proj_weight", "attn.k_proj_weight", "attn.v_proj_weight", "attn.out_proj",
                             "head"]
    a, q = model.attn, x.transpose(0, 1)
    with torch.no_grad():  # the out-projection's input by hand: 2 heads, the last key masked
        e = 8
        pairs = ((q, a.q_proj_weight), (q[..., :6], a.k_proj_weight), (q[..., 2:7], a.v_proj_weight))
        qp, kp, vp = (F.linear(t, w, a.in_proj_bias[j * e:(j + 1) * e]) for j, (t, w) in enumerate(pairs))

        def heads(t):  # (T, N, E) -> (N, H, T, E / H)
            return t.reshape(t.shape[0], t.shape[1], 2, e // 2).permute(1, 2, 0, 3)

        scores = (heads(qp) @ heads(kp).transpose(-1, -2) / math.sqrt(e // 2)).masked_fill(
            torch.arange(5) == 4, float("-inf"))
        inner = (torch.softmax(scores, -1) @ heads(vp)).permute(2, 0, 1, 3).reshape(5, 4, e)
        mask = torch.zeros(4, 5, dtype=torch.bool)
        mask[:, -1] = True
        torch.testing.assert_close(a.out_proj(inner), a(q, q[..., :6], q[..., 2:7], key_padding_mask=mask)[0])
    inputs = {a.q_proj_weight: q, a.k_proj_weight: q[..., :6], a.v_proj_weight: q[..., 2:7], a.out_proj.weight: inner}
    for name, (w, x_in) in zip(p.layer_names, inputs.items()):
        w = w.detach()
        for b in (3, 4, 5):
            error = float(F.linear(x_in.double(), (quantized(w, b, 0) - w).double()).square().sum()) / 4
            assert method.values[name][b] == pytest.approx(-error, rel=1e-4), (name, b)


def test_output_error_of_convolutions_whose_weight_is_computed():
    """weight_norm'd convolutions: their weight is computed on every access, so the ops do not show it and
    the rows come from the module's own call (module_input), which pads as the module does -- reflect and
    circular padding -- before taking strided, dilated, grouped patches."""
    from torch.nn.utils.parametrizations import weight_norm

    torch.manual_seed(12)
    model = nn.Sequential(
        weight_norm(nn.Conv2d(3, 4, 3, stride=2, dilation=2, padding=2, padding_mode="reflect")), nn.ReLU(),
        nn.Flatten(2), weight_norm(nn.Conv1d(4, 4, 3, padding=1, padding_mode="circular", groups=2)),
        nn.Flatten(), nn.Linear(4 * 16, 3)).eval()
    x = torch.randn(5, 3, 8, 8)
    seen = {}
    handles = [model[k].register_forward_pre_hook(lambda m, a, k=k: seen.__setitem__(k, a[0].detach().double()))
               for k in (0, 3)]
    with torch.no_grad():
        model(x)
    for hd in handles:
        hd.remove()
    method = RecordingOutputError(max_rows=10**6)
    p = ompq_ext.plan(model, [x], "4bits", bits=(3, 4, 5), method=method, num_samples=5, progress=False)
    assert p.layer_names == ["0", "3", "5"]
    for k, conv in ((0, F.conv2d), (3, F.conv1d)):
        m = model[k]
        with torch.no_grad():
            w = m.weight.detach().float()
        padded = F.pad(seen[k], m._reversed_padding_repeated_twice, mode=m.padding_mode)
        for b in (3, 4, 5):
            delta = (quantized(w, b, 0) - w).double()
            error = float(conv(padded, delta, None, m.stride, 0, m.dilation, m.groups).square().sum()) / 5
            assert method.values[str(k)][b] == pytest.approx(-error, rel=1e-4), (k, b)


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

    exact, seed1 = table(max_rows=10**6), table(max_rows=16, seed=1)
    seed0, seed0_again = table(max_rows=16), table(max_rows=16)
    assert seed0 == seed0_again
    for b in exact:
        assert seed0[b] != pytest.approx(exact[b], rel=1e-6) and seed0[b] != seed1[b]
        assert seed0[b] == pytest.approx(exact[b], rel=0.5)  # an estimate of it


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
    with torch.no_grad():  # confident logits: divergences large enough that KL(p||q) and KL(q||p) differ
        for m in model[::2]:
            m.weight.mul_(2.5)
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
            assert method.values[name][b] == pytest.approx(-expected, rel=1e-3, abs=1e-8), (name, b)
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
            assert auto.values[name][b] == pytest.approx(-expected, rel=1e-3, abs=1e-8), (name, b)
    assert auto.values["proj"][2] == pytest.approx(0.0, abs=1e-6)  # proj does not reach the embedding

    picked = RecordingKL(output_fn=lambda o: o["scores"])
    p = ompq_ext.plan(model, [x], "3bits", bits=(2, 3, 4), method=picked, num_samples=12, progress=False)
    assert p.settings.method_settings["divergence"] == "kl" and p.settings.method_settings["output_fn"] is True
    for name in names:
        for b in (2, 3, 4):
            out = one_weight_quantized(model, x, name, b, lambda o: o["scores"])
            expected = divergence_by_hand("kl", out, ref["scores"])
            assert expected > 0
            assert picked.values[name][b] == pytest.approx(-expected, rel=1e-3, abs=1e-8), (name, b)


def test_kl_table_is_exact_for_small_divergences():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    with torch.no_grad():
        model[2].weight.mul_(0.1)  # soft outputs: KL of 1e-9 .. 1e-7 at 6 to 8 bits
    x = torch.randn(64, 16)
    method = RecordingKL()
    ompq_ext.plan(model, [x], "7bits", bits=(6, 7, 8), method=method, num_samples=64, progress=False)
    with torch.no_grad():
        ref = model(x)
    for name in ("0", "2"):
        for b in (6, 7, 8):
            expected = divergence_by_hand("kl", one_weight_quantized(model, x, name, b, lambda o: o), ref)
            assert method.values[name][b] == pytest.approx(-expected, rel=1e-3), (name, b)
        assert method.values[name][6] < method.values[name][7] < method.values[name][8] < 0

# ---------------------------------------------------------------- 4. hessian: Hutchinson traces


def test_hessian_traces_match_the_exact_hessian_and_leave_the_model_alone():
    """A regression net: the loss is quadratic in the last weight (its Hessian is constant) and not in the
    first (whose trace here is negative: it counts as 0). Hutchinson's estimate over many probes is the
    exact trace (torch.autograd.functional.hessian), and the table is -max(trace, 0) / n * ||Q_b(W) - W||^2.
    Planning leaves flags, grads and requires_grad as they were (a training model with a frozen bias)."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x, y = torch.randn(20, 3), torch.randn(20, 2)
    model[0].bias.requires_grad_(False)
    model.train()
    before = state(model)
    probes = 3000

    def loss_fn(m):
        return F.mse_loss(m(x), y, reduction="sum")

    method = RecordingHessian(loss_fn, probes=probes, seed=7)
    p = ompq_ext.plan(model, [x], "4bits", bits=(3, 4, 5), method=method, num_samples=20, progress=False)
    assert_same_state(before, state(model))
    assert model.training and all(q.grad is None for q in model.parameters())
    assert p.settings.cost == {"forward_passes": 2, "backward_passes": 1 + probes, "labels": True, "gradients": True}
    assert p.settings.method == "hessian" and p.settings.method_settings["probes"] == probes

    weights = (model[0].weight.detach().clone(), model[2].weight.detach().clone())
    hessian = torch.autograd.functional.hessian(
        lambda a, b: F.mse_loss(functional_call(model, {"0.weight": a, "2.weight": b}, (x,)), y, reduction="sum"),
        weights)
    for j, name in enumerate(("0", "2")):
        w0, n = weights[j], weights[j].numel()
        h = hessian[j][j].reshape(n, n)
        exact = float(torch.diagonal(h).sum())
        # The probes' standard error (each layer's probe meets the other layer's through the cross blocks).
        variance = (2 * float(h.square().sum() - torch.diagonal(h).square().sum())
                    + float(hessian[j][1 - j].square().sum()))
        error = math.sqrt(variance / probes)
        assert variance > 0 and error < 0.05 * abs(exact)  # the probes must average, and can tell 5 % apart
        assert method.traces[name] == pytest.approx(exact, abs=4 * error)
        for b in (3, 4, 5):
            delta = quantized(w0, b, 0) - w0
            expected = max(exact, 0.0) / n * float(delta.double().square().sum())
            assert method.values[name][b] == pytest.approx(-expected, rel=0.05, abs=1e-12)
    assert method.traces["0"] < 0 and all(v == 0.0 for v in method.values["0"].values())
    # the quadratic layer's trace in closed form: 2 * outputs * sum of its inputs' squares
    with torch.no_grad():
        hidden = model[1](model[0](x))
    assert method.traces["2"] == pytest.approx(2 * 2 * float(hidden.double().square().sum()), rel=0.05)
    assert method.values["2"][3] < method.values["2"][4] < method.values["2"][5] < 0


def test_hessian_trace_of_a_weight_the_loss_misses_is_zero():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)).eval()
    x = torch.randn(8, 3)
    method = RecordingHessian(lambda m: m[0](x).square().sum(), probes=4)  # model[1] plays no part in the loss
    ompq_ext.plan(model, [x], "4bits", bits=(3, 4, 5), method=method, num_samples=8, progress=False)
    assert method.traces["1"] == 0.0 and all(v == 0.0 for v in method.values["1"].values())
    assert method.traces["0"] > 0 and all(v < 0 for v in method.values["0"].values())


# ---------------------------------------------------------------- 5. verified: the least divergent candidate


def small_cnn():
    torch.manual_seed(10)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, groups=2),
                          nn.ReLU(), nn.Conv2d(8, 12, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 16), nn.ReLU(),
                          nn.Linear(16, 6)).eval()
    with torch.no_grad():
        model[-1].weight.mul_(3.0)
    return model, torch.randn(16, 3, 8, 8)


def divergence_of_plan(model, x, bits: dict, axes: dict, kind: str = "kl") -> float:
    """The output divergence of ``model`` with every planned weight quantized at ``bits`` (a deep copy)."""
    q = copy.deepcopy(model)
    with torch.no_grad():
        ref = model(x)
        for name, b in bits.items():
            w = q.get_submodule(name).weight
            w.copy_(quantized(w, b, axes[name]))
        return divergence_by_hand(kind, q(x), ref)


@pytest.mark.parametrize("budget, uniform, winner, strict", [("2.7bits", 2, "ompq", True),
                                                              ("3bits", 3, "output_error", False)])
def test_verified_chooses_the_candidate_plan_that_diverges_least(budget, uniform, winner, strict):
    """At 2.7 bits the four plans differ and the last candidate (ompq) is strictly the least divergent;
    at 3 bits output_error and ompq propose one plan, and the first of a tie wins."""
    model, x = small_cnn()
    kw = {"bits": (2, 3, 4), "num_samples": 16, "progress": False}
    p = ompq_ext.plan(model, [x], budget, method=Verified(), **kw)
    s = p.settings.method_settings
    assert p.settings.method == "verified" and s["divergence"] == "kl"
    candidates = {"output_error": OutputError(), "output_error(normalize=output)": OutputError(normalize="output"),
                  "ompq": OMPQ()}
    assert s["candidates"] == list(candidates)
    divergences = s["divergences"]
    assert set(divergences) == {*candidates, f"uniform {uniform}"}
    # Each candidate's plan, planned on its own, and its divergence measured by hand.
    plans = {name: ompq_ext.plan(model, [x], budget, method=m, **kw).bits for name, m in candidates.items()}
    plans[f"uniform {uniform}"] = {n: uniform for n in p.layer_names}
    axes = {layer.name: layer.channel_axis for layer in p.layers}
    for name, bits in plans.items():
        assert divergences[name] == pytest.approx(divergence_of_plan(model, x, bits, axes), rel=1e-3), name
    assert s["chosen"] == min(divergences, key=divergences.get) == winner
    assert divergences[winner] == min(divergences.values())
    if strict:
        assert sum(d == divergences[winner] for d in divergences.values()) == 1
    assert p.bits == plans[winner]
    assert len({tuple(sorted(b.items())) for b in plans.values()}) > 1  # the candidates do disagree
    distinct = len({tuple(sorted(b.items())) for b in plans.values()})
    # The feature pass, the FP32 reference, one forward per distinct plan.
    assert p.settings.cost["forward_passes"] == 1 + 1 + distinct


def test_verified_falls_back_to_uniform_precision_when_it_wins():
    """A candidate that puts every free layer at 2 bits loses to uniform 4, the highest uniform precision
    the budget leaves room for beside a layer fixed at 8 bits; the plan is then uniform."""
    model, x = small_cnn()
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    poor = GivenScores(values={n: {b: -float(b) for b in range(2, 9)} for n in names}, name="poor")
    fixed = {"9": 8}
    p = ompq_ext.plan(model, [x], "4.3bits", bits=(2, 3, 4, 5), fixed_bits=fixed, num_samples=16, progress=False,
                      method=Verified(candidates=[poor]))
    params = {l.name: l.params for l in p.layers}
    limit = p.budgets[0].limit - 32 * p.totals.other_params
    fits = [b for b in (2, 3, 4, 5) if sum(params[n] * (8 if n in fixed else b) for n in names) <= limit]
    assert max(fits) == 4  # the budget leaves room for uniform 4, not 5
    s = p.settings.method_settings
    assert set(s["divergences"]) == {"poor", "uniform 4"} and s["chosen"] == "uniform 4"
    assert s["divergences"]["uniform 4"] < s["divergences"]["poor"]
    assert p.bits == {n: 8 if n in fixed else 4 for n in names}
    axes = {layer.name: layer.channel_axis for layer in p.layers}
    assert s["divergences"]["poor"] == pytest.approx(
        divergence_of_plan(model, x, {n: 8 if n in fixed else 2 for n in names}, axes), rel=1e-3)


# ---------------------------------------------------------------- 6. budgets, 7. the model left alone


def cnn_loss(x):
    y = torch.arange(x.shape[0]) % 6
    return lambda m: F.cross_entropy(m(x), y)


METHODS = {
    "output_error": lambda x: "output_error",
    "output_error(normalize=output)": lambda x: OutputError(normalize="output", max_rows=64),
    "kl": lambda x: "kl",
    "kl(cosine)": lambda x: KLTable(divergence="cosine"),
    "hessian": lambda x: HessianTrace(cnn_loss(x), probes=8),
    "verified": lambda x: "verified",
}


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_keeps_a_size_and_a_bops_budget(method):
    model, x = small_cnn()
    m = METHODS[method](x)
    p = ompq_ext.plan(model, [x], "3bits", bits=(2, 3, 4), method=m, num_samples=16, progress=False)
    limit = p.budgets[0].limit
    size = sum(l.params * l.bits for l in p.layers) + 32 * p.totals.other_params + scale_bits_of(model, p)
    assert p.totals.size_bits == size <= limit and p.totals.avg_bits <= 3
    assert p.totals.avg_bits > 2  # the budget is used
    assert p.settings.method == (method.split("(")[0])

    macs = sum(l.macs for l in p.layers)
    bops_limit = macs * 8 * 2.6  # tighter than the size budget: 2.6 bits per MAC on average at A8
    p = ompq_ext.plan(model, [x], ["3bits", f"{int(bops_limit)}BOPs"], bits=(2, 3, 4), method=METHODS[method](x),
                      num_samples=16, progress=False)
    assert [b.kind for b in p.budgets] == ["avg_bits", "bops"]
    assert p.totals.size_bits <= p.budgets[0].limit and p.totals.bops <= p.budgets[1].limit <= bops_limit
    assert p.totals.bops == sum(l.macs * l.bits * 8 for l in p.layers)
    assert p.totals.bops > macs * 8 * 2  # the BOPs budget is used, not just met by 2 bits everywhere


class Trainable(nn.Module):
    """A model in training mode with buffers (BatchNorm), dropout, a frozen weight and a GPT-2 Conv1D."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.drop = nn.Dropout(0.3)
        self.gpt = GPT2Conv1D(6, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        h = self.drop(torch.relu(self.bn(self.conv(x))))
        h = self.gpt(h.flatten(2).transpose(1, 2).contiguous())  # (N, 16, 8)
        h = h + self.attn(h, h, h)[0]
        return self.head(h.mean(1))


@pytest.mark.parametrize("method", list(METHODS))
def test_planning_leaves_the_model_as_it_was(method):
    torch.manual_seed(9)
    model = Trainable().train()
    x = torch.randn(8, 3, 4, 4)
    model.head.weight.requires_grad_(False)
    model.bn.running_mean.add_(0.5)
    model.conv.weight.grad = torch.full_like(model.conv.weight, 0.25)  # a gradient the user has: kept as it is
    before = state(model)
    with torch.no_grad():
        model.eval()
        out = model(x)
        model.train()
    y = torch.arange(8) % 5
    m = METHODS[method](x) if method != "hessian" else HessianTrace(lambda mm: F.cross_entropy(mm(x), y), probes=4)
    p = ompq_ext.plan(model, [x], "4bits", bits=(3, 4, 5), method=m, num_samples=8, progress=False)
    assert sorted(p.layer_names) == sorted(["conv", "gpt", "attn.in_proj_weight", "attn.out_proj", "head"])
    assert_same_state(before, state(model))
    assert model.training and model.drop.training and not model.head.weight.requires_grad
    assert model.gpt.weight.grad is None
    assert torch.equal(model.conv.weight.grad, torch.full_like(model.conv.weight, 0.25))
    assert not any(torch.nn.utils.parametrize.is_parametrized(mm) for mm in model.modules())
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(x), out)
        model.train()


# ---------------------------------------------------------------- 8. the quantized weights are the recipe's


class ConvGPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, padding=1, groups=2)
        self.gpt = GPT2Conv1D(6, 10)
        self.head = nn.Linear(10, 3)

    def forward(self, x):
        h = torch.relu(self.conv(x)).flatten(2).transpose(1, 2).contiguous()
        return self.head(torch.tanh(self.gpt(h)).mean(1))


@pytest.mark.parametrize("bits", [(3, 5), (2, 8), (6, 4)])
def test_quantized_weights_are_what_quantize_puts_on_the_layer(bits):
    torch.manual_seed(11)
    model, x = ConvGPT().eval(), torch.randn(8, 4, 5, 5)
    with torch.no_grad():
        model.gpt.weight[:, 3] *= 6.0  # one output column far wider: per-column scales matter
        model.conv.weight[2] *= 0.1  # one output channel far narrower
    fixed = {"conv": bits[0], "gpt": bits[1], "head": 8}
    p = ompq_ext.plan(model, [x], "6bits", fixed_bits=fixed, num_samples=8, progress=False)
    assert p.bits == fixed and {l.name: l.channel_axis for l in p.layers} == {"conv": 0, "gpt": 1, "head": 0}
    q = ompq_ext.quantize(model, p, method="rtn", act_bits=0, progress=False)
    got = {qw.name: qw for qw in quantized_weights(q)}
    assert {n: qw.bits for n, qw in got.items()} == fixed

    layers = {l.name: l for l in find_layers(model, optional=True)}
    qweights = QuantizedWeights([layers["conv"], layers["gpt"]], [0, 1])
    with torch.no_grad():
        for i, name in enumerate(("conv", "gpt")):
            expected = got[name].weight_quantizer(got[name].weight)
            assert torch.equal(qweights.quantized(i, fixed[name]), expected), name
            assert torch.equal(qweights.delta(i, fixed[name]), expected - model.get_submodule(name).weight)
            # the scales are per output channel: a scale over the other axis would differ
            other = fake_quantize(qweights.float[i], weight_scale(qweights.float[i], fixed[name], "mse", 1 - i),
                                  bits=fixed[name], axis=1 - i)
            assert not torch.equal(other, expected)
        assert torch.equal(q.gpt.weight, qweights.quantized(1, fixed["gpt"]))  # what the addmm reads
    # float32 weights are read in place (no copy of the model), and only the scales are cached
    fresh = QuantizedWeights([layers["gpt"]], [1])
    assert fresh.float[0].data_ptr() == model.gpt.weight.data_ptr()
    first = fresh.quantized(0, 3)
    assert list(fresh._scales) == [(0, 3)] and torch.equal(fresh.quantized(0, 3), first)


def test_verified_plans_a_model_with_computed_weights_leaving_them_fp32_in_the_comparison():
    """A weight-normed layer's weight is computed at each call: the default method still plans the model
    (the comparison keeps that weight at FP32, with a warning); "kl", which must swap it, refuses."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(12, 16)), nn.ReLU(), nn.Linear(16, 5)).eval()
    x = torch.randn(32, 12)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(UserWarning, match="computed at each call"):
        p = ompq_ext.plan(model, [x], "3bits", progress=False)
    assert p.settings.method == "verified" and p.totals.size_bits <= p.budgets[0].limit
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(ompq_ext.OmpqError, match="computed"):
        ompq_ext.plan(model, [x], "3bits", method="kl", progress=False)


def test_verified_adds_up_what_its_candidates_needed():
    """A candidate that needs labels and gradients (the Hessian) makes the plan record them, its passes added
    to verified's own: the feature pass, the FP32 reference and one forward per distinct candidate plan."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 5)).eval()
    x = torch.randn(32, 12)
    y = torch.randint(0, 5, (32,))
    method = Verified([HessianTrace(lambda m: F.cross_entropy(m(x), y), probes=2), OMPQ()], uniform=False)
    p = ompq_ext.plan(model, [x], "3bits", method=method, progress=False)
    distinct = len(set(p.settings.method_settings["divergences"].values()))
    assert p.settings.cost == {"forward_passes": 1 + 1 + 1 + distinct, "backward_passes": 3, "labels": True,
                               "gradients": True}


def test_output_error_keeps_the_rows_an_op_saw_when_the_model_later_changes_them_in_place():
    """A Linear whose few rows are kept whole: they are a copy, not a view of an input the model scales in place
    after the op (before the fix the table was 100^2 times too large)."""

    class ScalesAfter(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.head = nn.Linear(8, 8), nn.Linear(8, 3)

        def forward(self, x):
            h = torch.relu(self.fc(x))
            y = self.head(h)
            h.mul_(100.0)
            return y

    class Kept(OutputError):
        def scores(self, data):
            self.kept = super().scores(data)
            return self.kept

    torch.manual_seed(0)
    model, x = ScalesAfter().eval(), torch.randn(16, 8)
    method = Kept()
    ompq_ext.plan(model, [x], "4bits", method=method, num_samples=16, progress=False)
    with torch.no_grad():
        h = torch.relu(model.fc(x))
    w = model.head.weight.detach()
    for b, value in method.kept.values["head"].items():
        delta = fake_quantize(w, weight_scale(w, b, "mse", 0), bits=b, axis=0) - w
        assert value == pytest.approx(-float(F.linear(h, delta).double().square().sum()) / 16, rel=1e-5), b
