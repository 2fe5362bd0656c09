"""Train an experiment config with PyTorch Lightning."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger

from regzoo.config import ExperimentConfig, dump_config
from regzoo.data.datamodule import RegistrationDataModule, ensure_dataset
from regzoo.model import HyperRegistration

__all__ = ["train"]


def train(config: ExperimentConfig) -> Path:
    """Train ``config``; returns the path of ``run_dir/checkpoints/last.ckpt``.

    The run directory receives ``config.yaml`` (the resolved config), ``tensorboard/`` logs and
    ``checkpoints/`` (``last.ckpt`` is written at the end, atomically). The phantom is built
    first if the data folder is missing and a phantom is configured.
    """
    L.seed_everything(config.seed, workers=True, verbose=False)
    ensure_dataset(config.data, progress=config.trainer.progress_bar)
    run_dir = Path(config.run_dir)
    checkpoints = run_dir / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    dump_config(config, run_dir / "config.yaml")

    model = HyperRegistration(config)
    t = config.trainer
    trainer = L.Trainer(
        max_steps=t.max_steps,
        max_epochs=t.max_epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,
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
            ModelCheckpoint(
                dirpath=checkpoints,
                save_last=True,
                save_top_k=0,
                every_n_train_steps=t.checkpoint_every_n_steps,
            ),
        ],
    )
    trainer.fit(model, datamodule=RegistrationDataModule(config.data))
    last = checkpoints / "last.ckpt"
    partial = checkpoints / "last.ckpt.partial"
    trainer.save_checkpoint(partial)
    if trainer.is_global_zero:
        partial.replace(last)
    return last
