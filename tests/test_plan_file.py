"""Tests of the `Plan` record: JSON round trip, validation on load, summary, check_model.

One real plan is made with `ompq_ext.plan` on a small MLP (module-scoped fixture); each
corruption test edits a deep copy of its JSON and checks that loading fails with a
PlanFileError whose message names the problem.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import ompq_ext
from ompq_ext import models
from ompq_ext.errors import OmpqError, PlanFileError
from ompq_ext.plan_file import PLAN_FORMAT, PLAN_VERSION
from ompq_ext.record import LayerPlan, Plan

NAMES = ["0", "2", "4", "6"]
PARAMS = {"0": 32 * 24, "2": 24 * 16, "4": 16 * 16, "6": 16 * 4}


def make_model():
    torch.manual_seed(0)
    return models.mlp(32, (24, 16, 16), 4)


@pytest.fixture(scope="module")
def model():
    return make_model()


@pytest.fixture(scope="module")
def made(model):
    torch.manual_seed(1)
    x = torch.randn(32, 32)
    # OMPQ's plan: the file records its orthogonality (orm, gamma, log_theta, weight)
    return ompq_ext.plan(model, [x], "3bits", ties=[["4", "6"]], method="ompq", progress=False)


@pytest.fixture
def data(made):
    return copy.deepcopy(made.to_json())


def load_error(tmp_path, data, name="plan.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    with pytest.raises(PlanFileError) as info:
        Plan.load(path)
    assert isinstance(info.value, OmpqError)
    msg = str(info.value)
    assert str(path) in msg  # says which file
    # Plan.from_json on the same dict also rejects it
    with pytest.raises(PlanFileError):
        Plan.from_json(data)
    return msg


# --------------------------------------------------------------------------- the plan itself


def test_plan_is_sane(made, model):
    assert made.layer_names == NAMES
    assert [x.params for x in made.layers] == [PARAMS[n] for n in NAMES]
    bits = made.bits
    assert set(bits) == set(NAMES)
    assert bits["4"] == bits["6"]  # the tie
    planned = sum(PARAMS.values())
    other = sum(p.numel() for p in model.parameters()) - planned
    scales = 16 * (24 + 16 + 16 + 4 + 4)  # float16 scales: one per output channel, one per layer input
    size_bits = sum(PARAMS[n] * b for n, b in bits.items()) + 32 * other + scales
    assert made.totals["size_bits"] == size_bits and made.totals["scale_bits"] == scales
    assert made.totals["planned_params"] == planned and made.totals["other_params"] == other
    assert size_bits <= 3 * planned + 32 * other + scales  # within the 3-bit budget
    assert made.orm.shape == (4, 4)
    assert made.solver["status"] == "OPTIMAL"


# --------------------------------------------------------------------------- round trip


def test_save_writes_tagged_json(made, tmp_path):
    path = tmp_path / "p.json"
    made.save(path)
    raw = json.loads(path.read_text())
    assert raw["format"] == PLAN_FORMAT == "ompq_ext.plan"
    assert raw["version"] == PLAN_VERSION == 1
    assert raw["ompq_ext_version"] == ompq_ext.__version__
    assert [x["name"] for x in raw["layers"]] == NAMES
    assert [x["bits"] for x in raw["layers"]] == [made.bits[n] for n in NAMES]


def test_round_trip_save_load(made, tmp_path):
    path = tmp_path / "p.json"
    made.save(str(path))  # str and Path both work
    back = Plan.load(path)
    assert back.bits == made.bits
    assert back.layer_names == made.layer_names
    assert back.layers == made.layers
    assert isinstance(back.orm, np.ndarray) and back.orm.dtype == np.float64
    np.testing.assert_array_equal(back.orm, made.orm)  # bit for bit
    assert back.totals == made.totals
    assert back.settings == made.settings
    assert back.groups == made.groups
    assert back.budgets == made.budgets
    assert back.solver == made.solver
    assert back.timing == made.timing
    assert back.model == made.model
    assert back.skipped == made.skipped
    assert back.summary() == made.summary()
    assert repr(back) == repr(made)
    # and a second round trip writes the same bytes
    path2 = tmp_path / "p2.json"
    back.save(path2)
    assert path2.read_text() == path.read_text()


def test_from_json_of_to_json(made):
    back = Plan.from_json(made.to_json())
    assert back.bits == made.bits
    np.testing.assert_array_equal(back.orm, made.orm)


def test_integer_floats_are_accepted(data):
    # a hand-edited file may write gamma as 1 instead of 1.0
    data["layers"][0]["gamma"] = 1
    back = Plan.from_json(data)
    assert back.layers[0].gamma == 1.0 and isinstance(back.layers[0].gamma, float)


# --------------------------------------------------------------------------- summary


def test_summary_mentions_layers_size_and_status(made):
    text = made.summary()
    lines = text.splitlines()
    for x in made.layers:
        row = [ln for ln in lines if ln.split() and ln.split()[0] == x.name]
        assert len(row) == 1, x.name
        assert row[0].split()[1] == "Linear"
        assert f"{x.params:,}" in row[0]
        assert row[0].split()[6].rstrip("*") == str(x.bits)  # the bits column
    size_mib = made.totals["size_bits"] / 8 / 2**20
    assert f"{size_mib:.4f} MiB" in text
    assert f"{made.totals['size_bits'] / 8:,.0f} bytes" in text
    assert made.solver["status"] in text and "OPTIMAL" in text
    assert "3 bits per weight" in text  # the budget, with its unit
    assert "(= 4)" in text  # layer 6 shares the bits of group 4


def test_summary_marks_fixed_layers(model):
    x = torch.randn(16, 32)
    p = ompq_ext.plan(model, [x], "6bits", fixed_bits={"0": 8}, num_samples=16, progress=False)
    assert p.bits["0"] == 8
    text = p.summary()
    row = next(ln for ln in text.splitlines() if ln.startswith("0 "))
    assert "8*" in row
    assert "* fixed bits" in text


# --------------------------------------------------------------------------- load errors


def test_missing_file(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(PlanFileError) as info:
        Plan.load(path)
    assert "cannot read" in str(info.value) and "nope.json" in str(info.value)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(PlanFileError, match="cannot read"):
        Plan.load(tmp_path)


@pytest.mark.parametrize("text", ["layer 0: 8 bits\n", "{\"format\": \"ompq_ext.plan\",", "", "{'a': 1}"])
def test_not_json(tmp_path, text):
    path = tmp_path / "plan.txt"
    path.write_text(text)
    with pytest.raises(PlanFileError) as info:
        Plan.load(path)
    msg = str(info.value)
    assert "not JSON" in msg and "plan.txt" in msg and "line" in msg


def test_binary_file_is_not_json(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"w": torch.randn(3)}, path)  # e.g. `ompq-ext report model.pt` by mistake
    with pytest.raises(PlanFileError):
        Plan.load(path)


@pytest.mark.parametrize("payload", [{"layers": []}, [1, 2, 3], "ompq_ext.plan", 42, None,
                                     {"format": "ompq_ext.quant", "version": 1}])
def test_without_format_tag(tmp_path, payload):
    msg = load_error(tmp_path, payload)
    assert "not an ompq_ext plan" in msg and "format" in msg


def test_format_tag_missing_from_real_plan(tmp_path, data):
    del data["format"]
    assert "not an ompq_ext plan" in load_error(tmp_path, data)


@pytest.mark.parametrize("version", [2, 0, "1", None])
def test_wrong_version(tmp_path, data, version):
    data["version"] = version
    msg = load_error(tmp_path, data)
    assert f"version {version!r}" in msg and "reads version 1" in msg


def test_missing_version(tmp_path, data):
    del data["version"]
    assert "version None" in load_error(tmp_path, data)


@pytest.mark.parametrize("field", ["name", "kind", "group", "params", "macs", "gamma", "log_theta", "weight",
                                   "bits", "fixed"])
def test_missing_layer_field(tmp_path, data, field):
    del data["layers"][0][field]
    msg = load_error(tmp_path, data)
    assert "layers[0]" in msg and f"'{field}'" in msg and "lacks" in msg


def test_missing_field_in_a_later_layer(tmp_path, data):
    del data["layers"][2]["bits"]
    msg = load_error(tmp_path, data)
    assert "layers[2]" in msg and "'bits'" in msg


@pytest.mark.parametrize("field", ["layers", "orm", "groups", "totals", "budgets", "solver", "settings", "timing",
                                   "model", "skipped"])
def test_missing_top_level_field(tmp_path, data, field):
    del data[field]
    msg = load_error(tmp_path, data)
    assert f"'{field}'" in msg and "lacks" in msg


@pytest.mark.parametrize(
    "field, value, expected, got",
    [
        ("params", "768", "int", "str"),
        ("params", 768.0, "int", "float"),
        ("bits", 3.0, "int", "float"),
        ("bits", True, "int", "bool"),
        ("bits", "3", "int", "str"),
        ("fixed", 0, "bool", "int"),
        ("fixed", "false", "bool", "str"),
        ("name", 0, "str", "int"),
        ("gamma", "0.5", "float", "str"),
        ("gamma", None, "float", "NoneType"),
        ("gamma", False, "float", "bool"),
        ("macs", [1], "int", "list"),
    ],
)
def test_wrong_layer_field_type(tmp_path, data, field, value, expected, got):
    data["layers"][1][field] = value
    msg = load_error(tmp_path, data)
    assert f"layers[1].{field}" in msg and f"should be {expected}" in msg and f"got {got}" in msg


@pytest.mark.parametrize("field, value", [("layers", {"0": 1}), ("totals", []), ("settings", "x"),
                                          ("skipped", None), ("orm", "eye(4)"), ("groups", {})])
def test_wrong_top_level_type(tmp_path, data, field, value):
    data[field] = value
    msg = load_error(tmp_path, data)
    assert f"plan.{field}" in msg and "should be" in msg


@pytest.mark.parametrize("entry", [None, 3, "0", []])
def test_layer_entry_not_an_object(tmp_path, data, entry):
    data["layers"][0] = entry
    assert "layers[0]" in load_error(tmp_path, data)


@pytest.mark.parametrize("bits", [0, 17, -3, 32])
def test_bits_out_of_range(tmp_path, data, bits):
    data["layers"][0]["bits"] = bits
    for g in data["groups"]:  # keep the group consistent so the range check is what fails
        if "0" in g["layers"]:
            g["bits"] = bits
    msg = load_error(tmp_path, data)
    assert f"bits {bits}" in msg and "1..16" in msg and "(0)" in msg


@pytest.mark.parametrize("bits", [1, 16])
def test_bits_at_the_range_ends_are_accepted(data, bits):
    data["layers"][0]["bits"] = bits
    data["groups"][0]["bits"] = bits
    assert Plan.from_json(data).bits["0"] == bits


@pytest.mark.parametrize("params", [0, -5])
def test_non_positive_params(tmp_path, data, params):
    data["layers"][3]["params"] = params
    msg = load_error(tmp_path, data)
    assert "layers[3]" in msg and "parameter count" in msg


def test_channel_axis_is_optional_and_checked(tmp_path, data):
    assert all(layer["channel_axis"] == 0 for layer in data["layers"])  # written for every layer
    data["layers"][1]["channel_axis"] = 1
    assert Plan.from_json(data).layers[1].channel_axis == 1
    del data["layers"][1]["channel_axis"]  # files written before the field load with axis 0
    assert Plan.from_json(data).layers[1].channel_axis == 0
    data["layers"][1]["channel_axis"] = -1
    msg = load_error(tmp_path, data)
    assert "layers[1]" in msg and "negative channel_axis" in msg


def test_no_layers(tmp_path, data):
    data["layers"] = []
    data["orm"] = []
    data["groups"] = []
    assert "plans no layers" in load_error(tmp_path, data)


@pytest.mark.parametrize(
    "orm, shape",
    [
        (lambda o: o[:3], "(3, 4)"),
        (lambda o: [r[:3] for r in o], "(4, 3)"),
        (lambda o: [], "(0,)"),
        (lambda o: [o], "(1, 4, 4)"),
        (lambda o: [v for r in o for v in r], "(16,)"),
    ],
)
def test_wrong_orm_shape(tmp_path, data, orm, shape):
    data["orm"] = orm(data["orm"])
    msg = load_error(tmp_path, data)
    assert "orm" in msg and f"shape {shape}" in msg and "expected (4, 4)" in msg


@pytest.mark.parametrize("orm", [[[1, 2, 3, 4]] * 3 + [[1, 2, 3]], [["a"] * 4] * 4, [[{}] * 4] * 4])
def test_non_numeric_orm(tmp_path, data, orm):
    data["orm"] = orm
    assert "orm is not a numeric matrix" in load_error(tmp_path, data)


def test_group_bits_disagree_with_layer(tmp_path, data):
    g = next(g for g in data["groups"] if g["layers"] == ["4", "6"])
    g["bits"] = 16 if g["bits"] != 16 else 15
    msg = load_error(tmp_path, data)
    assert "group '4'" in msg and "'4'" in msg and "disagree" in msg


def test_layer_bits_disagree_with_its_group(tmp_path, data):
    layer = data["layers"][3]  # layer 6, tied to 4
    layer["bits"] = layer["bits"] % 8 + 1
    msg = load_error(tmp_path, data)
    assert "'6'" in msg and "disagree" in msg


def test_group_naming_unknown_layer(tmp_path, data):
    data["groups"][0]["layers"].append("fc99")
    msg = load_error(tmp_path, data)
    assert "'fc99'" in msg


@pytest.mark.parametrize("key", ["name", "layers", "params", "bits", "fixed"])
def test_group_missing_field(tmp_path, data, key):
    del data["groups"][1][key]
    msg = load_error(tmp_path, data)
    assert "groups[1]" in msg and f"'{key}'" in msg


def test_group_field_wrong_type(tmp_path, data):
    data["groups"][0]["bits"] = "8"
    msg = load_error(tmp_path, data)
    assert "groups[0].bits" in msg and "should be int" in msg


def test_group_member_of_wrong_type(tmp_path, data):
    data["groups"][0]["layers"] = [["0"]]
    load_error(tmp_path, data)


def test_duplicate_layer_names(tmp_path, data):
    data["layers"][1]["name"] = "0"
    msg = load_error(tmp_path, data)
    assert "names a layer twice" in msg


def test_duplicate_of_a_whole_layer(tmp_path, data):
    data["layers"].append(copy.deepcopy(data["layers"][0]))
    data["orm"] = np.eye(5).tolist()
    assert "twice" in load_error(tmp_path, data)


def test_from_json_default_source_name(data):
    data["version"] = 7
    with pytest.raises(PlanFileError, match="^plan has plan format version 7"):
        Plan.from_json(data)


# --------------------------------------------------------------------------- check_model


def test_check_model_same_model(made, model):
    made.check_model(model)  # no error
    made.check_model(make_model())  # same architecture, other weights: still fits
    Plan.from_json(made.to_json()).check_model(model)


def test_check_model_other_model_names_missing_layers(made):
    other = nn.Sequential()
    other.add_module("fc1", nn.Linear(32, 24))
    other.add_module("0", nn.Linear(32, 24))  # one of the planned names exists
    other.add_module("fc2", nn.Linear(24, 4))
    with pytest.raises(PlanFileError) as info:
        made.check_model(other)
    msg = str(info.value)
    assert "3 planned layer(s) are missing" in msg
    assert "2, 4, 6" in msg
    assert "another model" in msg


def test_check_model_wrapped_model(made, model):
    wrapper = nn.Sequential(model)  # names become 0.0, 0.2, ...: "0" exists but "2", "4", "6" do not
    with pytest.raises(PlanFileError, match=r"missing from it \(2, 4, 6\)"):
        made.check_model(wrapper)


def test_check_model_truncates_a_long_list_of_missing_layers():
    torch.manual_seed(0)
    big = models.mlp(8, (8,) * 10, 4)  # 11 Linear layers
    p = ompq_ext.plan(big, [torch.randn(8, 8)], "4bits", num_samples=8, progress=False)
    with pytest.raises(PlanFileError) as info:
        p.check_model(nn.ModuleDict({"fc": nn.Linear(8, 4)}))
    msg = str(info.value)
    assert "11 planned layer(s)" in msg
    assert "(0, 2, 4, 6, 8, 10, 12, 14, ...)" in msg  # the first eight, then an ellipsis


def test_check_model_weight_size_mismatch_names_layer(made):
    torch.manual_seed(0)
    other = models.mlp(32, (24, 17, 16), 4)  # "2" is 24x17, "4" is 17x16
    with pytest.raises(PlanFileError) as info:
        made.check_model(other)
    msg = str(info.value)
    assert "layer '2'" in msg
    assert f"{24 * 17:,} weights" in msg and f"expects {PARAMS['2']:,}" in msg


def test_check_model_layer_without_weight(made):
    m = make_model()
    m[4] = nn.Identity()  # the name "4" exists, but has no weight
    with pytest.raises(PlanFileError) as info:
        made.check_model(m)
    assert "layer '4' has no weight" in str(info.value)


def test_layerplan_fields_match_json(made):
    raw = made.to_json()["layers"][0]
    assert set(raw) == {f for f in LayerPlan.__dataclass_fields__}


# --------------------------------------------------------------------------- files of earlier versions

DATA = Path(__file__).resolve().parent / "data"


def test_a_plan_file_written_before_the_typed_record_loads():
    """tests/data/plan_v1.json was saved by the code before plan() became a pipeline (commit cb144fb):
    size, BOPs and latency budgets, a tie and a fixed layer; it lacks settings.method and budgets[].limit."""
    raw = json.loads((DATA / "plan_v1.json").read_text())
    assert "method" not in raw["settings"] and all("limit" not in b for b in raw["budgets"])
    p = Plan.load(DATA / "plan_v1.json")
    assert p.bits == {x["name"]: x["bits"] for x in raw["layers"]}
    assert p.settings.method == "ompq" and p.settings["beta"] == raw["settings"]["beta"]
    assert p.totals.latency == raw["totals"]["latency"] and p.totals["size_bits"] == raw["totals"]["size_bits"]
    assert [b.to_json() for b in p.budgets] == raw["budgets"]
    assert p.summary() + "\n" == (DATA / "plan_v1.summary.txt").read_text()
    p.check_model(make_model())
    q = ompq_ext.quantize(make_model(), p, act_bits=0, progress=False)
    assert q.get_submodule("2").weight_bits == 8


def test_records_are_typed_and_read_like_dicts(made):
    assert made.totals.size_bits == made.totals["size_bits"] and made.totals.get("latency", "none") == "none"
    assert made.solver.status == made.solver["status"] == "OPTIMAL"
    assert made.settings.bits == made.settings["bits"] and made.settings.method_settings["beta"] == 0.1
    assert made.groups[0].name == made.groups[0]["name"] and made.model["class"] == made.model.class_name
    assert made.budgets[0].limit == 3 * sum(PARAMS.values()) + 32 * made.totals.other_params + 16 * 64
    with pytest.raises(KeyError):
        made.totals["no such total"]


@pytest.mark.parametrize("field, value", [("size_bits", "7808"), ("avg_bits", None), ("bops", 1.5)])
def test_wrong_total_type(tmp_path, data, field, value):
    data["totals"][field] = value
    msg = load_error(tmp_path, data)
    assert f"totals.{field}" in msg and "should be" in msg


@pytest.mark.parametrize("key", ["size_bits", "avg_bits", "planned_params"])
def test_missing_total(tmp_path, data, key):
    del data["totals"][key]
    msg = load_error(tmp_path, data)
    assert "totals" in msg and f"'{key}'" in msg and "lacks" in msg


def test_null_scores_only_in_plans_of_other_methods(tmp_path, data):
    data["orm"] = None
    assert "plan.orm should be list" in load_error(tmp_path, data)
    data["settings"]["method"] = "given"
    for layer in data["layers"]:
        layer["gamma"] = layer["log_theta"] = layer["weight"] = None
    back = Plan.from_json(data)
    assert back.orm is None and back.layers[0].gamma is None


def test_records_are_mappings(made):
    p = copy.deepcopy(made)
    assert "latency" not in p.totals and "avg_bits" in p.totals and dict(p.totals)["avg_bits"] == p.totals.avg_bits
    assert list(p.settings)[:2] == ["method", "bits"] and dict(p.model) == {"class": "Sequential",
                                                                            "total_params": p.model.total_params}
    p.groups[0]["bits"] = 5
    p.settings["beta"] = 2.0
    p.settings["act_bits"] = 6
    assert p.groups[0].bits == 5 and p.settings.method_settings["beta"] == 2.0 and p.settings.act_bits == 6
    with pytest.raises(KeyError):
        p.totals["no such total"] = 1
