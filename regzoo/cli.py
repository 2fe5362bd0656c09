"""The ``regzoo`` command line: ``regzoo COMMAND --help`` for each command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from regzoo._errors import RegzooError

__all__ = ["main"]


def _cmd_regularizers(args: argparse.Namespace) -> int:
    from regzoo import regularizers
    from regzoo.registry import load_plugins

    load_plugins(args.plugin)
    entries = []
    for name in regularizers.available():
        cls = regularizers.get(name)
        entries.append(
            {
                "name": name,
                "class": f"{cls.__module__}.{cls.__qualname__}",
                "summary": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "",
                "quadratic": cls.quadratic,
                "params": [
                    {k: spec[k] for k in ("name", "low", "high", "default", "scale", "description")}
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
                    f"  {p['scale']:<6}  {p['description']}"
                )
    for message in failed.values():
        print(f"warning: {message}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``regzoo`` command (used by the CLI reference docs)."""
    parser = argparse.ArgumentParser(
        prog="regzoo",
        description="Physics-inspired regularization for learning-based image registration.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("regularizers", help="list installed regularizers and their parameters")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE_OR_FILE",
        help="also import this plugin module or .py file (repeatable)",
    )
    p.set_defaults(func=_cmd_regularizers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (errors print one line, exit code 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (RegzooError, KeyError, ValueError, FileNotFoundError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"regzoo {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
