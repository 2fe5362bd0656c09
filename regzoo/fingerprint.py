"""A fingerprint of a checkpoint's weights, written with it and checked when it is loaded.

The config digest ([`regzoo.model.config_digest`][regzoo.checkpoint.config_digest]) recognises a
config edited after training; the fingerprint recognises weights that are not the ones trained with
it, such as the ``state_dict`` of another model of the same shapes put into the file. Checkpoints
written before the fingerprint existed carry none and still load.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

import torch

from regzoo._errors import InputError

__all__ = ["FINGERPRINT_KEY", "add_fingerprint", "check_fingerprint", "weights_fingerprint"]

FINGERPRINT_KEY = "weights_sha256"
"""Key of the fingerprint in a checkpoint's ``regzoo`` entry."""


def weights_fingerprint(weights: Mapping[str, Any]) -> str:
    """SHA-256 over a ``state_dict``'s tensors in name order: each name, dtype, shape and raw
    bytes (the same on every device: the bytes are read on the CPU)."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        tensor = weights[name]
        if not torch.is_tensor(tensor):
            continue
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        if flat.numel():
            digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def add_fingerprint(checkpoint: MutableMapping[str, Any], key: str) -> None:
    """Store the fingerprint of ``checkpoint["state_dict"]`` in ``checkpoint[key]`` (the
    ``regzoo`` entry), when both are there."""
    extras, weights = checkpoint.get(key), checkpoint.get("state_dict")
    if isinstance(extras, MutableMapping) and isinstance(weights, Mapping):
        extras[FINGERPRINT_KEY] = weights_fingerprint(weights)


def check_fingerprint(path: str | Path, extras: Mapping[str, Any], weights: Any) -> None:
    """Check a checkpoint's weights against the fingerprint written with them (a checkpoint
    without one, written by an older regzoo, passes).

    Raises:
        InputError: the weights are not the ones the checkpoint was written with.
    """
    stored = extras.get(FINGERPRINT_KEY)
    if stored is None or not isinstance(weights, Mapping):
        return
    if stored != weights_fingerprint(weights):
        raise InputError(
            f"{path}: its weights are not the ones it was written with (their fingerprint "
            "differs): the weights were replaced or altered after training; use the run's own "
            "checkpoint"
        )
