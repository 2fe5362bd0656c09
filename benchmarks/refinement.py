"""Instance optimisation choices, side by side: grid, iterations and warm start.

At one parameter setting, on the validation pairs, refines every pair under the model's own
objective with each combination of ``--grid-downsize`` (the optimised field's coarseness),
``--steps`` and start (the network's field, or zero), and prints TRE, Dice, SDlogJ, folding and
seconds per pair (network forward included for the warm start). The first row is the network
alone. Run with the project's environment::

    .venv/bin/python benchmarks/refinement.py --model runs/quickstart/checkpoints/last.ckpt \\
        --data data/phantom --param lam=1 --param mu=1
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import torch

from regzoo.cli import parse_params
from regzoo.data.learn2reg import Learn2RegDataset
from regzoo.evaluation import score_pair, summarize
from regzoo.model import load_model
from regzoo.nets import RegistrationOutput
from regzoo.refine import refine


def main() -> None:
    """Parse arguments, run every variant, print JSON lines and a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--grid-downsize", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 30, 100])
    parser.add_argument("--lr", type=float, nargs="+", default=[0.1])
    parser.add_argument("--starts", nargs="+", default=["network", "zero"])
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model(args.model)
    params = model.objective.resolve(parse_params(args.param))
    window = tuple(model.config.data.intensity_window)
    dataset = Learn2RegDataset(args.data, args.split, intensity_window=window, annotations=True)
    items = list(dataset)
    values = model.parameter_tensor(params, 1)

    variants: list[tuple[str, int, int, float, int]] = [("network", 0, 0, 0.0, 0)]
    variants += itertools.product(args.starts, args.grid_downsize, args.steps, args.lr, args.levels)
    table = []
    for start, grid, steps, lr, levels in variants:
        rows = []
        for item in items:
            fixed, moving = item["fixed"][None], item["moving"][None]
            begin = time.perf_counter()
            if start == "network":
                with torch.no_grad():
                    init = model(fixed, moving, values)
            else:
                init = RegistrationOutput(torch.zeros(1, 3, *fixed.shape[2:]))
            if steps:
                init = refine(
                    model,
                    fixed,
                    moving,
                    values,
                    steps=steps,
                    lr=lr,
                    grid_downsize=grid,
                    levels=levels,
                    init=init,
                )
            seconds = time.perf_counter() - begin
            rows.append({**score_pair(item, init.displacement[0]), "seconds": seconds})
        s = summarize(rows)
        print(
            json.dumps(
                {
                    "start": start,
                    "grid_downsize": grid,
                    "steps": steps,
                    "lr": lr,
                    "levels": levels,
                    **s,
                }
            )
        )
        table.append(
            f"| {start} | {grid or '-'} | {levels or '-'} | {steps} | {lr or '-'} | {s['tre_mm']:.2f} | {s.get('dice', 0):.4f} | "
            f"{s['sdlogj']:.3f} | {s['folding_fraction']:.2%} | {s['seconds']:.2f} |"
        )
    print(f"\nmodel {args.model}, {len(items)} {args.split} pairs, parameters {params}\n")
    print(
        "| start | grid downsize | levels | steps | lr | TRE mm | Dice | SDlogJ | folded | s/pair |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(table))


if __name__ == "__main__":
    main()
