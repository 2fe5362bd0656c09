"""A run that diverges with finite values is detected, rolled back and reported."""

from types import SimpleNamespace
from typing import Any, cast

import torch
from conftest import QUICKSTART, tiny_overrides

from regzoo.callbacks import DivergenceGuard
from regzoo.checkpoint import load_model, model_weights
from regzoo.cli import main


class _Module(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(2))


def _validate(guard, module, step, **metrics):
    trainer = SimpleNamespace(
        sanity_checking=False,
        global_step=step,
        should_stop=False,
        callback_metrics={f"val/{k}": torch.tensor(v) for k, v in metrics.items()},
    )
    guard.on_validation_end(trainer, module)
    return trainer


def test_guard_keeps_the_best_weights_and_restores_them_on_a_dice_collapse():
    guard, module = DivergenceGuard(dice_drop=0.1), _Module()
    for step, dice, weight in ((100, 0.80, 1.0), (200, 0.90, 2.0), (300, 0.85, 3.0)):
        module.weight.data.fill_(weight)
        assert not _validate(guard, module, step, dice=dice, objective=-0.3).should_stop
    assert guard.best_step == 200 and guard.diverged is None
    module.weight.data.fill_(9.0)
    trainer = _validate(guard, module, 400, dice=0.21, objective=-0.3)
    assert trainer.should_stop
    assert torch.equal(module.weight.data, torch.full((2,), 2.0))
    assert "diverged at step 400" in str(guard.diverged)
    assert "Dice fell to 0.210 (best 0.900)" in str(guard.diverged)
    assert "weights of step 200 were restored" in str(guard.diverged)


def test_guard_watches_the_objective_without_masks():
    guard, module = DivergenceGuard(objective_rise=0.5), _Module()
    _validate(guard, module, 10, objective=-0.40)
    assert not _validate(guard, module, 20, objective=-0.25).should_stop  # within 0.5 x 0.4
    assert _validate(guard, module, 30, objective=-0.1).should_stop
    assert "objective rose to -0.1 (best -0.4)" in str(guard.diverged)
    guard = DivergenceGuard()
    _validate(guard, module, 10, objective=-0.40)
    assert _validate(guard, module, 20, objective=float("nan")).should_stop
    assert "objective is nan" in str(guard.diverged)


def test_a_run_forced_to_diverge_is_reported_and_never_saved_diverged(
    tiny_phantom, tmp_path, capsys
):
    run_dir = tmp_path / "run"
    overrides = [
        *tiny_overrides(tiny_phantom, run_dir, steps=30),
        "optimizer.lr=0.05",  # 50x the quickstart's: the field explodes, the loss stays finite
        "trainer.gradient_clip_val=null",
        "trainer.check_val_every_n_epoch=1",
    ]
    code = main(["train", str(QUICKSTART), *[a for o in overrides for a in ("--set", o)]])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training diverged at step" in err[0], err
    assert "were restored" in err[0] and "last.ckpt holds the restored weights" in err[0]
    model = load_model(run_dir / "checkpoints" / "last.ckpt")  # finite, loadable weights
    step = int(err[0].split("weights of step ")[1].split()[0])
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] > step  # the diverged steps ran, their weights were not kept
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_the_objective_guard_has_an_absolute_floor():
    """A best objective near 0 does not make every wobble a divergence."""
    guard, module = DivergenceGuard(objective_rise=0.5, objective_floor=0.02), _Module()
    _validate(guard, module, 10, objective=-0.001)
    # +0.0015 is 1.5x |best| but within 0.5 x the floor (0.01)
    assert not _validate(guard, module, 20, objective=0.0005).should_stop
    assert _validate(guard, module, 30, objective=0.02).should_stop
    assert "objective rose to 0.02 (best -0.001)" in str(guard.diverged)


def test_the_best_weights_travel_with_the_checkpoint_state():
    """A resumed run rolls back to the best weights of before the interruption."""
    guard, module = DivergenceGuard(), _Module()
    module.weight.data.fill_(2.0)
    _validate(guard, module, 100, dice=0.9, objective=-0.4)
    state = guard.state_dict()
    assert torch.equal(state["best_weights"]["weight"], torch.full((2,), 2.0))

    resumed, module = DivergenceGuard(), _Module()
    resumed.load_state_dict(state)
    module.weight.data.fill_(5.0)
    stub: Any = SimpleNamespace(global_step=150)  # the trainer's one attribute it reads
    resumed.on_train_start(stub, cast(Any, module))  # keeps the loaded ones
    assert resumed.best_step == 100
    module.weight.data.fill_(9.0)
    assert _validate(resumed, module, 200, dice=0.3, objective=-0.4).should_stop
    assert torch.equal(module.weight.data, torch.full((2,), 2.0))
    assert "weights of step 100 were restored" in str(resumed.diverged)
    older = DivergenceGuard()  # a checkpoint from before the weights were stored
    older.load_state_dict({"best": {"dice": 0.9}, "best_step": 100})
    assert older.best_weights is None and older.best == {"dice": 0.9}


def test_a_diverged_run_with_weight_averaging_saves_the_restored_weights(
    tiny_phantom, tmp_path, capsys
):
    """Under optimizer.ema_steps the checkpoint holds the average as the model's weights: after
    a rollback it is the restored weights, not the diverged average, and load_model loads it."""
    run_dir = tmp_path / "run"
    overrides = [
        *tiny_overrides(tiny_phantom, run_dir, steps=40),
        "optimizer.lr=0.05",
        "optimizer.ema_steps=3",
        "trainer.gradient_clip_val=null",
        "trainer.check_val_every_n_epoch=1",
    ]
    code = main(["train", str(QUICKSTART), *[a for o in overrides for a in ("--set", o)]])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training diverged at step" in err[0], err
    last = run_dir / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    (guard_state,) = [v for k, v in state["callbacks"].items() if "DivergenceGuard" in k]
    best = model_weights(guard_state["best_weights"])  # the module's names: model.net.* -> net.*
    for name, value in model_weights(
        state["state_dict"]
    ).items():  # the saved average is the restored one
        assert torch.equal(value, best[name]), name
    for name, value in model_weights(state["current_model_state"]).items():
        assert torch.equal(value, best[name]), name
    model = load_model(last)
    for name, value in model.state_dict().items():
        assert torch.equal(value, best[name]), name
