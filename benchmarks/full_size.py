"""Full-size volumes on the CPU: seconds per pair and peak memory, regzoo beside ANTs SyN.

For each data set (e.g. the real-anatomy chest CT at 64^3, 128^3 and 192x192x208) and each
method, the pairs of one split are registered in a process of their own, with one thread
(torch and ITK alike). The parent reads that process's peak resident memory from its resource
usage when it ends (``os.wait4``: the per-child ``ru_maxrss`` that
``resource.getrusage(RUSAGE_CHILDREN)`` reports as a maximum over all children), so every
method's figure is its own, imports included.

Methods:

* ``regzoo``: the network alone, at the spacing it was trained at (the images are resampled to
  it and the field carried back in mm: ``RegistrationModel.predict``).
* ``regzoo_native``: the network alone on each image's own grid (``--native-grid``, the
  behaviour before regzoo recorded the training grid).
* ``regzoo_refine<N>``: the network then ``N`` refinement iterations on the image's own grid,
  under ``--refine-similarity`` (default: the model's objective) split ``--refine-split``.
* ``ants_syn``: ANTsPy's default SyN (affine then SyN) on the raw images, run and turned into
  voxel displacements as in ``benchmarks/peers.py``.

Seconds: the registration call only (images already read). Every field is scored by
``regzoo.evaluation.score_pair`` (TRE on the keypoints, Dice of the masks, SDlogJ).

    python benchmarks/full_size.py --model runs/ct64/checkpoints/last.ckpt \\
        --data data/chest_ct64 data/chest_ct128 data/chest_ct192 --pairs 2 2 1 \\
        --out runs/full_size
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

THREADS = "1"


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Register ``spec["pairs"]`` pairs of ``spec["data"]`` with one method; one row."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from regzoo.data.learn2reg import Intensity, Learn2RegDataset
    from regzoo.evaluation import score_pair
    from regzoo.io import read_volume

    method, pairs = spec["method"], int(spec["pairs"])
    rows: list[dict[str, Any]] = []
    if method == "ants_syn":
        sys.path.insert(0, str(Path(__file__).parent))
        from peers import ants_runner

        runner = ants_runner(argparse.Namespace(threads=1, seed=1))
        dataset = Learn2RegDataset(spec["data"], spec["split"], annotations=True)
        for index in range(min(pairs, len(dataset))):
            item = dataset[index]
            displacement, seconds = runner.predict(item)
            row = score_pair(item, torch.from_numpy(displacement))
            rows.append({**row, "seconds": seconds})
    else:
        from regzoo.checkpoint import load_model
        from regzoo.cli.refine_flags import from_flags
        from regzoo.inference import register
        from regzoo.params import parse_params

        model = load_model(spec["model"])
        model.at_training_spacing = method != "regzoo_native"
        steps = int(method.removeprefix("regzoo_refine").split("_")[0]) if "refine" in method else 0
        refine = (
            from_flags(steps=steps, similarity=spec["similarity"], split=spec["refine_split"])
            if steps
            else None
        )
        params = model.objective.resolve(parse_params(spec["params"]))
        intensity = Intensity.from_config(model.config.data)
        dataset = Learn2RegDataset(
            spec["data"], spec["split"], intensity=intensity, annotations=True
        )
        for index in range(min(pairs, len(dataset))):
            item = dataset[index]
            fixed = read_volume(item["fixed_path"])
            moving = read_volume(item["moving_path"])
            started = time.perf_counter()
            result = register(model, fixed, moving, refine=refine, **params)
            seconds = time.perf_counter() - started
            row = score_pair(item, result.displacement)
            rows.append({**row, "seconds": seconds})
    summary: dict[str, Any] = {"pairs": len(rows)}
    for key in ("tre_mm", "tre_initial_mm", "dice", "sdlogj", "folding_fraction", "seconds"):
        values = [r[key] for r in rows if r.get(key) is not None]
        if values:
            summary[key] = float(np.mean(values))
    return summary


def measure(spec: dict[str, Any], log: Path) -> dict[str, Any]:
    """Run one (data set, method) in a process of its own; its row plus its peak RSS."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": THREADS,
        "MKL_NUM_THREADS": THREADS,
        "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": THREADS,
    }
    with log.open("a") as stderr:
        process = subprocess.Popen(
            [sys.executable, __file__, "--worker", json.dumps(spec)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
        )
        assert process.stdout is not None
        output = process.stdout.read().decode()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        return {"error": f"exit code {process.returncode} (see {log})"}
    row = json.loads(output.strip().splitlines()[-1])
    row["peak_rss_mb"] = usage.ru_maxrss / 1024  # kilobytes on Linux
    return row


def shape_of(data: str) -> str:
    """``64x64x64`` of a data set's first image."""
    import nibabel as nib

    first = sorted((Path(data) / "imagesTr").glob("*.nii.gz"))[0]
    return "x".join(str(n) for n in nib.load(first).shape[:3])


def table(rows: Sequence[dict[str, Any]]) -> str:
    """The markdown table of the rows."""
    lines = [
        "| data | method | pairs | TRE (mm) | initial TRE | Dice | SDlogJ | s / pair | peak RSS (MB) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def cell(row: dict[str, Any], key: str, fmt: str) -> str:
        return format(row[key], fmt) if key in row else "-"

    for row in rows:
        lines.append(
            f"| {row['shape']} | {row['method']} | {row.get('pairs', 0)} | "
            f"{cell(row, 'tre_mm', '.2f')} | {cell(row, 'tre_initial_mm', '.2f')} | "
            f"{cell(row, 'dice', '.3f')} | {cell(row, 'sdlogj', '.3f')} | "
            f"{cell(row, 'seconds', '.1f')} | {cell(row, 'peak_rss_mb', '.0f')} |"
            + (f" {row['error']}" if "error" in row else "")
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model", help="regzoo checkpoint")
    parser.add_argument("--data", nargs="+", default=[], help="Learn2Reg folders, one per size")
    parser.add_argument(
        "--pairs", nargs="+", type=int, default=[2], help="pairs per data set (one or one each)"
    )
    parser.add_argument("--split", default="val")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--refine", type=int, default=30, help="refinement iterations")
    parser.add_argument(
        "--refine-similarity", default="model", help="similarity text of the refinement"
    )
    parser.add_argument("--refine-split", help="pyramid split of the iterations, e.g. 1:1:2")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["regzoo", "regzoo_native", "regzoo_refine", "ants_syn"],
        help="regzoo, regzoo_native, regzoo_refine, ants_syn",
    )
    parser.add_argument("--out", default="runs/full_size")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))), flush=True)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    counts = args.pairs * len(args.data) if len(args.pairs) == 1 else args.pairs
    rows = []
    for data, pairs in zip(args.data, counts, strict=True):
        shape = shape_of(data)
        for method in args.methods:
            name = method
            if method == "regzoo_refine":
                name = f"regzoo_refine{args.refine}"
                if args.refine_similarity != "model" or args.refine_split:
                    name += f"_{args.refine_similarity}_{args.refine_split or 'thirds'}"
            spec = {
                "method": name,
                "data": data,
                "pairs": pairs,
                "split": args.split,
                "model": args.model,
                "params": args.param,
                "similarity": args.refine_similarity,
                "refine_split": args.refine_split,
            }
            row = {"shape": shape, "method": name, **measure(spec, out / "log.txt")}
            print(json.dumps(row), flush=True)
            with (out / "full_size.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")
            rows.append(row)
    # every row the output folder holds (runs with other --methods or --data append to it)
    lines = (out / "full_size.jsonl").read_text().splitlines()
    every = [json.loads(line) for line in lines if line.strip()]
    (out / "full_size.md").write_text(table(every) + "\n")
    print(table(every))


if __name__ == "__main__":
    main()
