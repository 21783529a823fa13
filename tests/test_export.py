"""Exports, each loaded by its consumer: ONNX (onnxruntime), packed safetensors (load_packed, bit for bit),
HAWQ-V3's bit configuration and the plain dict; the ``export`` command; bad input."""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import ompq_ext
from ompq_ext import OmpqError, OmpqValueError, PlanFileError, cli
from ompq_ext.demo import load_demo
from ompq_ext.export import load_packed, save_packed
from ompq_ext.export import onnx as to_onnx
from ompq_ext.export.packed import pack, unpack


def _demo():
    model, calib, x, _ = load_demo()
    return model, calib[:128], x[:64]


def _resnet18():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval(), torch.randn(32, 3, 64, 64), torch.randn(8, 3, 64, 64)


def _encoder():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval(), torch.randn(32, 10, 64), torch.randn(4, 10, 64)


MODELS = {"demo": _demo, "resnet18": _resnet18, "encoder": _encoder}


def _quantized(name, **plan_options):
    model, calib, x = MODELS[name]()
    plan = ompq_ext.plan(model, [calib], "4bits", method="ompq", progress=False, **plan_options)
    return model, plan, ompq_ext.quantize(model, plan, calib=[calib], progress=False), x


# ---------------------------------------------------------------- packed


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 8), values=st.lists(st.integers(0, 255), min_size=0, max_size=300))
def test_pack_unpack_round_trip(bits, values):
    values = np.array([v % (1 << bits) for v in values], dtype=np.uint16)
    packed = pack(values, bits)
    assert packed.dtype == np.uint8 and packed.size == (values.size * bits + 7) // 8
    assert np.array_equal(unpack(packed, bits, values.size), values)


def test_pack_layout_is_little_endian_bits():
    assert pack(np.array([1, 2, 3, 0], dtype=np.uint16), 2).tolist() == [0b00111001]
    assert pack(np.array([5, 7], dtype=np.uint16), 3).tolist() == [0b00111101]


@pytest.mark.parametrize("name", ["demo", "resnet18", "encoder"])
def test_packed_model_reloads_bit_for_bit(tmp_path, name):
    model, plan, qmodel, x = _quantized(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = save_packed(qmodel, tmp_path / "model.safetensors")
    fresh = MODELS[name]()[0]  # the architecture; its own (equal here) weights are not what is loaded
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)
    loaded = load_packed(fresh, path)
    with torch.no_grad():
        assert torch.equal(loaded(x), qmodel(x))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert loaded.ompq_recipe.plan.bits == plan.bits


def test_packed_file_size_is_the_plans(tmp_path):
    _, plan, qmodel, _ = _quantized("resnet18", scale_bits=32)
    size = os.path.getsize(save_packed(qmodel, tmp_path / "r18.safetensors"))
    # The plan counts the weights at their bits, the other parameters at 32 and the scales at 32; the file
    # adds BatchNorm's running statistics (0.65 %) and its header.
    assert abs(size / plan.totals.size_bytes - 1) < 0.02


def test_packed_group_wise_and_gptq(tmp_path):
    model, calib, x = _demo()
    plan = ompq_ext.plan(model, [calib], "4bits", method="ompq", group_size=16, progress=False)
    qmodel = ompq_ext.quantize(model, plan, calib=[calib], method="gptq", progress=False)
    loaded = load_packed(model, save_packed(qmodel, tmp_path / "g.safetensors"))
    with torch.no_grad():
        assert torch.equal(loaded(x), qmodel(x))


def test_packed_bad_input(tmp_path):
    model, plan, qmodel, _ = _quantized("demo")
    with pytest.raises(OmpqValueError, match="not quantized by ompq_ext.quantize"):
        save_packed(model, tmp_path / "x.safetensors")
    path = save_packed(qmodel, tmp_path / "ok.safetensors")
    with pytest.raises(PlanFileError, match="does not match this model"):
        load_packed(nn.Sequential(nn.Linear(3, 3)), path)
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(PlanFileError, match="not a safetensors file"):
        load_packed(model, tmp_path / "junk.safetensors")
    with pytest.raises(OmpqValueError, match="does not exist"):
        load_packed(model, tmp_path / "missing.safetensors")


# ---------------------------------------------------------------- ONNX


def _weight_integers(path):
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"}
    consts.update({i.name: numpy_helper.to_array(i) for i in graph.initializer})
    out = []
    for n in graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in consts and consts[n.input[0]].ndim >= 2:
            out.append(consts[n.input[0]])
    return out


@pytest.mark.parametrize("name", ["demo", "resnet18", "encoder"])
def test_onnx_runs_in_onnxruntime_like_the_fake_quant_model(tmp_path, name):
    ort = pytest.importorskip("onnxruntime")
    model, plan, qmodel, x = _quantized(name)
    path = to_onnx(qmodel, x, tmp_path / f"{name}.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want, fp32 = qmodel(x).numpy(), model(x).numpy()
    # Stated tolerance (docs/EXPORTS.md): the two runtimes round an activation one step apart where its
    # value falls within float error of a rounding boundary; that moves the outputs by at most 5 % of what
    # quantization itself moves them.
    assert np.abs(got - want).mean() <= 0.05 * np.abs(want - fp32).mean()
    # every planned weight is in the graph as integers within its planned range, in an int8 container
    ints = _weight_integers(path)
    assert len(ints) == len(plan.layers)
    shapes = sorted((tuple(q.shape), q.min(), q.max()) for q in ints)
    planned = sorted((tuple(qmodel.state_dict()[k].shape), b) for k, b in _planned_weights(qmodel))
    for (shape, lo, hi), (pshape, bits) in zip(shapes, planned):
        assert shape == pshape
    for q in ints:
        assert q.dtype == np.int8
    widest = max(x.bits for x in plan.layers)
    assert all(q.min() >= -(1 << (widest - 1)) and q.max() <= (1 << (widest - 1)) - 1 for q in ints)


def test_onnx_inputs_below_8_bits_keep_their_grid(tmp_path):
    """4-bit inputs in an 8-bit container: the graph clips them to the 4-bit range before QuantizeLinear."""
    ort = pytest.importorskip("onnxruntime")
    model, calib, x = _demo()
    plan = ompq_ext.plan(model, [calib], "4bits", method="ompq", progress=False)
    qmodel = ompq_ext.quantize(model, plan, calib=[calib], act_bits=4, act_calib="minmax", progress=False)
    session = ort.InferenceSession(str(to_onnx(qmodel, x, tmp_path / "a4.onnx")), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy() * 3})[0]  # beyond the calibrated range
    with torch.no_grad():
        want, fp32 = qmodel(x * 3).numpy(), model(x * 3).numpy()
    assert np.abs(got - want).mean() <= 0.05 * np.abs(want - fp32).mean()


def _planned_weights(qmodel):
    from ompq_ext.quant.modules import quantized_weights

    keys = {id(t): k for k, t in qmodel.state_dict(keep_vars=True).items()}
    return [(keys[id(w.weight)], w.bits) for w in quantized_weights(qmodel)]


def test_onnx_keeps_each_layers_bits(tmp_path):
    """A plan with layers at 2 and 6 bits: each weight's integers span its own range in the graph."""
    model, calib, x = _demo()
    plan = ompq_ext.plan(model, [calib], "4bits", method="ompq", bits=[2, 6], progress=False)
    assert {x.bits for x in plan.layers} == {2, 6}
    qmodel = ompq_ext.quantize(model, plan, calib=[calib], progress=False)
    ints = _weight_integers(to_onnx(qmodel, x, tmp_path / "m.onnx"))
    by_shape = {}
    for key, bits in _planned_weights(qmodel):
        by_shape.setdefault(tuple(qmodel.state_dict()[key].shape), set()).add(bits)
    narrow = [q for q in ints if by_shape[tuple(q.shape)] == {2}]
    assert narrow and all(q.min() >= -2 and q.max() <= 1 for q in narrow)
    assert any(q.max() > 1 or q.min() < -2 for q in ints)  # the 6-bit ones use more


def test_onnx_bad_input(tmp_path):
    model, plan, qmodel, x = _quantized("demo")
    with pytest.raises(OmpqValueError, match="not quantized by ompq_ext.quantize"):
        to_onnx(model, x, tmp_path / "m.onnx")
    with pytest.raises(OmpqValueError, match="opset"):
        to_onnx(qmodel, x, tmp_path / "m.onnx", opset=11)
    with pytest.raises(OmpqValueError, match="example_inputs"):
        to_onnx(qmodel, "x", tmp_path / "m.onnx")
    with pytest.raises(OmpqValueError, match="folder does not exist"):
        to_onnx(qmodel, x, tmp_path / "no" / "m.onnx")
    dynamic = ompq_ext.quantize(MODELS["encoder"]()[0], _quantized("encoder")[1], calib=[torch.randn(8, 10, 64)],
                                act_calib="dynamic", progress=False)
    with pytest.raises(OmpqValueError, match="per token"):
        to_onnx(dynamic, torch.randn(2, 10, 64), tmp_path / "d.onnx")


def test_onnx_leaves_the_quantized_model_working(tmp_path):
    _, _, qmodel, x = _quantized("demo")
    with torch.no_grad():
        before = qmodel(x)
    to_onnx(qmodel, x, tmp_path / "m.onnx")
    with torch.no_grad():
        assert torch.equal(qmodel(x), before)
    assert not any("forward" in m.__dict__ for m in qmodel.modules() if type(m).__name__ in
                   ("WeightQuantizer", "ActQuantizer", "QuantLayer"))


# ---------------------------------------------------------------- bit configurations


def test_hawq_bit_config_of_a_resnet18():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(weights=None).eval()
    plan = ompq_ext.plan(model, [torch.randn(8, 3, 32, 32)], "4bits", method="ompq", progress=False)
    config = plan.to_hawq_bit_config()
    # HAWQ-V3's own resnet18 configuration (bit_config.py) has exactly these quantizers
    expected = {"quant_input", "quant_init_block_convbn", "quant_act_int32", "quant_act_output", "quant_output"}
    for stage in range(1, 5):
        for unit in (1, 2):
            p = f"stage{stage}.unit{unit}."
            expected |= {p + k for k in ("quant_act", "quant_convbn1", "quant_act1", "quant_convbn2", "quant_act_int32")}
        if stage > 1:
            expected.add(f"stage{stage}.unit1.quant_identity_convbn")
    assert set(config) == expected
    bits = plan.bits
    assert config["quant_init_block_convbn"] == bits["conv1"] and config["quant_output"] == bits["fc"]
    assert config["stage3.unit1.quant_identity_convbn"] == bits["layer3.0.downsample.0"]
    assert config["stage2.unit2.quant_convbn2"] == bits["layer2.1.conv2"]
    assert config["stage2.unit2.quant_act1"] == 8 and config["stage2.unit2.quant_act_int32"] == 16


def test_hawq_bit_config_of_a_bottleneck_resnet_and_of_other_models():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet50(weights=None).eval()
    plan = ompq_ext.plan(model, [torch.randn(4, 3, 32, 32)], "4bits", method="ompq", progress=False)
    config = plan.to_hawq_bit_config()
    assert "quant_init_convbn" in config and config["stage1.unit1.quant_convbn3"] == plan.bits["layer1.0.conv3"]
    assert config["stage1.unit1.quant_act2"] == 8 and "stage1.unit1.quant_identity_convbn" in config
    model, calib, _ = _demo()
    demo = ompq_ext.plan(model, [calib], "4bits", method="ompq", progress=False)
    with pytest.raises(OmpqValueError, match="give names="):
        demo.to_hawq_bit_config()
    names = {x.name: f"q_{i}" for i, x in enumerate(demo.layers)}
    assert demo.to_hawq_bit_config(names) == {f"q_{i}": x.bits for i, x in enumerate(demo.layers)}
    with pytest.raises(OmpqValueError, match="lacks the planned layer"):
        demo.to_hawq_bit_config({})


def test_to_dict():
    model, calib, _ = _demo()
    plan = ompq_ext.plan(model, [calib], "3bits", method="ompq", progress=False)
    d = plan.to_dict()
    json.dumps(d)
    assert {n: v["weight_bits"] for n, v in d["layers"].items()} == plan.bits
    assert all(v["act_bits"] == 8 for v in d["layers"].values())
    assert d["size_bits"] == plan.totals.size_bits


# ---------------------------------------------------------------- the command


def test_export_command(tmp_path, monkeypatch, capsys):
    model, calib, x = _demo()
    plan = ompq_ext.plan(model, [calib], "3bits", method="ompq", progress=False)
    plan.save(tmp_path / "plan.json")
    torch.save(calib, tmp_path / "calib.pt")
    (tmp_path / "export_demo_mod.py").write_text("from ompq_ext.demo import load_demo\n"
                                                 "def model():\n    return load_demo()[0]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cli.main(["export", str(tmp_path / "plan.json"), "--format", "hawq", "-o", str(tmp_path / "h.json")]) == 2
    assert "torchvision's ResNet names" in capsys.readouterr().err
    assert cli.main(["export", str(tmp_path / "plan.json"), "--format", "dict", "-o", str(tmp_path / "d.json")]) == 0
    assert json.loads((tmp_path / "d.json").read_text())["size_bits"] == plan.totals.size_bits
    common = ["--model", "export_demo_mod:model", "--data", str(tmp_path / "calib.pt")]
    assert cli.main(["export", str(tmp_path / "plan.json"), "--format", "packed", "-o",
                     str(tmp_path / "m.safetensors"), *common]) == 0
    loaded = load_packed(model, tmp_path / "m.safetensors")
    qmodel = ompq_ext.quantize(model, plan, calib=[calib], progress=False)
    with torch.no_grad():
        assert torch.equal(loaded(x), qmodel(x))
    assert cli.main(["export", str(tmp_path / "plan.json"), "--format", "onnx", "-o", str(tmp_path / "m.onnx"),
                     *common]) == 0
    assert (tmp_path / "m.onnx").stat().st_size > 0
    assert cli.main(["export", str(tmp_path / "plan.json"), "--format", "onnx", "-o", str(tmp_path / "n.onnx")]) == 2
    assert "--model" in capsys.readouterr().err
    assert "export" in cli._parser().format_help()


def test_errors_are_ompq_errors():
    assert issubclass(PlanFileError, OmpqError)


class _TiedLM(nn.Module):
    """An embedding tied to its output layer; only the output layer is planned (the embedding reads float)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.mix = nn.Linear(16, 16)
        self.head = nn.Linear(16, 50, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(torch.relu(self.mix(self.embed(ids).mean(1))))


def test_packed_keeps_a_tied_weight_that_another_module_reads_in_float(tmp_path):
    torch.manual_seed(0)
    model, ids = _TiedLM().eval(), torch.randint(0, 50, (32, 6))
    plan = ompq_ext.plan(model, [ids], "4bits", method="ompq", progress=False)
    assert "head" in plan.bits and "embed" not in plan.bits
    qmodel = ompq_ext.quantize(model, plan, calib=[ids], progress=False)
    loaded = load_packed(_TiedLM().eval(), save_packed(qmodel, tmp_path / "t.safetensors"))
    with torch.no_grad():
        assert torch.equal(loaded(ids), qmodel(ids))


def test_exports_refuse_a_parametrized_weight_by_name(tmp_path):
    model, calib, x = _demo()
    plan = ompq_ext.plan(model, [calib], "4bits", method="ompq", progress=False)
    normed = copy.deepcopy(model)
    torch.nn.utils.parametrizations.weight_norm(normed.fc)
    qmodel = ompq_ext.quantize(normed, plan, calib=[calib], progress=False)
    before = {k: v.clone() for k, v in qmodel.state_dict().items()}
    with pytest.raises(OmpqValueError, match="'fc' computes its weight through a parametrization"):
        to_onnx(qmodel, x, tmp_path / "m.onnx")
    with pytest.raises(OmpqValueError, match="'fc' computes its weight through a parametrization"):
        save_packed(qmodel, tmp_path / "m.safetensors")
    assert all(torch.equal(v, before[k]) for k, v in qmodel.state_dict().items())


def test_onnx_restores_each_modules_train_flag(tmp_path):
    _, _, qmodel, x = _quantized("demo")
    qmodel.train()
    qmodel.layers.eval()  # a part in eval inside a model in training
    to_onnx(qmodel, x, tmp_path / "m.onnx")
    assert qmodel.training and not qmodel.layers.training and qmodel.stem.training
