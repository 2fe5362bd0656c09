"""The ``regzoo`` command line: ``regzoo COMMAND --help`` for each command.

One module per command (`regzoo.cli.train`, ``config``, ``register``, ``evaluate``, ``sweep``,
``explore``, ``phantom``, ``regularizers``), each with ``add_parser`` and ``run``; the options
they share are in `regzoo.cli.arguments`, and the ``--refine-...`` flags are translated in
one place, `regzoo.cli.refine_flags`. A command imports what it runs only when it runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from regzoo._errors import RegzooError
from regzoo.params import parse_params

__all__ = ["build_parser", "main", "parse_params"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``regzoo`` command (used by the CLI reference docs)."""
    parser = argparse.ArgumentParser(
        prog="regzoo",
        description="Physics-inspired regularization for learning-based image registration.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from regzoo.cli import (
        config,
        evaluate,
        explore,
        phantom,
        register,
        regularizers,
        sweep,
        train,
    )

    for command in (regularizers, config, train, phantom, register, evaluate, sweep, explore):
        command.add_parser(sub)
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
