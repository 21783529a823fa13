"""Batches -> model inputs (ompq_ext.inputs), shared by planning, calibration, reconstruction and QAT."""

from __future__ import annotations

from collections import namedtuple

import pytest
import torch

from ompq_ext.errors import OmpqTypeError, OmpqValueError
from ompq_ext.inputs import as_call, batch_call, gather_samples, join_samples, map_tensors, select_samples, tensors
from ompq_ext.progress import progress_bar, show_progress

Pair = namedtuple("Pair", "ids mask")


def test_join_concatenates_per_sample_tensors_and_keeps_shared_values():
    a = {"x": Pair(torch.zeros(2, 3), torch.ones(2, 3)), "flag": True, "table": torch.arange(5.0)}
    b = {"x": Pair(torch.ones(3, 3), torch.zeros(3, 3)), "flag": True, "table": torch.arange(5.0)}
    joined = join_samples([a, b], [2, 3])
    assert isinstance(joined["x"], Pair)
    assert torch.equal(joined["x"].ids, torch.cat([torch.zeros(2, 3), torch.ones(3, 3)]))
    assert torch.equal(joined["x"].mask, torch.cat([torch.ones(2, 3), torch.zeros(3, 3)]))
    assert joined["flag"] is True and joined["table"] is a["table"]  # no sample dimension: kept once
    with pytest.raises(OmpqTypeError, match="different shapes"):
        join_samples([torch.zeros(2, 3), torch.zeros(3, 4)], [2, 3])
    with pytest.raises(OmpqTypeError, match="differ"):
        join_samples([(torch.zeros(2), 1), (torch.zeros(3), 2)], [2, 3])


def test_select_takes_samples_of_per_sample_tensors_only():
    obj = (Pair(torch.arange(6.0), torch.arange(6.0) * 2), {"w": torch.arange(4.0), "n": 3})
    out = select_samples(obj, torch.tensor([5, 0]), 6)
    assert torch.equal(out[0].ids, torch.tensor([5.0, 0.0])) and torch.equal(out[0].mask, torch.tensor([10.0, 0.0]))
    assert torch.equal(out[1]["w"], torch.arange(4.0)) and out[1]["n"] == 3
    assert [t.shape for t in tensors(out)] == [(2,), (2,), (4,)]
    doubled = map_tensors(obj, lambda t: t * 2)
    assert isinstance(doubled[0], Pair) and doubled[1]["n"] == 3 and torch.equal(doubled[1]["w"], obj[1]["w"] * 2)


def test_batch_forms():
    x = torch.zeros(4, 2)
    assert batch_call(x) == ((x,), {})
    assert batch_call((x, torch.zeros(4))) == ((x,), {})
    assert batch_call({"input_ids": x}) == ((), {"input_ids": x})
    assert batch_call([x, 1], input_fn=lambda b: ((b[0],), {"k": b[1]})) == ((x,), {"k": 1})
    assert as_call([x, x]) == ((x, x), {})
    with pytest.raises(OmpqTypeError, match="input_fn gave str"):
        batch_call(x, input_fn=lambda b: "text")
    with pytest.raises(OmpqTypeError, match="pass input_fn"):
        batch_call(3.0)


def test_gather_joins_batches_and_names_the_callers_arguments():
    batches = [(torch.full((3, 2), float(k)), torch.zeros(3)) for k in range(4)]
    args, kwargs = gather_samples(batches, 7)
    assert kwargs == {} and torch.equal(args[0][:, 0], torch.tensor([0.0] * 3 + [1.0] * 3 + [2.0]))
    with pytest.raises(OmpqValueError, match="the calib yielded only 12 samples but num_calib=20; .*lower num_calib"):
        gather_samples(batches, 20, loader_name="calib", count_name="num_calib")
    with pytest.raises(OmpqValueError, match="num_calib must be an integer >= 2"):
        gather_samples(batches, 1, count_name="num_calib")
    with pytest.raises(OmpqTypeError, match="calib must be iterable"):
        gather_samples(42, 4, loader_name="calib")


def test_progress_display(monkeypatch, capsys):
    assert show_progress(True) and not show_progress(False)
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    assert not show_progress(None)
    with progress_bar(3, "ompq: test", "step", True) as bar:
        bar.update(3)
    assert "ompq: test" in capsys.readouterr().err
    with progress_bar(3, "ompq: quiet", "step", False) as bar:
        bar.update(3)
    assert "ompq: quiet" not in capsys.readouterr().err


def test_planning_joins_strictly_reconstruction_keeps_the_first():
    parts = [{"x": torch.zeros(4, 2), "scale": torch.tensor([1.0, 1.0, 1.0])},
             {"x": torch.ones(4, 2), "scale": torch.tensor([2.0, 2.0, 2.0])}]
    with pytest.raises(OmpqTypeError, match="differ from batch to batch and have no sample dimension"):
        gather_samples(parts, 8)
    same = [{"x": torch.zeros(4, 2), "scale": torch.ones(3)}, {"x": torch.ones(4, 2), "scale": torch.ones(3)}]
    assert torch.equal(gather_samples(same, 8)[1]["scale"], torch.ones(3))
    captured = [(torch.zeros(4, 2), 0.5), (torch.ones(4, 2), 0.25)]  # a block returning (h, a statistic)
    joined = join_samples(captured, [4, 4], strict=False)
    assert joined[0].shape == (8, 2) and joined[1] == 0.5
