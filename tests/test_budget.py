"""Tests of budget parsing (`ompq_ext.budget`) and the exact integer limits budgets imply.

Every expected value is computed by hand from the unit definitions in the module docstring
(powers of 1000 for KB/MB/GB, of 1024 for KiB/MiB/GiB, 8 bits per byte), never by the code
under test.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from ompq_ext.budget import Budget, parse_budget, parse_budgets
from ompq_ext.errors import OmpqError, OmpqTypeError, OmpqValueError

# --------------------------------------------------------------------------- units

SIZE_CASES = [
    ("1B", 1),
    ("512B", 512),
    ("1KB", 1000),
    ("2.5KB", 2500),
    ("1MB", 10**6),
    ("5MB", 5 * 10**6),
    ("1GB", 10**9),
    ("1KiB", 1024),
    ("3KiB", 3 * 1024),
    ("1MiB", 1048576),
    ("4.5MiB", 4718592),
    ("6.7MiB", Fraction(67, 10) * 1048576),
    ("1GiB", 1073741824),
    ("0.5GiB", 536870912),
    ("2bytes", 2),
    ("1byte", 1),
]


@pytest.mark.parametrize("text, nbytes", SIZE_CASES)
def test_size_units_exact_bytes(text, nbytes):
    b = parse_budget(text)
    assert b.kind == "size"
    assert b.value == Fraction(nbytes)
    assert isinstance(b.value, Fraction)
    assert b.text == text


def test_mib_example_from_design():
    b = parse_budget("4.5MiB")
    assert b.value == 4718592
    assert b.size_limit_bits(planned_params=10, other_params=3) == 37748736
    # the size limit does not depend on the parameter counts
    assert b.size_limit_bits(planned_params=10**6, other_params=10**5) == 37748736


def test_non_whole_size_in_bits_is_floored():
    # 6.7 MiB = 7025459.2 bytes = 56203673.6 bits -> 56203673 bits (never round up past a budget)
    b = parse_budget("6.7MiB")
    assert b.value == Fraction(35127296, 5)
    assert b.size_limit_bits(planned_params=1, other_params=0) == 56203673


@pytest.mark.parametrize(
    "text, bops",
    [
        ("1BOPs", 1),
        ("123BOPs", 123),
        ("1KBOPs", 10**3),
        ("1.5KBOPs", 1500),
        ("1MBOPs", 10**6),
        ("75GBOPs", 75 * 10**9),
        ("97GBOPs", 97 * 10**9),
        ("2TBOPs", 2 * 10**12),
        ("0.25TBOPs", 250 * 10**9),
    ],
)
def test_bops_units_exact(text, bops):
    b = parse_budget(text)
    assert b.kind == "bops"
    assert b.value == bops
    assert b.bops_limit() == bops
    assert b.size_limit_bits(planned_params=100, other_params=10) is None


def test_bops_limit_is_floored():
    b = parse_budget("0.0015KBOPs")  # 1.5 BOPs
    assert b.value == Fraction(3, 2)
    assert b.bops_limit() == 1


@pytest.mark.parametrize("text, bits", [("3bits", 3), ("3.5bits", Fraction(7, 2)), ("1bit", 1),
                                        ("4b/w", 4), ("2.25bpw", Fraction(9, 4)), ("32bits", 32)])
def test_average_bits_units(text, bits):
    b = parse_budget(text)
    assert b.kind == "avg_bits"
    assert b.value == bits
    assert b.bops_limit() is None


@pytest.mark.parametrize(
    "text, planned, other",
    [("3.5bits", 1000, 0), ("3.5bits", 1001, 17), ("2.3bits", 7, 5), ("8bits", 123456, 789), ("4.75bits", 3, 1)],
)
def test_average_bits_limit_is_floor_of_bits_times_planned_plus_32_other(text, planned, other):
    b = parse_budget(text)
    a = Fraction(text[: -len("bits")])
    expected = (a.numerator * planned) // a.denominator + 32 * other
    assert b.size_limit_bits(planned_params=planned, other_params=other) == expected
    assert isinstance(b.size_limit_bits(planned_params=planned, other_params=other), int)


def test_average_bits_limit_hand_values():
    # 3.5 * 1001 = 3503.5 -> 3503; plus 32 * 17 = 544
    assert parse_budget("3.5bits").size_limit_bits(planned_params=1001, other_params=17) == 3503 + 544
    # 2.3 * 7 = 16.1 -> 16 (exact decimal arithmetic: a float 2.3*7 is 16.099999999999998)
    assert parse_budget("2.3bits").size_limit_bits(planned_params=7, other_params=0) == 16
    # 0.7 * 10 is 7 exactly in decimal arithmetic
    assert parse_budget("0.7bits").size_limit_bits(planned_params=10, other_params=0) == 7


@pytest.mark.parametrize(
    "spec, fraction",
    [("0.15", Fraction(3, 20)), (0.15, Fraction(3, 20)), ("1", Fraction(1)), (1, Fraction(1)),
     ("0.5", Fraction(1, 2)), (0.25, Fraction(1, 4)), (".3", Fraction(3, 10))],
)
def test_fraction_of_fp32_size(spec, fraction):
    b = parse_budget(spec)
    assert b.kind == "fraction"
    assert b.value == fraction
    assert b.bops_limit() is None


@pytest.mark.parametrize("spec, planned, other", [("0.15", 1000, 10), (0.15, 333, 7), ("0.1", 3, 0),
                                                    ("1", 10, 5), ("0.3", 7, 3)])
def test_fraction_limit_is_floor_of_f_times_32_times_all_params(spec, planned, other):
    b = parse_budget(spec)
    f = Fraction(str(spec))
    expected = (f.numerator * 32 * (planned + other)) // f.denominator
    assert b.size_limit_bits(planned_params=planned, other_params=other) == expected


def test_fraction_limit_hand_values():
    # 0.15 * 32 * 1010 = 4848 exactly
    assert parse_budget("0.15").size_limit_bits(planned_params=1000, other_params=10) == 4848
    # 0.3 * 32 * 10 = 96 exactly; 0.1 * 32 * 3 = 9.6 -> 9
    assert parse_budget("0.3").size_limit_bits(planned_params=7, other_params=3) == 96
    assert parse_budget("0.1").size_limit_bits(planned_params=3, other_params=0) == 9
    assert parse_budget(1).size_limit_bits(planned_params=10, other_params=5) == 32 * 15


@pytest.mark.parametrize("spec, nbytes", [(2, 2), (4096, 4096), ("4096", 4096), (10**12, 10**12), (2.0, 2)])
def test_bare_number_above_one_is_bytes(spec, nbytes):
    b = parse_budget(spec)
    assert b.kind == "size"
    assert b.value == nbytes
    assert b.size_limit_bits(planned_params=1, other_params=1) == 8 * nbytes


# --------------------------------------------------------------------------- spelling


@pytest.mark.parametrize(
    "variants, kind, value",
    [
        (["4.5MiB", "4.5mib", "4.5MIB"], "size", 4718592),  # "4.5Mib" is refused: see below
        (["5MB", "5mb", "5mB"], "size", 5 * 10**6),
        (["2GiB", "2gib", "2GIB"], "size", 2 * 2**30),
        (["3KB", "3kb", "3kB"], "size", 3000),
        (["3.5bits", "3.5BITS", "3.5Bits"], "avg_bits", Fraction(7, 2)),
        (["75GBOPs", "75gbops", "75GBOPS", "75Gbops"], "bops", 75 * 10**9),
        (["1TBOPs", "1tbops"], "bops", 10**12),
        (["5KBOPs", "5kbops"], "bops", 5000),
        (["5MBOPs", "5mbops"], "bops", 5 * 10**6),
    ],
)
def test_units_are_case_insensitive(variants, kind, value):
    for text in variants:
        b = parse_budget(text)
        assert (b.kind, b.value) == (kind, value), text


@pytest.mark.parametrize("text", ["4.5 MiB", " 4.5MiB", "4.5MiB ", "  4.5   MiB  ", "\t4.5\tMiB\n"])
def test_whitespace_is_ignored(text):
    b = parse_budget(text)
    assert (b.kind, b.value) == ("size", 4718592)
    assert b.text == text  # the user's text is kept for reports


@pytest.mark.parametrize(
    "text, kind, value",
    [
        ("1e6B", "size", 10**6),
        ("4.5e0MiB", "size", 4718592),
        ("1E3KiB", "size", 1024 * 1000),
        ("7.5e10BOPs", "bops", 75 * 10**9),
        ("75e-3TBOPs", "bops", 75 * 10**9),
        ("1.5e-1", "fraction", Fraction(3, 20)),
        ("1e6", "size", 10**6),
        ("3.5e0bits", "avg_bits", Fraction(7, 2)),
        ("2.5E+2bytes", "size", 250),
    ],
)
def test_scientific_notation(text, kind, value):
    b = parse_budget(text)
    assert (b.kind, b.value) == (kind, value)


def test_float_in_scientific_repr():
    # str(1e-05) == '1e-05': a tiny fraction given as a Python float
    b = parse_budget(1e-05)
    assert (b.kind, b.value) == ("fraction", Fraction(1, 100000))


def test_budget_instance_passes_through():
    b = parse_budget("4.5MiB")
    assert parse_budget(b) is b


def test_describe_states_the_unit():
    assert "MiB" in parse_budget("4.5MiB").describe() and "4718592 bytes" in parse_budget("4.5MiB").describe()
    assert "bits per weight" in parse_budget("3.5bits").describe()
    assert "FP32" in parse_budget("0.15").describe()
    assert "GBOPs" in parse_budget("75GBOPs").describe() and "75.0000" in parse_budget("75GBOPs").describe()


def test_to_json_is_exact():
    j = parse_budget("6.7MiB").to_json()
    assert j == {"kind": "size", "value": str(Fraction(67, 10) * 2**20), "text": "6.7MiB"}
    assert Fraction(j["value"]) == Fraction(67, 10) * 2**20


# --------------------------------------------------------------------------- errors


def _raises(spec, exc=OmpqValueError):
    with pytest.raises(exc) as info:
        parse_budget(spec)
    assert isinstance(info.value, OmpqError)
    return str(info.value)


@pytest.mark.parametrize("text, unit", [("4.5Mb/s", "Mb/s"), ("3MiBs", "MiBs"), ("10furlongs", "furlongs"),
                                        ("5kB/w", "kB/w"), ("4TB", "TB")])
def test_unknown_unit_names_it_and_lists_valid_ones(text, unit):
    msg = _raises(text)
    assert repr(unit) in msg
    assert text in msg
    for valid in ("MiB", "MB", "KiB", "GiB", "bits", "GBOPs", "TBOPs", "fraction"):
        assert valid in msg, valid


@pytest.mark.parametrize("spec", ["0MiB", "0", 0, "0.0", 0.0, "0bits", "0GBOPs", "0e5MiB"])
def test_zero_is_rejected(spec):
    msg = _raises(spec)
    assert "positive" in msg
    assert str(spec) in msg


@pytest.mark.parametrize("spec", ["-1MiB", "-0.5", -0.5, -3, "-3bits", "- 2MB"])
def test_negative_is_rejected(spec):
    msg = _raises(spec)
    assert str(spec) in msg
    assert "positive" in msg or "cannot read" in msg


@pytest.mark.parametrize("spec", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_float_is_rejected(spec):
    msg = _raises(spec)
    assert "finite" in msg


@pytest.mark.parametrize("spec", ["nan", "inf", "NaNMiB", "infbits"])
def test_non_finite_text_is_rejected(spec):
    msg = _raises(spec)
    assert spec in msg
    assert "4.5MiB" in msg  # shows an example of what to write


@pytest.mark.parametrize("spec", ["2.5", 2.5, "1.0001", "1000.5", "1.5e0"])
def test_non_whole_bare_number_above_one_is_rejected(spec):
    msg = _raises(spec)
    assert str(spec) in msg
    assert "whole" in msg and "bytes" in msg


@pytest.mark.parametrize("spec", ["33bits", "64bits", "32.5bits"])
def test_average_bits_above_32_rejected(spec):
    msg = _raises(spec)
    assert "32" in msg and "bits" in msg


@pytest.mark.parametrize("spec", [True, False])
def test_bools_are_rejected(spec):
    msg = _raises(spec, OmpqTypeError)
    assert "bool" in msg


@pytest.mark.parametrize("spec", [None, [1, 2], {"size": 3}, b"4MiB", object()])
def test_other_types_are_rejected(spec):
    msg = _raises(spec, OmpqTypeError)
    assert type(spec).__name__ in msg
    assert "4.5MiB" in msg  # says what to write instead


@pytest.mark.parametrize("text", ["", "   ", "MiB", "4.5.5MiB", "four MiB", "4,5MiB", "1e", "4.5 Mi B"])
def test_unreadable_text_is_rejected(text):
    msg = _raises(text)
    assert repr(text) in msg


def test_errors_are_value_errors_too():
    # callers catching the builtin families still catch ours
    with pytest.raises(ValueError):
        parse_budget("3furlongs")
    with pytest.raises(TypeError):
        parse_budget(None)


# --------------------------------------------------------------------------- parse_budgets


def test_parse_budgets_single_and_lists():
    [b] = parse_budgets("4.5MiB")
    assert (b.kind, b.value) == ("size", 4718592)
    both = parse_budgets(["4.5MiB", "75GBOPs"])
    assert [(b.kind, b.value) for b in both] == [("size", 4718592), ("bops", 75 * 10**9)]
    both = parse_budgets(("75GBOPs", "3.5bits"))
    assert [b.kind for b in both] == ["bops", "avg_bits"]
    assert [b.kind for b in parse_budgets([0.15])] == ["fraction"]
    assert [b.kind for b in parse_budgets(["75GBOPs"])] == ["bops"]


@pytest.mark.parametrize("specs", [["4.5MiB", "5MB"], ["4.5MiB", "3.5bits"], ["0.15", "3bits"],
                                   ["4.5MiB", 0.15], [1000, "1KiB"], ["3bits", "75GBOPs", "4bits"]])
def test_two_size_type_budgets_rejected(specs):
    with pytest.raises(OmpqValueError) as info:
        parse_budgets(specs)
    msg = str(info.value)
    assert "at most one size budget" in msg
    for s in specs:
        assert str(s) in msg


def test_two_bops_budgets_rejected():
    with pytest.raises(OmpqValueError) as info:
        parse_budgets(["75GBOPs", "4.5MiB", "80GBOPs"])
    msg = str(info.value)
    assert "at most one BOPs budget" in msg
    assert "75GBOPs" in msg and "80GBOPs" in msg


@pytest.mark.parametrize("empty", [[], ()])
def test_empty_budget_list_rejected(empty):
    with pytest.raises(OmpqValueError) as info:
        parse_budgets(empty)
    assert "empty" in str(info.value)
    assert "4.5MiB" in str(info.value)


def test_parse_budgets_propagates_item_errors():
    with pytest.raises(OmpqValueError, match="furlongs"):
        parse_budgets(["4.5MiB", "3furlongs"])
    with pytest.raises(OmpqTypeError):
        parse_budgets(["4.5MiB", None])
    with pytest.raises(OmpqTypeError):
        parse_budgets(None)


def test_budget_is_frozen():
    b = parse_budget("4.5MiB")
    with pytest.raises(Exception):
        b.value = Fraction(1)  # type: ignore[misc]
    assert isinstance(b, Budget)


def test_limits_are_python_ints():
    for text in ("4.5MiB", "3.5bits", "0.15"):
        v = parse_budget(text).size_limit_bits(planned_params=12345, other_params=67)
        assert type(v) is int and v > 0
    assert type(parse_budget("1.5KBOPs").bops_limit()) is int
    assert math.isfinite(parse_budget("1GiB").size_limit_bits(planned_params=1, other_params=1))


@pytest.mark.parametrize("text", ["4.5Mb", "3Kb", "1Gib", "2Mib", "4.5mIb"])
def test_capital_prefix_with_bit_symbol_is_refused_as_ambiguous(text):
    with pytest.raises(OmpqValueError, match="bits or bytes.*MiB"):
        parse_budget(text)
