"""Every weight of real architectures is planned and quantized: weights used through functional calls
(``F.linear`` on a module's weight, ``nn.MultiheadAttention``'s projections), Hugging Face's GPT-2
``Conv1D`` (an ``addmm``), BERT, and the real MiniLM. Built from configs with random weights (no
download); each skips where its package is absent.

For each: the planned weights are exactly the Linear / Conv / attention-projection weights (no "never
ran" warning), the plan keeps its budget, planning leaves the model as it was, and in the quantized
model every op receives each planned weight on its quantization grid."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

import ompq_ext
from ompq_ext.quant.modules import channel_shape
from ompq_ext.quant.ops import quant_range
from ompq_ext.weight_ops import attention_arguments, input_of, weight_of
from ompq_ext.inputs import batch_call
from ompq_ext.models import VisionTransformer, vit_b_16
from ompq_ext.quant.modules import quantized_weights
from pretrained import import_torchvision, minilm_and_batch


class ReceivedOperands(TorchFunctionMode):
    """Every (weight, input) pair the linear / convolution / attention ops receive during a forward pass."""

    def __init__(self):
        super().__init__()
        self.received = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.multi_head_attention_forward:
            a = attention_arguments(args, kwargs)
            separate = a["use_separate_proj_weight"]
            for x, w in zip(("query", "key", "value"), ("q_proj_weight", "k_proj_weight", "v_proj_weight")):
                self.received.append((a[w] if separate else a["in_proj_weight"], a[x]))
            self.received.append((a["out_proj_weight"], None))  # its input lies inside the call
        else:
            weight, where = weight_of(func, args, kwargs)
            if weight is not None:
                self.received.append((weight, input_of(where, args, kwargs)))
        return func(*args, **kwargs)


def state(model):
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            [(type(m).__name__, len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()])


def plan_and_check(model, batch, expected_names, *, input_fn=None, budget="4bits"):
    """Plan (no warning but a short loader's), check the planned set, the budget, the model untouched;
    quantize; check every planned weight reaches its ops on its grid. Returns (plan, qmodel)."""
    before = state(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = ompq_ext.plan(model, [batch], budget, input_fn=input_fn, progress=False)
    other = [str(w.message) for w in caught if "fewer than num_samples" not in str(w.message)]
    assert not other, other
    assert sorted(p.layer_names) == sorted(expected_names)
    assert p.totals.avg_bits <= float(budget.removesuffix("bits"))
    after = state(model)
    assert before[1] == after[1] and all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in model.modules())

    q = ompq_ext.quantize(model, p, [batch], input_fn=input_fn, num_calib=p.settings.num_samples, progress=False)
    assert sorted(x.name for x in quantized_weights(q)) == sorted(expected_names)
    assert_weights_on_grid(q, batch_call(batch, input_fn))
    report = ompq_ext.quant_report(q)
    assert report["size_bits"] == p.totals.size_bits
    assert report["bops"] == p.totals.bops  # every planned weight's inputs are quantized at the plan's bits
    return p, q


def assert_weights_on_grid(q, call):
    """In a forward of the quantized model, the ops receive every quantized weight on its grid, and
    every input of those ops on the grid of the weight's input quantizer."""
    spy = ReceivedOperands()
    with torch.no_grad(), spy:
        q(*call[0], **call[1])
    received = [(w, x) for w, x in spy.received if isinstance(w, torch.Tensor)]
    for qw in quantized_weights(q):
        with torch.no_grad():
            expected = qw.weight_quantizer(qw.weight)
        inputs = [x for w, x in received if w.shape == expected.shape and torch.equal(w, expected)]
        assert inputs, qw.name
        scale = qw.weight_quantizer.scale.reshape(channel_shape(expected, qw.weight_quantizer.axis))
        levels = expected / scale
        assert torch.allclose(levels, levels.round(), atol=1e-3) and levels.abs().max() <= 2 ** (qw.bits - 1), qw.name
        iq = qw.input_quantizer
        if iq is None:
            continue
        inputs = [x for x in inputs if isinstance(x, torch.Tensor) and x.is_floating_point()]
        assert inputs, f"{qw.name}: no op received a floating-point input with it"
        low, high = quant_range(iq.bits, iq.signed)
        for x in inputs:
            levels = x / iq.scale
            assert torch.allclose(levels, levels.round(), atol=1e-3), f"{qw.name}: input off its grid"
            assert low - 1e-3 <= levels.min() and levels.max() <= high + 1e-3, qw.name


def tiny_gpt2(transformers):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config).eval(), torch.randint(0, 100, (16, 12))


def relative_error(a, b):
    return float((a - b).norm() / b.norm())


# ---------------------------------------------------------------- torch.nn


class FunctionalAttention(nn.Module):
    """As torchvision's Swin: the qkv and proj Linear modules never run; F.linear uses their weights."""

    def __init__(self, dim=16):
        super().__init__()
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        q, k, v = F.linear(x, self.qkv.weight, self.qkv.bias).chunk(3, dim=-1)
        attn = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1)
        x = x + F.linear(attn @ v, self.proj.weight, self.proj.bias)
        return x + self.mlp(x)


def test_weights_used_through_functional_calls():
    torch.manual_seed(0)
    model, x = nn.Sequential(FunctionalAttention(), FunctionalAttention()).eval(), torch.randn(16, 9, 16)
    names = [f"{b}.{n}" for b in "01" for n in ("qkv", "proj", "mlp.0", "mlp.2")]
    p, q = plan_and_check(model, x, names)
    assert all(x.functional == (x.name.endswith(("qkv", "proj"))) for x in p.layers)
    assert p.layers[0].macs == 9 * 16 * 48  # tokens x in x out, per sample
    with torch.no_grad():
        assert 1e-4 < relative_error(q(x), model(x)) < 0.5


def test_transformer_encoder_with_multihead_attention():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
    model, x = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval(), torch.randn(16, 10, 32)
    with torch.no_grad():  # the encoder copies one layer: make the copies differ, so each weight is told apart
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    names = [f"layers.{i}.{n}" for i in range(2)
             for n in ("self_attn.in_proj_weight", "self_attn.out_proj", "linear1", "linear2")]
    p, q = plan_and_check(model, x, names)
    in_proj = next(x for x in p.layers if x.name.endswith("in_proj_weight"))
    assert in_proj.kind == "MultiheadAttention.in_proj_weight" and in_proj.params == 3 * 32 * 32
    assert in_proj.macs == 10 * 32 * 96 and in_proj.functional
    with torch.no_grad():
        assert 1e-4 < relative_error(q(x), model(x)) < 0.5


def test_vision_transformer_as_torchvision_builds_it():
    """ompq_ext.models.VisionTransformer: torchvision's ViT structure (vit_b_16 at full size), smaller."""
    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, layers=2, heads=2, dim=32, mlp_dim=64, num_classes=10).eval()
    names = ["conv_proj", "head"] + [f"layers.{i}.{n}" for i in range(2) for n in
                                     ("self_attention.in_proj_weight", "self_attention.out_proj", "mlp.0", "mlp.2")]
    x = torch.randn(16, 3, 32, 32)
    _, q = plan_and_check(model, x, names)
    with torch.no_grad():
        assert 1e-4 < relative_error(q(x), model(x)) < 0.5
    assert sum(p.numel() for p in vit_b_16().parameters()) == 86_567_656  # torchvision's vit_b_16


def test_multihead_attention_features_are_its_projections():
    """The features of the packed projection are q, k and v side by side; of out_proj, the attention output."""
    torch.manual_seed(0)

    class Cross(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x, memory):
            return self.attn(x, memory, memory, need_weights=False)[0]

    model = Cross().eval()
    x, memory = torch.randn(12, 5, 8), torch.randn(12, 7, 8)  # the functional form sees them sequence first
    p = ompq_ext.plan(model, [((x, memory), {})], "4bits", num_samples=12, input_fn=lambda b: b, method="ompq",
                      progress=False)
    # The reference in float64: the plan's float32 features round differently with the CPU's kernels
    # (an AVX-512 machine moved the ORM by 1.3e-9), so it is held to float32's accuracy, 1e-6.
    exact = copy.deepcopy(model).double()
    x, memory = x.double(), memory.double()
    w, b = exact.attn.in_proj_weight, exact.attn.in_proj_bias
    with torch.no_grad():
        q = F.linear(x, w[:8], b[:8]).reshape(12, -1)
        k = F.linear(memory, w[8:16], b[8:16]).reshape(12, -1)
        v = F.linear(memory, w[16:], b[16:]).reshape(12, -1)
        out = exact(x, memory).reshape(12, -1)
    feats = {"attn.in_proj_weight": torch.cat([q, k, v], 1), "attn.out_proj": out}

    def cka(a, b):
        a, b = a - a.mean(0), b - b.mean(0)
        return float((b.T @ a).norm() ** 2 / ((a.T @ a).norm() * (b.T @ b).norm()))

    assert p.layer_names == ["attn.in_proj_weight", "attn.out_proj"]
    assert p.orm[0, 1] == pytest.approx(cka(feats["attn.in_proj_weight"], feats["attn.out_proj"]), abs=1e-6)


# ---------------------------------------------------------------- Hugging Face transformers, from configs


def test_bert_from_a_config():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=64)
    model, ids = transformers.BertModel(config).eval(), torch.randint(0, 100, (16, 12))
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert len(names) == 13  # 2 x (q, k, v, attention output, intermediate, output) + the pooler
    _, q = plan_and_check(model, {"input_ids": ids}, names)
    with torch.no_grad():
        assert 1e-5 < relative_error(q(input_ids=ids).last_hidden_state, model(input_ids=ids).last_hidden_state) < 0.5


def test_gpt2_conv1d_from_a_config():
    model, ids = tiny_gpt2(pytest.importorskip("transformers"))
    conv1d = [n for n, m in model.named_modules() if type(m).__name__ == "Conv1D"]
    assert len(conv1d) == 8  # GPT-2's Conv1D is not an nn.Linear: found where an addmm consumes its weight
    p, q = plan_and_check(model, {"input_ids": ids}, conv1d + ["lm_head"])
    c_attn = next(x for x in p.layers if x.name.endswith("h.0.attn.c_attn"))
    assert c_attn.kind == "Conv1D" and c_attn.macs == 12 * 32 * 96
    with torch.no_grad():
        assert 1e-5 < relative_error(q(input_ids=ids).logits, model(input_ids=ids).logits) < 0.5


# ---------------------------------------------------------------- torchvision, where it imports


def torchvision_models():
    return import_torchvision().models


@pytest.mark.parametrize("arch", ["vit_b_16", "swin_t", "mobilenet_v3_small", "convnext_tiny"])
def test_torchvision(arch):
    models = torchvision_models()
    torch.manual_seed(0)
    model = getattr(models, arch)(weights=None).eval()
    x = torch.randn(8, 3, 224, 224)
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    names += [f"{n}.in_proj_weight" for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    if arch == "vit_b_16":  # torchvision zero-initialises the head: a layer whose output never varies
        with pytest.warns(UserWarning, match="same features for every sample.*'heads.head'"):
            p = ompq_ext.plan(model, [x], "4bits", progress=False)
        assert sorted(p.layer_names) == sorted(names) and p.totals.avg_bits <= 4
        with torch.no_grad():
            model.heads.head.weight.normal_()  # then the rest of the checks, without that warning
    plan_and_check(model, x, names)


# ---------------------------------------------------------------- the real MiniLM


def test_minilm_every_linear(monkeypatch):
    model, features = minilm_and_batch(monkeypatch, 16)
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert len([n for n in linear if ".encoder." in n]) == 36
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = ompq_ext.plan(model, [features], "4bits", input_fn=lambda b: ((b,), {}), progress=False)
    # Every Linear is planned; only the pooler may not run (whether it does depends on the transformers release).
    assert sorted(p.layer_names + p.skipped) == sorted(linear) and set(p.skipped) <= {"0.model.pooler.dense",
                                                                                    "0.auto_model.pooler.dense"}
    assert all("never ran" not in str(w.message) or p.skipped for w in caught) and p.totals.avg_bits <= 4
    q = ompq_ext.quantize(model, p, [features], input_fn=lambda b: ((b,), {}), num_calib=16, progress=False)
    with torch.no_grad():
        a, b = model(features)["sentence_embedding"], q(features)["sentence_embedding"]
    assert 1e-4 < relative_error(b, a) < 0.5


def test_planning_a_transformer_that_raises_leaves_it_as_it_was():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()

    def fail(module, args, output):
        raise RuntimeError("midway")

    model.layers[1].linear1.register_forward_hook(fail)
    before = state(model)
    with pytest.raises(ompq_ext.FeatureError, match="midway"):
        ompq_ext.plan(model, [torch.randn(16, 6, 16)], "4bits", progress=False)
    after = state(model)
    assert before[1] == after[1] and all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in model.modules())
    assert torch._C._len_torch_function_stack() == 0  # the observing mode is gone
    assert model.training is False and all(not m.training for m in model.modules())


def test_attention_projections_are_not_computed_twice(monkeypatch):
    """The feature pass takes q, k, v from torch's own in-projection: no linear op more than a forward."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    model, x = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval(), torch.randn(16, 6, 16)
    calls, real = [], F.linear
    monkeypatch.setattr(torch.nn.functional, "linear", lambda *a, **k: calls.append(1) or real(*a, **k))

    class PassThrough(TorchFunctionMode):  # a forward on the same (non-fused) path as the feature pass
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), PassThrough():
        model(x)
    forward_calls = len(calls)
    calls.clear()
    # OMPQ: the feature pass is all it runs ("verified" runs the model again for each candidate plan)
    p = ompq_ext.plan(model, [x], "4bits", num_samples=16, method="ompq", progress=False)
    assert p.settings.cost["forward_passes"] == 1
    assert len(calls) == forward_calls > 0
    assert torch.nn.functional._in_projection_packed.__name__ == "_in_projection_packed"  # put back


def test_embeddings_are_planned_on_request():
    model, ids = tiny_gpt2(pytest.importorskip("transformers"))
    without = ompq_ext.plan(model, [{"input_ids": ids}], "4bits", num_samples=16, progress=False)
    assert "transformer.wte" not in without.bits
    # Position embeddings are the same for every sample: planned as fully redundant, with a warning.
    with pytest.warns(UserWarning, match="'transformer.wpe'.*fully redundant"):
        p = ompq_ext.plan(model, [{"input_ids": ids}], "4bits", include_embeddings=True, num_samples=16,
                          progress=False)
    wte = next(x for x in p.layers if x.name == "transformer.wte")
    assert wte.kind == "Embedding" and wte.macs == 0 and wte.functional
    assert p.bits["lm_head"] == p.bits["transformer.wte"]  # the tied output layer shares the embedding's bits
    assert p.totals.planned_params == without.totals.planned_params + 64 * 32  # + wpe (wte = lm_head, once)
    assert p.totals.avg_bits <= 4
    q = ompq_ext.quantize(model, p, [{"input_ids": ids}], num_calib=16, progress=False)
    assert_weights_on_grid(q, ((), {"input_ids": ids}))
    assert ompq_ext.quant_report(q)["size_bits"] == p.totals.size_bits


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "resnet18"])
def test_timm(name):
    import_torchvision()  # timm imports it
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    plan_and_check(model, torch.randn(8, 3, 224, 224), names)


def test_selection_options_work_on_the_new_names():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    model, x = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval(), torch.randn(16, 6, 16)
    p = ompq_ext.plan(model, [x], "6bits", num_samples=16, progress=False, fixed_bits={"*.in_proj_weight": 8},
                      ties=[["layers.0.self_attn.out_proj", "layers.1.self_attn.out_proj"]], exclude="*.linear2")
    assert p.bits["layers.0.self_attn.in_proj_weight"] == p.bits["layers.1.self_attn.in_proj_weight"] == 8
    assert p.bits["layers.0.self_attn.out_proj"] == p.bits["layers.1.self_attn.out_proj"]
    assert not any(n.endswith("linear2") for n in p.bits) and len(p.layers) == 6
    only = ompq_ext.plan(model, [x], "4bits", num_samples=16, progress=False, include=nn.MultiheadAttention)
    assert only.layer_names == ["layers.0.self_attn.in_proj_weight", "layers.1.self_attn.in_proj_weight"]


def test_fixed_bits_on_a_weight_no_op_used_is_reported():
    torch.manual_seed(0)

    class Scaled(nn.Module):  # a module of an unknown type whose 2-D weight no linear op consumes
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(4, 8))

        def forward(self, x):
            return x * self.weight.mean()

    model, x = nn.Sequential(nn.Linear(8, 8), Scaled()).eval(), torch.randn(16, 8)
    with pytest.warns(UserWarning, match=r"fixed_bits names 1 weight.*not planned.*: 1$"):
        p = ompq_ext.plan(model, [x], "4bits", fixed_bits={"1": 8}, num_samples=16, progress=False)
    assert p.layer_names == ["0"]


class WindowAttention(nn.Module):
    """As torchvision's Swin: attention within windows batched batch-major, (N * windows, tokens, C), with
    F.linear on the modules' weights."""

    def __init__(self, dim=8, window=2):
        super().__init__()
        self.qkv, self.proj, self.window = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), window

    def forward(self, x):  # (N, H, W, C)
        n, h, w, c = x.shape
        s = self.window
        t = x.view(n, h // s, s, w // s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, s * s, c)
        q, k, v = F.linear(t, self.qkv.weight, self.qkv.bias).chunk(3, dim=-1)
        a = torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v
        out = F.linear(a, self.proj.weight, self.proj.bias)
        return out.view(n, h // s, w // s, s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(n, h, w, c)


def test_windows_batched_batch_major_are_regrouped_by_sample():
    from ompq_ext.features import observe
    from ompq_ext.layers import find_layers

    class Keep:
        def __init__(self):
            self.seen = {}

        def add(self, i, out, source):
            self.seen[i] = out.reshape(out.shape[0], -1).clone()

        def finish(self):
            pass

    torch.manual_seed(0)
    model, x = nn.Sequential(WindowAttention(), WindowAttention()).eval(), torch.randn(8, 4, 6, 8)  # 6 windows
    layers = find_layers(model, optional=True)
    batch, alone = Keep(), Keep()
    seen = observe(model, layers, ((x,), {}), [batch])
    assert seen.macs[0] == 4 * 6 * 8 * 24  # tokens per window x windows x in x out, per sample
    for j in range(8):  # each sample's features are what that sample alone gives
        observe(model, layers, ((x[j:j + 1],), {}), [alone])
        for i in batch.seen:
            assert torch.allclose(batch.seen[i][j], alone.seen[i][0], atol=1e-5), (i, j)
    plan_and_check(model, x, ["0.qkv", "0.proj", "1.qkv", "1.proj"])


def test_sequence_first_outputs_are_refused_not_regrouped():
    """A (L, N, E) output whose L is a multiple of N must not be read as N samples' rows."""
    torch.manual_seed(0)

    class SequenceFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(8, 8)

        def forward(self, x):  # x: (N, L, E), computed sequence first
            return self.proj(x.transpose(0, 1)).transpose(0, 1)

    with pytest.raises(ompq_ext.FeatureError, match="'proj' output has shape \\(32, 16, 8\\).*not the 16 samples"):
        ompq_ext.plan(SequenceFirst(), [torch.randn(16, 32, 8)], "4bits", num_samples=16, progress=False)


# ---------------------------------------------------------------- edge cases found in review


def test_weight_normed_layers_are_planned_from_their_output():
    """weight_norm recomputes .weight on every access: no op shows the tensor found before the pass."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(8, 8)), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(16, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "never ran"
        # OMPQ, from the feature pass alone ("verified" refuses a computed weight: it cannot swap in its
        # quantized values)
        p = ompq_ext.plan(model, [x], "4bits", num_samples=16, method="ompq", progress=False)
    assert p.layer_names == ["0", "2"] and p.layers[0].macs == 64


def test_lookups_are_planned_only_as_embeddings_and_ids_are_never_quantized():
    class MyEmbedding(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(500, 16))

        def forward(self, ids):
            return F.embedding(ids, self.weight)

    torch.manual_seed(0)
    model, ids = nn.Sequential(MyEmbedding(), nn.Linear(16, 3)), torch.randint(0, 500, (16, 4))
    p = ompq_ext.plan(model, [ids], "6bits", num_samples=16, progress=False)
    assert p.layer_names == ["1"]
    q = ompq_ext.quantize(model, p, [ids], num_calib=16, progress=False)
    with torch.no_grad():
        assert torch.equal(q[0](ids), model[0](ids))  # the lookup is untouched


def test_outputs_without_a_sample_dimension():
    torch.manual_seed(0)

    class PerSample(nn.Module):  # runs its layer one sample at a time: refused by name, as before
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            return torch.cat([self.fc(xi[None]) for xi in x])

    with pytest.raises(ompq_ext.FeatureError, match="'fc' output has shape \\(1, 8\\)"):
        ompq_ext.plan(PerSample(), [torch.randn(16, 8)], "4bits", num_samples=16, progress=False)

    class Experts(nn.Module):  # a weight of an unknown type used across experts: left out, with a warning
        def __init__(self):
            super().__init__()
            self.proj, self.weight = nn.Linear(8, 8), nn.Parameter(torch.randn(4, 8, 8))

        def forward(self, x):
            h = torch.matmul(self.proj(x).unsqueeze(0).expand(4, -1, -1), self.weight)
            return h.mean(0)

    model = nn.Sequential(Experts(), nn.Linear(8, 2))
    with pytest.warns(UserWarning, match="no sample dimension.*'0'"):
        p = ompq_ext.plan(model, [torch.randn(16, 8)], "4bits", num_samples=16, progress=False)
    assert p.layer_names == ["0.proj", "1"]


def test_a_model_of_unknown_weight_types_only():
    model, ids = tiny_gpt2(pytest.importorskip("transformers"))
    p = ompq_ext.plan(model, [{"input_ids": ids}], "4bits", exclude="lm_head", num_samples=16, progress=False)
    assert len(p.layers) == 8 and all(x.kind == "Conv1D" for x in p.layers)


def test_fused_transformer_kernels_do_not_skip_the_quantized_layers():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    model, x = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False).eval(), torch.randn(16, 6, 16)
    only_linear = ompq_ext.plan(model, [x], "4bits", include="*linear*", num_samples=16, progress=False)
    q = ompq_ext.quantize(model, only_linear, [x], num_calib=16, progress=False)

    class PassThrough(TorchFunctionMode):  # any active mode keeps torch on its unfused path
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    with torch.no_grad():  # no grad and eval: where torch takes its fused kernel if it can
        plain = q(x)
        with PassThrough():
            unfused = q(x)
        assert torch.allclose(plain, unfused, atol=1e-6) and not torch.allclose(plain, model(x), atol=1e-4)
    assert torch.backends.mha.get_fastpath_enabled()  # nothing global was switched


def test_a_forward_stopped_by_a_base_exception_leaves_no_mode_behind():
    torch.manual_seed(0)
    model, x = nn.Sequential(FunctionalAttention(), FunctionalAttention()).eval(), torch.randn(16, 9, 16)
    q = ompq_ext.quantize(model, ompq_ext.plan(model, [x], "4bits", num_samples=16, progress=False), [x],
                          num_calib=16, progress=False)

    class Stop(BaseException):
        pass

    def stop(module, args, output):
        raise Stop

    handle = q[0].register_forward_hook(stop)
    with pytest.raises(Stop):
        q(x)
    handle.remove()
    assert torch._C._len_torch_function_stack() == 0
    assert_weights_on_grid(q, ((x,), {}))


def test_a_tied_embedding_and_output_layer_share_one_quantizer():
    model, ids = tiny_gpt2(pytest.importorskip("transformers"))
    p = ompq_ext.plan(model, [{"input_ids": ids}], "4bits", include_embeddings=True, exclude="transformer.wpe",
                      num_samples=16, progress=False)
    q = ompq_ext.quantize(model, p, [{"input_ids": ids}], num_calib=16, progress=False)
    tied = [qw for qw in quantized_weights(q) if qw.name in ("lm_head", "transformer.wte")]
    assert len(tied) == 2 and tied[0].weight_quantizer is tied[1].weight_quantizer


def test_reconstruction_names_the_weights_it_leaves_at_round_to_nearest():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    model, x = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False).eval(), torch.randn(32, 6, 16)
    p = ompq_ext.plan(model, [x], "4bits", progress=False)
    with pytest.warns(UserWarning, match="2 weight.*round-to-nearest.*in_proj_weight"):
        ompq_ext.quantize(model, p, [x], method="adaround", iters=2, num_calib=32, progress=False)
    only_attention = ompq_ext.plan(model, [x], "4bits", include="*self_attn*", progress=False)
    with pytest.warns(UserWarning, match="round-to-nearest"):
        q = ompq_ext.quantize(model, only_attention, [x], method="brecq", iters=2, num_calib=32, progress=False)
    assert len(quantized_weights(q)) == 2


# ---------------------------------------------------------------- inputs of weights used outside their module's call


def test_a_part_of_the_model_called_alone_quantizes_its_functional_inputs():
    torch.manual_seed(0)
    model, x = nn.Sequential(FunctionalAttention(), FunctionalAttention()).eval(), torch.randn(16, 9, 16)
    q = ompq_ext.quantize(model, ompq_ext.plan(model, [x], "4bits", num_samples=16, progress=False), [x],
                          num_calib=16, progress=False)
    assert_weights_on_grid(q[1], ((x,), {}))  # its qkv and proj inputs too, without the root's call
    assert torch._C._len_torch_function_stack() == 0  # the quantizing mode is gone after the call
    with pytest.raises(RuntimeError):
        q(torch.randn(16, 9, 15))  # raises inside the mode
    assert torch._C._len_torch_function_stack() == 0
    assert_weights_on_grid(q, ((x,), {}))  # and comes back on the next call


def test_attention_input_quantizers_learn_in_qat():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    model, x = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False).eval(), torch.randn(16, 6, 16)
    q = ompq_ext.quantize(model, ompq_ext.plan(model, [x], "4bits", num_samples=16, progress=False), [x],
                          num_calib=16, progress=False)
    q(x).square().sum().backward()
    attention = {qw.name: qw for qw in quantized_weights(q) if "self_attn" in qw.name}
    assert sorted(attention) == ["layers.0.self_attn.in_proj_weight", "layers.0.self_attn.out_proj"]
    for qw in attention.values():  # the gradients reach both the weights' and the inputs' scales
        assert qw.weight_quantizer.scale.grad is not None and qw.weight_quantizer.scale.grad.abs().sum() > 0
        assert qw.input_quantizer.scale.grad is not None and qw.input_quantizer.scale.grad.abs().sum() > 0


def test_cross_attention_quantizes_query_key_and_value():
    torch.manual_seed(0)

    class Cross(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True, kdim=8, vdim=8)

        def forward(self, x):
            q, kv = x[..., :16], x[..., 16:]
            return self.attn(q, kv, kv, need_weights=False)[0]

    model, x = Cross().eval(), torch.randn(16, 5, 24)
    names = ["attn.q_proj_weight", "attn.k_proj_weight", "attn.v_proj_weight", "attn.out_proj"]
    p, q = plan_and_check(model, x, names)
    with torch.no_grad():
        assert 1e-4 < relative_error(q(x), model(x)) < 0.5


def test_weights_whose_ops_are_not_followed_keep_float_inputs_with_a_warning(monkeypatch):
    from ompq_ext.quant import api

    torch.manual_seed(0)
    model, x = nn.Sequential(FunctionalAttention()).eval(), torch.randn(16, 9, 16)
    p = ompq_ext.plan(model, [x], "4bits", num_samples=16, progress=False)
    monkeypatch.setattr(api, "quantize_op_inputs", lambda model, owners, fused: None)  # as for an op it cannot follow
    with pytest.warns(UserWarning, match=r"2 weight\(s\) reach their ops.*0.qkv, 0.proj"):
        q = ompq_ext.quantize(model, p, [x], num_calib=16, progress=False)
    rows = {r["name"]: r for r in ompq_ext.quant_report(q)["layers"]}
    assert rows["0.qkv"]["act_bits"] == rows["0.proj"]["act_bits"] == 32 and rows["0.mlp.0"]["act_bits"] == 8
    assert ompq_ext.quant_report(q)["bops"] > p.totals.bops


def test_gpt2_conv1d_is_quantized_per_output_column_also_by_adaround():
    model, ids = tiny_gpt2(pytest.importorskip("transformers"))
    p = ompq_ext.plan(model, [{"input_ids": ids}], "4bits", num_samples=16, progress=False)
    conv1d = {x.name: x for x in p.layers if x.kind == "Conv1D"}
    assert len(conv1d) == 8 and all(x.channel_axis == 1 for x in conv1d.values())
    assert p.layers[-1].name == "lm_head" and p.layers[-1].channel_axis == 0
    q = ompq_ext.quantize(model, p, [{"input_ids": ids}], method="adaround", iters=3, batch_size=16,
                          num_calib=16, progress=False)
    c_attn = next(qw for qw in quantized_weights(q) if qw.name == "transformer.h.0.attn.c_attn")
    assert c_attn.weight.shape == (32, 96) and c_attn.weight_quantizer.scale.numel() == 96
    assert_weights_on_grid(q, ((), {"input_ids": ids}))
