"""``plan()``: model + one batch -> an exact mixed-precision plan, and the ``Plan`` record.

The steps (METHOD.md section 1): find the layers, run one forward pass of
``num_samples`` inputs while hooks fold every layer's output into its Gram
matrix, form the ORM matrix with one product, turn orthogonality into
objective weights, and solve for the bits exactly under the budget(s).
"""

from __future__ import annotations

import fnmatch
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import __version__
from .budget import parse_budgets
from .errors import FeatureError, OmpqTypeError, OmpqValueError, PlanFileError, check_choice
from .features import FEATURE_POINTS, GramCollector, call_model, gather_samples, untouched
from .layers import count_parameters, find_layers, group_layers
from .orthogonality import ESTIMATORS, OBJECTIVES, importance, log_theta, objective_weights, orm_matrix
from .solver import GroupSpec, solve

PLAN_FORMAT = "ompq_ext.plan"
PLAN_VERSION = 1
BN_MODES = ("eval", "batch")
# Defaults set by the allocation-quality study (docs/QUALITY.md, "Defaults"): beta 0.03..0.3 give the
# same plans and beta >= 1 loses accuracy; objective "layer" (theta_i alone) beats the reference's
# "suffix_mean" where they differ; the feature point and num_samples 16..64 change nothing measurable.
DEFAULT_BETA = 0.1
DEFAULT_OBJECTIVE = "layer"


@dataclass
class LayerPlan:
    """One planned layer, in the order the forward pass ran it."""

    name: str
    kind: str
    group: str
    params: int
    macs: int  # per sample
    gamma: float
    log_theta: float  # log(theta / max theta)
    weight: float  # objective weight, largest 1
    bits: int
    fixed: bool


@dataclass
class Plan:
    """The outcome of ``plan()``: bits per layer and everything needed to judge them."""

    layers: list[LayerPlan]
    groups: list[dict]  # name, layers, params, bits, fixed
    orm: np.ndarray
    totals: dict
    budgets: list[dict]
    solver: dict
    settings: dict
    timing: dict
    model: dict
    skipped: list[str] = field(default_factory=list)

    # ---------------------------------------------------------------- views

    @property
    def bits(self) -> dict[str, int]:
        """Layer name -> weight bits."""
        return {layer.name: layer.bits for layer in self.layers}

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def summary(self) -> str:
        """A table of the plan: one row per layer, then the totals, solver and timing."""
        width = max(12, *(len(x.name) for x in self.layers))
        head = f"{'layer':<{width}}  {'type':<8} {'params':>10} {'MACs/sample':>13} {'gamma':>8} {'weight':>9} {'bits':>4}"
        rows = [head, "-" * len(head)]
        for x in self.layers:
            mark = "*" if x.fixed else " "
            tied = "" if x.group == x.name else f"  (= {x.group})"
            rows.append(
                f"{x.name:<{width}}  {x.kind[:8]:<8} {x.params:>10,} {x.macs:>13,} {x.gamma:>8.4f} "
                f"{x.weight:>9.3g} {x.bits:>3}{mark}{tied}"
            )
        t, s = self.totals, self.solver
        rows += [
            "-" * len(head),
            f"size      {t['size_mib']:.4f} MiB ({t['size_bytes']:,.0f} bytes) of {t['fp32_size_mib']:.4f} MiB "
            f"in FP32 ({t['size_bytes'] / t['fp32_size_bytes']:.2%})",
            f"weights   {t['avg_bits']:.4f} bits on average over {t['planned_params']:,} planned weights; "
            f"{t['other_params']:,} other parameters at 32 bits",
            f"BOPs      {t['bops'] / 1e9:.4f} G per sample (activations at {self.settings['act_bits']} bits)",
            "budgets   " + "; ".join(b["description"] for b in self.budgets),
            f"solver    {s['status']}, objective {s['objective']:.6g}, gap {s['gap']:.2%}, "
            f"{s['solve_time_s'] * 1e3:.1f} ms",
            "time      " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in self.timing.items()),
        ]
        if any(x.fixed for x in self.layers):
            rows.append("* fixed bits")
        if self.skipped:
            rows.append(f"not planned (never ran in the forward pass, kept at 32 bits): {', '.join(self.skipped)}")
        return "\n".join(rows)

    def __repr__(self):
        t = self.totals
        return (f"Plan({len(self.layers)} layers, {t['size_mib']:.4f} MiB, {t['avg_bits']:.3f} bits/weight, "
                f"{self.solver['status']})")

    # ---------------------------------------------------------------- files

    def to_json(self) -> dict:
        return {
            "format": PLAN_FORMAT,
            "version": PLAN_VERSION,
            "ompq_ext_version": __version__,
            "layers": [vars(x) for x in self.layers],
            "groups": self.groups,
            "skipped": self.skipped,
            "orm": self.orm.tolist(),
            "totals": self.totals,
            "budgets": self.budgets,
            "solver": self.solver,
            "settings": self.settings,
            "timing": self.timing,
            "model": self.model,
        }

    def save(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1))

    @classmethod
    def from_json(cls, data) -> "Plan":
        return _plan_from_json(data)

    @classmethod
    def load(cls, path) -> "Plan":
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise PlanFileError(f"cannot read plan file {str(path)!r}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise PlanFileError(f"plan file {str(path)!r} is not text (a binary file?); give a plan JSON") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PlanFileError(f"plan file {str(path)!r} is not JSON ({e.msg} at line {e.lineno})") from None
        return _plan_from_json(data, source=str(path))

    def check_model(self, model: nn.Module) -> None:
        """Raise PlanFileError unless every planned layer exists in ``model`` with the same weight size."""
        modules = dict(model.named_modules())
        missing = [x.name for x in self.layers if x.name not in modules]
        if missing:
            raise PlanFileError(
                f"the plan does not match this model: {len(missing)} planned layer(s) are missing from it "
                f"({', '.join(missing[:8])}{', ...' if len(missing) > 8 else ''}); was the plan made for another model?"
            )
        for x in self.layers:
            weight = getattr(modules[x.name], "weight", None)
            if not isinstance(weight, torch.Tensor) or weight.numel() != x.params:
                got = "no weight" if not isinstance(weight, torch.Tensor) else f"{weight.numel():,} weights"
                raise PlanFileError(
                    f"the plan does not match this model: layer {x.name!r} has {got}, the plan expects {x.params:,}"
                )


def _plan_from_json(data, source="plan") -> Plan:
    def need(obj, key, kind, where):
        if not isinstance(obj, dict) or key not in obj:
            raise PlanFileError(f"{source}: {where} lacks the field {key!r}")
        value = obj[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            raise PlanFileError(f"{source}: {where}.{key} should be {kind.__name__}, got {type(value).__name__}")
        return value

    if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
        raise PlanFileError(f"{source} is not an ompq_ext plan (no \"format\": \"{PLAN_FORMAT}\")")
    version = data.get("version")
    if version != PLAN_VERSION:
        raise PlanFileError(
            f"{source} has plan format version {version!r}; this ompq_ext reads version {PLAN_VERSION}"
        )
    layers = []
    for i, raw in enumerate(need(data, "layers", list, "plan")):
        where = f"layers[{i}]"
        layer = LayerPlan(
            name=need(raw, "name", str, where), kind=need(raw, "kind", str, where),
            group=need(raw, "group", str, where), params=need(raw, "params", int, where),
            macs=need(raw, "macs", int, where), gamma=need(raw, "gamma", float, where),
            log_theta=need(raw, "log_theta", float, where), weight=need(raw, "weight", float, where),
            bits=need(raw, "bits", int, where), fixed=need(raw, "fixed", bool, where),
        )
        if not 1 <= layer.bits <= 16:
            raise PlanFileError(f"{source}: {where} ({layer.name}) has bits {layer.bits}, outside 1..16")
        if layer.params <= 0 or layer.macs < 0:
            raise PlanFileError(f"{source}: {where} ({layer.name}) has a non-positive parameter count")
        layers.append(layer)
    if not layers:
        raise PlanFileError(f"{source} plans no layers")
    names = [x.name for x in layers]
    if len(set(names)) != len(names):
        raise PlanFileError(f"{source} names a layer twice")
    orm = need(data, "orm", list, "plan")
    try:
        orm = np.asarray(orm, dtype=np.float64)
    except (TypeError, ValueError):
        raise PlanFileError(f"{source}: orm is not a numeric matrix") from None
    if orm.shape != (len(layers), len(layers)):
        raise PlanFileError(f"{source}: orm has shape {orm.shape}, expected {(len(layers), len(layers))}")
    groups = need(data, "groups", list, "plan")
    for i, g in enumerate(groups):
        for key, kind in (("name", str), ("layers", list), ("params", int), ("bits", int), ("fixed", bool)):
            need(g, key, kind, f"groups[{i}]")
    by_name = {x.name: x for x in layers}
    covered = []
    for g in groups:
        for member in g["layers"]:
            if not isinstance(member, str) or member not in by_name:
                raise PlanFileError(f"{source}: group {g['name']!r} lists {member!r}, which is not a planned layer")
            layer = by_name[member]
            if layer.bits != g["bits"] or layer.group != g["name"]:
                raise PlanFileError(f"{source}: group {g['name']!r} and its layer {member!r} disagree")
            covered.append(member)
    if sorted(covered) != sorted(names):
        raise PlanFileError(f"{source}: the groups do not list every planned layer exactly once")
    return Plan(
        layers=layers, groups=groups, orm=orm,
        totals=need(data, "totals", dict, "plan"), budgets=need(data, "budgets", list, "plan"),
        solver=need(data, "solver", dict, "plan"), settings=need(data, "settings", dict, "plan"),
        timing=need(data, "timing", dict, "plan"), model=need(data, "model", dict, "plan"),
        skipped=need(data, "skipped", list, "plan"),
    )


# ---------------------------------------------------------------- options


def _bit_set(bits) -> tuple[int, ...]:
    if isinstance(bits, (str, bytes)) or not hasattr(bits, "__iter__"):
        raise OmpqTypeError(f"bits must be a collection of integers such as range(2, 9), got {bits!r}")
    values = list(bits)
    if not values:
        raise OmpqValueError("bits is empty: give the bit-widths to choose from, e.g. bits=range(2, 9)")
    for b in values:
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)):
            raise OmpqTypeError(f"bits must hold integers, got {b!r}")
    if min(values) < 1 or max(values) > 16:
        raise OmpqValueError(f"bits must lie in 1..16, got {sorted(values)}")
    return tuple(sorted(set(int(b) for b in values)))


def _free_averages(groups, fixed_bits, macs, size_limit, other_bits, bops_limit, act_bits) -> list[float]:
    """Average bits per weight left to the groups without fixed bits, under each budget."""
    free = [g for g in groups if not fixed_bits[g.name]]
    averages = []
    free_params = sum(g.params for g in free)
    if size_limit is not None and free_params:
        spent = other_bits + sum(g.params * fixed_bits[g.name] for g in groups if fixed_bits[g.name])
        averages.append((size_limit - spent) / free_params)
    free_macs = sum(macs[g.name] for g in free)
    if bops_limit is not None and free_macs:
        spent = sum(macs[g.name] * fixed_bits[g.name] * act_bits for g in groups if fixed_bits[g.name])
        averages.append((bops_limit - spent) / (act_bits * free_macs))
    return averages


def _bits_around(averages) -> tuple[int, ...]:
    """The default bit choices: the integers within one bit of the tightest budget's average
    bits per free weight, inside 2..8. A linear objective over a wide range puts layers at
    the extremes; a window around the budget keeps every layer usable after plain rounding."""
    if not averages:
        return tuple(range(2, 9))
    avg = min(averages)
    lo = min(max(math.floor(avg) - 1, 2), 7)
    hi = max(min(math.ceil(avg) + 1, 8), lo + 1)
    return tuple(range(lo, hi + 1))


def _fixed_bits_for(layer_names, fixed_bits) -> dict[str, int]:
    """Layer name -> fixed bits, from {name or glob pattern: bits}."""
    if not fixed_bits:
        return {}
    if not isinstance(fixed_bits, dict):
        raise OmpqTypeError("fixed_bits must be a dict {layer name or glob pattern: bits}, e.g. {'conv1': 8}")
    out = {}
    for pattern, b in fixed_bits.items():
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 16:
            raise OmpqValueError(f"fixed_bits[{pattern!r}] must be an integer in 1..16, got {b!r}")
        hits = [n for n in layer_names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise OmpqValueError(f"fixed_bits pattern {pattern!r} matches no planned layer")
        for n in hits:
            if n in out and out[n] != b:
                raise OmpqValueError(f"fixed_bits gives layer {n!r} both {out[n]} and {b} bits")
            out[n] = b
    return out


def _show_progress(progress) -> bool:
    if progress is None:
        return sys.stderr.isatty()
    return bool(progress)


# ---------------------------------------------------------------- plan()


def plan(
    model: nn.Module,
    loader,
    budget,
    *,
    bits=None,
    act_bits: int = 8,
    fixed_bits: dict | None = None,
    include=None,
    exclude=None,
    layer_types=(),
    ties=(),
    num_samples: int = 32,
    input_fn=None,
    beta: float = DEFAULT_BETA,
    objective: str = DEFAULT_OBJECTIVE,
    feature_point: str = "output",
    estimator: str = "biased",
    bn_mode: str = "eval",
    latency_table: dict | None = None,
    latency_budget: float | None = None,
    time_limit_s: float = 30.0,
    num_threads: int = 0,
    progress: bool | None = None,
) -> Plan:
    """Plan weight bits for every quantizable layer of ``model`` from one batch.

    budget: "4.5MiB", "5MB", "3.5bits", "75GBOPs", a fraction of the FP32 size
        such as 0.15, bytes as an int, or a list of one size and one BOPs budget.
    bits: the bit-widths to choose from. None (the default): every integer within one
        bit of the budget's average bits per planned weight, inside 2..8 (e.g.
        "3bits" -> 2, 3, 4); pass range(2, 9) for the widest search.
        fixed_bits: {name or glob: bits}, e.g.
        {"conv1": 8, "fc": 8}. act_bits: activation bits for BOPs.
    include / exclude / layer_types: which layers are planned (names as glob
        patterns, or module types). ties: lists of layer names that share bits.
    num_samples: inputs drawn from ``loader`` (tensors, (input, target) tuples
        or dicts; input_fn turns anything else into model inputs).
    beta (default 0.1), objective ("layer", the default: theta_i alone | "suffix_mean", the
        reference code's mean over layer i and every later layer),
        estimator ("biased" | "unbiased"): see METHOD.md. feature_point: "output" (each
        layer's own output) or "activation" (the output of the first activation module that
        runs after the layer: for a ResNet block's last conv, the block output after the add
        and ReLU, as the reference code); docs/QUALITY.md compares them. bn_mode: "eval" (running statistics) or "batch"
        (BatchNorm in training mode, as the reference code); the model's state
        is restored either way.
    latency_table: {layer name: {bits: cost}} with latency_budget.

    The model is left exactly as it was: parameters, buffers, train/eval flags, hooks.
    """
    start = time.perf_counter()
    check_choice("objective", objective, OBJECTIVES)
    check_choice("estimator", estimator, ESTIMATORS)
    check_choice("feature_point", feature_point, FEATURE_POINTS)
    check_choice("bn_mode", bn_mode, BN_MODES)
    if estimator == "unbiased" and isinstance(num_samples, int) and num_samples < 4:
        raise OmpqValueError(f"the unbiased estimator needs num_samples >= 4, got {num_samples}")
    if isinstance(act_bits, bool) or not isinstance(act_bits, int) or not 1 <= act_bits <= 32:
        raise OmpqValueError(f"act_bits must be an integer in 1..32, got {act_bits!r}")
    if (latency_table is None) != (latency_budget is None):
        raise OmpqValueError("latency_table and latency_budget go together: give both or neither")
    bit_choices = _bit_set(bits) if bits is not None else None
    budgets = parse_budgets(budget)
    layers = find_layers(model, include=include, exclude=exclude, layer_types=layer_types)
    fixed = _fixed_bits_for([x.name for x in layers], fixed_bits)
    show = _show_progress(progress)
    timing = {}

    # 1. one batch of num_samples inputs
    t = time.perf_counter()
    args, kwargs = gather_samples(loader, num_samples, input_fn)
    timing["data"] = time.perf_counter() - t

    # 2. the feature pass, Grams accumulated inside the hooks
    t = time.perf_counter()
    from tqdm.auto import tqdm

    with tqdm(total=len(layers), desc="ompq: feature pass", unit="layer", disable=not show,
              file=sys.stderr, leave=False) as bar:
        with untouched(model), torch.no_grad(), GramCollector(
            layers, num_samples, feature_point=feature_point, model=model, num_threads=num_threads, progress=bar
        ) as collector:
            model.eval()
            if bn_mode == "batch":
                for m in model.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.train()
            call_model(model, args, kwargs, samples="the loader's")
            collector.finish()
    if feature_point == "activation" and collector.activation_calls == 0:
        warnings.warn("feature_point='activation' but no activation module ran in the forward pass "
                      "(functional activations have no module to hook); every layer's own output was used",
                      stacklevel=2)
    timing["features"] = time.perf_counter() - t

    ran = collector.order
    skipped = [layers[i].name for i in range(len(layers)) if collector.calls[i] == 0]
    if not ran:
        raise FeatureError("no planned layer ran in the forward pass; check the model and input_fn")
    if skipped:
        warnings.warn(
            f"{len(skipped)} layer(s) never ran in the forward pass and are left out of the plan at 32 bits: "
            f"{', '.join(skipped[:8])}{', ...' if len(skipped) > 8 else ''}",
            stacklevel=2,
        )
    planned = [layers[i] for i in ran]
    names = [x.name for x in planned]

    # 3-4. orthogonality and importance, in execution order
    t = time.perf_counter()
    orm = orm_matrix(collector.grams_of(ran), names, estimator, num_threads)
    gamma = importance(orm)
    logt = log_theta(gamma, beta)
    weights = objective_weights(logt, objective)
    timing["orthogonality"] = time.perf_counter() - t

    # 5. exact allocation over groups of layers that share bits
    t = time.perf_counter()
    groups = group_layers(planned, ties)
    position = {name: i for i, name in enumerate(names)}
    macs = {layers[i].name: collector.macs[i] for i in ran}
    total_params = count_parameters(model)
    planned_params = sum(g.params for g in groups)
    other_params = total_params - planned_params
    size_limit = next((b.size_limit_bits(planned_params=planned_params, other_params=other_params)
                       for b in budgets if b.kind != "bops"), None)
    bops_limit = next((b.bops_limit() for b in budgets if b.kind == "bops"), None)
    group_fixed_bits = {}
    for g in groups:
        fixed_here = {fixed[n] for n in g.layers if n in fixed}
        if len(fixed_here) > 1:
            raise OmpqValueError(f"fixed_bits gives the tied layers of group {g.name!r} different bits {sorted(fixed_here)}")
        group_fixed_bits[g.name] = fixed_here.pop() if fixed_here else None
    group_macs = {g.name: sum(macs[n] for n in g.layers) for g in groups}
    if bit_choices is None:
        bit_choices = _bits_around(_free_averages(groups, group_fixed_bits, group_macs, size_limit,
                                                  32 * other_params, bops_limit, act_bits))
    specs = [
        GroupSpec(
            name=g.name, params=g.params, macs=group_macs[g.name],
            weight=float(sum(weights[position[n]] for n in g.layers)),
            bits=(group_fixed_bits[g.name],) if group_fixed_bits[g.name] else bit_choices, act_bits=act_bits,
        )
        for g in groups
    ]
    latency = _group_latency(groups, latency_table) if latency_table is not None else None
    allocation = solve(specs, size_budget_bits=size_limit, other_bits=32 * other_params,
                       bops_budget=bops_limit, latency=latency, latency_budget=latency_budget,
                       time_limit_s=time_limit_s)
    timing["solve"] = time.perf_counter() - t
    timing["total"] = time.perf_counter() - start

    group_bits = {g.name: b for g, b in zip(groups, allocation.bits)}
    group_fixed = {g.name: len(s.bits) == 1 for g, s in zip(groups, specs)}
    group_of = {n: g.name for g in groups for n in g.layers}
    layer_plans = [
        LayerPlan(
            name=x.name, kind=x.kind, group=group_of[x.name], params=x.params, macs=macs[x.name],
            gamma=float(gamma[k]), log_theta=float(logt[k]), weight=float(weights[k]),
            bits=int(group_bits[group_of[x.name]]), fixed=group_fixed[group_of[x.name]],
        )
        for k, x in enumerate(planned)
    ]
    size_bits = allocation.size_bits
    totals = {
        "size_bits": size_bits,
        "size_bytes": size_bits / 8,
        "size_mib": size_bits / 8 / 2**20,
        "fp32_size_bytes": 4 * total_params,
        "fp32_size_mib": 4 * total_params / 2**20,
        "avg_bits": (size_bits - 32 * other_params) / planned_params,
        "bops": allocation.bops,
        "planned_params": planned_params,
        "other_params": other_params,
    }
    if allocation.latency is not None:
        totals["latency"] = allocation.latency
    return Plan(
        layers=layer_plans,
        groups=[{"name": g.name, "layers": g.layers, "params": g.params, "bits": int(group_bits[g.name]),
                 "fixed": group_fixed[g.name]} for g in groups],
        orm=orm,
        totals=totals,
        budgets=[{**b.to_json(), "description": b.describe()} for b in budgets]
        + ([{"kind": "latency", "value": latency_budget, "description": f"latency {latency_budget:g}"}]
           if latency_budget is not None else []),
        solver={"status": allocation.status, "objective": allocation.objective, "bound": allocation.bound,
                "gap": allocation.gap, "solve_time_s": allocation.solve_time_s},
        settings={
            "bits": list(bit_choices), "act_bits": act_bits, "fixed_bits": fixed, "num_samples": num_samples,
            "beta": beta, "objective": objective, "feature_point": feature_point, "estimator": estimator, "bn_mode": bn_mode,
            "ties": [list(t) for t in ties or ()], "time_limit_s": time_limit_s,
        },
        timing=timing,
        model={"class": type(model).__name__, "total_params": total_params},
        skipped=skipped,
    )


def _group_latency(groups, table) -> list[dict[int, float]]:
    """Per group, {bits: cost} summed over its layers; every planned layer needs an entry."""
    if not isinstance(table, dict):
        raise OmpqTypeError("latency_table must be a dict {layer name: {bits: cost}}")
    out = []
    for g in groups:
        costs: dict[int, float] = {}
        for name in g.layers:
            if name not in table:
                raise OmpqValueError(f"latency_table has no entry for layer {name!r}")
            for b, c in table[name].items():
                costs[int(b)] = costs.get(int(b), 0.0) + float(c)
        out.append(costs)
    return out
