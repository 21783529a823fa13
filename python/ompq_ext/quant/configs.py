"""Quantization recipes as config objects, one class per method, looked up by name in ``CONFIGS``
(as torchao's ``quantize_(model, config)``): ``quantize(model, plan, calib, BRECQConfig(iters=2000))``.
The keyword form ``quantize(model, plan, calib, method="brecq", iters=2000)`` builds the same config.
A new recipe is a new config class here and its entry in ``CONFIGS`` (docs/ARCHITECTURE.md)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

from ..errors import OmpqTypeError, OmpqValueError, check_choice
from .modules import ACT_METHODS, SCALE_METHODS
from .ops import check_group_size


NUM_CALIB = 256  # calibration samples when num_calib is not given


@dataclass(frozen=True)
class RTNConfig:
    """Round to nearest: per-output-channel weights at the planned bits ("minmax" or "mse" scales),
    or per group of ``group_size`` input columns (None: the plan's), per-tensor input activations at
    ``act_bits`` (None: the plan's; 0: weights only), their range from ``act_calib`` ("minmax",
    "percentile", "mse", or "dynamic": per token at run time) over at most ``num_calib`` calibration
    samples (None: 256; a loader with fewer gives all it has, with a warning when num_calib was given)."""

    method: ClassVar[str] = "rtn"
    weight_scale: str = "mse"
    group_size: int | None = None
    act_bits: int | None = None
    act_calib: str = "mse"
    num_calib: int | None = None
    mask_padding: bool = True  # leave padded positions (a batch's attention_mask) out of the statistics

    def __post_init__(self):
        check_choice("weight_scale", self.weight_scale, SCALE_METHODS)
        check_choice("act_calib", self.act_calib, ACT_METHODS)
        check_group_size(self.group_size)
        if self.num_calib is not None and (isinstance(self.num_calib, bool) or not isinstance(self.num_calib, int)
                                           or self.num_calib < 2):
            raise OmpqValueError(f"num_calib must be an integer >= 2 (or None: {NUM_CALIB}), got {self.num_calib!r}")

    def reconstruction_options(self) -> dict:
        """The options of ``quant.reconstruct.reconstruct`` (none for plain rounding)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _RTN_FIELDS}


_RTN_FIELDS = {f.name for f in fields(RTNConfig)}


def _check_positive_ints(config, names) -> None:
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise OmpqValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class AdaRoundConfig(RTNConfig):
    """Learned rounding, layer by layer (AdaRound): ``iters`` Adam steps per layer; see
    ``quant.reconstruct.reconstruct`` for every option."""

    method: ClassVar[str] = "adaround"
    iters: int = 500
    reg_weight: float = 0.01
    batch_size: int = 32
    lr: float = 1e-2
    warmup: float = 0.2
    beta_range: tuple[float, float] = (20.0, 2.0)
    chunk_size: int = 256
    keep_best: bool = True

    def __post_init__(self):
        super().__post_init__()
        _check_positive_ints(self, ("iters", "batch_size", "chunk_size"))
        try:
            ok = (self.reg_weight >= 0 and self.lr > 0 and 0 <= self.warmup < 1 and len(self.beta_range) == 2
                  and all(b > 0 for b in self.beta_range))
        except TypeError:
            ok = False
        if not ok:
            raise OmpqValueError("need reg_weight >= 0, lr > 0, 0 <= warmup < 1 and beta_range = (start, end) > 0; "
                                 f"got reg_weight={self.reg_weight!r}, lr={self.lr!r}, warmup={self.warmup!r}, "
                                 f"beta_range={self.beta_range!r}")


@dataclass(frozen=True)
class GPTQConfig(RTNConfig):
    """GPTQ: each layer's weights rounded column by column with the error fed forward through the
    inverse of its input second moment (``quant.gptq``), on the scales round to nearest would use.
    ``damp``: added to the moment's diagonal, as a fraction of its mean; ``block_size``: columns per
    lazy update; ``act_order``: round the columns with the largest input energy first; ``keep_best``:
    a layer whose GPTQ error on the calibration inputs exceeds round to nearest's keeps the latter."""

    method: ClassVar[str] = "gptq"
    damp: float = 0.01
    block_size: int = 128
    act_order: bool = False
    keep_best: bool = True
    chunk_size: int = 64

    def __post_init__(self):
        super().__post_init__()
        _check_positive_ints(self, ("block_size", "chunk_size"))
        if isinstance(self.damp, bool) or not isinstance(self.damp, (int, float)) or not 0 < self.damp < 1e6:
            raise OmpqValueError(f"damp must be a number > 0 (a fraction of the moment's mean diagonal), got {self.damp!r}")
        if not isinstance(self.act_order, bool) or not isinstance(self.keep_best, bool):
            raise OmpqValueError(f"act_order and keep_best must be True or False, got {self.act_order!r}, "
                                 f"{self.keep_best!r}")


@dataclass(frozen=True)
class BRECQConfig(AdaRoundConfig):
    """Learned rounding block by block (BRECQ): ``blocks`` names them (None: found generically)."""

    method: ClassVar[str] = "brecq"
    blocks: tuple[str, ...] | None = None


CONFIGS: dict[str, type[RTNConfig]] = {c.method: c for c in (RTNConfig, GPTQConfig, AdaRoundConfig, BRECQConfig)}


def make_config(method: str = "rtn", **options) -> RTNConfig:
    """The config of ``method`` with ``options`` (the keyword form of ``quantize``)."""
    check_choice("method", method, tuple(CONFIGS))
    cls = CONFIGS[method]
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        owners = [m for m, c in CONFIGS.items() if set(unknown) <= {f.name for f in fields(c)}]
        where = (f"they are options of method={' or '.join(map(repr, owners))}" if owners
                 else f"method={method!r} takes {', '.join(sorted(known))}")
        raise OmpqValueError(f"{', '.join(unknown)}: unknown argument(s) for method={method!r}; {where}")
    return cls(**options)


def as_config(config) -> RTNConfig:
    if not isinstance(config, RTNConfig):
        raise OmpqTypeError(f"config must be one of {', '.join(c.__name__ for c in CONFIGS.values())}, "
                            f"got {type(config).__name__}")
    return config
