"""``regzoo register``: register one pair with a trained model (``--choose``: pick the
parameters for the pair with a label-free criterion)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from regzoo._errors import InputError
from regzoo.cli.arguments import (
    TRUST_PLUGIN,
    add_max_folding_argument,
    add_plugin_argument,
    add_refine_argument,
)
from regzoo.cli.refine_flags import add_refine_options, options_from_args
from regzoo.params import parse_params


def add_parser(sub: Any) -> None:
    """Add the ``register`` command to the subparsers ``sub``."""
    p = sub.add_parser("register", help="register one pair with a trained model")
    p.add_argument(
        "--model",
        required=True,
        help="checkpoint (runs/.../checkpoints/last.ckpt) or a pretrained model's name "
        "(chest-ct-64, phantom-64)",
    )
    p.add_argument("--fixed", required=True, help="fixed image (NIfTI)")
    p.add_argument("--moving", required=True, help="moving image (NIfTI, same grid)")
    p.add_argument(
        "--resample",
        action="store_true",
        help="resample the moving image (and --moving-seg) onto the fixed grid when the grids "
        "differ (default: refuse)",
    )
    add_plugin_argument(p, TRUST_PLUGIN)
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="free parameter value, e.g. mu=0.03 or mu@lung=0.5 (repeatable; defaults otherwise)",
    )
    p.add_argument(
        "--fixed-labels",
        metavar="NIFTI",
        help="the fixed image's tissue label map (models with per-label parameters such as "
        "mu@lung: needed by --refine; --figure then shows the parameter maps)",
    )
    p.add_argument(
        "--moving-seg",
        action="append",
        default=[],
        metavar="NIFTI",
        help="moving mask or label map to warp (nearest neighbour; repeatable)",
    )
    p.add_argument(
        "--choose",
        metavar="CRITERION",
        help="choose the parameters for this pair over --grid with a label-free criterion "
        "(docs/choosing.md); choice.json records the choice and every setting's measures",
    )
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="NAME=START:STOP:COUNT",
        help="with --choose: the settings to choose from (repeatable, or NAME=V1,V2,...)",
    )
    p.add_argument(
        "--refine-grid",
        action="store_true",
        help="with --choose: refine every setting (--refine N iterations) before judging it",
    )
    add_max_folding_argument(p)
    add_refine_argument(p, "refine the network's field for N iterations under its objective")
    add_refine_options(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--figure",
        action="store_true",
        help="also write figure.png: these parameters next to the defaults",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``regzoo register``; returns the exit code."""
    from regzoo.checkpoint import load_model
    from regzoo.inference import (
        read_image,
        read_labels,
        read_pair,
        register,
        save_result,
        segmentation_names,
    )
    from regzoo.io import atomic_write_text, check_output_folder, output_folder
    from regzoo.report import overlay_figure
    from regzoo.study import parameter_title

    params = parse_params(args.param)
    if (args.choose is None) != (not args.grid):
        raise InputError("--choose NAME and --grid NAME=START:STOP:COUNT go together")
    if args.choose and args.param:
        raise InputError("--choose picks the parameters: give fixed values as --grid NAME=VALUE")
    if args.refine_grid and not args.choose:
        raise InputError("--refine-grid needs --choose (it refines every setting of the grid)")
    refine_options = options_from_args(args)
    check_output_folder(args.out)  # a folder of the user's files is refused before any work
    model = load_model(args.model, plugins=args.plugin)
    model.objective.resolve(params)  # every input is checked before any work or output
    choice = None
    if args.choose:
        params, choice = _choose(model, args, refine_options)
    fixed, moving, segs = read_pair(
        args.fixed,
        args.moving,
        segmentations=segmentation_names(args.moving_seg),
        resample=args.resample,
    )
    labels = None if args.fixed_labels is None else read_image(args.fixed_labels, what="labels")
    read_labels(model, fixed, labels, needed=args.refine > 0)
    result = register(
        model,
        fixed,
        moving,
        refine=args.refine,
        progress=args.refine > 0,
        fixed_labels=labels,
        refine_options=refine_options,
        **params,  # type: ignore[arg-type]  # parameter names, never register's options
    )
    out = Path(args.out)
    with output_folder(out) as staging:
        names = [p.name for p in save_result(result, staging, segmentations=segs)]
        if choice is not None:
            atomic_write_text(json.dumps(choice, indent=2), staging / "choice.json")
            names.append("choice.json")
        if args.figure:
            default = model.objective.resolve({})
            settings = [
                (parameter_title(result.params), params),
                (f"defaults ({parameter_title(default)})", {}),
            ]
            mask = next(iter(segs.values()), None)
            overlay_figure(
                model,
                fixed,
                moving,
                settings,
                staging / "figure.png",
                moving_mask=mask,
                fixed_labels=labels,
                refine=args.refine,
                refine_options=refine_options,
            )
            names.append("figure.png")
    print(f"parameters: {parameter_title(result.params)}")
    if args.refine:
        print(f"refinement: {result.refine_iterations} of {args.refine} iterations ran")
    if result.objective is not None:
        readout = result.objective
        energies = ", ".join(f"{k} {v:.6g}" for k, v in readout["energies"].items())
        print(
            f"objective: {readout['objective']:.6g} (similarity {readout['similarity']:.6g}"
            f"{'; energies: ' + energies if energies else ''})"
        )
    for name in names:
        print(f"wrote {out / name}")
    return 0


def _choose(
    model: object, args: argparse.Namespace, refine_options: dict[str, object]
) -> tuple[dict[str, float], dict]:
    """``register --choose``: the parameters a label-free criterion picks for the pair over
    ``--grid`` (each setting refined with ``refine_options`` under ``--refine-grid``), and the
    record written to choice.json."""
    from regzoo.inference import choose_parameters
    from regzoo.study import parameter_title
    from regzoo.sweeping import parse_grid

    chosen, result = choose_parameters(
        model,  # type: ignore[arg-type]
        args.fixed,
        args.moving,
        parse_grid(args.grid),
        args.choose,
        refine_grid=args.refine if args.refine_grid else 0,
        refine_options=refine_options,
        max_folding=args.max_folding,
        resample=args.resample,
        fixed_labels=args.fixed_labels,
    )
    print(f"{args.choose} chose {parameter_title(chosen)} out of {len(result.settings)} settings")
    record = {
        "criterion": args.choose,
        "params": chosen,
        "grid": dict(zip(result.names, result.axes, strict=True)),
        "refine_grid": args.refine if args.refine_grid else 0,
        "max_folding": args.max_folding,
        "settings": result.rows,
    }
    return chosen, record
