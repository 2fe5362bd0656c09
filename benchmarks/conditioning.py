"""Conditioning strength and amortisation gap of a trained hyper model.

For settings spread over the model's trained range (by default the diagonal of every free
parameter, ``--points`` values from its low to its high end on its own scale), this prints, on
the validation pairs:

- conditioning strength: mean SDlogJ, regularizer energy and mean |u| of the network's field at
  each setting, and the ratios between the softest and the stiffest setting (a model that
  ignores its input has ratios near 1);
- amortisation gap: the network's field next to the field that instance optimisation
  (``regzoo.refine``, warm-started from the network) reaches at the same setting: TRE, Dice,
  SDlogJ, folding of both, and seconds per pair.

Every setting is one JSON line; a markdown table follows. Run with the project's environment::

    .venv/bin/python benchmarks/conditioning.py --model runs/quickstart/checkpoints/last.ckpt \\
        --data data/phantom --refine 30
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch

from regzoo.checkpoint import load_model
from regzoo.data.learn2reg import Learn2RegDataset
from regzoo.evaluation import score_pair, summarize
from regzoo.lightning_module import HyperRegistration
from regzoo.refinement import refine
from regzoo.spatial import warp


def diagonal_settings(model: HyperRegistration, points: int) -> list[dict[str, float]]:
    """``points`` settings from every free parameter's low end to its high end together."""
    axes = {spec.name: spec.spaced(spec.low, spec.high, points) for spec in model.space}
    return [{name: values[i] for name, values in axes.items()} for i in range(points)]


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
                model, fixed, moving, values, steps=steps, init=network, spacing=item["spacing"]
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


def main() -> None:
    """Parse arguments, evaluate every setting, print JSON lines and the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--points", type=int, default=5, help="settings along the diagonal")
    parser.add_argument("--refine", type=int, default=30, help="refinement iterations")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model(args.model)
    window = tuple(model.config.data.intensity_window)
    dataset = Learn2RegDataset(args.data, args.split, intensity_window=window, annotations=True)
    results = []
    for params in diagonal_settings(model, args.points):
        scores = evaluate_setting(model, dataset, params, args.refine)
        results.append((params, scores))
        print(json.dumps({"params": params, **scores}))

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


if __name__ == "__main__":
    main()
