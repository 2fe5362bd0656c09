"""Separable LNCC against a dense window^3 convolution: forward+backward time and value.

python benchmarks/lncc.py --size 64 --window 9
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from _common import device_name, timed

from regzoo.similarity import LNCC


class DenseLNCC(LNCC):
    """The same loss with a dense window^3 box convolution (for comparison only)."""

    def loss(self, fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        window = self.options.window
        kernel = fixed.new_full((5, 1, window, window, window), 1.0 / window**3)

        def box(x: torch.Tensor) -> torch.Tensor:
            return F.conv3d(x, kernel[: x.shape[1]], padding=window // 2, groups=x.shape[1])

        stacked = torch.cat([fixed, warped, fixed * fixed, warped * warped, fixed * warped], 1)
        means = box(stacked) / box(torch.ones_like(fixed))
        mf, mw, mff, mww, mfw = means.split(1, dim=1)
        var_f, var_w = (mff - mf * mf).clamp_min(0), (mww - mw * mw).clamp_min(0)
        cov = mfw - mf * mw
        return -(cov * cov / (var_f * var_w + self.options.eps)).flatten(1).mean(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--window", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    fixed = torch.rand(1, 1, *[args.size] * 3, device=device)
    warped = (fixed + 0.1 * torch.rand_like(fixed)).requires_grad_(True)
    results = {}
    for name, loss in (
        ("separable", LNCC(window=args.window)),
        ("dense", DenseLNCC(window=args.window)),
    ):

        def run(loss=loss) -> None:
            warped.grad = None
            loss(fixed, warped).sum().backward()

        results[name] = (timed(run, device, repeats=args.repeats), loss(fixed, warped).item())
    print(f"device: {device_name(device)}, size {args.size}^3, window {args.window}^3")
    for name, (seconds, value) in results.items():
        print(f"{name:<10} forward+backward {seconds:.4f} s   value {value:.8f}")
    sep, dense = results["separable"], results["dense"]
    print(
        f"dense / separable time: x{dense[0] / sep[0]:.1f}; |value difference| = {abs(dense[1] - sep[1]):.2e}"
    )


if __name__ == "__main__":
    main()
