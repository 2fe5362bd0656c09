"""Similarities built from others: weighted sums, multi-scale pyramids, and the text that
spells them ([`parse_similarity`][regzoo.similarity.combinations.parse_similarity], e.g. ``"model +
0.75*ngf"``)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from regzoo._errors import InputError
from regzoo.bounds import check_option_text, option_value
from regzoo.similarity.base import SIMILARITIES, Similarity

__all__ = ["MultiScale", "WeightedSum", "parse_similarity"]


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
    ([`regzoo.refinement.refine_field`][regzoo.refinement.refine_field]) computes a
    [`DescriptorSimilarity`][regzoo.similarity.descriptor.DescriptorSimilarity] term's descriptors
    once per pair and warps the image once for the other terms. Written on the command line as
    ``model + 0.75*ngf`` ([`parse_similarity`][regzoo.similarity.combinations.parse_similarity]).

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
"""The name that stands for a model's own (training) similarity in
[`parse_similarity`][regzoo.similarity.combinations.parse_similarity]."""

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
    term of weight 1 is that similarity itself; anything else a
    [`WeightedSum`][regzoo.similarity.combinations.WeightedSum]. Nothing in the text is evaluated as
    code.

    Raises:
        InputError: a malformed text, a weight that is not a positive number, bad options, or
            ``model`` without ``trained``.
        UnknownNameError: an unregistered name (close matches are named).
    """
    check_option_text(spec, "similarity")  # bounded length and bracket depth, first
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
            options[key.strip()] = option_value(value, f"similarity {spec!r}: {key.strip()}")
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
