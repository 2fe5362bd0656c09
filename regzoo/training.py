"""Train an experiment config with PyTorch Lightning (new runs and resumed ones)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, cast

import lightning as L
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from regzoo._errors import InputError, MissingFileError, OutputExistsError
from regzoo.callbacks import DivergenceGuard, ImageLogger, TrainingDivergedError
from regzoo.checkpoint import check_resume
from regzoo.config import ExperimentConfig, dump_config
from regzoo.data.datamodule import (
    RegistrationDataModule,
    check_label_names,
    ensure_dataset,
    with_label_names,
)
from regzoo.lightning_module import HyperRegistration
from regzoo.registration_model import TrainingGrid
from regzoo.runs import (
    LOCK_NAME,
    RUN_CONTENTS,
    RUN_MARKER,
    AtomicCheckpointIO,
    check_checkpoint,
    check_replaceable,
    mark_run,
    remove_run,
    run_lock,
)
from regzoo.trainer_check import check_trainer

__all__ = ["RUN_CONTENTS", "prepare_run_dir", "train"]


def _checkpoint(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "last.ckpt"


def prepare_run_dir(
    config: ExperimentConfig,
    *,
    resume: bool,
    overwrite: bool,
    model: HyperRegistration | None = None,
) -> Path | None:
    """Check the run directory before anything is written; return the checkpoint to resume.

    Args:
        config: the run's config.
        resume: continue the run in ``config.run_dir``.
        overwrite: replace the run in ``config.run_dir`` (only a run regzoo wrote).
        model: when resuming, the checkpoint is read and checked against this model.

    Raises:
        InputError: ``resume`` and ``overwrite`` together, a resumed config that changes
            what a resumed run keeps
            ([`regzoo.checkpoint.check_resume`][regzoo.checkpoint.check_resume], the CLI's policy
            too: the model's sections, or any setting but the resumable ones), or a checkpoint to
            resume that is unreadable, truncated, another model's or holds NaN weights.
        MissingFileError: ``resume`` without ``run_dir/checkpoints/last.ckpt``.
        OutputExistsError: ``run_dir`` already holds a run and neither flag is given, or
            ``overwrite`` names a folder of files regzoo did not write.
    """
    if resume and overwrite:
        raise InputError("give --resume or --overwrite, not both")
    run_dir = Path(config.run_dir)
    last = _checkpoint(run_dir)
    if resume:
        if not last.is_file():
            raise MissingFileError(f"nothing to resume: {last} does not exist")
        from regzoo.config import load_config

        check_resume(load_config(run_dir / "config.yaml"), config, run_dir)
        if model is not None:
            check_checkpoint(last, model.model)
        return last
    existing = [name for name in RUN_CONTENTS if (run_dir / name).exists()]
    if existing and not overwrite:
        raise OutputExistsError(
            f"run_dir {run_dir} already holds a run ({', '.join(existing)}): pass "
            f"--resume to continue it or --overwrite to start again"
        )
    if overwrite:
        check_replaceable(run_dir)
    return None


def train(config: ExperimentConfig, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Train ``config``; returns the path of ``run_dir/checkpoints/last.ckpt``.

    The run directory receives ``config.yaml`` (the resolved config), ``tensorboard/`` logs and
    ``checkpoints/`` (``last.ckpt`` every ``trainer.checkpoint_every_n_steps`` and at the end,
    written atomically). The phantom is built first if the data folder is missing and a phantom
    is configured. Every check (config components, the run directory) happens before anything
    is written.

    Args:
        config: a validated experiment config.
        resume: continue the run in ``config.run_dir`` from its last checkpoint: the step
            count, optimizer state, parameter sampler and TensorBoard log continue.
        overwrite: replace a previous run in ``config.run_dir``.

    Raises:
        ConfigError: the config's components do not resolve, or Lightning or this machine
            cannot run its ``trainer`` options
            ([`regzoo.trainer_check.check_trainer`][regzoo.trainer_check.check_trainer]).
        OutputExistsError, MissingFileError, InputError: see
            [`prepare_run_dir`][regzoo.training.prepare_run_dir].
        NonFiniteLossError: the loss or a gradient became NaN/inf (``trainer.nonfinite``).
        TrainingDivergedError: the validation collapsed (``trainer.divergence_guard``);
            ``last.ckpt`` then holds the weights of the best validation, not the diverged ones.
    """
    # seeded before anything random is built (the network's initial weights, the parameter
    # sampler, the data order): two runs of one config give bit-identical checkpoints on CPU
    L.seed_everything(config.seed, workers=True, verbose=False)
    check_trainer(config.trainer)  # what Lightning and this machine accept, before any output
    # per-label parameters take their label names from the dataset JSON (built first if a
    # phantom is configured) unless the config maps them in data.labels
    config = with_label_names(config, progress=config.trainer.progress_bar)
    model = HyperRegistration(config)  # resolves plugins and terms: errors before any output
    # under DDP, Lightning re-launches this command for the other ranks once rank zero has
    # started: only rank zero checks and prepares the run directory
    launcher_rank: int = getattr(rank_zero_only, "rank", 0)
    if launcher_rank == 0:
        resume_from = prepare_run_dir(config, resume=resume, overwrite=overwrite, model=model)
    else:
        resume_from = _checkpoint(Path(config.run_dir)) if resume else None
        overwrite = False
    ensure_dataset(config.data, progress=config.trainer.progress_bar)
    check_label_names(config)
    datamodule = RegistrationDataModule(config.data, labels=model.objective.needs_labels)
    datamodule.setup("fit")  # a bad dataset JSON is reported before the run_dir is written
    model.model.training_grid = TrainingGrid(*datamodule.train_set.typical_grid())
    run_dir = Path(config.run_dir)
    # a run that fails before its first checkpoint leaves no half-made run_dir behind
    fresh = launcher_rank == 0 and not resume and not _holds_anything(run_dir)
    existed = run_dir.exists()
    try:
        with run_lock(run_dir) if launcher_rank == 0 else contextlib.nullcontext():
            if overwrite:
                remove_run(run_dir)
            if launcher_rank == 0:
                mark_run(run_dir)
                dump_config(config, run_dir / "config.yaml")
            return _fit(config, model, datamodule, run_dir, resume_from)
    except BaseException:
        if fresh and not _checkpoint(run_dir).is_file():
            _remove_unfinished(run_dir, keep_folder=existed)
        raise


def _holds_anything(run_dir: Path) -> bool:
    """``run_dir`` exists and holds something (a file of the user's, or a run)."""
    try:
        return any(run_dir.iterdir())
    except OSError:
        return False


def _remove_unfinished(run_dir: Path, *, keep_folder: bool) -> None:
    """Remove what a new run wrote before it failed without a checkpoint: its files, and the
    folder itself when the run made it."""
    remove_run(run_dir)
    for name in (RUN_MARKER, LOCK_NAME):
        (run_dir / name).unlink(missing_ok=True)
    if not keep_folder:
        with contextlib.suppress(OSError):
            run_dir.rmdir()


def _fit(
    config: ExperimentConfig,
    model: HyperRegistration,
    datamodule: RegistrationDataModule,
    run_dir: Path,
    resume_from: Path | None,
) -> Path:
    checkpoints = run_dir / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)

    t = config.trainer
    guard = DivergenceGuard() if t.divergence_guard else None
    ema_steps = config.optimizer.ema_steps
    # the average is validated and saved; the guard comes after it, so that it snapshots and
    # restores the weights that were validated
    averaging = [EMAWeightAveraging(decay=1.0 - 1.0 / ema_steps)] if ema_steps else []
    trainer = L.Trainer(
        max_steps=t.max_steps,
        max_epochs=t.max_epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=cast(Any, t.precision),  # a str the config validated; Lightning checks it
        log_every_n_steps=t.log_every_n_steps,
        check_val_every_n_epoch=t.check_val_every_n_epoch,
        limit_val_batches=t.limit_val_batches,
        gradient_clip_val=t.gradient_clip_val,
        enable_progress_bar=t.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=run_dir,
        plugins=[AtomicCheckpointIO()],  # a temporary file beside the target, never $TMPDIR
        logger=TensorBoardLogger(save_dir=run_dir, name="tensorboard", version=""),
        callbacks=[
            *([TQDMProgressBar(refresh_rate=5)] if t.progress_bar else []),
            ImageLogger(config.logging.image_every_n_steps),
            *averaging,
            *([guard] if guard is not None else []),
            ModelCheckpoint(
                dirpath=checkpoints,
                save_last=True,
                save_top_k=0,
                every_n_train_steps=t.checkpoint_every_n_steps,
                enable_version_counter=False,  # always last.ckpt, never a stale one beside it
            ),
        ],
    )
    trainer.fit(
        model,
        datamodule=datamodule,
        ckpt_path=resume_from,
        weights_only=True,
    )
    last = _checkpoint(run_dir)
    every = t.checkpoint_every_n_steps
    diverged = guard is not None and guard.diverged is not None
    if diverged or not (every and trainer.global_step % every == 0 and last.is_file()):
        # the last step's state (or the guard's restored weights), unless ModelCheckpoint just
        # wrote it; atomically (AtomicCheckpointIO), by rank zero
        trainer.save_checkpoint(last, weights_only=False)
    if guard is not None and guard.diverged is not None:
        raise TrainingDivergedError(f"{guard.diverged}; {last} holds the restored weights")
    return last
