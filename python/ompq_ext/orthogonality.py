"""The ORM matrix and the importance of each layer (METHOD.md steps 3 and 4).

ORM(i, j) is linear CKA between the features of layers i and j, computed by
the core from their Gram matrices with one product. gamma_i is the row sum
without the diagonal; theta_i = exp(-beta * gamma_i). theta is kept in the log
domain and normalised so its largest value is 1 -- with the reference's beta
(10 or 100) raw theta underflows, and an exact solver only needs the ratios.
"""

from __future__ import annotations

import numpy as np
import torch

from . import _core, cuda_kernels
from .errors import OmpqValueError

ESTIMATORS = ("biased", "unbiased")
OBJECTIVES = ("suffix_mean", "layer")


def orm_matrix(grams, estimator: str = "biased", num_threads: int = 0) -> np.ndarray:
    """L x L linear-CKA matrix from (L, N, N) Grams (a numpy array, or a CUDA tensor: then formed on
    its GPU). A layer whose features do not vary across the samples has no CKA: its row and column
    are NaN (see ``constant_as_redundant``)."""
    if estimator not in ESTIMATORS:
        raise OmpqValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    n = grams.shape[1]
    if estimator == "unbiased" and n < 4:
        raise OmpqValueError(f"the unbiased estimator needs at least 4 samples, got num_samples={n}")
    if isinstance(grams, torch.Tensor):
        orm = cuda_kernels.orm_matrix(grams, estimator)
    else:
        orm = _core.orm_matrix(np.ascontiguousarray(grams, dtype=np.float64), estimator, num_threads)
    return orm


def constant_as_redundant(orm: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """The ORM matrix with every constant layer (NaN diagonal: the same features for every sample)
    counted as fully redundant with every other layer (ORM 1), and those layers' indices.

    A constant layer carries no information about the samples, so it gets the largest gamma and
    the smallest objective weight; every other layer's gamma rises by the same 1, which changes no
    other layer's weight under objective="layer"."""
    constant = [i for i in range(len(orm)) if np.isnan(orm[i, i])]
    if constant:
        orm = orm.copy()
        orm[constant, :] = 1.0
        orm[:, constant] = 1.0
    return orm, constant


def importance(orm: np.ndarray) -> np.ndarray:
    """gamma_i = sum over j != i of ORM(i, j)."""
    return orm.sum(axis=1) - np.diagonal(orm)


def check_beta(beta) -> None:
    try:
        ok = bool(np.isfinite(beta) and beta > 0)
    except TypeError:
        ok = False
    if not ok:
        raise OmpqValueError(f"beta must be a positive finite number, got {beta!r}")


def log_theta(gamma: np.ndarray, beta: float) -> np.ndarray:
    """log(theta_i / max theta) = -beta * (gamma_i - min gamma): never underflows."""
    check_beta(beta)
    return -beta * (gamma - gamma.min())


def objective_weights(log_theta_values: np.ndarray, objective: str = "suffix_mean") -> np.ndarray:
    """Weights of the allocation objective, in the layers' execution order, largest 1.

    ``"layer"``: theta_i alone. ``"suffix_mean"`` (the reference code): the mean of
    theta over layer i and every later layer.
    """
    if objective not in OBJECTIVES:
        raise OmpqValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    theta = np.exp(log_theta_values)  # in (0, 1], max exactly 1
    if objective == "layer":
        weights = theta
    else:
        suffix_sums = np.cumsum(theta[::-1])[::-1]
        weights = suffix_sums / np.arange(len(theta), 0, -1)
    return weights / weights.max()
