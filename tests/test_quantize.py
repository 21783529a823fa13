"""quantize(model, plan, calib): wrappers where the plan says, at its bits; outputs that
approach the float model's as bits rise; exact agreement with torch's fake-quant op and with
the plan's size and BOPs; calibration ranges; errors; the original left untouched; QAT."""

import copy

import ompq_ext
import pytest
import numpy as np
import torch
from ompq_ext import OmpqError, OmpqTypeError, OmpqValueError, PlanFileError
from ompq_ext.models import ResNet, mlp, resnet1d
from ompq_ext.quant import QuantLayer
from ompq_ext.quant.api import METHODS, calibrate, quant_report, quantize
from ompq_ext.quant.configs import CONFIGS, AdaRoundConfig, BRECQConfig, RTNConfig
from torch import nn


def small_resnet2d():
    return ResNet((1, 1), (8, 16), dims=2, in_channels=3, num_classes=5, imagenet_stem=False)


class Tied(nn.Module):
    """Containers (ModuleList, ModuleDict), a weight shared by two layers, and one module
    registered under two names and called twice."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(16, 16), nn.Linear(16, 16)])
        self.blocks[1].weight = self.blocks[0].weight
        self.heads = nn.ModuleDict({"out": nn.Linear(16, 4)})
        self.alias = self.heads["out"]

    def forward(self, x):
        h = torch.relu(self.blocks[0](x))
        h = torch.relu(self.blocks[1](h))
        return self.heads["out"](h) + self.alias(h * 0.5)


ARCHITECTURES = {
    "mlp": (lambda: mlp(20, (32, 16), 4), lambda n: torch.randn(n, 20)),
    "resnet1d": (lambda: resnet1d(width=8), lambda n: torch.randn(n, 1, 40)),
    "resnet2d": (small_resnet2d, lambda n: torch.randn(n, 3, 10, 10)),
    "tied": (Tied, lambda n: torch.randn(n, 16)),
}


def snapshot(model):
    return {
        "params": {k: v.detach().clone() for k, v in model.named_parameters()},
        "grad": {k: v.requires_grad for k, v in model.named_parameters()},
        "buffers": {k: v.detach().clone() for k, v in model.named_buffers()},
        "training": {k: m.training for k, m in model.named_modules()},
        "hooks": {k: (len(m._forward_hooks), len(m._forward_pre_hooks)) for k, m in model.named_modules()},
        "types": {k: type(m) for k, m in model.named_modules()},
    }


def assert_same(before, after):
    for key in ("grad", "training", "hooks", "types"):
        assert before[key] == after[key], key
    for kind in ("params", "buffers"):
        assert before[kind].keys() == after[kind].keys()
        for k in before[kind]:
            assert torch.equal(before[kind][k], after[kind][k]), f"{kind} {k} changed"


def make(arch, n=96, seed=0):
    """A model with trained-looking BatchNorm statistics, left in train mode, and its data."""
    torch.manual_seed(seed)
    make_model, make_data = ARCHITECTURES[arch]
    model, x = make_model(), make_data(n)
    with torch.no_grad():
        model.train()
        model(x)
    return model, x


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small tensors on a shared 2-core machine: one thread is several times faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def planned(one_thread):
    """arch -> (model, data, a mixed-precision plan), made once."""
    out = {}
    for arch in ARCHITECTURES:
        model, x = make(arch)
        p = ompq_ext.plan(model, x, budget="4.5bits", bits=range(2, 9), num_samples=32, progress=False)
        model.train()
        out[arch] = (model, x, p)
    return out


def with_bits(plan, bits):
    """The plan with every layer at ``bits`` (its totals are left stale)."""
    plan = copy.deepcopy(plan)
    for layer in plan.layers:
        layer.bits = bits
    for group in plan.groups:
        group["bits"] = bits
    return plan


def rel_error(a, b):
    return ((a - b).norm() / b.norm()).item()


# ---------------------------------------------------------------- structure and report


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_wrappers_at_planned_bits_and_report_agrees_with_plan(planned, arch):
    model, x, p = planned[arch]
    assert len(set(p.bits.values())) > 1 or arch == "tied", "the test wants a mixed plan"
    before = snapshot(model)
    q = quantize(model, p, x, num_calib=64, progress=False)
    assert_same(before, snapshot(model))
    assert q is not model and not q.training and all(not m.training for m in q.modules())
    originals = dict(model.named_modules())
    for layer in p.layers:
        ql = q.get_submodule(layer.name)
        assert isinstance(ql, QuantLayer)
        assert ql.weight_bits == layer.bits and ql.weight_quantizer.bits == layer.bits
        assert ql.act_bits == 8 and ql.input_quantizer.bits == 8 and ql.input_quantizer.calibrated
        assert ql.macs == layer.macs and ql.name == layer.name
        assert type(ql.layer) is type(originals[layer.name])
        assert torch.equal(ql.layer.weight, originals[layer.name].weight)
    assert sum(isinstance(m, QuantLayer) for m in q.modules()) == len(p.layers)

    r = quant_report(q)
    t = p.totals
    assert r["size_bits"] == t["size_bits"] <= p.budgets[0].limit  # the budget holds, scales included
    assert r["bops"] == t["bops"]
    assert r["quantized_params"] == t["planned_params"] and r["other_params"] == t["other_params"]
    assert r["avg_bits"] == pytest.approx(t["avg_bits"], rel=1e-12)
    assert r["fp32_size_bytes"] == t["fp32_size_bytes"]
    # The quantizers' scales, counted at 16 bits: one per output channel (shared by tied layers)
    # and one per input quantizer.
    weight_quantizers = {id(m.weight_quantizer): m.layer.weight.shape[0] for m in q.modules() if isinstance(m, QuantLayer)}
    scales = sum(weight_quantizers.values()) + len(p.layers)
    assert r["quantizer_params"] == scales and r["quantizer_bits"] == 16 * scales == t["scale_bits"]
    assert r["weight_bits"] == t["size_bits"] - 16 * scales
    assert quant_report(q, scale_bits=32)["size_bits"] == t["size_bits"] + 16 * scales
    assert r["size_bytes"] == r["size_bits"] / 8 and r["size_mib"] == r["size_bits"] / 8 / 2**20
    assert [row["name"] for row in r["layers"]] == sorted(p.layer_names, key=[n for n, _ in q.named_modules()].index)
    assert sum(row["bops"] for row in r["layers"]) == r["bops"]


def test_tied_and_shared_layers(planned):
    model, x, p = planned["tied"]
    assert p.bits["blocks.0"] == p.bits["blocks.1"]
    q = quantize(model, p, x, num_calib=64, progress=False)
    a, b = q.blocks[0], q.blocks[1]
    assert a.layer.weight is b.layer.weight and a.weight_quantizer is b.weight_quantizer
    assert q.alias is q.heads["out"] and isinstance(q.alias, QuantLayer)
    with torch.no_grad():
        assert rel_error(q(x), model.eval()(x)) < 0.25  # W3 on a random model
    model.train()


def test_weights_only_and_report_bops(planned):
    model, _, p = planned["resnet1d"]
    q = quantize(model, p, act_bits=0, progress=False)  # no calib needed
    layers = [m for m in q.modules() if isinstance(m, QuantLayer)]
    assert layers and all(m.input_quantizer is None for m in layers)
    r = quant_report(q)
    assert r["bops"] == p.totals["bops"] * 32 // 8  # unquantized inputs count at 32 bits
    # no input quantizers: the plan's activation scales are not there
    assert r["size_bits"] == p.totals["size_bits"] - 16 * len(p.layers)
    assert all(row["act_bits"] == 32 for row in r["layers"])
    assert quantize(model, p, act_bits=False, progress=False).get_submodule(p.layers[0].name).input_quantizer is None


def test_act_bits_override_and_plan_path(planned, tmp_path):
    model, x, p = planned["mlp"]
    path = tmp_path / "plan.json"
    p.save(path)
    q = quantize(model, str(path), x, act_bits=4, num_calib=32, progress=False)
    assert all(m.input_quantizer.bits == 4 for m in q.modules() if isinstance(m, QuantLayer))
    assert quant_report(q)["bops"] == p.totals["bops"] // 2


# ---------------------------------------------------------------- numerics


@pytest.mark.parametrize("arch", ["resnet1d", "mlp"])
def test_outputs_approach_float_as_bits_rise(planned, arch):
    model, x, p = planned[arch]
    model.eval()
    with torch.no_grad():
        ref = model(x)
        for act in (0, 8):
            err = {b: rel_error(quantize(model, with_bits(p, b), x, act_bits=act, num_calib=64,
                                         progress=False)(x), ref) for b in (2, 4, 6, 8)}
            assert err[8] < (0.01 if act == 0 else 0.03), err
            assert err[2] > 5 * err[8], err
            chain = (2, 4, 6, 8) if act == 0 else (2, 4, 8)  # 8-bit inputs put a floor under the error
            for lo, hi in zip(chain, chain[1:]):
                assert err[hi] < 0.9 * err[lo], err
    model.train()


@pytest.mark.parametrize("arch", ["mlp", "resnet2d"])
def test_uniform_8bit_minmax_equals_torch_fake_quant(planned, arch):
    model, x, p = planned[arch]
    q = quantize(model, with_bits(p, 8), act_bits=0, weight_scale="minmax", progress=False)
    manual = copy.deepcopy(model).eval()
    with torch.no_grad():
        for layer in p.layers:
            w = manual.get_submodule(layer.name).weight
            scale = w.abs().reshape(w.shape[0], -1).amax(dim=1).clamp_min(1e-12) / 127
            zero = torch.zeros(w.shape[0], dtype=torch.int32)
            fq = torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -128, 127)
            assert torch.equal(q.get_submodule(layer.name).quantized_weight(), fq), layer.name
            w.copy_(fq)
        assert torch.equal(q(x), manual(x))
    model.train()


def _layer_inputs(model, names, x):
    seen = {}
    handles = [model.get_submodule(n).register_forward_pre_hook(
        lambda m, inp, n=n: seen.setdefault(n, inp[0].detach().clone())) for n in names]
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return seen


def test_act_ranges_unsigned_after_relu_signed_elsewhere():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 8), nn.ReLU(),
                          nn.Linear(8, 3))
    x = torch.randn(64, 12)
    p = ompq_ext.plan(model, x, budget=1.0, num_samples=32, progress=False)
    q = quantize(model, p, x, num_calib=64, act_calib="minmax", progress=False)
    # The calibration pass sees the inputs of the model with quantized weights and float activations.
    inputs = _layer_inputs(quantize(model, p, act_bits=0), p.layer_names, x)
    expected_signed = {"0": True, "2": False, "4": True, "6": False}
    for name, signed in expected_signed.items():
        iq = q.get_submodule(name).input_quantizer
        assert iq.signed == signed, name
        top = inputs[name].abs().max().item()
        assert iq.scale.item() == pytest.approx(top / (127 if signed else 255), rel=1e-6), name
        assert inputs[name].min().item() < 0 if signed else inputs[name].min().item() >= 0
    rows = {row["name"]: row for row in quant_report(q)["layers"]}
    assert {n: rows[n]["act_signed"] for n in expected_signed} == expected_signed


def test_resnet_ranges_unsigned_after_relu(planned):
    model, x, p = planned["resnet2d"]
    q = quantize(model, p, x, num_calib=64, progress=False)
    for layer in p.layers:
        signed = q.get_submodule(layer.name).input_quantizer.signed
        assert signed == (layer.name == "stem.0"), layer.name  # only the raw image input is signed


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse"])
def test_act_calibration_methods(planned, method):
    model, x, p = planned["resnet1d"]
    q = quantize(model, p, x, num_calib=64, act_calib=method, progress=False)
    with torch.no_grad():
        assert rel_error(q(x), model.eval()(x)) < 0.2
    assert all(m.input_quantizer.method == method for m in q.modules() if isinstance(m, QuantLayer))
    model.train()


def test_calibrate_again_forgets_old_statistics(planned):
    model, x, p = planned["mlp"]
    q = quantize(model, p, x, num_calib=64, act_calib="minmax", progress=False)
    scales = [m.input_quantizer.scale.item() for m in q.modules() if isinstance(m, QuantLayer)]
    q.train()
    assert calibrate(q, x * 10, num_calib=64, progress=False) is q
    assert q.training  # calibrate leaves the mode as it found it
    bigger = [m.input_quantizer.scale.item() for m in q.modules() if isinstance(m, QuantLayer)]
    assert all(b > 5 * s for b, s in zip(bigger, scales))
    calibrate(q, x, num_calib=64, progress=False)
    assert [m.input_quantizer.scale.item() for m in q.modules() if isinstance(m, QuantLayer)] == scales
    with pytest.raises(OmpqValueError, match="no quantized layers"):
        calibrate(model, x)


def test_progress_bar(planned, capsys):
    model, x, p = planned["mlp"]
    quantize(model, p, x, num_calib=32, progress=True)
    assert "ompq: calibration" in capsys.readouterr().err
    quantize(model, p, x, num_calib=32, progress=False)
    assert "ompq" not in capsys.readouterr().err


# ---------------------------------------------------------------- errors


def test_plan_for_another_model_names_missing_layers(planned):
    _, _, p = planned["resnet1d"]
    other, x = make("mlp")
    with pytest.raises(PlanFileError, match=r"stem\.0.*layers\.0\.0\.conv1"):
        quantize(other, p, x, progress=False)
    wider = mlp(20, (48, 16), 4)
    with pytest.raises(PlanFileError, match="layer '0' has 960 weights, the plan expects 640"):
        quantize(wider, planned["mlp"][2], x, progress=False)


def test_bad_arguments(planned):
    model, x, p = planned["mlp"]
    before = snapshot(model)
    with pytest.raises(OmpqValueError, match="rtn.*gptq.*adaround.*brecq") as e:
        quantize(model, p, x, method="obq")
    assert "'obq'" in str(e.value)
    with pytest.raises(OmpqValueError, match="minmax.*mse"):
        quantize(model, p, x, weight_scale="absmax")
    with pytest.raises(OmpqValueError, match="minmax.*percentile.*mse"):
        quantize(model, p, x, act_calib="kl")
    with pytest.raises(OmpqValueError, match=r"calib=.*act_bits=0"):
        quantize(model, p)
    with pytest.raises(OmpqValueError, match=r"only 1 samples but num_calib=256 \(at least 2\)"):
        quantize(model, p, x[:1], progress=False)
    with pytest.raises(OmpqValueError, match="num_calib"):
        quantize(model, p, x, num_calib=1)
    with pytest.raises(OmpqValueError, match="iters.*adaround"):
        quantize(model, p, x, iters=10)
    with pytest.raises(OmpqValueError, match="act_bits"):
        quantize(model, p, x, act_bits=1)
    with pytest.raises(OmpqTypeError, match="plan must be"):
        quantize(model, {"layers": []}, x)
    with pytest.raises(OmpqTypeError):
        quantize("model", p, x)
    with pytest.raises(OmpqError, match="forward pass failed"):
        quantize(model, p, torch.randn(64, 7), num_calib=64, progress=False)
    bad = with_bits(p, 1)
    with pytest.raises(OmpqValueError, match="layer '0'"):
        quantize(model, bad, act_bits=0)
    assert_same(before, snapshot(model))
    assert set(METHODS) == {"rtn", "gptq", "adaround", "brecq"}


# ---------------------------------------------------------------- in place, untouched


def test_inplace(planned):
    _, _, p = planned["resnet1d"]
    model, x = make("resnet1d")
    model.train()
    q = quantize(model, p, x, num_calib=64, inplace=True, progress=False)
    assert q is model and not model.training
    assert all(isinstance(model.get_submodule(n), QuantLayer) for n in p.layer_names)


def test_original_untouched_and_independent(planned):
    model, x, p = planned["resnet2d"]
    handle = model.register_forward_hook(lambda *a: None)
    try:
        before = snapshot(model)
        q = quantize(model, p, x, num_calib=64, progress=False)
        assert_same(before, snapshot(model))
        ours = {t.data_ptr() for t in list(model.parameters()) + list(model.buffers())}
        assert not ours & {t.data_ptr() for t in list(q.parameters()) + list(q.buffers())}
        with torch.no_grad():  # changing the copy leaves the original alone
            for t in q.parameters():
                t.add_(1.0)
        assert_same(before, snapshot(model))
    finally:
        handle.remove()


# ---------------------------------------------------------------- QAT readiness


@pytest.mark.parametrize("arch", ["resnet1d", "tied"])
def test_backward_reaches_weights_and_scales(planned, arch):
    model, x, p = planned[arch]
    q = quantize(model, p, x, num_calib=64, progress=False)
    q.train()
    target = torch.randn_like(model.eval()(x))
    loss = nn.functional.mse_loss(q(x), target)
    loss.backward()
    for m in q.modules():
        if isinstance(m, QuantLayer):
            for name, t in (("weight", m.layer.weight), ("weight scale", m.weight_quantizer.scale),
                            ("input scale", m.input_quantizer.scale)):
                assert t.grad is not None and torch.isfinite(t.grad).all(), (m.name, name)
                assert t.grad.abs().sum() > 0, (m.name, name)
    opt = torch.optim.SGD(q.parameters(), lr=1e-2)
    opt.step()
    opt.zero_grad()
    assert nn.functional.mse_loss(q(x), target).isfinite()
    model.train()


# ---------------------------------------------------------------- reconstruction


@pytest.mark.parametrize("method", ["adaround", "brecq"])
def test_reconstruction_methods(planned, method):
    pytest.importorskip("ompq_ext.quant.reconstruct")
    model, x, p = planned["resnet1d"]
    before = snapshot(model)
    q = quantize(model, with_bits(p, 3), x, method=method, num_calib=32, iters=20, progress=False)
    assert_same(before, snapshot(model))
    assert all(isinstance(q.get_submodule(n), QuantLayer) for n in p.layer_names)
    assert not q.training
    with torch.no_grad():
        assert torch.isfinite(q(x)).all()
    with pytest.raises(OmpqValueError, match="calib="):
        quantize(model, p, method=method, act_bits=0)
    fresh, _ = make("resnet1d")
    q = quantize(fresh, with_bits(p, 3), x, method=method, num_calib=32, iters=5, inplace=True, progress=False)
    assert q is fresh and isinstance(fresh.get_submodule(p.layers[0].name), QuantLayer)


# ---------------------------------------------------------------- recipes as config objects


def test_config_objects_are_the_keyword_form(planned):
    model, x, p = planned["resnet1d"]
    p3 = with_bits(p, 3)
    for config, keywords in [
        (RTNConfig(weight_scale="minmax", act_calib="percentile", num_calib=32),
         dict(weight_scale="minmax", act_calib="percentile", num_calib=32)),
        (BRECQConfig(num_calib=32, iters=15, batch_size=16), dict(method="brecq", num_calib=32, iters=15, batch_size=16)),
    ]:
        torch.manual_seed(3)
        a = quantize(model, p3, x, config, progress=False)
        torch.manual_seed(3)
        b = quantize(model, p3, x, progress=False, **keywords)
        with torch.no_grad():
            assert torch.equal(a(x), b(x)), type(config).__name__
        assert all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values()))
    weights_only = quantize(model, p3, config=RTNConfig(act_bits=0), progress=False)
    assert weights_only.get_submodule(p.layers[0].name).input_quantizer is None


def test_config_errors(planned):
    model, x, p = planned["mlp"]
    assert set(CONFIGS) == set(METHODS) and CONFIGS["brecq"] is BRECQConfig
    with pytest.raises(OmpqValueError, match="either as config=.*or as keywords"):
        quantize(model, p, x, RTNConfig(), act_bits=0)
    with pytest.raises(OmpqValueError, match="either as config="):
        quantize(model, p, x, AdaRoundConfig(), method="brecq")
    with pytest.raises(OmpqTypeError, match="config must be one of RTNConfig"):
        quantize(model, p, x, {"method": "rtn"})
    with pytest.raises(OmpqValueError, match="weight_scale"):
        RTNConfig(weight_scale="absmax")
    with pytest.raises(OmpqValueError, match="num_calib"):
        BRECQConfig(num_calib=1)
    with pytest.raises(OmpqValueError, match="iterations: unknown argument.*method='brecq' takes.*iters"):
        quantize(model, p, x, method="brecq", iterations=10)
    with pytest.raises(OmpqValueError, match="blocks: unknown argument.*'adaround'; they are options of method='brecq'"):
        quantize(model, p, x, method="adaround", blocks=["0"])
    with pytest.raises(OmpqValueError, match="records collects what reconstruction did"):
        quantize(model, p, x, records=[])
    for bad in (dict(lr="x"), dict(beta_range=(1.0,)), dict(iters=0), dict(warmup=1.0)):
        with pytest.raises(OmpqValueError):
            AdaRoundConfig(**bad)
    with pytest.raises(OmpqValueError, match="weight_scale"):
        RTNConfig(weight_scale=np.array(["mse"]))
