"""The one translation between the ``--refine-...`` flags and refinement's settings, a
[`RefineOptions`][regzoo.refinement.RefineOptions]: the flags a command reads (`add_refine_options`),
the options they spell (`from_flags`) and the flags that repeat given options
(`to_flags`, e.g. in the explorer's and the sweep report's commands)."""

from __future__ import annotations

import argparse
import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from regzoo._errors import InputError
from regzoo.refinement import RefineOptions

__all__ = [
    "add_refine_options",
    "from_flags",
    "options_from_args",
    "refine_flags",
    "refine_options_from_flags",
    "similarities_from_args",
    "to_flags",
]


def add_refine_options(
    parser: argparse.ArgumentParser, *, several_similarities: bool = False
) -> None:
    """How --refine optimises: its similarity and when it stops (register, evaluate).

    With ``several_similarities`` (``sweep``), ``--refine-similarity`` takes one or more
    texts: two or more are a similarity axis of the exact sweep
    (`similarities_from_args`)."""
    parser.add_argument(
        "--refine-similarity",
        metavar="SPEC",
        nargs="+" if several_similarities else None,
        help="refine under this similarity instead of the training one: a registered name "
        "(mind_ssc, ngf, mi...), weighted terms joined by '+' ('10*mind_ssc', "
        "'model + 0.75*ngf'; 'model' is the training similarity) and options after ':' "
        "('ngf:eta=0.05'); the regularizer terms stay the model's"
        + (
            "; several (with --refine-grid): every setting is refined under each; --metric "
            "ranks all together, --criterion takes the similarity that all of them agree "
            "matches best, then the parameters"
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


def from_flags(
    args: argparse.Namespace | None = None,
    *,
    steps: int = RefineOptions.steps,
    similarity: str | Sequence[str] | None = None,
    split: str | None = None,
    tol: float = 0.0,
) -> RefineOptions:
    """The [`RefineOptions`][regzoo.refinement.RefineOptions] that ``--refine-similarity SPEC``,
    ``--refine-split A:B:C`` and ``--refine-tol TOL`` spell (from ``args``, a command's parsed
    flags of `add_refine_options`, or the keywords), with ``steps`` iterations (the
    command's ``--refine N`` or ``--refine-steps N``): the inverse of `to_flags`, checked
    now so that a typo fails before any work.

    ``sweep`` reads ``--refine-similarity`` with ``nargs="+"``: a list of one text is that
    text; two or more are the sweep's similarity axis (`similarities_from_args`), each text
    checked here, and the options' ``similarity`` is then ``None`` (each point of the axis
    sets its own).

    Raises:
        InputError: a malformed similarity text, split or tolerance (naming the flag).
        UnknownNameError: an unregistered similarity name.
    """
    if args is not None:
        similarity, split, tol = args.refine_similarity, args.refine_split, args.refine_tol
    if similarity is not None and not isinstance(similarity, str):
        specs = list(similarity)
        if len(specs) > 1:
            for spec in specs:  # each text of the axis checked now
                from_flags(steps=steps, similarity=spec)
        similarity = specs[0] if len(specs) == 1 else None
    if not 0 <= tol < float("inf"):  # NaN included: refused, never dropped
        raise InputError(f"--refine-tol: tol must be >= 0 and finite, got {tol}")
    try:
        return RefineOptions(
            steps=steps, similarity=similarity or None, split=split or None, tol=tol
        )
    except InputError as error:
        if "refine: split" not in str(error):
            raise
        raise InputError(str(error).replace("refine: ", "--refine-split: ")) from None


def to_flags(options: RefineOptions | Mapping[str, Any]) -> list[str]:
    """The ``--refine-...`` flags of ``regzoo register`` / ``explore`` that repeat ``options``
    (the inverse of `from_flags`): its similarity, split and tolerance. The steps are
    the command's own flag (``--refine N``, ``--refine-steps N``); settings without a flag
    (``lr``, ``levels``, ``grid_downsize``, ``optimizer``, ``window``) are not repeated.
    A mapping (the keyword arguments passed around before 0.3) is read the same way."""
    record = dict(options) if isinstance(options, Mapping) else options.to_dict()
    flags = []
    similarity = record.get("similarity")
    if similarity is not None:  # a text; a Similarity instance has none to repeat
        flags += ["--refine-similarity", similarity if isinstance(similarity, str) else "..."]
    split = record.get("split")
    if split is not None:
        shares = split.split(":") if isinstance(split, str) else split
        flags += ["--refine-split", ":".join(f"{float(share):g}" for share in shares)]
    if record.get("tol"):
        flags += ["--refine-tol", f"{float(record['tol']):g}"]
    return flags


refine_flags = to_flags
"""The former name of `to_flags`."""


def options_from_args(args: argparse.Namespace, steps: int = RefineOptions.steps) -> RefineOptions:
    """The options `add_refine_options` collects: `from_flags` of ``args``."""
    return from_flags(args, steps=steps)


def similarities_from_args(args: argparse.Namespace) -> list[str]:
    """The similarity axis that two or more ``--refine-similarity`` texts spell (``sweep``);
    empty for none or one (one is an option of every refinement, `from_flags`).

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
    """Deprecated: the settings that the flags spell as a dict; use `from_flags`."""
    warnings.warn(
        "refine_options_from_flags() is deprecated; use regzoo.cli.refine_flags.from_flags()",
        DeprecationWarning,
        stacklevel=2,
    )
    options = from_flags(similarity=similarity, split=split, tol=tol)
    defaults = RefineOptions()
    return {
        f.name: value
        for f in dataclasses.fields(options)
        if f.name in ("similarity", "split", "tol")
        and (value := options.to_dict()[f.name]) != getattr(defaults, f.name)
    }
