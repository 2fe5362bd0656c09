"""Label-free parameter-choice criteria: pick a sweep's setting without masks or landmarks.

A criterion is a registered class whose [`Criterion.score`][regzoo.criteria.Criterion.score] maps a
table of settings (one dict per setting: the swept parameter values and the label-free measures that
the sweep took from each setting's field, see
[`label_free_measures`][regzoo.criteria.label_free_measures]) to one score per setting, lower is
better. The same criterion chooses for a whole data set (the table of per-setting means) and for one
pair (that pair's rows). Nothing in a criterion knows a regularizer's or parameter's name, so every
criterion works with every regularizer, plugins included.

Third-party criteria register through the entry-point group ``regzoo.criteria`` or the
[`criterion`][regzoo.criteria.criterion] decorator. See docs/choosing.md for what each built-in
criterion measures and how close it comes to the TRE oracle.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from regzoo._errors import InputError
from regzoo.registry import Registry
from regzoo.spatial import gradient, warp

__all__ = [
    "CRITERIA",
    "MEASURES",
    "ChoiceTable",
    "Criterion",
    "Discrepancy",
    "InverseConsistency",
    "InvertibleFit",
    "LCurve",
    "available",
    "consensus_fit",
    "criterion",
    "gain_key",
    "get",
    "label_free_measures",
    "needs_backward",
]

MEASURES = (
    "similarity",
    "similarity_initial",
    "roughness",
    "displacement_mean",
    "inverse_consistency",
)
"""Label-free per-row measures a sweep records (``inverse_consistency`` only when it also
registers every pair backwards; a sweep with a similarity axis also records each axis
similarity's gain, [`gain_key`][regzoo.criteria.gain_key])."""


def gain_key(similarity: str) -> str:
    """The measure that holds a similarity's gain over the unregistered pair (its value before
    registration minus after, so larger is better): ``similarity_gain[model + ngf]``."""
    return f"similarity_gain[{similarity}]"


@dataclass(frozen=True)
class ChoiceTable:
    """What a criterion sees: one entry per setting of a sweep's grid (with a similarity axis,
    the settings of the one similarity the consensus chose,
    [`SweepResult.choose`][regzoo.sweeping.SweepResult.choose]).

    Attributes:
        names: the swept parameters (full names).
        settings: one dict per setting: the values of ``names`` and the label-free measures
            ([`MEASURES`][regzoo.criteria.MEASURES]), ``folding_fraction`` and ``sdlogj``; for a
            data set the means over its pairs, for one pair that pair's values.
    """

    names: Sequence[str]
    settings: Sequence[Mapping[str, Any]]

    def column(self, key: str) -> np.ndarray:
        """The values of ``key`` over the settings, as floats (``nan`` where missing)."""
        return np.array([float(s.get(key, np.nan)) for s in self.settings], dtype=float)


class Criterion:
    """Base class of registered parameter-choice criteria.

    Subclasses declare `requires` (the measures they read, checked before scoring) and
    implement [`score`][regzoo.criteria.Criterion.score]. Options are keyword arguments of the
    constructor.
    """

    requires: ClassVar[tuple[str, ...]] = ()
    registered_name: ClassVar[str]
    admits: ClassVar[str] = "only settings it scores finite"
    """Which settings the criterion can choose, for the one-line message when it admits none
    ([`regzoo.sweeping.SweepResult.choose`][regzoo.sweeping.SweepResult.choose] then chooses nothing)."""

    def __call__(self, table: ChoiceTable) -> np.ndarray:
        """Scores ``(len(table.settings),)``, lower is better (``inf``, or ``nan``, which
        becomes ``inf``: not admissible, never chosen; when every score is ``inf`` the
        criterion chooses nothing)."""
        name = type(self).__name__
        if not table.settings:
            raise InputError(f"criterion {name}: the table of settings is empty")
        missing = [k for k in self.requires if k not in table.settings[0]]
        if missing:
            raise InputError(f"criterion {name} needs the measures {missing}, which are missing")
        scores = np.asarray(self.score(table), dtype=float)
        if scores.shape != (len(table.settings),):
            raise InputError(
                f"criterion {name} returned scores of shape {scores.shape}, expected "
                f"({len(table.settings)},)"
            )
        return np.where(np.isnan(scores), np.inf, scores)

    def score(self, table: ChoiceTable) -> np.ndarray:
        """One score per setting, lower is better."""
        raise NotImplementedError

    @classmethod
    def summary(cls) -> str:
        """The first line of the class docstring."""
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


def _check_criterion(cls: type) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Criterion)):
        raise TypeError(f"a criterion must subclass regzoo.criteria.Criterion, got {cls!r}")


CRITERIA: Registry[Criterion] = Registry(
    "criterion",
    "regzoo.criteria",
    contract="a Criterion subclass: score(ChoiceTable) -> one float per setting, lower is better",
    check=_check_criterion,
)


def criterion(name: str) -> Callable[[type[Criterion]], type[Criterion]]:
    """Class decorator registering a [`Criterion`][regzoo.criteria.Criterion] under ``name``."""
    return CRITERIA.register(name)


def get(name: str) -> type[Criterion]:
    """The criterion class registered as ``name`` (close matches named when unknown)."""
    return CRITERIA.get(name)


def available() -> list[str]:
    """Names of every registered criterion."""
    return CRITERIA.available()


def needs_backward(name: str | None) -> bool:
    """Whether the criterion ``name`` reads ``inverse_consistency``, so that a sweep must also
    register every pair backwards (``None``: no criterion, no).

    Raises:
        UnknownNameError: an unknown criterion name, with close matches.
    """
    return name is not None and "inverse_consistency" in get(name).requires


def _unit(values: np.ndarray) -> np.ndarray:
    """Rescale to [0, 1] (a constant column maps to 0)."""
    span = np.nanmax(values) - np.nanmin(values)
    return (values - np.nanmin(values)) / span if span > 0 else np.zeros_like(values)


@criterion("invertible_fit")
class InvertibleFit(Criterion):
    """Best image similarity among the settings whose field does not fold (Jacobian > 0).

    Softer settings always match the images better; the softest one that keeps every voxel's
    Jacobian determinant positive is the plausible limit of that trend. Settings that fold
    score ``inf`` (ties are broken by the sweep towards less folding).
    """

    requires = ("similarity", "folding_fraction")
    admits = "only settings whose field does not fold"

    def score(self, table: ChoiceTable) -> np.ndarray:
        sim, folded = table.column("similarity"), table.column("folding_fraction")
        return np.where(folded > 0, np.inf, sim)


@criterion("discrepancy")
class Discrepancy(Criterion):
    """Discrepancy principle: the smoothest field that matches the images nearly as well as
    the best one.

    A setting qualifies when it reaches at least ``1 - tolerance`` of the largest similarity
    gain over the unregistered pair seen on the grid; among those, the one with the smallest
    roughness (mean squared displacement gradient) wins.

    Args:
        tolerance: fraction of the best similarity gain that may be given up (default 0.05).
    """

    requires = ("similarity", "similarity_initial", "roughness")
    admits = "only settings whose similarity gain over the unregistered pair is measured"

    def __init__(self, tolerance: float = 0.05) -> None:
        if not 0.0 <= tolerance < 1.0:
            raise InputError(f"Discrepancy: tolerance must be in [0, 1), got {tolerance}")
        self.tolerance = tolerance

    def score(self, table: ChoiceTable) -> np.ndarray:
        sim, start = table.column("similarity"), table.column("similarity_initial")
        gain = start - sim
        qualifies = gain >= (1.0 - self.tolerance) * np.nanmax(gain)
        return np.where(qualifies, table.column("roughness"), np.inf)


@criterion("lcurve")
class LCurve(Criterion):
    """L-curve corner: the knee of the trade-off between image similarity and roughness.

    The settings that no other setting beats on both similarity and roughness (the Pareto
    front) form the L-curve; with log roughness and similarity each scaled to [0, 1], the
    corner is the point of the front farthest below the chord joining its two ends. Settings
    off the front score ``inf``.
    """

    requires = ("similarity", "roughness")
    admits = "only settings whose similarity and roughness are measured"

    def score(self, table: ChoiceTable) -> np.ndarray:
        sim = table.column("similarity")
        rough = np.log(np.maximum(table.column("roughness"), 1e-12))
        n = len(sim)
        beaten = (sim[None] <= sim[:, None]) & (rough[None] <= rough[:, None])
        beaten &= (sim[None] < sim[:, None]) | (rough[None] < rough[:, None])
        front = ~beaten.any(axis=1)
        scores = np.full(n, np.inf)
        index = np.flatnonzero(front)
        x, y = _unit(rough[index]), _unit(sim[index])
        order = np.argsort(x)
        (x0, y0), (x1, y1) = (x[order[0]], y[order[0]]), (x[order[-1]], y[order[-1]])
        chord = np.hypot(x1 - x0, y1 - y0)
        if len(index) <= 2 or chord == 0:  # no corner: the front point nearest the utopia point
            scores[index] = np.hypot(x, y)
            return scores
        # signed distance below the chord from the smoothest to the best-matching end
        scores[index] = ((x1 - x0) * (y - y0) - (y1 - y0) * (x - x0)) / chord
        return scores


@criterion("inverse_consistency")
class InverseConsistency(Criterion):
    """The setting whose forward and backward registrations are closest to inverse to each
    other, relative to how far they move.

    ``inverse_consistency`` is the mean of ``|u_f(x) + u_b(x + u_f(x))|`` (voxels), the gap
    left by composing the forward field with the field of the reversed pair at the same
    setting; the score is that gap divided by the mean displacement. Soft settings fit noise
    that the reversed pair does not share, stiff ones stop short differently in each direction;
    both leave a larger relative gap. A setting whose fields hardly move (mean displacement
    below ``min_displacement`` voxels) says nothing about consistency and is never chosen.
    Needs the sweep to register every pair in both directions.

    Args:
        min_displacement: smallest mean displacement (voxels) of a setting that can be chosen.
    """

    requires = ("inverse_consistency", "displacement_mean")
    admits = "only settings whose mean displacement exceeds min_displacement voxels"

    def __init__(self, min_displacement: float = 1e-2) -> None:
        if min_displacement < 0:
            raise InputError(
                f"InverseConsistency: min_displacement must be >= 0, got {min_displacement}"
            )
        self.min_displacement = min_displacement

    def score(self, table: ChoiceTable) -> np.ndarray:
        gap, size = table.column("inverse_consistency"), table.column("displacement_mean")
        moves = size > self.min_displacement
        return np.where(moves, gap / np.where(moves, size, 1.0), np.inf)


@torch.no_grad()
def label_free_measures(
    similarity: torch.nn.Module,
    fixed: torch.Tensor,
    moving: torch.Tensor,
    fields: torch.Tensor,
    backward: torch.Tensor | None = None,
    yardsticks: Mapping[str, torch.nn.Module] | None = None,
) -> list[dict[str, float]]:
    """The label-free measures of fields ``(B, D, *spatial)`` registering ``moving`` to
    ``fixed`` (both ``(B, 1, *spatial)``, normalised as the network sees them).

    Returns one dict per batch element: ``similarity`` (the model's similarity loss of the
    warped image), ``similarity_initial`` (before registration), ``roughness`` (mean squared
    Frobenius norm of the displacement gradient, voxels), ``displacement_mean`` (mean length
    of the displacement, voxels) and, given the ``backward`` fields of the reversed pair at the
    same settings, ``inverse_consistency`` (mean ``|u_f(x) + u_b(x + u_f(x))|``, voxels), and,
    given ``yardsticks`` (similarities by their text), each one's gain over the unregistered
    pair under [`gain_key`][regzoo.criteria.gain_key] (what
    [`consensus_fit`][regzoo.criteria.consensus_fit] reads).
    """
    warped = warp(moving, fields)
    sim = similarity(fixed, warped)
    start = similarity(fixed, moving)
    gains = {
        name: yardstick(fixed, moving) - yardstick(fixed, warped)
        for name, yardstick in (yardsticks or {}).items()
    }
    rough = gradient(fields).pow(2).sum((1, 2)).flatten(1).mean(1)
    size = fields.norm(dim=1).flatten(1).mean(1)
    gap = None
    if backward is not None:
        gap = (fields + warp(backward, fields)).norm(dim=1).flatten(1).mean(1)
    rows = []
    for b in range(fields.shape[0]):
        row = {
            "similarity": float(sim[b]),
            "similarity_initial": float(start[b]),
            "roughness": float(rough[b]),
            "displacement_mean": float(size[b]),
        }
        if gap is not None:
            row["inverse_consistency"] = float(gap[b])
        row.update({gain_key(name): float(gain[b]) for name, gain in gains.items()})
        rows.append(row)
    return rows


def consensus_fit(entries: Sequence[Mapping[str, Any]], similarities: Sequence[str]) -> np.ndarray:
    """How well each entry's field matches the images by every similarity at once: the mean
    over ``similarities`` of the entry's gain under that similarity (the measure
    [`gain_key`][regzoo.criteria.gain_key]) divided by the largest gain any entry reaches
    under it; 1 for an entry that is the best match by every similarity.

    A sweep with a similarity axis chooses its refinement similarity by this fit
    ([`SweepResult.choose`][regzoo.sweeping.SweepResult.choose]): refinement under one
    similarity can improve that similarity's own measure at the expense of the others (it fits
    what the measure alone rewards), so no single similarity is a fair yardstick for choosing
    among them; the fit asks for agreement of all of them. A similarity that no entry improves
    over the unregistered pair cannot tell the entries apart and is left out of the mean; a
    missing or non-finite gain counts as ``-inf`` (that entry is never the best).

    Args:
        entries: settings (or one pair's rows) holding the gain of every similarity.
        similarities: the similarity texts whose gains are averaged.

    Returns:
        ``(len(entries),)`` fits, at most 1 (``-inf`` for an entry with a missing or
        non-finite gain under a similarity that counts).

    Raises:
        InputError: no entries or no similarities, or no entry improves any similarity.
    """
    if not entries or not similarities:
        raise InputError("consensus_fit: needs at least one entry and one similarity")
    fractions = []
    for name in similarities:
        gains = np.array([float(e.get(gain_key(name), -np.inf)) for e in entries], dtype=float)
        gains[~np.isfinite(gains)] = -np.inf  # NaN or missing: never the best
        best = np.max(gains)
        if best > 0:
            fractions.append(gains / best)
    if not fractions:
        raise InputError(
            "no setting improves any of the similarities "
            f"{', '.join(map(repr, similarities))} over the unregistered pair, so none can be "
            "chosen by their consensus"
        )
    return np.mean(fractions, axis=0)
