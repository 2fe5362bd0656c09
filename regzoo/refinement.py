"""Instance optimisation: make the network's fast estimate exact under the same physics.

The network amortises the registration over a data set and a parameter range; at one chosen
setting its field is a good start but not the optimum of its own objective.
[`refine_field`][regzoo.refinement.refine_field] minimises that objective, the config's similarity
plus every regularizer term at the SAME parameters and weights, directly over the field,
warm-started from the network's field. It knows nothing of the regularizers' names: whatever
[`Objective`][regzoo.objective.Objective] evaluates (built-in terms and plugins alike) is what it
minimises.

The field is optimised on a grid ``grid_downsize`` times coarser than the fixed image and
upsampled (trilinear, corner-aligned) before warping, so the objective is evaluated at full
resolution while the unknowns stay few and smooth. By default the iterations are split over a
three-level image pyramid (a third on images a quarter of the size, a third at half size), which
reaches large motion at a fraction of the cost per iteration; the last third minimises the
exact objective at full resolution (the choices measured in ``benchmarks/refinement.py``).
Diffeomorphic models (``int_steps > 0``) refine the stationary velocity and integrate it by
scaling and squaring, so the result stays invertible.

Refinement may minimise another similarity than the one the network was trained with (e.g.
MIND-SSC, [`regzoo.similarity.descriptor`][regzoo.similarity.descriptor]), with the same regularizer
terms; a descriptor similarity's descriptors are computed once per image pair and level and the
moving image's descriptors are warped. With ``tol > 0`` each level stops early once the objective's
relative change per iteration falls below ``tol``; [`RefineTrace`][regzoo.refinement.RefineTrace]
records how many iterations ran.

The module is long because the options, the trace and the optimisation loop they steer (pyramid
levels, descriptors, early stopping, L-BFGS) are read together.
"""

from __future__ import annotations

import dataclasses
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from regzoo._errors import InputError, RegzooError
from regzoo.bounds import check_fits_image
from regzoo.nets import RegistrationOutput
from regzoo.objective import Objective
from regzoo.registration_model import field_objective, result_objective
from regzoo.similarity import MSE, DescriptorSimilarity, Similarity, WeightedSum, parse_similarity
from regzoo.spatial import Spacing, check_image, integrate_velocity, resize_flow, warp

if TYPE_CHECKING:
    from regzoo.registration_model import RegistrationModel

__all__ = [
    "RefineCancelledError",
    "RefineOptions",
    "RefineTrace",
    "check_steps",
    "field_objective",
    "parse_split",
    "refine",
    "refine_field",
    "result_objective",
]


class RefineCancelledError(RegzooError):
    """A refinement stopped because its [`RefineTrace`][regzoo.refinement.RefineTrace] was
    cancelled."""


def check_steps(steps: int, *, minimum: int = 0, what: str = "refine: steps") -> int:
    """The one check of a refinement's iteration count (``refine``, ``register --refine``, the
    explorer's refine button and ``--refine-steps``).

    Raises:
        InputError: naming ``what``, for a count that is not an integer ``>= minimum``.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < minimum:
        raise InputError(f"{what} must be an integer >= {minimum}, got {steps!r}")
    return steps


def parse_split(text: str) -> tuple[float, ...]:
    """The shares per pyramid level that ``A:B:C`` spells (``--refine-split``, and
    ``RefineOptions(split="1:1:2")``); the shares are checked by [`RefineOptions`][regzoo.refinement.RefineOptions].

    Raises:
        InputError: a share that is not a number.
    """
    try:
        return tuple(float(share) for share in text.split(":"))
    except ValueError:
        raise InputError(
            f"refine: split must look like A:B:C (one positive share per level), got {text!r}"
        ) from None


@dataclass(frozen=True)
class RefineOptions:
    """Refinement's settings: the one form every public function takes them in.

    [`refine`][regzoo.refinement.refine], [`regzoo.inference.register`][regzoo.inference.register], [`regzoo.inference.choose_parameters`][regzoo.inference.choose_parameters],
    [`regzoo.sweeping.sweep`][regzoo.sweeping.sweep], [`regzoo.study.run_sweep_study`][regzoo.study.run_sweep_study], the evaluation helpers
    and the explorer take a ``RefineOptions``; the CLI's ``--refine-...`` flags translate to
    and from it in one place (`regzoo.cli.refine_flags`), and reports record it as
    [`to_dict`][regzoo.refinement.RefineOptions.to_dict] (``sweep.json``, evaluate's JSON), which [`from_dict`][regzoo.refinement.RefineOptions.from_dict] reads back.

    Attributes:
        steps: Adam iterations (0 returns the initial field).
        similarity: refine under this similarity instead of the training one: a text for
            [`parse_similarity`][regzoo.similarity.combinations.parse_similarity] (``"10*mind_ssc"``; ``"model + 0.75*ngf"``,
            where ``model`` is the training similarity), checked when the options are made
            (``None``: the model's similarity).
        lr: Adam learning rate, in voxels of the optimised (coarse) grid.
        grid_downsize: the field is optimised on a grid this many times coarser (1 = the
            fixed grid itself); it is upsampled before warping.
        int_steps: scaling-and-squaring steps: > 0 optimises a stationary velocity (the
            result is diffeomorphic), 0 the displacement itself. [`refine`][regzoo.refinement.refine] takes it from
            the model (only [`refine_field`][regzoo.refinement.refine_field] reads it from here).
        regularize: ``"displacement"`` or ``"velocity"``: the field the energies see (as
            ``int_steps``, taken from the model by [`refine`][regzoo.refinement.refine]).
        levels: pyramid levels: with ``L > 1`` the first ``steps // L`` iterations run on images
            ``2^(L-1)`` times coarser, and so on down to the full resolution, where the last
            (and the remaining) iterations minimise the exact objective. Coarse levels cost
            ``8^level`` times less in 3D and reach large motion in fewer iterations.
        split: the share of ``steps`` of each level, coarsest first (``levels`` positive
            numbers, normalised, or their text ``"1:1:2"``; ``None``: equal shares). The
            finest level takes the remainder.
        optimizer: ``"adam"`` or ``"lbfgs"`` (L-BFGS with a strong-Wolfe line search, ``lr``
            its first step; ``steps`` then counts objective evaluations, and ``tol`` is its
            absolute ``tolerance_change``).
        tol: early stopping: a level stops once the objective's relative change per
            iteration, averaged over the last ``window`` iterations,
            ``(J_{k-w} - J_k) / (w |J_k|)``, falls below ``tol`` (0: always run every step).
        window: iterations the relative change is averaged over.
        progress: show a progress bar (not recorded by [`to_dict`][regzoo.refinement.RefineOptions.to_dict]).

    Examples:
        >>> options = RefineOptions(steps=60, similarity="mind_ssc", split="1:1:2", tol=1e-3)
        >>> RefineOptions.from_dict(options.to_dict()) == options
        True
    """

    steps: int = 30
    similarity: str | None = None
    lr: float = 0.1
    grid_downsize: int = 2
    int_steps: int = 0
    regularize: str = "displacement"
    levels: int = 3
    split: Sequence[float] | str | None = None
    optimizer: str = "adam"
    tol: float = 0.0
    window: int = 5
    progress: bool = False

    def __post_init__(self) -> None:
        check_steps(self.steps)
        if isinstance(self.split, str):
            object.__setattr__(self, "split", parse_split(self.split))
        elif self.split is not None:
            try:
                shares = tuple(float(share) for share in self.split)
            except (TypeError, ValueError):
                shares = ()
            object.__setattr__(self, "split", shares)
        if self.similarity is not None:
            if not isinstance(self.similarity, str) or not self.similarity.strip():
                raise InputError(
                    "refine: similarity must be a text such as 'mind_ssc' or 'model + 0.5*ngf' "
                    f"(pass a Similarity instance to refine(similarity=...)), got {self.similarity!r}"
                )
            # names, weights and options checked now (MSE stands in for the model's similarity)
            parse_similarity(self.similarity, trained=MSE())
        if not 0 < self.lr < float("inf"):
            raise InputError(f"refine: lr must be > 0, got {self.lr}")
        if self.levels < 1:
            raise InputError(f"refine: levels must be >= 1, got {self.levels}")
        if self.grid_downsize < 1:
            raise InputError(f"refine: grid_downsize must be >= 1, got {self.grid_downsize}")
        if self.regularize not in ("displacement", "velocity"):
            raise InputError(
                f"refine: regularize must be 'displacement' or 'velocity', got {self.regularize!r}"
            )
        if self.regularize == "velocity" and self.int_steps == 0:
            raise InputError("refine: regularize='velocity' needs int_steps > 0")
        split = None if self.split is None else self.shares()
        if split is not None and (
            len(split) != self.levels
            or not all(0 < w < float("inf") for w in split)
            or not sum(split) < float("inf")
        ):
            raise InputError(
                f"refine: split must give {self.levels} positive shares (one per level, "
                "finite, with a finite sum), "
                f"got {self.split}"
            )
        if self.optimizer not in ("adam", "lbfgs"):
            raise InputError(f"refine: optimizer must be 'adam' or 'lbfgs', got {self.optimizer!r}")
        if not 0 <= self.tol < float("inf"):
            raise InputError(f"refine: tol must be >= 0 and finite, got {self.tol}")
        if self.window < 1:
            raise InputError(f"refine: window must be >= 1, got {self.window}")

    def steps_per_level(self) -> list[int]:
        """The iteration budget of each level, coarsest first (summing to ``steps``)."""
        shares = self.shares()
        total = sum(shares)
        per_level = [int(self.steps * w / total) for w in shares]
        per_level[-1] += self.steps - sum(per_level)  # the finest level takes the remainder
        return per_level

    def shares(self) -> tuple[float, ...]:
        """The share of each level, coarsest first (equal without ``split``)."""
        split = self.split
        if split is None:
            return (1.0,) * self.levels
        return parse_split(split) if isinstance(split, str) else tuple(float(w) for w in split)

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON values (``split`` a list), every field but ``progress``: what
        reports record, and [`from_dict`][regzoo.refinement.RefineOptions.from_dict] reads back."""
        record = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "progress"}
        record["split"] = None if self.split is None else list(self.shares())
        return record

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> RefineOptions:
        """The options a [`to_dict`][regzoo.refinement.RefineOptions.to_dict] record (or any subset of its keys) spells.

        Raises:
            InputError: an unknown key (the known ones named), or a value [`RefineOptions`][regzoo.refinement.RefineOptions]
                refuses.
        """
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(record) - set(known))
        if unknown:
            raise InputError(
                f"refine options: unknown setting(s) {unknown}; known: {', '.join(known)}"
            )
        values = dict(record)
        if isinstance(values.get("split"), list):
            values["split"] = tuple(values["split"])
        return cls(**values)

    @classmethod
    def coerce(
        cls, options: RefineOptions | Mapping[str, Any] | None, what: str = "refine options"
    ) -> RefineOptions | None:
        """``options`` as a [`RefineOptions`][regzoo.refinement.RefineOptions]: a mapping (the keyword arguments that were
        passed around before 0.3) is converted with a ``DeprecationWarning``."""
        if options is None or isinstance(options, RefineOptions):
            return options
        if isinstance(options, Mapping):
            warnings.warn(
                f"{what} as a mapping is deprecated; pass regzoo.RefineOptions(...)",
                DeprecationWarning,
                stacklevel=3,
            )
            return cls.from_dict(options)
        raise InputError(f"{what} must be a RefineOptions, got {type(options).__name__}")

    @classmethod
    def from_legacy(
        cls,
        refine: RefineOptions | int | None,
        settings: Mapping[str, Any] | None,
        caller: str,
    ) -> RefineOptions | None:
        """``refine`` as options (``None``: no refinement), with the forms used before 0.3,
        a number of steps (``0``: none) and a mapping of further settings, converted with a
        ``DeprecationWarning``.

        Raises:
            InputError: naming ``caller``: settings given twice, or refused.
        """
        if not settings and (refine is None or isinstance(refine, RefineOptions)):
            return refine
        if isinstance(refine, RefineOptions):
            raise InputError(f"{caller}: give the settings once, in the RefineOptions")
        if isinstance(refine, bool) or not isinstance(refine, int | None):
            raise InputError(f"{caller}: refine must be a RefineOptions, got {refine!r}")
        warnings.warn(
            f"{caller}: refinement as a number of steps and a mapping of settings is "
            "deprecated; pass regzoo.RefineOptions(steps=..., ...)",
            DeprecationWarning,
            stacklevel=3,
        )
        if not refine or refine <= 0:
            return None
        return cls.from_dict({**(settings or {}), "steps": refine})


@dataclass
class RefineTrace:
    """The objective per iteration (mean over the batch), evaluated before each step, and once
    more after the last step of each pyramid level (so the last entry is the final objective).
    Entries of coarse levels are objectives on the coarse images. ``iterations`` holds the
    iterations (objective evaluations for L-BFGS) each level ran, coarsest first: fewer than
    its budget when it stopped early (``tol``).

    Setting ``stop`` (from another thread) cancels the refinement at its next iteration: it
    raises [`RefineCancelledError`][regzoo.refinement.RefineCancelledError]."""

    objective: list[float] = field(default_factory=list)
    iterations: list[int] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def total_iterations(self) -> int:
        """Iterations run over every level."""
        return sum(self.iterations)


def refine_field(
    objective: Objective,
    fixed: torch.Tensor,
    moving: torch.Tensor,
    init: torch.Tensor,
    values: torch.Tensor,
    options: RefineOptions = RefineOptions(),
    *,
    spacing: Spacing = None,
    trace: RefineTrace | None = None,
    labels: torch.Tensor | None = None,
    similarity: Similarity | None = None,
) -> RegistrationOutput:
    """Minimise ``objective`` over the field, starting from ``init``.

    Args:
        objective: the similarity and regularizer terms (e.g. ``model.objective``).
        fixed: fixed images ``(B, 1, *spatial)`` (2D or 3D), as the objective expects them.
        moving: moving images, same shape.
        init: the starting field ``(B, D, *spatial)`` in voxels: the displacement, or the
            velocity when ``options.int_steps > 0``.
        values: the free parameters ``(B, P)`` in the order of ``objective.space``.
        options: steps, learning rate, grid and integration.
        spacing: voxel spacing passed to the energies (``None``: voxel units).
        trace: if given, receives the objective before and after every step.
        labels: the fixed image's integer label map ``(B or 1, 1, *spatial)``, for objectives
            with per-label parameters (resampled, nearest neighbour, on coarse levels).
        similarity: minimised instead of the objective's own similarity (``None``: the
            objective's), with the same terms and weights.

    Returns:
        The refined displacement (and velocity for diffeomorphic refinement), detached.

    Raises:
        ValueError: for mismatched shapes or parameter vectors.
    """
    ndim = check_image(fixed, "refine_field", name="fixed")
    if moving.shape != fixed.shape:
        raise InputError(
            f"refine_field(): 'moving' {tuple(moving.shape)} and 'fixed' {tuple(fixed.shape)} "
            "must have the same shape"
        )
    size = fixed.shape[2:]
    if init.shape != (fixed.shape[0], ndim, *size):
        raise InputError(
            f"refine_field(): 'init' must have shape {(fixed.shape[0], ndim, *size)}, "
            f"got {tuple(init.shape)}"
        )
    if values.shape != (fixed.shape[0], len(objective.space)):
        raise InputError(
            f"refine_field(): 'values' must have shape "
            f"{(fixed.shape[0], len(objective.space))}, got {tuple(values.shape)}"
        )
    fixed, moving, values = fixed.detach(), moving.detach(), values.detach()
    per_level = options.steps_per_level()
    sim = objective.similarity if similarity is None else similarity
    trace = RefineTrace() if trace is None else trace
    field = init.detach()
    with tqdm(total=options.steps, desc="refine", disable=not options.progress) as bar:
        for steps, level in zip(per_level, reversed(range(options.levels)), strict=True):
            factor = 2**level
            level_size = [max(2, -(-n // factor)) for n in size]
            field = _optimize_level(
                objective,
                sim,
                _resize_image(fixed, level_size),
                _resize_image(moving, level_size),
                resize_flow(field, level_size),
                values,
                steps,
                options,
                _scaled_spacing(spacing, factor),
                trace,
                bar,
                None if labels is None else _resize_labels(labels, level_size),
            )
    displacement = integrate_velocity(field, options.int_steps) if options.int_steps else field
    velocity = field if options.int_steps else None
    return RegistrationOutput(displacement, velocity)


def _resize_image(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Linear resampling on the corner-aligned grid that [`resize_flow`][regzoo.spatial.resize_flow]
    uses."""
    if tuple(size) == tuple(image.shape[2:]):
        return image
    mode = "bilinear" if image.ndim == 4 else "trilinear"
    return F.interpolate(image, size=list(size), mode=mode, align_corners=True)


def _resize_labels(labels: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """A label map on a grid of ``size`` (nearest neighbour)."""
    if tuple(size) == tuple(labels.shape[2:]):
        return labels
    return F.interpolate(labels.float(), size=list(size), mode="nearest").to(labels.dtype)


def _scaled_spacing(spacing: Spacing, factor: int) -> Spacing:
    """Voxel spacing of a grid ``factor`` times coarser."""
    if spacing is None or factor == 1:
        return spacing
    if isinstance(spacing, int | float):
        return spacing * factor
    return [float(s) * factor for s in spacing]


def _optimize_level(
    objective: Objective,
    similarity: Similarity,
    fixed: torch.Tensor,
    moving: torch.Tensor,
    field: torch.Tensor,
    values: torch.Tensor,
    steps: int,
    options: RefineOptions,
    spacing: Spacing,
    trace: RefineTrace,
    bar: tqdm,
    labels: torch.Tensor | None,
) -> torch.Tensor:
    """Optimise one pyramid level; returns the level's (displacement or velocity) field."""
    size = fixed.shape[2:]
    coarse_size = [max(2, -(-n // options.grid_downsize)) for n in size]
    unknown = resize_flow(field, coarse_size).clone().requires_grad_(True)
    compare = _comparator(similarity, fixed, moving)

    def evaluate() -> torch.Tensor:
        full = resize_flow(unknown, size)
        displacement = integrate_velocity(full, options.int_steps) if options.int_steps else full
        regularized = full if options.regularize == "velocity" else displacement
        terms = objective.combine(compare(displacement), regularized, values, spacing, labels)
        return terms.total.sum() / fixed.shape[0]

    history: list[float] = []

    def closure() -> torch.Tensor:
        if trace.stop.is_set():
            raise RefineCancelledError("the refinement was cancelled")
        optimizer.zero_grad(set_to_none=True)
        loss = evaluate()
        loss.backward()
        history.append(float(loss.detach()))
        bar.update(1)
        return loss

    with torch.enable_grad():
        if options.optimizer == "lbfgs" and steps:
            optimizer: torch.optim.Optimizer = torch.optim.LBFGS(
                [unknown],
                lr=options.lr,
                max_iter=steps,
                max_eval=steps,
                tolerance_change=options.tol,
                line_search_fn="strong_wolfe",
            )
            optimizer.step(closure)  # type: ignore[arg-type]  # LBFGS takes the loss tensor
        else:
            optimizer = torch.optim.Adam([unknown], lr=options.lr)
            for _ in range(steps):
                closure()
                optimizer.step()
                if _converged(history, options.tol, options.window):
                    break
    trace.objective.extend(history)
    trace.iterations.append(len(history))
    with torch.no_grad():
        trace.objective.append(float(evaluate()))
    return resize_flow(unknown.detach(), size)


def _comparator(
    similarity: Similarity, fixed: torch.Tensor, moving: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``displacement -> similarity(fixed, moving warped by it)`` for one pair and level.

    A [`DescriptorSimilarity`][regzoo.similarity.descriptor.DescriptorSimilarity] term's descriptors
    are computed here, once, and the moving image's descriptors are warped (as deeds and ConvexAdam
    do); the other terms of a [`WeightedSum`][regzoo.similarity.combinations.WeightedSum] share one
    warped image and are bound to the fixed image once
    ([`Similarity.bind_fixed`][regzoo.similarity.base.Similarity.bind_fixed]).
    """
    terms = similarity.items() if isinstance(similarity, WeightedSum) else [(1.0, similarity)]
    on_image = [
        (w, t.bind_fixed(fixed)) for w, t in terms if not isinstance(t, DescriptorSimilarity)
    ]
    on_descriptors = []
    with torch.no_grad():
        for weight, term in terms:
            if isinstance(term, DescriptorSimilarity):
                on_descriptors.append((weight, term, term.features(fixed), term.features(moving)))

    def compare(displacement: torch.Tensor) -> torch.Tensor:
        total = fixed.new_zeros(fixed.shape[0])
        if on_image:
            warped = warp(moving, displacement)
            for weight, term in on_image:
                total = total + weight * term(warped)
        for weight, term, fixed_features, moving_features in on_descriptors:
            total = total + weight * term.compare(
                fixed_features, warp(moving_features, displacement)
            )
        return total

    return compare


def _converged(history: Sequence[float], tol: float, window: int) -> bool:
    """Whether the relative change per iteration over the last ``window`` iterations,
    ``(J_{k-w} - J_k) / (w |J_k|)``, is below ``tol`` (never with ``tol == 0``)."""
    if tol <= 0 or len(history) <= window:
        return False
    last = history[-1]
    change = (history[-1 - window] - last) / (window * max(abs(last), 1e-12))
    return change < tol


_LEGACY_SETTINGS = frozenset(
    ("steps", "lr", "grid_downsize", "levels", "progress", "tol", "optimizer", "split")
)
"""The settings [`refine`][regzoo.refinement.refine] took as keyword arguments before [`RefineOptions`][regzoo.refinement.RefineOptions]."""


def refine(
    model: RegistrationModel,
    fixed: torch.Tensor,
    moving: torch.Tensor,
    params: Mapping[str, float] | torch.Tensor | None = None,
    options: RefineOptions | Mapping[str, Any] | None = None,
    *,
    init: RegistrationOutput | None = None,
    trace: RefineTrace | None = None,
    spacing: Spacing = None,
    labels: torch.Tensor | None = None,
    similarity: Similarity | str | None = None,
    **settings: Any,
) -> RegistrationOutput:
    """Register with the network at ``params``, then refine under the model's own objective.

    The field is warm-started from the network's prediction at the same parameters (or from
    ``init``) and minimises the model's objective (its similarity, or ``options.similarity``,
    and every term, at the same parameters and weights). Diffeomorphic models refine their
    velocity (``int_steps`` and ``regularize`` come from the model, not from ``options``).

    Args:
        model: a trained model ([`regzoo.checkpoint.load_model`][regzoo.checkpoint.load_model]).
        fixed: normalised fixed images ``(B, 1, *spatial)`` (as the network sees them).
        moving: normalised moving images, same shape.
        params: free parameters by name (short or full; defaults fill the rest), or physical
            values ``(B, P)``.
        options: the settings ([`RefineOptions`][regzoo.refinement.RefineOptions]: steps, similarity, pyramid, optimiser,
            early stopping; ``30`` steps by default, enough on the phantom, docs/results.md).
        init: the network's output if already computed.
        trace: if given, receives the objective per iteration (and the iterations that ran,
            ``trace.iterations``, fewer than the budget when ``options.tol`` stopped a level).
        spacing: the images' voxel spacing in mm; the energies are then per mm when the model
            was trained that way (``energy_units: mm``,
            [`energy_spacing`][regzoo.registration_model.RegistrationModel.energy_spacing]).
            Required for such a model (no guess: [`register`][regzoo.inference.register] reads it
            from the files); optional with ``energy_units: voxel``.
        labels: the fixed image's integer label map ``(B or 1, 1, *spatial)``; needed when
            the model has per-label parameters.
        similarity: a [`Similarity`][regzoo.similarity.base.Similarity] instance to refine under (what a
            text in ``options.similarity`` cannot express); not both.
        **settings: deprecated: the settings as keyword arguments (``steps=30``...), converted
            to ``options`` with a ``DeprecationWarning``.

    Raises:
        InputError: settings given twice (``options`` and keywords, or two similarities), or
            refused by [`RefineOptions`][regzoo.refinement.RefineOptions].

    Examples:
        >>> options = regzoo.RefineOptions(steps=30)
        >>> output = regzoo.refine(
        ...     model, fixed, moving, {"lam": 1.0, "mu": 1.0}, options, spacing=(1.5, 1.5, 1.5)
        ... )
        >>> output.displacement.shape  # (B, 3, X, Y, Z)
    """
    if spacing is None and model.config.energy_units == "mm":
        # energies per mm depend on the voxel size: a silent 1 mm guess disagrees with
        # register(refine=N), which reads the spacing from the files
        raise InputError(
            "refine: the model's energies are per mm (energy_units: mm), so the result depends "
            "on the voxel size: pass spacing= (the images' spacing in mm, e.g. "
            "read_volume(path).spacing; (1, 1, 1) for 1 mm voxels)"
        )
    given = RefineOptions.coerce(options, "refine(options=...)")
    options = _merge_legacy(given, similarity, settings)
    instance = similarity if isinstance(similarity, Similarity) else None
    if instance is not None and options.similarity is not None:
        raise InputError("refine: give the similarity once (options.similarity or similarity=)")
    chosen: Similarity | None = instance
    if options.similarity is not None:
        chosen = parse_similarity(options.similarity, trained=model.objective.similarity)
    check_fits_image(chosen, fixed.shape[2:], "refine: similarity")  # before any work
    values = model.parameter_tensor(params, fixed.shape[0])
    if init is None:
        with torch.no_grad():
            init = model(fixed, moving, values)
    config = model.config
    diffeomorphic = config.model.int_steps > 0
    options = dataclasses.replace(
        options, int_steps=config.model.int_steps, regularize=config.regularize
    )
    start = init.velocity if diffeomorphic and init.velocity is not None else init.displacement
    return refine_field(
        model.objective,
        fixed,
        moving,
        start,
        values,
        options,
        spacing=model.energy_spacing(spacing),
        trace=trace,
        labels=labels,
        similarity=chosen,
    )


def _merge_legacy(
    options: RefineOptions | None, similarity: Similarity | str | None, settings: Mapping[str, Any]
) -> RefineOptions:
    """``options`` with the deprecated keyword settings of [`refine`][regzoo.refinement.refine] (and a similarity
    given as text) folded in, with a ``DeprecationWarning``."""
    unknown = sorted(set(settings) - _LEGACY_SETTINGS)
    if unknown:
        raise TypeError(f"refine() got unexpected keyword argument(s) {unknown}")
    legacy = dict(settings)
    if isinstance(similarity, str):
        legacy["similarity"] = similarity
    if not legacy:
        return options or RefineOptions()
    if options is not None:
        raise InputError(
            f"refine: give the settings once, in options (also given as keywords: {sorted(legacy)})"
        )
    warnings.warn(
        "refine(): settings as keyword arguments "
        f"({', '.join(sorted(legacy))}) are deprecated; pass options=regzoo.RefineOptions(...)",
        DeprecationWarning,
        stacklevel=3,
    )
    return RefineOptions.from_dict(legacy)
