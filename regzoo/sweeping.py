"""Test-time parameter discovery: grid sweeps and per-pair gradient-based optimisation.

The module is long because the grid sweep, its batching over settings and the per-pair parameter
optimisation share the scoring code; the report around them is [`regzoo.study`][regzoo.study].
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from regzoo._errors import InputError, UnknownNameError, unknown_name_message
from regzoo.criteria import (
    MEASURES,
    ChoiceTable,
    Criterion,
    consensus_fit,
    gain_key,
    label_free_measures,
)
from regzoo.criteria import available as available_criteria
from regzoo.criteria import get as get_criterion
from regzoo.data.learn2reg import Learn2RegDataset
from regzoo.evaluation import item_labels, score_pair, summarize
from regzoo.refinement import RefineOptions
from regzoo.refinement import refine as refine_output
from regzoo.registration_model import (
    RegistrationModel,
    check_finite_field,
    field_objective,
    result_objective,
)
from regzoo.similarity import parse_similarity
from regzoo.spatial import warp

__all__ = [
    "MAX_SETTINGS",
    "GridRange",
    "SweepResult",
    "as_grid",
    "optimize_dataset",
    "optimize_parameters",
    "parse_grid",
    "sweep",
]

MAXIMIZE = {
    "dice": True,
    "dice_labels": True,
    "tre_mm": False,
    "sdlogj": False,
    "folding_fraction": False,
}


MAX_SETTINGS = 10_000
"""Largest number of grid settings a sweep accepts (a typo like ``:1000000000`` fails fast)."""


@dataclass(frozen=True)
class GridRange:
    """``START:STOP:COUNT``: ``count`` values spaced evenly on the parameter's own scale
    (geometrically for log-scale parameters), resolved when the sweep knows the model."""

    start: float
    stop: float
    count: int


GridAxis = Sequence[float] | GridRange


def parse_grid(specs: Sequence[str]) -> dict[str, GridAxis]:
    """Parse ``NAME=START:STOP:COUNT`` (inclusive, on the parameter's scale) or
    ``NAME=V1,V2,...`` entries.

    Raises:
        ValueError: for a malformed entry, a repeated name or more than
            [`MAX_SETTINGS`][regzoo.sweeping.MAX_SETTINGS] settings in total.
    """
    grid: dict[str, GridAxis] = {}
    usage = "must look like NAME=START:STOP:COUNT or NAME=V1,V2"
    total = 1
    for spec in specs:
        name, sep, text = spec.partition("=")
        if not sep or not name or not text:
            raise InputError(f"grid entry {spec!r} {usage}")
        if name in grid:
            raise InputError(f"grid parameter '{name}' given twice")
        try:
            if ":" in text:
                start, stop, count = text.split(":")
                size = int(count)
                axis: GridAxis = GridRange(float(start), float(stop), size)
            else:
                axis = [float(v) for v in text.split(",")]
                size = len(axis)
        except ValueError:
            raise InputError(f"grid entry {spec!r} {usage}") from None
        if size < 1:
            raise InputError(f"grid entry {spec!r}: COUNT must be at least 1")
        total *= size
        if total > MAX_SETTINGS:
            raise InputError(
                f"grid entry {spec!r}: the grid would have {total} settings, more than "
                f"{MAX_SETTINGS}; use fewer points"
            )
        grid[name] = axis
    return grid


@dataclass
class SweepResult:
    """Metrics of every (setting, pair) of a sweep.

    Attributes:
        names: swept parameters (full names), in grid order.
        axes: the values of each swept parameter.
        rows: one dict per setting and pair: parameter values, ids and metrics.
        settings: one dict per setting: its parameter values and the mean metrics over pairs.
        scales: each swept parameter's scale (``"linear"`` or ``"log"``), for figures.
        max_folding: if set, a setting (or a pair's row) whose folded-voxel fraction exceeds it
            is not eligible as the best: it ranks after every eligible one.
        similarities: the similarity axis of an exact sweep that refined every setting under
            several similarities (texts of
            [`parse_similarity`][regzoo.similarity.parse_similarity]), in order; then every
            row and setting also holds its ``refine_similarity``, and ``settings`` runs over the grid once per similarity. Empty: no such axis.
    """

    names: list[str]
    axes: list[list[float]]
    rows: list[dict[str, Any]]
    settings: list[dict[str, Any]]
    scales: list[str] = field(default_factory=list)
    max_folding: float | None = None
    similarities: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.scales:
            self.scales = ["linear"] * len(self.names)

    @property
    def keys(self) -> list[str]:
        """What identifies a setting: the swept parameters, then ``refine_similarity`` when the
        sweep has a similarity axis."""
        return [*self.names, *(["refine_similarity"] if self.similarities else [])]

    def part(self, similarity: str) -> SweepResult:
        """The sweep restricted to one similarity of its similarity axis (no axis left).

        Raises:
            UnknownNameError: ``similarity`` is not on the axis.
        """
        if similarity not in self.similarities:
            raise UnknownNameError(
                unknown_name_message("refinement similarity", similarity, self.similarities)
            )

        def keep(entries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
            return [e for e in entries if e.get("refine_similarity") == similarity]

        return SweepResult(
            names=list(self.names),
            axes=[list(a) for a in self.axes],
            rows=keep(self.rows),
            settings=keep(self.settings),
            scales=list(self.scales),
            max_folding=self.max_folding,
        )

    def default_metric(self) -> str:
        """``dice`` when masks were scored, else ``tre_mm``, else ``sdlogj``."""
        for metric in ("dice", "tre_mm", "sdlogj"):
            if self.settings and metric in self.settings[0]:
                return metric
        raise InputError("no metric to rank settings by")

    def _order(self, metric: str | None) -> Callable[[dict[str, Any]], tuple[bool, float]]:
        """Sort key: ineligible (too much folding) last, then the metric, best first."""
        metric = metric or self.default_metric()
        if self.settings and metric not in self.settings[0]:
            raise UnknownNameError(
                unknown_name_message(
                    "metric", metric, [k for k in self.settings[0] if k in MAXIMIZE]
                )
            )
        sign = -1.0 if MAXIMIZE.get(metric, False) else 1.0
        limit = self.max_folding

        def key(entry: dict[str, Any]) -> tuple[bool, float]:
            folded = limit is not None and entry.get("folding_fraction", 0.0) > limit
            return folded, sign * entry.get(metric, np.inf * sign)

        return key

    def ranked(self, metric: str | None = None) -> list[dict[str, Any]]:
        """Settings sorted from best to worst mean ``metric`` (Dice up, errors down); with
        ``max_folding`` set, settings that fold more come last."""
        return sorted(self.settings, key=self._order(metric))

    def best(self, metric: str | None = None) -> dict[str, Any]:
        """The setting with the best mean ``metric`` over the data set.

        Raises:
            ValueError: if ``max_folding`` is set and every setting folds more.
        """
        best = self.ranked(metric)[0]
        if self._order(metric)(best)[0]:
            raise InputError(
                f"no setting keeps the folded-voxel fraction at or below {self.max_folding} "
                "(raise max_folding, --max-folding on the command line, to allow some folding)"
            )
        return best

    def best_per_pair(self, metric: str | None = None) -> list[dict[str, Any]]:
        """For each pair, the row with the best ``metric`` (eligible rows first)."""
        order = self._order(metric)
        best: dict[tuple[str, str], dict[str, Any]] = {}
        for row in self.rows:
            key = (row["fixed_id"], row["moving_id"])
            if key not in best or order(row) < order(best[key]):
                best[key] = row
        return list(best.values())

    def _admissible(
        self, criterion: str | Criterion, entries: Sequence[dict[str, Any]]
    ) -> tuple[list[int], str]:
        """Indices of the ``entries`` a criterion admits, its choice first, and, when it admits
        none, the one-line reason. Admissible: folding at most ``max_folding`` and a finite
        score; the criterion judges the entries within ``max_folding`` among themselves, ties
        broken towards less folding."""
        judge = get_criterion(criterion)() if isinstance(criterion, str) else criterion
        name = getattr(judge, "registered_name", type(judge).__name__)
        limit = self.max_folding

        def folded(i: int) -> float:
            return float(entries[i].get("folding_fraction", 0.0))

        eligible = [i for i in range(len(entries)) if limit is None or folded(i) <= limit]
        if not eligible:
            return [], (
                f"criterion {name!r} chooses nothing: no setting keeps the folded-voxel fraction "
                f"at or below {limit} (raise max_folding, --max-folding on the command line, "
                "to allow some folding)"
            )
        try:
            groups = self._consensus_groups(entries, eligible)
        except InputError as exc:
            return [], f"criterion {name!r} chooses nothing: {exc}"
        for group in groups:  # the similarity the consensus prefers first
            scores = judge(ChoiceTable(self.names, [entries[i] for i in group]))
            finite = [k for k in range(len(group)) if scores[k] < np.inf]
            if finite:
                ranked = sorted(finite, key=lambda k: (scores[k], folded(group[k])))
                return [group[k] for k in ranked], ""
        return [], (
            f"criterion {name!r} chooses nothing: it admits none of the {len(eligible)} "
            f"settings; it admits {judge.admits}"
        )

    def consensus_by_similarity(
        self, entries: Sequence[Mapping[str, Any]] | None = None
    ) -> dict[str, float]:
        """For each similarity of the axis, the largest
        [`consensus_fit`][regzoo.criteria.consensus_fit] of its settings within
        ``max_folding`` (``entries``: those instead of the data set's settings, e.g. one
        pair's rows); the label-free choice takes the similarity with the largest. Empty
        without a similarity axis, or for a sweep that did not record the gains.

        Raises:
            InputError: no setting improves any similarity of the axis.
        """
        entries = self.settings if entries is None else entries
        limit = self.max_folding
        eligible = [e for e in entries if limit is None or e.get("folding_fraction", 0.0) <= limit]
        specs = self.similarities
        if not specs or not eligible or any(gain_key(s) not in e for s in specs for e in eligible):
            return {}
        fits = consensus_fit(eligible, specs)
        best: dict[str, float] = {}
        for entry, fit in zip(eligible, fits, strict=True):
            spec = entry["refine_similarity"]
            best[spec] = max(best.get(spec, -np.inf), float(fit))
        return best

    def _consensus_groups(
        self, entries: Sequence[dict[str, Any]], eligible: list[int]
    ) -> list[list[int]]:
        """The ``eligible`` entries grouped by refinement similarity, the largest
        [`consensus_by_similarity`][regzoo.sweeping.SweepResult.consensus_by_similarity] first
        (the criterion falls back to the next group when it admits none of a group); one group
        of them all without a similarity axis or without recorded gains."""
        fits = self.consensus_by_similarity([entries[i] for i in eligible])
        order = sorted(fits, key=lambda spec: -fits[spec])
        groups = [[i for i in eligible if entries[i]["refine_similarity"] == s] for s in order]
        return groups or [eligible]

    def choose(self, criterion: str | Criterion) -> dict[str, Any]:
        """The setting a label-free criterion ([`regzoo.criteria`][regzoo.criteria]) picks for the
        data set, from the settings' mean measures, among those within ``max_folding``.

        With a similarity axis the choice has two stages: the similarity first, the one whose
        best setting matches the images best by all the axis's similarities together
        ([`consensus_fit`][regzoo.criteria.consensus_fit]), then the criterion among that
        similarity's settings (by the model's own similarity, as without an axis; when it
        admits none of them, the next similarity by consensus). A criterion alone would judge
        every similarity by the model's similarity, which refinement under the model's
        similarity minimises directly (docs/choosing.md). A sweep recorded without the gains
        (before they were measured) is judged in one stage, as before.

        Raises:
            UnknownNameError: an unknown criterion name.
            InputError: the sweep lacks a measure the criterion needs, or the criterion admits
                no setting (every setting folds more than ``max_folding``, or scores ``inf``,
                e.g. ``invertible_fit`` when every setting folds): one line, nothing chosen.
        """
        admitted, reason = self._admissible(criterion, self.settings)
        if not admitted:
            raise InputError(reason)
        return self.settings[admitted[0]]

    def choose_per_pair(self, criterion: str | Criterion) -> list[dict[str, Any]]:
        """For each pair, the row the criterion picks from that pair's rows alone (with a
        similarity axis, the similarity first, by that pair's consensus fit); a pair whose
        rows the criterion admits none of (see [`choose`][regzoo.sweeping.SweepResult.choose]) is left out."""
        pairs: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for row in self.rows:
            pairs.setdefault((row["fixed_id"], row["moving_id"]), []).append(row)
        picks = []
        for rows in pairs.values():
            admitted, _ = self._admissible(criterion, rows)
            if admitted:
                picks.append(rows[admitted[0]])
        return picks

    def choices(self) -> dict[str, dict[str, Any]]:
        """What every applicable criterion picks for the data set: the label-based metrics
        the sweep measured (``dice``, ``dice_labels``, ``tre_mm``), then each registered
        label-free criterion whose measures the sweep took. Criteria that choose nothing
        (every setting folds beyond ``max_folding``, or the criterion admits none) are left
        out."""
        picks: dict[str, dict[str, Any]] = {}
        first = self.settings[0] if self.settings else {}
        for metric in ("dice", "dice_labels", "tre_mm"):
            if metric in first:
                with contextlib.suppress(InputError):
                    picks[metric] = self.best(metric)
        for name in available_criteria():
            judge = get_criterion(name)
            if all(k in first for k in judge.requires):
                with contextlib.suppress(InputError):
                    picks[name] = self.choose(name)
        return picks

    def grid_steps(self, a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, int]:
        """How many grid steps apart two settings of this sweep are, per swept parameter."""
        return {
            name: abs(axis.index(a[name]) - axis.index(b[name]))
            for name, axis in zip(self.names, self.axes, strict=True)
        }

    def metric_grid(self, metric: str) -> np.ndarray:
        """Mean ``metric`` shaped like the grid ``(len(axes[0]), len(axes[1]), ...)``; with a
        similarity axis, the similarity comes first: ``(len(similarities), len(axes[0]), ...)``."""
        shape = [len(a) for a in self.axes]
        if self.similarities:
            shape = [len(self.similarities), *shape]
        values = np.array([s.get(metric, np.nan) for s in self.settings], dtype=float)
        return values.reshape(shape)


DEFAULT_BATCH_SIZES = {"cpu": 1}
"""Settings per forward pass when a sweep is not told (``batch_size=None``), by device type;
any other device (a GPU): 8. On a CPU a batch takes as long as its settings one at a time, and
it holds the activations of all of them (issue 30: a 64^3 sweep of 9 settings peaked at 1.83x
the memory of one network pass with 8 per batch, at 1.03x with 1, in the same time)."""


def default_batch_size(device: torch.device) -> int:
    """The settings per forward pass a sweep uses on ``device`` when none is given:
    [`DEFAULT_BATCH_SIZES`][regzoo.sweeping.DEFAULT_BATCH_SIZES], else 8."""
    return DEFAULT_BATCH_SIZES.get(device.type, 8)


def _pair_name(item: Mapping[str, Any]) -> str:
    return f"pair {item['fixed_id']} / {item['moving_id']}"


@torch.no_grad()
def sweep(
    model: RegistrationModel,
    dataset: Learn2RegDataset,
    grid: Mapping[str, GridAxis | str],
    *,
    batch_size: int | None = None,
    refine: RefineOptions | None = None,
    max_folding: float | None = 0.0,
    backward: bool = False,
    progress: bool = True,
    refine_similarities: Sequence[str] = (),
    refine_steps: int = 0,
    refine_options: Mapping[str, Any] | None = None,
) -> SweepResult:
    """Evaluate every grid point on every pair, batching settings through the hypernetwork.

    Parameters not in ``grid`` keep their defaults. A [`GridRange`][regzoo.sweeping.GridRange] axis
    is spaced on the parameter's own scale (geometric for log-scale parameters); an axis may also be
    the command line's text, ``"0.1:10:5"`` or ``"0.1,1,10"``
    ([`parse_grid`][regzoo.sweeping.parse_grid]). Each pair is replicated ``batch_size`` times and
    registered at that many settings in one forward pass (``None``: the device's default,
    [`default_batch_size`][regzoo.sweeping.default_batch_size]: 1 on a CPU, 8 on a GPU).

    A grid axis may be a text in the CLI's form (``{"lam": "0.1:1:3"}`` or ``"0.1,1"``), read
    by [`parse_grid`][regzoo.sweeping.parse_grid].

    With ``refine`` (a [`RefineOptions`][regzoo.refinement.RefineOptions]) every setting's field is
    refined under the model's objective before it is scored ([`regzoo.refinement.refine`][regzoo.refinement.refine],
    the batch of settings at once): an exact sweep, about ``refine.steps`` times the cost, that
    ranks the settings by what instance optimisation reaches instead of by the network's
    estimate. ``max_folding`` restricts the best setting to those whose folded-voxel fraction
    stays at or below it (see [`SweepResult`][regzoo.sweeping.SweepResult]): by default none may fold (``0.0``, as
    ``--max-folding``'s default), ``None`` lifts the limit. ``refine_steps`` and
    ``refine_options`` are the deprecated form of ``refine`` (a ``DeprecationWarning``).

    Every row also holds the label-free measures of
    [`regzoo.criteria.label_free_measures`][regzoo.criteria.label_free_measures] (the model's
    similarity, roughness, ...) that the criteria of [`regzoo.criteria`][regzoo.criteria] choose
    from; ``backward=True`` registers every pair the other way round too (twice the cost) for
    ``inverse_consistency``.

    The network passes and the scoring run without autograd (refinement enables it for its own
    unknowns only), so a sweep holds no graph of the network.

    ``refine_similarities`` (two or more texts of
    [`parse_similarity`][regzoo.similarity.parse_similarity], e.g.
    ``["model", "model + ngf", "10*mind_ssc"]``) adds a similarity axis to an exact sweep:
    every setting is refined under each similarity in turn (the cost times their number; the
    ``similarity`` of ``refine`` is replaced). The label-free measures stay the model's own
    similarity, a yardstick common to the whole grid, and every row also records each axis
    similarity's gain ([`gain_key`][regzoo.criteria.gain_key]), from which
    [`SweepResult.choose`][regzoo.sweeping.SweepResult.choose] chooses the similarity before a
    criterion chooses the parameters.

    Raises:
        KeyError: unknown or ambiguous parameter names.
        ValueError: grid values outside the trained range.
    """
    if refine_steps and refine is not None:
        raise InputError("sweep(): give refine=RefineOptions(...) alone, not refine_steps")
    refine = RefineOptions.from_legacy(refine or refine_steps or None, refine_options, "sweep")
    options: dict[str, Any] = dict(
        batch_size=batch_size, max_folding=max_folding, backward=backward, progress=progress
    )
    if refine_similarities:
        return _similarity_sweep(
            model, dataset, grid, list(refine_similarities), refine=refine, **options
        )
    return _grid_sweep(model, dataset, grid, refine=refine, **options)


def _grid_sweep(
    model: RegistrationModel,
    dataset: Learn2RegDataset,
    grid: Mapping[str, GridAxis | str],
    *,
    batch_size: int | None,
    refine: RefineOptions | None,
    max_folding: float | None,
    backward: bool,
    progress: bool,
    yardsticks: Mapping[str, torch.nn.Module] | None = None,
) -> SweepResult:
    """[`sweep`][regzoo.sweeping.sweep] over the parameter grid at one refinement similarity;
    ``yardsticks`` (similarities by their text) add each one's gain to every row's measures."""
    if not grid:
        raise InputError("sweep(): the grid is empty; give at least one NAME=START:STOP:COUNT")
    if batch_size is None:
        batch_size = default_batch_size(model.device)
    if batch_size < 1:
        raise InputError(f"sweep(): batch_size must be at least 1, got {batch_size}")
    grid = as_grid(grid)
    names = [model.objective.canonical_name(k) for k in grid]
    axes = []
    for key, name, axis in zip(grid, names, grid.values(), strict=True):
        spec = model.space[name]
        if isinstance(axis, str):  # the CLI's text: "START:STOP:COUNT" or "V1,V2"
            axis = parse_grid([f"{key}={axis}"])[key]
        if isinstance(axis, GridRange):
            axis = spec.spaced(axis.start, axis.stop, axis.count)
        axes.append([spec.check(v) for v in axis])
    combos = list(itertools.product(*axes))  # the settings' labels, in the grid's order
    vectors = model.space.grid(dict(zip(names, axes, strict=True)))
    per_setting: list[list[dict[str, Any]]] = [[] for _ in combos]
    device = model.device
    total = len(dataset) * len(combos)
    with tqdm(total=total, desc="sweep", disable=not progress) as bar:
        for item in dataset:
            fixed, moving = item["fixed"][None].to(device), item["moving"][None].to(device)
            for start in range(0, len(combos), batch_size):
                chunk = vectors[start : start + batch_size].to(device)
                n = chunk.shape[0]
                shape = (n, *fixed.shape[1:])
                pair = fixed.expand(shape), moving.expand(shape)
                output = _register(model, *pair, chunk, refine, item, "fixed")
                fields = output.displacement
                reverse = None
                if backward:
                    reverse = _register(
                        model, pair[1], pair[0], chunk, refine, item, "moving"
                    ).displacement
                measures = label_free_measures(
                    model.objective.similarity, *pair, fields, reverse, yardsticks
                )
                labels = item_labels(item)
                objective = None
                if labels is not None or not model.objective.needs_labels:
                    # the model's own objective of each setting's field, as register reports it
                    objective = result_objective(
                        model, *pair, output, chunk, spacing=item.get("spacing"), labels=labels
                    ).total
                for offset in range(n):
                    index = start + offset
                    row: dict[str, Any] = dict(zip(names, combos[index], strict=True))
                    check_finite_field(fields[offset], row, _pair_name(item))
                    row.update(fixed_id=item["fixed_id"], moving_id=item["moving_id"])
                    row.update(score_pair(item, fields[offset]))
                    row.update(measures[offset])
                    if objective is not None:
                        row["objective"] = float(objective[offset])
                    per_setting[index].append(row)
                bar.update(n)
    settings = [
        {
            **dict(zip(names, combo, strict=True)),
            **summarize(rows),
            **_mean_measures(rows, yardsticks or {}),
            **_mean_objective(rows),
        }
        for combo, rows in zip(combos, per_setting, strict=True)
    ]
    rows = [row for rows in per_setting for row in rows]
    scales: list[str] = [model.space[n].scale for n in names]
    return SweepResult(
        names=names,
        axes=axes,
        rows=rows,
        settings=settings,
        scales=scales,
        max_folding=max_folding,
    )


def _similarity_sweep(
    model: RegistrationModel,
    dataset: Learn2RegDataset,
    grid: Mapping[str, GridAxis | str],
    similarities: list[str],
    *,
    refine: RefineOptions | None,
    **options: Any,
) -> SweepResult:
    """[`sweep`][regzoo.sweeping.sweep] with a similarity axis: one exact sweep per similarity,
    joined."""
    if refine is None or refine.steps <= 0:
        raise InputError(
            "sweep(): several refinement similarities need refine=RefineOptions(steps > 0) (an "
            "exact sweep; command line: --refine-grid --refine N)"
        )
    if len(similarities) < 2 or len(set(similarities)) != len(similarities):
        raise InputError(
            f"sweep(): a similarity axis needs two or more different similarities, got "
            f"{similarities}"
        )
    # every text checked before any work; each is also a yardstick of every setting
    yardsticks = {
        spec: parse_similarity(spec, trained=model.objective.similarity) for spec in similarities
    }
    parts = [
        _grid_sweep(
            model,
            dataset,
            grid,
            refine=dataclasses.replace(refine, similarity=spec),
            yardsticks=yardsticks,
            **options,
        )
        for spec in similarities
    ]
    first = parts[0]
    return SweepResult(
        names=first.names,
        axes=first.axes,
        rows=[
            {"refine_similarity": s, **r}
            for s, p in zip(similarities, parts, strict=True)
            for r in p.rows
        ],
        settings=[
            {"refine_similarity": s, **e}
            for s, p in zip(similarities, parts, strict=True)
            for e in p.settings
        ],
        scales=first.scales,
        max_folding=first.max_folding,
        similarities=similarities,
    )


def _register(
    model: RegistrationModel,
    fixed: torch.Tensor,
    moving: torch.Tensor,
    values: torch.Tensor,
    options: RefineOptions | None,
    item: Mapping[str, Any],
    side: str,
) -> Any:
    """The network's output for a batch of settings, refined with ``options`` when given;
    ``side`` names the item's image that is fixed here (for its label map)."""
    output = model(fixed, moving, values, spacing=item.get("spacing"))
    if options is None:
        return output
    labels = item.get(f"{side}_labels")
    return refine_output(
        model,
        fixed,
        moving,
        values,
        options,
        init=output,
        spacing=item.get("spacing"),
        labels=None if labels is None else labels[None],
    )


def as_grid(grid: Mapping[str, GridAxis | str | float]) -> dict[str, GridAxis]:
    """``grid`` with its text axes (``"0.1:1:3"``, ``"0.1,1"``: the CLI's forms) read by
    [`parse_grid`][regzoo.sweeping.parse_grid], and a single number as a one-value axis.

    Raises:
        InputError: a malformed text, naming the entry.
    """
    texts = [f"{name}={axis}" for name, axis in grid.items() if isinstance(axis, str)]
    parsed = parse_grid(texts) if texts else {}
    resolved: dict[str, GridAxis] = {}
    for name, axis in grid.items():
        if isinstance(axis, str):
            resolved[name] = parsed[name]
        elif isinstance(axis, int | float):
            resolved[name] = [float(axis)]
        else:
            resolved[name] = axis
    return resolved


def _mean_measures(
    rows: Sequence[Mapping[str, Any]], yardsticks: Iterable[str] = ()
) -> dict[str, float]:
    """Mean of each label-free measure (and of each yardstick's gain) over the rows that have
    it."""
    means = {}
    for key in [*MEASURES, *map(gain_key, yardsticks)]:
        values = [r[key] for r in rows if key in r]
        if values:
            means[key] = float(np.mean(values))
    return means


def _mean_objective(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """``{"objective": mean}`` over the pairs, when every pair has its objective."""
    values = [row["objective"] for row in rows if "objective" in row]
    return {"objective": float(np.mean(values))} if values and len(values) == len(rows) else {}


def _soft_dice(warped: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    overlap = (warped * target).flatten(2).sum(-1)
    total = warped.flatten(2).sum(-1) + target.flatten(2).sum(-1)
    return (2 * overlap / total.clamp_min(1e-6)).mean()


def optimize_parameters(
    model: RegistrationModel,
    item: Mapping[str, Any],
    *,
    names: Sequence[str] | None = None,
    criterion: str = "auto",
    steps: int = 30,
    lr: float = 0.05,
) -> dict[str, Any]:
    """Refine the free parameters for one pair by gradient descent through the hypernetwork.

    The parameters move in normalised coordinates, projected back into ``[0, 1]`` (the trained
    bounds) after every Adam step.

    Args:
        model: a trained hyper model.
        item: a dataset item (``fixed``, ``moving``, optional ``fixed_mask``/``moving_mask``).
        names: parameters to optimise (short or full names); others stay at their defaults.
        criterion: ``"dice"`` (soft Dice of the warped masks, needs masks), ``"loss"`` (the
            unsupervised training loss at the current parameters; with no other yardstick it
            favours weak regularisation) or ``"auto"`` (Dice when masks are present).
        steps: optimisation steps.
        lr: Adam learning rate in normalised units.

    Returns:
        ``{"params": {name: value}, "history": [criterion value per step], "criterion": str}``.
    """
    if model.net.num_params == 0:
        raise InputError("optimize_parameters() needs a hyper model (model.hyper=true)")
    has_masks = "moving_mask" in item and "fixed_mask" in item
    if criterion == "auto":
        criterion = "dice" if has_masks else "loss"
    if criterion not in ("dice", "loss"):
        raise InputError(
            f"optimize_parameters(): criterion must be dice, loss or auto, got {criterion!r}"
        )
    if criterion == "dice" and not has_masks:
        raise InputError("optimize_parameters(): criterion='dice' needs fixed and moving masks")
    space = model.space
    chosen = [model.objective.canonical_name(n) for n in (names or space.names)]
    trainable = torch.tensor([n in chosen for n in space.names], device=model.device)
    start = model.parameter_tensor(None, 1)
    unit = space.normalize(start).detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([unit], lr=lr)
    fixed, moving = item["fixed"][None].to(model.device), item["moving"][None].to(model.device)
    if has_masks:
        labels = torch.unique(item["fixed_mask"])
        labels = labels[labels > 0]
        target = torch.cat([(item["fixed_mask"][None] == v).float() for v in labels], 1).to(
            model.device
        )
        source = torch.cat([(item["moving_mask"][None] == v).float() for v in labels], 1).to(
            model.device
        )
    history = []
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        for _ in range(steps):
            values = space.denormalize(unit)
            output = model.predict(fixed, moving, values, spacing=item.get("spacing"))
            if criterion == "dice":
                value = 1.0 - _soft_dice(warp(source, output.displacement), target)
            else:
                value = field_objective(
                    model.objective,
                    fixed,
                    moving,
                    output.displacement,
                    model.regularized_field(output),
                    values,
                    model.energy_spacing(item.get("spacing")),
                    item_labels(item),
                ).total.mean()
            optimizer.zero_grad()
            value.backward()
            assert unit.grad is not None
            unit.grad = torch.where(trainable, unit.grad, torch.zeros_like(unit.grad))
            optimizer.step()
            with torch.no_grad():
                unit.clamp_(0.0, 1.0)
            score = value.detach()
            history.append(float(1.0 - score) if criterion == "dice" else float(score))
    finally:
        for p in frozen:
            p.requires_grad_(True)
    final = space.denormalize(unit.detach().double())[0]
    return {
        "params": {n: float(v) for n, v in zip(space.names, final, strict=True)},
        "history": history,
        "criterion": "soft_dice" if criterion == "dice" else "loss",
    }


def optimize_dataset(
    model: RegistrationModel,
    dataset: Iterable[Mapping[str, Any]],
    *,
    names: Sequence[str] | None = None,
    steps: int = 30,
) -> list[dict[str, Any]]:
    """[`optimize_parameters`][regzoo.sweeping.optimize_parameters] on every pair; one row per pair
    with its ids."""
    return [
        {
            "fixed_id": item["fixed_id"],
            "moving_id": item["moving_id"],
            **optimize_parameters(model, item, names=names, steps=steps),
        }
        for item in dataset
    ]
