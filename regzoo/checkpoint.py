"""How a model is STORED: reading checkpoints, the config digest, the sections that define a
model, and the one check that ``load_model``, ``train(config, resume=True)`` and
``regzoo train --resume`` share.

A checkpoint is a Lightning checkpoint whose ``state_dict`` holds the
[`RegistrationModel`][regzoo.registration_model.RegistrationModel]'s weights (``net.*``), plus a ``regzoo``
entry: the config, the plugins, the free parameters, the sampler states and the digest.
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
from regzoo.fingerprint import check_fingerprint
from regzoo.nets.unet import drop_flow_shift
from regzoo.registration_model import RegistrationModel, build_network
from regzoo.registry import load_plugins
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
    """A digest of what defines a model's weights ([`MODEL_SECTIONS`][regzoo.checkpoint.MODEL_SECTIONS] but the plugins),
    stored in checkpoints so that a config edited after training is recognised."""
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


def model_weights(weights: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's ``state_dict`` as the [`RegistrationModel`][regzoo.registration_model.RegistrationModel] names it (``net.*``):
    keys written with the training wrapper's ``model.`` prefix lose it, older keys stay."""
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
    ``regzoo train --resume``): a resumed run may change only [`RESUMABLE`][regzoo.checkpoint.RESUMABLE] settings.

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
        checkpoint: a ``.ckpt`` written by ``regzoo train``.
        plugins: plugin modules or ``.py`` files the caller trusts and wants imported.
        map_location: device for the weights.

    Raises:
        MissingFileError: if the checkpoint does not exist.
        InputError: if the file is not a regzoo checkpoint, its weights do not match its config
            or its free parameters, or they hold NaN or infinite values.
        PluginError: if the model needs a plugin stored in the checkpoint that the caller did
            not name.
    """
    path = Path(checkpoint)
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
        untrusted = [p for p in stored if p not in trusted]
        if untrusted:
            raise PluginError(
                f"{path}: the model needs the plugin(s) {', '.join(untrusted)} named in the "
                "checkpoint; regzoo never imports code a checkpoint names: if you trust it, "
                f"pass --plugin {untrusted[0]} (Python: load_model(..., plugins=[...]))"
            ) from None
        raise InputError(f"{path}: its stored config is invalid: {exc}") from None
    stored_weights = model_weights(state.get("state_dict", {}))
    weights, legacy = drop_flow_shift(stored_weights)
    if legacy:  # written before the flow layer lost its bias and shift (issue 31)
        warnings.warn(
            f"{path}: an older checkpoint; its flow layer's bias and shift (a translation chosen "
            "by the parameters) were dropped",
            UserWarning,
            stacklevel=2,
        )
    _check_shapes(path, _network_skeleton(config, len(free)), weights)
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
    check_fingerprint(path, extras, stored_weights)  # foreign weights of the same shapes are refused
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputError(f"{path}: its weights do not match its config ({first})") from None
    return model.to(map_location).eval()
