"""The training objective: a similarity plus weighted regularizer terms.

It owns the free parameter space the hypernetwork is conditioned on: every parameter (and term
weight ``alpha``) that a config leaves free, named ``term.param`` (e.g. ``linear_elastic.mu``),
in term order. A parameter given per tissue label contributes one entry per label,
``term.param@label`` (e.g. ``linear_elastic.mu@lung``), and reaches its regularizer as a spatial
map ``(B, 1, *spatial)`` built from the fixed image's label map. Fixed parameters are constants
of the objective. No code here branches on a regularizer's name, and nothing here reads a
config: [`regzoo.resolve.build_objective`][regzoo.resolve.build_objective] builds an objective from
one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from regzoo._errors import InputError, UnknownNameError, unknown_name_message
from regzoo.params import ParamSpace, ParamSpec
from regzoo.regularizers import Regularizer
from regzoo.similarity import Similarity
from regzoo.spatial import Spacing

__all__ = ["LabelMap", "LossTerms", "Objective", "Term"]

WEIGHTINGS = ("additive", "hypermorph", "normalized")


@dataclass(frozen=True)
class LabelMap:
    """How a per-label parameter becomes a spatial map.

    Attributes:
        labels: spec key (``mu@lung``) -> the label's value in the label map.
        background: the value of every voxel whose label is not listed.
    """

    labels: dict[str, int]
    background: float

    def build(
        self,
        values: Mapping[str, float | torch.Tensor],
        label_map: torch.Tensor,
        like: torch.Tensor,
    ) -> torch.Tensor:
        """The map ``(B, 1, *spatial)`` for per-label ``values`` (floats or ``(B,)``).

        Args:
            values: spec key -> value, for every key of `labels`.
            label_map: integer labels ``(B or 1, 1, *spatial)`` on the field's grid.
            like: the free values ``(B, P)``, whose batch size, dtype and device the map takes.
        """
        label_map = label_map.to(like.device)
        shape = (like.shape[0], 1, *label_map.shape[2:])
        result = torch.full(shape, self.background, dtype=like.dtype, device=like.device)
        for key, label in self.labels.items():
            value = torch.as_tensor(values[key], dtype=like.dtype, device=like.device)
            value = value.reshape(-1, *[1] * (len(shape) - 1)) if value.ndim else value
            result = torch.where(label_map == label, value, result)
        return result


@dataclass(frozen=True)
class Term:
    """A configured regularizer term: its module and a spec (fixed or free) per parameter.

    A per-label parameter ``p`` has one spec per label, keyed ``p@label``, and an entry
    ``maps[p]`` that turns their values into a spatial map.
    """

    name: str
    regularizer: Regularizer
    specs: dict[str, ParamSpec]
    maps: dict[str, LabelMap] = field(default_factory=dict)


@dataclass
class LossTerms:
    """Per-sample loss parts, each ``(B,)``.

    Attributes:
        total: the objective ``sim + sum_t alpha_t R_t`` (what refinement minimises).
        similarity: the similarity loss.
        energies: each term's energy (without its weight).
        normalizer: a detached positive factor per sample; training minimises
            ``total / normalizer`` (see
            [`training_loss`][regzoo.objective.LossTerms.training_loss]), which has the same
            minimiser per sample but a gradient of comparable size for soft and stiff samples.
    """

    total: torch.Tensor
    similarity: torch.Tensor
    energies: dict[str, torch.Tensor]
    normalizer: torch.Tensor

    @property
    def training_loss(self) -> torch.Tensor:
        """The per-sample training loss ``total / normalizer`` ``(B,)``."""
        return self.total / self.normalizer


class Objective(nn.Module):
    """``sim(F, W) + sum_t alpha_t R_t(u; params_t)`` with per-sample parameters.

    With ``weighting="hypermorph"`` (one term) it is ``(1 - alpha) sim + alpha R``.

    With ``weighting="normalized"`` the objective is the additive one, but each sample's
    training loss is divided by ``1 + s`` where the regularisation strength
    ``s = sum_t alpha_t R_t(u; p_t) / sum_t alpha_t^0 R_t(u; p_t^0)`` compares the sample's
    weighted energy with the energy at the default parameters ``p^0`` on the same field
    (detached). For an energy linear in a stiffness ``k`` this is HyperMorph's convex form
    ``(sim + k R) / (1 + k)``, generalised to any regularizer without knowing its parameter
    names: it bounds each sample's gradient when the parameters vary by 10^4 within a batch and
    leaves each sample's minimiser unchanged (measured against ``additive`` in docs/design.md).

    Args:
        similarity: the similarity loss.
        terms: configured regularizer terms.
        weighting: ``"additive"``, ``"hypermorph"`` or ``"normalized"``.
    """

    def __init__(self, similarity: Similarity, terms: Sequence[Term], weighting: str = "additive"):
        super().__init__()
        self.similarity = similarity
        self.terms = list(terms)
        self.regularizers = nn.ModuleList(term.regularizer for term in self.terms)
        if weighting not in WEIGHTINGS:
            raise InputError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        self.weighting = weighting
        self.space = ParamSpace(
            specs=tuple(
                spec.renamed(f"{term.name}.{name}")
                for term in self.terms
                for name, spec in term.specs.items()
                if not spec.is_fixed
            )
        )

    def fixed_values(self) -> dict[str, float]:
        """Every fixed parameter, as ``term.param -> value``."""
        return {
            f"{term.name}.{name}": spec.default
            for term in self.terms
            for name, spec in term.specs.items()
            if spec.is_fixed
        }

    @property
    def needs_labels(self) -> bool:
        """True when a term has per-label parameters:
        [`forward`][regzoo.objective.Objective.forward] then needs a label map."""
        return any(term.maps for term in self.terms)

    def canonical_name(self, key: str) -> str:
        """Map a free parameter's short name (``mu``) or full name to its full name.

        Raises:
            KeyError: unknown or ambiguous name.
        """
        names = self.space.names
        if key in names:
            return key
        matches = [n for n in names if n.split(".", 1)[1] == key]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise UnknownNameError(f"parameter '{key}' is ambiguous: use one of {matches}")
        fixed = self.fixed_values()
        if key in fixed or any(n.split(".", 1)[1] == key for n in fixed):
            raise UnknownNameError(f"parameter '{key}' was fixed during training and cannot be set")
        short = [n.split(".", 1)[1] for n in names]
        raise UnknownNameError(unknown_name_message("free parameter", key, names + short))

    def resolve(self, values: Mapping[str, float] | None = None) -> dict[str, float]:
        """Complete a (short- or full-named) mapping with defaults and check the bounds.

        Raises:
            KeyError: unknown or ambiguous name.
            ValueError: a value outside the range the model was trained on, or one parameter
                given twice (short and full name).
        """
        canonical: dict[str, float] = {}
        given: dict[str, str] = {}
        for key, value in (values or {}).items():
            name = self.canonical_name(key)
            if name in canonical:
                raise InputError(f"parameter '{name}' given twice (as '{given[name]}' and '{key}')")
            canonical[name], given[name] = value, key
        return self.space.validate(canonical)

    def to_tensor(self, values: Mapping[str, float] | None = None, batch: int = 1) -> torch.Tensor:
        """Resolve ``values`` and return them as ``(batch, P)``."""
        return self.space.to_tensor(self.resolve(values), batch=batch)

    def term_params(
        self, values: torch.Tensor, labels: torch.Tensor | None = None
    ) -> list[dict[str, float | torch.Tensor]]:
        """Split free values ``(B, P)`` into one mapping per term (fixed ones as floats).

        Per-label parameters become spatial maps ``(B, 1, *spatial)`` through ``labels``, an
        integer label map ``(B or 1, 1, *spatial)`` on the field's grid.

        Raises:
            InputError: if a term has per-label parameters and ``labels`` is missing.
        """
        free = self.space.to_dict(values)
        return [
            self._with_maps(
                term,
                {
                    name: (spec.default if spec.is_fixed else free[f"{term.name}.{name}"])
                    for name, spec in term.specs.items()
                },
                labels,
                values,
            )
            for term in self.terms
        ]

    def parameter_maps(self, values: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The spatial parameter maps ``(B, 1, *spatial)`` of the per-label parameters, by full
        name (``linear_elastic.mu``), for free values ``(B, P)`` and a label map."""
        return {
            f"{term.name}.{name}": torch.as_tensor(params[name])
            for term, params in zip(self.terms, self.term_params(values, labels), strict=True)
            for name in term.maps
        }

    @staticmethod
    def _with_maps(
        term: Term,
        params: dict[str, float | torch.Tensor],
        labels: torch.Tensor | None,
        like: torch.Tensor,
    ) -> dict[str, float | torch.Tensor]:
        """Replace a term's per-label entries (``mu@lung``...) by their maps (``mu``)."""
        if not term.maps:
            return params
        if labels is None:
            raise InputError(
                f"term '{term.name}' has per-label parameters "
                f"({', '.join(k for m in term.maps.values() for k in m.labels)}): it needs the "
                "fixed image's label map (labelsTr; register and explore: --fixed-labels)"
            )
        for name, label_map in term.maps.items():
            params[name] = label_map.build(params, labels, like)
            for key in label_map.labels:
                del params[key]
        return params

    def forward(
        self,
        fixed: torch.Tensor,
        warped: torch.Tensor,
        field: torch.Tensor,
        values: torch.Tensor,
        spacing: Spacing = None,
        labels: torch.Tensor | None = None,
    ) -> LossTerms:
        """Per-sample loss of a batch; ``values`` ``(B, P)`` are the free parameters.

        ``labels`` is the fixed image's integer label map ``(B or 1, 1, *spatial)`` on the
        field's grid, needed when a term has per-label parameters
        ([`needs_labels`][regzoo.objective.Objective.needs_labels]).
        """
        return self.combine(self.similarity(fixed, warped), field, values, spacing, labels)

    def combine(
        self,
        sim: torch.Tensor,
        field: torch.Tensor,
        values: torch.Tensor,
        spacing: Spacing = None,
        labels: torch.Tensor | None = None,
    ) -> LossTerms:
        """The loss parts for a similarity value ``sim`` ``(B,)`` computed by the caller (e.g.
        refinement comparing precomputed descriptors); otherwise as
        [`forward`][regzoo.objective.Objective.forward]."""
        weighted = torch.zeros_like(sim)
        reference = torch.zeros_like(sim)
        weight_sum: torch.Tensor | float = 0.0
        energies = {}
        params_per_term = self.term_params(values, labels)
        for term, params in zip(self.terms, params_per_term, strict=True):
            alpha = params.pop("alpha")
            # the term's own specs (config bounds, possibly wider than the declared ones) were
            # validated when the objective was built, so the energy is called directly
            energy = term.regularizer.energy(field, params, spacing)
            energies[term.name] = energy
            weighted = weighted + alpha * energy
            weight_sum = weight_sum + alpha
            if self.weighting == "normalized":
                reference = reference + self._reference_energy(term, field, spacing, labels)
        sim_weight = (1 - weight_sum) if self.weighting == "hypermorph" else 1.0
        normalizer = torch.ones_like(sim)
        if self.weighting == "normalized":
            with torch.no_grad():
                strength = torch.where(
                    reference > 1e-12, weighted / reference.clamp_min(1e-12), 1.0
                )
                normalizer = 1.0 + strength
        return LossTerms(
            total=weighted + sim_weight * sim,
            similarity=sim,
            energies=energies,
            normalizer=normalizer.detach(),
        )

    @classmethod
    def _reference_energy(
        cls, term: Term, field: torch.Tensor, spacing: Spacing, labels: torch.Tensor | None
    ) -> torch.Tensor:
        """``alpha^0 R(field; p^0)`` at the term's default parameters, without gradient."""
        defaults: dict[str, float | torch.Tensor] = {
            name: spec.default for name, spec in term.specs.items()
        }
        defaults = cls._with_maps(term, defaults, labels, field.new_zeros(field.shape[0], 0))
        alpha = defaults.pop("alpha")
        with torch.no_grad():
            return alpha * term.regularizer.energy(field, defaults, spacing)
