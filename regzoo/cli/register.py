"""``regzoo register``: register one pair with a trained model (``--choose``: pick the
parameters for the pair with a label-free criterion)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from regzoo._errors import InputError
from regzoo.cli.arguments import (
    TRUST_PLUGIN,
    add_max_folding_argument,
    add_model_argument,
    add_native_grid_argument,
    add_plugin_argument,
    add_refine_argument,
)
from regzoo.cli.refine_flags import add_refine_options, from_flags
from regzoo.params import parse_params

if TYPE_CHECKING:
    from regzoo.refinement import RefineOptions


def add_parser(sub: Any) -> None:
    """Add the ``register`` command to the subparsers ``sub``."""
    p = sub.add_parser("register", help="register one pair with a trained model")
    add_model_argument(p)
    p.add_argument("--fixed", required=True, help="fixed image (NIfTI)")
    p.add_argument("--moving", required=True, help="moving image (NIfTI, same grid)")
    p.add_argument(
        "--resample",
        action="store_true",
        help="resample the moving image (and --moving-seg) onto the fixed grid when the grids "
        "differ (default: refuse)",
    )
    add_plugin_argument(p, TRUST_PLUGIN)
    add_native_grid_argument(p)
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
    stage = p.add_mutually_exclusive_group()
    stage.add_argument(
        "--rigid",
        action="store_const",
        const="rigid",
        dest="align",
        help="pre-align the pair rigidly (rotation and translation) before the network; "
        "alignment.json records the matrix (default: the model's data.align)",
    )
    stage.add_argument(
        "--affine",
        action="store_const",
        const="affine",
        dest="align",
        help="pre-align the pair with a rigid then an affine stage (scales, shears) first",
    )
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
        check_alignment_pair,
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
    options = from_flags(args, steps=args.refine)  # checked before any work
    refine = options if args.refine else None
    check_output_folder(args.out)  # a folder of the user's files is refused before any work
    model = load_model(args.model, plugins=args.plugin)
    model.at_training_spacing = not args.native_grid
    model.objective.resolve(params)  # every input is checked before any work or output
    align = model.config.data.align if args.align is None else args.align
    align = None if align == "none" else align
    if align is not None and args.choose:
        raise InputError(f"--choose judges the pair as given: it cannot be combined with --{align}")
    fixed_image = read_image(args.fixed, what="fixed image")
    moving_image = read_image(args.moving, what="moving image")
    check_alignment_pair(align, fixed_image, moving_image)
    choice = None
    if args.choose:
        params, choice = _choose(model, args, options if args.refine_grid else None)
    fixed, moving, segs = read_pair(
        fixed_image,
        moving_image,
        segmentations=segmentation_names(args.moving_seg),
        resample=args.resample,
    )
    labels = None if args.fixed_labels is None else read_image(args.fixed_labels, what="labels")
    read_labels(model, fixed, labels, needed=args.refine > 0)
    result = register(
        model,
        fixed,
        moving,
        refine=refine,
        progress=refine is not None,
        fixed_labels=labels,
        align=align or "none",
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
                refine=refine,
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
    model: object, args: argparse.Namespace, refine_grid: RefineOptions | None
) -> tuple[dict[str, float], dict[str, Any]]:
    """``register --choose``: the parameters a label-free criterion picks for the pair over
    ``--grid`` (each setting refined with ``refine_grid`` under ``--refine-grid``), and the
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
        refine_grid=refine_grid,
        max_folding=args.max_folding,
        resample=args.resample,
        fixed_labels=args.fixed_labels,
    )
    print(f"{args.choose} chose {parameter_title(chosen)} out of {len(result.settings)} settings")
    record = {
        "criterion": args.choose,
        "params": chosen,
        "grid": dict(zip(result.names, result.axes, strict=True)),
        "refine_grid": None if refine_grid is None else refine_grid.to_dict(),
        "max_folding": args.max_folding,
        "settings": result.rows,
    }
    return chosen, record
