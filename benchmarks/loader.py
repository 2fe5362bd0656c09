"""The streaming data loader's cost next to the training step's, measured in one run.

Training reads every pair from disk when it is used (``data.cache: false``, the default):
``RegistrationDataModule``'s training loader, with ``--workers`` loader processes each (0: in
the training process). For every setting this runs ``--batches`` real training steps (the
``matched`` hyper model of train_step.py) fed by that loader and records, per batch, the time
spent waiting for the batch (the loader's exposed cost) and the step's time; the settings run
one after the other (each loader has its own workers), after one untimed batch each. Also
printed: the time to read one pair in the training process (two
gzipped NIfTI files, clipping and scaling), the pair's size in memory and on disk.

    python benchmarks/loader.py --size 128 --workers 0 2 [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see _common.WORKER_ENV

import torch
from _common import device_name, median, rss_mb

from regzoo.config import DataConfig
from regzoo.data.datamodule import RegistrationDataModule
from regzoo.data.phantom import write_phantom_dataset

sys.path.insert(0, str(Path(__file__).parent))
from train_step import build_regzoo


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", help="Learn2Reg folder (default: a fresh 3-case phantom)")
    parser.add_argument("--size", type=int, default=64, help="phantom size (without --data)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data) if args.data else Path(tmp) / "phantom"
        if not args.data:
            shape = (args.size,) * 3
            write_phantom_dataset(root, n=3, val=1, shape=shape, progress=False)
        rows = [measure_read(root)]
        print(json.dumps(rows[0]), flush=True)
        size = list(rows[0]["shape"])
        options = argparse.Namespace(setting="matched", half_res=False, batch=1)
        for workers in args.workers:
            module = RegistrationDataModule(DataConfig(root=root, num_workers=workers))
            module.setup("fit")
            bench = build_regzoo("hyper", options, size, device)
            rows.append(measure_loader(module, bench, workers, args.batches))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{device_name(device)}, torch {torch.__version__}, batch 1, streaming (no cache)\n")
    first = rows[0]
    print(
        f"one pair {first['shape']}: read {first['read_seconds']:.3f} s, "
        f"{first['pair_mb']:.0f} MB in memory, {first['disk_mb']:.1f} MB on disk"
    )
    print("\n| loader workers | wait for batch (s) | training step (s) | wait / step |")
    print("|---:|---:|---:|---:|")
    for r in rows[1:]:
        print(
            f"| {r['workers']} | {r['wait_seconds']:.3f} | {r['step_seconds']:.3f} "
            f"| {r['wait_over_step']:.3f} |"
        )


def measure_read(root: Path) -> dict:
    """Median time to read one training pair in this process (no workers, no cache)."""
    module = RegistrationDataModule(DataConfig(root=root))
    module.setup("fit")
    dataset = module.train_set
    seconds = []
    for i in range(5):
        start = time.perf_counter()
        item = dataset[i % len(dataset)]
        seconds.append(time.perf_counter() - start)
    fixed_path, moving_path = dataset.pairs[0]
    return {
        "shape": list(item["fixed"].shape[1:]),
        "read_seconds": median(seconds),
        "pair_mb": 2 * item["fixed"].numel() * 4 / 2**20,
        "disk_mb": (fixed_path.stat().st_size + moving_path.stat().st_size) / 2**20,
        "cached": bool(dataset._cache),
    }


def measure_loader(module: RegistrationDataModule, bench, workers: int, batches: int) -> dict:
    """Training steps fed by the module's training loader: wait and step times."""
    loader = module.train_dataloader()
    waits, steps = [], []
    iterator = iter(loader)
    rss_before = rss_mb()
    for i in range(batches + 1):
        start = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:  # next epoch (persistent workers keep running)
            iterator = iter(loader)
            batch = next(iterator)
        ready = time.perf_counter()
        for key in ("fixed", "moving"):
            bench.inputs[key].copy_(batch[key])
        bench.step()
        done = time.perf_counter()
        if i:  # the first batch starts the workers: untimed
            waits.append(ready - start)
            steps.append(done - ready)
    return {
        "workers": workers,
        "wait_seconds": median(waits),
        "step_seconds": median(steps),
        "wait_over_step": median(waits) / median(steps),
        "batches": batches,
        "rss_growth_mb": rss_mb() - rss_before,
    }


if __name__ == "__main__":
    main()
