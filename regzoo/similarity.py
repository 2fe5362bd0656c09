"""Image similarity losses (lower is better), registered like the regularizers.

A similarity is called as ``sim(fixed, warped) -> (B,)``. Third-party similarities register
through the entry-point group ``regzoo.similarities`` or :func:`similarity`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from functools import partial
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from torch import nn

from regzoo._errors import InputError
from regzoo.registry import NoOptions, Registry
from regzoo.spatial import check_image

__all__ = [
    "LNCC",
    "MSE",
    "SIMILARITIES",
    "MultiScale",
    "Similarity",
    "WeightedSum",
    "box_filter",
    "parse_similarity",
    "similarity",
]


class Similarity(nn.Module):
    """Base class of registered similarity losses: ``forward(fixed, warped) -> (B,)``.

    Subclasses implement :meth:`loss` and declare what :mod:`regzoo.testing` checks:

    - ``bounds``: the range ``(min, max)`` the loss promises (``None``: unbounded on that side),
      e.g. ``(0.0, None)`` for MSE, ``(-1.0, 0.0)`` for LNCC;
    - :attr:`radius`: how far the loss looks around each voxel (0 for a pointwise loss).
    """

    Options: ClassVar[type[BaseModel]] = NoOptions
    bounds: ClassVar[tuple[float | None, float | None]] = (None, None)
    registered_name: ClassVar[str]

    @property
    def radius(self) -> int | None:
        """Locality of the loss, in voxels.

        ``r`` declares that the loss is the mean over voxels ``x`` of a function of both images
        on the box of side ``2r + 1`` around ``x`` (the part of it inside the domain): 0 for a
        pointwise loss (MSE), ``window // 2`` for a windowed one (LNCC). ``None`` (the default)
        declares a global loss, whose value depends on where the content lies only through
        statistics over the whole image (e.g. mutual information).

        Either way a joint translation of both images' content inside a constant background
        (a margin of ``2r`` voxels kept free) leaves the loss unchanged, and a pointwise loss is
        unchanged by a joint circular shift; :func:`regzoo.testing.check_similarity_properties`
        tests both.
        """
        return None

    def __init__(self, **options: object) -> None:
        super().__init__()
        self.options = self.Options(**options)

    def forward(self, fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        """Loss per batch element ``(B,)`` between two images ``(B, C, *spatial)``."""
        self.check_pair(fixed, warped)
        return self.loss(fixed, warped)

    def check_pair(self, fixed: torch.Tensor, warped: torch.Tensor) -> None:
        """Refuse anything but two images ``(B, C, *spatial)`` of one channel count and size.

        Raises:
            ValueError: naming the similarity and both shapes.
        """
        name = type(self).__name__
        check_image(fixed, name, name="fixed")
        check_image(warped, name, name="warped")
        if fixed.shape[1:] != warped.shape[1:]:
            raise ValueError(
                f"{name}: 'fixed' {tuple(fixed.shape)} and 'warped' {tuple(warped.shape)} differ"
            )

    def loss(self, fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        """Compute the loss ``(B,)``; inputs are already checked."""
        raise NotImplementedError

    def bind_fixed(self, fixed: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """The loss as a function of the warped image alone: ``bind_fixed(F)(W) == sim(F, W)``.

        Whatever depends on the fixed image only (LNCC's local means and variances, NGF's
        normalised gradients) is computed here, once: refinement
        (:func:`regzoo.refinement.refine_field`) evaluates the loss against one fixed image on every
        iteration. The default recomputes everything; subclasses may override it.
        """
        return partial(self.forward, fixed)


def _check_similarity(cls: type) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Similarity)):
        raise TypeError(f"a similarity must subclass regzoo.similarity.Similarity, got {cls!r}")


SIMILARITIES: Registry[Similarity] = Registry(
    "similarity",
    "regzoo.similarities",
    contract="A Similarity subclass: `sim(fixed, warped) -> (B,)`, lower is better, 2D and 3D.",
    check=_check_similarity,
)
similarity = SIMILARITIES.register


def box_filter(x: torch.Tensor, window: int) -> torch.Tensor:
    """Moving sum divided by ``window^D`` over a ``window^D`` box with zero padding ("same" size).

    Separable and computed with running sums (a cumulative sum along each axis, then the
    difference of its values ``window`` apart), so the cost per voxel does not grow with the
    window: ``O(D)`` instead of ``O(D * window)`` for separable convolutions or ``window^D`` for
    a dense kernel.
    """
    ndim = check_image(x, "box_filter", name="x")
    if window < 1 or window % 2 == 0:
        raise ValueError(f"box_filter() 'window' must be a positive odd integer, got {window}")
    radius = window // 2
    out = x
    for axis in range(2, 2 + ndim):
        pad = [0, 0] * ndim
        first = 2 * (ndim + 1 - axis)  # F.pad lists the last axis first
        pad[first], pad[first + 1] = radius + 1, radius
        running = F.pad(out, pad).cumsum(axis)
        size = out.shape[axis]
        out = running.narrow(axis, window, size) - running.narrow(axis, 0, size)
    return out / window**ndim


class LNCCOptions(BaseModel):
    """Options of :class:`LNCC`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window: int = Field(9, ge=1, description="side of the local window (odd), window^D voxels")
    eps: float = Field(
        1e-8, gt=0, description="stabiliser added to the product of the local variances"
    )

    @field_validator("window")
    @classmethod
    def _odd(cls, window: int) -> int:
        if window % 2 == 0:
            raise ValueError(f"the window must be odd (centred on its voxel), got {window}")
        return window


@similarity("lncc")
class LNCC(Similarity):
    """Local normalised cross-correlation loss, ``-mean_x cc(x)`` (VoxelMorph's NCC).

    ``cc = cov(F, W)^2 / (var(F) var(W) + eps)`` over a ``window^D`` box (the paper uses 9^D),
    computed with a separable box filter; windows that cross the border average over their
    in-domain voxels only (no zero-padding bias). The optimum is -1 (identical, textured images); it
    is invariant to affine intensity changes up to ``eps``; constant patches give 0, not NaN.
    The loss lies in ``[-1, 0]`` also in float32 on raw intensities (e.g. CT in HU): each image
    is centred on its global mean first (which leaves the loss unchanged in exact arithmetic but
    keeps ``E[x^2] - E[x]^2`` free of cancellation), and ``cov^2 <= var(F) var(W)``
    (Cauchy-Schwarz) is enforced against rounding.
    """

    Options = LNCCOptions
    options: LNCCOptions
    bounds = (-1.0, 0.0)

    @property
    def radius(self) -> int:
        """Half the window side: the loss at ``x`` looks at the ``window^D`` box around it."""
        return self.options.window // 2

    def loss(self, fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        return self._against(self._fixed_statistics(fixed), warped)

    def bind_fixed(self, fixed: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """The fixed image's centring, local means and variances computed once."""
        self.check_pair(fixed, fixed)
        statistics = self._fixed_statistics(fixed)

        def loss(warped: torch.Tensor) -> torch.Tensor:
            self.check_pair(fixed, warped)
            return self._against(statistics, warped)

        return loss

    def _fixed_statistics(self, fixed: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(F - mean F, window support, local mean of F, local variance of F)``."""
        window = self.options.window
        # centred on each image's mean first: the loss is offset invariant, and raw intensities
        # (-1000 HU) would otherwise cancel catastrophically in E[x^2] - E[x]^2 in float32
        fixed = fixed - fixed.mean(dim=tuple(range(2, fixed.ndim)), keepdim=True)
        # average over the in-domain part of each window: no zero-padding bias at the border
        support = box_filter(torch.ones_like(fixed[:1, :1]), window)
        mf = box_filter(fixed, window) / support
        var_f = (box_filter(fixed * fixed, window) / support - mf * mf).clamp_min(0)
        return fixed, support, mf, var_f

    def _against(self, statistics: tuple[torch.Tensor, ...], warped: torch.Tensor) -> torch.Tensor:
        fixed, support, mf, var_f = statistics
        window = self.options.window
        warped = warped - warped.mean(dim=tuple(range(2, warped.ndim)), keepdim=True)
        # one image at a time, not the three stacked: temporaries of one image's size are
        # recycled by the allocator, stacked ones are fresh pages (page faults) on every call
        # (3x less CPU time for forward + backward at 128^3, docs/benchmarks.md)
        mw, mww, mfw = (
            box_filter(x, window) / support for x in (warped, warped * warped, fixed * warped)
        )
        var_w = (mww - mw * mw).clamp_min(0)
        cov = mfw - mf * mw
        product = var_f * var_w
        cc = torch.minimum(cov * cov, product) / (product + self.options.eps)
        return -cc.flatten(1).mean(dim=1)


@similarity("mse")
class MSE(Similarity):
    """Mean squared intensity difference, ``mean_x (F - W)^2``."""

    bounds = (0.0, None)

    @property
    def radius(self) -> int:
        """0: a pointwise loss."""
        return 0

    def loss(self, fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        return (fixed - warped).pow(2).flatten(1).mean(dim=1)


class MultiScale(Similarity):
    """A similarity averaged over an image pyramid: ``mean_s sim(P_s F, P_s W)``.

    ``P_s`` averages blocks of ``s^D`` voxels (the image at ``1/s`` of its size; scale 1 is the
    image itself). A windowed loss such as LNCC sees a window ``s`` times wider at scale ``s``,
    so the loss has a gradient towards displacements larger than its window: the coarse terms
    pull large motion into place early in training, the fine term keeps the detail (the
    multi-resolution losses of LapIRN and of lung-CT networks). At the optimum (identical
    images) every term is at its own optimum, so the minimiser is the single-scale one's.

    Configured as ``similarity.scales`` (``[1]``, the default, is the bare similarity).

    Args:
        base: the similarity evaluated at each scale.
        scales: pooling factors, each a positive integer.
    """

    def __init__(self, base: Similarity, scales: Sequence[int]) -> None:
        super().__init__()
        if not scales or any(int(s) != s or s < 1 for s in scales):
            raise ValueError(f"MultiScale: scales must be positive integers, got {list(scales)}")
        self.base = base
        self.scales = tuple(int(s) for s in scales)

    def loss(self, fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        return self.bind_fixed(fixed)(warped)

    def bind_fixed(self, fixed: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """The base similarity bound to each pooled fixed image, once."""
        bound = [(scale, self.base.bind_fixed(_pool(fixed, scale))) for scale in self.scales]

        def loss(warped: torch.Tensor) -> torch.Tensor:
            total = sum(term(_pool(warped, scale)) for scale, term in bound)
            return total / len(bound)  # type: ignore[return-value]

        return loss


def _pool(image: torch.Tensor, factor: int) -> torch.Tensor:
    """Average blocks of ``factor^D`` voxels (partial blocks at the far border averaged too)."""
    if factor == 1:
        return image
    pool = F.avg_pool2d if image.ndim == 4 else F.avg_pool3d
    return pool(image, factor, ceil_mode=True)


class WeightedSum(Similarity):
    """A weighted sum of similarities: ``sum_i w_i sim_i(F, W)``.

    Several measures at once, as ANTs takes several ``--metric`` with weights: e.g. LNCC for
    the contrast of organ boundaries plus NGF for the vessels' edges, whose minimisers differ
    (docs/results.md, "Toward the limit"). Nested sums are flattened; refinement
    (:func:`regzoo.refinement.refine_field`) computes a :class:`~regzoo.lung_similarity.
    DescriptorSimilarity` term's descriptors once per pair and warps the image once for the
    other terms. Written on the command line as ``model + 0.75*ngf``
    (:func:`parse_similarity`).

    Args:
        terms: ``(weight, similarity)`` pairs, each weight finite and positive.
    """

    def __init__(self, terms: Sequence[tuple[float, Similarity]]) -> None:
        super().__init__()
        flat: list[tuple[float, Similarity]] = []
        for weight, term in terms:
            if not (isinstance(weight, int | float) and 0 < weight < float("inf")):
                raise InputError(f"WeightedSum: weights must be finite and > 0, got {weight!r}")
            if not isinstance(term, Similarity):
                raise InputError(f"WeightedSum: terms must be similarities, got {term!r}")
            if isinstance(term, WeightedSum):
                flat.extend((weight * w, t) for w, t in term.items())
            else:
                flat.append((float(weight), term))
        if not flat:
            raise InputError("WeightedSum: needs at least one term")
        self.weights = tuple(w for w, _ in flat)
        self.terms = nn.ModuleList(t for _, t in flat)

    def items(self) -> list[tuple[float, Similarity]]:
        """The ``(weight, similarity)`` pairs, flattened."""
        return list(zip(self.weights, self.terms, strict=True))  # type: ignore[arg-type]

    @property
    def radius(self) -> int | None:
        """The widest term's radius (``None`` if any term is global)."""
        radii = [term.radius for _, term in self.items()]
        return None if None in radii else max(r for r in radii if r is not None)

    def loss(self, fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        return self.bind_fixed(fixed)(warped)

    def bind_fixed(self, fixed: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """Each term bound to the fixed image, once."""
        bound = [(weight, term.bind_fixed(fixed)) for weight, term in self.items()]

        def loss(warped: torch.Tensor) -> torch.Tensor:
            return sum(weight * term(warped) for weight, term in bound)  # type: ignore[return-value]

        return loss


TRAINED = "model"
"""The name that stands for a model's own (training) similarity in :func:`parse_similarity`."""

_TERM = re.compile(
    r"\s*(?:(?P<weight>[^*:]+?)\s*\*)?\s*(?P<name>[A-Za-z_][\w.-]*)\s*(?::(?P<options>.*))?"
)


def _split_outside_brackets(text: str, separator: str) -> list[str]:
    """``text`` split at ``separator`` where it is outside ``[...]`` and, for ``+``, not the
    sign of a number's exponent (``1e+3``)."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        exponent = separator == "+" and index >= 2 and text[index - 1] in "eE"
        exponent = exponent and text[index - 2].isdigit()
        if char == separator and depth == 0 and not exponent:
            parts.append(text[start:index])
            start = index + 1
    return [*parts, text[start:]]


def parse_similarity(spec: str, trained: Similarity | None = None) -> Similarity:
    """Build a similarity from a text such as ``mind_ssc``, ``10*mind_ssc`` or ``model + 0.75*ngf``.

    Grammar: terms joined by ``+``; each term ``[WEIGHT*]NAME[:KEY=VALUE,...]``, where ``NAME``
    is a registered similarity built with the given options (values read as JSON:
    ``lncc:window=5``, ``ngf:eta=0.05,eps=1e-9``; lists in brackets) or ``model``, the model's
    own similarity (``trained``). ``WEIGHT`` is a positive number (``0.5``, ``1e-3``). A single
    term of weight 1 is that similarity itself; anything else a :class:`WeightedSum`. Nothing in
    the text is evaluated as code.

    Raises:
        InputError: a malformed text, a weight that is not a positive number, bad options, or
            ``model`` without ``trained``.
        UnknownNameError: an unregistered name (close matches are named).
    """
    terms: list[tuple[float, Similarity]] = []
    for text in _split_outside_brackets(spec, "+"):
        match = _TERM.fullmatch(text)
        try:
            weight = float(match["weight"]) if match and match["weight"] else 1.0
        except ValueError:
            weight = float("nan")
        if match is None or not 0 < weight < float("inf"):
            raise InputError(
                f"similarity {spec!r}: each term is [WEIGHT*]NAME[:KEY=VALUE,...] with a "
                f"positive WEIGHT, got {text.strip()!r}"
            )
        name, given = match["name"], match["options"] or ""
        if name == TRAINED:
            if trained is None or given.strip():
                raise InputError(
                    f"similarity {spec!r}: '{TRAINED}' (the model's similarity) takes no options "
                    "and needs a model"
                )
            terms.append((weight, trained))
            continue
        cls = SIMILARITIES.get(name)
        options: dict[str, object] = {}
        for item in filter(None, (p.strip() for p in _split_outside_brackets(given, ","))):
            key, sep, value = item.partition("=")
            if not sep:
                raise InputError(f"similarity {spec!r}: option {item!r} is not KEY=VALUE")
            try:
                options[key.strip()] = json.loads(value)
            except json.JSONDecodeError:
                options[key.strip()] = value.strip()
        try:
            terms.append((weight, cls(**options)))
        except ValidationError as exc:
            raise InputError(
                f"similarity {spec!r}: {name}: {exc.errors()[0]['msg']} "
                f"({'.'.join(map(str, exc.errors()[0]['loc']))})"
            ) from None
    if len(terms) == 1 and terms[0][0] == 1.0:
        return terms[0][1]
    return WeightedSum(terms)
