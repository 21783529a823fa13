"""The ``Plan`` record: bits per layer and everything needed to judge them, typed.

Every part is a dataclass; each is also a mapping of its plan-file fields
(``plan.totals["avg_bits"]`` as well as ``plan.totals.avg_bits``; ``dict(plan.totals)``,
``"latency" in plan.totals``, ``group["bits"] = 3``), as plans were dicts before they were
typed. Files are read and written by ``plan_file``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from . import plan_file
from .errors import OmpqValueError, PlanFileError
from .layers import weight_owner


class _Record(Mapping):
    """A record's plan-file fields as a mapping (reading through ``to_json``; writing a field sets it)."""

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}  # an unset optional field is left out

    def __getitem__(self, key):
        return self.to_json()[key]

    def __iter__(self):
        return iter(self.to_json())

    def __len__(self):
        return len(self.to_json())

    def __setitem__(self, key, value):
        if key not in self.__dataclass_fields__:
            raise KeyError(f"{type(self).__name__} has no field {key!r}")
        setattr(self, key, value)


@dataclass
class LayerPlan(_Record):
    """One planned layer, in the order the forward pass ran it."""

    name: str
    kind: str
    group: str
    params: int
    macs: int  # per sample
    gamma: float | None  # OMPQ: orthogonality to the other layers (None for other methods)
    log_theta: float | None  # OMPQ: log(theta / max theta)
    weight: float | None  # the objective weight the solver used (largest 1 for OMPQ); None for value tables
    bits: int
    fixed: bool
    functional: bool = False  # used outside its module's own call (e.g. F.linear on it): quantized where it lives
    channel_axis: int = 0  # the weight's output-channel axis, one scale per channel (1 for GPT-2's (in, out) Conv1D)
    act_bits: int | None = None  # its input's bits where plan(act_bits=(...)) chose them; None: the settings' act_bits

    def to_json(self) -> dict:
        return asdict(self)  # the scores a method does not measure are written as null


@dataclass
class GroupPlan(_Record):
    """Layers that share one bit-width (a shared weight, or a tie)."""

    name: str
    layers: list[str]
    params: int
    bits: int
    fixed: bool


@dataclass
class BudgetRecord(_Record):
    """One budget as the user gave it, and the exact limit it imposed."""

    kind: str  # "size", "avg_bits", "fraction", "bops", "latency", or a constraint's own kind
    value: str | float
    description: str
    text: str | None = None  # as written by the user
    limit: int | float | None = None  # in the constraint's unit (bits for sizes); None in older files

    @classmethod
    def of(cls, record: dict) -> "BudgetRecord":
        """From a budget's or a constraint's ``to_json()`` (fields this record does not have are left out)."""
        try:
            return cls(**{k: record[k] for k in cls.__dataclass_fields__ if k in record})
        except TypeError as e:
            raise OmpqValueError(f"a budget's record needs kind, value and description: {e}") from None


@dataclass
class Totals(_Record):
    """What the plan costs. Sizes count every parameter: planned weights at their bits, the rest at 32."""

    size_bits: int
    size_bytes: float
    size_mib: float
    fp32_size_bytes: int
    fp32_size_mib: float
    avg_bits: float  # over the planned weights
    bops: int  # per sample, at the plan's activation bits
    planned_params: int
    other_params: int
    latency: float | None = None  # when a latency table was given
    scale_bits: int = 0  # the quantizers' scales, included in size_bits (0 in plans of before they counted)


@dataclass
class SolverRecord(_Record):
    status: str  # "OPTIMAL" or "FEASIBLE" (time limit)
    objective: float
    bound: float
    gap: float
    solve_time_s: float
    engine: str | None = None  # "knapsack" or "cp-sat" (None in plans written before it was recorded)


_SETTINGS = ("method", "bits", "act_bits", "group_size", "scale_bits", "fixed_bits", "num_samples", "bn_mode", "ties", "time_limit_s", "cost")


@dataclass
class Settings(_Record):
    """How the plan was made: the pipeline's settings and the method's own (``method_settings``)."""

    method: str = "ompq"
    bits: list[int] = field(default_factory=list)
    act_bits: int | list[int] = 8  # the activation bits, or the choices where each layer's were chosen
    group_size: int | None = None  # weights quantized per group of this many input columns; None: per channel
    scale_bits: int = 0  # bits of one stored scale in the size (0: not counted, as plans before they were)
    fixed_bits: dict[str, int] = field(default_factory=dict)
    num_samples: int | None = None
    bn_mode: str = "eval"
    ties: list[list[str]] = field(default_factory=list)
    time_limit_s: float | None = None
    # What the method needed: forward_passes (the feature pass included), backward_passes, labels, gradients
    cost: dict = field(default_factory=dict)
    method_settings: dict = field(default_factory=dict)  # e.g. OMPQ's beta, objective, feature_point, estimator

    def __post_init__(self):
        clash = sorted(set(self.method_settings) & set(_SETTINGS))
        if clash:
            raise OmpqValueError(f"the method's settings may not be called {', '.join(clash)}: plan() records "
                                 f"those itself; rename them")

    def to_json(self) -> dict:  # one flat dict in the file, as version 1 always had
        return {**{k: getattr(self, k) for k in _SETTINGS}, **self.method_settings}

    def __setitem__(self, key, value):
        if key in _SETTINGS:
            setattr(self, key, value)
        else:
            self.method_settings[key] = value

    @classmethod
    def from_json(cls, data: dict) -> "Settings":
        known = {k: data[k] for k in _SETTINGS if k in data}
        return cls(**known, method_settings={k: v for k, v in data.items() if k not in _SETTINGS})


@dataclass
class ModelInfo(_Record):
    class_name: str
    total_params: int

    def to_json(self) -> dict:
        return {"class": self.class_name, "total_params": self.total_params}


@dataclass
class Plan:
    """The outcome of ``plan()``: bits per layer and everything needed to judge them."""

    layers: list[LayerPlan]
    groups: list[GroupPlan]
    orm: np.ndarray | None  # OMPQ's L x L orthogonality matrix, layers in execution order
    totals: Totals
    budgets: list[BudgetRecord]
    solver: SolverRecord
    settings: Settings
    timing: dict[str, float]  # seconds per stage
    model: ModelInfo
    skipped: list[str] = field(default_factory=list)  # layers that never ran, left at 32 bits

    # ---------------------------------------------------------------- views

    @property
    def bits(self) -> dict[str, int]:
        """Layer name -> weight bits."""
        return {layer.name: layer.bits for layer in self.layers}

    @property
    def act_bits(self) -> dict[str, int]:
        """Layer name -> the bits of its input: chosen per layer, or the plan's one act_bits (None for an
        embedding of a plan that chose them: its input is ids)."""
        fixed = self.settings.act_bits if isinstance(self.settings.act_bits, int) else None
        return {layer.name: layer.act_bits if layer.act_bits is not None else fixed for layer in self.layers}

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def summary(self) -> str:
        """A table of the plan: one row per layer, then the totals, solver and timing."""
        width = max(12, *(len(x.name) for x in self.layers))
        acts = any(x.act_bits is not None for x in self.layers)
        head = (f"{'layer':<{width}}  {'type':<8} {'params':>10} {'MACs/sample':>13} {'gamma':>8} {'weight':>9} {'bits':>4}"
                + ("  act" if acts else ""))
        rows = [head, "-" * len(head)]
        for x in self.layers:
            mark = "*" if x.fixed else " "
            tied = "" if x.group == x.name else f"  (= {x.group})"
            gamma = "-" if x.gamma is None else f"{x.gamma:.4f}"
            weight = "-" if x.weight is None else f"{x.weight:.3g}"
            rows.append(
                f"{x.name:<{width}}  {x.kind[:8]:<8} {x.params:>10,} {x.macs:>13,} {gamma:>8} "
                f"{weight:>9} {x.bits:>3}{mark}" + (f" {x.act_bits if x.act_bits is not None else '-':>4}" if acts else "")
                + tied
            )
        t, s = self.totals, self.solver
        rows += [
            "-" * len(head),
            f"size      {t.size_mib:.4f} MiB ({t.size_bytes:,.0f} bytes) of {t.fp32_size_mib:.4f} MiB "
            f"in FP32 ({t.size_bytes / t.fp32_size_bytes:.2%})",
            f"weights   {t.avg_bits:.4f} bits on average over {t.planned_params:,} planned weights; "
            f"{t.other_params:,} other parameters at 32 bits"
            + (f"; scales {t.scale_bits / 8:,.0f} bytes ({self.settings.scale_bits}-bit, "
               f"{'per group of ' + str(self.settings.group_size) if self.settings.group_size else 'per channel'})"
               if t.scale_bits else ""),
            f"BOPs      {t.bops / 1e9:.4f} G per sample (activations at {self._act_words()})",
            "budgets   " + "; ".join(b.description for b in self.budgets),
            f"solver    {s.status}, objective {s.objective:.6g}, gap {s.gap:.2%}, "
            f"{s.solve_time_s * 1e3:.1f} ms",
            "time      " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in self.timing.items()),
        ]
        rows.append(f"method    {self._method_line()}")
        if any(x.fixed for x in self.layers):
            rows.append("* fixed bits")
        if self.skipped:
            rows.append(f"not planned (never ran in the forward pass, kept at 32 bits): {', '.join(self.skipped)}")
        return "\n".join(rows)

    def _act_words(self) -> str:
        chosen = [x.act_bits for x in self.layers if x.act_bits is not None]
        if not chosen:
            return f"{self.settings.act_bits} bits"
        counts = {a: chosen.count(a) for a in sorted(set(chosen))}
        return "bits chosen per layer: " + ", ".join(f"{n} x A{a}" for a, n in counts.items())

    def _method_line(self) -> str:
        """The method, what it needed, and for "verified" which candidate won and the divergences."""
        st, cost = self.settings, self.settings.cost
        line = f"{st.method} from {st.num_samples} samples"
        if cost:
            needs = [f"{cost['forward_passes']} forward pass{'es' if cost['forward_passes'] != 1 else ''}"]
            if cost.get("backward_passes"):
                needs.append(f"{cost['backward_passes']} backward")
            if cost.get("labels"):
                needs.append("labels")
            line += " (" + ", ".join(needs) + ")"
        ms = st.method_settings
        if isinstance(ms.get("divergences"), dict) and ms.get("chosen"):
            line += (f"; won: {ms['chosen']}; {ms.get('divergence', 'divergence')} from FP32: "
                     + ", ".join(f"{k} {v:.4g}" for k, v in ms["divergences"].items()))
        return line

    def __repr__(self):
        t = self.totals
        return (f"Plan({len(self.layers)} layers, {t.size_mib:.4f} MiB, {t.avg_bits:.3f} bits/weight, "
                f"{self.solver.status})")

    # ---------------------------------------------------------------- files

    def to_json(self) -> dict:
        """The plan-file form."""
        return {
            **plan_file.header(),
            "layers": [x.to_json() for x in self.layers],
            "groups": [g.to_json() for g in self.groups],
            "skipped": self.skipped,
            "orm": None if self.orm is None else self.orm.tolist(),
            "totals": self.totals.to_json(),
            "budgets": [b.to_json() for b in self.budgets],
            "solver": self.solver.to_json(),
            "settings": self.settings.to_json(),
            "timing": self.timing,
            "model": self.model.to_json(),
        }

    def save(self, path) -> None:
        plan_file.write(path, self.to_json())

    @classmethod
    def from_json(cls, data) -> "Plan":
        """A plan from the contents of a plan file (checked: PlanFileError names what is wrong)."""
        return cls._from_fields(plan_file.check(data))

    @classmethod
    def load(cls, path) -> "Plan":
        return cls._from_fields(plan_file.read(path))

    @classmethod
    def _from_fields(cls, f: dict) -> "Plan":
        return cls(
            layers=[LayerPlan(**x) for x in f["layers"]],
            groups=[GroupPlan(**{k: g[k] for k in ("name", "layers", "params", "bits", "fixed")}) for g in f["groups"]],
            orm=f["orm"],
            totals=Totals(**f["totals"]),
            budgets=[BudgetRecord(**b) for b in f["budgets"]],
            solver=SolverRecord(**f["solver"]),
            settings=Settings.from_json(f["settings"]),
            timing=f["timing"],
            model=ModelInfo(class_name=f["model"]["class"], total_params=f["model"]["total_params"]),
            skipped=f["skipped"],
        )

    # ---------------------------------------------------------------- other toolkits

    def to_dict(self) -> dict:
        """The bits in a plain form for other toolkits' configs: each planned layer's weight bits, input bits,
        output-channel axis and group size, with the plan's size and BOPs (the plan file, ``to_json``, has
        everything)."""
        acts, group = self.act_bits, self.settings.group_size
        return {"format": "ompq_ext.bits", "version": 1,
                "layers": {x.name: {"weight_bits": x.bits, "act_bits": acts[x.name], "channel_axis": x.channel_axis,
                                    "group_size": group, "kind": x.kind, "params": x.params}
                           for x in self.layers},
                "size_bits": self.totals.size_bits, "avg_bits": self.totals.avg_bits, "bops": self.totals.bops}

    def to_hawq_bit_config(self, names: dict | None = None) -> dict[str, int]:
        """HAWQ-V3's per-quantizer bit configuration of this plan (a torchvision ResNet's layers map onto
        HAWQ's quantizer names; for other models give ``names``, {layer: HAWQ quantizer name})."""
        from .bit_configs import hawq_bit_config

        return hawq_bit_config(self, names)

    def check_model(self, model: nn.Module) -> None:
        """Raise PlanFileError unless every planned layer exists in ``model`` with the same weight size."""
        owners = {x.name: weight_owner(model, x.name) for x in self.layers}
        missing = [x.name for x in self.layers if owners[x.name] is None]
        if missing:
            raise PlanFileError(
                f"the plan does not match this model: {len(missing)} planned layer(s) are missing from it "
                f"({', '.join(missing[:8])}{', ...' if len(missing) > 8 else ''}); was the plan made for another model?"
            )
        for x in self.layers:
            module, attr = owners[x.name]
            weight = getattr(module, attr, None)
            if not isinstance(weight, torch.Tensor) or weight.numel() != x.params:
                got = "no weight" if not isinstance(weight, torch.Tensor) else f"{weight.numel():,} weights"
                raise PlanFileError(
                    f"the plan does not match this model: layer {x.name!r} has {got}, the plan expects {x.params:,}"
                )
