"""plan() end to end: any architecture, the model left untouched, budgets kept,
results reproducible, bad input reported by name."""

import copy
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import ompq_ext
from ompq_ext import FeatureError, InfeasibleBudgetError, OmpqError, OmpqTypeError, OmpqValueError
from ompq_ext.models import ResNet, mlp, resnet1d
from pretrained import minilm_and_batch


def small_resnet2d():
    return ResNet((1, 1), (8, 16), dims=2, in_channels=3, num_classes=5, imagenet_stem=False)


def snapshot(model):
    return {
        "params": {k: v.detach().clone() for k, v in model.named_parameters()},
        "buffers": {k: v.detach().clone() for k, v in model.named_buffers()},
        "training": {k: m.training for k, m in model.named_modules()},
        "hooks": {k: (len(m._forward_hooks), len(m._forward_pre_hooks)) for k, m in model.named_modules()},
    }


def assert_same(before, after):
    assert before["training"] == after["training"]
    assert before["hooks"] == after["hooks"]
    for kind in ("params", "buffers"):
        assert before[kind].keys() == after[kind].keys()
        for k in before[kind]:
            assert torch.equal(before[kind][k], after[kind][k]), f"{kind} {k} changed"


def warm_bn(model, x):
    """Give BatchNorm non-trivial running statistics, as a trained model has."""
    model.train()
    with torch.no_grad():
        model(x)


def fingerprint(plan):
    """What a plan's scores saw of every sample: OMPQ's ORM matrix, or the verified method's divergence of
    each candidate plan's quantized outputs from FP32."""
    if plan.settings.method == "ompq":
        return plan.orm
    assert plan.settings.method == "verified" and plan.orm is None
    return plan.settings.method_settings["divergences"]


def same(a, b) -> bool:
    return np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b


# plan()'s default ("verified") and OMPQ, the method of the golden plans
METHODS = ["ompq", "verified"]


ARCHITECTURES = {
    "resnet2d": (small_resnet2d, lambda: torch.randn(40, 3, 12, 12)),
    "resnet1d": (lambda: resnet1d(width=8), lambda: torch.randn(40, 1, 40)),
    "mlp": (lambda: mlp(20, (32, 16), 4), lambda: torch.randn(40, 20)),
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("bn_mode", ["eval", "batch"])
def test_any_architecture_within_budget_and_untouched(arch, bn_mode, method):
    torch.manual_seed(0)
    make_model, make_data = ARCHITECTURES[arch]
    model, x = make_model(), make_data()
    warm_bn(model, x)
    model.train()  # planning must not leave it in eval mode
    before = snapshot(model)
    plan = ompq_ext.plan(model, [x], "3bits", bn_mode=bn_mode, method=method, progress=False)
    assert_same(before, snapshot(model))
    # num_samples omitted: the method's own (32 of the 40 for OMPQ; all 40 for "verified", whose default is 128)
    assert plan.settings.method == method
    assert plan.settings.num_samples == min(len(x), ompq_ext.allocators.ALLOCATORS[method].default_samples)

    convs = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    assert sorted(plan.layer_names) == sorted(convs)
    planned = sum(layer.params for layer in plan.layers)
    assert sum(layer.params * layer.bits for layer in plan.layers) <= 3 * planned
    assert plan.totals["avg_bits"] <= 3
    assert plan.solver["status"] == "OPTIMAL"
    if method != "ompq":  # OMPQ's orthogonality is recorded by OMPQ alone
        assert plan.orm is None and all(x.gamma is None and x.weight is None for x in plan.layers)
        return
    orm = plan.orm
    assert orm.shape == (len(convs), len(convs))
    assert np.allclose(orm, orm.T) and np.all(np.diag(orm) == 1)
    assert np.all(orm >= -1e-12) and np.all(orm <= 1 + 1e-12)


def test_size_budget_counts_every_parameter():
    torch.manual_seed(0)
    model = mlp(20, (32, 16), 4)
    x = torch.randn(32, 20)
    plan = ompq_ext.plan(model, [x], "0.2", progress=False)  # 20 % of the FP32 size
    total = sum(p.numel() for p in model.parameters())
    weights = sum(m.weight.numel() for m in model if isinstance(m, nn.Linear))
    scales = 16 * (32 + 16 + 4 + 3)  # float16 scales: one per output channel, one per layer input
    size_bits = sum(layer.params * layer.bits for layer in plan.layers) + 32 * (total - weights) + scales
    assert plan.totals["size_bits"] == size_bits
    assert size_bits <= math.floor(0.2 * 32 * total)
    assert plan.totals["fp32_size_bytes"] == 4 * total


def test_bops_budget_and_macs_measured():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8, 3))
    x = torch.randn(16, 2, 10)
    plan = ompq_ext.plan(model, [x], ["0.5", "5000BOPs"], bits=[2, 4, 8], act_bits=4, num_samples=16,
                         progress=False)
    macs = {layer.name: layer.macs for layer in plan.layers}
    assert macs == {"0": 8 * 4 * 2 * 3, "3": 3 * 32}  # output elements x weights per output channel
    bops = sum(layer.macs * layer.bits * 4 for layer in plan.layers)
    assert plan.totals["bops"] == bops <= 5000
    assert bops > 2304  # more than every layer at 2 bits: the budget is used


def test_fixed_bits_and_ties():
    torch.manual_seed(0)
    model = small_resnet2d()
    x = torch.randn(32, 3, 12, 12)
    tie = ["layers.1.0.downsample.0", "layers.1.0.conv2"]
    plan = ompq_ext.plan(model, [x], "4bits", fixed_bits={"stem.0": 8, "fc": 8}, ties=[tie], progress=False)
    bits = plan.bits
    assert bits["stem.0"] == 8 and bits["fc"] == 8
    assert bits[tie[0]] == bits[tie[1]]
    group = next(g for g in plan.groups if tie[0] in g["layers"])
    assert set(group["layers"]) == set(tie)


@pytest.mark.parametrize("method", METHODS)
def test_reproducible_bit_for_bit(method):
    torch.manual_seed(0)
    model = resnet1d(width=8)
    x = torch.randn(32, 1, 40)
    a = ompq_ext.plan(model, [x], "3bits", method=method, progress=False)
    b = ompq_ext.plan(model, [x], "3bits", method=method, progress=False)
    assert a.bits == b.bits
    assert same(fingerprint(a), fingerprint(b)) and a.settings.method_settings == b.settings.method_settings
    assert [layer.gamma for layer in a.layers] == [layer.gamma for layer in b.layers]


def test_layer_order_is_execution_order_and_suffix_mean():
    class Backwards(nn.Module):  # registered a, b; run b, a
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(8, 8)
            self.b = nn.Linear(8, 8)

        def forward(self, x):
            return self.a(torch.relu(self.b(x)))

    torch.manual_seed(0)
    plan = ompq_ext.plan(Backwards(), [torch.randn(16, 8)], "4bits", num_samples=16, method="ompq", progress=False)
    assert plan.settings["objective"] == "layer"  # OMPQ's default (docs/QUALITY.md)
    assert plan.layer_names == ["b", "a"]
    theta = np.exp([layer.log_theta for layer in plan.layers])
    assert np.allclose([layer.weight for layer in plan.layers], theta / theta.max())
    plan2 = ompq_ext.plan(Backwards(), [torch.randn(16, 8)], "4bits", num_samples=16, objective="suffix_mean",
                          method="ompq", progress=False)
    theta2 = np.exp([layer.log_theta for layer in plan2.layers])
    expected = np.array([theta2.mean(), theta2[1]])
    assert np.allclose([layer.weight for layer in plan2.layers], expected / expected.max())


@pytest.mark.parametrize(
    "batches",
    [
        lambda x, y: [x[:10], x[10:25], x[25:]],  # small batches gathered into one
        lambda x, y: [(x[:20], y[:20]), (x[20:], y[20:])],  # (inputs, targets)
        lambda x, y: [[x, y]],
    ],
)
@pytest.mark.parametrize("method", METHODS)
def test_loader_forms_give_the_same_plan(batches, method):
    torch.manual_seed(0)
    model = mlp(12, (16,), 3)
    x, y = torch.randn(40, 12), torch.randint(0, 3, (40,))
    ref = ompq_ext.plan(model, [x], "3bits", num_samples=32, method=method, progress=False)
    got = ompq_ext.plan(model, batches(x, y), "3bits", num_samples=32, method=method, progress=False)
    assert same(fingerprint(ref), fingerprint(got)) and ref.bits == got.bits


@pytest.mark.parametrize("method", METHODS)
def test_dict_batches_and_input_fn(method):
    class Keyword(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 4)
            self.out = nn.Linear(4, 2)

        def forward(self, features, scale=1.0):
            return self.out(torch.tanh(self.fc(features) * scale))

    torch.manual_seed(0)
    model, x = Keyword(), torch.randn(20, 6)
    positional = ompq_ext.plan(model, [x], "4bits", num_samples=20, method=method, progress=False)
    by_dict = ompq_ext.plan(model, [{"features": x}], "4bits", num_samples=20, method=method, progress=False)
    by_fn = ompq_ext.plan(model, [{"data": x}], "4bits", num_samples=20, method=method,
                          input_fn=lambda b: {"features": b["data"]}, progress=False)
    scaled = ompq_ext.plan(model, [x], "4bits", num_samples=20, method=method,
                           input_fn=lambda b: ((b,), {"scale": 3.0}), progress=False)
    assert same(fingerprint(positional), fingerprint(by_dict))
    assert same(fingerprint(by_dict), fingerprint(by_fn))
    # the keyword argument reached the model (for "verified" also the passes that compare the candidates)
    assert not same(fingerprint(by_dict), fingerprint(scaled))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-6), (torch.float16, 2e-2), (torch.bfloat16, 5e-2)])
def test_low_and_high_precision_models(dtype, tol):
    torch.manual_seed(0)
    model = mlp(16, (32, 32), 4)
    x = torch.randn(32, 16)
    ref = ompq_ext.plan(model, [x], "4bits", method="ompq", progress=False)
    low = ompq_ext.plan(copy.deepcopy(model).to(dtype), [x.to(dtype)], "4bits", method="ompq", progress=False)
    assert np.max(np.abs(ref.orm - low.orm)) < tol


@pytest.mark.parametrize("method", METHODS)
def test_a_module_registered_under_two_names_is_left_untouched(method):
    """One Linear reachable as heads.out and as alias (tests/test_quantize.py's Tied has it): planning hands
    back the same Parameter with the same values (the methods that run the model with quantized weights
    swapped in must put the Parameter itself back)."""

    class Aliased(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 16)
            self.heads = nn.ModuleDict({"out": nn.Linear(16, 4)})
            self.alias = self.heads["out"]

        def forward(self, x):
            h = torch.relu(self.fc(x))
            return self.heads["out"](h) + self.alias(h * 0.5)

    torch.manual_seed(0)
    model, x = Aliased(), torch.randn(64, 16)
    weight, before = model.heads.out.weight, snapshot(model)
    ompq_ext.plan(model, [x], "4bits", method=method, progress=False)
    assert model.heads.out._parameters["weight"] is weight and isinstance(weight, nn.Parameter)
    assert_same(before, snapshot(model))


def test_layer_that_never_runs_is_skipped_with_a_warning():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(5, 5)
            self.spare = nn.Linear(5, 5)
            self.head = nn.Linear(5, 2)

        def forward(self, x):
            return self.head(torch.relu(self.used(x)))

    with pytest.warns(UserWarning, match="spare"):
        plan = ompq_ext.plan(Unused(), [torch.randn(16, 5)], "4bits", num_samples=16, progress=False)
    assert plan.skipped == ["spare"]
    assert "spare" not in plan.bits
    assert plan.totals["other_params"] == 5 + 2 + 30  # the two biases + the unused layer, at 32 bits


# ---------------------------------------------------------------- errors


def test_model_restored_when_the_forward_raises_midway():
    class Exploding(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(1, 4, 3)
            self.bn = nn.BatchNorm1d(4)
            self.fc = nn.Linear(4 * 6, 2)

        def forward(self, x):
            self.bn(self.conv(x))
            raise RuntimeError("boom in the middle of the forward")

    torch.manual_seed(0)
    model = Exploding()
    model.train()
    before = snapshot(model)
    with pytest.raises(FeatureError, match="forward pass failed.*boom"):
        ompq_ext.plan(model, [torch.randn(16, 1, 8)], "4bits", bn_mode="batch", num_samples=16,
                      progress=False)
    assert_same(before, snapshot(model))


def test_nan_features_name_the_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    before = snapshot(model)
    with pytest.raises(FeatureError, match="'2'.*NaN"):
        ompq_ext.plan(model, [torch.randn(16, 4)], "4bits", num_samples=16, progress=False)
    after = snapshot(model)
    assert after["hooks"] == before["hooks"]


def test_constant_layer_is_planned_with_a_warning():
    """A layer whose output is the same for every sample (here: zero weights, as torchvision's ViT head)
    is planned as fully redundant with every other layer: the smallest weight, the others unchanged."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3), nn.Linear(3, 2))
    x = torch.randn(16, 4)
    with torch.no_grad():
        model[5].weight.zero_()
    with pytest.warns(UserWarning, match="1 layer.*same features.*'5'.*fully redundant"):
        p = ompq_ext.plan(model, [x], "4bits", bits=range(2, 9), num_samples=16, method="ompq", progress=False)
    assert p.orm[3].tolist() == [1.0] * 4 and p.orm[:, 3].tolist() == [1.0] * 4
    assert p.layers[3].weight == min(x.weight for x in p.layers) < 1
    # The other layers' weights are those of a plan without the constant layer.
    without = ompq_ext.plan(model, [x], "4bits", exclude="5", num_samples=16, method="ompq", progress=False)
    assert [x.weight for x in p.layers[:3]] == pytest.approx([x.weight for x in without.layers], rel=1e-12)
    assert p.totals.avg_bits <= 4


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(loader=[]), OmpqValueError, "no samples"),
        (dict(loader=[torch.randn(3, 6)], method="ompq"), OmpqValueError,
         "only 3 samples but num_samples=32 \\(at least 4\\)"),
        (dict(loader=[torch.randn(3, 6)]), OmpqValueError, "only 3 samples but num_samples=128 \\(at least 4\\)"),
        (dict(loader=[torch.randn(8, 6)], num_samples=3, estimator="unbiased"), OmpqValueError, "unbiased.*>= 4"),
        (dict(bits=[]), OmpqValueError, "empty"),
        (dict(bits=[0, 4]), OmpqValueError, "1..16"),
        (dict(bits=[4, 17]), OmpqValueError, "1..16"),
        (dict(budget="4parsecs"), OmpqValueError, "unknown budget unit"),
        (dict(budget="0.001"), InfeasibleBudgetError, "smallest"),
        (dict(objective="best"), OmpqValueError, "objective"),
        (dict(estimator="fancy"), OmpqValueError, "estimator"),
        (dict(bn_mode="train"), OmpqValueError, "bn_mode"),
        (dict(feature_point="block"), OmpqValueError, "feature_point"),
        (dict(beta=-1.0), OmpqValueError, "beta"),
        (dict(num_samples=1), OmpqValueError, "num_samples"),
        (dict(fixed_bits={"nothing*": 8}), OmpqValueError, "nothing"),
        (dict(loader=42), OmpqTypeError, "iterable"),
        (dict(loader=[["a", "b"]]), OmpqTypeError, "input_fn"),
        (dict(loader=[torch.randn(20, 6), torch.randn(20, 7)]), OmpqTypeError, "different shapes.*pad"),
    ],
)
def test_bad_input_raises_a_named_error(kwargs, error, match):
    torch.manual_seed(0)
    model = mlp(6, (8,), 2)
    args = dict(loader=[torch.randn(40, 6)], budget="4bits")
    args.update(kwargs)
    loader, budget = args.pop("loader"), args.pop("budget")
    before = snapshot(model)
    with pytest.raises(error, match=match):
        ompq_ext.plan(model, loader, budget, progress=False, **args)
    assert_same(before, snapshot(model))


def test_batches_that_do_not_fit_the_model():
    with pytest.raises(FeatureError, match="forward pass failed.*input_fn"):
        ompq_ext.plan(mlp(6, (8,), 2), [torch.randn(40, 7)], "4bits", progress=False)


def test_model_without_quantizable_layers():
    with pytest.raises(OmpqValueError, match="no quantizable layers"):
        ompq_ext.plan(nn.Sequential(nn.ReLU()), [torch.randn(8, 3)], "4bits", progress=False)


def test_not_a_module():
    with pytest.raises(OmpqTypeError, match="nn.Module"):
        ompq_ext.plan(lambda x: x, [torch.randn(8, 3)], "4bits", progress=False)


def test_every_error_is_an_ompq_error():
    for cls in (FeatureError, InfeasibleBudgetError, OmpqTypeError, OmpqValueError):
        assert issubclass(cls, OmpqError)


@pytest.mark.parametrize("method", METHODS)
def test_minilm_sentence_encoder(monkeypatch, method):
    """A real pretrained transformer (36 encoder Linear layers), when the package is installed."""
    model, features = minilm_and_batch(monkeypatch, 32)
    before = snapshot(model)
    plan = ompq_ext.plan(model, [features], "4bits", input_fn=lambda batch: ((batch,), {}), method=method,
                         progress=False)
    assert_same(before, snapshot(model))
    encoder = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".encoder." in n]
    assert len(encoder) == 36
    assert set(encoder) <= set(plan.layer_names)
    assert plan.totals["avg_bits"] <= 4
    if method == "ompq":
        assert len(set(plan.bits.values())) > 1  # a mixed plan, not uniform
    else:  # the candidate whose sentence embeddings move least (by cosine) is the plan, uniform or mixed
        s = plan.settings.method_settings
        assert s["divergence"] == "cosine" and s["divergences"][s["chosen"]] == min(s["divergences"].values())
        if s["chosen"].startswith("uniform"):
            assert set(plan.bits.values()) == {int(s["chosen"].split()[1])}


@pytest.mark.parametrize("budget,expected", [("3bits", [2, 3, 4]), ("3.5bits", [2, 3, 4, 5]), ("4bits", [3, 4, 5]),
                                             ("2bits", [2, 3]), ("7.5bits", [6, 7, 8]), ("12bits", [7, 8])])
def test_default_bits_are_a_window_around_the_budget(budget, expected):
    torch.manual_seed(0)
    model, x = mlp(20, (32, 16), 4), torch.randn(32, 20)
    plan = ompq_ext.plan(model, [x], budget, progress=False)
    assert plan.settings["bits"] == expected
    assert set(plan.bits.values()) <= set(expected)


def test_default_window_leaves_out_fixed_layers_and_follows_bops():
    torch.manual_seed(0)
    model, x = mlp(20, (32, 16), 4), torch.randn(32, 20)
    # layer "0" (640 of 1232 weights) fixed at 8 bits leaves (6*1232 - 8*640)/592 = 3.84 bits to the others
    plan = ompq_ext.plan(model, [x], "6bits", fixed_bits={"0": 8}, progress=False)
    assert plan.settings["bits"] == [2, 3, 4, 5]
    macs = 20 * 32 + 32 * 16 + 16 * 4
    plan = ompq_ext.plan(model, [x], f"{macs * 8 * 5}BOPs", progress=False)  # 5 bits on average at A8
    assert plan.settings["bits"] == [4, 5, 6]


def linear_cka(a: np.ndarray, b: np.ndarray) -> float:
    """Biased linear CKA from the features themselves (no Grams), in float64."""
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    cross = np.linalg.norm(a.T @ b) ** 2
    return cross / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b))


def test_feature_point_activation_takes_the_next_activation_output():
    """Each layer's features are the output of the first activation called after it (the block output
    for a block's last conv and its shortcut); the classifier, which no activation follows, keeps its own."""
    torch.manual_seed(0)
    model = small_resnet2d()
    x = torch.randn(24, 3, 12, 12)
    warm_bn(model, x)
    model.eval()
    # Independent capture: the output of every activation call, and of every planned layer, in call order.
    events = []
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: events.append((n, o.detach().clone().double())))
             for n, m in model.named_modules() if isinstance(m, (nn.ReLU, nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    relu = {n for n, m in model.named_modules() if isinstance(m, nn.ReLU)}
    expected = {}
    for k, (name, out) in enumerate(events):
        if name in relu:
            continue
        nxt = next((o for n, o in events[k + 1:] if n in relu), out)
        expected[name] = nxt.reshape(len(x), -1).numpy()

    plan = ompq_ext.plan(model, [x], "4bits", num_samples=24, feature_point="activation", progress=False)
    assert plan.settings["feature_point"] == "activation"
    names = plan.layer_names
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            assert plan.orm[i, j] == pytest.approx(linear_cka(expected[a], expected[b]), abs=1e-6), (a, b)
    # This model runs a block's downsample conv first, so it shares the features of the block's
    # first ReLU with conv1; conv2's next activation is the block output (after the add and ReLU).
    block = next(n for n, m in model.named_modules() if getattr(m, "downsample", None) is not None)
    conv1, conv2, down = (names.index(f"{block}.{n}") for n in ("conv1", "conv2", "downsample.0"))
    assert plan.orm[conv1, down] == pytest.approx(1.0, abs=1e-12)
    assert plan.orm[conv2, down] < 0.999
    # The classifier has no activation after it: its own output, the same as feature_point="output".
    out_plan = ompq_ext.plan(model, [x], "4bits", num_samples=24, method="ompq", progress=False)
    fc = names.index("fc")
    assert plan.orm[fc, names.index(block + ".conv1")] != out_plan.orm[fc, names.index(block + ".conv1")]
    assert linear_cka(expected["fc"], expected["fc"]) == pytest.approx(1.0)


def test_feature_point_activation_without_activation_modules_warns():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 3)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    torch.manual_seed(0)
    model, x = Functional(), torch.randn(40, 6)
    with pytest.warns(UserWarning, match="no activation module ran"):
        p = ompq_ext.plan(model, [x], "4bits", feature_point="activation", progress=False)
    q = ompq_ext.plan(model, [x], "4bits", method="ompq", progress=False)
    assert np.array_equal(p.orm, q.orm)


def test_num_samples_is_an_upper_bound():
    torch.manual_seed(0)
    model, x = mlp(6, (8, 8), 2), torch.randn(8, 6)
    with pytest.warns(UserWarning, match="yielded 8 samples, fewer than num_samples=32: all 8 are used"):
        p = ompq_ext.plan(model, [x[:5], x[5:]], "4bits", num_samples=32, method="ompq", progress=False)
    q = ompq_ext.plan(model, [x], "4bits", num_samples=8, method="ompq", progress=False)
    assert p.settings.num_samples == 8 and p.bits == q.bits and np.array_equal(p.orm, q.orm)
    with pytest.raises(OmpqValueError, match="only 3 samples.*at least 4"):
        ompq_ext.plan(model, [x[:3]], "4bits", progress=False)


@pytest.mark.parametrize("method, default", [("ompq", 32), ("verified", 128)])
def test_num_samples_omitted_takes_a_smaller_loader_silently(method, default):
    """num_samples=None is the method's own number; a loader with fewer gives all it has without a warning
    (the caller chose no number), and the plan is the one from exactly those samples."""
    torch.manual_seed(0)
    model, x = mlp(6, (8, 8), 2), torch.randn(8, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "fewer than num_samples" (nor any other) warning
        p = ompq_ext.plan(model, [x[:5], x[5:]], "4bits", method=method, progress=False)
    assert ompq_ext.allocators.ALLOCATORS[method].default_samples == default > len(x)
    assert p.settings.num_samples == len(x) == 8 and p.settings.method == method
    with pytest.warns(UserWarning, match=f"yielded 8 samples, fewer than num_samples={default}: all 8 are used"):
        asked = ompq_ext.plan(model, [x], "4bits", num_samples=default, method=method, progress=False)
    q = ompq_ext.plan(model, [x], "4bits", num_samples=8, method=method, progress=False)
    for r in (asked, q):
        assert r.settings.num_samples == 8 and r.bits == p.bits and same(fingerprint(r), fingerprint(p))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = ompq_ext.plan(model, [x], "4bits", progress=False)  # no method: "verified", at its 128
    assert d.settings.method == "verified" and d.settings.num_samples == 8
