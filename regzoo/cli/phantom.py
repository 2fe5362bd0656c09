"""``regzoo phantom``: write the synthetic thoracic CT set (Learn2Reg layout)."""

from __future__ import annotations

import argparse
from typing import Any

from regzoo._errors import InputError
from regzoo.cli.arguments import (
    int_at_least,
)


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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``regzoo phantom``; returns the exit code."""
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
