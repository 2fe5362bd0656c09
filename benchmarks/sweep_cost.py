"""Per-setting cost of a 100-setting sweep against one single ``register`` call.

Both register the same phantom pair with the same model; the sweep batches settings through
the hypernetwork and scores each (Dice, TRE, SDlogJ, folding); ``register`` runs the network
once, warps the image and computes the Jacobian map.

    python benchmarks/sweep_cost.py [--model CKPT] [--data DIR] [--settings 100]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch
from _common import device_name

from regzoo.checkpoint import load_model
from regzoo.config import load_config
from regzoo.data.learn2reg import Learn2RegDataset
from regzoo.data.phantom import write_phantom_dataset
from regzoo.inference import register
from regzoo.lightning_module import HyperRegistration
from regzoo.sweeping import sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", help="checkpoint (default: an untrained quickstart model)")
    parser.add_argument("--data", help="Learn2Reg folder (default: a fresh 1-pair 64^3 phantom)")
    parser.add_argument("--settings", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    model = (
        load_model(args.model)
        if args.model
        else HyperRegistration(load_config("configs/quickstart.yaml")).eval()
    ).to(device)
    with tempfile.TemporaryDirectory() as tmp:
        root = (
            Path(args.data)
            if args.data
            else write_phantom_dataset(
                Path(tmp) / "phantom", n=2, val=1, shape=(64, 64, 64), progress=False
            )
        )
        dataset = Learn2RegDataset(
            root,
            "val",
            annotations=True,
            intensity_window=tuple(model.config.data.intensity_window),
        )
        dataset.pairs = dataset.pairs[:1]
        item = dataset[0]
        side = math.ceil(args.settings ** (1 / len(model.space)))
        names = model.space.names
        grid = {
            n: torch.linspace(model.space[n].low, model.space[n].high, side).tolist() for n in names
        }
        register(model, item["fixed_path"], item["moving_path"])  # warm-up
        repeats = 3
        start = time.perf_counter()
        for _ in range(repeats):
            register(model, item["fixed_path"], item["moving_path"])
        single = (time.perf_counter() - start) / repeats
        start = time.perf_counter()
        result = sweep(model, dataset, grid, batch_size=args.batch_size, progress=False)
        total = time.perf_counter() - start
    per_setting = total / len(result.settings)
    print(
        f"device: {device_name(device)}, image 64^3, {len(result.settings)} settings, batch {args.batch_size}"
    )
    print(f"single register call:            {single:.3f} s")
    print(f"sweep total:                      {total:.2f} s")
    print(
        f"sweep per setting (incl. scoring): {per_setting:.3f} s  -> ratio {per_setting / single:.2f}"
    )


if __name__ == "__main__":
    main()
