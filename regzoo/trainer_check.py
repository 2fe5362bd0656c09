"""Check a config's ``trainer`` section against what Lightning and this machine accept.

The schema ([`regzoo.config.TrainerConfig`][regzoo.config.TrainerConfig]) only knows the fields'
types: a config written for a GPU machine must still load on a laptop (to register with its model).
Whether ``accelerator``, ``devices``, ``strategy`` and ``precision`` can *train here* is a question
for Lightning and the hardware, asked by [`check_trainer`][regzoo.trainer_check.check_trainer]
before a run folder is made (by ``regzoo train`` and ``regzoo config check``), so a typo is one
line, not a traceback after a half-made run.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Iterable

from regzoo.config import ConfigError, TrainerConfig

__all__ = ["check_trainer"]


def _suggest(value: str, choices: Iterable[str]) -> str:
    """``did you mean 'x'?`` for close matches, else the list of every choice."""
    names = sorted(set(choices))
    close = difflib.get_close_matches(value, names, n=3)
    if close:
        return f"did you mean {' or '.join(repr(c) for c in close)}?"
    return f"one of {', '.join(names)}"


def _precisions() -> list[str]:
    from lightning.fabric.connector import _PRECISION_INPUT

    return [
        str(value)
        for member in typing.get_args(_PRECISION_INPUT)
        for value in typing.get_args(member)
    ]


def check_trainer(trainer: TrainerConfig) -> None:
    """Refuse trainer options that Lightning does not know or this machine cannot run.

    Names are checked against Lightning's own registries (accelerators, strategies, precision
    values), with close matches for typos; then the combination is handed to Lightning's
    accelerator connector exactly as [`regzoo.train`][regzoo.training.train] will (an accelerator
    this machine lacks, more devices than it has, a precision the accelerator cannot run).

    Raises:
        ConfigError: one line naming the field (``trainer.accelerator: ...``).
    """
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.strategies import StrategyRegistry

    accelerators = [*AcceleratorRegistry.available_accelerators(), "auto", "gpu"]
    if trainer.accelerator not in accelerators:
        raise ConfigError(
            f"invalid config: trainer.accelerator: {trainer.accelerator!r} is not an "
            f"accelerator Lightning knows; {_suggest(trainer.accelerator, accelerators)}"
        )
    strategies = [*StrategyRegistry.available_strategies(), "auto"]
    if trainer.strategy not in strategies:
        raise ConfigError(
            f"invalid config: trainer.strategy: {trainer.strategy!r} is not a strategy "
            f"Lightning knows; {_suggest(trainer.strategy, strategies)}"
        )
    precisions = _precisions()
    if str(trainer.precision) not in precisions:
        raise ConfigError(
            f"invalid config: trainer.precision: {trainer.precision!r} is not a precision "
            f"Lightning knows; {_suggest(str(trainer.precision), precisions)}"
        )
    _check_on_this_machine(trainer)


def _check_on_this_machine(trainer: TrainerConfig) -> None:
    from lightning.pytorch.trainer.connectors.accelerator_connector import _AcceleratorConnector

    try:
        _AcceleratorConnector(
            devices=trainer.devices,
            num_nodes=trainer.num_nodes,
            accelerator=trainer.accelerator,
            strategy=trainer.strategy,
            precision=trainer.precision,  # type: ignore[arg-type]
        )
    except Exception as exc:  # Lightning raises several types for one kind of mistake
        text = " ".join(str(exc).split())
        field = _blamed_field(text)
        raise ConfigError(
            f"invalid config: trainer.{field}: this machine cannot run "
            f"accelerator={trainer.accelerator!r}, devices={trainer.devices!r}, "
            f"strategy={trainer.strategy!r}, precision={trainer.precision!r}: {text}"
        ) from None


def _blamed_field(message: str) -> str:
    """The trainer field a Lightning error message is about (``accelerator`` by default)."""
    lowered = message.lower()
    for field in ("devices", "precision", "strategy", "num_nodes"):
        if field in lowered:
            return field
    return "accelerator"
