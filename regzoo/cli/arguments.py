"""Argument types and options that several ``regzoo`` commands share."""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = [
    "TRUST_PLUGIN",
    "add_config_arguments",
    "add_max_folding_argument",
    "add_model_argument",
    "add_native_grid_argument",
    "add_plugin_argument",
    "add_refine_argument",
    "fraction",
    "int_at_least",
]


def int_at_least(minimum: int) -> Callable[[str], int]:
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


def fraction(text: str) -> float:
    """argparse type: a number in ``[0, 1]`` (``nan`` is refused, not ignored)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # also false for nan
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1], got {text!r}")
    return value


def add_refine_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument(
        "--refine", type=int_at_least(0), default=0, metavar="N", help=f"{help_text} (0: off)"
    )


def add_max_folding_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-folding",
        type=fraction,
        default=0.0,
        metavar="FRACTION",
        help="only settings whose mean folded-voxel fraction is at most this may be chosen "
        "(default 0: invertible results only; 1: no limit)",
    )


def add_native_grid_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--native-grid",
        action="store_true",
        help="run the network on each image's own grid instead of resampling the images to "
        "the spacing the model was trained at (the field is carried back in mm either way)",
    )


def add_plugin_argument(p: argparse.ArgumentParser, text: str) -> None:
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE_OR_FILE", help=text)


TRUST_PLUGIN = (
    "import this plugin module or .py file (repeatable): a plugin named in a checkpoint is "
    "never imported unless you name it here"
)


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """The experiment YAML and its ``--set KEY=VALUE`` overrides (``train``, ``config``)."""
    p.add_argument("config", help="experiment YAML (e.g. configs/quickstart.yaml)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set trainer.max_steps=100 (repeatable)",
    )


def add_model_argument(p: argparse.ArgumentParser) -> None:
    """``--model``: a checkpoint file or the name of a model shipped with regzoo."""
    from regzoo.pretrained_models import available_pretrained

    names = ", ".join(available_pretrained())
    p.add_argument(
        "--model",
        required=True,
        help=f"checkpoint (runs/.../checkpoints/last.ckpt) or a pretrained model's name ({names})",
    )
