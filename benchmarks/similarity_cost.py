"""Cost of each registered similarity against LNCC: forward + backward, side by side in one run.

For each size, every similarity is evaluated on the same smooth random image pair
``(1, 1, size^3)`` with a gradient with respect to the warped image (what training and
refinement pay per iteration), and timed as the median of ``--repeats`` calls in wall and in CPU
seconds (all threads; on a busy machine CPU time with ``--threads 1`` is what an idle core would
take). For a descriptor similarity (MIND-SSC) one more row gives what refinement pays per
iteration: the moving descriptors (computed once) warped by a displacement and compared, with
the gradient with respect to the displacement; the ``warp`` row is the same for the image alone
(what every other similarity adds to its cost in refinement). The "fixed image bound once"
rows time ``Similarity.bind_fixed``'s function (what refinement evaluates: LNCC's and NGF's
fixed-image statistics computed once per pair and level). Run nice'd::

    nice -n 19 .venv/bin/python benchmarks/similarity_cost.py --sizes 64 128 --threads 1
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from regzoo.similarity import SIMILARITIES, DescriptorSimilarity
from regzoo.spatial import warp


def smooth(size: int, seed: int) -> torch.Tensor:
    """A smooth random image ``(1, 1, size^3)``."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 1, *[max(2, size // 8)] * 3, generator=g)
    return F.interpolate(coarse, size=[size] * 3, mode="trilinear", align_corners=False)


def measure(fn: Callable[[], None], repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``fn`` after one warm-up call."""
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return sorted(walls)[repeats // 2], sorted(cpus)[repeats // 2]


def main() -> None:
    """Parse arguments, time every similarity at every size, print JSON lines and a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--names", nargs="+", default=["lncc", "mse", "mind_ssc", "ngf", "mi"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    for size in args.sizes:
        fixed, moving = smooth(size, 0), smooth(size, 1)
        displacement = torch.zeros(1, 3, *[size] * 3)
        cases: list[tuple[str, Callable[[], None]]] = []
        for name in args.names:
            sim = SIMILARITIES.get(name)()

            def forward_backward(sim=sim, fixed=fixed, moving=moving) -> None:
                warped = moving.clone().requires_grad_(True)
                sim(fixed, warped).sum().backward()

            cases.append((name, forward_backward))
            bound = sim.bind_fixed(fixed)

            def bound_forward_backward(bound=bound, moving=moving) -> None:
                warped = moving.clone().requires_grad_(True)
                bound(warped).sum().backward()

            cases.append((f"{name} (refinement: fixed image bound once)", bound_forward_backward))
            if isinstance(sim, DescriptorSimilarity):
                fixed_features, moving_features = sim.features(fixed), sim.features(moving)

                def refine_step(
                    sim=sim, ff=fixed_features, mf=moving_features, zero=displacement
                ) -> None:
                    u = zero.clone().requires_grad_(True)
                    sim.compare(ff, warp(mf, u)).sum().backward()

                cases.append((f"{name} (refinement: descriptors warped)", refine_step))

        def warp_only(moving=moving, zero=displacement) -> None:
            u = zero.clone().requires_grad_(True)
            warp(moving, u).sum().backward()

        cases.append(("warp (image, refinement)", warp_only))
        reference = None
        for name, fn in cases:
            wall, cpu = measure(fn, args.repeats)
            reference = cpu if name == "lncc" else reference
            row = {"size": size, "similarity": name, "wall_s": wall, "cpu_s": cpu}
            row["vs_lncc"] = cpu / reference if reference else float("nan")
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(
        f"\nforward + backward, 1 image pair, {args.threads} thread(s), median of {args.repeats}\n"
    )
    print("| size | similarity | wall s | CPU s | CPU vs LNCC |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['size']}^3 | {r['similarity']} | {r['wall_s']:.3f} | {r['cpu_s']:.3f} "
            f"| {r['vs_lncc']:.2f}x |"
        )


if __name__ == "__main__":
    main()
