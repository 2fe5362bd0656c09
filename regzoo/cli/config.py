"""``regzoo config check|show``: check a config before a run, or print it resolved.

``check`` loads and validates the file with its ``--set`` overrides, resolves the objective
(the similarity and every regularizer term, plugins included), asks Lightning whether this
machine can run the ``trainer`` section ([`check_trainer`][regzoo.trainer_check.check_trainer])
and checks that the data folder exists or a phantom is configured to build it. It prints
``ok`` and a short summary, or one line and exit code 2; it writes nothing. ``show`` prints
the resolved config as YAML (every default filled in), as ``regzoo train`` records it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from regzoo._errors import InputError
from regzoo.cli.arguments import add_config_arguments


def add_parser(sub: Any) -> None:
    """Add the ``config`` command (``check`` and ``show``) to the subparsers ``sub``."""
    p = sub.add_parser("config", help="check a config before a run, or show it resolved")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = actions.add_parser(
        "check",
        help="validate a config, its objective, trainer and data without running (writes nothing)",
    )
    add_config_arguments(check)
    check.set_defaults(func=run_check)
    show = actions.add_parser("show", help="print the resolved config (defaults filled in)")
    add_config_arguments(show)
    show.set_defaults(func=run_show)


def summary(config: Any, objective: Any) -> list[str]:
    """The lines ``config check`` prints after ``ok``."""
    terms = ", ".join(term.name for term in config.regularizers)
    trainer = config.trainer
    free = ", ".join(objective.space.names) or "none"
    data = Path(config.data.root)
    source = "found" if data.exists() else "built from the configured phantom at first use"
    return [
        f"similarity: {config.similarity.name}",
        f"regularizers: {terms}",
        f"free parameters: {free}",
        f"trainer: accelerator {trainer.accelerator}, precision {trainer.precision}, "
        f"max_steps {trainer.max_steps}, max_epochs {trainer.max_epochs}",
        f"data: {data} ({source})",
        f"run_dir: {config.run_dir}",
    ]


def run_check(args: argparse.Namespace) -> int:
    """Run ``regzoo config check``; returns the exit code."""
    from regzoo.config import load_config
    from regzoo.resolve import build_objective
    from regzoo.trainer_check import check_trainer

    config = load_config(args.config, list(args.set))
    objective = build_objective(config)  # unknown names, plugins, options: one line each
    check_trainer(config.trainer)
    root = Path(config.data.root)
    if not root.exists() and config.data.phantom is None:
        raise InputError(
            f"data.root {root} does not exist and no phantom is configured to build it "
            "(data.phantom: null)"
        )
    print("ok")
    for line in summary(config, objective):
        print(f"  {line}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    """Run ``regzoo config show``; returns the exit code."""
    import yaml

    from regzoo.config import load_config

    config = load_config(args.config, list(args.set))
    print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), end="")
    return 0
