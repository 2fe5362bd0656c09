"""What a resumed run may change in the training state it restores (``train --resume
--set optimizer.lr=...``, the change a divergence stop advises)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["continue_with_lr"]


def continue_with_lr(checkpoint: dict[str, Any], lr: float, key: str) -> None:
    """Make a resumed run continue with the learning rate ``lr`` (``--resume --set
    optimizer.lr=...``, what a divergence stop advises): the restored optimizer and scheduler
    states, written with the run's earlier rate, are rescaled by ``lr / earlier`` (the
    schedule's shape and the per-group factors stay). ``key`` is the checkpoint's ``regzoo``
    entry, whose stored config holds the earlier rate."""
    extras = checkpoint.get(key)
    earlier = None
    if isinstance(extras, Mapping):
        earlier = extras.get("config", {}).get("optimizer", {}).get("lr")
    if not isinstance(earlier, int | float) or not earlier > 0 or earlier == lr:
        return
    ratio = lr / earlier
    for state in checkpoint.get("optimizer_states", []):
        for group in state.get("param_groups", []):
            for name in ("lr", "initial_lr"):
                if isinstance(group.get(name), int | float):
                    group[name] *= ratio
    for scheduler in checkpoint.get("lr_schedulers", []):
        for name in ("base_lrs", "_last_lr"):
            if isinstance(scheduler.get(name), list):
                scheduler[name] = [v * ratio for v in scheduler[name]]
