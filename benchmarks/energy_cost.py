"""Cost of each loss term next to one forward pass of the backbone, measured side by side.

At ``--size`` (default 128^3), in one process, rounds of: one forward pass of regzoo's default
VoxelMorph U-Net (plain, training mode, with autograd recording: what a training step pays
before its backward), the same without gradients, and the forward + backward of every
registered regularizer (on a random smooth displacement that requires grad) and similarity
(gradient with respect to the warped image). The order rotates every round; medians are
reported with ratios to the backbone forward (medians of per-round ratios). ``--textbook`` adds
the regularizers as they were written before they were fused (stacked slicing gradient and
Hessian, ``torch.linalg.det``) to show what fusing saved. Times only: within one process the
allocator reuses freed memory, so per-item memory is not measured here (see train_step.py).

    python benchmarks/energy_cost.py --size 128 --rounds 5 --textbook
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see _common.WORKER_ENV

import torch
from _common import clock, device_name, median

from regzoo import regularizers
from regzoo.nets import RegistrationNet
from regzoo.similarity import SIMILARITIES
from regzoo.testing import random_smooth_field


def textbook_gradient(u: torch.Tensor) -> torch.Tensor:
    """The pre-fusion ``regzoo.spatial.gradient``: sliced differences, stacked."""
    sizes, parts = u.shape[2:], []
    for axis in range(len(sizes)):
        diff = u.narrow(2 + axis, 1, sizes[axis] - 1) - u.narrow(2 + axis, 0, sizes[axis] - 1)
        for other in range(len(sizes)):
            if other != axis:
                diff = diff.narrow(2 + other, 0, sizes[other] - 1)
        parts.append(diff)
    return torch.stack(parts, dim=2)


def textbook_hessian(u: torch.Tensor) -> torch.Tensor:
    first = textbook_gradient(u)
    second = textbook_gradient(first.flatten(1, 2))
    return second.unflatten(1, first.shape[1:3])


def textbook_energies() -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The pre-fusion energies (unit spacing, default parameters)."""

    def elastic(u: torch.Tensor) -> torch.Tensor:
        jac = textbook_gradient(u)
        shear = (jac + jac.transpose(1, 2)).pow(2).sum(dim=(1, 2))
        div = torch.diagonal(jac, dim1=1, dim2=2).sum(dim=-1)
        return (shear / 4 + div.pow(2) / 2).flatten(1).mean(1)

    def curvature(u: torch.Tensor) -> torch.Tensor:
        laplacian = torch.diagonal(textbook_hessian(u), dim1=2, dim2=3).sum(dim=-1)
        return laplacian.pow(2).sum(dim=1).flatten(1).mean(1)

    def total_variation(u: torch.Tensor) -> torch.Tensor:
        squared = textbook_gradient(u).pow(2).sum(dim=(1, 2))
        return (torch.sqrt(squared + 1e-6) - 1e-3).flatten(1).mean(1)

    def jacobian(u: torch.Tensor) -> torch.Tensor:
        eye = torch.eye(3).view(1, 3, 3, 1, 1, 1)
        det = torch.linalg.det((textbook_gradient(u) + eye).movedim(1, -1).movedim(1, -1))
        return (torch.log(det.clamp_min(1e-3)).pow(2) + torch.relu(-det)).flatten(1).mean(1)

    return {
        "diffusion": lambda u: textbook_gradient(u).pow(2).sum(dim=(1, 2)).flatten(1).mean(1),
        "linear_elastic": elastic,
        "bending_energy": lambda u: (
            textbook_hessian(u).pow(2).sum(dim=(1, 2, 3)).flatten(1).mean(1)
        ),
        "curvature": curvature,
        "total_variation": total_variation,
        "jacobian": jacobian,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--textbook", action="store_true", help="add the pre-fusion energies")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    shape = (args.size,) * 3
    net = RegistrationNet(3).to(device).train()
    fixed = torch.rand(1, 1, *shape, device=device)
    moving = torch.rand(1, 1, *shape, device=device)
    u = random_smooth_field(shape, batch=1, amplitude=2.0).to(device).requires_grad_(True)
    warped = (fixed + 0.1 * torch.rand_like(fixed)).requires_grad_(True)

    def backbone() -> None:
        net(fixed, moving)

    @torch.no_grad()
    def backbone_no_grad() -> None:
        net(fixed, moving)

    def energy_step(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            u.grad = None
            fn(u).sum().backward()

        return run

    def similarity_step(loss: torch.nn.Module) -> Callable[[], None]:
        def run() -> None:
            warped.grad = None
            loss(fixed, warped).sum().backward()

        return run

    items: dict[str, tuple[str, Callable[[], None]]] = {
        "backbone forward": ("network", backbone),
        "backbone forward, no grad": ("network", backbone_no_grad),
    }
    for name in regularizers.available():
        reg = regularizers.get(name)()
        items[name] = ("regularizer, fwd+bwd", energy_step(lambda x, reg=reg: reg(x)))
    if args.textbook:
        for name, fn in textbook_energies().items():
            items[f"{name} (textbook)"] = ("pre-fusion, fwd+bwd", energy_step(fn))
    for name, options in (("lncc", {"window": 9}), ("mse", {})):
        items[name] = ("similarity, fwd+bwd", similarity_step(SIMILARITIES.get(name)(**options)))

    names = list(items)
    for _ in range(args.warmup):
        for name in names:
            items[name][1]()
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            wall, cpu_s = clock(items[name][1], device)
            times[name].append(wall)
            cpu[name].append(cpu_s)
    reference = "backbone forward"
    rows = []
    for name in names:
        row = {
            "item": name,
            "kind": items[name][0],
            "size": args.size,
            "seconds": median(times[name]),
            "cpu_seconds": median(cpu[name]),
            "x_backbone_forward": median(
                [a / b for a, b in zip(times[name], times[reference], strict=True)]
            ),
            "x_backbone_forward_cpu": median(
                [a / b for a, b in zip(cpu[name], cpu[reference], strict=True)]
            ),
            "rounds": args.rounds,
            "device": device_name(device),
            "torch": torch.__version__,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(
        f"\n{args.size}^3, batch 1, {device_name(device)}, torch {torch.__version__}; medians of "
        f"{args.rounds} interleaved rounds after {args.warmup} warm-up\n"
    )
    print("| item | kind | s | CPU s | x backbone forward (wall / CPU) |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['item']} | {r['kind']} | {r['seconds']:.3f} | {r['cpu_seconds']:.3f} "
            f"| {r['x_backbone_forward']:.3f} / {r['x_backbone_forward_cpu']:.3f} |"
        )


if __name__ == "__main__":
    main()
