"""Training-step and inference time and memory: hyper model, plain backbone, MONAI's VoxelMorph.

Every variant runs in its own worker process (its memory is its own) and the variants are
measured side by side in one run: after ``--warmup`` untimed rounds, ``--rounds`` rounds in
which each variant runs once, in an order that rotates every round. Medians are reported, and
the ratios between variants are medians of per-round ratios (robust to background load drifting
on a shared machine). One JSON line per variant and size, then a markdown table.

Variants: ``hyper`` (regzoo, hypernetwork on), ``plain`` (regzoo, hypernetwork off: the
VoxelMorph baseline with fixed parameters), ``monai`` (MONAI's ``VoxelMorph``, its defaults, with
``LocalNormalizedCrossCorrelationLoss(kernel_size=9)`` + ``DiffusionLoss``; the ``bench``
extra). A suffix adds an option to a regzoo variant: ``hyper+bf16`` (autocast bfloat16, as
``trainer.precision: bf16-mixed``), ``hyper+compile`` (``model.compile: true``).

Settings (``--setting``):

- ``matched`` (default): regzoo with MONAI's default VoxelMorph network (``enc [16, 32, 32]``,
  ``dec [32, 32, 32, 32, 16, 16]``: the same layers), full-resolution flow, 7 integration steps,
  LNCC 9^3 + diffusion; hyper: the diffusion weight alpha free in [0, 1] (HyperMorph); plain and
  MONAI: alpha 1. Same network, same losses: the comparison with MONAI.
- ``quickstart``: ``configs/quickstart.yaml`` (regzoo's default U-Net, linear elastic with
  lam, mu free; plain: lam 0.083, mu 0.03), full-resolution flow unless ``--half-res``.
- ``paper``: ``configs/paper/hyperelastic_lam1_mu1.yaml`` (the paper's configs share its
  network: default U-Net, full resolution, no integration).

A training step is what ``training_step`` computes (parameter draw, network, warp, loss with each
sample's own parameters) plus backward and an Adam step, on random images already in memory
(no data loading, no Lightning). Inference is one network forward and the warp of the moving
image at the default parameters, without gradients. Memory on CPU: peak resident set size
(``VmHWM``, reset after the warm-up) minus the resident size at that reset, i.e. what one step
adds on top of the weights, Adam state and inputs; the absolute peak RSS is reported too. On
CUDA: ``torch.cuda.max_memory_allocated``.

    python benchmarks/train_step.py --size 64 128 --variants hyper plain monai
    python benchmarks/train_step.py --setting quickstart --half-res --variants hyper plain
    python benchmarks/train_step.py --mode infer --size 64 128 192x192x208
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from _common import (
    Worker,
    clock,
    device_name,
    interleaved,
    median,
    paired_ratio,
    peak_since_reset_mb,
    reset_peak,
    rss_mb,
    serve,
)

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "matched": "configs/quickstart.yaml",
    "quickstart": "configs/quickstart.yaml",
    "paper": "configs/paper/hyperelastic_lam1_mu1.yaml",
}
MATCHED = [
    "model.enc=[16, 32, 32]",
    "model.dec=[32, 32, 32, 32, 16, 16]",
    "model.int_steps=7",
    "weighting=additive",
    "similarity={name: lncc, options: {window: 9}}",
]


def regzoo_overrides(setting: str, hyper: bool, half_res: bool) -> list[str]:
    """Config overrides of a regzoo variant."""
    overrides = [
        "data.phantom=null",
        f"model.hyper={str(hyper).lower()}",
        f"model.int_downsize={2 if half_res else 1}",
    ]
    if setting == "matched":
        alpha = "{low: 0.0, high: 1.0}" if hyper else "1.0"
        return [*overrides, *MATCHED, f"regularizers=[{{name: diffusion, alpha: {alpha}}}]"]
    if not hyper:
        fixed = "{lam: 0.083, mu: 0.03}" if setting == "quickstart" else "{lam: 0.5, mu: 0.5}"
        overrides.append(f"regularizers.0.params={fixed}")
    return overrides


@dataclass
class Bench:
    """A variant ready to run: one training step, one inference, its size and its inputs.

    ``inputs`` holds the ``fixed`` and ``moving`` images both run on (copy data into them).
    """

    step: Callable[[], None]
    infer: Callable[[], None]
    parameters: int
    inputs: dict[str, torch.Tensor]


def build_regzoo(
    variant: str, args: argparse.Namespace, size: list[int], device: torch.device
) -> Bench:
    """One training step and one inference of a regzoo variant."""
    from regzoo.config import load_config
    from regzoo.lightning_module import HyperRegistration
    from regzoo.spatial import warp

    base, *options = variant.split("+")
    config = load_config(
        ROOT / SETTINGS[args.setting],
        regzoo_overrides(args.setting, base == "hyper", args.half_res),
    )
    model = HyperRegistration(config).to(device)
    if "compile" in options:
        model.net.compile()
    optimizer = model.configure_optimizers()
    batch = {
        "fixed": torch.rand(args.batch, 1, *size, device=device),
        "moving": torch.rand(args.batch, 1, *size, device=device),
    }
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled="bf16" in options)
    default = model.parameter_tensor(None, args.batch)

    def step() -> None:
        model.train()
        values = model._draw_parameters(args.batch)
        with autocast:
            terms, _, _ = model._loss(batch, values)
        optimizer.zero_grad(set_to_none=True)
        terms.training_loss.mean().backward()
        optimizer.step()

    @torch.no_grad()
    def infer() -> None:
        model.eval()
        with autocast:
            output = model(batch["fixed"], batch["moving"], default)
        warp(batch["moving"], output.displacement)

    return Bench(step, infer, sum(p.numel() for p in model.parameters()), batch)


def build_monai(
    variant: str, args: argparse.Namespace, size: list[int], device: torch.device
) -> Bench:
    """MONAI's default VoxelMorph with LNCC 9^3 + DiffusionLoss (weight 1)."""
    warnings.filterwarnings("ignore", message=".*Using PyTorch native grid_sample.*")
    warnings.filterwarnings("ignore", message=".*non-tuple sequence for multidimensional indexing")
    try:
        from monai.losses import DiffusionLoss, LocalNormalizedCrossCorrelationLoss
        from monai.networks.nets import VoxelMorph
    except ImportError as exc:
        raise SystemExit(f"monai is missing ({exc}); pip install -e .[bench]") from None
    net = VoxelMorph(spatial_dims=3, half_res=args.half_res).to(device)
    similarity = LocalNormalizedCrossCorrelationLoss(spatial_dims=3, kernel_size=9)
    smoothness = DiffusionLoss()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    fixed = torch.rand(args.batch, 1, *size, device=device)
    moving = torch.rand(args.batch, 1, *size, device=device)

    def step() -> None:
        net.train()
        warped, ddf = net(moving, fixed)  # MONAI's order: moving first
        loss = similarity(warped, fixed) + smoothness(ddf)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def infer() -> None:
        net.eval()
        net(moving, fixed)

    inputs = {"fixed": fixed, "moving": moving}
    return Bench(step, infer, sum(p.numel() for p in net.parameters()), inputs)


def worker(args: argparse.Namespace) -> None:
    """Serve one variant at one size (see ``_common.Worker``)."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    size = parse_size(args.size[0])
    build = build_monai if args.worker == "monai" else build_regzoo
    bench = build(args.worker, args, size, device)
    run = bench.step if args.mode == "train" else bench.infer
    baseline = {"mb": rss_mb()}

    def once() -> dict[str, Any]:
        wall, cpu = clock(run, device)
        return {"seconds": wall, "cpu_seconds": cpu}

    def reset() -> dict[str, Any]:
        baseline["mb"] = reset_peak(device)
        return {"baseline_mb": baseline["mb"]}

    def memory() -> dict[str, Any]:
        peak = peak_since_reset_mb(device)
        return {"peak_mb": peak, "added_mb": peak - baseline["mb"], "baseline_mb": baseline["mb"]}

    info = {
        "parameters": bench.parameters,
        "device": device_name(device),
        "torch": torch.__version__,
    }
    serve({"run": once, "reset": reset, "memory": memory}, info)


def parse_size(text: str) -> list[int]:
    """``64`` -> ``[64, 64, 64]``; ``192x192x208`` -> ``[192, 192, 208]``."""
    parts = [int(p) for p in text.lower().split("x")]
    return parts * 3 if len(parts) == 1 else parts


def measure(args: argparse.Namespace, size_text: str) -> list[dict[str, Any]]:
    """All variants at one size, interleaved; one row per variant."""
    workers = {}
    for variant in args.variants:
        command = [sys.executable, __file__, "--worker", variant, "--size", size_text]
        for flag in ("mode", "setting", "device", "threads", "batch"):
            command += [f"--{flag}", str(getattr(args, flag))]
        if args.half_res:
            command.append("--half-res")
        workers[variant] = Worker(command)
    try:
        answers = interleaved(workers, "run", warmup=args.warmup, rounds=args.rounds)
        memory = {name: w.ask("memory") for name, w in workers.items()}
    finally:
        for w in workers.values():
            w.close()
    rows = []
    for name, runs in answers.items():
        row = {
            "mode": args.mode,
            "setting": args.setting,
            "size": "x".join(map(str, parse_size(size_text))),
            "variant": name,
            "seconds": median([r["seconds"] for r in runs]),
            "cpu_seconds": median([r["cpu_seconds"] for r in runs]),
            "rounds": len(runs),
            "warmup": args.warmup,
            "added_mb": memory[name]["added_mb"],
            "peak_mb": memory[name]["peak_mb"],
            **workers[name].info,
            "threads": args.threads,
            "half_res": args.half_res,
            "batch": args.batch,
        }
        for reference in dict.fromkeys([args.variants[0], "plain", "monai"]):
            if reference in answers and reference != name and args.rounds:
                row[f"x_{reference}"] = paired_ratio(answers, name, reference)
                row[f"x_{reference}_cpu"] = paired_ratio(answers, name, reference, "cpu_seconds")
                added = memory[reference]["added_mb"]
                row[f"memory_x_{reference}"] = (
                    memory[name]["added_mb"] / added if added else math.nan
                )
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]], references: list[str]) -> str:
    """The rows as a markdown table, with time ratios to each reference present."""
    present = [r for r in dict.fromkeys(references) if any(row["variant"] == r for row in rows)]

    def ratio(row: dict[str, Any], key: str) -> str:
        return f"{row[key]:.2f}" if key in row else "-"

    lines = [
        "| size | variant | s | CPU s | added MB | peak RSS MB | parameters | "
        + " | ".join(f"x {r} (wall / CPU)" for r in present)
        + " |",
        "|---|---|---:|---:|---:|---:|---:|" + "---:|" * len(present),
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['variant']} | {r['seconds']:.3f} | {r['cpu_seconds']:.2f} "
            f"| {r['added_mb']:.0f} | {r['peak_mb']:.0f} | {r['parameters']:,} | "
            + " | ".join(f"{ratio(r, f'x_{p}')} / {ratio(r, f'x_{p}_cpu')}" for p in present)
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", nargs="+", default=["64"], help="64 (a cube) or 192x192x208")
    parser.add_argument("--variants", nargs="+", default=["hyper", "plain", "monai"])
    parser.add_argument("--mode", choices=["train", "infer"], default="train")
    parser.add_argument("--setting", choices=list(SETTINGS), default="matched")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads per worker")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--half-res", action="store_true", help="flow at half resolution")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    rows = []
    for size in args.size:
        for row in measure(args, size):
            print(json.dumps(row), flush=True)
            rows.append(row)
    first = rows[0]
    print(
        f"\n{args.mode}, setting {args.setting}, {first['device']}, torch {first['torch']}, "
        f"batch {args.batch}, half-res {args.half_res}; medians of {args.rounds} interleaved "
        f"rounds after {args.warmup} warm-up; ratios: medians of per-round ratios\n"
    )
    print(table(rows, [args.variants[0], "plain", "monai"]))


if __name__ == "__main__":
    main()
