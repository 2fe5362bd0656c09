"""How a model is STORED: reading checkpoints, the config digest, the sections that define a
model, and the one check that ``load_model``, ``train(config, resume=True)`` and
``regzoo train --resume`` share.

A checkpoint is a Lightning checkpoint whose ``state_dict`` holds the
[`RegistrationModel`][regzoo.registration_model.RegistrationModel]'s weights (``net.*``), plus a
``regzoo`` entry: the config, the plugins, the free parameters, the sampler states and the digest.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from regzoo._errors import (
    InputError,
    MissingFileError,
    PluginError,
    RegzooError,
    checkpoint_read_reason,
)
from regzoo.config import ExperimentConfig
from regzoo.fingerprint import add_fingerprint, check_fingerprint
from regzoo.nets.unet import drop_flow_shift
from regzoo.pretrained_models import (
    PRETRAINED_DIR,
    available_pretrained,
    resolve_model,
    unknown_pretrained,
)
from regzoo.registration_model import RegistrationModel, TrainingGrid, build_network
from regzoo.registry import Registry, load_plugins
from regzoo.resolve import build_objective

__all__ = [
    "CHECKPOINT_KEY",
    "MODEL_SECTIONS",
    "RESUMABLE",
    "build_network",
    "check_resume",
    "config_digest",
    "load_model",
    "model_weights",
    "plugin_reference",
    "pretrained",
    "write_weights_only",
]

CHECKPOINT_KEY = "regzoo"
"""The checkpoint entry that holds regzoo's own records."""

MODEL_SECTIONS = ("model", "regularizers", "similarity", "weighting", "regularize", "plugins")
"""The config sections that define a model's weights: the digest covers them (all but the
plugins, stored beside it as references) and a resumed run must not change them."""

RESUMABLE = (
    "trainer.max_steps",
    "trainer.max_epochs",
    "trainer.progress_bar",
    "trainer.log_every_n_steps",
    "trainer.checkpoint_every_n_steps",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy",
    "trainer.gradient_clip_val",
    "optimizer.lr",
    "data.num_workers",
    "data.root",
    "logging.",
)
"""Settings a resumed run may change, each only with an explicit ``--set`` (recorded): among
them what a divergence stop advises (a lower ``optimizer.lr``, ``trainer.gradient_clip_val``)."""

_WRAPPER_PREFIX = "model."  # the LightningModule holds the RegistrationModel as ``model``


_DIGEST_SINCE = {"model": {"symmetric": False}}
"""Settings added after checkpoints began to store the digest, with the value every earlier
model had: left out of the digest at that value, so that those checkpoints still load."""


def config_digest(config: ExperimentConfig) -> str:
    """A digest of what defines a model's weights
    ([`MODEL_SECTIONS`][regzoo.checkpoint.MODEL_SECTIONS] but the plugins), stored in checkpoints so
    that a config edited after training is recognised."""
    data = config.model_dump(mode="json")
    fixed = {k: data.get(k) for k in MODEL_SECTIONS if k != "plugins"}
    for section, added in _DIGEST_SINCE.items():
        values = fixed.get(section)
        if isinstance(values, dict):
            kept = {k: v for k, v in values.items() if not (k in added and v == added[k])}
            fixed[section] = kept
    return hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()[:16]


def plugin_reference(spec: str) -> str:
    """A plugin as stored in checkpoints: ``.py`` files as absolute paths, modules as named."""
    return str(Path(spec).resolve()) if spec.endswith(".py") else spec


def plugin_origins(config: ExperimentConfig) -> list[dict[str, str]]:
    """The installed distributions that provide the config's plugin components, as stored in
    checkpoints: ``{"kind", "name", "distribution", "version"}`` per regularizer or similarity
    that a package provides ([`Registry.origin`][regzoo.registry.Registry.origin]); built-ins
    and plugins loaded from files have none."""
    from regzoo.regularizers import REGULARIZERS
    from regzoo.similarity import SIMILARITIES

    wanted: list[tuple[str, Registry[Any], str]] = [
        ("regularizer", REGULARIZERS, term.name) for term in config.regularizers
    ]
    wanted.append(("similarity", SIMILARITIES, config.similarity.name))
    origins: dict[tuple[str, str], dict[str, str]] = {}
    for kind, registry, name in wanted:
        origin = registry.origin(name) if name in registry.available() else None
        if origin is not None:
            origins[kind, name] = {
                "kind": kind,
                "name": name,
                "distribution": origin.distribution,
                "version": origin.version,
            }
    return list(origins.values())


def missing_plugin_package(extras: Mapping[str, Any]) -> str | None:
    """For a checkpoint whose recorded plugin package is not installed: the one line that says
    which package to install (``None`` when every recorded component is available)."""
    from regzoo.regularizers import REGULARIZERS
    from regzoo.similarity import SIMILARITIES

    registries: dict[str, Registry[Any]] = {
        "regularizer": REGULARIZERS,
        "similarity": SIMILARITIES,
    }
    for origin in extras.get("plugin_origins", []) or []:
        registry = registries.get(str(origin.get("kind")))
        if registry is None or str(origin.get("name")) in registry.available():
            continue
        package = f"{origin.get('distribution')}=={origin.get('version')}"
        return (
            f"the model needs the {origin['kind']} '{origin['name']}' from the package "
            f"{package}, which is not installed: pip install {package}"
        )
    return None


def model_weights(weights: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's ``state_dict`` as the
    [`RegistrationModel`][regzoo.registration_model.RegistrationModel] names it (``net.*``): keys
    written with the training wrapper's ``model.`` prefix lose it, older keys stay."""
    return {
        (k[len(_WRAPPER_PREFIX) :] if k.startswith(_WRAPPER_PREFIX) else k): v
        for k, v in weights.items()
    }


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, Mapping):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def config_changes(
    stored: ExperimentConfig, config: ExperimentConfig
) -> dict[str, tuple[Any, Any]]:
    """Every setting (dotted name) where ``config`` differs from ``stored``, but ``run_dir``."""
    flat_a, flat_b = (
        _flatten(stored.model_dump(mode="json")),
        _flatten(config.model_dump(mode="json")),
    )
    return {
        k: (flat_a.get(k), flat_b.get(k))
        for k in sorted(set(flat_a) | set(flat_b))
        if k != "run_dir" and flat_a.get(k) != flat_b.get(k)
    }


def check_resume(
    stored: ExperimentConfig, config: ExperimentConfig, run_dir: str | Path
) -> list[str]:
    """The one resume policy (the API's ``train(config, resume=True)`` and the CLI's
    ``regzoo train --resume``): a resumed run may change only
    [`RESUMABLE`][regzoo.checkpoint.RESUMABLE] settings.

    Returns:
        One line per accepted change (``resumed with K = new (was old)``).

    Raises:
        InputError: the config changes a model section, or a setting a resumed run keeps.
    """
    changes = config_changes(stored, config)
    model = sorted({k.split(".")[0] for k in changes if k.split(".")[0] in MODEL_SECTIONS})
    if model:
        raise InputError(
            f"cannot resume {run_dir}: the config changes {', '.join(model)} "
            "(start a new run_dir instead)"
        )
    kept = [k for k in changes if not any(k == r or k.startswith(r) for r in RESUMABLE)]
    if kept:
        raise InputError(
            f"cannot resume {run_dir}: the config changes {', '.join(kept)}, which a resumed "
            f"run keeps (it may change: {', '.join(r.rstrip('.') for r in RESUMABLE)}); start "
            "a new run_dir instead"
        )
    return [f"resumed with {k} = {new!r} (was {old!r})" for k, (old, new) in changes.items()]


def _read_checkpoint(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    if not path.is_file():
        raise MissingFileError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise InputError(
            f"{path}: cannot be read as a checkpoint ({checkpoint_read_reason(exc)})"
        ) from None
    if not isinstance(state, dict) or not isinstance(state.get(CHECKPOINT_KEY), dict):
        raise InputError(f"{path}: not a regzoo checkpoint (no '{CHECKPOINT_KEY}' entry)")
    return state


def _network_skeleton(config: ExperimentConfig, num_params: int) -> dict[str, torch.Tensor]:
    """The network's weights as ``RegistrationModel`` names them, built on PyTorch's ``meta``
    device (shapes without memory: a config asking for a huge network costs nothing)."""
    with torch.device("meta"):
        net = build_network(config, num_params)
    return {f"net.{k}": v for k, v in net.state_dict().items()}


def _check_shapes(
    path: Path, expected: Mapping[str, torch.Tensor], weights: Mapping[str, Any]
) -> None:
    """The checkpoint's network weights have the names and shapes its config's network has."""
    for name, tensor in expected.items():
        stored = weights.get(name)
        if not torch.is_tensor(stored) or tuple(stored.shape) != tuple(tensor.shape):
            found = tuple(stored.shape) if torch.is_tensor(stored) else "missing"
            raise InputError(
                f"{path}: its weights do not match its config ({name}: the config builds "
                f"{tuple(tensor.shape)}, the checkpoint holds {found})"
            )
    extra = sorted(k for k in set(weights) - set(expected) if k.startswith("net."))
    if extra:
        raise InputError(
            f"{path}: its weights do not match its config (unexpected weights: {extra[0]})"
        )


def load_model(
    checkpoint: str | Path,
    *,
    plugins: Sequence[str] = (),
    map_location: str | torch.device = "cpu",
) -> RegistrationModel:
    """Rebuild a trained model from a checkpoint, in eval mode.

    The file is read with ``torch.load(weights_only=True)``: no pickled code runs. Nor does any
    plugin the checkpoint names: installed plugins (entry points) are available as always, but a
    plugin module or ``.py`` file stored in the checkpoint is imported only when the caller
    names it again in ``plugins`` (CLI: ``--plugin``); otherwise the error names it.

    Args:
        checkpoint: a ``.ckpt`` written by ``regzoo train``, or the name of a shipped
            pretrained model ([`available_pretrained`][regzoo.pretrained_models.available_pretrained]; a file of
            that name wins).
        plugins: plugin modules or ``.py`` files the caller trusts and wants imported.
        map_location: device for the weights.

    Raises:
        MissingFileError: if the checkpoint does not exist.
        UnknownNameError: a bare name that is neither a file nor a pretrained model.
        InputError: if the file is not a regzoo checkpoint, its weights do not match its config
            or its free parameters, or they hold NaN or infinite values.
        PluginError: if the model needs a plugin stored in the checkpoint that the caller did
            not name, or a plugin package the checkpoint records that is not installed (the
            message gives the ``pip install`` line).
    """
    path = resolve_model(checkpoint)
    state = _read_checkpoint(path, map_location)
    extras = state[CHECKPOINT_KEY]
    stored = [str(p) for p in extras.get("plugins", [])]
    trusted = [plugin_reference(p) for p in plugins]
    load_plugins(trusted)  # a plugin the caller names that fails is reported as such
    config_data = {**dict(extras.get("config", {})), "plugins": trusted}
    try:
        config = ExperimentConfig.model_validate(config_data)
        free = build_objective(config).space
    except (ValidationError, RegzooError) as exc:
        missing = missing_plugin_package(extras)
        if missing is not None:
            raise PluginError(f"{path}: {missing}") from None
        untrusted = [p for p in stored if p not in trusted]
        if untrusted:
            raise PluginError(
                f"{path}: the model needs the plugin(s) {', '.join(untrusted)} named in the "
                "checkpoint; regzoo never imports code a checkpoint names: if you trust it, "
                f"pass --plugin {untrusted[0]} (Python: load_model(..., plugins=[...]))"
            ) from None
        reason = f"its stored config is invalid: {exc}"
        if isinstance(exc, ValidationError):  # pydantic's report, as config errors read
            from regzoo.config import _format_validation_error

            detail = _format_validation_error(exc).removeprefix("invalid config:").strip()
            reason = (
                "its stored config is invalid (a checkpoint of another regzoo version?): "
                + detail.replace("\n  ", "; ")
            )
        raise InputError(f"{path}: {reason}") from None
    stored_weights = model_weights(state.get("state_dict", {}))
    weights, legacy = drop_flow_shift(stored_weights)
    if legacy:  # written before the flow layer lost its bias and shift (issue 31)
        warnings.warn(
            f"{path}: an older checkpoint; its flow layer's bias and shift (a translation chosen "
            "by the parameters) were dropped",
            UserWarning,
            stacklevel=2,
        )
    _check_shapes(path, _network_skeleton(config, free.feature_size), weights)
    model = RegistrationModel(config)
    if extras.get("free_parameters") not in (None, model.space.names):
        raise InputError(
            f"{path}: its weights were trained for the free parameters "
            f"{extras['free_parameters']}, but its config gives {model.space.names}"
        )
    digest = extras.get("config_digest")
    if digest is not None and digest != config_digest(config):
        raise InputError(
            f"{path}: its weights were trained for another model than its stored config "
            "describes (the config's network, terms or similarity were changed after training)"
        )
    bad = [
        k for k, v in weights.items() if torch.is_tensor(v) and not bool(torch.isfinite(v).all())
    ]
    if bad:
        raise InputError(
            f"{path}: {len(bad)} weight tensors hold NaN or infinite values (first: {bad[0]}); "
            "the training diverged"
        )
    # foreign weights of the same shapes are refused
    check_fingerprint(path, extras, stored_weights)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputError(f"{path}: its weights do not match its config ({first})") from None
    model.training_grid = TrainingGrid.from_dict(extras.get("training_grid"))
    return model.to(map_location).eval()


def pretrained(name: str, *, map_location: str | torch.device = "cpu") -> RegistrationModel:
    """Load the shipped model ``name`` (see [`available_pretrained`][regzoo.pretrained_models.available_pretrained]), in eval mode.

    Example: ``model = regzoo.pretrained("chest-ct-64")``, then
    ``regzoo.register(model, fixed, moving, params={"lam": 1, "mu": 1})``.

    Raises:
        UnknownNameError: no such model (the message lists the available ones).
    """
    if name not in available_pretrained():
        raise unknown_pretrained(name)
    return load_model(PRETRAINED_DIR / f"{name}.pt", map_location=map_location)


def write_weights_only(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the smallest file [`load_model`][regzoo.checkpoint.load_model] loads from a training
    checkpoint: its weights and regzoo's extras (config, free parameters, training grid), without
    the optimizer state, callbacks and loops (how a shipped model is made). The file carries
    the fingerprint of its weights, also when the checkpoint was written before fingerprints
    were (its weights are checked by loading it first), so that a shipped model whose weights
    are altered is refused.

    Raises:
        MissingFileError, InputError: as [`load_model`][regzoo.checkpoint.load_model], which checks
            the written file.
    """
    load_model(checkpoint)  # a checkpoint that does not load is refused before writing
    state = torch.load(Path(checkpoint), map_location="cpu", weights_only=True)
    slim = {
        "state_dict": model_weights(state["state_dict"]),
        CHECKPOINT_KEY: dict(state[CHECKPOINT_KEY]),
    }
    add_fingerprint(slim, CHECKPOINT_KEY)  # checked by load_model from now on
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(slim, out)
    load_model(out)
    return out
