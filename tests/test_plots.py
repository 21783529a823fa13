"""Plots (matplotlib, the [plot] extra): what each draws, the report command, and the message without it."""

from __future__ import annotations

import sys

import pytest

import ompq_ext
from ompq_ext import OmpqError, OmpqValueError, cli, plots
from ompq_ext.demo import load_demo
from ompq_ext.sweep import sweep

matplotlib = pytest.importorskip("matplotlib")
from matplotlib import image  # noqa: E402


@pytest.fixture(scope="module")
def demo_plans():
    model, calib, _, _ = load_demo()
    calib = calib[:64]
    ompq = ompq_ext.plan(model, [calib], "3bits", method="ompq", num_samples=32, progress=False)
    verified = ompq_ext.plan(model, [calib], "3bits", method="verified", num_samples=32, progress=False)
    return model, calib, ompq, verified


def _png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return image.imread(path)


def test_bits_per_layer(tmp_path, demo_plans):
    _, _, plan, _ = demo_plans
    pixels = _png(plots.bits_per_layer(plan, tmp_path / "bits.png"))
    assert pixels.shape[0] > 300 and pixels.shape[1] > 600
    assert pixels[..., :3].std() > 0.05  # not a blank canvas


def test_orm_heatmap_only_where_the_plan_has_one(tmp_path, demo_plans):
    _, _, ompq, verified = demo_plans
    pixels = _png(plots.orm_heatmap(ompq, tmp_path / "orm.png"))
    assert pixels.shape[0] > 300
    with pytest.raises(OmpqValueError, match="no ORM matrix.*'verified'"):
        plots.orm_heatmap(verified, tmp_path / "none.png")


def test_pareto_of_a_sweep(tmp_path, demo_plans):
    model, calib, _, _ = demo_plans
    result = sweep(model, [calib], ["2.5bits", "4bits"], method="ompq", num_samples=32, progress=False,
                   evaluate=lambda q: 1.0)
    pixels = _png(result.plot(tmp_path / "front.png"))
    assert pixels.shape[1] > 2 * pixels.shape[0]  # two panels side by side: objective and metric


def test_plots_leave_pyplot_alone(tmp_path, demo_plans):
    import matplotlib

    backend = matplotlib.get_backend()
    before = len(__import__("matplotlib.pyplot").pyplot.get_fignums())
    for _ in range(25):
        plots.bits_per_layer(demo_plans[2], tmp_path / "bits.png")
    assert matplotlib.get_backend() == backend
    assert len(__import__("matplotlib.pyplot").pyplot.get_fignums()) == before


def test_a_missing_folder_is_named(tmp_path, demo_plans):
    with pytest.raises(OmpqValueError, match="folder does not exist"):
        plots.bits_per_layer(demo_plans[2], tmp_path / "nowhere" / "bits.png")


def test_without_matplotlib_the_message_says_how_to_install(tmp_path, demo_plans, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # importing them raises ImportError
    with pytest.raises(OmpqError, match=r"pip install 'ompq_ext\[plot\]'"):
        plots.bits_per_layer(demo_plans[2], tmp_path / "bits.png")


def test_report_command_draws_into_a_folder(tmp_path, demo_plans, capsys):
    _, _, ompq, verified = demo_plans
    ompq.save(tmp_path / "ompq.json")
    verified.save(tmp_path / "verified.json")
    assert cli.main(["report", str(tmp_path / "ompq.json"), "--plot", str(tmp_path / "a")]) == 0
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["bits.png", "orm.png"]
    assert cli.main(["report", str(tmp_path / "verified.json"), "--plot", str(tmp_path / "b")]) == 0
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["bits.png"]
    assert "plot written to" in capsys.readouterr().out
