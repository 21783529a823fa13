"""plan(method=...): the allocator is a plug-in. OMPQ by name or as an instance gives the same plan;
scores from elsewhere (``GivenScores``) are solved exactly under the same budgets (brute force);
a new allocator is one small class."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import ompq_ext
import ompq_ext.constraints
from ompq_ext.allocators import ALLOCATORS, OMPQ, Allocator, GivenScores, Scores
from ompq_ext.errors import OmpqTypeError, OmpqValueError
from ompq_ext.features import FeaturePass
from ompq_ext.models import mlp, resnet1d
from ompq_ext.record import Plan


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return mlp(10, (12, 8, 6), 4).eval(), torch.randn(32, 10)


def test_registry_and_instance_give_the_same_plan(small):
    model, x = small
    assert ALLOCATORS["ompq"] is OMPQ
    by_name = ompq_ext.plan(model, [x], "3bits", beta=3.0, objective="suffix_mean", progress=False)
    by_instance = ompq_ext.plan(model, [x], "3bits", method=OMPQ(beta=3.0, objective="suffix_mean"), progress=False)
    assert by_instance.bits == by_name.bits
    np.testing.assert_array_equal(by_instance.orm, by_name.orm)
    assert by_instance.settings == by_name.settings
    assert by_name.settings.method == "ompq" and by_name.settings["beta"] == 3.0


def test_ompq_weights_handed_back_reproduce_the_ompq_plan(small):
    """The pipeline's group objective is the sum of the layer weights, whoever scores them."""
    model, x = small
    ompq = ompq_ext.plan(model, [x], "3bits", ties=[["2", "4"]], method="ompq", progress=False)
    given = ompq_ext.plan(model, [x], "3bits", ties=[["2", "4"]], progress=False,
                          method=GivenScores(weights={l.name: l.weight for l in ompq.layers}))
    assert given.bits == ompq.bits and given.solver.objective == ompq.solver.objective
    assert given.settings.method == "given" and given.orm is None
    assert all(l.gamma is None and l.weight == o.weight for l, o in zip(given.layers, ompq.layers))


def brute_force_values(plan, values):
    """The best summed value over every plan of the same layers that keeps the size budget."""
    limit = plan.budgets[0].limit - 32 * plan.totals.other_params - plan.totals.scale_bits
    names, params = plan.layer_names, [l.params for l in plan.layers]
    best = None
    for bits in itertools.product(plan.settings.bits, repeat=len(names)):
        if sum(p * b for p, b in zip(params, bits)) <= limit:
            v = sum(values[n][b] for n, b in zip(names, bits))
            best = v if best is None else max(best, v)
    return best


@pytest.mark.parametrize("seed", range(4))
def test_given_values_are_solved_exactly(small, seed):
    model, x = small
    rng = np.random.default_rng(seed)
    names = ompq_ext.plan(model, [x], "3bits", progress=False).layer_names
    values = {n: {b: float(-rng.random() * 2.0 ** -b) for b in range(2, 5)} for n in names}
    p = ompq_ext.plan(model, [x], "3bits", method=GivenScores(values=values, name="mine"), progress=False)
    assert p.totals.avg_bits <= 3
    assert sum(values[l.name][l.bits] for l in p.layers) == pytest.approx(brute_force_values(p, values), abs=1e-9)
    assert all(l.weight is None for l in p.layers)
    assert "method    mine" in p.summary()


def test_a_plan_of_another_method_round_trips(small, tmp_path):
    model, x = small
    names = ompq_ext.plan(model, [x], "3bits", progress=False).layer_names
    p = ompq_ext.plan(model, [x], "3bits", progress=False,
                      method=GivenScores(values={n: {b: -float(b != 4) for b in range(2, 5)} for n in names},
                                         name="mine", settings={"source": "a table"}))
    p.save(tmp_path / "p.json")
    back = Plan.load(tmp_path / "p.json")
    assert back.bits == p.bits and back.orm is None and back.settings == p.settings
    assert back.settings["source"] == "a table" and back.summary() == p.summary()
    q = ompq_ext.quantize(model, back, act_bits=0, progress=False)
    assert q.get_submodule(names[0]).weight_bits == p.bits[names[0]]


class ByIndex(Allocator):
    """A new allocator in a few lines: later layers matter more."""

    name = "by-index"

    def scores(self, data):
        return Scores(weights={layer.name: float(k + 1) for k, layer in enumerate(data.layers)})


def test_a_new_allocator_is_one_class():
    torch.manual_seed(0)
    model, x = resnet1d(width=8).eval(), torch.randn(32, 1, 40)
    p = ompq_ext.plan(model, [x], "3bits", bits=[2, 4], method=ByIndex(), progress=False)
    assert p.settings.method == "by-index" and p.totals.avg_bits <= 3
    # The exact optimum of sum (k + 1) * bits_k under the budget, over all 2**16 plans.
    plans = np.array(list(itertools.product((2, 4), repeat=len(p.layers))))
    params = np.array([l.params for l in p.layers])
    ok = plans @ params <= p.budgets[0].limit - 32 * p.totals.other_params - p.totals.scale_bits
    best = (plans[ok] @ np.arange(1, len(p.layers) + 1)).max()
    assert sum((k + 1) * l.bits for k, l in enumerate(p.layers)) == best


class Collecting(Allocator):
    """An allocator that asks the feature pass for the layers' outputs (here: their mean square)."""

    name = "energy"

    class Energy:
        def __init__(self, n):
            self.total = np.zeros(n)

        def add(self, i, out, source):
            self.total[i] += float(out.double().square().mean())

        def finish(self):
            pass

    def collectors(self, layers, num_samples):
        return [self.Energy(len(layers))]

    def scores(self, data):
        (energy,) = data.collectors
        return Scores(weights={l.name: float(energy.total[i]) for l, i in zip(data.layers, data.indices)})


def test_collectors_see_every_planned_layers_features(small):
    model, x = small
    p = ompq_ext.plan(model, [x], "3bits", method=Collecting(), progress=False)
    with torch.no_grad():
        outs, h = {}, []
        for n in p.layer_names:
            h.append(model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: outs.__setitem__(n, o)))
        model(x)
        for handle in h:
            handle.remove()
    for layer in p.layers:
        assert layer.weight == pytest.approx(float(outs[layer.name].double().square().mean()), rel=1e-12)


def test_method_errors(small):
    model, x = small
    with pytest.raises(OmpqValueError, match="method must be one of.*'ompq'"):
        ompq_ext.plan(model, [x], "3bits", method="hawq", progress=False)
    with pytest.raises(OmpqTypeError, match="method must be"):
        ompq_ext.plan(model, [x], "3bits", method=3, progress=False)
    with pytest.raises(OmpqValueError, match="beta.*GivenScores"):
        ompq_ext.plan(model, [x], "3bits", method=GivenScores(weights={}), beta=3.0, progress=False)
    with pytest.raises(OmpqValueError, match="no score for the planned layer"):
        ompq_ext.plan(model, [x], "3bits", method=GivenScores(weights={"0": 1.0}), progress=False)
    with pytest.raises(OmpqValueError, match="exactly one"):
        GivenScores()
    with pytest.raises(OmpqValueError, match="layer '0' must be finite"):
        ompq_ext.plan(model, [x], "3bits", progress=False,
                      method=GivenScores(weights={n: -1.0 for n in ("0", "2", "4", "6")}))
    with pytest.raises(OmpqValueError, match="no value for 4 bits"):
        ompq_ext.plan(model, [x], "3bits", progress=False,
                      method=GivenScores(values={n: {2: 0.0, 3: 0.0} for n in ("0", "2", "4", "6")}))
    with pytest.raises(OmpqValueError, match="unbiased estimator needs num_samples >= 4"):
        OMPQ(estimator="unbiased").check(3)
    with pytest.raises(OmpqValueError, match="beta"):
        OMPQ(beta=float("nan"))


def test_feature_pass_counts_and_orders_without_collectors(small):
    model, x = small
    from ompq_ext.layers import find_layers

    layers = find_layers(model)[::-1]  # discovery order need not be execution order
    with torch.no_grad(), FeaturePass(layers, 32) as feature_pass:
        model(x)
        seen = feature_pass.finish()
    assert [layers[i].name for i in seen.order] == ["0", "2", "4", "6"]
    assert seen.calls == [1, 1, 1, 1]
    assert seen.macs == [l.params for l in layers]  # a Linear's MACs per sample are its weights


class Partial(Allocator):
    name = "partial"

    def __init__(self, scores):
        self._scores = scores

    def scores(self, data):
        return self._scores(data)


def test_what_an_allocator_returns_is_checked(small):
    model, x = small
    cases = [
        (lambda d: None, OmpqTypeError, "returned NoneType, not Scores"),
        (lambda d: Scores(weights={"0": 1.0}), OmpqValueError, "weights lack the planned layer.*'2'"),
        (lambda d: Scores(), OmpqValueError, "weights or values, exactly one"),
        (lambda d: Scores(weights={l.name: 1.0 for l in d.layers}, gamma={}), OmpqValueError, "gamma lack"),
        (lambda d: Scores(values={l.name: {b: "high" for b in d.bits} for l in d.layers}), OmpqValueError,
         "value of layer '0' at 2 bits is not a number"),
    ]
    for scores, error, match in cases:
        with pytest.raises(error, match=match):
            ompq_ext.plan(model, [x], "3bits", method=Partial(scores), progress=False)


def test_allocator_names_and_settings_are_checked(small):
    model, x = small
    names = ("0", "2", "4", "6")
    with pytest.raises(OmpqValueError, match="name of its own"):
        ompq_ext.plan(model, [x], "3bits", method=GivenScores(weights={n: 1.0 for n in names}, name="ompq"),
                      progress=False)
    with pytest.raises(OmpqValueError, match="may not be called bits, method"):
        ompq_ext.plan(model, [x], "3bits", progress=False,
                      method=GivenScores(weights={n: 1.0 for n in names}, settings={"bits": "mine", "method": "x"}))
    with pytest.raises(OmpqValueError, match="cannot be written to a plan file"):
        ompq_ext.plan(model, [x], "3bits", progress=False,
                      method=GivenScores(weights={n: 1.0 for n in names}, settings={"t": torch.zeros(2)}))
    for bad, error, match in [(dict(values={"0": 5}), OmpqTypeError, "values of layer '0' must be a dict"),
                              (dict(values={"0": {4.5: 1.0}}), OmpqValueError, "bits 4.5; bits are integers"),
                              (dict(weights={"0": "x"}), OmpqValueError, "weight of layer '0' must be a number"),
                              (dict(weights={"0": 1.0}, settings=[1]), OmpqTypeError, "settings must be a dict")]:
        with pytest.raises(error, match=match):
            GivenScores(**bad)
    assert GivenScores(weights={"0": np.float32(2.0), "1": torch.tensor(3.0)}).weights == {"0": 2.0, "1": 3.0}


def test_options_are_checked_before_the_loader_is_drawn(small):
    model, x = small
    drawn = []

    def loader():
        drawn.append(1)
        yield x

    for kwargs in (dict(bn_mode="train"), dict(estimator="unbiased", num_samples=3),
                   dict(budget=["3bits", "4bits"]), dict(latency_table={}, latency_budget=1.0,
                                                         budget=["3bits", ompq_ext.constraints.LatencyConstraint({}, 1.0)])):
        budget = kwargs.pop("budget", "3bits")
        with pytest.raises(OmpqValueError):
            ompq_ext.plan(model, loader(), budget, progress=False, **kwargs)
    assert drawn == []


@pytest.mark.parametrize("kind", ["kl", "cosine", "mse"])
def test_divergence_in_chunks_equals_the_whole_computation(kind, monkeypatch):
    """The divergence is summed over chunks of rows (a language model's logits would not fit in float64 at
    once); with chunks of a few rows it equals the formula over the whole tensor in float64."""
    import torch.nn.functional as F

    from ompq_ext.allocators import divergence

    torch.manual_seed(0)
    out, ref = torch.randn(7, 5, 11), torch.randn(7, 5, 11)
    o, r = out.reshape(-1, 11).double(), ref.reshape(-1, 11).double()
    if kind == "kl":
        want = float(F.kl_div(F.log_softmax(o, -1), F.log_softmax(r, -1), log_target=True, reduction="batchmean"))
    elif kind == "cosine":
        want = float(1 - F.cosine_similarity(o, r, dim=-1).mean())
    else:
        want = float((o - r).square().mean() / r.square().mean())
    for chunk in (11, 33, 64, 1 << 22):  # one row per chunk, three rows, a ragged last chunk, one chunk
        monkeypatch.setattr(divergence, "_CHUNK_VALUES", chunk)
        assert divergence._divergence(kind, out, ref) == pytest.approx(want, rel=1e-12, abs=0)
