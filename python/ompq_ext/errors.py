"""The one exception family of ompq_ext.

Every error says what was wrong, where (argument or layer name) and what to do.
"""


class OmpqError(Exception):
    """Base class of every error raised by ompq_ext."""


class OmpqValueError(OmpqError, ValueError):
    """An argument has a bad value (unknown unit, empty bit set, bad shape...)."""


class OmpqTypeError(OmpqError, TypeError):
    """An argument has the wrong type (not a module, a batch of an unknown kind...)."""


class InfeasibleBudgetError(OmpqValueError):
    """No allocation satisfies the budget(s); the message names the smallest achievable value."""

    def __init__(self, message, smallest=None):
        super().__init__(message)
        self.smallest = smallest


class FeatureError(OmpqError):
    """The feature pass failed (NaN/Inf features, too few samples, a layer never ran...)."""


class PlanFileError(OmpqValueError):
    """A plan file is malformed or does not match the model it is applied to."""


def check_choice(argument: str, value, choices) -> None:
    """Raise OmpqValueError unless ``value`` is one of ``choices``, naming the argument and the choices."""
    try:
        ok = isinstance(value, str) and value in choices
    except TypeError:
        ok = False
    if not ok:
        raise OmpqValueError(f"{argument} must be one of {tuple(choices)}, got {value!r}")


def user_stacklevel() -> int:
    """The ``warnings.warn`` stacklevel, for the function calling this, that names the first frame outside
    ompq_ext: a warning points at the user's line however deep in the package it is raised."""
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(here):
        frame, level = frame.f_back, level + 1
    return level
