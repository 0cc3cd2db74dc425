"""Errors of offline evaluation. Each is a :class:`shelf.errors.ShelfError`, never a silent zero."""

from __future__ import annotations

from shelf.errors import ShelfError


class EvaluationError(ShelfError):
    """Base of every error raised by ``shelf.evaluation``."""


class EmptySplitError(EvaluationError):
    """A split has no training events or no test events at all."""


class NoTestUsersError(EvaluationError):
    """A cut leaves no user who has both history before the cut and events after it."""


class LeakageError(EvaluationError):
    """A training input carries information from at or after the cut."""


class InvalidCutoffError(EvaluationError):
    """A cut-off K that cannot be evaluated (not positive, or larger than the catalogue)."""


class ModelOutputError(EvaluationError):
    """A model returned something evaluation cannot trust: unknown ids, duplicates, NaN, bad shape."""
