"""Per-label against global elastic parameters on the tissue-motion phantom (docs/tissue.md).

Trains, with the same budget, a global hyper-elastic model (lam, mu free) and the per-label
model of ``configs/phantom_tissue_elastic.yaml`` (lam, mu per lung / soft tissue / bone) on a
phantom with ``motion: tissue``; picks each model's best setting by a TRE sweep on the
validation pairs (global: lam x mu; per label: mu@lung x mu@bone, the rest at 1), and reports
the TRE over all keypoints and over those near the chest wall (within ``--wall`` voxels of the
lung boundary), network alone and refined. Writes ``OUT/tissue.json`` and the sweeps' reports.
``--data FOLDER`` uses an existing Learn2Reg folder with tissue label maps instead (the
real-anatomy set of ``regzoo phantom --anatomy chest-ct``, whose label values are the phantom's).

    python -u benchmarks/tissue.py --out runs/tissue_bench [--shape 32] [--steps 400]
    python -u benchmarks/tissue.py --out runs/tissue_ct --data data/chest_ct64 --threads 1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from regzoo.checkpoint import load_model
from regzoo.config import load_config
from regzoo.data.learn2reg import Learn2RegDataset
from regzoo.data.phantom import write_phantom_dataset
from regzoo.evaluation import item_labels
from regzoo.metrics import target_registration_error
from regzoo.refinement import RefineOptions, refine
from regzoo.report import write_sweep_report
from regzoo.sweeping import GridRange, sweep
from regzoo.training import train

ROOT = Path(__file__).resolve().parents[1]


def overrides(args: argparse.Namespace, data: Path, run_dir: Path) -> list[str]:
    return [
        f"data.root={data}",
        f"run_dir={run_dir}",
        f"trainer.max_steps={args.steps}",
        f"sampling.curriculum_steps={args.steps}",
        "trainer.max_epochs=null",
        "trainer.progress_bar=false",
        "trainer.check_val_every_n_epoch=null",
        "trainer.limit_val_batches=0",
        f"data.phantom.shape=[{args.shape}, {args.shape}, {args.shape}]",
        "model.symmetric=false",  # the same plain network for both models
    ]


def wall_tre(model, dataset, params, wall: float, refine_steps: int) -> dict[str, float]:
    """Mean TRE (mm) over all keypoints and over those near the chest wall (``model=None``:
    the zero displacement)."""
    every, near = [], []
    for item in dataset:
        fixed, moving = item["fixed"][None], item["moving"][None]
        if model is None:
            zero = torch.zeros(1, 3, *fixed.shape[2:])
            output = type("Output", (), {"displacement": zero})
        else:
            with torch.no_grad():
                output = model(fixed, moving, params)
        if refine_steps:
            output = refine(
                model,
                fixed,
                moving,
                params,
                RefineOptions(steps=refine_steps),
                init=output,
                spacing=item["spacing"],
                labels=item_labels(item),
            )
        errors = target_registration_error(
            item["fixed_keypoints"],
            item["moving_keypoints"],
            output.displacement[0],
            item["spacing"],
        ).numpy()
        depth = ndimage.distance_transform_edt(item["fixed_mask"][0].numpy() > 0)
        points = np.rint(item["fixed_keypoints"].numpy()).astype(int)
        close = depth[tuple(points.T)] <= wall
        every.append(errors)
        near.append(errors[close])
    return {
        "tre_mm": float(np.concatenate(every).mean()),
        "tre_wall_mm": float(np.concatenate(near).mean()),
        "wall_keypoints": int(sum(len(n) for n in near)),
        "keypoints": int(sum(len(e) for e in every)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shape", type=int, default=32)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--n", type=int, default=12)
    parser.add_argument("--wall", type=float, default=2.0, help="voxels from the lung boundary")
    parser.add_argument("--refine", type=int, default=30)
    parser.add_argument("--data", type=Path, help="an existing data set with tissue labels")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = args.data or args.out / "data"
    if not data.exists():
        shape = [args.shape] * 3
        write_phantom_dataset(data, n=args.n, val=4, shape=shape, seed=0, motion="tissue")
    models = {
        "global": (ROOT / "configs/quickstart.yaml", {"lam": (0.1, 10.0), "mu": (0.1, 10.0)}),
        "per_label": (
            ROOT / "configs/phantom_tissue_elastic.yaml",
            {"mu@lung": (0.01, 100.0), "mu@bone": (0.01, 100.0)},
        ),
    }
    dataset = Learn2RegDataset(data, "val", annotations=True)
    results = {}
    for name, (config_path, grid) in models.items():
        run_dir = args.out / name
        checkpoint = run_dir / "checkpoints" / "last.ckpt"
        if not checkpoint.is_file():
            train(load_config(config_path, overrides(args, data, run_dir)))
        model = load_model(checkpoint)
        axes = {k: GridRange(lo, hi, 5) for k, (lo, hi) in grid.items()}
        swept = sweep(model, dataset, axes, progress=False)
        write_sweep_report(swept, args.out / f"sweep_{name}", metric="tre_mm", model=name)
        best = swept.best("tre_mm")
        params = {n: best[n] for n in swept.names}
        results[name] = {
            "best": params,
            "network": wall_tre(model, dataset, params, args.wall, 0),
            "refined": wall_tre(model, dataset, params, args.wall, args.refine),
        }
        print(name, json.dumps(results[name]), flush=True)
    results["identity"] = wall_tre(None, dataset, {}, args.wall, 0)
    results["setup"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    (args.out / "tissue.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
