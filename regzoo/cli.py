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


def _cmd_train(args: argparse.Namespace) -> int:
    from regzoo.config import load_config
    from regzoo.train import train

    config = load_config(args.config, args.set)
    checkpoint = train(config)
    print(f"checkpoint: {checkpoint}")
    return 0


def _cmd_phantom(args: argparse.Namespace) -> int:
    from regzoo.data.phantom import write_phantom_dataset

    root = write_phantom_dataset(args.out, n=args.n, val=args.val, shape=args.shape, seed=args.seed)
    print(f"phantom dataset: {root}")
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

    p = sub.add_parser("train", help="train an experiment config")
    p.add_argument("config", help="experiment YAML (e.g. configs/quickstart.yaml)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set trainer.max_steps=100 (repeatable)",
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("phantom", help="write the synthetic thoracic CT set (Learn2Reg layout)")
    p.add_argument("out", help="output folder (must not exist)")
    p.add_argument("--n", type=int, default=16, help="number of cases (pairs)")
    p.add_argument("--val", type=int, default=4, help="cases held out for validation")
    p.add_argument("--shape", type=int, nargs=3, default=[64, 64, 64], metavar=("X", "Y", "Z"))
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_phantom)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (errors print one line, exit code 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (RegzooError, KeyError, ValueError, FileNotFoundError, FileExistsError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"regzoo {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
