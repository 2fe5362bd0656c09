"""Two-process training through Lightning's DDP strategy (CPU, gloo), run by the CLI."""

import os
import subprocess
import sys
from pathlib import Path

import torch
from conftest import QUICKSTART, tiny_overrides

PROBE = Path(__file__).with_name("_ddp_probe.py")
STEPS = 2


def _train(args, probes):
    """Run ``regzoo train ARGS`` under the probe (two DDP processes); each rank's probe."""
    probes.mkdir()
    root = str(Path(__file__).resolve().parents[1])
    env = {
        **os.environ,
        "REGZOO_DDP_PROBE": str(probes),
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",  # one thread per rank
    }
    command = [sys.executable, str(PROBE), "train", *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [torch.load(probes / f"rank{r}.pt", weights_only=True) for r in range(2)]


def _sets(overrides):
    return [word for override in overrides for word in ("--set", override)]


def test_ddp_two_processes_train_in_lockstep_with_own_parameters(tiny_phantom, tmp_path):
    run_dir = tmp_path / "run"
    overrides = [
        *tiny_overrides(tiny_phantom, run_dir, steps=STEPS),
        "trainer.strategy=ddp",
        "trainer.devices=2",
        "trainer.check_val_every_n_epoch=1",
    ]
    ranks = _train([str(QUICKSTART), *_sets(overrides)], tmp_path / "probes")
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    for r, probe in enumerate(ranks):
        assert probe["rank"] == r and probe["world_size"] == 2 and probe["backend"] == "gloo"
        assert probe["global_step"] == STEPS and len(probe["draws"]) == STEPS
    first, second = ranks
    # training advanced, and DDP kept the replicas identical (same initial weights too)
    changed = [k for k in first["final"] if not torch.equal(first["final"][k], first["initial"][k])]
    assert changed
    for key in first["final"]:
        assert torch.equal(first["initial"][key], second["initial"][key]), key
        assert torch.equal(first["final"][key], second["final"][key]), key
    # each rank draws its own parameter vectors (the sampler is seeded with seed + rank)
    for a, b in zip(first["draws"], second["draws"], strict=True):
        assert not torch.allclose(a, b)
    # the DistributedSampler shards the 2 training pairs: one per rank in every epoch
    assert all(a != b for a, b in zip(first["cases"], second["cases"], strict=True))

    # resumed on two processes: every rank continues its OWN parameter stream (the checkpoint
    # holds each rank's sampler state), never rank zero's
    more = [*overrides, f"trainer.max_steps={2 * STEPS}"]  # the last override wins
    resumed = _train(
        [str(QUICKSTART), "--resume", str(run_dir), *_sets(more)], tmp_path / "resumed"
    )
    for before, after in zip(ranks, resumed, strict=True):
        assert after["global_step"] == 2 * STEPS and len(after["draws"]) == STEPS
        assert torch.equal(after["sampler_start"], before["sampler_end"])
    for a, b in zip(resumed[0]["draws"], resumed[1]["draws"], strict=True):
        assert not torch.allclose(a, b)
