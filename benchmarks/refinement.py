"""Instance optimisation choices, side by side: similarity, pyramid, optimiser, stopping, start.

At one parameter setting, on the validation pairs, refines every pair under the model's
regularizer terms with each combination of the options below, and prints TRE, Dice, SDlogJ,
folding, the iterations that ran (early stopping) and seconds per pair (network forward included
for the warm start) in wall and in CPU time (all threads: on a busy machine the CPU time with
``--threads 1`` is what an idle core would take). The first row is the start alone. Options that take several values are
crossed:

- ``--similarity``: refinement similarities as `regzoo.similarity.parse_similarity` reads
  them (``model``: the training one; ``mind_ssc``, ``10*mind_ssc``, ``ngf:eta=0.05``,
  ``model + 0.75*ngf``);
- ``--grid-downsize``, ``--levels``, ``--split`` (shares per level, coarsest first, e.g.
  ``1:1:2``), ``--steps``, ``--lr``, ``--optimizer`` (adam, lbfgs), ``--tol`` (early stopping);
- ``--starts``: the network's field, zero, ``discrete`` (`regzoo.discrete.discrete_displacement`: a MIND-SSC correlation volume searched on blocks of
  ``--discrete-grid`` voxels within ``--discrete-radius`` blocks, then coupled convex
  optimisation, as ConvexAdam starts; its time is included), or ``truth``: the phantom's true displacement
  (``gtdispTr/``), which measures how far each objective's minimiser lies from the truth (a
  perfect objective would leave it in place).

Without a checkpoint, ``--config`` builds the objective from a config and refines from zero
fields (``--starts zero``). Run with the project's environment::

    .venv/bin/python benchmarks/refinement.py --model runs/quickstart/checkpoints/last.ckpt \\
        --data data/phantom --param lam=1 --param mu=1
    .venv/bin/python benchmarks/refinement.py --config configs/quickstart.yaml \\
        --data data/phantom --param lam=1 --param mu=1 --starts zero \\
        --similarity model 'mind_ssc' '10*mind_ssc' --steps 30 60 --tol 0 1e-3
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

from regzoo.checkpoint import load_model
from regzoo.cli import parse_params
from regzoo.config import load_config
from regzoo.data.learn2reg import Learn2RegDataset
from regzoo.discrete import discrete_displacement
from regzoo.evaluation import item_labels, score_pair, summarize
from regzoo.io import read_displacement
from regzoo.nets import RegistrationOutput
from regzoo.refinement import RefineOptions, RefineTrace, refine_field
from regzoo.resolve import build_objective
from regzoo.similarity import parse_similarity


def _split(text: str) -> tuple[float, ...] | None:
    return None if text == "equal" else tuple(float(x) for x in text.split(":"))


def main() -> None:
    """Parse arguments, run every variant, print JSON lines and a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="checkpoint (network start, its objective)")
    source.add_argument("--config", help="config whose objective is refined (zero starts)")
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--similarity", nargs="+", default=["model"])
    parser.add_argument("--grid-downsize", type=int, nargs="+", default=[2])
    parser.add_argument("--steps", type=int, nargs="+", default=[30, 60])
    parser.add_argument("--lr", type=float, nargs="+", default=[0.1])
    parser.add_argument("--levels", type=int, nargs="+", default=[3])
    parser.add_argument("--level-split", nargs="+", default=["equal"], metavar="A:B:C")
    parser.add_argument("--optimizer", nargs="+", default=["adam"])
    parser.add_argument("--tol", type=float, nargs="+", default=[0.0])
    parser.add_argument("--starts", nargs="+", default=["network", "zero"])
    parser.add_argument("--discrete-grid", type=int, default=4, help="discrete start: block side")
    parser.add_argument(
        "--discrete-radius", type=int, default=4, help="discrete start: search radius (blocks)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, help="only the first N pairs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model(args.model) if args.model else None
    config = model.config if model else load_config(args.config)
    objective = model.objective if model else build_objective(config)
    if model is None and "network" in args.starts:
        parser.error("--starts network needs --model")
    params = objective.resolve(parse_params(args.param))
    values = objective.space.to_tensor(params, batch=1)
    dataset = Learn2RegDataset(
        args.data,
        args.split,
        intensity_window=tuple(config.data.intensity_window),
        annotations=True,
    )
    items = list(dataset)[: args.limit]
    int_steps = config.model.int_steps

    def energy_spacing(item: dict) -> torch.Tensor | None:
        if model is not None:
            return model.energy_spacing(item.get("spacing"))
        spacing = item.get("spacing")
        if spacing is None or config.energy_units == "voxel":
            return None
        return torch.as_tensor(spacing, dtype=torch.float32)

    grid = itertools.product(
        args.starts,
        args.similarity,
        args.grid_downsize,
        args.levels,
        args.level_split,
        args.optimizer,
        args.steps,
        args.lr,
        args.tol,
    )
    variants = [(start, "-", 0, 0, "-", "-", 0, 0.0, 0.0) for start in args.starts]
    variants += [v for v in grid if v[3] == 1 or _split(v[4]) is None or len(_split(v[4])) == v[3]]
    table = []
    for start, sim_name, grid_ds, levels, split, optimizer, steps, lr, tol in variants:
        sim = parse_similarity(sim_name, trained=objective.similarity) if steps else None
        rows = []
        for item in items:
            fixed, moving = item["fixed"][None], item["moving"][None]
            begin, cpu = time.perf_counter(), time.process_time()
            if start == "network":
                with torch.no_grad():
                    out = model(fixed, moving, values)
                init = out.velocity if int_steps and out.velocity is not None else out.displacement
            elif start == "discrete":  # ConvexAdam's first stage: search, then coupled convex
                out = RegistrationOutput(
                    discrete_displacement(
                        fixed, moving, grid=args.discrete_grid, radius=args.discrete_radius
                    )
                )
                init = out.displacement
            elif start == "truth":  # the phantom's true displacement: where the objective drifts
                truth = Path(args.data) / "gtdispTr" / f"PhantomCT_{item['fixed_id']}.nii.gz"
                out = RegistrationOutput(read_displacement(truth).tensor()[None])
                init = out.displacement
            else:
                out = RegistrationOutput(torch.zeros(1, fixed.ndim - 2, *fixed.shape[2:]))
                init = out.displacement
            trace = RefineTrace()
            if steps:
                options = RefineOptions(
                    steps=steps,
                    lr=lr,
                    grid_downsize=grid_ds,
                    levels=levels,
                    split=_split(split) if levels > 1 else None,
                    optimizer=optimizer,
                    tol=tol,
                    int_steps=int_steps,
                    regularize=config.regularize,
                )
                out = refine_field(
                    objective,
                    fixed,
                    moving,
                    init,
                    values,
                    options,
                    spacing=energy_spacing(item),
                    trace=trace,
                    labels=item_labels(item),
                    similarity=sim,
                )
            seconds = time.perf_counter() - begin
            row = {**score_pair(item, out.displacement[0]), "seconds": seconds}
            row["cpu_seconds"] = time.process_time() - cpu
            row["iterations"] = trace.total_iterations
            rows.append(row)
        s = summarize(rows)
        s["iterations"] = sum(r["iterations"] for r in rows) / len(rows)
        s["cpu_seconds"] = sum(r["cpu_seconds"] for r in rows) / len(rows)
        record = {
            "start": start,
            "similarity": sim_name,
            "grid_downsize": grid_ds,
            "levels": levels,
            "split": split,
            "optimizer": optimizer,
            "steps": steps,
            "lr": lr,
            "tol": tol,
            **s,
        }
        print(json.dumps(record), flush=True)
        table.append(
            f"| {start} | {sim_name} | {grid_ds or '-'} | {levels or '-'} | {split} "
            f"| {optimizer} | {steps} | {lr:g} | {tol:g} | {s['iterations']:.1f} "
            f"| {s['tre_mm']:.2f} | {s.get('dice', 0):.4f} | {s['sdlogj']:.3f} "
            f"| {s['folding_fraction']:.2%} | {s['seconds']:.2f} | {s['cpu_seconds']:.2f} |"
        )
    source_name = args.model or args.config
    print(f"\n{source_name}, {len(items)} {args.split} pairs, parameters {params}\n")
    print(
        "| start | similarity | grid | levels | split | optimizer | steps | lr | tol "
        "| iterations run | TRE mm | Dice | SDlogJ | folded | s/pair | CPU s/pair |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(table))


if __name__ == "__main__":
    main()
