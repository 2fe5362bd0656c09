"""Instance optimisation: make the network's fast estimate exact under the same physics.

The network amortises the registration over a data set and a parameter range; at one chosen
setting its field is a good start but not the optimum of its own objective. :func:`refine_field`
minimises that objective, the config's similarity plus every regularizer term at the SAME
parameters and weights, directly over the field, warm-started from the network's field. It
knows nothing of the regularizers' names: whatever :class:`~regzoo.objective.Objective`
evaluates (built-in terms and plugins alike) is what it minimises.

The field is optimised on a grid ``grid_downsize`` times coarser than the fixed image and
upsampled (trilinear, corner-aligned) before warping, so the objective is evaluated at full
resolution while the unknowns stay few and smooth. By default the iterations are split over a
three-level image pyramid (a third on images a quarter of the size, a third at half size), which
reaches large motion at a fraction of the cost per iteration; the last third minimises the
exact objective at full resolution (the choices measured in ``benchmarks/refinement.py``).
Diffeomorphic models (``int_steps > 0``) refine the stationary velocity and integrate it by
scaling and squaring, so the result stays invertible.

Refinement may minimise another similarity than the one the network was trained with (e.g.
MIND-SSC, :mod:`regzoo.similarity.descriptor`), with the same regularizer terms; a descriptor
similarity's descriptors are computed once per image pair and level and the moving image's
descriptors are warped. With ``tol > 0`` each level stops early once the objective's relative
change per iteration falls below ``tol``; :class:`RefineTrace` records how many iterations ran.

The module is long because the options, the trace and the optimisation loop they steer (pyramid
levels, descriptors, early stopping, L-BFGS) are read together.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from regzoo._errors import InputError, RegzooError
from regzoo.bounds import check_fits_image
from regzoo.nets import RegistrationOutput
from regzoo.objective import Objective
from regzoo.registration_model import field_objective, result_objective
from regzoo.similarity import DescriptorSimilarity, Similarity, WeightedSum, parse_similarity
from regzoo.spatial import Spacing, check_image, integrate_velocity, resize_flow, warp

if TYPE_CHECKING:
    from regzoo.registration_model import RegistrationModel

__all__ = [
    "RefineCancelledError",
    "RefineOptions",
    "RefineTrace",
    "check_steps",
    "field_objective",
    "refine",
    "refine_field",
    "result_objective",
]


class RefineCancelledError(RegzooError):
    """A refinement stopped because its :class:`RefineTrace` was cancelled."""


def check_steps(steps: int, *, minimum: int = 0, what: str = "refine: steps") -> int:
    """The one check of a refinement's iteration count (``refine``, ``register --refine``, the
    explorer's refine button and ``--refine-steps``).

    Raises:
        InputError: naming ``what``, for a count that is not an integer ``>= minimum``.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < minimum:
        raise InputError(f"{what} must be an integer >= {minimum}, got {steps!r}")
    return steps


@dataclass(frozen=True)
class RefineOptions:
    """How :func:`refine_field` optimises.

    Attributes:
        steps: Adam iterations (0 returns the initial field).
        lr: Adam learning rate, in voxels of the optimised (coarse) grid.
        grid_downsize: the field is optimised on a grid this many times coarser (1 = the
            fixed grid itself); it is upsampled before warping.
        int_steps: scaling-and-squaring steps: > 0 optimises a stationary velocity (the
            result is diffeomorphic), 0 the displacement itself.
        regularize: ``"displacement"`` or ``"velocity"``: the field the energies see.
        levels: pyramid levels: with ``L > 1`` the first ``steps // L`` iterations run on images
            ``2^(L-1)`` times coarser, and so on down to the full resolution, where the last
            (and the remaining) iterations minimise the exact objective. Coarse levels cost
            ``8^level`` times less in 3D and reach large motion in fewer iterations.
        split: the share of ``steps`` of each level, coarsest first (``levels`` positive
            numbers, normalised; ``None``: equal shares). The finest level takes the remainder.
        optimizer: ``"adam"`` or ``"lbfgs"`` (L-BFGS with a strong-Wolfe line search, ``lr``
            its first step; ``steps`` then counts objective evaluations, and ``tol`` is its
            absolute ``tolerance_change``).
        tol: early stopping: a level stops once the objective's relative change per
            iteration, averaged over the last ``window`` iterations,
            ``(J_{k-w} - J_k) / (w |J_k|)``, falls below ``tol`` (0: always run every step).
        window: iterations the relative change is averaged over.
        progress: show a progress bar.
    """

    steps: int = 30
    lr: float = 0.1
    grid_downsize: int = 2
    int_steps: int = 0
    regularize: str = "displacement"
    levels: int = 3
    split: tuple[float, ...] | None = None
    optimizer: str = "adam"
    tol: float = 0.0
    window: int = 5
    progress: bool = False

    def __post_init__(self) -> None:
        check_steps(self.steps)
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
        if self.split is not None and (
            len(self.split) != self.levels
            or not all(0 < w < float("inf") for w in self.split)
            or not sum(self.split) < float("inf")
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
        """The iteration budget of each level, coarsest first (summing to :attr:`steps`)."""
        shares = self.split or (1.0,) * self.levels
        total = sum(shares)
        per_level = [int(self.steps * w / total) for w in shares]
        per_level[-1] += self.steps - sum(per_level)  # the finest level takes the remainder
        return per_level


@dataclass
class RefineTrace:
    """The objective per iteration (mean over the batch), evaluated before each step, and once
    more after the last step of each pyramid level (so the last entry is the final objective).
    Entries of coarse levels are objectives on the coarse images. ``iterations`` holds the
    iterations (objective evaluations for L-BFGS) each level ran, coarsest first: fewer than
    its budget when it stopped early (``tol``).

    Setting ``stop`` (from another thread) cancels the refinement at its next iteration: it
    raises :class:`RefineCancelledError`."""

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
    """Linear resampling on the corner-aligned grid that :func:`resize_flow` uses."""
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

    A :class:`DescriptorSimilarity` term's descriptors are computed here, once, and the moving
    image's descriptors are warped (as deeds and ConvexAdam do); the other terms of a
    :class:`WeightedSum` share one warped image and are bound to the fixed image once
    (:meth:`Similarity.bind_fixed`).
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


def refine(
    model: RegistrationModel,
    fixed: torch.Tensor,
    moving: torch.Tensor,
    params: Mapping[str, float] | torch.Tensor | None = None,
    *,
    steps: int = 30,
    lr: float = 0.1,
    grid_downsize: int = 2,
    levels: int = 3,
    init: RegistrationOutput | None = None,
    progress: bool = False,
    trace: RefineTrace | None = None,
    spacing: Spacing = None,
    labels: torch.Tensor | None = None,
    similarity: Similarity | str | None = None,
    tol: float = 0.0,
    optimizer: str = "adam",
    split: Sequence[float] | None = None,
) -> RegistrationOutput:
    """Register with the network at ``params``, then refine under the model's own objective.

    The field is warm-started from the network's prediction at the same parameters (or from
    ``init``) and minimises the model's objective (its similarity and every term, at the same
    parameters and weights). Diffeomorphic models refine their velocity.

    Args:
        model: a trained model (:func:`regzoo.checkpoint.load_model`).
        fixed: normalised fixed images ``(B, 1, *spatial)`` (as the network sees them).
        moving: normalised moving images, same shape.
        params: free parameters by name (short or full; defaults fill the rest), or physical
            values ``(B, P)``.
        steps: iterations (``30`` is enough on the phantom; see docs/results.md).
        lr: Adam learning rate in voxels of the coarse grid.
        grid_downsize: the field is optimised on a grid this many times coarser.
        levels: image pyramid levels (1: the full resolution only; 3, the default, starts on
            images a quarter of the size); see :class:`RefineOptions`.
        init: the network's output if already computed (otherwise the network runs at its
            training spacing when ``spacing`` is given, :meth:`~regzoo.registration_model.RegistrationModel.predict`).
        progress: show a progress bar.
        trace: if given, receives the objective per iteration.
        spacing: the images' voxel spacing in mm; the energies are then per mm when the model
            was trained that way (``energy_units: mm``, :meth:`~regzoo.registration_model.RegistrationModel.energy_spacing`).
        labels: the fixed image's integer label map ``(B or 1, 1, *spatial)``; needed when
            the model has per-label parameters.
        similarity: refine under this similarity instead of the training one: an instance,
            or a text for :func:`~regzoo.similarity.parse_similarity` (``"10*mind_ssc"``;
            ``"model + 0.75*ngf"``, where ``model`` is the training similarity); the
            regularizer terms stay the model's.
        tol: early stopping on the objective's relative change per iteration (0: off); the
            iterations that ran are in ``trace.iterations``.
        optimizer: ``"adam"`` or ``"lbfgs"``.
        split: share of the iterations per pyramid level, coarsest first (equal by default).

    Examples:
        >>> output = regzoo.refine(model, fixed, moving, {"lam": 1.0, "mu": 1.0}, steps=30)
        >>> output.displacement.shape  # (B, 3, X, Y, Z)
    """
    if isinstance(similarity, str):
        similarity = parse_similarity(similarity, trained=model.objective.similarity)
    check_fits_image(similarity, fixed.shape[2:], "refine: similarity")  # before any work
    values = model.parameter_tensor(params, fixed.shape[0])
    if init is None:
        with torch.no_grad():
            init = model(fixed, moving, values, spacing=spacing)
    config = model.config
    diffeomorphic = config.model.int_steps > 0
    options = RefineOptions(
        steps=steps,
        lr=lr,
        grid_downsize=grid_downsize,
        levels=levels,
        int_steps=config.model.int_steps,
        regularize=config.regularize,
        split=None if split is None else tuple(split),
        optimizer=optimizer,
        tol=tol,
        progress=progress,
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
        similarity=similarity,
    )
