"""Conditioning strength and amortisation gap of a trained hyper model.

For settings spread over the model's trained range (by default the diagonal of every free
parameter, ``--points`` values from its low to its high end on its own scale), this prints, on
the validation pairs:

- conditioning strength: mean SDlogJ, regularizer energy and mean |u| of the network's field at
  each setting, and the ratios between the softest and the stiffest setting (a model that
  ignores its input has ratios near 1);
- F -> F: every fixed image registered to itself at each setting of a grid over the trained
  range (``--self-grid`` values per parameter): the mean |u| of the network's field, which
  should be 0 (the objective's minimiser; a translation the network adds from the parameters
  shows here);
- amortisation gap: the network's field next to the field that instance optimisation
  (``regzoo.refine``, warm-started from the network) reaches at the same setting: TRE, Dice,
  SDlogJ, folding of both, and seconds per pair; the gap (network TRE / refined TRE) at the
  network's TRE-best setting of the diagonal, and the SDlogJ ratio soft / stiff of both fields;
- rank agreement (``--rank-grid N``): network and refined TRE at every setting of an N-per-axis
  grid and the Spearman rank correlation between them (does the network rank the settings as
  the objective's optimum does?).

Every setting is one JSON line; a markdown table follows. Run with the project's environment::

    .venv/bin/python benchmarks/conditioning.py --model runs/quickstart/checkpoints/last.ckpt \\
        --data data/phantom --refine 30
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from regzoo.checkpoint import load_model
from regzoo.data.learn2reg import Learn2RegDataset
from regzoo.evaluation import score_pair, summarize
from regzoo.lightning_module import HyperRegistration
from regzoo.refinement import RefineOptions, refine
from regzoo.spatial import warp


def diagonal_settings(model: HyperRegistration, points: int) -> list[dict[str, float]]:
    """``points`` settings from every free parameter's low end to its high end together."""
    axes = {spec.name: spec.spaced(spec.low, spec.high, points) for spec in model.space}
    return [{name: values[i] for name, values in axes.items()} for i in range(points)]


def grid_settings(model: HyperRegistration, points: int) -> list[dict[str, float]]:
    """Every combination of ``points`` values per free parameter, low to high on its scale."""
    axes = {spec.name: spec.spaced(spec.low, spec.high, points) for spec in model.space}
    return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]


def self_registration(
    model: HyperRegistration, dataset: Learn2RegDataset, params: dict[str, float]
) -> dict[str, float]:
    """Register every fixed image of ``dataset`` to itself (F -> F) at ``params``: the mean
    and the largest |u| (voxels) of the network's field, averaged over the images. The
    objective's minimiser is u = 0, so anything else is motion the network invents."""
    values = model.parameter_tensor(params, 1)
    means, peaks = [], []
    for item in dataset:
        fixed = item["fixed"][None]
        with torch.no_grad():
            field = model(fixed, fixed, values).displacement
        norm = field.norm(dim=1)
        means.append(float(norm.mean()))
        peaks.append(float(norm.max()))
    return {"mean_abs_u": float(np.mean(means)), "max_abs_u": float(np.mean(peaks))}


def print_self_registration(
    model: HyperRegistration, dataset: Learn2RegDataset, points: int
) -> list[dict[str, Any]]:
    """The F -> F mean |u| at every setting of the ``points``-per-axis grid, as JSON lines and
    a table (rows: the first free parameter, columns: the second)."""
    rows = []
    for params in grid_settings(model, points):
        row = {"params": params, **self_registration(model, dataset, params)}
        rows.append(row)
        print(json.dumps({"self_registration": row}))
    names = model.space.names
    worst = max(rows, key=lambda r: r["mean_abs_u"])
    print(f"\nF -> F: mean |u| (voxels) of the network's field, {len(dataset)} fixed images\n")
    if len(names) == 2:
        columns = sorted({r["params"][names[1]] for r in rows})
        short = [n.split(".")[-1] for n in names]
        print(f"| {short[0]} \\ {short[1]} | " + " | ".join(f"{c:.3g}" for c in columns) + " |")
        print("|---|" + "---:|" * len(columns))
        for first in sorted({r["params"][names[0]] for r in rows}):
            cells = {r["params"][names[1]]: r for r in rows if r["params"][names[0]] == first}
            print(
                f"| {first:.3g} | "
                + " | ".join(f"{cells[c]['mean_abs_u']:.3f}" for c in columns)
                + " |"
            )
    print(
        f"\nF -> F: largest mean |u| {worst['mean_abs_u']:.3f} voxels at "
        + ", ".join(f"{n}={worst['params'][n]:.3g}" for n in names)
        + f"; largest |u| anywhere (mean over images) {max(r['max_abs_u'] for r in rows):.3f}"
    )
    return rows


def field_statistics(
    model: HyperRegistration, item: dict[str, Any], field: torch.Tensor, values: torch.Tensor
) -> dict[str, float]:
    """Energy of every term and mean |u| of a displacement ``(1, D, *spatial)``."""
    fixed, moving = item["fixed"][None], item["moving"][None]
    with torch.no_grad():
        terms = model.objective(fixed, warp(moving, field), field, values)
    stats = {f"energy_{k}": float(v) for k, v in terms.energies.items()}
    stats["mean_abs_u"] = float(field.norm(dim=1).mean())
    return stats


def evaluate_setting(
    model: HyperRegistration, dataset: Learn2RegDataset, params: dict[str, float], steps: int
) -> dict[str, dict[str, float]]:
    """Mean metrics of the network and of the refined network at one setting."""
    values = model.parameter_tensor(params, 1)
    rows: dict[str, list[dict[str, float]]] = {"network": [], "refined": []}
    for item in dataset:
        fixed, moving = item["fixed"][None], item["moving"][None]
        start = time.perf_counter()
        with torch.no_grad():
            network = model(fixed, moving, values)
        seconds = time.perf_counter() - start
        rows["network"].append(
            {
                **score_pair(item, network.displacement[0]),
                **field_statistics(model, item, network.displacement, values),
                "seconds": seconds,
            }
        )
        if steps:
            start = time.perf_counter()
            refined = refine(
                model,
                fixed,
                moving,
                values,
                RefineOptions(steps=steps),
                init=network,
                spacing=item["spacing"],
            )
            seconds += time.perf_counter() - start
            rows["refined"].append(
                {
                    **score_pair(item, refined.displacement[0]),
                    **field_statistics(model, item, refined.displacement, values),
                    "seconds": seconds,
                }
            )
    return {method: _mean(method_rows) for method, method_rows in rows.items() if method_rows}


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    summary = summarize(rows)
    extra = {k for row in rows for k in row if k.startswith("energy_") or k == "mean_abs_u"}
    summary.update({k: float(np.mean([row[k] for row in rows])) for k in sorted(extra)})
    return summary


def setting_key(params: dict[str, float]) -> tuple[float, ...]:
    """A setting as a hashable key (its values in name order, rounded)."""
    return tuple(round(params[name], 9) for name in sorted(params))


def print_rank_agreement(
    results: list[tuple[dict[str, float], dict[str, dict[str, float]]]],
) -> float:
    """Spearman rank correlation between the network's and the refined TRE over ``results``
    (every setting of the grid), printed with both TRE per setting; returns it."""
    network = [scores["network"]["tre_mm"] for _, scores in results]
    refined = [scores["refined"]["tre_mm"] for _, scores in results]
    rho = float(spearmanr(network, refined).statistic)
    for params, scores in results:
        print(
            json.dumps(
                {
                    "rank_grid": params,
                    "network_tre_mm": scores["network"]["tre_mm"],
                    "refined_tre_mm": scores["refined"]["tre_mm"],
                }
            )
        )
    print(
        f"\nrank agreement over {len(results)} settings: "
        f"Spearman(network TRE, refined TRE) = {rho:.3f}"
    )
    return rho


def main() -> None:
    """Parse arguments, evaluate every setting, print JSON lines and the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--points", type=int, default=5, help="settings along the diagonal")
    parser.add_argument("--refine", type=int, default=30, help="refinement iterations")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--self-grid",
        type=int,
        default=5,
        help="F -> F table on this many values per parameter (0: skip)",
    )
    parser.add_argument(
        "--self-only", action="store_true", help="only the F -> F table (no diagonal, no refine)"
    )
    parser.add_argument(
        "--rank-grid",
        type=int,
        default=0,
        help="Spearman of network vs refined TRE over this many values per parameter (0: skip)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model(args.model)
    window = tuple(model.config.data.intensity_window)
    dataset = Learn2RegDataset(args.data, args.split, intensity_window=window, annotations=True)
    if args.self_grid:
        print_self_registration(model, dataset, args.self_grid)
    if args.self_only:
        return
    done: dict[tuple[float, ...], dict[str, dict[str, float]]] = {}

    def scores_at(params: dict[str, float]) -> dict[str, dict[str, float]]:
        key = setting_key(params)
        if key not in done:  # the diagonal and the rank grid share their settings
            done[key] = evaluate_setting(model, dataset, params, args.refine)
            print(json.dumps({"params": params, **done[key]}))
        return done[key]

    results = [(params, scores_at(params)) for params in diagonal_settings(model, args.points)]

    names = model.space.names
    print(f"\nmodel {args.model}, {len(dataset)} {args.split} pairs, refine {args.refine} steps\n")
    print(
        "| " + " | ".join(n.split(".")[-1] for n in names) + " | method | TRE mm | Dice "
        "| SDlogJ | folded | mean abs u | energy | s/pair |"
    )
    print("|" + "---|" * (len(names) + 8))
    for params, scores in results:
        for method, s in scores.items():
            energy = sum(v for k, v in s.items() if k.startswith("energy_"))
            print(
                "| "
                + " | ".join(f"{params[n]:.3g}" for n in names)
                + f" | {method} | {s.get('tre_mm', float('nan')):.2f} | "
                f"{s.get('dice', float('nan')):.4f} | {s['sdlogj']:.3f} | "
                f"{s['folding_fraction']:.2%} | {s['mean_abs_u']:.2f} | {energy:.4g} | "
                f"{s['seconds']:.2f} |"
            )
    soft, stiff = results[0][1]["network"], results[-1][1]["network"]
    best = min(results, key=lambda r: r[1]["network"].get("tre_mm", np.inf))
    print(
        f"\nconditioning strength (softest / stiffest setting, network): "
        f"SDlogJ x{soft['sdlogj'] / max(stiff['sdlogj'], 1e-12):.1f}, "
        f"mean |u| x{soft['mean_abs_u'] / max(stiff['mean_abs_u'], 1e-12):.2f}; "
        f"TRE-best setting: " + ", ".join(f"{n}={best[0][n]:.3g}" for n in names)
    )
    if args.refine:
        soft_r, stiff_r = results[0][1]["refined"], results[-1][1]["refined"]
        network_ratio = soft["sdlogj"] / max(stiff["sdlogj"], 1e-12)
        refined_ratio = soft_r["sdlogj"] / max(stiff_r["sdlogj"], 1e-12)
        chosen = best[1]
        print(
            f"SDlogJ ratio soft / stiff along the diagonal: network x{network_ratio:.2f}, "
            f"refined x{refined_ratio:.2f} (network / refined "
            f"{network_ratio / max(refined_ratio, 1e-12):.2f}); amortisation gap at the "
            f"TRE-best setting: {chosen['network']['tre_mm']:.2f} / "
            f"{chosen['refined']['tre_mm']:.2f} mm = "
            f"x{chosen['network']['tre_mm'] / max(chosen['refined']['tre_mm'], 1e-12):.2f}"
        )
    if args.rank_grid and args.refine:
        grid = grid_settings(model, args.rank_grid)
        print_rank_agreement([(params, scores_at(params)) for params in grid])


if __name__ == "__main__":
    main()
