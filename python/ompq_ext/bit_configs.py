"""A plan as HAWQ-V3's per-quantizer bit configuration (its ``bit_config.py`` dicts): {quantizer: bits}.

HAWQ-V3 names its quantizers after its own ResNets (``stage2.unit1.quant_convbn1``, the weights of a
convolution folded with its BatchNorm; ``stage2.unit1.quant_act``, the input of a unit; ...). A plan of a
torchvision ResNet (``layer2.0.conv1``, ``layer2.0.downsample.0``, ``conv1``, ``fc``) maps onto them one to
one: weight bits from the plan, every input quantizer at the plan's activation bits of the layer it feeds,
the 32-bit accumulators HAWQ re-quantizes at 16 bits as its configs have them. Other models: give
``names``, {layer: HAWQ quantizer name}, for the weights.
"""

from __future__ import annotations

import re

from .errors import OmpqValueError

_UNIT = re.compile(r"^layer(\d+)\.(\d+)\.(conv(\d+)|downsample\.0)$")
ACCUMULATOR_BITS = 16  # HAWQ's 'quant_act_int32' entries


def hawq_bit_config(plan, names: dict | None = None) -> dict[str, int]:
    if names is not None:
        if not isinstance(names, dict):
            raise OmpqValueError(f"names must be a dict {{layer name: HAWQ quantizer name}}, got {type(names).__name__}")
        missing = [x.name for x in plan.layers if x.name not in names]
        if missing:
            raise OmpqValueError(f"names lacks the planned layer(s) {', '.join(map(repr, missing[:8]))}")
        return {names[x.name]: x.bits for x in plan.layers}
    acts = plan.act_bits
    layers = {x.name: x for x in plan.layers}
    odd = [n for n in layers if n not in ("conv1", "fc") and not _UNIT.match(n)]
    if odd or "conv1" not in layers or "fc" not in layers:
        raise OmpqValueError(
            "the plan's layers do not follow torchvision's ResNet names (conv1, layerS.U.convK, "
            f"layerS.U.downsample.0, fc){': ' + ', '.join(map(repr, odd[:5])) if odd else ''}; "
            "give names={layer: HAWQ quantizer name}")
    bottleneck = any(_UNIT.match(n) and _UNIT.match(n).group(4) == "3" for n in layers)
    out = {"quant_input": _act(acts, "conv1"),
           "quant_init_convbn" if bottleneck else "quant_init_block_convbn": layers["conv1"].bits,
           "quant_act_int32": ACCUMULATOR_BITS}
    units = sorted({(int(m.group(1)), int(m.group(2))) for m in map(_UNIT.match, layers) if m})
    for stage, unit in units:
        prefix, here = f"stage{stage}.unit{unit + 1}", f"layer{stage}.{unit}"
        k = 1
        while f"{here}.conv{k}" in layers:
            name = f"{here}.conv{k}"
            out[f"{prefix}.quant_act" + ("" if k == 1 else str(k - 1))] = _act(acts, name)
            out[f"{prefix}.quant_convbn{k}"] = layers[name].bits
            k += 1
        if f"{here}.downsample.0" in layers:
            out[f"{prefix}.quant_identity_convbn"] = layers[f"{here}.downsample.0"].bits
        out[f"{prefix}.quant_act_int32"] = ACCUMULATOR_BITS
    out["quant_act_output"] = _act(acts, "fc")
    out["quant_output"] = layers["fc"].bits
    return out


def _act(acts, name) -> int:
    a = acts.get(name)
    return 32 if a is None else int(a)
