"""The plan file: versioned JSON, read back with every field checked.

Format ``ompq_ext.plan``, version 1: the top-level fields ``layers``, ``groups``, ``orm``,
``totals``, ``budgets``, ``solver``, ``settings``, ``timing``, ``model``, ``skipped``. Fields
added since the first files (``settings.method``, ``budgets[].limit``, ``layers[].functional``,
``layers[].channel_axis``, ``layers[].act_bits``, ``totals.scale_bits``, ``settings.group_size`` / ``scale_bits``: absent in
files written before scales were counted in the size, which read as 0 / None) are optional, so every version-1 file written so far still loads. A
plan whose method does not measure orthogonality (any method but "ompq") has null ``orm`` and may
have null ``gamma`` / ``log_theta`` / ``weight``.

This module works on plain dicts; ``record.Plan`` turns them into typed records.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ._version import __version__
from .errors import PlanFileError

PLAN_FORMAT = "ompq_ext.plan"
PLAN_VERSION = 1


def header() -> dict:
    """The fields that open every plan file."""
    return {"format": PLAN_FORMAT, "version": PLAN_VERSION, "ompq_ext_version": __version__}


def write(path, data: dict) -> None:
    Path(path).write_text(json.dumps(data, indent=1))


def read(path) -> dict:
    """The checked contents of a plan file (see ``check``)."""
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
    return check(data, source=str(path))


class _Reader:
    """Typed field access with errors that name the file (``source``) and the field."""

    def __init__(self, source: str):
        self.source = source

    def need(self, obj, key, kind, where, *, optional=False, nullable=False):
        if not isinstance(obj, dict) or key not in obj:
            if optional and isinstance(obj, dict):
                return None
            raise PlanFileError(f"{self.source}: {where} lacks the field {key!r}")
        value = obj[key]
        if value is None and nullable:
            return None
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and int not in kinds and isinstance(value, int) and not isinstance(value, bool):
            return float(value)  # a hand-edited 1 for 1.0
        if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
            names = " or ".join(k.__name__ for k in kinds)
            raise PlanFileError(f"{self.source}: {where}.{key} should be {names}, got {type(value).__name__}")
        return value

    def fields(self, obj, spec, where) -> dict:
        """{key: value} for ``spec`` = {key: (kind, optional)}."""
        return {key: self.need(obj, key, kind, where, optional=optional) for key, (kind, optional) in spec.items()}


_TOTALS = {"size_bits": (int, False), "size_bytes": (float, False), "size_mib": (float, False),
           "fp32_size_bytes": (int, False), "fp32_size_mib": (float, False), "avg_bits": (float, False),
           "bops": (int, False), "planned_params": (int, False), "other_params": (int, False),
           "latency": (float, True), "scale_bits": (int, True)}
_SOLVER = {"status": (str, False), "objective": (float, False), "bound": (float, False), "gap": (float, False),
           "solve_time_s": (float, False), "engine": (str, True)}


def check(data, source: str = "plan") -> dict:
    """Check a plan file's contents; return its fields (``orm`` as a float64 array or None)."""
    r = _Reader(source)
    if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
        raise PlanFileError(f"{source} is not an ompq_ext plan (no \"format\": \"{PLAN_FORMAT}\")")
    version = data.get("version")
    if version != PLAN_VERSION:
        raise PlanFileError(
            f"{source} has plan format version {version!r}; this ompq_ext reads version {PLAN_VERSION}"
        )
    settings = r.need(data, "settings", dict, "plan")
    method = settings.get("method", "ompq")
    scored = method == "ompq"  # OMPQ plans carry gamma, log_theta, weight and the ORM matrix
    layers = []
    for i, raw in enumerate(r.need(data, "layers", list, "plan")):
        where = f"layers[{i}]"
        layer = {
            "name": r.need(raw, "name", str, where), "kind": r.need(raw, "kind", str, where),
            "group": r.need(raw, "group", str, where), "params": r.need(raw, "params", int, where),
            "macs": r.need(raw, "macs", int, where),
            **{key: r.need(raw, key, float, where, nullable=not scored) for key in ("gamma", "log_theta", "weight")},
            "bits": r.need(raw, "bits", int, where), "fixed": r.need(raw, "fixed", bool, where),
            "functional": bool(r.need(raw, "functional", bool, where, optional=True)),
            "channel_axis": r.need(raw, "channel_axis", int, where, optional=True) or 0,
            "act_bits": r.need(raw, "act_bits", int, where, optional=True, nullable=True),
        }
        if not 1 <= layer["bits"] <= 16:
            raise PlanFileError(f"{source}: {where} ({layer['name']}) has bits {layer['bits']}, outside 1..16")
        if layer["channel_axis"] < 0:
            raise PlanFileError(f"{source}: {where} ({layer['name']}) has a negative channel_axis")
        if layer["act_bits"] is not None and not 1 <= layer["act_bits"] <= 32:
            raise PlanFileError(f"{source}: {where} ({layer['name']}) has act_bits {layer['act_bits']}, outside 1..32")
        if layer["params"] <= 0 or layer["macs"] < 0:
            raise PlanFileError(f"{source}: {where} ({layer['name']}) has a non-positive parameter count")
        layers.append(layer)
    if not layers:
        raise PlanFileError(f"{source} plans no layers")
    names = [x["name"] for x in layers]
    if len(set(names)) != len(names):
        raise PlanFileError(f"{source} names a layer twice")
    orm = r.need(data, "orm", list, "plan", nullable=not scored)
    if orm is not None:
        try:
            orm = np.asarray(orm, dtype=np.float64)
        except (TypeError, ValueError):
            raise PlanFileError(f"{source}: orm is not a numeric matrix") from None
        if orm.shape != (len(layers), len(layers)):
            raise PlanFileError(f"{source}: orm has shape {orm.shape}, expected {(len(layers), len(layers))}")
    groups = r.need(data, "groups", list, "plan")
    for i, g in enumerate(groups):
        for key, kind in (("name", str), ("layers", list), ("params", int), ("bits", int), ("fixed", bool)):
            r.need(g, key, kind, f"groups[{i}]")
    by_name = {x["name"]: x for x in layers}
    covered = []
    for g in groups:
        for member in g["layers"]:
            if not isinstance(member, str) or member not in by_name:
                raise PlanFileError(f"{source}: group {g['name']!r} lists {member!r}, which is not a planned layer")
            layer = by_name[member]
            if layer["bits"] != g["bits"] or layer["group"] != g["name"]:
                raise PlanFileError(f"{source}: group {g['name']!r} and its layer {member!r} disagree")
            covered.append(member)
    if sorted(covered) != sorted(names):
        raise PlanFileError(f"{source}: the groups do not list every planned layer exactly once")
    budgets = []
    for i, b in enumerate(r.need(data, "budgets", list, "plan")):
        budgets.append(r.fields(b, {"kind": (str, False), "value": ((str, float), False),
                                    "description": (str, False), "text": (str, True),
                                    "limit": ((int, float), True)}, f"budgets[{i}]"))
    model = r.need(data, "model", dict, "plan")
    return {
        "layers": layers, "groups": groups, "orm": orm,
        "totals": r.fields(r.need(data, "totals", dict, "plan"), _TOTALS, "totals"),
        "budgets": budgets,
        "solver": r.fields(r.need(data, "solver", dict, "plan"), _SOLVER, "solver"),
        "settings": settings,
        "timing": r.need(data, "timing", dict, "plan"),
        "model": {"class": r.need(model, "class", str, "model"), "total_params": r.need(model, "total_params", int, "model")},
        "skipped": r.need(data, "skipped", list, "plan"),
    }
