"""``plan()``: model + one batch -> an exact mixed-precision plan.

The pipeline, one stage per module (docs/ARCHITECTURE.md): the samples (``inputs``), the
layers (``layers``), one feature pass (``features``), the allocator's scores (``allocators``),
the problem and its constraints (``problem``, ``constraints``), the exact solve (``solver``),
and the record (``record``).
"""

from __future__ import annotations

import dataclasses

import json
import time
import warnings
from contextlib import contextmanager

from torch import nn

from . import distributed
from .allocators import ALLOCATORS, OMPQ, Allocator, Scores, ScoringInput
from .errors import FeatureError, OmpqTypeError, OmpqValueError, check_choice, user_stacklevel
from .features import BN_MODES, observe
from .inputs import gather_samples, sample_count, tensors
from .layers import find_layers
from .problem import build_problem, check_options, scale_overhead, solve_problem
from .quant.ops import check_group_size
from .record import BudgetRecord, GroupPlan, LayerPlan, ModelInfo, Plan, Settings, SolverRecord, Totals


# Chosen by the allocation-quality study (docs/QUALITY.md, "Defaults, and why").
DEFAULT_METHOD = "verified"


def plan(
    model: nn.Module,
    loader,
    budget,
    *,
    method: str | Allocator | None = None,
    bits=None,
    act_bits=8,
    group_size: int | None = None,
    scale_bits: int = 16,
    fixed_bits: dict | None = None,
    include=None,
    exclude=None,
    layer_types=(),
    include_embeddings: bool = False,
    ties=(),
    num_samples: int | None = None,
    input_fn=None,
    beta: float | None = None,
    objective: str | None = None,
    feature_point: str | None = None,
    estimator: str | None = None,
    bn_mode: str = "eval",
    latency_table: dict | None = None,
    latency_budget: float | None = None,
    time_limit_s: float = 30.0,
    num_threads: int = 0,
    progress: bool | None = None,
    process_group=None,
) -> Plan:
    """Plan weight bits for every quantizable layer of ``model`` from one batch.

    budget: "4.5MiB", "5MB", "3.5bits", "75GBOPs", a fraction of the FP32 size
        such as 0.15, bytes as an int, or a list of one size and one BOPs budget; a
        ``Constraint`` object (``ompq_ext.constraints``) is taken as it is.
    method: how the layers are scored (docs/QUALITY.md compares them; ``plan.settings.cost`` says
        what each needed): "verified" (the default: candidate plans from "output_error", its
        relative form and "ompq", and uniform precision where it fits, each solved exactly; the one
        whose quantized weights move the outputs on the samples least from FP32 wins; 1 + 1 + k
        forward passes), "ompq" (the paper's orthogonality, one pass; the method when one of its
        settings below is given), "output_error" (each bit-width's layer-output error, one pass),
        "kl" (the output divergence with one weight quantized, a forward per weight and bit-width),
        or an ``Allocator`` instance (``ompq_ext.allocators``: ``HessianTrace(loss_fn)``, the
        methods above with settings, ``GivenScores(values=...)`` for a table of your own).
    bits: the bit-widths to choose from. None (the default): every integer within one
        bit of the budget's average bits per planned weight, inside 2..8 (e.g.
        "3bits" -> 2, 3, 4); pass range(2, 9) for the widest search.
    fixed_bits: {name or glob: bits}, e.g. {"conv1": 8, "fc": 8}.
    act_bits: the bits of every planned layer's input, for BOPs (default 8); or a collection such as
        (4, 8): each layer's input bits are then chosen too, jointly with the weight bits, by the exact
        solver under the budgets (a BOPs budget is where they matter). Each method scores them:
        "output_error" by the error quantizing the layer's input rows causes in its output,
        "verified" by its candidates so scored and its check with inputs quantized too, "ompq" by
        the layer's importance times weight bits + activation bits; "kl" and "hessian" do not score
        them. ``plan.act_bits`` holds the choices; ``quantize()`` follows them.
    group_size: the weights will be quantized per group of this many input columns (one scale each;
        ``quantize()`` follows the plan's); None: per output channel.
    scale_bits: the bits of one stored scale, counted in the model's size with the weights: 16
        (float16, the default) or 32; 0 counts the weights alone (the paper's accounting). Scales are
        one per output channel or group and one per quantized layer input (not with act_bits=32).
        A size budget covers them; an average-bits budget ("4bits") is the size of every planned
        weight at that many bits plus the same scales, so uniform precision always fits it.
    include / exclude / layer_types: which layers are planned (names as glob
        patterns, or module types). ties: lists of layer names that share bits.
    include_embeddings: also plan ``nn.Embedding`` weights (counted in the size budget; no BOPs;
        quantized per row, their lookups read them quantized).
    num_samples: inputs drawn from ``loader`` (tensors, (input, target) tuples
        or dicts; input_fn turns anything else into model inputs); an upper bound: a loader with
        fewer (at least the method's minimum, 4 for OMPQ) gives all it has, with a warning where
        num_samples was given. None (the default): the method's own, 128 for "verified", 32 for the others.
    beta (default 0.1), objective ("layer", the default: theta_i alone | "suffix_mean", the
        reference code's mean over layer i and every later layer), feature_point ("output": each
        layer's own output | "activation": the output of the first activation module that runs
        after the layer, for a ResNet block's last conv the block output, as the reference code),
        estimator ("biased" | "unbiased"): OMPQ's settings (METHOD.md; docs/QUALITY.md compares them).
    bn_mode: "eval" (running statistics) or "batch" (BatchNorm in training mode, as the
        reference code); the model's state is restored either way.
    latency_table: {layer name: {bits: cost}} with latency_budget.

    process_group: a ``torch.distributed`` process group (``torch.distributed.group.WORLD`` for all ranks) to
        plan together: every rank of it calls plan() with its own part of the batch (``num_samples`` per
        rank) and gets the plan one process gets on all the parts joined in rank order (``distributed.py``:
        OMPQ splits the pass and sums the Grams; other methods gather the samples). None (the default):
        this process alone, whether or not torch.distributed is initialised.

    The model is left exactly as it was: parameters, buffers, train/eval flags, hooks.
    """
    options = dict(method=method, bits=bits, act_bits=act_bits, group_size=group_size, scale_bits=scale_bits,
                   fixed_bits=fixed_bits, include=include, exclude=exclude, layer_types=layer_types,
                   include_embeddings=include_embeddings, ties=ties, num_samples=num_samples, input_fn=input_fn,
                   beta=beta, objective=objective, feature_point=feature_point, estimator=estimator,
                   bn_mode=bn_mode, latency_table=latency_table, latency_budget=latency_budget,
                   time_limit_s=time_limit_s, num_threads=num_threads, progress=progress,
                   process_group=process_group)
    return next(_plans(model, loader, [budget], **options)).plan


def _plans(model: nn.Module, loader, budgets, *, method=None, bits=None, act_bits=8, group_size=None, scale_bits=16,
          fixed_bits=None, include=None, exclude=None, layer_types=(), include_embeddings=False, ties=(),
          num_samples=None, input_fn=None, beta=None, objective=None, feature_point=None, estimator=None,
          bn_mode="eval", latency_table=None, latency_budget=None, time_limit_s=30.0, num_threads=0, progress=None,
          process_group=None):
    """plan() for each of ``budgets`` in turn from one feature pass (a generator of ``_Planned``): every budget
    is checked first, then the samples are drawn and the pass runs once; each plan is what plan() gives for
    its budget with the same settings (``sweep`` is built on it). Its timing holds the shared stages in full."""
    start, timing = time.perf_counter(), {}
    allocator = _allocator(method, beta=beta, objective=objective, feature_point=feature_point,
                           estimator=estimator, num_threads=num_threads)
    asked = num_samples is not None
    num_samples = num_samples if asked else allocator.default_samples
    allocator.check(num_samples)
    check_choice("bn_mode", bn_mode, BN_MODES)  # before the loader is drawn from
    check_group_size(group_size)
    if scale_bits not in (0, 16, 32) or isinstance(scale_bits, bool):
        raise OmpqValueError(f"scale_bits must be 16 (float16 scales), 32 (float32) or 0 (weights only), "
                             f"got {scale_bits!r}")
    _check_has_data(model)
    layers = find_layers(model, include=include, exclude=exclude, layer_types=layer_types, optional=True,
                         embeddings=include_embeddings)
    each = [check_options(layers, budget=budget, bits=bits, act_bits=act_bits, fixed_bits=fixed_bits,
                          latency_table=latency_table, latency_budget=latency_budget) for budget in budgets]
    if each[0].act_choices and not allocator.scores_act_bits:
        raise OmpqValueError(f"act_bits={act_bits!r} makes the activation bits a decision, but the {allocator.name!r} "
                             f"method does not score them; use method='verified', 'output_error' or 'ompq', or one "
                             f"activation bit-width")
    if process_group is not None and bn_mode == "batch":
        raise OmpqValueError("bn_mode='batch' with a process_group: each rank would normalise with its own part's "
                             "statistics, unlike one process on all the samples; use bn_mode='eval'")
    with _stage(timing, "data"), distributed.agreeing(process_group) as agree:
        samples = gather_samples(loader, num_samples, input_fn, min_samples=allocator.min_samples, warn=asked)
        num_samples = sample_count(samples)  # fewer than asked where the loader ran out (with a warning)
        if any(t.is_meta for t in tensors(samples)):
            raise OmpqValueError("the loader's samples are on the meta device (shapes without data); give real "
                                 "inputs")
        shard = agree(samples)  # None without a process group
        if shard is not None and not isinstance(allocator, OMPQ):
            samples, shard = distributed.all_samples(samples, shard), None  # every rank plans on all of them
            num_samples = sample_count(samples)
    with _stage(timing, "features"):
        if shard is None:
            collectors = allocator.collectors(layers, num_samples)
        else:  # OMPQ on this rank's part: the Grams are summed over the ranks
            collectors, num_samples = [distributed.ShardedGrams(layers, shard, num_threads=num_threads)], shard.total
        seen = observe(model, layers, samples, collectors, feature_point=allocator.feature_point,
                       bn_mode=bn_mode, progress=progress)
    planned, skipped = _planned_layers(layers, seen, allocator.feature_point)
    indices = [layers.index(x) for x in planned]
    overhead = scale_overhead(planned, [seen.channel_axis[i] for i in indices], group_size=group_size,
                              act_bits=min(each[0].act_choices or (each[0].act_bits,)), scale_bits=scale_bits)
    where = {x.name: (seen.outside[i] or x.attr != "weight" or x.kind == "Embedding", seen.channel_axis[i])
             for x, i in zip(planned, indices)}
    shared_stages, shared = time.perf_counter() - start, {}  # shared: work the scorings share (quantized weights)
    for options in each:
        begin, own = time.perf_counter(), dict(timing)
        problem = build_problem(model, planned, {x.name: seen.macs[i] for x, i in zip(planned, indices)}, options,
                                ties, scale_bits=overhead)
        with _stage(own, "scores"):
            scores = _score(allocator, model, problem, planned, indices, samples, collectors, seen, options,
                            time_limit_s, progress, shared)
        with _stage(own, "solve"):
            allocation = solve_problem(problem, scores, time_limit_s)
        own["total"] = shared_stages + time.perf_counter() - begin
        settings = Settings(method=allocator.name, bits=list(problem.bits),
                            act_bits=list(options.act_choices) if options.act_choices else options.act_bits,
                            group_size=group_size, scale_bits=scale_bits,
                            fixed_bits=options.fixed, num_samples=num_samples, bn_mode=bn_mode,
                            ties=[list(t) for t in ties or ()], time_limit_s=time_limit_s,
                            cost=_method_cost(scores), method_settings=_method_settings(allocator))

        def record(allocation, problem=problem, scores=scores, settings=settings, timing=own) -> Plan:
            return _record(model, planned, skipped, problem, scores, allocation, settings, timing, where)
        yield _Planned(record(allocation), problem, scores, record)


@dataclasses.dataclass
class _Planned:
    """One budget's plan, with its problem and scores and how to record another allocation of that problem
    (``record(allocation) -> Plan``: a sweep's uniform references)."""

    plan: Plan
    problem: object
    scores: Scores
    record: object


def _score(allocator, model, problem, planned, indices, samples, collectors, seen, options, time_limit_s, progress,
           shared) -> Scores:
    """The allocator's scores of the planned layers for this problem (its budgets and bit choices)."""
    allowed = {n: s.bits for s, g in zip(problem.specs, problem.groups) for n in g.layers}

    def solve(candidate: Scores, with_act: bool = False, fixed_act: int | None = None) -> dict:
        """{layer: bits} of the exact plan of ``candidate``; with_act: {layer: (bits, act bits)};
        fixed_act: every input at those bits instead of the choices (a weight-only plan)."""
        candidate.check([x.name for x in planned], allocator.name)
        here = problem
        if fixed_act is not None:
            here = dataclasses.replace(problem, specs=[dataclasses.replace(s, act_choices=(), act_bits=fixed_act)
                                                       for s in problem.specs])
            candidate = dataclasses.replace(candidate, act_values=None)
        a = solve_problem(here, candidate, time_limit_s)
        return {n: (int(b), int(act)) if with_act else int(b)
                for g, b, act in zip(problem.groups, a.bits, a.act_bits) for n in g.layers}

    scores = allocator.scores(ScoringInput(model=model, samples=samples, layers=planned,
                                           indices=indices, bits=problem.bits, collectors=collectors,
                                           allowed=allowed, channel_axes=[seen.channel_axis[i] for i in indices],
                                           solve=solve, progress=progress, shared=shared,
                                           act_bits=options.act_choices))
    if not isinstance(scores, Scores):
        raise OmpqTypeError(f"the {allocator.name!r} allocator returned {type(scores).__name__}, not Scores")
    scores.check([x.name for x in planned], allocator.name)
    return scores


def _check_has_data(model: nn.Module) -> None:
    """A model on the meta device (weights not loaded yet) has nothing to plan from: say so by name."""
    if not isinstance(model, nn.Module):
        return  # find_layers names the type
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_meta:
            raise OmpqValueError(f"the model's {name!r} is on the meta device (no data: its weights were never "
                                 f"loaded); materialise the model first, e.g. model.to_empty(device='cpu') and "
                                 f"load_state_dict(...)")


@contextmanager
def _stage(timing: dict, name: str):
    t = time.perf_counter()
    yield
    timing[name] = time.perf_counter() - t


def _planned_layers(layers, seen, feature_point):
    """The layers that ran, in execution order, and those that never ran (with warnings for the user)."""
    if feature_point == "activation" and seen.activation_calls == 0:
        warnings.warn("feature_point='activation' but no activation module ran in the forward pass "
                      "(functional activations have no module to hook); every layer's own output was used",
                      stacklevel=user_stacklevel())
    if seen.refused:
        warnings.warn(f"{len(seen.refused)} weight(s) of modules of unknown types are used by ops whose outputs have no "
                      f"sample dimension, and are left out of the plan: {', '.join(map(repr, seen.refused[:8]))}", stacklevel=user_stacklevel())
    planned = [layers[i] for i in seen.order if layers[i].name not in seen.refused]
    skipped = [x.name for x, calls in zip(layers, seen.calls) if calls == 0 and not x.optional]
    if not planned:
        raise FeatureError("no planned layer ran in the forward pass; check the model and input_fn")
    if skipped:
        warnings.warn(f"{len(skipped)} layer(s) never ran in the forward pass and are left out of the plan at "
                      f"32 bits: {', '.join(skipped[:8])}{', ...' if len(skipped) > 8 else ''}", stacklevel=user_stacklevel())
    return planned, skipped


def _allocator(method, num_threads: int = 0, **ompq_options) -> Allocator:
    """The allocator ``method`` names (OMPQ's settings, those not None, go to OMPQ), or ``method`` itself;
    no method: the default, or OMPQ where one of its settings is given."""
    given = {k: v for k, v in ompq_options.items() if v is not None}
    if method is None:
        method = "ompq" if given else DEFAULT_METHOD
    if isinstance(method, str) and method == "ompq":
        return OMPQ(**given, num_threads=num_threads)
    if isinstance(method, Allocator):
        if not isinstance(method.name, str) or not method.name or method.name == "ompq" and not isinstance(method, OMPQ):
            raise OmpqValueError(f"{type(method).__name__}.name must be a name of its own for the plan's record, "
                                 f"got {method.name!r}")
        allocator, what = method, f"method is a {type(method).__name__}; configure that allocator instead"
    elif not isinstance(method, str):
        raise OmpqTypeError(f"method must be a name {tuple(ALLOCATORS)} or an ompq_ext.allocators.Allocator, "
                            f"got {type(method).__name__}")
    elif method not in ALLOCATORS:
        raise OmpqValueError(f"method must be one of {tuple(ALLOCATORS)} or an Allocator instance, got {method!r}")
    else:
        allocator = ALLOCATORS[method]()
        what = (f"method={method!r}; pass method=ompq_ext.allocators.{type(allocator).__name__}(...) to configure "
                f"that one")
    if given:
        raise OmpqValueError(f"{', '.join(given)} set OMPQ's allocator, but {what}")
    return allocator


def _method_cost(scores: Scores) -> dict:
    """The feature pass (one forward) plus what the allocator ran itself."""
    own = dict(scores.cost or {})
    return {"forward_passes": 1 + int(own.get("forward_passes", 0)),
            "backward_passes": int(own.get("backward_passes", 0)),
            "labels": bool(own.get("labels", False)), "gradients": bool(own.get("gradients", False))}


def _method_settings(allocator) -> dict:
    settings = allocator.settings()
    try:
        json.dumps(settings)
    except (TypeError, ValueError) as e:
        raise OmpqValueError(f"the {allocator.name!r} allocator's settings cannot be written to a plan file "
                             f"({e}); give JSON values (numbers, strings, lists, dicts)") from None
    return dict(settings)


def _record(model, planned, skipped, problem, scores, allocation, settings, timing, where) -> Plan:
    """``where``: {name: (used outside its module's call, output-channel axis)}."""
    group_of = {n: g.name for g in problem.groups for n in g.layers}
    fixed = {s.name: len(s.bits) == 1 for s in problem.specs}
    group_bits = {s.name: int(b) for s, b in zip(problem.specs, allocation.bits)}
    group_acts = {s.name: int(a) if s.act_choices else None for s, a in zip(problem.specs, allocation.act_bits)}
    layers = [
        LayerPlan(
            name=x.name, kind=x.kind, group=group_of[x.name], params=x.params, macs=problem.macs[x.name],
            gamma=None if scores.gamma is None else scores.gamma[x.name],
            log_theta=None if scores.log_theta is None else scores.log_theta[x.name],
            weight=None if scores.weights is None else scores.weights[x.name],
            bits=group_bits[group_of[x.name]], fixed=fixed[group_of[x.name]], functional=where[x.name][0],
            channel_axis=where[x.name][1],
            act_bits=group_acts[group_of[x.name]] if x.kind != "Embedding" else None,
        )
        for x in planned
    ]
    size_bits = allocation.size_bits
    totals = Totals(
        size_bits=size_bits, size_bytes=size_bits / 8, size_mib=size_bits / 8 / 2**20,
        fp32_size_bytes=4 * problem.total_params, fp32_size_mib=4 * problem.total_params / 2**20,
        avg_bits=(size_bits - problem.fixed_bits) / problem.planned_params, bops=allocation.bops,
        scale_bits=problem.scale_bits,
        planned_params=problem.planned_params, other_params=problem.other_params, latency=allocation.latency,
    )
    return Plan(
        layers=layers,
        groups=[GroupPlan(name=g.name, layers=g.layers, params=g.params, bits=group_bits[g.name], fixed=fixed[g.name])
                for g in problem.groups],
        orm=scores.orm,
        totals=totals,
        budgets=[BudgetRecord.of(r) for r in problem.budget_records],
        solver=SolverRecord(status=allocation.status, objective=allocation.objective, bound=allocation.bound,
                            gap=allocation.gap, solve_time_s=allocation.solve_time_s, engine=allocation.engine),
        settings=settings,
        timing=timing,
        model=ModelInfo(class_name=type(model).__name__, total_params=problem.total_params),
        skipped=skipped,
    )
