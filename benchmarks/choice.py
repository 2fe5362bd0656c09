"""Label-free parameter choice against the TRE oracle: regret per criterion, per data set and
per pair.

Each ``--case NAME=MODEL@DATA`` is swept over ``--grid`` on its validation pairs (with
``--refine N``: an exact sweep, every setting refined N iterations; pairs registered in both
directions for ``inverse_consistency``). For every registered criterion, and the label-based
``dice`` for reference (``dice_unlimited``: Dice with no folding limit, the old default), the
script reports the setting chosen for the data set with its TRE,
Dice and folding, and the regret against the TRE oracle (chosen TRE / best TRE on the same
grid); per pair, each criterion chooses from that pair's rows alone and the regret is averaged
over pairs. The oracle is the TRE-best setting over the whole grid, folding or not. Writes
``OUT/choice.md`` and ``OUT/choice.json``.

    nice -n 19 python benchmarks/choice.py --case phantom=runs/quickstart/checkpoints/last.ckpt@data/phantom \\
        --grid lam=0.1:10:3 --grid mu=0.1:10:3 --refine 20 --out runs/choice
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from regzoo import criteria
from regzoo.checkpoint import load_model
from regzoo.data.learn2reg import Intensity, Learn2RegDataset
from regzoo.refinement import RefineOptions
from regzoo.sweeping import SweepResult, parse_grid, sweep


def _params(entry: dict[str, Any], names: list[str]) -> str:
    text = ", ".join(f"{n.split('.')[-1]}={entry[n]:.3g}" for n in names)
    similarity = entry.get("refine_similarity")
    return text if similarity is None else f"{text}, `{similarity}`"


def _pair_key(row: dict[str, Any]) -> tuple[str, str]:
    return row["fixed_id"], row["moving_id"]


def evaluate_criteria(result: SweepResult) -> list[dict[str, Any]]:
    """For ``dice`` (when measured) and every registered criterion: the data-set choice with
    its TRE, Dice, folding and regret, and the mean per-pair regret."""
    oracle = min(s["tre_mm"] for s in result.settings)
    pair_oracle: dict[tuple[str, str], float] = {}
    for row in result.rows:
        key = _pair_key(row)
        pair_oracle[key] = min(pair_oracle.get(key, np.inf), row["tre_mm"])
    judges: list[str] = ["dice", "dice_unlimited"] if "dice" in result.settings[0] else []
    judges += criteria.available()
    free = dataclasses.replace(result, max_folding=None)
    out: list[dict[str, Any]] = []
    for name in judges:
        try:
            if name == "dice_unlimited":  # the old default: Dice with no folding limit
                chosen, per_pair = free.best("dice"), free.best_per_pair("dice")
            elif name == "dice":
                chosen, per_pair = result.best(name), result.best_per_pair(name)
            else:
                chosen, per_pair = result.choose(name), result.choose_per_pair(name)
        except ValueError as exc:  # no eligible setting, or a measure not taken
            out.append({"criterion": name, "error": str(exc)})
            continue
        regrets = [row["tre_mm"] / pair_oracle[_pair_key(row)] for row in per_pair]
        out.append(
            {
                "criterion": name,
                "setting": {n: chosen[n] for n in result.keys},
                "tre_mm": chosen["tre_mm"],
                "dice": chosen.get("dice"),
                "folding_fraction": chosen.get("folding_fraction"),
                "regret": chosen["tre_mm"] / oracle,
                "per_pair_regret": float(np.mean(regrets)),
                "per_pair_regret_max": float(np.max(regrets)),
                "per_pair_settings": [{n: r[n] for n in result.keys} for r in per_pair],
            }
        )
    return out


def _run(
    model_path: str, data: str, grid: dict[str, Any], args: argparse.Namespace
) -> tuple[SweepResult, float]:
    """Sweep the case's validation pairs in both directions; the result and its seconds."""
    model = load_model(model_path).eval()
    intensity = Intensity.from_config(model.config.data)
    dataset = Learn2RegDataset(data, args.split, intensity=intensity, annotations=True)
    items = [dataset[i] for i in range(len(dataset))]
    if args.pairs:
        items = items[: args.pairs]
    start = time.perf_counter()
    similarities = args.refine_similarity or []
    single = similarities[0] if len(similarities) == 1 else None
    if single is not None:
        similarities = []
    refine = (
        RefineOptions(steps=args.refine, similarity=single, split=args.refine_split or None)
        if args.refine
        else None
    )
    result = sweep(
        model,
        items,  # type: ignore[arg-type]
        grid,
        batch_size=args.batch_size,
        refine=refine,
        max_folding=0.0,
        backward=not args.forward_only,
        refine_similarities=similarities,
    )
    return result, time.perf_counter() - start


def _stored(case: dict[str, Any]) -> tuple[SweepResult, float]:
    """A stored case's sweep (names and axes read back from its settings if not stored)."""
    names = case.get("names") or [k for k in case["settings"][0] if "." in k]
    axes = case.get("axes") or [sorted({s[n] for s in case["settings"]}) for n in names]
    result = SweepResult(
        names,
        axes,
        case["rows"],
        case["settings"],
        max_folding=0.0,
        similarities=case.get("similarities", []),
    )
    return result, case["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", required=True, metavar="NAME=MODEL@DATA")
    parser.add_argument("--grid", action="append", required=True, metavar="NAME=START:STOP:N")
    parser.add_argument("--split", default="val")
    parser.add_argument("--refine", type=int, default=0, help="refine every setting N steps")
    parser.add_argument("--pairs", type=int, default=0, help="use the first N pairs (0: all)")
    parser.add_argument("--batch-size", type=int, default=9)
    parser.add_argument(
        "--refine-similarity",
        nargs="+",
        metavar="SPEC",
        help="refine under this similarity; two or more: a similarity axis (the criteria "
        "choose the similarity by the consensus of the axis, then the parameters)",
    )
    parser.add_argument(
        "--refine-split", type=lambda t: [float(v) for v in t.split(":")], metavar="A:B:C"
    )
    parser.add_argument(
        "--forward-only",
        action="store_true",
        help="register each pair one way only (half the cost; no inverse_consistency)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--reuse",
        metavar="JSON",
        help="judge the sweeps stored in a previous run's choice.json again (no registration)",
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    grid = parse_grid(args.grid)
    report: dict[str, Any] = {
        "grid": args.grid,
        "refine": args.refine,
        "refine_similarity": args.refine_similarity,
        "refine_split": args.refine_split,
        "cases": {},
    }
    lines = [
        "# Label-free parameter choice against the TRE oracle",
        "",
        f"Grid {' '.join(args.grid)}"
        + (f" x similarities {args.refine_similarity}" if args.refine_similarity else "")
        + (f", split {args.refine_split}" if args.refine_split else "")
        + "; "
        + (
            f"exact sweep (every setting refined {args.refine} iterations)"
            if args.refine
            else "network sweep"
        )
        + "; regret = chosen TRE / TRE-best setting on the grid.",
    ]
    for case in args.case:
        name, _, rest = case.partition("=")
        model_path, _, data = rest.partition("@")
        if args.reuse:
            result, seconds = _stored(json.loads(Path(args.reuse).read_text())["cases"][name])
        else:
            result, seconds = _run(model_path, data, grid, args)
        pairs = len({_pair_key(r) for r in result.rows})
        rows = evaluate_criteria(result)
        oracle = min(result.settings, key=lambda s: s["tre_mm"])
        report["cases"][name] = {
            "model": model_path,
            "data": data,
            "pairs": pairs,
            "names": result.names,
            "axes": result.axes,
            "similarities": result.similarities,
            "seconds": seconds,
            "oracle": oracle,
            "criteria": rows,
            "settings": result.settings,
            "rows": result.rows,
        }
        lines += [
            "",
            f"## {name} ({pairs} pairs, {len(result.settings)} settings, {seconds:.0f} s)",
            "",
            f"TRE oracle: {_params(oracle, result.names)}, TRE {oracle['tre_mm']:.2f} mm, "
            f"folded {oracle['folding_fraction']:.3%}",
            "",
            "| criterion | data-set choice | TRE (mm) | Dice | folded | regret | "
            "per-pair regret (mean / max) |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['criterion']} | {r['error']} | | | | | |")
                continue
            dice = "-" if r["dice"] is None else f"{r['dice']:.4f}"
            lines.append(
                f"| {r['criterion']} | {_params(r['setting'], result.names)} | "
                f"{r['tre_mm']:.2f} | {dice} | {r['folding_fraction']:.3%} | "
                f"{r['regret']:.3f} | {r['per_pair_regret']:.3f} / "
                f"{r['per_pair_regret_max']:.3f} |"
            )
        print("\n".join(lines[-len(rows) - 6 :]), flush=True)
    (out / "choice.json").write_text(json.dumps(report, indent=2))
    (out / "choice.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'choice.md'}")


if __name__ == "__main__":
    main()
