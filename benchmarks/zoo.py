"""The zoo beyond linear elasticity, each regularizer at its best exact-sweep setting.

For every regularizer (linear elasticity as the reference; hyperelastic, St Venant-Kirchhoff,
Neo-Hookean, rigidity of the bones next to linear elasticity, sliding at the lung boundary,
and plain diffusion for the sliding one to beat), on the validation pairs of a phantom:

1. an **exact sweep**: the field is optimised from zero at each grid setting (the objective's
   similarity, LNCC 9^3, plus the term, `regzoo.refinement.refine_field`: three-level pyramid,
   a ``--grid-downsize`` times coarser grid, all settings in one batch), so no network's
   amortisation gap enters;
2. the best setting by mean TRE; at it: TRE over all keypoints and over those within ``--wall``
   voxels of the lung boundary (the chest wall, where the lungs slide), SDlogJ, folded voxels
   and the minimum Jacobian determinant; and, over every setting of the grid, the largest
   folded fraction (does the physics keep the map invertible across its whole range?).

Both the tissue-motion phantom (rigid rib cage, lungs sliding along the chest wall) and the
default (smooth breathing) phantom are built at ``--shape`` (small, for a CPU); ``--data
NAME=FOLDER`` (repeatable) runs on Learn2Reg folders instead, e.g. the real-anatomy chest CT
sets of two seeds (their intensities mapped by ``--window``, the quickstart's CT window).
Every table also gives the best TRE near the wall over the grid (the setting chosen for the
wall itself), so a regularizer is compared with the best global setting at the pleura. Writes
``OUT/zoo.json`` and prints a markdown table.

    nice -n 19 python -u benchmarks/zoo.py --out runs/zoo [--shape 32] [--steps 60]
    python -u benchmarks/zoo.py --out runs/zoo_ct --data seed0=data/chest_ct64_val4 \
        --data seed1=data/chest_ct64_s1 --grid-downsize 1 \
        --only linear_elastic diffusion sliding
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from regzoo.config import load_config
from regzoo.data.learn2reg import Learn2RegDataset
from regzoo.data.phantom import write_phantom_dataset
from regzoo.evaluation import item_labels, score_pair
from regzoo.metrics import target_registration_error
from regzoo.refinement import RefineOptions, refine_field
from regzoo.resolve import build_objective
from regzoo.spatial import jacobian_determinant

DECADES = [0.01, 0.1, 1.0, 10.0, 100.0]
LABELS = {"lung": 1, "soft_tissue": 2, "bone": 3, "heart": 4}


def free(low: float = 1e-2, high: float = 1e2) -> dict[str, Any]:
    return {"low": low, "high": high, "scale": "log"}


# name -> (regularizer terms with every swept parameter free, grid: full name -> values)
ZOO: dict[str, tuple[list[dict[str, Any]], dict[str, list[float]]]] = {
    "linear_elastic": (
        [{"name": "linear_elastic", "params": {"lam": free(), "mu": free()}}],
        {"linear_elastic.mu": DECADES, "linear_elastic.lam": [0.01, 1.0, 100.0]},
    ),
    "hyperelastic": (
        [
            {
                "name": "hyperelastic",
                "params": {"length": free(), "area": free(), "volume": free()},
            }
        ],
        {
            "hyperelastic.length": DECADES,
            "hyperelastic.volume": [0.01, 1.0, 100.0],
            "hyperelastic.area": [0.01, 1.0],
        },
    ),
    "st_venant_kirchhoff": (
        [{"name": "st_venant_kirchhoff", "params": {"lam": free(), "mu": free()}}],
        {"st_venant_kirchhoff.mu": DECADES, "st_venant_kirchhoff.lam": [0.01, 1.0, 100.0]},
    ),
    "neo_hookean": (
        [{"name": "neo_hookean", "params": {"lam": free(), "mu": free()}}],
        {"neo_hookean.mu": DECADES, "neo_hookean.lam": [0.01, 1.0, 100.0]},
    ),
    "rigidity + linear_elastic": (
        [
            {"name": "linear_elastic", "params": {"lam": free(), "mu": free()}},
            {
                "name": "rigidity",
                "params": {
                    "rigidity": {"per_label": {"bone": free(1e-1, 1e3)}, "background": 0.0},
                    "linearity": 1.0,
                    "orthonormality": 1.0,
                    "properness": 1.0,
                },
            },
        ],
        {"linear_elastic.mu": DECADES, "rigidity.rigidity@bone": [0.1, 10.0, 1000.0]},
    ),
    "diffusion": (
        [{"name": "diffusion", "alpha": free(1e-3, 1e2)}],
        {"diffusion.alpha": [0.001, *DECADES]},
    ),
    "sliding": (
        [
            {
                "name": "sliding",
                "alpha": free(1e-3, 1e2),
                "params": {"region": {"per_label": {"lung": 1.0}, "background": 0.0}, "slip": 1.0},
            }
        ],
        {"sliding.alpha": [0.001, *DECADES]},
    ),
}


def objective_for(terms: list[dict[str, Any]]):
    config = load_config(
        {
            "regularizers": terms,
            "data": {"labels": LABELS, "phantom": None},
            "trainer": {"max_steps": 1},
        }
    )
    return build_objective(config)


def wall_distance(item: dict[str, Any]) -> np.ndarray:
    """Distance (voxels) of each fixed keypoint to the lung boundary."""
    inside = item["fixed_mask"][0].numpy() > 0
    depth = np.maximum(
        ndimage.distance_transform_edt(inside), ndimage.distance_transform_edt(~inside)
    )
    points = np.rint(item["fixed_keypoints"].numpy()).astype(int)
    return depth[tuple(points.T)]


def exact_sweep(name: str, dataset: Learn2RegDataset, args: argparse.Namespace) -> dict[str, Any]:
    terms, grid = ZOO[name]
    objective = objective_for(terms)
    names = list(grid)
    combos = list(itertools.product(*grid.values()))  # the settings, in the grid's order
    values = objective.space.grid(grid)
    options = RefineOptions(
        steps=args.steps, lr=args.lr, grid_downsize=args.grid_downsize, levels=3
    )
    rows: list[list[dict[str, float]]] = [[] for _ in combos]
    start = time.perf_counter()
    for item in dataset:
        n = len(combos)
        fixed = item["fixed"][None].expand(n, -1, *item["fixed"].shape[1:])
        moving = item["moving"][None].expand(n, -1, *item["moving"].shape[1:])
        init = torch.zeros(n, fixed.ndim - 2, *fixed.shape[2:])
        spacing = [float(s) for s in item["spacing"]]
        output = refine_field(
            objective,
            fixed,
            moving,
            init,
            values,
            options,
            spacing=spacing,
            labels=item_labels(item),
        )
        near = wall_distance(item) <= args.wall
        for index in range(n):
            field = output.displacement[index]
            row = score_pair(item, field)
            errors = target_registration_error(
                item["fixed_keypoints"], item["moving_keypoints"], field, item["spacing"]
            ).numpy()
            row["tre_wall_mm"] = float(errors[near].mean())
            row["min_det"] = float(jacobian_determinant(field[None]).min())
            rows[index].append(row)
    settings = []
    for combo, per_pair in zip(combos, rows, strict=True):
        summary = {
            k: float(np.mean([r[k] for r in per_pair]))
            for k in ("tre_mm", "tre_wall_mm", "sdlogj", "folding_fraction")
        }
        summary["min_det"] = min(r["min_det"] for r in per_pair)
        settings.append({**dict(zip(names, combo, strict=True)), **summary})
    best = min(settings, key=lambda s: s["tre_mm"])
    return {
        "best": best,
        "best_wall": min(settings, key=lambda s: s["tre_wall_mm"]),
        "max_folding_over_grid": max(s["folding_fraction"] for s in settings),
        "folding_settings": sum(s["folding_fraction"] > 0 for s in settings),
        "settings": settings,
        "seconds": time.perf_counter() - start,
    }


def identity(dataset: Learn2RegDataset, args: argparse.Namespace) -> dict[str, float]:
    every, near = [], []
    for item in dataset:
        zero = torch.zeros(3, *item["fixed"].shape[1:])
        errors = target_registration_error(
            item["fixed_keypoints"], item["moving_keypoints"], zero, item["spacing"]
        ).numpy()
        every.append(errors)
        near.append(errors[wall_distance(item) <= args.wall])
    return {
        "tre_mm": float(np.concatenate(every).mean()),
        "tre_wall_mm": float(np.concatenate(near).mean()),
        "wall_keypoints": int(sum(map(len, near))),
        "keypoints": int(sum(map(len, every))),
    }


def describe(setting: dict[str, Any]) -> str:
    """``lam=1, mu=0.1``: a setting's parameter values by short name."""
    return ", ".join(f"{k.split('.', 1)[1]}={v:g}" for k, v in setting.items() if "." in k)


def table(results: dict[str, Any]) -> str:
    lines = [
        "| regularizer | best setting | TRE (mm) | TRE near wall (mm) | SDlogJ | folded at best | min det J | settings folding (max fraction) | best near wall over the grid (mm, setting) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ident = results["identity"]
    lines.append(
        f"| identity | – | {ident['tre_mm']:.2f} | {ident['tre_wall_mm']:.2f} | – | – | – | – | – |"
    )
    for name, result in results["zoo"].items():
        best = result["best"]
        setting = describe(best)
        count = len(result["settings"])
        lines.append(
            f"| {name} | {setting} | {best['tre_mm']:.2f} | {best['tre_wall_mm']:.2f} | "
            f"{best['sdlogj']:.3f} | {100 * best['folding_fraction']:.2f}% | {best['min_det']:.2f} | "
            f"{result['folding_settings']}/{count} ({100 * result['max_folding_over_grid']:.2f}%) | "
            f"{result['best_wall']['tre_wall_mm']:.2f} ({describe(result['best_wall'])}) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shape", type=int, default=32)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--val", type=int, default=4)
    parser.add_argument("--steps", type=int, default=60, help="refinement iterations per setting")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument(
        "--grid-downsize",
        type=int,
        default=2,
        help="the optimised field's grid is this many times coarser (1: it can jump between "
        "neighbouring voxels, which sliding needs)",
    )
    parser.add_argument("--wall", type=float, default=2.0, help="voxels from the lung boundary")
    parser.add_argument("--motions", nargs="+", default=["tissue", "breathing"])
    parser.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="NAME=FOLDER",
        help="a Learn2Reg folder to run on instead of the phantoms (repeatable)",
    )
    parser.add_argument(
        "--window", type=float, nargs=2, default=[-1000.0, 500.0], help="--data intensities"
    )
    parser.add_argument("--only", nargs="*", default=None, help="a subset of the zoo")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {"setup": {k: str(v) for k, v in vars(args).items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    sets = dict(spec.split("=", 1) for spec in args.data)
    for motion in sets or args.motions:
        if motion in sets:
            dataset = Learn2RegDataset(
                sets[motion], "val", intensity_window=tuple(args.window), annotations=True
            )
        else:
            data = args.out / f"data_{motion}_{args.shape}"
            if not data.exists():
                shape = [args.shape] * 3
                write_phantom_dataset(
                    data,
                    n=args.n,
                    val=args.val,
                    shape=shape,
                    seed=0,
                    motion=motion,
                    progress=False,
                )
            dataset = Learn2RegDataset(data, "val", annotations=True)
        results: dict[str, Any] = {"identity": identity(dataset, args), "zoo": {}}
        for name in args.only or ZOO:
            results["zoo"][name] = exact_sweep(name, dataset, args)
            best = results["zoo"][name]["best"]
            print(
                motion,
                name,
                json.dumps(best),
                f"{results['zoo'][name]['seconds']:.0f} s",
                flush=True,
            )
            report[motion] = results
            (args.out / "zoo.json").write_text(json.dumps(report, indent=2))
        print(f"\n### {motion}\n\n{table(results)}\n", flush=True)


if __name__ == "__main__":
    main()
