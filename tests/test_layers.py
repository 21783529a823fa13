"""Tests of layer discovery, grouping and parameter counting (`ompq_ext.layers`)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ompq_ext import models
from ompq_ext.errors import OmpqError, OmpqTypeError, OmpqValueError
from ompq_ext.layers import DEFAULT_LAYER_TYPES, Layer, LayerGroup, count_parameters, find_layers, group_layers

# --------------------------------------------------------------------------- models


class AllKinds(nn.Module):
    """One of each default type, registered in a deliberately non-alphabetical order,
    with non-quantizable modules in between."""

    def __init__(self):
        super().__init__()
        self.zeta = nn.Linear(4, 3)  # registered first although it sorts last
        self.bn = nn.BatchNorm1d(3)
        self.c3 = nn.Conv3d(2, 5, 3, bias=False)
        self.c1 = nn.Conv1d(1, 4, 3)
        self.act = nn.ReLU()
        self.c2 = nn.Conv2d(3, 6, (3, 2))
        self.emb = nn.Embedding(10, 4)
        self.block = nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2), nn.Linear(2, 7, bias=False))


class Scale(nn.Module):
    """A custom layer with a weight parameter."""

    def __init__(self, n):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n, 2))

    def forward(self, x):
        return x * self.weight.sum(1)


class NoWeight(nn.Module):
    def forward(self, x):
        return x * 2


class Tied(nn.Module):
    """Encoder and decoder share one weight (as in tied embeddings)."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(6, 4, bias=True)
        self.mid = nn.Linear(4, 4)
        self.dec = nn.Linear(4, 6, bias=False)
        self.dec.weight = nn.Parameter(self.enc.weight.detach().t().contiguous())  # same shape, own tensor
        self.head = nn.Linear(4, 6, bias=False)
        self.head.weight = self.dec.weight  # the tie: one Parameter in two modules


EXPECTED_ALL = [
    ("zeta", "Linear", 12),
    ("c3", "Conv3d", 2 * 5 * 27),
    ("c1", "Conv1d", 4 * 1 * 3),
    ("c2", "Conv2d", 6 * 3 * 3 * 2),
    ("block.0", "Linear", 6),
    ("block.2", "Linear", 14),
]


# --------------------------------------------------------------------------- find_layers


def test_default_types():
    assert set(DEFAULT_LAYER_TYPES) == {nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear}


def test_finds_default_types_in_registration_order():
    m = AllKinds()
    layers = find_layers(m)
    assert [(x.name, x.kind, x.params) for x in layers] == EXPECTED_ALL
    modules = dict(m.named_modules())
    for x in layers:
        assert isinstance(x, Layer)
        assert x.module is modules[x.name]
        assert x.weight is modules[x.name].weight


def test_params_count_only_the_weight():
    layers = find_layers(nn.Sequential(nn.Linear(5, 3, bias=True)))
    assert layers[0].params == 15  # not 18: the bias is not a planned weight


def test_mlp_and_resnet1d():
    m = models.mlp(8, (6, 5), 3)
    layers = find_layers(m)
    assert [(x.name, x.params) for x in layers] == [("0", 48), ("2", 30), ("4", 15)]
    r = models.resnet1d(width=4, num_classes=3)
    names = [x.name for x in find_layers(r)]
    expected = [n for n, mod in r.named_modules() if isinstance(mod, (nn.Conv1d, nn.Linear))]
    assert names == expected
    assert names[0] == "stem.0" and names[-1] == "fc"
    assert "layers.1.0.downsample.0" in names
    # BasicBlock registers downsample after conv2
    i = names.index("layers.1.0.conv2")
    assert names[i + 1] == "layers.1.0.downsample.0"


def test_subclasses_of_default_types_are_found():
    class MyLinear(nn.Linear):
        pass

    m = nn.Sequential(MyLinear(3, 2), nn.ReLU())
    [layer] = find_layers(m)
    assert (layer.name, layer.kind, layer.params) == ("0", "MyLinear", 6)


def test_include_by_glob():
    names = [x.name for x in find_layers(AllKinds(), include="block.*")]
    assert names == ["block.0", "block.2"]
    names = [x.name for x in find_layers(AllKinds(), include=["c?", "zeta"])]
    assert names == ["zeta", "c3", "c1", "c2"]  # still registration order, not pattern order


def test_include_by_type():
    names = [x.name for x in find_layers(AllKinds(), include=nn.Linear)]
    assert names == ["zeta", "block.0", "block.2"]
    names = [x.name for x in find_layers(AllKinds(), include=[nn.Conv1d, "block.2"])]
    assert names == ["c1", "block.2"]


def test_exclude_by_glob_and_type():
    names = [x.name for x in find_layers(AllKinds(), exclude="block.*")]
    assert names == ["zeta", "c3", "c1", "c2"]
    names = [x.name for x in find_layers(AllKinds(), exclude=[nn.Conv2d, nn.Conv3d, "zeta"])]
    assert names == ["c1", "block.0", "block.2"]


def test_include_and_exclude_together():
    names = [x.name for x in find_layers(AllKinds(), include=nn.Linear, exclude="block.0")]
    assert names == ["zeta", "block.2"]


def test_glob_is_case_sensitive():
    with pytest.raises(OmpqValueError, match="'ZETA'"):
        find_layers(AllKinds(), include="ZETA")


@pytest.mark.parametrize("argument", ["include", "exclude"])
def test_pattern_matching_nothing_raises_naming_it(argument):
    with pytest.raises(OmpqValueError) as info:
        find_layers(AllKinds(), **{argument: ["zeta", "blok.*"]})
    msg = str(info.value)
    assert "'blok.*'" in msg
    assert argument in msg
    assert "'zeta'" not in msg  # only the bad pattern is named


def test_pattern_matching_a_non_layer_module_is_no_typo():
    # 'bn' names a module (so it is not a typo) but not a quantizable layer
    names = [x.name for x in find_layers(AllKinds(), exclude="bn")]
    assert names == [x[0] for x in EXPECTED_ALL]


@pytest.mark.parametrize("bad", [[nn.Linear, 3.5], [None], (object(),)])
@pytest.mark.parametrize("argument", ["include", "exclude", "layer_types"])
def test_selector_of_wrong_type_raises(argument, bad):
    with pytest.raises(OmpqTypeError) as info:
        find_layers(AllKinds(), **{argument: bad})
    assert argument in str(info.value)


@pytest.mark.parametrize("argument", ["include", "exclude", "layer_types"])
def test_non_iterable_selector_raises_ompq_type_error(argument):
    with pytest.raises(OmpqTypeError, match=argument):
        find_layers(AllKinds(), **{argument: 3})


def test_not_a_module_raises():
    with pytest.raises(OmpqTypeError, match="nn.Module"):
        find_layers({"fc": nn.Linear(2, 2)})


def test_model_without_quantizable_layers_raises():
    m = nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3), nn.Embedding(4, 3))
    with pytest.raises(OmpqValueError) as info:
        find_layers(m)
    msg = str(info.value)
    assert "layer_types" in msg
    assert "Sequential" in msg
    assert "Linear" in msg and "Conv2d" in msg  # says which types it looked for


def test_everything_excluded_raises():
    with pytest.raises(OmpqValueError, match="layer_types"):
        find_layers(models.mlp(4, (3,), 2), exclude=nn.Linear)


def test_user_layer_types_add_a_custom_type():
    m = nn.Sequential(nn.Linear(3, 3), Scale(3), nn.Embedding(5, 2))
    assert [x.name for x in find_layers(m)] == ["0"]
    layers = find_layers(m, layer_types=[Scale])
    assert [(x.name, x.kind, x.params) for x in layers] == [("0", "Linear", 9), ("1", "Scale", 6)]
    # a single type (not in a list) works too, and adds to the defaults rather than replacing them
    layers = find_layers(m, layer_types=nn.Embedding)
    assert [(x.name, x.kind, x.params) for x in layers] == [("0", "Linear", 9), ("2", "Embedding", 10)]
    # a custom type alone makes an otherwise empty model plannable
    assert [x.name for x in find_layers(nn.Sequential(Scale(4)), layer_types=(Scale,))] == ["0"]


def test_custom_type_without_weight_raises_naming_the_layer():
    m = nn.Sequential(nn.Linear(3, 3), NoWeight())
    with pytest.raises(OmpqTypeError) as info:
        find_layers(m, layer_types=[NoWeight])
    msg = str(info.value)
    assert "'1'" in msg and "NoWeight" in msg and "weight" in msg
    # excluding it is the documented way out
    assert [x.name for x in find_layers(m, layer_types=[NoWeight], exclude="1")] == ["0"]


def test_layer_types_given_as_a_name_string_raises_ompq_error():
    with pytest.raises(OmpqError):
        find_layers(nn.Sequential(nn.Linear(2, 2), Scale(2)), layer_types=["Scale"])


# --------------------------------------------------------------------------- group_layers


def test_untied_layers_are_singleton_groups():
    layers = find_layers(AllKinds())
    groups = group_layers(layers)
    assert [(g.name, g.layers, g.params) for g in groups] == [(n, [n], p) for n, _, p in EXPECTED_ALL]
    assert all(isinstance(g, LayerGroup) for g in groups)


def test_shared_weight_forms_one_group_counted_once():
    m = Tied()
    layers = find_layers(m)
    assert [(x.name, x.params) for x in layers] == [("enc", 24), ("mid", 16), ("dec", 24), ("head", 24)]
    groups = group_layers(layers)
    assert [(g.name, g.layers, g.params) for g in groups] == [
        ("enc", ["enc"], 24), ("mid", ["mid"], 16), ("dec", ["dec", "head"], 24),
    ]


def test_shared_weight_across_non_adjacent_layers():
    shared = nn.Linear(5, 5, bias=False)
    other = nn.Linear(5, 5, bias=False)
    other.weight = shared.weight
    m = nn.Sequential(shared, nn.Linear(5, 5), nn.Linear(5, 5), other)
    groups = group_layers(find_layers(m))
    assert [(g.name, g.layers, g.params) for g in groups] == [
        ("0", ["0", "3"], 25), ("1", ["1"], 25), ("2", ["2"], 25),
    ]


def test_same_module_registered_twice_is_one_layer():
    lin = nn.Linear(3, 3)
    m = nn.Sequential(lin, nn.ReLU(), lin)
    assert [x.name for x in find_layers(m)] == ["0"]


def test_user_ties_join_groups():
    layers = find_layers(AllKinds())
    groups = group_layers(layers, ties=[["c1", "block.2"], ("zeta", "c2")])
    assert [(g.name, g.layers, g.params) for g in groups] == [
        ("zeta", ["zeta", "c2"], 12 + 108),
        ("c3", ["c3"], 270),
        ("c1", ["c1", "block.2"], 12 + 14),
        ("block.0", ["block.0"], 6),
    ]


def test_ties_are_transitive_and_combine_with_shared_weights():
    m = Tied()
    layers = find_layers(m)
    groups = group_layers(layers, ties=[["mid", "head"], ["enc", "mid"]])
    # enc-mid (tie), mid-head (tie), head-dec (shared weight): one group, dec/head weight once
    assert [(g.name, g.layers, g.params) for g in groups] == [("enc", ["enc", "mid", "dec", "head"], 24 + 16 + 24)]


def test_tie_of_three_names_and_redundant_ties():
    layers = find_layers(models.mlp(4, (4, 4, 4), 4))
    names = [x.name for x in layers]
    assert names == ["0", "2", "4", "6"]
    groups = group_layers(layers, ties=[["6", "2", "4"], ["4", "2"]])
    assert [(g.name, g.layers, g.params) for g in groups] == [("0", ["0"], 16), ("2", ["2", "4", "6"], 48)]


def test_tie_naming_unknown_layer_raises():
    layers = find_layers(models.mlp(4, (4,), 4))
    with pytest.raises(OmpqValueError) as info:
        group_layers(layers, ties=[["0", "fc9"]])
    assert "'fc9'" in str(info.value) and "ties" in str(info.value)


def test_tie_naming_an_excluded_layer_raises():
    layers = find_layers(models.mlp(4, (4,), 4), exclude="2")
    with pytest.raises(OmpqValueError, match="'2'"):
        group_layers(layers, ties=[["0", "2"]])


@pytest.mark.parametrize("tie", ["0", ["0"], ()])
def test_tie_must_list_two_or_more_names(tie):
    layers = find_layers(models.mlp(4, (4,), 4))
    with pytest.raises(OmpqValueError) as info:
        group_layers(layers, ties=[tie])
    assert "two or more" in str(info.value)


def test_flat_list_of_names_as_ties_is_rejected():
    layers = find_layers(models.mlp(4, (4,), 4))
    with pytest.raises(OmpqValueError, match="two or more"):
        group_layers(layers, ties=["0", "2"])  # should have been [["0", "2"]]


# --------------------------------------------------------------------------- count_parameters


def test_count_parameters_counts_every_parameter_but_no_buffers():
    m = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Embedding(5, 2))
    # 12 + 3 (linear) + 3 + 3 (bn affine; running stats are buffers) + 10 (embedding)
    assert count_parameters(m) == 31


def test_count_parameters_counts_shared_params_once():
    m = Tied()
    # enc 24+4, mid 16+4, dec/head one shared 24
    assert count_parameters(m) == 24 + 4 + 16 + 4 + 24
    shared = nn.Linear(5, 5)
    assert count_parameters(nn.Sequential(shared, nn.ReLU(), shared)) == 30


def test_count_parameters_of_resnet1d_matches_a_hand_sum():
    r = models.resnet1d(width=4, num_classes=3)
    seen, total = set(), 0
    for mod in r.modules():
        for p in mod.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    assert count_parameters(r) == total
    planned = sum(x.params for x in find_layers(r))
    assert planned < total  # biases and norms are "other" parameters
