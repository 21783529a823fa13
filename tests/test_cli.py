"""Tests of the ``ompq-ext`` command (`ompq_ext.cli`).

Each test writes a tiny model factory module into its own tmp_path (under a unique
module name, so modules of different tests never collide in sys.modules), data files
in .pt / .npz form, and calls ``ompq_ext.cli.main([...])`` in-process. Two tests run
the installed console script in a subprocess.
"""

from __future__ import annotations

import importlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from ompq_ext import cli, models
from ompq_ext.record import Plan

IN, HIDDEN, OUT = 16, (12, 8), 4
NAMES = ["0", "2", "4"]
PARAMS = {"0": IN * 12, "2": 12 * 8, "4": 8 * OUT}
PLANNED = sum(PARAMS.values())  # 320
OTHER = 12 + 8 + OUT  # biases: 24
SCALES = 16 * (12 + 8 + OUT + 3)  # float16 scales: one per output channel, one per layer input
_counter = itertools.count()

FACTORY = textwrap.dedent(
    f"""
    import torch
    from torch import nn
    from ompq_ext import models

    BUILT = []
    NOT_A_MODEL = 42

    def make():
        torch.manual_seed(0)
        model = models.mlp({IN}, {HIDDEN!r}, {OUT})
        BUILT.append(model)
        return model

    def make_other():
        return models.mlp({IN}, (7,), {OUT})

    def make_none():
        return None

    torch.manual_seed(0)
    MODEL = models.mlp({IN}, {HIDDEN!r}, {OUT})

    def batches():
        torch.manual_seed(3)
        return [torch.randn(16, {IN}), torch.randn(16, {IN})]
    """
)


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A factory module importable as env.mod, data and weight files, and a runner."""
    mod = f"ompq_cli_factory_{os.getpid()}_{next(_counter)}"
    (tmp_path / f"{mod}.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()

    torch.manual_seed(7)
    x = torch.randn(32, IN)
    torch.save(x, tmp_path / "x.pt")
    torch.save((x, torch.randint(0, OUT, (32,))), tmp_path / "xy.pt")
    np.savez(tmp_path / "x.npz", x=x.numpy())
    np.savez(tmp_path / "two.npz", labels=np.arange(32), x=x.numpy())

    torch.manual_seed(123)
    other = models.mlp(IN, HIDDEN, OUT)
    with torch.no_grad():  # make the weights clearly different from the factory's seed-0 init
        for p in other.parameters():
            p.mul_(3.0).add_(0.1)
    torch.save(other.state_dict(), tmp_path / "w.pt")
    torch.save({"state_dict": other.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    torch.save(models.mlp(IN, (7,), OUT).state_dict(), tmp_path / "w_wrong.pt")
    torch.save(torch.zeros(3), tmp_path / "w_tensor.pt")

    class Env:
        pass

    e = Env()
    e.tmp, e.mod, e.x, e.trained = tmp_path, mod, x, other
    e.module = lambda: importlib.import_module(mod)
    e.path = lambda name: str(tmp_path / name)
    yield e
    sys.modules.pop(mod, None)


def run(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def plan_file(env, capsys, *extra, data="x.pt", budget="3bits", name="plan.json"):
    out_path = env.path(name)
    rc, out, err = run(capsys, "plan", f"{env.mod}:make", "--data", env.path(data), "--budget", budget,
                       "-o", out_path, "--quiet", *extra)
    assert rc == 0, err
    return Plan.load(out_path), out, err


def check_sizes(p: Plan):
    """The totals agree with a hand computation from the bits."""
    size = sum(PARAMS[n] * b for n, b in p.bits.items()) + 32 * OTHER + SCALES
    assert p.totals["size_bits"] == size and p.totals["scale_bits"] == SCALES
    assert p.totals["planned_params"] == PLANNED and p.totals["other_params"] == OTHER
    return size


# --------------------------------------------------------------------------- plan


def test_plan_writes_loadable_plan_within_budget(env, capsys):
    p, out, err = plan_file(env, capsys, budget="250B")
    assert out == ""  # --quiet: nothing on stdout
    assert p.layer_names == NAMES
    assert len(p.layers) == 3
    size = check_sizes(p)
    assert size <= 250 * 8
    assert p.budgets[0]["kind"] == "size" and p.budgets[0]["text"] == "250B"
    raw = json.loads(open(env.path("plan.json")).read())
    assert raw["format"] == "ompq_ext.plan"
    p.check_model(env.module().make())


@pytest.mark.parametrize("budget, limit", [("3bits", 3 * PLANNED + 32 * OTHER + SCALES), ("0.2", int(0.2 * 32 * 344)),
                                           ("0.00025MiB", int(0.00025 * 2**20 * 8))])
def test_plan_other_budget_units(env, capsys, budget, limit):
    p, _, _ = plan_file(env, capsys, budget=budget)
    assert check_sizes(p) <= limit


def test_plan_size_and_bops_budgets_together(env, capsys):
    # BOPs per sample = MACs x bits x 8; MACs equal the weight counts for an MLP
    bops_limit = 4 * 8 * PLANNED
    p, _, _ = plan_file(env, capsys, "--budget", f"{bops_limit}BOPs", budget="0.5")
    assert [b["kind"] for b in p.budgets] == ["fraction", "bops"]
    bops = sum(PARAMS[n] * b * 8 for n, b in p.bits.items())
    assert p.totals["bops"] == bops <= bops_limit


def test_plan_prints_summary_without_quiet(env, capsys):
    out_path = env.path("p.json")
    rc, out, err = run(capsys, "plan", f"{env.mod}:make", "--data", env.path("x.pt"), "--budget", "3bits",
                       "-o", out_path)
    assert rc == 0
    p = Plan.load(out_path)
    for name in NAMES:
        assert any(line.split()[:1] == [name] for line in out.splitlines())
    assert "OPTIMAL" in out and "MiB" in out
    assert f"plan written to {out_path}" in out
    assert "ompq: feature pass" not in out  # the progress display goes to stderr, never stdout
    assert out.startswith(p.summary().splitlines()[0])


def test_progress_display_with_non_tty_stderr(env, capsys):
    # capsys's stderr is not a tty; the display is on (no --quiet) and must not break anything
    assert not sys.stderr.isatty()
    rc, out, err = run(capsys, "plan", f"{env.mod}:make", "--data", env.path("x.pt"), "--budget", "3bits")
    assert rc == 0
    assert "solver" in out and "Traceback" not in err


def test_data_as_tuple_npz_and_callable(env, capsys):
    # OMPQ: its ORM matrix shows that the features, hence the samples, are the same
    p_tensor, _, _ = plan_file(env, capsys, "--method", "ompq", data="x.pt", name="a.json")
    p_tuple, _, _ = plan_file(env, capsys, "--method", "ompq", data="xy.pt", name="b.json")
    p_npz, _, _ = plan_file(env, capsys, "--method", "ompq", data="x.npz", name="c.json")
    assert p_tensor.orm is not None
    # the same 32 inputs in three containers give the same plan
    assert p_tensor.bits == p_tuple.bits == p_npz.bits
    np.testing.assert_array_equal(p_tensor.orm, p_tuple.orm)
    np.testing.assert_allclose(p_tensor.orm, p_npz.orm, rtol=0, atol=0)
    # a module:callable returning a list of batches
    out_path = env.path("d.json")
    rc, _, err = run(capsys, "plan", f"{env.mod}:make", "--data", f"{env.mod}:batches", "--budget", "3bits",
                     "-o", out_path, "--quiet")
    assert rc == 0, err
    assert Plan.load(out_path).layer_names == NAMES


def test_npz_data_key(env, capsys):
    p, _, _ = plan_file(env, capsys, "--data-key", "x", "--method", "ompq", data="two.npz")
    assert p.layer_names == NAMES
    ref, _, _ = plan_file(env, capsys, "--method", "ompq", data="x.npz", name="ref.json")
    assert p.orm is not None
    np.testing.assert_array_equal(p.orm, ref.orm)


def test_weights_are_loaded(env, capsys):
    # OMPQ: its ORM matrix and gamma show which features the plan was made from
    without, _, _ = plan_file(env, capsys, "--method", "ompq", name="without.json")
    model_without = env.module().BUILT[-1]
    with_w, _, _ = plan_file(env, capsys, "--weights", env.path("w.pt"), "--method", "ompq", name="with.json")
    model_with = env.module().BUILT[-1]
    assert model_with is not model_without
    # the model the CLI planned holds exactly the saved weights ...
    for key, value in env.trained.state_dict().items():
        torch.testing.assert_close(model_with.state_dict()[key], value, rtol=0, atol=0)
    assert not torch.equal(model_without.state_dict()["0.weight"], env.trained.state_dict()["0.weight"])
    # ... and the plan was made from them: the features, hence the ORM matrix and gamma, differ
    assert not np.allclose(with_w.orm, without.orm)
    assert [x.gamma for x in with_w.layers] != [x.gamma for x in without.layers]


def test_weights_from_a_checkpoint_dict(env, capsys):
    a, _, _ = plan_file(env, capsys, "--weights", env.path("w.pt"), "--method", "ompq", name="a.json")
    b, _, _ = plan_file(env, capsys, "--weights", env.path("ckpt.pt"), "--method", "ompq", name="b.json")
    assert a.orm is not None
    np.testing.assert_array_equal(a.orm, b.orm)
    assert a.bits == b.bits


def test_model_as_module_object(env, capsys):
    out_path = env.path("obj.json")
    rc, _, err = run(capsys, "plan", f"{env.mod}:MODEL", "--data", env.path("x.pt"), "--budget", "3bits",
                     "-o", out_path, "--quiet", "--method", "ompq")
    assert rc == 0, err
    ref, _, _ = plan_file(env, capsys, "--method", "ompq", name="ref.json")  # factory with the same seed
    assert ref.orm is not None
    np.testing.assert_array_equal(Plan.load(out_path).orm, ref.orm)


def test_group_size_and_scale_bits(env, capsys):
    p, out, _ = plan_file(env, capsys, "--group-size", "4", budget="4bits", name="groups.json")
    assert p.settings["group_size"] == 4 and p.settings["scale_bits"] == 16
    groups = sum(PARAMS.values()) // 4  # every layer's input count is a multiple of 4
    assert p.totals["scale_bits"] == 16 * (groups + 3)
    assert p.totals["size_bits"] == sum(PARAMS[n] * b for n, b in p.bits.items()) + 32 * OTHER + 16 * (groups + 3)
    paper, _, _ = plan_file(env, capsys, "--scale-bits", "0", budget="3bits", name="paper.json")
    assert paper.totals["scale_bits"] == 0 and paper.settings["scale_bits"] == 0
    assert paper.totals["size_bits"] == sum(PARAMS[n] * b for n, b in paper.bits.items()) + 32 * OTHER


def test_activation_bits_can_be_planned(env, capsys):
    bops = 6 * 6 * PLANNED  # MACs equal the weight counts for an MLP: between W4A4 and W8A8
    p, _, _ = plan_file(env, capsys, "--act-bits", "4,8", "--bits", "2-8", "--method", "output_error",
                        budget=f"{bops}BOPs", name="acts.json")
    assert p.settings["act_bits"] == [4, 8] and set(p.act_bits.values()) <= {4, 8}
    assert p.totals["bops"] == sum(PARAMS[n] * p.bits[n] * p.act_bits[n] for n in PARAMS) <= bops


def test_fixed_is_honoured(env, capsys):
    free, _, _ = plan_file(env, capsys, budget="3bits", name="free.json")
    assert free.bits["0"] != 8  # otherwise the test proves nothing
    p, _, _ = plan_file(env, capsys, "--fixed", "0=8", budget="0.5", name="fixed.json")
    assert p.bits["0"] == 8
    assert p.layers[0].fixed is True and not p.layers[1].fixed
    assert p.settings["fixed_bits"] == {"0": 8}
    check_sizes(p)


def test_fixed_with_a_glob_and_repeated(env, capsys):
    p, _, _ = plan_file(env, capsys, "--fixed", "[02]=6", "--fixed", "4=3", budget="0.5")
    assert (p.bits["0"], p.bits["2"], p.bits["4"]) == (6, 6, 3)
    assert all(x.fixed for x in p.layers)


def test_fixed_naming_no_layer_is_an_error(env, capsys):
    rc, out, err = run(capsys, "plan", f"{env.mod}:make", "--data", env.path("x.pt"), "--budget", "3bits",
                       "--fixed", "fc9=8")
    assert rc == 2
    assert err.startswith("ompq-ext: error:") and "'fc9'" in err


@pytest.mark.parametrize("arg, expected", [("2,4,8", [2, 4, 8]), ("3-5", [3, 4, 5]), ("8,2,4", [2, 4, 8])])
def test_bits_is_honoured(env, capsys, arg, expected):
    p, _, _ = plan_file(env, capsys, "--bits", arg, budget="5bits")
    assert p.settings["bits"] == expected
    assert set(p.bits.values()) <= set(expected)
    check_sizes(p)


def test_bits_restricts_the_solution(env, capsys):
    free, _, _ = plan_file(env, capsys, budget="5bits", name="free.json")
    assert not set(free.bits.values()) <= {2, 4, 8}  # otherwise the next check proves nothing
    p, _, _ = plan_file(env, capsys, "--bits", "2,4,8", budget="5bits", name="r.json")
    assert set(p.bits.values()) <= {2, 4, 8}


def test_other_options_reach_plan(env, capsys):
    p, _, _ = plan_file(env, capsys, "--num-samples", "16", "--beta", "2.5", "--objective", "layer",
                        "--estimator", "unbiased", "--act-bits", "4", "--exclude", "4")
    s = p.settings
    assert (s["num_samples"], s["beta"], s["objective"], s["estimator"], s["act_bits"]) == (
        16, 2.5, "layer", "unbiased", 4)
    assert p.layer_names == ["0", "2"]
    p2, _, _ = plan_file(env, capsys, "--include", "2", "--include", "4", name="inc.json")
    assert p2.layer_names == ["2", "4"]


def test_method_option(env, capsys):
    default, _, _ = plan_file(env, capsys, name="default.json")
    assert default.settings.method == "verified" and default.orm is None
    assert default.settings.num_samples == 32  # the file's all: fewer than verified's 128, taken silently
    ompq, _, _ = plan_file(env, capsys, "--method", "ompq", name="ompq.json")
    assert ompq.settings.method == "ompq" and ompq.orm.shape == (3, 3) and ompq.settings.num_samples == 32
    by_option, _, _ = plan_file(env, capsys, "--beta", "0.1", name="beta.json")  # an OMPQ option: OMPQ
    assert by_option.settings.method == "ompq"
    np.testing.assert_array_equal(by_option.orm, ompq.orm)
    other, _, _ = plan_file(env, capsys, "--method", "output_error", name="oe.json")
    assert other.settings.method == "output_error"
    err = error_of(env, capsys, extra=["--method", "output_error", "--beta", "2", "--quiet"])
    assert "beta" in err


# --------------------------------------------------------------------------- report


def test_report_prints_the_summary(env, capsys):
    p, _, _ = plan_file(env, capsys)
    rc, out, err = run(capsys, "report", env.path("plan.json"))
    assert rc == 0 and err == ""
    assert out == p.summary() + "\n"
    for name in NAMES:
        assert name in out


def test_report_of_a_bad_file(env, capsys):
    bad = env.tmp / "bad.json"
    bad.write_text('{"format": "something else"}')
    rc, out, err = run(capsys, "report", str(bad))
    assert rc == 2 and out == ""
    assert err.startswith("ompq-ext: error:") and "not an ompq_ext plan" in err
    rc, out, err = run(capsys, "report", env.path("missing.json"))
    assert rc == 2 and "cannot read plan file" in err


# --------------------------------------------------------------------------- errors


def error_of(env, capsys, model="{mod}:make", data="x.pt", budget="3bits", extra=()):
    argv = ["plan", model.format(mod=env.mod), "--data", data if ":" in data or "/" in data else env.path(data),
            "--budget", budget, *extra]
    rc, out, err = run(capsys, *argv)
    assert rc == 2
    assert out == ""
    assert err.startswith("ompq-ext: error: ")
    assert err.endswith("\n") and err.count("\n") == 1, err  # one line
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("spec", ["just_a_name", "{mod}:", ":make", "{mod}.make"])
def test_bad_model_spec(env, capsys, spec):
    err = error_of(env, capsys, model=spec)
    assert "package.module:name" in err


def test_missing_module(env, capsys):
    err = error_of(env, capsys, model="no_such_module_ompq_xyz:make")
    assert "cannot import module 'no_such_module_ompq_xyz'" in err


def test_missing_attribute(env, capsys):
    err = error_of(env, capsys, model="{mod}:nope")
    assert "has no attribute 'nope'" in err and env.mod in err


def test_model_spec_not_a_module(env, capsys):
    err = error_of(env, capsys, model="{mod}:NOT_A_MODEL")
    assert "not a torch.nn.Module" in err and "NOT_A_MODEL" in err
    err = error_of(env, capsys, model="{mod}:make_none")
    assert "not a torch.nn.Module" in err and "NoneType" in err


def test_model_spec_not_a_module_names_its_type(env, capsys):
    err = error_of(env, capsys, model="{mod}:NOT_A_MODEL")
    assert "gave int" in err


def test_weights_file_missing(env, capsys):
    err = error_of(env, capsys, extra=["--weights", env.path("nope.pt")])
    assert "weights file" in err and "nope.pt" in err and "does not exist" in err


def test_weights_do_not_fit(env, capsys):
    rc, out, err = run(capsys, "plan", f"{env.mod}:make", "--data", env.path("x.pt"), "--budget", "3bits",
                       "--weights", env.path("w_wrong.pt"))
    assert rc == 2 and out == ""
    assert err.startswith("ompq-ext: error: weights ")
    assert "do not fit the model" in err and "w_wrong.pt" in err and "size mismatch" in err


def test_weights_do_not_fit_is_one_line(env, capsys):
    error_of(env, capsys, extra=["--weights", env.path("w_wrong.pt")])


def test_weights_not_a_state_dict(env, capsys):
    err = error_of(env, capsys, extra=["--weights", env.path("w_tensor.pt")])
    assert "not a state dict" in err and "Tensor" in err


def test_weights_file_corrupt(env, capsys):
    (env.tmp / "junk.pt").write_bytes(b"this is not a torch file")
    err = error_of(env, capsys, extra=["--weights", env.path("junk.pt")])
    assert "cannot load weights" in err and "junk.pt" in err


@pytest.mark.parametrize("name", ["data.csv", "data.npy", "data"])
def test_unknown_data_suffix(env, capsys, name):
    (env.tmp / name).write_text("1,2,3\n")
    err = error_of(env, capsys, data=name)
    assert "--data must be a .pt or .npz file" in err and name in err


@pytest.mark.parametrize("name", ["missing.pt", "missing.npz"])
def test_missing_data_file(env, capsys, name):
    err = error_of(env, capsys, data=name)
    assert "does not exist" in err and name in err


def test_npz_key_missing(env, capsys):
    err = error_of(env, capsys, data="x.npz", extra=["--data-key", "images"])
    assert "no array 'images'" in err and "['x']" in err


def test_unknown_budget_unit(env, capsys):
    err = error_of(env, capsys, budget="4.5furlongs")
    assert "unknown budget unit 'furlongs'" in err and "MiB" in err


def test_two_size_budgets(env, capsys):
    err = error_of(env, capsys, extra=["--budget", "4.5MiB"])
    assert "at most one size budget" in err


def test_infeasible_budget(env, capsys):
    err = error_of(env, capsys, budget="10B", extra=["--quiet"])
    assert "smallest achievable size" in err and "1840 bits" in err  # 2 bits x 320 + 32 x 24 + 432 (scales)


def test_error_after_the_progress_display_ends_stderr(env, capsys):
    # without --quiet the feature-pass display runs first; the error is still the last line
    rc, out, err = run(capsys, "plan", f"{env.mod}:make", "--data", env.path("x.pt"), "--budget", "10B")
    assert rc == 2 and out == ""
    last = err.rstrip("\n").split("\n")[-1].split("\r")[-1]
    assert last.startswith("ompq-ext: error: size budget")


def test_fewer_samples_than_asked_plan_with_a_warning(env, capsys):
    out_path = env.path("plan.json")
    with pytest.warns(UserWarning, match="yielded 32 samples, fewer than num_samples=64: all 32 are used"):
        rc, _, _ = run(capsys, "plan", f"{env.mod}:make", "--data", env.path("x.pt"), "--budget", "3bits", "-o",
                       out_path, "--num-samples", "64")  # not --quiet: quiet silences warnings (test_hardening)
    assert rc == 0
    p = Plan.load(out_path)
    assert p.settings.num_samples == 32
    torch.save(env.x[:3], env.path("three.pt"))
    err = error_of(env, capsys, data="three.pt")
    assert "only 3 samples" in err and "at least 4" in err


def test_corrupt_data_file(env, capsys):
    (env.tmp / "junk.pt").write_bytes(b"this is not a torch file")
    err = error_of(env, capsys, data="junk.pt")
    assert "junk.pt" in err


def test_float64_npz_is_usable_or_reported(env, capsys):
    np.savez(env.tmp / "x64.npz", x=env.x.numpy().astype(np.float64))
    rc, out, err = run(capsys, "plan", f"{env.mod}:make", "--data", env.path("x64.npz"), "--budget", "3bits",
                       "--quiet")
    assert rc in (0, 2)
    if rc == 2:
        assert err.startswith("ompq-ext: error:")


@pytest.mark.parametrize("argv", [["plan"], ["plan", "m:f", "--budget", "3bits"], ["plan", "m:f", "--data", "x.pt"],
                                  ["plan", "m:f", "--data", "x.pt", "--budget", "3bits", "--bits", "two"],
                                  ["plan", "m:f", "--data", "x.pt", "--budget", "3bits", "--fixed", "8"],
                                  ["plan", "m:f", "--data", "x.pt", "--budget", "3bits", "--fixed", "0=x"],
                                  ["frobnicate"], []])
def test_usage_errors_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: ompq-ext" in err


def test_bits_and_fixed_argument_messages(capsys):
    with pytest.raises(SystemExit):
        cli.main(["plan", "m:f", "--data", "x.pt", "--budget", "3bits", "--bits", "2,x"])
    assert "bits must look like '2-8' or '2,4,8'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["plan", "m:f", "--data", "x.pt", "--budget", "3bits", "--fixed", "conv1"])
    assert "NAME=BITS" in capsys.readouterr().err


# --------------------------------------------------------------------------- the console script


def _script():
    exe = shutil.which("ompq-ext")
    if exe is None:
        candidate = os.path.join(os.path.dirname(sys.executable), "ompq-ext")
        exe = candidate if os.path.exists(candidate) else None
    assert exe is not None, "the ompq-ext console script is not installed"
    return exe


def test_console_script_help():
    result = subprocess.run([_script(), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "usage: ompq-ext" in result.stdout
    assert "plan" in result.stdout and "report" in result.stdout


def test_console_script_plan_with_piped_stderr(env):
    # a real process whose stderr is a pipe (not a tty), the progress display on, the factory
    # module found in the working directory, as `python -m` would find it
    out_path = env.path("sub.json")
    envvars = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [_script(), "plan", f"{env.mod}:make", "--data", "x.pt", "--budget", "3bits", "-o", out_path],
        capture_output=True, text=True, timeout=300, cwd=env.tmp, env=envvars,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "solver    OPTIMAL" in result.stdout
    assert Plan.load(out_path).layer_names == NAMES
