"""``regzoo train`` with per-rank probes, for tests/test_ddp.py (run in a subprocess).

Lightning's DDP launcher re-executes this script once per extra rank, so every process
installs the probes, then runs the real CLI (``regzoo.cli.main``). Each rank records the
parameter vectors it drew, the cases it trained on, its step count, its weights and its parameter
sampler's state before and after training into ``$REGZOO_DDP_PROBE/rank<r>.pt``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch

from regzoo.cli import main
from regzoo.lightning_module import HyperRegistration

OUT = Path(os.environ["REGZOO_DDP_PROBE"])
_draw = HyperRegistration._draw_parameters
_step = HyperRegistration.training_step


PROBE: dict[str, Any] = {}
"""What this process's model saw (one model per process)."""


def _weights(model: HyperRegistration) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def draw_parameters(self: HyperRegistration, batch: int) -> torch.Tensor:
    values = _draw(self, batch)
    PROBE["draws"].append(values.detach().clone())
    return values


def training_step(self: HyperRegistration, batch: Any, batch_idx: int) -> dict[str, Any] | None:
    PROBE["cases"].extend(batch["fixed_id"])
    return _step(self, batch, batch_idx)


def on_train_start(self: HyperRegistration) -> None:
    PROBE.update(
        draws=[],
        cases=[],
        initial=_weights(self),
        sampler_start=self._generator.get_state(),
    )


def on_train_end(self: HyperRegistration) -> None:
    PROBE.update(
        rank=self.global_rank,
        world_size=self.trainer.world_size,
        global_step=self.global_step,
        final=_weights(self),
        sampler_end=self._generator.get_state(),
        backend=str(torch.distributed.get_backend()) if torch.distributed.is_initialized() else "",
    )
    torch.save(PROBE, OUT / f"rank{self.global_rank}.pt")


# the probe's hooks replace the module's (deliberately: a method assignment)
HyperRegistration._draw_parameters = draw_parameters  # type: ignore[method-assign,assignment]
HyperRegistration.training_step = training_step  # type: ignore[method-assign]
HyperRegistration.on_train_start = on_train_start  # type: ignore[method-assign,assignment]
HyperRegistration.on_train_end = on_train_end  # type: ignore[method-assign,assignment]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
