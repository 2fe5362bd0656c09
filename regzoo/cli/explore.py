"""``regzoo explore``: the browser page that re-registers as the parameters slide."""

from __future__ import annotations

import argparse
from typing import Any

from regzoo.cli.refine_flags import add_refine_options, from_flags


def add_parser(sub: Any) -> None:
    """Add the ``explore`` command to the subparsers ``sub``."""
    p = sub.add_parser(
        "explore", help="browser page: slide the parameters, watch the registration change"
    )
    from regzoo.explore.command import add_arguments

    add_arguments(p)
    add_refine_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``regzoo explore``; returns the exit code."""
    from regzoo.explore.command import run as run_explorer

    # the button sets the steps (checked by the command as --refine-steps)
    return run_explorer(args, refine=from_flags(args, steps=max(args.refine_steps, 0)))
