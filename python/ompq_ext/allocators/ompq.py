"""OMPQ: a layer more orthogonal to the others (linear CKA of their features on the planning
samples) matters more, so it gets a larger objective weight (METHOD.md, steps 2-4).

Every setting of the paper's reference code is reachable: ``objective="suffix_mean"``, its
``beta`` (10 or 100), block-output features (``feature_point="activation"``), BatchNorm in
training mode (``plan(bn_mode="batch")``) and bits 2-8 (``plan(bits=range(2, 9))``). The
defaults differ where the allocation-quality study measured better plans (docs/QUALITY.md).
"""

from __future__ import annotations

import warnings

from ..errors import OmpqValueError, check_choice, user_stacklevel
from ..features import FEATURE_POINTS, GramCollector
from ..orthogonality import (ESTIMATORS, OBJECTIVES, check_beta, constant_as_redundant, importance, log_theta,
                             objective_weights, orm_matrix)
from .base import Allocator, Scores, ScoringInput

# Defaults set by the allocation-quality study (docs/QUALITY.md, "Defaults"): beta 0.03..0.3 give the
# same plans and beta >= 1 loses accuracy; objective "layer" (theta_i alone) beats the reference's
# "suffix_mean" where they differ; the feature point and num_samples 16..64 change nothing measurable.
DEFAULT_BETA = 0.1
DEFAULT_OBJECTIVE = "layer"


class OMPQ(Allocator):
    """Orthogonality of each layer's features to every other layer's -> objective weights. Where the
    activation bits are chosen too, a layer's weight multiplies its weight bits + activation bits (its
    importance applies to both: the paper plans weights alone).

    beta: sharpness of theta_i = exp(-beta * gamma_i). objective: "layer" (theta_i alone) or
    "suffix_mean" (the reference code: the mean of theta over layer i and every later layer).
    feature_point: "output" (each layer's own output) or "activation" (the output of the first
    activation module that runs after it). estimator: "biased" (the paper's HSIC) or "unbiased".
    """

    name = "ompq"
    scores_act_bits = True
    min_samples = 4  # fewer samples leave the centred Grams too little room to tell layers apart

    def __init__(self, *, beta: float = DEFAULT_BETA, objective: str = DEFAULT_OBJECTIVE,
                 feature_point: str = "output", estimator: str = "biased", num_threads: int = 0):
        check_choice("objective", objective, OBJECTIVES)
        check_choice("estimator", estimator, ESTIMATORS)
        check_choice("feature_point", feature_point, FEATURE_POINTS)
        check_beta(beta)
        self.beta, self.objective, self.feature_point, self.estimator = beta, objective, feature_point, estimator
        self.num_threads = num_threads

    def check(self, num_samples):
        if self.estimator == "unbiased" and num_samples < 4:
            raise OmpqValueError(f"the unbiased estimator needs num_samples >= 4, got {num_samples}")

    def collectors(self, layers, num_samples):
        return [GramCollector(layers, num_samples, num_threads=self.num_threads)]

    def scores(self, data: ScoringInput) -> Scores:
        (grams,) = data.collectors
        names = [x.name for x in data.layers]
        orm, constant = constant_as_redundant(orm_matrix(grams.grams_of(data.indices), self.estimator,
                                                         self.num_threads))
        if constant:
            warnings.warn(f"{len(constant)} layer(s) gave the same features for every sample, so their orthogonality "
                          f"is undefined: {', '.join(repr(names[i]) for i in constant[:8])}"
                          f"{', ...' if len(constant) > 8 else ''}; each is planned as fully redundant with every "
                          f"other layer (the smallest objective weight). Exclude them or use more varied samples "
                          f"to plan them otherwise.", stacklevel=user_stacklevel())
        gamma = importance(orm)
        logt = log_theta(gamma, self.beta)
        weights = objective_weights(logt, self.objective)
        return Scores(weights=dict(zip(names, map(float, weights))), gamma=dict(zip(names, map(float, gamma))),
                      log_theta=dict(zip(names, map(float, logt))), orm=orm)

    def settings(self) -> dict:
        return {"beta": self.beta, "objective": self.objective, "feature_point": self.feature_point,
                "estimator": self.estimator}
