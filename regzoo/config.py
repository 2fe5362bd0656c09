"""The pydantic experiment configuration (YAML in, ``--set dotted.key=value`` overrides).

A pure schema: every section forbids unknown keys and names close matches, and values are
checked for type, range and consistency between sections. Nothing here loads a plugin or builds
a component: [`regzoo.resolve.build_objective`][regzoo.resolve.build_objective] resolves the
plugins, the similarity and every regularizer term (names, options, parameter ranges) once, and
reports problems as [`ConfigError`][regzoo.config.ConfigError] at their key.

The module is long because it is the whole schema, one class per YAML section with its checks
beside it; the config reference (docs/config-reference.md) is generated from it in this order.
"""

from __future__ import annotations

import copy
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from regzoo._errors import InputError, MissingFileError, RegzooError, unknown_name_message
from regzoo.io import atomic_write_text

__all__ = [
    "ConfigError",
    "DataConfig",
    "ExperimentConfig",
    "LookaheadConfig",
    "ModelConfig",
    "OptimizerConfig",
    "ParamRange",
    "PerLabel",
    "PhantomConfig",
    "TermConfig",
    "TrainerConfig",
    "apply_overrides",
    "config_error_text",
    "load_config",
]


class ConfigError(RegzooError, ValueError):
    """An invalid experiment configuration (the message lists every problem with its key)."""


class StrictModel(BaseModel):
    """Base of config sections: unknown keys are errors that name the close matches."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            known = list(cls.model_fields)
            for key in data:
                if key not in known:
                    raise InputError(unknown_name_message("key", str(key), known))
        return data


class ParamRange(StrictModel):
    """A free parameter's range: it is sampled in ``[low, high]`` during training."""

    low: float
    high: float
    scale: Literal["linear", "log", "periodic"] | None = Field(
        None, description="sampling scale; defaults to the regularizer's declared scale"
    )
    default: float | None = Field(
        None, description="test-time default; the declared default clamped into the range"
    )


class PerLabel(StrictModel):
    """A parameter given per tissue label: one value or range per label of the fixed image.

    Each label's entry is a number (fixed) or a [`ParamRange`][regzoo.config.ParamRange] (free: the
    hypernetwork is conditioned on it as ``term.param@label``, short ``param@label``). The values
    become a spatial parameter map through the fixed image's label map (labelsTr); voxels whose
    label is not listed (including 0) take ``background``.

    Examples:
        >>> PerLabel.model_validate(
        ...     {"per_label": {"lung": {"low": 0.01, "high": 1}, "bone": 10}, "background": 1}
        ... ).background
        1.0
    """

    per_label: dict[str, float | ParamRange] = Field(
        min_length=1, description="label name -> number (fixed) or {low, high} (free)"
    )
    background: float | None = Field(
        None, description="value of unlisted labels; the parameter's declared default if null"
    )

    @model_validator(mode="after")
    def _check_names(self) -> PerLabel:
        for name in self.per_label:
            if not name or any(c in name for c in ".@=, "):
                raise InputError(
                    f"per_label: label name {name!r} must be non-empty without '.', '@', '=', "
                    "',' or spaces"
                )
        return self


ParamValue = float | ParamRange
TermParam = float | ParamRange | PerLabel


class TermConfig(StrictModel):
    """One regularizer term ``alpha * R(u; params)`` of the loss.

    ``alpha`` and each parameter are either a number (fixed) or a range (free: sampled during
    training and an input of the hypernetwork). A parameter of a regularizer that accepts
    spatial maps may also be given per tissue label ([`PerLabel`][regzoo.config.PerLabel]).
    Parameters not listed stay free on the regularizer's declared range; ``alpha`` not listed is
    fixed to 1.
    """

    name: str = Field(description="registered regularizer name (see `regzoo regularizers`)")
    alpha: ParamValue = Field(1.0, description="term weight: a number or {low, high}")
    params: dict[str, TermParam] = Field(
        default_factory=dict,
        description="parameter name -> number (fixed), {low, high} (free) or "
        "{per_label: {label: number or {low, high}}, background} (a spatial map)",
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="regularizer-specific options (its Options model)"
    )


class PhantomConfig(StrictModel):
    """The built-in synthetic thoracic CT set, built when ``data.root`` does not exist."""

    n: int = Field(16, ge=2, description="number of cases (pairs)")
    val: int = Field(4, ge=1, description="cases held out for `registration_val`")
    shape: tuple[int, int, int] | tuple[int, int] = Field(
        (64, 64, 64), description="image size: 3 sizes (3D) or 2 (a 2D coronal slice)"
    )
    seed: int = 0
    motion: Literal["breathing", "tissue"] = Field(
        "breathing",
        description="breathing: smooth motion of the whole body (the default); tissue: the "
        "rib cage and spine nearly rigid, the lungs soft and sliding along the chest wall",
    )

    @model_validator(mode="after")
    def _check_split(self) -> PhantomConfig:
        if self.val >= self.n:
            raise InputError(f"phantom.val={self.val} must be smaller than phantom.n={self.n}")
        if not 16 <= min(self.shape) <= max(self.shape) <= 1024:
            raise InputError(
                f"phantom.shape must be 16 to 1024 per axis (MAX_PHANTOM_SIDE), got {self.shape}"
            )
        return self


class DataConfig(StrictModel):
    """Where the pairs come from (a Learn2Reg-layout folder) and how they are normalised."""

    root: Path = Field(Path("data/phantom"), description="Learn2Reg-layout dataset folder")
    phantom: PhantomConfig | None = Field(
        default_factory=PhantomConfig,
        description="build this phantom when `root` is missing (null: missing root is an error)",
    )
    intensity_window: tuple[float, float] = Field(
        (-1000.0, 500.0), description="CT window (HU) clipped and mapped to [0, 1]"
    )
    intensity: Literal["window", "percentile", "zscore"] = Field(
        "window",
        description="intensity normalisation: window (intensity_window, CT), percentile "
        "(each image's `percentiles` mapped to [0, 1], e.g. MRI) or zscore (zero mean, unit "
        "variance); torchio's RescaleIntensity and ZNormalization",
    )
    percentiles: tuple[float, float] = Field(
        (0.5, 99.5), description="with intensity: percentile, the (low, high) percentiles"
    )
    align: Literal["none", "rigid", "affine"] = Field(
        "none",
        description="pre-alignment `regzoo register` runs before the network when not given "
        "(--rigid/--affine): none, rigid or affine (regzoo.align)",
    )
    batch_size: int = Field(1, ge=1)
    num_workers: int = Field(
        0, ge=0, description="loader processes reading pairs from disk ahead of the step"
    )
    cache: bool = Field(
        False,
        description="keep decoded volumes in memory (each worker its own copy); false: every "
        "pair is read from disk when it is used (data sets larger than memory)",
    )
    labels: dict[str, int] | None = Field(
        None,
        description="label name -> value in labelsTr, for per-label parameters (null: from the "
        "dataset JSON's 'labels' mapping when a term needs it)",
    )
    self_pairs: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of training pairs whose moving image is replaced by the fixed one: "
        "an image registered to itself, whose optimum is u = 0 at every setting (teaches the "
        "network not to add the data set's average motion)",
    )

    @model_validator(mode="after")
    def _check_window(self) -> DataConfig:
        low, high = self.intensity_window
        if not high > low:
            raise ValueError(
                f"intensity_window must be (low, high) with high > low, got {(low, high)}"
            )
        low, high = self.percentiles
        if not 0.0 <= low < high <= 100.0:
            raise ValueError(
                f"percentiles must be (low, high) with 0 <= low < high <= 100, got {(low, high)}"
            )
        if self.labels is not None and any(v <= 0 for v in self.labels.values()):
            raise ValueError(
                f"labels: values must be positive (0 is background), got {self.labels}"
            )
        return self


class ModelConfig(StrictModel):
    """The registration network (VoxelMorph U-Net) and its hypernetwork."""

    ndim: Literal[2, 3] = Field(3, description="spatial dimensions of the images (2 or 3)")
    hyper: bool = Field(
        True, description="condition on the free parameters (False: plain VoxelMorph)"
    )
    enc: list[int] = Field([16, 32, 32, 32], min_length=1)
    dec: list[int] = Field([32, 32, 32, 32, 32, 16, 16], min_length=1)
    hyper_units: list[int] = Field([32, 32, 32, 32], min_length=1)
    conditioning: Literal["film", "weights"] = Field(
        "film",
        description="how the parameters enter the U-Net: film modulates every block's output "
        "channels (identity at initialisation); weights generates every kernel (HyperMorph)",
    )
    int_steps: int = Field(0, ge=0, description="scaling-and-squaring steps (0: no integration)")
    int_downsize: Literal[1, 2] = Field(1, description="2: predict the flow at half resolution")
    hyper_init_share: float = Field(
        0.05,
        ge=0,
        le=1,
        description="share of each generated kernel's initial variance that depends on the "
        "parameters (conditioning at initialisation; conditioning: weights only)",
    )
    symmetric: bool = Field(
        False,
        description="antisymmetric output u(F, M) = (g(F, M) - g(M, F)) / 2 (the velocity for "
        "diffeomorphic models), both orders one batched forward: an image registered to itself "
        "does not move, at every parameter setting, by construction (about 2x the network's cost)",
    )
    compile: bool = Field(
        False,
        description="train the network through torch.compile (slow first steps; no effect on "
        "checkpoints or inference)",
    )


class SimilarityConfig(StrictModel):
    """The image similarity loss."""

    name: str = "lncc"
    options: dict[str, Any] = Field(default_factory=lambda: {"window": 9})
    scales: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [1],
        min_length=1,
        description="image pyramid the similarity is averaged over: pooling factors, e.g. "
        "[1, 2, 4] (the image, half and quarter size); [1] is the bare similarity",
    )


class OptimizerConfig(StrictModel):
    """Optimiser settings (Adam, lr 1e-4 as in the paper)."""

    name: Literal["adam", "adamw"] = "adam"
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["constant", "cosine"] = Field(
        "constant",
        description="learning rate over the run: constant, or cosine decay to zero at "
        "trainer.max_steps (after the warm-up)",
    )
    warmup_steps: int = Field(
        0, ge=0, description="raise the learning rate linearly from 0 over this many steps"
    )
    ema_steps: int = Field(
        0,
        ge=0,
        description="validate and save an exponential moving average of the weights over about "
        "this many last steps (decay 1 - 1/N; 0: the raw weights)",
    )
    conditioning_lr_scale: float = Field(
        1.0,
        gt=0,
        description="learning rate of the conditioning path (hypernetwork, FiLM or generated "
        "weights' heads) as a multiple of lr",
    )


class SamplingConfig(StrictModel):
    """How training draws parameter vectors."""

    endpoint_rate: float = Field(
        0.2, ge=0, le=1, description="probability of snapping a coordinate to a range end"
    )
    curriculum_steps: int = Field(
        0,
        ge=0,
        description="widen the sampled range over this many steps, from the default "
        "parameters to the whole range (on each parameter's own scale; 0: whole range from the "
        "start)",
    )


class LookaheadConfig(StrictModel):
    """Train the network towards the field that refinement reaches from its own prediction.

    Every training step refines the network's field for ``steps`` iterations under the
    sample's own objective ([`regzoo.refinement.refine_field`][regzoo.refinement.refine_field],
    warm-started from the prediction, detached) and adds ``weight`` times the mean squared distance
    to that field, in voxels, to the sample's loss: the network learns to jump to where instance
    optimisation goes (amortised optimisation). Refinement's Adam steps have the same size for soft
    and stiff samples, so this term is on one scale across the whole parameter range.
    """

    steps: int = Field(0, ge=0, description="refinement iterations per training step (0: off)")
    weight: float = Field(1.0, gt=0, description="weight of the squared distance (voxels^2)")
    lr: float = Field(0.1, gt=0, description="refinement learning rate, voxels of its grid")
    levels: int = Field(
        1, ge=1, description="refinement pyramid levels (1: the training images' size)"
    )
    grid_downsize: int = Field(2, ge=1, description="refinement grid coarsening")


class TrainerConfig(StrictModel):
    """Options passed to ``lightning.Trainer`` (CPU, GPU, DDP and AMP through these)."""

    max_steps: int = Field(-1, ge=-1)
    max_epochs: int | None = Field(None, ge=1)
    accelerator: str = "auto"
    devices: int | str | list[int] = "auto"
    num_nodes: int = Field(1, ge=1, description="machines of a multi-node DDP run")
    strategy: str = "auto"
    precision: str = "32-true"
    log_every_n_steps: int = Field(10, ge=1)
    check_val_every_n_epoch: int | None = Field(1, ge=1)
    limit_val_batches: int | float = 1.0
    gradient_clip_val: float | None = None
    progress_bar: bool = True
    nonfinite: Literal["error", "skip"] = Field(
        "error",
        description="on a NaN/inf loss or gradient: stop with an error naming the step and "
        "parameters, or skip the step",
    )
    divergence_guard: bool = Field(
        True,
        description="after each validation, stop a run whose Dice collapses or whose objective "
        "rises far above its best, restore the best weights and report the step",
    )
    checkpoint_every_n_steps: int | None = Field(
        500, ge=1, description="also write checkpoints/last.ckpt every N steps (null: at the end)"
    )

    @model_validator(mode="after")
    def _has_a_stop(self) -> TrainerConfig:
        if self.max_steps == -1 and self.max_epochs is None:
            raise InputError("trainer: set max_steps or max_epochs")
        return self


class LoggingConfig(StrictModel):
    """TensorBoard logging."""

    image_every_n_steps: int = Field(100, ge=1, description="image/flow slices every N steps")


class ExperimentConfig(StrictModel):
    """A complete experiment: data, network, loss terms, optimisation and logging.

    Examples:
        >>> cfg = ExperimentConfig.model_validate(
        ...     {"regularizers": [{"name": "linear_elastic"}], "trainer": {"max_steps": 10}}
        ... )
        >>> cfg.regularizers[0].name
        'linear_elastic'
    """

    name: str = "experiment"
    seed: int = 0
    run_dir: Path = Field(Path("runs/experiment"), description="outputs: checkpoints, logs")
    plugins: list[str] = Field(
        default_factory=list, description="plugin modules or .py files to import first"
    )
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    similarity: SimilarityConfig = Field(default_factory=SimilarityConfig)
    regularizers: list[TermConfig] = Field(min_length=1)
    regularize: Literal["displacement", "velocity"] = Field(
        "displacement", description="field the regularizers see (velocity needs int_steps > 0)"
    )
    weighting: Literal["additive", "hypermorph", "normalized"] = Field(
        "additive",
        description=(
            "additive: sim + alpha R; hypermorph: (1 - alpha) sim + alpha R; normalized: "
            "additive, each sample's training loss divided by 1 + its regularisation strength "
            "relative to the defaults (stable when parameters span decades)"
        ),
    )
    energy_units: Literal["mm", "voxel"] = Field(
        "mm",
        description="mm: regularizer derivatives per millimetre from the images' voxel spacing "
        "(anisotropic data is regularised by its physical geometry); voxel: per voxel",
    )
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    lookahead: LookaheadConfig = Field(default_factory=LookaheadConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    trainer: TrainerConfig = Field(default_factory=lambda: TrainerConfig(max_epochs=250))
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    def label_names(self) -> list[str]:
        """The tissue labels that per-label parameters name, in order of appearance."""
        names: dict[str, None] = {}
        for term in self.regularizers:
            for value in term.params.values():
                if isinstance(value, PerLabel):
                    names.update(dict.fromkeys(value.per_label))
        return list(names)

    @model_validator(mode="after")
    def _check_consistency(self) -> ExperimentConfig:
        if self.optimizer.schedule == "cosine" and self.trainer.max_steps < 1:
            raise ValueError("optimizer.schedule 'cosine' needs trainer.max_steps (its length)")
        if self.regularize == "velocity" and self.model.int_steps == 0:
            raise ValueError(
                "regularize='velocity' needs model.int_steps > 0 (a diffeomorphic model)"
            )
        phantom = self.data.phantom
        if phantom is not None and len(phantom.shape) != self.model.ndim:
            raise ValueError(
                f"data.phantom.shape {tuple(phantom.shape)} has {len(phantom.shape)} axes but "
                f"model.ndim is {self.model.ndim}"
            )
        return self


def _format_validation_error(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {message}")
    return config_error_text(lines)


def config_error_text(problems: Sequence[str]) -> str:
    """``invalid config: key: message`` (one problem) or one indented line per problem."""
    if len(problems) == 1:
        return f"invalid config: {problems[0]}"
    return "invalid config:\n" + "\n".join(f"  {p}" for p in problems)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML itself lets the last
    one win silently: a second ``regularizers:`` block would replace the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(text: str) -> Any:
    """Parse YAML text safely (no code, no custom tags), refusing duplicate keys.

    Raises:
        yaml.YAMLError: malformed text or a key given twice in one mapping.
    """
    return yaml.load(text, Loader=_UniqueKeyLoader)


def _parse_value(key: str, text: str) -> Any:
    """Parse an override value as YAML (numbers, lists, null, strings); never evaluates code.

    Raises:
        ConfigError: one line naming the key, for text that is not YAML.
    """
    if not text.strip():
        return ""
    try:
        return read_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"invalid config: --set {key}: {text!r} is not a value YAML can read "
            f"({_yaml_problem(exc)})"
        ) from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line for a YAML error: ``line N: problem`` (without PyYAML's source excerpt)."""
    problem = getattr(exc, "problem", None)
    if problem is None:
        return " ".join(str(exc).split())
    mark = getattr(exc, "problem_mark", None)
    return f"line {mark.line + 1}: {problem}" if mark is not None else str(problem)


def _members(annotation: Any) -> list[Any]:
    """The members of a union annotation (``X | None`` -> ``[X, None]``), or ``[annotation]``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return list(typing.get_args(annotation))
    return [annotation]


def _field_type(schema: type[BaseModel], parts: Sequence[str]) -> Any:
    """The declared type of the field at a dotted path of ``schema`` (``None``: not found).

    Sections (pydantic models), list items (an integer part) and dict values are followed; a
    union of sections (``PhantomConfig | None``) follows its model member.
    """
    annotation: Any = schema
    for part in parts:
        models = [m for m in _members(annotation) if isinstance(m, type)]
        section = next((m for m in models if issubclass(m, BaseModel)), None)
        if section is not None:
            field = section.model_fields.get(part)
            if field is None:
                return None
            annotation = field.annotation
            continue
        containers = [m for m in _members(annotation) if typing.get_origin(m) in (list, dict)]
        if not containers:
            return None
        container = containers[0]
        args = typing.get_args(container)
        if typing.get_origin(container) is list and part.isdigit() and args:
            annotation = args[0]
        elif typing.get_origin(container) is dict and len(args) == 2:
            annotation = args[1]
        else:
            return None
    return annotation


def _override_value(key: str, raw: str, annotation: Any) -> Any:
    """An override's value for a field of type ``annotation``: the YAML reading of ``raw``
    (numbers, lists, null...) when the field accepts it, else ``raw`` itself when the field
    accepts text (``--set name=yes`` is the name "yes", ``run_dir=2024`` the folder "2024")."""
    value = _parse_value(key, raw)
    if annotation is None or isinstance(value, str):
        return value
    adapter: TypeAdapter[Any] = TypeAdapter(annotation)
    try:
        adapter.validate_python(value)
    except ValidationError:
        try:
            adapter.validate_python(raw)
        except ValidationError:
            return value  # the full validation reports the field's error
        return raw
    return value


def apply_overrides(
    data: dict[str, Any],
    overrides: Sequence[str],
    *,
    schema: type[BaseModel] | None = None,
) -> dict[str, Any]:
    """Return a copy of ``data`` with ``dotted.key=value`` overrides applied.

    Integer path parts index lists (``regularizers.0.alpha=0.5``). Values are parsed as YAML,
    then checked against the field's declared type in ``schema`` (``ExperimentConfig`` by
    default): a text field keeps the text as given (``name=yes``, ``run_dir=2024``) where the
    YAML reading (a boolean, a number) is not of its type.

    Raises:
        ConfigError: for a malformed override or a path through a non-container.
    """
    schema = ExperimentConfig if schema is None else schema
    result = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like dotted.key=value")
        parts = key.split(".")
        value = _override_value(key, raw, _field_type(schema, parts))
        node: Any = result
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(
                        f"override {item!r}: '{part}' is not an index of a list of {len(node)}"
                    )
                index = int(part)
                if last:
                    node[index] = value
                else:
                    node = node[index]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
            else:
                raise ConfigError(f"override {item!r}: '{'.'.join(parts[:i])}' is not a section")
    return result


def load_config(
    source: str | Path | Mapping[str, Any], overrides: Sequence[str] = ()
) -> ExperimentConfig:
    """Read a YAML file (or a mapping), apply overrides and validate.

    Raises:
        FileNotFoundError: if the file does not exist.
        ConfigError: listing every invalid key with its location and close matches.
    """
    if isinstance(source, Mapping):
        data = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise MissingFileError(f"config file not found: {path}")
        try:
            data = read_yaml(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"invalid config: {path}: {_yaml_problem(exc)}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a config must be a mapping, got {type(data).__name__}")
    data = apply_overrides(data, overrides)
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from None


def dump_config(config: ExperimentConfig, path: Path) -> None:
    """Write the resolved config as YAML (atomically: a temporary file then a rename)."""
    atomic_write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), path)
