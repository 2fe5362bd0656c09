"""``regzoo sweep``: evaluate a grid of parameters; heat maps, best values and the report."""

from __future__ import annotations

import argparse
from typing import Any

from regzoo._errors import InputError
from regzoo.cli.arguments import (
    TRUST_PLUGIN,
    add_max_folding_argument,
    add_model_argument,
    add_native_grid_argument,
    add_plugin_argument,
    add_refine_argument,
    int_at_least,
)
from regzoo.cli.refine_flags import add_refine_options, from_flags, similarities_from_args


def add_parser(sub: Any) -> None:
    """Add the ``sweep`` command to the subparsers ``sub``."""
    p = sub.add_parser("sweep", help="evaluate a grid of parameters; heat maps and best values")
    add_model_argument(p)
    add_plugin_argument(p, TRUST_PLUGIN)
    add_native_grid_argument(p)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="val", choices=["train", "val", "test"])
    p.add_argument(
        "--grid",
        action="append",
        required=True,
        metavar="NAME=START:STOP:COUNT",
        help="e.g. lam=0:0.5:11 (repeatable, or NAME=V1,V2,...)",
    )
    p.add_argument(
        "--metric",
        choices=["dice", "dice_labels", "tre_mm", "sdlogj"],
        help="criterion for the best parameters (default: dice, else tre_mm)",
    )
    p.add_argument(
        "--batch-size",
        type=int_at_least(1),
        help="settings per forward pass (default: 1 on a CPU, where a batch is no faster and "
        "holds every setting's activations; 8 on a GPU)",
    )
    p.add_argument(
        "--optimize",
        action="store_true",
        help="also refine the parameters per pair by gradient descent",
    )
    p.add_argument("--optimize-steps", type=int_at_least(1), default=30)
    add_refine_argument(
        p, "refine the best setting on every pair; report identity / network / refined"
    )
    p.add_argument(
        "--criterion",
        metavar="NAME",
        help="choose by this label-free criterion instead of a metric: invertible_fit, "
        "discrepancy, lcurve, inverse_consistency or a plugin's (docs/choosing.md)",
    )
    add_max_folding_argument(p)
    p.add_argument(
        "--refine-grid",
        action="store_true",
        help="refine every grid setting before scoring it (an exact sweep, --refine N "
        "iterations each): rank settings by what refinement reaches, not by the network",
    )
    add_refine_options(p, several_similarities=True)
    p.add_argument(
        "--figure",
        action="store_true",
        help="overlay figure of the first pair at the best and worst settings",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``regzoo sweep``; returns the exit code."""
    from regzoo.checkpoint import load_model
    from regzoo.data.learn2reg import Intensity, Learn2RegDataset
    from regzoo.study import parameter_title, run_sweep_study
    from regzoo.sweeping import parse_grid

    if args.refine_grid and not args.refine:
        raise InputError("--refine-grid needs --refine N (the iterations per setting)")
    options = from_flags(args, steps=args.refine)  # every text checked before the model loads
    similarities = similarities_from_args(args)
    if similarities and not args.refine_grid:
        raise InputError(
            "several --refine-similarity texts need an exact sweep: --refine-grid --refine N"
        )
    model = load_model(args.model, plugins=args.plugin)
    model.at_training_spacing = not args.native_grid
    intensity = Intensity.from_config(model.config.data)
    dataset = Learn2RegDataset(args.data, args.split, intensity=intensity, annotations=True)
    study = run_sweep_study(
        model,
        dataset,
        parse_grid(args.grid),
        args.out,
        metric=args.metric,
        batch_size=args.batch_size,
        refine=options if args.refine else None,
        refine_grid=options if args.refine_grid else None,
        refine_similarities=similarities,
        max_folding=args.max_folding,
        criterion=args.criterion,
        optimize=args.optimize,
        optimize_steps=args.optimize_steps,
        figure=args.figure,
        checkpoint=args.model,
        data=args.data,
    )
    best = study.best
    score = f"{study.metric} = {best[study.metric]:.4f}" if study.metric in best else "no labels"
    similarity = best.get("refine_similarity")
    print(
        "best parameters for the data set: "
        + parameter_title({n: best[n] for n in study.result.names})
        + ("" if similarity is None else f", refined under '{similarity}'")
        + f" ({study.criterion or study.metric}; {score})"
    )
    for method, scores in (study.comparison or {}).items():
        print(f"{method:>9}: " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))
    print(f"report: {study.summary}")
    return 0
