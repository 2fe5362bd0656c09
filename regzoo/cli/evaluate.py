"""``regzoo evaluate``: Dice, TRE, SDlogJ and folding of a model or of displacement files."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from regzoo._errors import InputError
from regzoo.cli.arguments import (
    TRUST_PLUGIN,
    add_native_grid_argument,
    add_plugin_argument,
    add_refine_argument,
)
from regzoo.cli.refine_flags import add_refine_options, from_flags
from regzoo.params import parse_params


def add_parser(sub: Any) -> None:
    """Add the ``evaluate`` command to the subparsers ``sub``."""
    p = sub.add_parser(
        "evaluate", help="Dice, TRE, SDlogJ, folding of a model or of displacement files"
    )
    p.add_argument("--data", required=True, help="Learn2Reg-layout dataset folder")
    p.add_argument("--split", default="val", choices=["train", "val", "test"])
    p.add_argument(
        "--model",
        help="checkpoint (runs/.../checkpoints/last.ckpt) or a pretrained model's name "
        "(chest-ct-64, phantom-64)",
    )
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--disp-dir", help="folder of disp_FFFF_MMMM.nii.gz from any tool")
    add_plugin_argument(p, TRUST_PLUGIN)
    add_native_grid_argument(p)
    add_refine_argument(p, "refine each of the model's fields for N iterations")
    add_refine_options(p)
    p.add_argument("--out", required=True, help="JSON report (a CSV is written beside it)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``regzoo evaluate``; returns the exit code."""
    from regzoo.data.learn2reg import Intensity, Learn2RegDataset
    from regzoo.evaluation import (
        check_dimension,
        evaluate_displacements,
        evaluate_model,
        summarize,
        write_report,
    )

    if (args.model is None) == (args.disp_dir is None):
        raise InputError("give exactly one of --model or --disp-dir")
    if args.refine and not args.model:
        raise InputError("--refine needs --model (it refines the model's own fields)")
    if Path(args.out).is_dir():
        raise InputError(f"--out {args.out} is a folder; give the JSON report's file name")
    from regzoo.evaluation import report_paths
    from regzoo.io import check_output_files

    check_output_files(report_paths(args.out))  # before any work: never over a user's file
    if args.model:
        from regzoo.checkpoint import load_model

        model = load_model(args.model, plugins=args.plugin)
        model.at_training_spacing = not args.native_grid
        params = model.objective.resolve(parse_params(args.param))
        intensity = Intensity.from_config(model.config.data)
        dataset = Learn2RegDataset(args.data, args.split, intensity=intensity, annotations=True)
        check_dimension(model, dataset)
        options = from_flags(args, steps=args.refine) if args.refine else None
        from_flags(args)  # the flags are checked even without --refine
        rows = evaluate_model(model, dataset, params, refine=options)
        extra = {
            "model": str(args.model),
            "params": params,
            "refine": None if options is None else options.to_dict(),
        }
    else:
        dataset = Learn2RegDataset(args.data, args.split, annotations=True)
        rows = evaluate_displacements(dataset, args.disp_dir)
        extra = {"disp_dir": str(args.disp_dir)}
    json_path, csv_path = write_report(
        rows, args.out, data=str(args.data), split=args.split, **extra
    )
    for metric, value in summarize(rows).items():
        print(f"{metric:>18}: {value:.4f}")
    print(f"wrote {json_path} and {csv_path}")
    return 0
