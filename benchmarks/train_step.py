"""Training-step time and peak memory: hyper model next to the plain backbone.

Each variant runs in its own subprocess so peak memory is measured per variant.

    python benchmarks/train_step.py --size 64 --steps 10 [--device cuda] [--half-res]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch
from _common import device_name, peak_memory_mb, timed

from regzoo.config import load_config
from regzoo.model import HyperRegistration
from regzoo.spatial import warp


def measure(
    hyper: bool, size: list[int], steps: int, device: str, half_res: bool, batch: int
) -> dict:
    dev = torch.device(device)
    overrides = [f"model.hyper={str(hyper).lower()}", f"model.int_downsize={2 if half_res else 1}"]
    if not hyper:
        overrides.append("regularizers.0.params={lam: 0.083, mu: 0.03}")
    model = HyperRegistration(load_config("configs/quickstart.yaml", overrides)).to(dev)
    optimizer = model.configure_optimizers()
    fixed = torch.rand(batch, 1, *size, device=dev)
    moving = torch.rand(batch, 1, *size, device=dev)

    def step() -> None:
        values = model._draw_parameters(batch)
        unit = model.space.normalize(values) if model.net.num_params else None
        output = model.net(fixed, moving, unit)
        terms = model.objective(
            fixed, warp(moving, output.displacement), output.displacement, values
        )
        optimizer.zero_grad()
        terms.total.mean().backward()
        optimizer.step()

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    seconds = timed(step, dev, repeats=steps)
    return {
        "variant": "hyper" if hyper else "plain",
        "seconds_per_step": seconds,
        "peak_memory_mb": peak_memory_mb(dev),
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": device_name(dev),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, nargs="+", default=[64])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--half-res", action="store_true")
    parser.add_argument("--variant", choices=["hyper", "plain"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = args.size * 3 if len(args.size) == 1 else args.size
    if args.variant:
        print(
            json.dumps(
                measure(
                    args.variant == "hyper",
                    size,
                    args.steps,
                    args.device,
                    args.half_res,
                    args.batch,
                )
            )
        )
        return
    results = []
    for variant in ("plain", "hyper"):
        command = [
            sys.executable,
            __file__,
            "--variant",
            variant,
            "--size",
            *map(str, size),
            "--steps",
            str(args.steps),
            "--device",
            args.device,
            "--batch",
            str(args.batch),
        ]
        if args.half_res:
            command.append("--half-res")
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    plain, hyper = results
    print(f"device: {hyper['device']}, size {size}, batch {args.batch}, half-res {args.half_res}")
    print(f"{'variant':<8} {'s/step':>8} {'peak MB':>9} {'params':>11}")
    for r in results:
        print(
            f"{r['variant']:<8} {r['seconds_per_step']:>8.3f} {r['peak_memory_mb']:>9.0f} {r['parameters']:>11,}"
        )
    print(
        f"hyper / plain: time x{hyper['seconds_per_step'] / plain['seconds_per_step']:.2f}, "
        f"memory x{hyper['peak_memory_mb'] / plain['peak_memory_mb']:.2f}"
    )


if __name__ == "__main__":
    main()
