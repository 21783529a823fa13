"""Tests of PTQ reconstruction (`ompq_ext.quant.reconstruct`): the AdaRound quantizer,
layer-wise AdaRound and block-wise (BRECQ-style) reconstruction."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ompq_ext import models
from ompq_ext.errors import OmpqError, OmpqValueError
from ompq_ext.quant.modules import QuantLayer, WeightQuantizer, weight_scale
from ompq_ext.quant.ops import fake_quantize, quant_range
from ompq_ext.quant.reconstruct import AdaRoundQuantizer, beta_schedule, find_blocks, reconstruct
from quant_helpers import make_qmodel


def small_resnet() -> nn.Module:
    torch.manual_seed(0)
    model = models.ResNet((1, 1), (8, 16), dims=2, in_channels=3, num_classes=5, imagenet_stem=False)
    # Non-trivial BatchNorm statistics, as in a trained model.
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(64, 3, 8, 8))
    return model.eval()


def small_mlp() -> nn.Module:
    torch.manual_seed(0)
    return models.mlp(in_features=16, hidden=(32, 24), num_classes=6).eval()


def correlated(n: int, gen: torch.Generator, features: int = 16) -> torch.Tensor:
    """Inputs with correlated features, as real data has. (With isotropic inputs the layer-wise
    optimum is round-to-nearest already, and there is nothing for reconstruction to learn.)"""
    mix = torch.randn(features, features, generator=torch.Generator().manual_seed(5))
    return torch.randn(n, features, generator=gen) @ mix / 4


def smooth_images(n: int, gen: torch.Generator) -> torch.Tensor:
    """Spatially correlated 3 x 8 x 8 images."""
    low = torch.randn(n, 3, 4, 4, generator=gen)
    return nn.functional.interpolate(low, size=8, mode="bilinear") + 0.1 * torch.randn(n, 3, 8, 8, generator=gen)


def output_mse(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return (a(x) - b(x)).square().mean().item()


# --------------------------------------------------------------------------- AdaRoundQuantizer


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_adaround_starts_at_nearest_rounding(bits):
    torch.manual_seed(bits)
    w = torch.randn(12, 5, 3)
    s = weight_scale(w, bits, "mse")  # clips some weights: the clamp is exercised too
    q = AdaRoundQuantizer(w, s, bits)
    # Soft start: h(V) equals the fractional part, so the soft output is the clamped float weight.
    qmin, qmax = quant_range(bits, True)
    sv = s.view(-1, 1, 1)
    expect_soft = (w / sv).clamp(qmin, qmax) * sv
    assert torch.allclose(q(w), expect_soft, atol=1e-5 * s.max().item())
    q.hard = True
    hard = q(w)
    rtn = fake_quantize(w, s, bits=bits, axis=0)
    frac = (w / sv) - (w / sv).floor()
    tie = (frac - 0.5).abs() < 1e-4
    assert torch.equal(hard[~tie], rtn[~tie])


def test_adaround_exact_ties_round_up():
    s = torch.tensor([0.5, 1.0])
    w = torch.tensor([[0.25, -0.75, 0.1], [1.5, -0.5, 2.0]])  # w/s = .5, -1.5, .2 | 1.5, -.5, 2
    q = AdaRoundQuantizer(w, s, 4)
    q.hard = True
    assert torch.equal(q(w) / s.view(-1, 1), torch.tensor([[1.0, -1.0, 0.0], [2.0, 0.0, 2.0]]))


def test_adaround_output_on_grid_for_any_v():
    torch.manual_seed(1)
    w = torch.randn(6, 10) * 3
    s = weight_scale(w, 3, "minmax")
    q = AdaRoundQuantizer(w, s, 3)
    with torch.no_grad():
        q.V.copy_(torch.randn_like(q.V) * 4)
    qmin, qmax = quant_range(3, True)
    q.hard = True
    ints = q(w) / s.view(-1, 1)
    assert torch.allclose(ints, ints.round(), atol=1e-5)
    assert ints.min() >= qmin and ints.max() <= qmax
    # The hard integers are floor or floor + 1 of w/s (clamped): only the rounding is learned.
    fl = (w / s.view(-1, 1)).floor()
    assert bool((((ints.round() - fl.clamp(qmin, qmax)).abs() <= 1)).all())
    # Soft outputs lie between the two neighbouring grid points.
    q.hard = False
    soft = q(w) / s.view(-1, 1)
    assert bool((soft >= fl.clamp(qmin, qmax) - 1e-5).all() and (soft <= (fl + 1).clamp(qmin, qmax) + 1e-5).all())


def test_adaround_gradient_reaches_v_only():
    w = torch.randn(4, 3, requires_grad=True)
    q = AdaRoundQuantizer(w, weight_scale(w, 3), 3)
    q(w).sum().backward()
    assert q.V.grad is not None and q.V.grad.abs().sum() > 0
    assert w.grad is None


def test_regularizer_limits():
    w = torch.randn(5, 7)
    q = AdaRoundQuantizer(w, weight_scale(w, 4), 4)
    n = w.numel()
    with torch.no_grad():
        q.V.fill_(0.0)  # sigmoid = 1/2: h = 1/2, the most penalised value
        assert q.regularizer(20.0).item() == pytest.approx(n)
        assert q.regularizer(2.0).item() == pytest.approx(n)
        q.V.fill_(10.0)  # h clipped to exactly 1
        assert q.regularizer(2.0).item() == 0.0
        q.V.fill_(-10.0)  # h clipped to exactly 0
        assert q.regularizer(20.0).item() == 0.0
        q.V.copy_(torch.rand_like(q.V) * 4 - 2)  # h strictly inside (0, 1)
        low, high = q.regularizer(2.0).item(), q.regularizer(20.0).item()
        assert 0 <= low <= high <= n  # a larger beta penalises less near 0/1, i.e. more overall
        assert q.regularizer(1e4).item() == pytest.approx(n, rel=0.05)  # -> numel for h strictly inside (0, 1)


def test_beta_schedule():
    assert beta_schedule(0, 100, 0.2) is None
    assert beta_schedule(19, 100, 0.2) is None
    assert beta_schedule(20, 100, 0.2) == pytest.approx(20.0)
    assert beta_schedule(60, 100, 0.2) == pytest.approx(11.0)
    assert beta_schedule(100, 100, 0.2) == pytest.approx(2.0)


def test_adaround_quantizer_errors():
    w = torch.randn(3, 4)
    with pytest.raises(OmpqValueError):
        AdaRoundQuantizer(w, torch.ones(2), 3)
    with pytest.raises(OmpqValueError):
        AdaRoundQuantizer(w, torch.tensor([1.0, 0.0, 1.0]), 3)
    with pytest.raises(OmpqValueError):
        AdaRoundQuantizer(w, torch.ones(3), 1)


# --------------------------------------------------------------------------- blocks


def test_find_blocks_resnet_and_mlp():
    x = torch.randn(8, 3, 8, 8)
    q = make_qmodel(small_resnet(), 3, x)
    assert find_blocks(q) == ["stem.0", "layers.0.0", "layers.1.0", "fc"]
    qm = make_qmodel(small_mlp(), 3, torch.randn(8, 16))
    assert find_blocks(qm) == ["0", "2", "4"]


def test_find_blocks_nested_custom_module():
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.b(torch.relu(self.a(x))) + x

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([Pair(), Pair()])
            self.head = nn.ModuleDict({"out": nn.Linear(4, 2)})
            self.norm = nn.LayerNorm(4)

        def forward(self, x):
            for b in self.blocks:
                x = b(x)
            return self.head["out"](self.norm(x))

    q = make_qmodel(Net(), 4, torch.randn(8, 4))
    assert find_blocks(q) == ["blocks.0", "blocks.1", "head.out"]


# --------------------------------------------------------------------------- reconstruction


def _check_baked(q: nn.Module) -> None:
    """Weights on the grid and baked in: ordinary WeightQuantizers that reproduce them exactly."""
    assert not any(isinstance(m, AdaRoundQuantizer) for m in q.modules())
    assert not any(name.endswith(".V") or name == "V" for name, _ in q.named_parameters())
    for m in q.modules():
        if isinstance(m, QuantLayer):
            assert type(m.weight_quantizer) is WeightQuantizer
            w = m.layer.weight.detach()
            assert torch.equal(m.weight_quantizer(w).detach(), w)
            qmin, qmax = quant_range(m.weight_bits, True)
            ints = w / m.weight_quantizer.scale.detach().view(-1, *([1] * (w.dim() - 1)))
            assert torch.allclose(ints, ints.round(), atol=1e-4)
            assert ints.min() >= qmin - 1e-4 and ints.max() <= qmax + 1e-4
            assert m.layer.weight.requires_grad and m.weight_quantizer.scale.requires_grad


def trained_mlp(gen: torch.Generator) -> nn.Module:
    """small_mlp trained for a moment on a teacher's labels of correlated inputs (< 1 s)."""
    torch.manual_seed(0)
    model = models.mlp(in_features=16, hidden=(32, 24), num_classes=6)
    teacher = torch.randn(16, 6, generator=gen)
    x = correlated(2048, gen)
    y = (x @ teacher + 0.5 * torch.randn(2048, 6, generator=gen)).argmax(1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        idx = torch.randint(0, 2048, (128,), generator=gen)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def agreement(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return (a(x).argmax(1) == b(x).argmax(1)).float().mean().item()


def test_adaround_mlp_improves_each_layer_and_output():
    gen = torch.Generator().manual_seed(0)
    model = trained_mlp(gen)
    x, x_test = correlated(256, gen), correlated(1024, gen)
    q = make_qmodel(model, 3, x)
    rtn = copy.deepcopy(q)
    before_state = copy.deepcopy(model.state_dict())
    records = []
    torch.manual_seed(0)
    reconstruct(q, model, ((x,), {}), method="adaround", iters=500, batch_size=32, progress=False, records=records)
    assert [r["name"] for r in records] == ["0", "2", "4"]
    for r in records:
        assert r["kept"] == "learned"
        assert r["mse_after"] < 0.8 * r["mse_before"], r
    # The whole model is closer to the float model, on held-out inputs too (measured: 0.31x, 94.8 -> 97.3 %).
    assert output_mse(q, model, x_test) < 0.5 * output_mse(rtn, model, x_test)
    assert agreement(q, model, x_test) > agreement(rtn, model, x_test) + 0.015
    _check_baked(q)
    assert not q.training
    # The float model is left exactly as it was.
    for k, v in model.state_dict().items():
        assert torch.equal(v, before_state[k])
    assert not model.training and all(p.requires_grad for p in model.parameters())


def test_brecq_resnet_blocks_improve():
    model = small_resnet()
    gen = torch.Generator().manual_seed(2)
    x, x_test = smooth_images(128, gen), smooth_images(256, gen)
    q = make_qmodel(model, 3, x)
    rtn = copy.deepcopy(q)
    records = []
    torch.manual_seed(0)
    reconstruct(q, model, ((x,), {}), method="brecq", iters=300, batch_size=32, progress=False, records=records)
    assert [r["name"] for r in records] == ["stem.0", "layers.0.0", "layers.1.0", "fc"]
    assert records[2]["layers"] == ["layers.1.0.conv1", "layers.1.0.conv2", "layers.1.0.downsample.0"]
    for r in records:
        assert r["kept"] == "learned"
        assert r["mse_after"] < 0.75 * r["mse_before"], r  # measured 0.18 .. 0.62
    assert output_mse(q, model, x_test) < 0.5 * output_mse(rtn, model, x_test)  # measured 0.27
    _check_baked(q)
    # Deterministic forward, also in training mode (no V, no sampling left).
    q.train()
    xb = x_test[:16]
    with torch.no_grad():
        assert torch.equal(q(xb), q(xb))


def test_brecq_user_blocks_and_execution_order():
    model = small_resnet()
    x = torch.randn(64, 3, 8, 8)
    q = make_qmodel(model, 4, x)
    records = []
    reconstruct(q, model, ((x,), {}), method="brecq", blocks=["layers"], iters=5, batch_size=16, progress=False,
                records=records)
    assert [r["name"] for r in records] == ["stem.0", "layers", "fc"]
    assert len(records[1]["layers"]) == 5
    _check_baked(q)


def test_adaround_execution_order_follows_forward():
    # The shortcut conv runs before conv1 in BasicBlock.forward.
    model = small_resnet()
    x = torch.randn(32, 3, 8, 8)
    q = make_qmodel(model, 4, x)
    records = []
    reconstruct(q, model, x, method="adaround", iters=2, batch_size=16, progress=False, records=records)
    names = [r["name"] for r in records]
    assert names.index("layers.1.0.downsample.0") < names.index("layers.1.0.conv1")
    assert len(names) == 7


def test_reconstruct_deterministic_given_seed():
    model = small_mlp()
    x = torch.randn(64, 16)
    q0 = make_qmodel(model, 3, x)
    results = []
    for _ in range(2):
        q = copy.deepcopy(q0)
        torch.manual_seed(123)
        reconstruct(q, model, ((x,), {}), method="brecq", iters=30, batch_size=16, progress=False)
        results.append([p.detach().clone() for p in q.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_reconstruct_kwargs_inputs():
    class KwNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 3)

        def forward(self, x, *, shift):
            return self.b(torch.relu(self.a(x + shift)))

    torch.manual_seed(0)
    model = KwNet().eval()
    x, shift = torch.randn(32, 8), torch.randn(32, 8)
    q = copy.deepcopy(model)
    for n in ("a", "b"):
        setattr(q, n, QuantLayer(getattr(q, n), 3, None, name=n))
    records = []
    reconstruct(q, model, ((x,), {"shift": shift}), method="adaround", iters=20, batch_size=8, progress=False,
                records=records)
    assert [r["name"] for r in records] == ["a", "b"]
    _check_baked(q)


def test_shared_layer_left_at_nearest():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.out = nn.Linear(6, 6), nn.Linear(6, 2)

        def forward(self, x):
            return self.out(self.lin(torch.relu(self.lin(x))))

    torch.manual_seed(0)
    model = Twice().eval()
    x = torch.randn(32, 6)
    q = make_qmodel(model, 3, x)
    records = []
    with pytest.warns(UserWarning, match="runs 2 times"):
        reconstruct(q, model, x, method="adaround", iters=5, batch_size=8, progress=False, records=records)
    assert [r["name"] for r in records] == ["out"]


def test_reconstruct_errors():
    model = small_mlp()
    x = torch.randn(16, 16)
    q = make_qmodel(model, 3, x)
    with pytest.raises(OmpqValueError, match="method"):
        reconstruct(q, model, x, method="gptq", iters=1, batch_size=8)
    with pytest.raises(OmpqValueError, match="QuantLayer"):
        reconstruct(copy.deepcopy(model), model, x, method="adaround", iters=1, batch_size=8)
    with pytest.raises(OmpqValueError, match="fewer than batch_size"):
        reconstruct(q, model, x, method="adaround", iters=1, batch_size=32)
    with pytest.raises(OmpqValueError, match="not a submodule"):
        reconstruct(q, model, x, method="brecq", blocks=["nope"], iters=1, batch_size=8)
    with pytest.raises(OmpqValueError, match="two blocks"):
        reconstruct(q, model, x, method="brecq", blocks=["", "0"], iters=1, batch_size=8)
    with pytest.raises(OmpqValueError, match="iters"):
        reconstruct(q, model, x, method="adaround", iters=0, batch_size=8)
    with pytest.raises(OmpqValueError, match="float model"):
        reconstruct(q, q, x, method="adaround", iters=1, batch_size=8)
    with pytest.raises(OmpqError):
        reconstruct(q, model, [x], method="adaround", iters=1, batch_size=8)
