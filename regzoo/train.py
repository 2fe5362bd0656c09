"""Train an experiment config with PyTorch Lightning (new runs and resumed ones)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, cast

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from regzoo._errors import InputError, MissingFileError, OutputExistsError
from regzoo.callbacks import ImageLogger
from regzoo.config import ExperimentConfig, dump_config
from regzoo.data.datamodule import (
    RegistrationDataModule,
    check_label_names,
    ensure_dataset,
    with_label_names,
)
from regzoo.model import HyperRegistration

__all__ = ["RUN_CONTENTS", "prepare_run_dir", "train"]

RUN_CONTENTS = ("config.yaml", "checkpoints", "tensorboard")
"""What ``train`` writes in a run directory (all that ``overwrite`` removes)."""

# sections that define the model's weights: a resumed run must not change them
_FIXED_ON_RESUME = ("model", "regularizers", "similarity", "weighting", "regularize", "plugins")


def _checkpoint(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "last.ckpt"


def prepare_run_dir(config: ExperimentConfig, *, resume: bool, overwrite: bool) -> Path | None:
    """Check the run directory before anything is written; return the checkpoint to resume.

    Raises:
        InputError: ``resume`` and ``overwrite`` together, or a resumed config that changes
            the model (its network, terms, similarity or plugins).
        MissingFileError: ``resume`` without ``run_dir/checkpoints/last.ckpt``.
        OutputExistsError: ``run_dir`` already holds a run and neither flag is given.
    """
    if resume and overwrite:
        raise InputError("give --resume or --overwrite, not both")
    run_dir = Path(config.run_dir)
    last = _checkpoint(run_dir)
    if resume:
        if not last.is_file():
            raise MissingFileError(f"nothing to resume: {last} does not exist")
        from regzoo.config import load_config

        stored = load_config(run_dir / "config.yaml")
        changed = [key for key in _FIXED_ON_RESUME if getattr(stored, key) != getattr(config, key)]
        if changed:
            raise InputError(
                f"cannot resume {run_dir}: the config changes {', '.join(changed)} "
                "(start a new run_dir instead)"
            )
        return last
    existing = [name for name in RUN_CONTENTS if (run_dir / name).exists()]
    if existing and not overwrite:
        raise OutputExistsError(
            f"run_dir {run_dir} already holds a run ({', '.join(existing)}): pass "
            f"--resume to continue it or --overwrite to start again"
        )
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
        ConfigError: the config's components do not resolve.
        OutputExistsError, MissingFileError, InputError: see :func:`prepare_run_dir`.
        NonFiniteLossError: the loss or a gradient became NaN/inf (``trainer.nonfinite``).
    """
    # seeded before anything random is built (the network's initial weights, the parameter
    # sampler, the data order): two runs of one config give bit-identical checkpoints on CPU
    L.seed_everything(config.seed, workers=True, verbose=False)
    # per-label parameters take their label names from the dataset JSON (built first if a
    # phantom is configured) unless the config maps them in data.labels
    config = with_label_names(config, progress=config.trainer.progress_bar)
    model = HyperRegistration(config)  # resolves plugins and terms: errors before any output
    # under DDP, Lightning re-launches this command for the other ranks once rank zero has
    # started: only rank zero checks and prepares the run directory
    launcher_rank: int = getattr(rank_zero_only, "rank", 0)
    if launcher_rank == 0:
        resume_from = prepare_run_dir(config, resume=resume, overwrite=overwrite)
    else:
        resume_from = _checkpoint(Path(config.run_dir)) if resume else None
        overwrite = False
    ensure_dataset(config.data, progress=config.trainer.progress_bar)
    check_label_names(config)
    datamodule = RegistrationDataModule(config.data, labels=model.objective.needs_labels)
    datamodule.setup("fit")  # a bad dataset JSON is reported before the run_dir is written
    run_dir = Path(config.run_dir)
    if overwrite:
        for name in RUN_CONTENTS:
            target = run_dir / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    checkpoints = run_dir / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    if launcher_rank == 0:
        dump_config(config, run_dir / "config.yaml")

    t = config.trainer
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
        logger=TensorBoardLogger(save_dir=run_dir, name="tensorboard", version=""),
        callbacks=[
            *([TQDMProgressBar(refresh_rate=5)] if t.progress_bar else []),
            ImageLogger(config.logging.image_every_n_steps),
            ModelCheckpoint(
                dirpath=checkpoints,
                save_last=True,
                save_top_k=0,
                every_n_train_steps=t.checkpoint_every_n_steps,
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
    if not (every and trainer.global_step % every == 0 and last.is_file()):
        # the last step's state, unless ModelCheckpoint just wrote it; Lightning's own save
        # is atomic (the file is written whole, then moved into place)
        trainer.save_checkpoint(last, weights_only=False)
    return last
