"""The training objective: a similarity plus weighted regularizer terms.

It owns the free parameter space the hypernetwork is conditioned on: every parameter (and term
weight ``alpha``) that a config leaves free, named ``term.param`` (e.g. ``linear_elastic.mu``),
in term order. Fixed parameters are constants of the objective. No code here branches on a
regularizer's name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from pydantic import ValidationError
from torch import nn

from regzoo._errors import InputError, PluginError, UnknownNameError, unknown_name_message
from regzoo.params import ParamSpace, ParamSpec
from regzoo.registry import load_plugins
from regzoo.regularizers import REGULARIZERS, Regularizer
from regzoo.similarity import SIMILARITIES, Similarity
from regzoo.spatial import Spacing

if TYPE_CHECKING:
    from regzoo.config import ExperimentConfig, ParamRange, TermConfig

__all__ = ["LossTerms", "Objective", "Term", "build_objective", "build_term"]

WEIGHTINGS = ("additive", "hypermorph", "normalized")
ALPHA = ParamSpec(
    name="alpha", low=0.0, high=1.0, default=1.0, domain=(0.0, None), description="term weight"
)


@dataclass(frozen=True)
class Term:
    """A configured regularizer term: its module and a spec (fixed or free) per parameter."""

    label: str
    regularizer: Regularizer
    specs: dict[str, ParamSpec]


@dataclass
class LossTerms:
    """Per-sample loss parts, each ``(B,)``.

    Attributes:
        total: the objective ``sim + sum_t alpha_t R_t`` (what refinement minimises).
        similarity: the similarity loss.
        energies: each term's energy (without its weight).
        normalizer: a detached positive factor per sample; training minimises
            ``total / normalizer`` (see :attr:`training`), which has the same minimiser per
            sample but a gradient of comparable size for soft and stiff samples.
    """

    total: torch.Tensor
    similarity: torch.Tensor
    energies: dict[str, torch.Tensor]
    normalizer: torch.Tensor

    @property
    def training(self) -> torch.Tensor:
        """The per-sample training loss ``total / normalizer`` ``(B,)``."""
        return self.total / self.normalizer


def _configured_spec(base: ParamSpec, value: float | ParamRange | None) -> ParamSpec:
    if value is None:
        return base
    if isinstance(value, int | float):
        return base.fixed(float(value))
    base.check_domain(value.low)
    base.check_domain(value.high)
    scale = value.scale or base.scale
    if scale == "log" and value.low <= 0:
        hint = "" if value.scale else f" ('{base.name}' is declared on a log scale)"
        raise InputError(
            f"parameter '{base.name}': a log-scale range needs low > 0, got "
            f"[{value.low:g}, {value.high:g}]{hint}; give a positive low or scale: linear"
        )
    if value.default is not None:
        default = value.default
    elif value.low <= base.default <= value.high and base.name != "alpha":
        default = base.default
    else:
        mid = ParamSpace.of(
            ParamSpec(
                name=base.name, low=value.low, high=value.high, default=value.low, scale=scale
            )
        ).denormalize(torch.tensor([0.5], dtype=torch.float64))
        default = float(mid[0])
    return ParamSpec(
        name=base.name,
        low=value.low,
        high=value.high,
        default=default,
        scale=scale,
        domain=base.domain,
        description=base.description,
    )


def build_term(config: TermConfig) -> Term:
    """Instantiate one term's regularizer and resolve its parameter specs.

    Raises:
        UnknownNameError: unknown regularizer or parameter name (close matches named).
        InputError: invalid ranges (outside the parameter's domain, log scale with low <= 0).
        pydantic.ValidationError: invalid options for the regularizer's ``Options`` model.
    """
    cls = REGULARIZERS.get(config.name)
    unknown = [k for k in config.params if k not in cls.space.names]
    if unknown:
        raise UnknownNameError(unknown_name_message("parameter", unknown[0], cls.space.names))
    specs = {spec.name: _configured_spec(spec, config.params.get(spec.name)) for spec in cls.space}
    specs["alpha"] = _configured_spec(ALPHA, config.alpha)
    return Term(config.name, cls(**config.options), specs)


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
        weighting: ``"additive"`` or ``"hypermorph"``.
    """

    def __init__(self, similarity: Similarity, terms: Sequence[Term], weighting: str = "additive"):
        super().__init__()
        self.similarity = similarity
        self.terms = list(terms)
        self.regularizers = nn.ModuleList(term.regularizer for term in self.terms)
        if weighting not in WEIGHTINGS:
            raise InputError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        self.weighting = weighting
        self.free_space = ParamSpace(
            specs=tuple(
                spec.renamed(f"{term.label}.{name}")
                for term in self.terms
                for name, spec in term.specs.items()
                if not spec.is_fixed
            )
        )

    def fixed_values(self) -> dict[str, float]:
        """Every fixed parameter, as ``term.param -> value``."""
        return {
            f"{term.label}.{name}": spec.default
            for term in self.terms
            for name, spec in term.specs.items()
            if spec.is_fixed
        }

    def canonical_name(self, key: str) -> str:
        """Map a free parameter's short name (``mu``) or full name to its full name.

        Raises:
            KeyError: unknown or ambiguous name.
        """
        names = self.free_space.names
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
        return self.free_space.validate(canonical)

    def to_tensor(self, values: Mapping[str, float] | None = None, batch: int = 1) -> torch.Tensor:
        """Resolve ``values`` and return them as ``(batch, P)``."""
        return self.free_space.to_tensor(self.resolve(values), batch=batch)

    def term_params(self, values: torch.Tensor) -> list[dict[str, float | torch.Tensor]]:
        """Split free values ``(B, P)`` into one mapping per term (fixed ones as floats)."""
        free = self.free_space.to_dict(values)
        return [
            {
                name: (spec.default if spec.is_fixed else free[f"{term.label}.{name}"])
                for name, spec in term.specs.items()
            }
            for term in self.terms
        ]

    def forward(
        self,
        fixed: torch.Tensor,
        warped: torch.Tensor,
        field: torch.Tensor,
        values: torch.Tensor,
        spacing: Spacing = None,
    ) -> LossTerms:
        """Per-sample loss of a batch; ``values`` ``(B, P)`` are the free parameters."""
        sim = self.similarity(fixed, warped)
        weighted = torch.zeros_like(sim)
        reference = torch.zeros_like(sim)
        weight_sum: torch.Tensor | float = 0.0
        energies = {}
        for term, params in zip(self.terms, self.term_params(values), strict=True):
            alpha = params.pop("alpha")
            # the term's own specs (config bounds, possibly wider than the declared ones) were
            # validated when the objective was built, so the energy is called directly
            energy = term.regularizer.energy(field, params, spacing)
            energies[term.label] = energy
            weighted = weighted + alpha * energy
            weight_sum = weight_sum + alpha
            if self.weighting == "normalized":
                reference = reference + self._reference_energy(term, field, spacing)
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

    @staticmethod
    def _reference_energy(term: Term, field: torch.Tensor, spacing: Spacing) -> torch.Tensor:
        """``alpha^0 R(field; p^0)`` at the term's default parameters, without gradient."""
        defaults = {name: spec.default for name, spec in term.specs.items()}
        alpha = defaults.pop("alpha")
        with torch.no_grad():
            return alpha * term.regularizer.energy(field, defaults, spacing)


def build_objective(config: ExperimentConfig) -> Objective:
    """Resolve a config's components once: plugins, similarity, terms and the free space.

    This is where a config's names and options meet the registries (``config.py`` is a pure
    schema): plugins are loaded, the similarity and each regularizer are built with their
    options, parameter ranges are checked against their domains, and the free space is checked
    against ``model.hyper``.

    Raises:
        ConfigError: naming the key of each problem (``regularizers.0.params``...).
    """
    from regzoo.config import ConfigError, config_error_text

    def fail(key: str, exc: BaseException) -> ConfigError:
        message = exc.args[0] if exc.args else str(exc)
        if isinstance(exc, ValidationError):
            message = "invalid options: " + "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
            )
        return ConfigError(config_error_text([f"{key}: {message}"]))

    try:
        load_plugins(config.plugins)
    except PluginError as exc:
        raise fail("plugins", exc) from None
    try:
        similarity = SIMILARITIES.get(config.similarity.name)(**config.similarity.options)
    except (KeyError, ValueError, ValidationError) as exc:
        raise fail("similarity", exc) from None
    terms = []
    for index, term in enumerate(config.regularizers):
        if term.name in (t.label for t in terms):
            raise fail(
                f"regularizers.{index}.name", ValueError(f"term '{term.name}' appears twice")
            )
        try:
            terms.append(build_term(term))
        except (KeyError, ValueError, ValidationError) as exc:
            raise fail(f"regularizers.{index}", exc) from None
    if config.weighting == "hypermorph" and len(terms) != 1:
        raise fail("weighting", ValueError("'hypermorph' needs exactly one regularizer term"))
    objective = Objective(similarity, terms, config.weighting)
    free = len(objective.free_space)
    if not config.model.hyper and free:
        raise fail(
            "model.hyper",
            ValueError(
                "false trains a plain VoxelMorph with fixed parameters: give every parameter "
                f"(and alpha) a number instead of a {{low, high}} range (free: "
                f"{', '.join(objective.free_space.names)})"
            ),
        )
    if config.model.hyper and free == 0:
        raise fail(
            "model.hyper",
            ValueError(
                "true but every parameter is fixed: free one (give it {low, high}) or set "
                "model.hyper=false"
            ),
        )
    return objective
