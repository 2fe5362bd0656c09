"""``regzoo train``: train an experiment config (new runs and resumed ones)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from regzoo._errors import InputError
from regzoo.cli.arguments import add_config_arguments


def add_parser(sub: Any) -> None:
    """Add the ``train`` command to the subparsers ``sub``."""
    p = sub.add_parser("train", help="train an experiment config")
    add_config_arguments(p)
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its last checkpoint (same step count, optimizer "
        "and sampler state, TensorBoard log)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace a previous run in the config's run_dir"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``regzoo train``; returns the exit code."""
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
