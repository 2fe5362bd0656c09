"""Accuracy figures on the phantom's validation pairs (docs/results.md).

1. Baselines scored with the same code as any tool's output (``evaluate_displacements``):
   identity, the mean training displacement, and the true displacement.
2. The hyper-elastic model at every point of a (lam, mu) grid, against both baselines.
3. The conditioning effect: the predicted field's elastic energy (reference lam = mu = 1)
   as mu grows, at fixed lam.
4. Optionally (``--diffusion CKPT``, repeatable): diffusion vs linear elastic at matched smoothness
   (the diffusion setting whose SDlogJ is closest to each elastic setting's).

    python benchmarks/phantom_results.py --model runs/quickstart/checkpoints/last.ckpt \
        --data data/phantom [--diffusion runs/phantom_diffusion/checkpoints/last.ckpt]
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from regzoo.checkpoint import load_model
from regzoo.data.learn2reg import Learn2RegDataset, case_id, read_manifest
from regzoo.evaluation import evaluate_displacements, summarize
from regzoo.io import write_nifti
from regzoo.regularizers.functional import linear_elastic_energy
from regzoo.sweeping import sweep
from regzoo.viz import plot_sweep


def baselines(root: Path) -> dict[str, dict[str, float]]:
    """Identity, mean training displacement and ground truth, scored as displacement files."""
    _, manifest = read_manifest(root)
    train_ids = [case_id(p["fixed"]) for p in manifest["training_paired_images"]]
    gt = {
        i: nib.load(root / "gtdispTr" / f"PhantomCT_{i}.nii.gz")
        for i in [
            case_id(p["fixed"])
            for p in manifest["training_paired_images"] + manifest["registration_val"]
        ]
    }
    mean = np.mean([gt[i].get_fdata() for i in train_ids], axis=0)
    dataset = Learn2RegDataset(root, "val", annotations=True)
    fields = {
        "identity": lambda i: np.zeros_like(mean),
        "mean training displacement": lambda i: mean,
        "true displacement": lambda i: gt[i].get_fdata(),
    }
    scores = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, field in fields.items():
            folder = Path(tmp) / name.replace(" ", "_")
            folder.mkdir()
            for item in dataset:
                fid = item["fixed_id"]
                write_nifti(
                    field(fid).astype(np.float32),
                    gt[fid].affine,
                    folder / f"disp_{fid}_{item['moving_id']}.nii.gz",
                )
            scores[name] = summarize(evaluate_displacements(dataset, folder, progress=False))
    return scores


def table(
    rows: dict[str, dict[str, float]], metrics=("dice", "tre_mm", "sdlogj", "folding_fraction")
) -> str:
    lines = ["| method | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for name, row in rows.items():
        lines.append(
            f"| {name} | " + " | ".join(f"{row.get(m, float('nan')):.4f}" for m in metrics) + " |"
        )
    return "\n".join(lines)


@torch.no_grad()
def energy_against_mu(model, dataset, mus, lam) -> list[float]:
    energies = []
    for mu in mus:
        values = []
        for item in dataset:
            field = model(
                item["fixed"][None], item["moving"][None], {"lam": lam, "mu": mu}
            ).displacement
            values.append(float(linear_elastic_energy(field, lam=1.0, mu=1.0)))
        energies.append(float(np.mean(values)))
    return energies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument(
        "--diffusion",
        action="append",
        default=[],
        help="checkpoint of a diffusion (alpha-free) model (repeatable)",
    )
    parser.add_argument("--steps", type=int, default=6, help="grid points per parameter")
    parser.add_argument("--figure", default="docs/img/quickstart_heatmap.png")
    args = parser.parse_args()
    root = Path(args.data)
    model = load_model(args.model)
    dataset = Learn2RegDataset(
        root, "val", annotations=True, intensity_window=tuple(model.config.data.intensity_window)
    )
    base = baselines(root)
    grid = {
        n: np.linspace(model.space[n].low, model.space[n].high, args.steps).tolist()
        for n in model.space.names
    }
    result = sweep(model, dataset, grid, progress=False)
    plot_sweep(result, args.figure)
    best = result.best("dice")
    worst_dice = min(s["dice"] for s in result.settings)
    worst_tre = max(s["tre_mm"] for s in result.settings)
    print("## Baselines and model (validation pairs, mean)\n")
    rows = dict(base)
    rows[
        "model, best grid point ("
        + ", ".join(f"{n.split('.')[1]}={best[n]:.2f}" for n in result.names)
        + ")"
    ] = best
    rows["model, worst grid point (Dice / TRE)"] = {"dice": worst_dice, "tre_mm": worst_tre}
    print(table(rows))
    beats = [
        s
        for s in result.settings
        if all(
            s["dice"] > base[b]["dice"] and s["tre_mm"] < base[b]["tre_mm"]
            for b in ("identity", "mean training displacement")
        )
    ]
    print(
        f"\ngrid points beating identity and mean displacement on Dice and TRE: "
        f"{len(beats)} / {len(result.settings)}"
    )
    lam = model.space["linear_elastic.lam"].default if "linear_elastic.lam" in model.space else None
    if lam is not None and "linear_elastic.mu" in model.space:
        mus = np.linspace(0.0, 1.0, 6).tolist()
        energies = energy_against_mu(model, dataset, mus, lam)
        print(
            f"\n## Elastic energy (reference lam = mu = 1) of the predicted field, lam = {lam:g}\n"
        )
        print("| mu | " + " | ".join(f"{m:.1f}" for m in mus) + " |")
        print("|---|" + "---|" * len(mus))
        print("| energy | " + " | ".join(f"{e:.5f}" for e in energies) + " |")
        print(f"\nmonotone decreasing: {all(a > b for a, b in itertools.pairwise(energies))}")
    for checkpoint in args.diffusion:
        diffusion = load_model(checkpoint)
        weighting = diffusion.config.weighting
        alphas = np.linspace(0.0, 1.0, 21).tolist()
        d_result = sweep(diffusion, dataset, {"alpha": alphas}, progress=False)
        print(f"\n## Diffusion model ({weighting} weighting, {checkpoint}) along alpha\n")
        print("| alpha | Dice | TRE | SDlogJ |\n|---|---|---|---|")
        for d in d_result.settings[::2]:
            print(
                f"| {d['diffusion.alpha']:.2f} | {d['dice']:.4f} | {d['tre_mm']:.2f} | {d['sdlogj']:.4f} |"
            )
        print(f"\n## Diffusion ({weighting}) vs linear elastic at matched smoothness (SDlogJ)\n")
        print("| elastic (lam, mu) | SDlogJ | Dice | TRE | diffusion alpha | SDlogJ | Dice | TRE |")
        print("|---|---|---|---|---|---|---|---|")
        picks = sorted(result.settings, key=lambda s: s["sdlogj"])
        for s in picks[:: max(1, len(picks) // 6)]:
            match = min(d_result.settings, key=lambda d: abs(d["sdlogj"] - s["sdlogj"]))
            print(
                f"| {s['linear_elastic.lam']:.2f}, {s['linear_elastic.mu']:.2f} | {s['sdlogj']:.4f} | "
                f"{s['dice']:.4f} | {s['tre_mm']:.2f} | {match['diffusion.alpha']:.2f} | "
                f"{match['sdlogj']:.4f} | {match['dice']:.4f} | {match['tre_mm']:.2f} |"
            )


if __name__ == "__main__":
    main()
