"""The optimiser and learning-rate schedule that training uses (Adam or AdamW, fused where
torch supports it; the conditioning path at its own learning rate; warm-up and cosine decay)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig

    from regzoo.config import ExperimentConfig

__all__ = ["configure_optimizers", "learning_rate_factor", "parameter_groups"]


def parameter_groups(
    config: ExperimentConfig, named_parameters: Iterable[tuple[str, torch.nn.Parameter]]
) -> list[dict[str, Any]]:
    """The backbone's parameters, and the conditioning path's at its own learning rate.

    The conditioning path is the hypernetwork's MLP, the FiLM layers and, for generated
    weights, the heads' weight matrices (their biases hold the parameter-independent
    kernels: the backbone). ``named_parameters`` are the model's (``net.*``) or the training
    module's (``model.net.*``)."""
    conditioning: list[torch.nn.Parameter] = []
    backbone: list[torch.nn.Parameter] = []
    for name, parameter in named_parameters:
        is_conditioning = (
            name.removeprefix("model.").startswith("net.hypernet.")
            or "film." in name
            or name.endswith("_head.weight")
        )
        (conditioning if is_conditioning else backbone).append(parameter)
    scale = config.optimizer.conditioning_lr_scale
    groups: list[dict[str, Any]] = [{"params": backbone}] if backbone else []
    if conditioning:
        groups.append({"params": conditioning, "lr": config.optimizer.lr * scale})
    return groups


def configure_optimizers(
    config: ExperimentConfig, named_parameters: Iterable[tuple[str, torch.nn.Parameter]]
) -> OptimizerLRSchedulerConfig:
    """Adam (or AdamW) with the configured learning rate and schedule, fused where torch
    supports it (not with gradient clipping under mixed precision, which Lightning refuses).

    The fused kernel updates all parameters in one pass: the hypernetwork's heads hold
    ~10M parameters, whose update costs 70 ms per step unfused on one CPU core, 8 ms fused.
    The schedule ([`learning_rate_factor`][regzoo.optimizers.learning_rate_factor]) is applied every
    optimizer step.
    """
    opt = config.optimizer
    cls = torch.optim.AdamW if opt.name == "adamw" else torch.optim.Adam
    trainer = config.trainer
    kwargs: dict[str, Any] = {"lr": opt.lr, "weight_decay": opt.weight_decay}
    groups = parameter_groups(config, named_parameters)
    optimizer = None
    if not (trainer.gradient_clip_val and "mixed" in str(trainer.precision)):
        # Lightning cannot clip the gradients of a fused optimizer under mixed precision
        try:
            optimizer = cls(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError):  # a device or torch without the fused kernel
            optimizer = None
    if optimizer is None:
        optimizer = cls(groups, **kwargs)
    total = trainer.max_steps

    def factor(step: int) -> float:
        return learning_rate_factor(step, opt.schedule, opt.warmup_steps, total)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {
        "optimizer": optimizer,
        "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
    }


def learning_rate_factor(step: int, schedule: str, warmup_steps: int, total_steps: int) -> float:
    """The learning rate at optimizer step ``step`` as a fraction of ``optimizer.lr``.

    A linear warm-up from ``1 / (warmup_steps + 1)`` to 1 over ``warmup_steps``, then 1
    (``"constant"``) or a cosine decay that reaches 0 at ``total_steps`` (``"cosine"``,
    Loshchilov & Hutter, SGDR, ICLR 2017).

    Examples:
        >>> learning_rate_factor(0, "cosine", 0, 100), learning_rate_factor(50, "cosine", 0, 100)
        (1.0, 0.5)
        >>> round(learning_rate_factor(100, "cosine", 0, 100), 12)
        0.0
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))
