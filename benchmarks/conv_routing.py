"""PyTorch's CPU convolution heuristic vs regzoo's routing, for the U-Net's 3D layers (batch 1).

For an ungrouped float32 3D convolution of batch 1, PyTorch uses oneDNN only when
``N * C * D * H > 20480``; below, it falls back to its reference kernel (im2col). regzoo runs
those convolutions as two groups over a duplicated input (``regzoo.nets.hyper``), which PyTorch
sends to oneDNN. For each layer shape of the default U-Net at ``--size``: forward + backward
(gradients of input and weight) both ways, interleaved over ``--rounds``, medians.

    python benchmarks/conv_routing.py --size 64 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see _common.WORKER_ENV

import torch
import torch.nn.functional as F
from _common import clock, device_name, median

from regzoo.nets.hyper import _SLOW_CPU_CONV3D_SIZE, _conv3d_cpu_fast

# (input channels, output channels, level) of the default U-Net (enc 16 32 32 32, dec 32 32 32
# 32 32 16 16, flow 3); level l runs at size / 2^l
LAYERS = [
    (2, 16, 0), (16, 32, 1), (32, 32, 2), (32, 32, 3), (32, 32, 4), (64, 32, 3), (64, 32, 2),
    (64, 32, 1), (48, 32, 0), (32, 16, 0), (16, 16, 0), (16, 3, 0),
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    rows = []
    for cin, cout, level in LAYERS:
        n = args.size // 2**level
        x = torch.randn(1, cin, n, n, n, requires_grad=True)
        w = torch.randn(cout, cin, 3, 3, 3, requires_grad=True)
        b = torch.zeros(cout, requires_grad=True)

        def run(conv, x=x, w=w, b=b) -> None:
            x.grad = w.grad = b.grad = None
            conv(x, w, b, 1, 1).square().sum().backward()

        def pytorch(x, w, b, stride, padding):
            return F.conv3d(x, w, b, stride=stride, padding=padding)

        times: dict[str, list[float]] = {"pytorch": [], "regzoo": []}
        for r in range(args.rounds + 1):
            for name, conv in (("pytorch", pytorch), ("regzoo", _conv3d_cpu_fast)):
                _, cpu = clock(lambda conv=conv: run(conv), device)
                if r:  # the first round warms up
                    times[name].append(cpu)
        row = {
            "layer": f"{cin}->{cout} at {n}^3",
            "routed": cin * n * n <= _SLOW_CPU_CONV3D_SIZE,
            "pytorch_cpu_seconds": median(times["pytorch"]),
            "regzoo_cpu_seconds": median(times["regzoo"]),
        }
        row["speedup"] = row["pytorch_cpu_seconds"] / row["regzoo_cpu_seconds"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    total = {k: sum(r[f"{k}_cpu_seconds"] for r in rows) for k in ("pytorch", "regzoo")}
    print(f"\n{device_name(device)}, torch {torch.__version__}, batch 1, forward + backward\n")
    print("| layer | routed | PyTorch CPU s | regzoo CPU s | speed-up |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['layer']} | {'yes' if r['routed'] else 'no'} | {r['pytorch_cpu_seconds']:.4f} "
            f"| {r['regzoo_cpu_seconds']:.4f} | {r['speedup']:.2f} |"
        )
    print(
        f"| all layers | | {total['pytorch']:.3f} | {total['regzoo']:.3f} "
        f"| {total['pytorch'] / total['regzoo']:.2f} |"
    )


if __name__ == "__main__":
    main()
