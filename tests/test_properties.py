"""Property tests (hypothesis, bounded): fake_quantize against torch on special values and extreme scales, and
plan() on randomly built small models (within budget, model untouched, errors only OmpqError)."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import ompq_ext
from ompq_ext import OmpqError
from ompq_ext.quant.ops import fake_quantize, quant_range

SPECIAL = [math.nan, math.inf, -math.inf, 0.0, -0.0, 1e38, -1e38, 1e-38, -1e-38, 1e-45, 0.5, -0.5, 2.5, -2.5]
values = st.one_of(st.sampled_from(SPECIAL), st.floats(-1e6, 1e6, width=32))
scales = st.one_of(st.sampled_from([1e-30, 1e-12, 1e-3, 0.1, 1.0, 7.0, 1e12, 1e30]),
                   st.floats(2.0**-66, 2.0**66, width=32))


def expected(x: torch.Tensor, s: float, qmin: int, qmax: int) -> torch.Tensor:
    """The documented semantics: torch's fake_quantize_per_tensor_affine where |x/s| < 2^63 and x is finite,
    NaN stays NaN, anything larger saturates by sign."""
    torch_says = torch.fake_quantize_per_tensor_affine(x, s, 0, qmin, qmax)
    scale = torch.tensor(s, dtype=torch.float32)
    steps = x * (1.0 / scale)
    out = torch.where(steps >= 2.0**63, qmax * scale, torch_says)
    out = torch.where(steps <= -(2.0**63), qmin * scale, out)
    return torch.where(torch.isnan(x), x, out)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(xs=st.lists(values, min_size=1, max_size=40), s=scales, bits=st.integers(2, 8), signed=st.booleans())
def test_fake_quantize_on_special_values_and_extreme_scales(xs, s, bits, signed):
    x = torch.tensor(xs, dtype=torch.float32)
    scale = torch.tensor([s], dtype=torch.float32)
    if not math.isfinite(1.0 / float(scale)):
        return  # the scale's inverse must be finite (refused with an OmpqError: tested elsewhere)
    qmin, qmax = quant_range(bits, signed)
    got = fake_quantize(x, scale, bits=bits, signed=signed)
    want = expected(x, float(scale), qmin, qmax)
    same = (got == want) | (torch.isnan(got) & torch.isnan(want))
    assert bool(same.all()), (x[~same], got[~same], want[~same])
    # ±0 keeps torch's sign where torch gives a zero
    zeros = (want == 0) & ~torch.isnan(want)
    assert torch.equal(torch.signbit(got[zeros]), torch.signbit(want[zeros]))


# ---------------------------------------------------------------- plan() on random models


class Residual(nn.Module):
    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x):
        return x + self.body(x)


@st.composite
def random_model(draw):
    """A small random network over (N, channels, length) inputs: conv blocks (some residual, some branching
    into two paths that are added), then linear layers."""
    channels = draw(st.integers(1, 6))
    length = draw(st.integers(4, 12))
    layers: list[nn.Module] = []
    width = channels
    for _ in range(draw(st.integers(0, 3))):
        out = draw(st.integers(1, 8))
        kind = draw(st.sampled_from(["plain", "residual", "bias-free"]))
        if kind == "residual":
            layers.append(Residual(nn.Sequential(nn.Conv1d(width, width, 3, padding=1), nn.ReLU(),
                                                 nn.Conv1d(width, width, 1))))
        else:
            layers += [nn.Conv1d(width, out, 3, padding=1, bias=kind == "plain"), nn.ReLU()]
            width = out
    layers.append(nn.Flatten())
    features = width * length
    for _ in range(draw(st.integers(1, 3))):
        out = draw(st.integers(1, 10))
        layers += [nn.Linear(features, out), nn.Tanh()]
        features = out
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    return nn.Sequential(*layers).eval(), torch.randn(16, channels, length)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=random_model(), avg=st.floats(2.0, 9.0), method=st.sampled_from(["ompq", "output_error", "verified"]),
       bops=st.booleans())
def test_plan_of_random_models(case, avg, method, bops):
    model, x = case
    state = {k: v.clone() for k, v in model.state_dict().items()}
    budget = f"{avg:.3f}bits"
    try:
        plan = ompq_ext.plan(model, [x], budget, method=method, num_samples=16, progress=False)
    except OmpqError:
        return  # e.g. a budget below the smallest plan: a named error is the contract
    finally:
        for k, v in model.state_dict().items():
            assert torch.equal(v, state[k]), k
        assert not model.training
    limit = plan.budgets[0].limit
    assert plan.totals.size_bits <= limit
    if bops:  # the plan's BOPs as a second budget: planning again meets both
        again = ompq_ext.plan(model, [x], [budget, f"{plan.totals.bops}BOPs"], method=method, num_samples=16,
                              progress=False)
        assert again.totals.size_bits <= limit and again.totals.bops <= plan.totals.bops
    assert np.isfinite(plan.solver.objective)
