"""``regzoo regularizers``: list the installed regularizers and their parameters."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Any

from regzoo.cli.arguments import (
    add_plugin_argument,
)


def add_parser(sub: Any) -> None:
    """Add the ``regularizers`` command to the subparsers ``sub``."""
    p = sub.add_parser("regularizers", help="list installed regularizers and their parameters")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    add_plugin_argument(p, "also import this plugin module or .py file (repeatable)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``regzoo regularizers``; returns the exit code."""
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
