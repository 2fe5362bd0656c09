"""The one translation between the ``--refine-...`` flags and refinement's settings: the
flags a command reads (`add_refine_options`, `options_from_args`), the settings they
spell (`refine_options_from_flags`) and the flags that repeat given settings
(`refine_flags`, e.g. in the explorer's and the sweep report's commands)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from regzoo._errors import InputError
from regzoo.refinement import RefineOptions
from regzoo.similarity import MSE, parse_similarity

__all__ = ["add_refine_options", "options_from_args", "refine_flags", "refine_options_from_flags"]


def add_refine_options(parser: argparse.ArgumentParser) -> None:
    """How --refine optimises: its similarity and when it stops (register, evaluate)."""
    parser.add_argument(
        "--refine-similarity",
        metavar="SPEC",
        help="refine under this similarity instead of the training one: a registered name "
        "(mind_ssc, ngf, mi...), weighted terms joined by '+' ('10*mind_ssc', "
        "'model + 0.75*ngf'; 'model' is the training similarity) and options after ':' "
        "('ngf:eta=0.05'); the regularizer terms stay the model's",
    )
    parser.add_argument(
        "--refine-split",
        metavar="A:B:C",
        help="share of the iterations per pyramid level, coarsest first (default: equal; "
        "1:1:2 spends half on the full resolution)",
    )
    parser.add_argument(
        "--refine-tol",
        type=float,
        default=0.0,
        metavar="TOL",
        help="stop a pyramid level once the objective's relative change per iteration is "
        "below TOL (0: off); the report says how many iterations ran",
    )


def options_from_args(args: argparse.Namespace) -> dict[str, object]:
    """The keyword arguments of [`refine`][regzoo.refinement.refine] that
    `add_refine_options` collects."""
    return refine_options_from_flags(args.refine_similarity, args.refine_split, args.refine_tol)


def refine_options_from_flags(
    similarity: str | None = None, split: str | None = None, tol: float = 0.0
) -> dict[str, Any]:
    """The keyword arguments of [`refine`][regzoo.refinement.refine] that ``--refine-similarity
    SPEC``, ``--refine-split A:B:C`` and ``--refine-tol TOL`` spell (the inverse of
    `refine_flags`), checked now so that a typo fails before any work.

    Raises:
        InputError: a malformed similarity text, split or tolerance.
        UnknownNameError: an unregistered similarity name.
    """
    options: dict[str, Any] = {}
    if similarity:
        # names, weights and options checked (MSE stands in for the model's own similarity)
        parse_similarity(similarity, trained=MSE())
        options["similarity"] = similarity
    if split:
        try:
            shares = [float(share) for share in split.split(":")]
        except ValueError:
            shares = []
        RefineOptions(split=tuple(shares))  # one message for bad shares (3 levels, as refine's)
        options["split"] = shares
    if tol != 0.0:  # NaN included: refused, never dropped
        if not 0 <= tol < float("inf"):
            raise InputError(f"--refine-tol: tol must be >= 0 and finite, got {tol}")
        options["tol"] = tol
    return options


def refine_flags(options: Mapping[str, Any]) -> list[str]:
    """The ``--refine-...`` flags of ``regzoo register`` / ``explore`` that repeat the keyword
    arguments ``options`` of [`refine`][regzoo.refinement.refine] (``similarity``, ``split``,
    ``tol``)."""
    flags = []
    if "similarity" in options:  # a text; a Similarity instance has none to repeat
        similarity = options["similarity"]
        flags += ["--refine-similarity", similarity if isinstance(similarity, str) else "..."]
    if "split" in options:
        flags += ["--refine-split", ":".join(f"{float(share):g}" for share in options["split"])]
    if options.get("tol"):
        flags += ["--refine-tol", f"{float(options['tol']):g}"]
    return flags
