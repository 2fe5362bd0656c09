"""The one translation between the ``--refine-...`` flags and refinement's settings: the
flags a command reads (:func:`add_refine_options`, :func:`options_from_args`), the settings they
spell (:func:`refine_options_from_flags`) and the flags that repeat given settings
(:func:`refine_flags`, e.g. in the explorer's and the sweep report's commands)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from regzoo._errors import InputError
from regzoo.refinement import RefineOptions
from regzoo.similarity import MSE, parse_similarity

__all__ = [
    "add_refine_options",
    "options_from_args",
    "refine_flags",
    "refine_options_from_flags",
    "similarities_from_args",
]


def add_refine_options(
    parser: argparse.ArgumentParser, *, several_similarities: bool = False
) -> None:
    """How --refine optimises: its similarity and when it stops (register, evaluate).

    With ``several_similarities`` (``sweep``), ``--refine-similarity`` takes one or more
    texts: two or more are a similarity axis of the exact sweep
    (:func:`similarities_from_args`)."""
    parser.add_argument(
        "--refine-similarity",
        metavar="SPEC",
        nargs="+" if several_similarities else None,
        help="refine under this similarity instead of the training one: a registered name "
        "(mind_ssc, ngf, mi...), weighted terms joined by '+' ('10*mind_ssc', "
        "'model + 0.75*ngf'; 'model' is the training similarity) and options after ':' "
        "('ngf:eta=0.05'); the regularizer terms stay the model's"
        + (
            "; several (with --refine-grid): every setting is refined under each, and the "
            "criterion chooses the similarity with the parameters"
            if several_similarities
            else ""
        ),
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
    """The keyword arguments of :func:`~regzoo.refinement.refine` that
    :func:`add_refine_options` collects (a similarity axis, two or more
    ``--refine-similarity`` texts, is left to :func:`similarities_from_args`)."""
    specs = args.refine_similarity
    if isinstance(specs, list):
        for spec in specs:  # each text checked now
            refine_options_from_flags(spec)
        specs = specs[0] if len(specs) == 1 else None
    return refine_options_from_flags(specs, args.refine_split, args.refine_tol)


def similarities_from_args(args: argparse.Namespace) -> list[str]:
    """The similarity axis that two or more ``--refine-similarity`` texts spell (``sweep``);
    empty for none or one (one is an option of every refinement, :func:`options_from_args`).

    Raises:
        InputError: a text given twice.
    """
    specs = args.refine_similarity
    if not isinstance(specs, list) or len(specs) < 2:
        return []
    if len(set(specs)) != len(specs):
        raise InputError(f"--refine-similarity: a similarity is given twice in {specs}")
    return list(specs)


def refine_options_from_flags(
    similarity: str | None = None, split: str | None = None, tol: float = 0.0
) -> dict[str, Any]:
    """The keyword arguments of :func:`~regzoo.refinement.refine` that ``--refine-similarity SPEC``,
    ``--refine-split A:B:C`` and ``--refine-tol TOL`` spell (the inverse of
    :func:`refine_flags`), checked now so that a typo fails before any work.

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
    arguments ``options`` of :func:`~regzoo.refinement.refine` (``similarity``, ``split``, ``tol``)."""
    flags = []
    if "similarity" in options:  # a text; a Similarity instance has none to repeat
        similarity = options["similarity"]
        flags += ["--refine-similarity", similarity if isinstance(similarity, str) else "..."]
    if "split" in options:
        flags += ["--refine-split", ":".join(f"{float(share):g}" for share in options["split"])]
    if options.get("tol"):
        flags += ["--refine-tol", f"{float(options['tol']):g}"]
    return flags
