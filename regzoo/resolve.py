"""Config resolution: where a config's names and options meet the registries.

[`build_objective`][regzoo.resolve.build_objective] loads the plugins, builds the similarity and
every regularizer term with its options, resolves each parameter to a fixed value, a training range
or per-label ranges ([`build_term`][regzoo.resolve.build_term]), and checks the free space against
``model.hyper``; problems are reported as [`ConfigError`][regzoo.config.ConfigError] at their key.
The loss itself is [`regzoo.objective.Objective`][regzoo.objective.Objective]; ``config.py`` is a
pure schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from pydantic import ValidationError

from regzoo._errors import InputError, PluginError, UnknownNameError, unknown_name_message
from regzoo.objective import LabelMap, Objective, Term
from regzoo.params import ParamSpec
from regzoo.registry import load_plugins
from regzoo.regularizers import REGULARIZERS
from regzoo.similarity import SIMILARITIES, MultiScale

if TYPE_CHECKING:
    from regzoo.config import ExperimentConfig, ParamRange, TermConfig

__all__ = ["ALPHA", "build_objective", "build_term"]

ALPHA = ParamSpec(
    name="alpha", low=0.0, high=1.0, default=1.0, domain=(0.0, None), description="term weight"
)
"""The declared term weight: every term has one, fixed (the default 1) or free."""


def _configured_spec(base: ParamSpec, value: float | ParamRange | None) -> ParamSpec:
    """A declared spec as a config sets it: unchanged, fixed to a number, or given a range."""
    if value is None:
        return base
    if isinstance(value, int | float):
        return base.fixed(float(value))
    spec = base.override(low=value.low, high=value.high, default=value.default, scale=value.scale)
    if value.default is None and base.name == "alpha":
        return spec.override(default=spec.middle)  # a free weight starts mid-range, not at 1
    return spec


def build_term(config: TermConfig, labels: Mapping[str, int] | None = None) -> Term:
    """Instantiate one term's regularizer and resolve its parameter specs.

    Args:
        config: the term's config.
        labels: label name -> value in the label maps, for per-label parameters.

    Raises:
        UnknownNameError: unknown regularizer, parameter or label name (close matches named).
        InputError: invalid ranges (outside the parameter's domain, log scale with low <= 0),
            or a per-label parameter of a regularizer that does not accept spatial maps.
        pydantic.ValidationError: invalid options for the regularizer's ``Options`` model.
    """
    from regzoo.config import PerLabel

    cls = REGULARIZERS.get(config.name)
    unknown = [k for k in config.params if k not in cls.space.names]
    if unknown:
        raise UnknownNameError(unknown_name_message("parameter", unknown[0], cls.space.names))
    specs: dict[str, ParamSpec] = {}
    maps: dict[str, LabelMap] = {}
    for spec in cls.space:
        value = config.params.get(spec.name)
        if not isinstance(value, PerLabel):
            specs[spec.name] = _configured_spec(spec, value)
            continue
        if not cls.spatial_params:
            raise InputError(
                f"parameter '{spec.name}' is given per_label, but the regularizer "
                f"'{config.name}' does not accept spatial parameter maps"
            )
        if labels is None:
            raise InputError(
                f"parameter '{spec.name}' is given per_label: the label names need their values "
                "(data.labels, or a 'labels' mapping in the dataset JSON)"
            )
        keys = {}
        for name, entry in value.per_label.items():
            if name not in labels:
                raise UnknownNameError(unknown_name_message("label", name, list(labels)))
            key = f"{spec.name}@{name}"
            specs[key] = _configured_spec(spec, entry).renamed(key)
            keys[key] = int(labels[name])
        background = spec.default if value.background is None else value.background
        maps[spec.name] = LabelMap(keys, spec.check_domain(background))
    specs["alpha"] = _configured_spec(ALPHA, config.alpha)
    return Term(config.name, cls(**config.options), specs, maps)


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
        if not isinstance(exc, ValidationError):
            message = exc.args[0] if exc.args else str(exc)
            return ConfigError(config_error_text([f"{key}: {message}"]))
        problems = []
        for error in exc.errors():  # an options model's field, or the whole model (no loc)
            where = ".".join([key, "options", *map(str, error["loc"])]) if error["loc"] else key
            problems.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
        return ConfigError(config_error_text(problems))

    try:
        load_plugins(config.plugins)
    except PluginError as exc:
        raise fail("plugins", exc) from None
    try:
        similarity = SIMILARITIES.get(config.similarity.name)(**config.similarity.options)
        if config.similarity.scales != [1]:
            similarity = MultiScale(similarity, config.similarity.scales)
    except (KeyError, ValueError, ValidationError) as exc:
        raise fail("similarity", exc) from None
    terms: list[Term] = []
    for index, term in enumerate(config.regularizers):
        if term.name in (t.name for t in terms):
            raise fail(
                f"regularizers.{index}.name", ValueError(f"term '{term.name}' appears twice")
            )
        try:
            terms.append(build_term(term, config.data.labels))
        except (KeyError, ValueError, ValidationError) as exc:
            raise fail(f"regularizers.{index}", exc) from None
    if config.weighting == "hypermorph" and len(terms) != 1:
        raise fail("weighting", ValueError("'hypermorph' needs exactly one regularizer term"))
    objective = Objective(similarity, terms, config.weighting)
    free = len(objective.space)
    if not config.model.hyper and free:
        raise fail(
            "model.hyper",
            ValueError(
                "false trains a plain VoxelMorph with fixed parameters: give every parameter "
                f"(and alpha) a number instead of a {{low, high}} range (free: "
                f"{', '.join(objective.space.names)})"
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
