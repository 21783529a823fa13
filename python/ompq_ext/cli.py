"""The ``ompq-ext`` command.

    ompq-ext plan   MODEL --data DATA --budget 4.5MiB [-o plan.json] [--weights W]
    ompq-ext sweep  MODEL --data DATA --budgets 2.5bits,3bits,4bits,6bits [--plot pareto.png] [--evaluate M:F]
    ompq-ext report plan.json [--plot DIR]
    ompq-ext export plan.json --format hawq|dict|onnx|packed -o OUT [--model MODEL --data DATA]
    ompq-ext demo

MODEL is ``package.module:factory`` (a callable returning an nn.Module, or an
nn.Module object). DATA is a ``.pt`` file (a tensor, or a tuple/list/dict of
tensors: one batch), an ``.npz`` file (its first array, or --data-key), or
``package.module:callable`` returning a loader, a list of batches or a tensor.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import inspect
import json
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .allocators import ALLOCATORS
from .allocators.ompq import DEFAULT_BETA, DEFAULT_OBJECTIVE
from .errors import OmpqError, OmpqTypeError, OmpqValueError
from .features import BN_MODES, FEATURE_POINTS
from .orthogonality import ESTIMATORS, OBJECTIVES
from .plan import DEFAULT_METHOD, plan
from .record import Plan

PLAN_DEFAULTS = {name: p.default for name, p in inspect.signature(plan).parameters.items()}
CLI_METHODS = [m for m in ALLOCATORS if m != "hessian"]  # the Hessian needs a loss, a function of the model


def _import_object(spec: str, what: str):
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise OmpqValueError(f"{what} must look like 'package.module:name', got {spec!r}")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # let users name modules in the current directory, as `python -m` does
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise OmpqValueError(f"cannot import module {module_name!r} for {what}: {e}") from None
    except Exception as e:  # the user's module itself raised while it was imported
        raise OmpqValueError(f"importing module {module_name!r} for {what} raised {type(e).__name__}: {e}") from e
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise OmpqValueError(f"module {module_name!r} has no attribute {attr!r} (for {what})")
        obj = getattr(obj, part)
    return obj


def _call_factory(factory, spec: str, what: str):
    """The user's factory called; what it raises becomes an OmpqError naming it (--traceback shows the rest)."""
    try:
        return factory()
    except OmpqError:
        raise
    except Exception as e:
        detail = str(e).splitlines()[0] if str(e) else ""
        raise OmpqValueError(f"the {what} factory {spec!r} raised {type(e).__name__}"
                             + (f": {detail}" if detail else "")) from e


def load_model(spec: str, weights: str | None) -> nn.Module:
    obj = _import_object(spec, "the model")
    model = _call_factory(obj, spec, "model") if callable(obj) and not isinstance(obj, nn.Module) else obj
    if not isinstance(model, nn.Module):
        raise OmpqTypeError(f"{spec!r} gave {type(model).__name__}, not a torch.nn.Module")
    if weights:
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise OmpqValueError(f"weights file {weights!r} does not exist") from None
        except Exception as e:  # torch raises many kinds for a bad or unsafe file
            raise OmpqValueError(f"cannot load weights {weights!r} as a state dict: {e}") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise OmpqValueError(f"weights file {weights!r} holds {type(state).__name__}, not a state dict")
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            details = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
            raise OmpqValueError(f"weights {weights!r} do not fit the model {spec!r}: {details}") from None
    return model


def _check_batch(obj, spec):
    """A .pt batch must be a tensor or a tuple/list/dict of tensors."""
    if isinstance(obj, torch.Tensor):
        return
    children = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else None
    if not children or not all(isinstance(c, torch.Tensor) for c in children):
        raise OmpqValueError(
            f"data file {spec!r} holds {type(obj).__name__}; save one batch: a tensor, or a tuple/list/dict of tensors"
        )


def load_data(spec: str, key: str | None = None):
    """Float arrays from .npz files become float32, numpy's float64 default being rarely what a model takes."""
    path = Path(spec)
    if path.suffix == ".pt":
        if not path.exists():
            raise OmpqValueError(f"data file {spec!r} does not exist")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many kinds for a bad or unsafe file
            raise OmpqValueError(f"cannot load data file {spec!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        _check_batch(data, spec)
        return [data]
    if path.suffix == ".npz":
        if not path.exists():
            raise OmpqValueError(f"data file {spec!r} does not exist")
        with np.load(path) as arrays:
            names = list(arrays.keys())
            if not names:
                raise OmpqValueError(f"data file {spec!r} holds no arrays")
            if key is not None and key not in names:
                raise OmpqValueError(f"data file {spec!r} has no array {key!r}; it has {names}")
            array = np.array(arrays[key or names[0]])
            if array.dtype.kind == "f":
                array = array.astype(np.float32)
            return [torch.from_numpy(array)]
    if ":" in spec:
        obj = _import_object(spec, "the data")
        return _call_factory(obj, spec, "data") if callable(obj) else obj
    raise OmpqValueError(f"--data must be a .pt or .npz file or 'package.module:callable', got {spec!r}")


def _bits_arg(text: str) -> list[int]:
    try:
        if "-" in text:
            lo, hi = (int(v) for v in text.split("-"))
            return list(range(lo, hi + 1))
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bits must look like '2-8' or '2,4,8', got {text!r}") from None


def _act_bits_arg(text: str):
    """One activation bit-width ("8"), or the choices of a plan that picks them per layer ("4,8", "4-8")."""
    choices = _bits_arg(text)
    return choices[0] if len(choices) == 1 else choices


def _fixed_arg(text: str) -> tuple[str, int]:
    name, sep, value = text.rpartition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--fixed takes NAME=BITS (NAME may be a glob), got {text!r}")
    try:
        return name, int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--fixed {text!r}: BITS must be an integer") from None


def _model_args(p) -> None:
    p.add_argument("model", help="package.module:factory returning an nn.Module")
    p.add_argument("--weights", help="state dict file (loaded with weights_only=True)")
    p.add_argument("--data", required=True, help=".pt / .npz tensor file or package.module:callable")
    p.add_argument("--data-key", help="array name inside an .npz file")


def _planning_args(p) -> None:
    """plan()'s options, shared by ``plan`` and ``sweep``."""
    p.add_argument("--bits", type=_bits_arg, default=None,
                   help="choices, e.g. 2-8 or 2,4,8 (default: within one bit of the budget, as plan())")
    p.add_argument("--act-bits", type=_act_bits_arg, default=8,
                   help="activation bits for BOPs (default 8), or choices such as 4,8 to plan them per layer")
    p.add_argument("--group-size", type=int, default=None,
                   help="weights quantized per group of this many input columns (default: per output channel)")
    p.add_argument("--scale-bits", type=int, choices=(0, 16, 32), default=16,
                   help="bits of one stored scale in the size (default 16; 0: weights only, the paper's count)")
    p.add_argument("--fixed", type=_fixed_arg, action="append", default=[], metavar="NAME=BITS",
                   help="fix a layer's bits (NAME may be a glob); repeatable")
    p.add_argument("--include", action="append", help="plan only layers matching this glob; repeatable")
    p.add_argument("--exclude", action="append", help="leave out layers matching this glob; repeatable")
    p.add_argument("--include-embeddings", action="store_true", help="also plan nn.Embedding weights")
    p.add_argument("--method", choices=CLI_METHODS, default=None,
                   help=f"how the layers are scored (default {DEFAULT_METHOD}; ompq where one of its options "
                        f"below is given; docs/QUALITY.md compares them)")
    p.add_argument("--num-samples", type=int, default=None, help="planning samples (default: the method's, "
                                                                 "128 for verified, 32 for the others)")
    p.add_argument("--beta", type=float, default=None, help=f"ompq: importance sharpness (default {DEFAULT_BETA})")
    p.add_argument("--objective", choices=OBJECTIVES, default=None, help=f"ompq (default {DEFAULT_OBJECTIVE})")
    p.add_argument("--feature-point", choices=FEATURE_POINTS, default=None,
                   help="ompq: features at each layer's output (default) or after the next activation")
    p.add_argument("--estimator", choices=ESTIMATORS, default=None, help="ompq (default biased)")
    p.add_argument("--bn-mode", choices=BN_MODES, default=PLAN_DEFAULTS["bn_mode"])
    p.add_argument("--time-limit", type=float, default=30.0, help="solver time limit in seconds")
    p.add_argument("--quiet", action="store_true", help="no progress display and no summary")


def _budgets_arg(text: str) -> list[str]:
    budgets = [b.strip() for b in text.split(",") if b.strip()]
    if not budgets:
        raise argparse.ArgumentTypeError(f"--budgets takes budgets separated by commas, got {text!r}")
    return budgets


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)  # options every command takes, before or after its name
    common.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS,
                        help="on an error, print the full Python traceback (also with OMPQ_TRACEBACK=1)")
    parser = argparse.ArgumentParser(prog="ompq-ext", description="OMPQ mixed-precision planning for PyTorch models",
                                     parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser = functools.partial(sub.add_parser, parents=[common])

    p = sub.add_parser("plan", help="plan weight bits for a model from one batch")
    _model_args(p)
    p.add_argument("--budget", required=True, action="append",
                   help="4.5MiB | 5MB | 3.5bits | 0.15 | 75GBOPs; repeat for a size and a BOPs budget")
    p.add_argument("-o", "--output", help="write the plan as JSON here")
    _planning_args(p)

    w = sub.add_parser("sweep", help="plans at several budgets from one feature pass, against uniform precision")
    _model_args(w)
    w.add_argument("--budgets", required=True, type=_budgets_arg,
                   help="comma-separated budgets, e.g. 2.5bits,3bits,4bits,6bits (each as --budget takes it)")
    w.add_argument("--evaluate", help="package.module:function taking the quantized model, returning a number "
                                      "(accuracy, loss): measured for every plan and uniform reference")
    w.add_argument("--metric", default="metric", help="the name of what --evaluate returns (default 'metric')")
    w.add_argument("--lower-is-better", action="store_true", help="the metric is a loss: smaller is better")
    w.add_argument("--recipe", choices=["rtn", "gptq", "adaround", "brecq"], default="rtn",
                   help="how each plan is quantized for --evaluate (default rtn)")
    w.add_argument("--plot", help="draw the front here (PNG; needs matplotlib: pip install 'ompq_ext[plot]')")
    w.add_argument("-o", "--output", help="write the table's numbers as JSON here")
    _planning_args(w)

    r = sub.add_parser("report", help="print the summary of a saved plan")
    r.add_argument("plan", help="plan JSON file")
    r.add_argument("--plot", metavar="DIR", help="also draw bits.png (and orm.png for an ompq plan) into DIR "
                                                 "(needs matplotlib: pip install 'ompq_ext[plot]')")

    e = sub.add_parser("export", help="a plan as HAWQ-V3's bit config or a plain dict; or the model quantized by "
                                      "it as ONNX (QDQ) or packed integer weights (safetensors)")
    e.add_argument("plan", help="plan JSON file")
    e.add_argument("--format", required=True, choices=["hawq", "dict", "onnx", "packed"],
                   help="hawq / dict: JSON bit configurations; onnx / packed: quantize --model first (needs --data)")
    e.add_argument("-o", "--output", required=True, help="the file to write")
    e.add_argument("--model", help="onnx / packed: package.module:factory returning the float nn.Module")
    e.add_argument("--weights", help="state dict file for --model (loaded with weights_only=True)")
    e.add_argument("--data", help="onnx / packed: calibration data (.pt / .npz / package.module:callable); its "
                                  "first samples are also ONNX's example inputs")
    e.add_argument("--data-key", help="array name inside an .npz file")
    e.add_argument("--recipe", choices=["rtn", "gptq", "adaround", "brecq"], default="rtn",
                   help="how the model is quantized (default rtn)")
    e.add_argument("--opset", type=int, default=17, help="onnx: the opset (>= 13; default 17)")

    d = sub.add_parser("demo", help="plan, quantize and evaluate the bundled MNIST-1D model (no network needed)")
    d.add_argument("--method", choices=["rtn", "gptq", "adaround", "brecq"], default="rtn",
                   help="weight rounding: plain (rtn, default), gptq, or a learned reconstruction (slower)")
    d.add_argument("--plot", help="save a bar chart of the bits per layer here (needs matplotlib)")
    d.add_argument("--planner", choices=CLI_METHODS, default=None,
                   help=f"plan()'s method (default {DEFAULT_METHOD}; ompq with --beta)")
    d.add_argument("--beta", type=float, default=None, help=f"plan with ompq at this importance sharpness "
                                                            f"(its default {DEFAULT_BETA})")
    d.add_argument("--bits", type=_bits_arg, help="the bit choices, e.g. 2-8 (default: within one bit of the budget)")
    return parser


def _plan_options(args) -> dict:
    return dict(method=args.method, bits=args.bits, act_bits=args.act_bits, group_size=args.group_size,
                scale_bits=args.scale_bits, fixed_bits=dict(args.fixed), include=args.include, exclude=args.exclude,
                include_embeddings=args.include_embeddings, num_samples=args.num_samples, beta=args.beta,
                objective=args.objective, feature_point=args.feature_point, estimator=args.estimator,
                bn_mode=args.bn_mode, time_limit_s=args.time_limit,
                progress=False if args.quiet else None)  # None: a bar only on a terminal


def _cmd_plan(args) -> int:
    model = load_model(args.model, args.weights)
    data = load_data(args.data, args.data_key)
    result = plan(model, data, args.budget if len(args.budget) > 1 else args.budget[0], **_plan_options(args))
    if not args.quiet:
        print(result.summary())
    if args.output:
        result.save(args.output)
        if not args.quiet:
            print(f"plan written to {args.output}")
    return 0


def _cmd_sweep(args) -> int:
    from .sweep import sweep

    model = load_model(args.model, args.weights)
    data = load_data(args.data, args.data_key)
    evaluate = _import_object(args.evaluate, "--evaluate") if args.evaluate else None
    if evaluate is not None and not callable(evaluate):
        raise OmpqTypeError(f"--evaluate {args.evaluate!r} is a {type(evaluate).__name__}, not a function")
    result = sweep(model, data, args.budgets, evaluate=evaluate, recipe=args.recipe, metric_name=args.metric,
                   maximize=not args.lower_is_better, **_plan_options(args))
    print(result.table())
    if args.plot:
        print(f"plot written to {result.plot(args.plot)}")
    if args.output:
        result.save(args.output)
        print(f"sweep written to {args.output}")
    return 0


def _cmd_report(args) -> int:
    plan_ = Plan.load(args.plan)
    print(plan_.summary())
    if args.plot:
        from .plots import report_plots

        for path in report_plots(plan_, args.plot):
            print(f"plot written to {path}")
    return 0


def _cmd_export(args) -> int:
    plan_ = Plan.load(args.plan)
    if args.format in ("hawq", "dict"):
        config = plan_.to_hawq_bit_config() if args.format == "hawq" else plan_.to_dict()
        Path(args.output).write_text(json.dumps(config, indent=1))
        print(f"{args.format} configuration written to {args.output}")
        return 0
    if not args.model or not args.data:
        raise OmpqValueError(f"--format {args.format} quantizes the model first: give --model and --data")
    from . import export
    from .inputs import gather_samples
    from .quant.api import quantize

    model = load_model(args.model, args.weights)
    data = load_data(args.data, args.data_key)
    qmodel = quantize(model, plan_, calib=data, method=args.recipe, progress=False)
    if args.format == "packed":
        export.save_packed(qmodel, args.output)
    else:
        inputs, kwargs = gather_samples(data, 8, None, min_samples=2, warn=False)
        if kwargs:
            raise OmpqValueError("--format onnx takes positional tensor inputs; this data gives keyword inputs "
                                 "(export from Python: ompq_ext.export.onnx)")
        export.onnx(qmodel, tuple(inputs), args.output, opset=args.opset)
    print(f"{args.format} model written to {args.output}")
    return 0


def _cmd_demo(args) -> int:
    from .demo import run

    run(method=args.method, plot=args.plot, beta=args.beta, bits=args.bits, planner=args.planner)
    return 0


@contextmanager
def _warnings_as_messages():
    """Warnings printed as one line each, "ompq-ext: warning: ...", like the errors (a caller recording
    warnings still records them)."""
    original = warnings.formatwarning
    warnings.formatwarning = lambda message, category, filename, lineno, line=None: f"ompq-ext: warning: {message}\n"
    try:
        yield
    finally:
        warnings.formatwarning = original


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    commands = {"plan": _cmd_plan, "sweep": _cmd_sweep, "report": _cmd_report, "export": _cmd_export,
                "demo": _cmd_demo}
    try:
        with warnings.catch_warnings(), _warnings_as_messages():
            if getattr(args, "quiet", False):  # quiet means quiet: no bars, no summary, no warnings
                warnings.simplefilter("ignore")
            return commands[args.command](args)
    except (OmpqError, OSError) as e:  # OSError: an output file that cannot be written
        if getattr(args, "traceback", False) or os.environ.get("OMPQ_TRACEBACK", "0") not in ("", "0"):
            raise
        print(f"ompq-ext: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
