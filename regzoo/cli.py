"""The ``regzoo`` command line: ``regzoo COMMAND --help`` for each command."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from regzoo._errors import InputError, RegzooError
from regzoo.params import parse_params

__all__ = ["build_parser", "main", "parse_params"]


def _cmd_regularizers(args: argparse.Namespace) -> int:
    from regzoo import regularizers
    from regzoo.registry import load_plugins

    load_plugins(args.plugin)
    with warnings.catch_warnings():  # failed plugins are reported below, once each
        warnings.simplefilter("ignore", RuntimeWarning)
        names = regularizers.available()
    entries: list[dict[str, Any]] = []
    domains = {}
    for name in names:
        cls = regularizers.get(name)
        domains[name] = {spec.name: spec.domain_text() for spec in cls.space}
        entries.append(
            {
                "name": name,
                "class": f"{cls.__module__}.{cls.__qualname__}",
                "summary": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "",
                "quadratic": cls.quadratic,
                "params": [
                    {
                        k: spec[k]
                        for k in (
                            "name",
                            "low",
                            "high",
                            "default",
                            "scale",
                            "domain",
                            "description",
                        )
                    }
                    for spec in cls.space.describe()
                ],
            }
        )
    failed = regularizers.REGULARIZERS.failed
    if args.json:
        print(json.dumps(entries, indent=2))
    else:
        for entry in entries:
            print(f"{entry['name']}  ({entry['class']})")
            print(f"    {entry['summary']}")
            if not entry["params"]:
                print("    params: none (only the term weight alpha)")
            for p in entry["params"]:
                print(
                    f"    {p['name']:<16} [{p['low']:g}, {p['high']:g}]  default {p['default']:g}"
                    f"  {p['scale']:<6}  domain {domains[entry['name']][p['name']]}  {p['description']}"
                )
    for message in failed.values():
        print(f"warning: {message}", file=sys.stderr)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from regzoo.config import load_config
    from regzoo.training import train

    overrides = list(args.set)
    if args.resume:  # the run continues as it was configured, changed only by explicit --set
        from regzoo.runs import resume_config

        if args.overwrite:
            raise InputError("give --resume or --overwrite, not both")
        config, notes = resume_config(args.config, args.resume, overrides)
        for line in notes:
            print(line, file=sys.stderr)
    else:
        config = load_config(args.config, overrides)
    checkpoint = train(config, resume=args.resume is not None, overwrite=args.overwrite)
    if args.resume:
        from regzoo.runs import record_resume

        record_resume(args.resume, notes)
    print(f"checkpoint: {checkpoint}")
    return 0


def _cmd_phantom(args: argparse.Namespace) -> int:
    from regzoo.data.phantom import default_validation_cases, write_phantom_dataset

    shape = args.shape or [64] * args.ndim
    if len(shape) != args.ndim:
        raise InputError(f"--shape has {len(shape)} sizes but --ndim is {args.ndim}")
    val = args.val if args.val is not None else default_validation_cases(args.n)
    root = write_phantom_dataset(
        args.out, n=args.n, val=val, shape=shape, seed=args.seed, motion=args.motion
    )
    print(f"phantom dataset: {root}")
    return 0


def _cmd_register(args: argparse.Namespace) -> int:
    from regzoo.checkpoint import load_model
    from regzoo.inference import (
        read_image,
        read_labels,
        read_pair,
        register,
        save_result,
        segmentation_names,
    )
    from regzoo.io import atomic_write_text, output_folder
    from regzoo.report import overlay_figure
    from regzoo.study import parameter_title

    params = parse_params(args.param)
    if (args.choose is None) != (not args.grid):
        raise InputError("--choose NAME and --grid NAME=START:STOP:COUNT go together")
    if args.choose and args.param:
        raise InputError("--choose picks the parameters: give fixed values as --grid NAME=VALUE")
    if args.refine_grid and not args.choose:
        raise InputError("--refine-grid needs --choose (it refines every setting of the grid)")
    refine_options = _refine_options(args)
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


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from regzoo.data.learn2reg import Learn2RegDataset
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
        params = model.objective.resolve(parse_params(args.param))
        window = model.config.data.intensity_window
        dataset = Learn2RegDataset(args.data, args.split, intensity_window=window, annotations=True)
        check_dimension(model, dataset)
        options = _refine_options(args)
        rows = evaluate_model(model, dataset, params, refine=args.refine, refine_options=options)
        extra = {"model": str(args.model), "params": params, "refine": args.refine}
        extra["refine_options"] = options
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


def _cmd_sweep(args: argparse.Namespace) -> int:
    from regzoo.checkpoint import load_model
    from regzoo.data.learn2reg import Learn2RegDataset
    from regzoo.study import parameter_title, run_sweep_study
    from regzoo.sweeping import parse_grid

    if args.refine_grid and not args.refine:
        raise InputError("--refine-grid needs --refine N (the iterations per setting)")
    model = load_model(args.model, plugins=args.plugin)
    window = model.config.data.intensity_window
    dataset = Learn2RegDataset(args.data, args.split, intensity_window=window, annotations=True)
    study = run_sweep_study(
        model,
        dataset,
        parse_grid(args.grid),
        args.out,
        metric=args.metric,
        batch_size=args.batch_size,
        refine=args.refine,
        refine_grid=args.refine_grid,
        refine_options=_refine_options(args),
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
    print(
        "best parameters for the data set: "
        + parameter_title({n: best[n] for n in study.result.names})
        + f" ({study.criterion or study.metric}; {score})"
    )
    for method, scores in (study.comparison or {}).items():
        print(f"{method:>9}: " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))
    print(f"report: {study.summary}")
    return 0


def _cmd_explore(args: argparse.Namespace) -> int:
    from regzoo.explore.command import run

    return run(args, refine_options=_refine_options(args))


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: an integer ``>= minimum``, with a one-line message otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _fraction(text: str) -> float:
    """argparse type: a number in ``[0, 1]`` (``nan`` is refused, not ignored)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # also false for nan
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1], got {text!r}")
    return value


def _add_refine_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument(
        "--refine", type=_int_at_least(0), default=0, metavar="N", help=f"{help_text} (0: off)"
    )


def _add_refine_options(parser: argparse.ArgumentParser) -> None:
    """How --refine optimises: its similarity and when it stops (register, evaluate)."""
    parser.add_argument(
        "--refine-similarity",
        metavar="SPEC",
        help="refine under this similarity instead of the training one: a registered name "
        "(mind_ssc, ngf, mi...), weighted terms joined by '+' ('10*mind_ssc', "
        "'model + 0.75*ngf'; 'model' is the training similarity) and options after ':' "
        "('ngf:eta=0.05'); the regularizer terms stay the model's",
    )
    parser.add_argument(
        "--refine-split",
        metavar="A:B:C",
        help="share of the iterations per pyramid level, coarsest first (default: equal; "
        "1:1:2 spends half on the full resolution)",
    )
    parser.add_argument(
        "--refine-tol",
        type=float,
        default=0.0,
        metavar="TOL",
        help="stop a pyramid level once the objective's relative change per iteration is "
        "below TOL (0: off); the report says how many iterations ran",
    )


def _refine_options(args: argparse.Namespace) -> dict[str, object]:
    """The keyword arguments of regzoo.refinement.refine that _add_refine_options collects."""
    from regzoo.refinement import refine_options_from_flags

    return refine_options_from_flags(args.refine_similarity, args.refine_split, args.refine_tol)


def _add_max_folding_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-folding",
        type=_fraction,
        default=0.0,
        metavar="FRACTION",
        help="only settings whose mean folded-voxel fraction is at most this may be chosen "
        "(default 0: invertible results only; 1: no limit)",
    )


def _add_plugin_argument(p: argparse.ArgumentParser, text: str) -> None:
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE_OR_FILE", help=text)


TRUST_PLUGIN = (
    "import this plugin module or .py file (repeatable): a plugin named in a checkpoint is "
    "never imported unless you name it here"
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``regzoo`` command (used by the CLI reference docs)."""
    parser = argparse.ArgumentParser(
        prog="regzoo",
        description="Physics-inspired regularization for learning-based image registration.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("regularizers", help="list installed regularizers and their parameters")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    _add_plugin_argument(p, "also import this plugin module or .py file (repeatable)")
    p.set_defaults(func=_cmd_regularizers)

    p = sub.add_parser("train", help="train an experiment config")
    p.add_argument("config", help="experiment YAML (e.g. configs/quickstart.yaml)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set trainer.max_steps=100 (repeatable)",
    )
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its last checkpoint (same step count, optimizer "
        "and sampler state, TensorBoard log)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace a previous run in the config's run_dir"
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("phantom", help="write the synthetic thoracic CT set (Learn2Reg layout)")
    p.add_argument("out", help="output folder (must not exist)")
    p.add_argument("--n", type=_int_at_least(2), default=16, help="number of cases (pairs)")
    p.add_argument(
        "--val",
        type=_int_at_least(1),
        help="cases held out for validation (default: a quarter of --n, at least 1)",
    )
    p.add_argument(
        "--ndim", type=int, choices=[2, 3], default=3, help="3: volumes; 2: coronal slices"
    )
    p.add_argument(
        "--shape",
        type=_int_at_least(16),
        nargs="+",
        metavar="N",
        help="image size, --ndim sizes (default: 64 per axis)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--motion",
        choices=["breathing", "tissue"],
        default="breathing",
        help="breathing: smooth over the body (default); tissue: rigid rib cage and spine, "
        "soft lungs sliding along the chest wall",
    )
    p.set_defaults(func=_cmd_phantom)

    p = sub.add_parser("register", help="register one pair with a trained model")
    p.add_argument("--model", required=True, help="checkpoint (runs/.../checkpoints/last.ckpt)")
    p.add_argument("--fixed", required=True, help="fixed image (NIfTI)")
    p.add_argument("--moving", required=True, help="moving image (NIfTI, same grid)")
    p.add_argument(
        "--resample",
        action="store_true",
        help="resample the moving image (and --moving-seg) onto the fixed grid when the grids "
        "differ (default: refuse)",
    )
    _add_plugin_argument(p, TRUST_PLUGIN)
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
    _add_max_folding_argument(p)
    _add_refine_argument(p, "refine the network's field for N iterations under its objective")
    _add_refine_options(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--figure",
        action="store_true",
        help="also write figure.png: these parameters next to the defaults",
    )
    p.set_defaults(func=_cmd_register)

    p = sub.add_parser(
        "evaluate", help="Dice, TRE, SDlogJ, folding of a model or of displacement files"
    )
    p.add_argument("--data", required=True, help="Learn2Reg-layout dataset folder")
    p.add_argument("--split", default="val", choices=["train", "val", "test"])
    p.add_argument("--model", help="checkpoint to evaluate")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--disp-dir", help="folder of disp_FFFF_MMMM.nii.gz from any tool")
    _add_plugin_argument(p, TRUST_PLUGIN)
    _add_refine_argument(p, "refine each of the model's fields for N iterations")
    _add_refine_options(p)
    p.add_argument("--out", required=True, help="JSON report (a CSV is written beside it)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("sweep", help="evaluate a grid of parameters; heat maps and best values")
    p.add_argument("--model", required=True)
    _add_plugin_argument(p, TRUST_PLUGIN)
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
        "--batch-size", type=_int_at_least(1), default=8, help="settings per forward pass"
    )
    p.add_argument(
        "--optimize",
        action="store_true",
        help="also refine the parameters per pair by gradient descent",
    )
    p.add_argument("--optimize-steps", type=_int_at_least(1), default=30)
    _add_refine_argument(
        p, "refine the best setting on every pair; report identity / network / refined"
    )
    p.add_argument(
        "--criterion",
        metavar="NAME",
        help="choose by this label-free criterion instead of a metric: invertible_fit, "
        "discrepancy, lcurve, inverse_consistency or a plugin's (docs/choosing.md)",
    )
    _add_max_folding_argument(p)
    p.add_argument(
        "--refine-grid",
        action="store_true",
        help="refine every grid setting before scoring it (an exact sweep, --refine N "
        "iterations each): rank settings by what refinement reaches, not by the network",
    )
    _add_refine_options(p)
    p.add_argument(
        "--figure",
        action="store_true",
        help="overlay figure of the first pair at the best and worst settings",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_cmd_sweep)

    from regzoo.explore.command import add_arguments as add_explore_arguments

    p = sub.add_parser(
        "explore", help="browser page: slide the parameters, watch the registration change"
    )
    add_explore_arguments(p)
    _add_refine_options(p)
    p.set_defaults(func=_cmd_explore)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (errors print one line, exit code 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except RegzooError as exc:  # user errors; anything else is a bug and keeps its traceback
        print(f"regzoo {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
