"""regzoo next to peer registration tools on one Learn2Reg split, in one run on one CPU.

Every method registers the same pairs (default: the validation pairs) and writes Learn2Reg
displacement files ``disp_<fixed>_<moving>.nii.gz`` (``(X, Y, Z, 3)``, voxels on the fixed
grid: fixed voxel ``x`` maps to moving voxel ``x + u(x)``, channel ``k`` along array axis ``k``)
into ``OUT/<method>/``. Each folder is then scored by the same code as
``regzoo evaluate --disp-dir`` (``evaluate_displacements`` + ``summarize``; the full report is
written to ``OUT/<method>/report.json``), so a peer's figures are those any other tool would get.

Methods:

* ``identity``: the zero field (TRE before registration).
* ``ants_syn``: ANTsPy's default ``SyN`` (affine then SyN, as a user would run it) on the raw
  NIfTI images, ``--threads`` ITK threads and the nonzero ``--seed`` (bit-reproducible with
  ``--threads 1`` only: with more, ITK's threaded sums vary run to run). Its transform is turned
  into voxel displacements by warping images of the moving grid's voxel indices (exact: linear
  interpolation of a linear function), on a grid padded around the moving image so points
  mapped outside it keep exact coordinates.
* ``monai_voxelmorph``: MONAI's ``VoxelMorph`` (3D, its defaults) trained here for ``--steps``
  steps on the data set's training pairs (LNCC, window 9, + ``--monai-reg-weight`` x
  ``DiffusionLoss``; batch 1, Adam), then run on the pairs. Its ``ddf`` is already in
  regzoo's convention (checked at start-up against ``regzoo.spatial.warp``).
* ``convex_adam``: ConvexAdam (Siebert, Hansen, Heinrich 2021; the ``convexadam`` package):
  MIND-SSC features, coupled convex discrete optimisation, Adam; its Learn2Reg LungCT defaults
  kept in millimetres. No registry package provides deeds.
* ``regzoo``: ``regzoo.inference.register`` with ``--model`` at the ``--param`` values.
* ``regzoo_refined``: the same followed by instance optimisation, one method per value of
  ``--refine`` (iterations) and of ``--refine-similarity`` (``model``: the training
  similarity; ``'model + ngf'``, ``'10*mind_ssc'``: see ``regzoo.similarity.parse_similarity``),
  with the pyramid split ``--refine-split``; folders ``regzoo_refined_<N>[_<similarity>]``.

The table (also in ``OUT/peers.md``) gives mean TRE (mm), Dice (masks), SDlogJ, folding fraction,
seconds per pair, and TRE and seconds as ratios to ANTs SyN; one JSON line per method is printed
and written to ``OUT/peers.jsonl``; ``OUT/frontier.png`` plots TRE against seconds per pair. Seconds: ANTs' ``registration`` call only (images already
read); the networks' forward pass (``register`` for regzoo, images already read too),
after one untimed warm-up call; MONAI's training time is reported apart, per step. Everything
runs on the CPU with ``--threads`` threads (torch and ITK alike).

    pip install -e .[bench]   # antspyx, convexadam, monai
    python benchmarks/peers.py --data data/phantom --out runs/peers \\
        --model runs/quickstart/checkpoints/last.ckpt --param lam=1 --param mu=1 \\
        --refine 10 20 30 --refine-similarity model 'model + ngf' --refine-split 1:1:2
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import itertools
import json
import math
import os
import random
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path
from types import ModuleType
from typing import Any

import nibabel as nib
import numpy as np
import torch
from _common import device_name

from regzoo.cli.refine_flags import from_flags
from regzoo.data.learn2reg import Learn2RegDataset
from regzoo.evaluation import evaluate_displacements, summarize, write_report
from regzoo.io import read_volume, write_displacement
from regzoo.refinement import RefineOptions

WINDOW = (-1000.0, 500.0)  # HU window mapped to [0, 1] for the networks trained here
ANTS = "ants_syn"
CONVEX_ADAM = "convex_adam"
REFINED = "regzoo_refined"
METHODS = ("identity", ANTS, CONVEX_ADAM, "monai_voxelmorph", "regzoo", REFINED)
BENCH_HINT = "pip install -e .[bench]"

Item = Mapping[str, Any]


@dataclass
class Runner:
    """A method ready to register pairs.

    Attributes:
        predict: maps a dataset item to its displacement ``(3, X, Y, Z)`` (voxels, regzoo's
            convention) and the seconds the registration itself took.
        extra: fields added to the method's JSON line (settings, training time).
        warmup: run ``predict`` once untimed before the pairs (first-call overhead of torch).
    """

    predict: Callable[[Item], tuple[np.ndarray, float]]
    extra: dict[str, Any] = field(default_factory=dict)
    warmup: bool = False


def import_bench(module: str) -> ModuleType:
    """Import a module of the ``bench`` extra, or exit with a one-line hint."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise SystemExit(
            f"{module} is missing ({exc}); install the bench extra: {BENCH_HINT}"
        ) from None


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and its wall time in seconds."""
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def seeded_cycle(n: int, seed: int) -> Iterator[int]:
    """Indices ``0..n-1`` forever, in a fresh seeded permutation every epoch."""
    rng = np.random.default_rng(seed)
    while True:
        yield from rng.permutation(n).tolist()


# ----------------------------------------------------------------------------------- identity


def identity_runner(args: argparse.Namespace) -> Runner:
    """The zero displacement."""

    def predict(item: Item) -> tuple[np.ndarray, float]:
        return np.zeros((3, *item["fixed"].shape[1:]), dtype=np.float32), 0.0

    return Runner(predict)


# ---------------------------------------------------------------------------------------- ANTs


def ants_voxel_displacement(
    ants: ModuleType, fixed: Any, moving: Any, transforms: Sequence[str], pad_fraction: float = 0.25
) -> np.ndarray:
    """The voxel displacement ``(3, *fixed.shape)`` of an ANTs forward transform list.

    For each axis ``k`` an image whose value is the voxel index along ``k`` on the moving
    image's grid (same spacing, origin, direction) is warped onto the fixed grid with linear
    interpolation, which is exact for a linear function; ``u_k = warped_k - index_k``. The
    index images extend ``pad_fraction`` of each axis beyond the moving image (negative and
    beyond-the-end indices), so points mapped outside it keep exact coordinates (ITK would give
    them a default value); the padding grows if some point falls beyond it.

    Raises:
        ValueError: if fixed voxels map farther than 4 moving-image widths away.
    """
    shape = np.asarray(moving.shape)
    pad = np.maximum(4, np.ceil(pad_fraction * shape)).astype(int)
    spacing = np.asarray(moving.spacing, dtype=float)
    direction = np.asarray(moving.direction, dtype=float)
    origin = np.asarray(moving.origin, dtype=float) - direction @ (spacing * pad)
    outside = -1.0e6  # ITK's value for points beyond the grid: no index gets near it
    parts = []
    for k in range(3):
        along_k = [1, 1, 1]
        along_k[k] = -1
        index = np.arange(-pad[k], shape[k] + pad[k], dtype=np.float32).reshape(along_k)
        coord = ants.from_numpy(
            np.ascontiguousarray(np.broadcast_to(index, tuple(shape + 2 * pad))),
            origin=tuple(origin),
            spacing=tuple(spacing),
            direction=direction,
        )
        warped = ants.apply_transforms(
            fixed=fixed,
            moving=coord,
            transformlist=list(transforms),
            interpolator="linear",
            defaultvalue=outside,
        ).numpy()
        if (warped < -pad[k] - 1).any():
            if pad_fraction >= 4:
                raise ValueError("ANTs maps fixed voxels more than 4 image widths away")
            return ants_voxel_displacement(ants, fixed, moving, transforms, 4 * pad_fraction)
        parts.append(warped - np.arange(fixed.shape[k], dtype=np.float32).reshape(along_k))
    return np.stack(parts).astype(np.float32)


def ants_runner(args: argparse.Namespace) -> Runner:
    """ANTsPy's default SyN on the raw images, ``args.threads`` ITK threads, seeded.

    ANTs reads seed 0 as "seed from the clock", hence a nonzero ``--seed``. With one thread a
    seeded run is bit-reproducible; with more, the metric's sums depend on thread scheduling
    and the result varies slightly from run to run (seeded or not).
    """
    if args.seed == 0:
        raise SystemExit("ants_syn: --seed must be nonzero (ANTs reads 0 as 'seed from the clock')")
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)  # before the import
    ants = import_bench("ants")
    options: dict[str, Any] = {}
    config = getattr(ants, "config", None)
    if "random_seed" in inspect.signature(ants.registration).parameters:
        options["random_seed"] = args.seed
    elif hasattr(config, "set_ants_deterministic"):  # antspyx 0.5+: a global seed
        config.set_ants_deterministic(True, seed_value=args.seed)
        # it also forces one ITK thread; the thread count asked for wins
        os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)
    else:
        print(f"ants_syn: antspyx {ants.__version__} takes no random seed; runs are not seeded")

    def predict(item: Item) -> tuple[np.ndarray, float]:
        fixed = ants.image_read(item["fixed_path"])
        moving = ants.image_read(item["moving_path"])
        with tempfile.TemporaryDirectory(prefix="peers_ants_") as tmp:
            reg, seconds = timed(
                lambda: ants.registration(
                    fixed, moving, type_of_transform="SyN", outprefix=f"{tmp}/", **options
                )
            )
            return ants_voxel_displacement(ants, fixed, moving, reg["fwdtransforms"]), seconds

    return Runner(
        predict, {"threads": args.threads, "seed": args.seed, "antspyx": ants.__version__}
    )


# ---------------------------------------------------------------------------------- ConvexAdam

CONVEX_ADAM_SPACING_MM = 1.75  # the Learn2Reg LungCT spacing the package's defaults are set for


def convex_adam_runner(args: argparse.Namespace) -> Runner:
    """ConvexAdam (Siebert, Hansen, Heinrich 2021; the ``convexadam`` package): MIND-SSC
    features, a coupled convex discrete optimisation on a coarse grid, then Adam with diffusion
    regularisation, on the raw images, ``args.threads`` torch threads.

    The package's defaults (control grid 6 voxels, search radius 4 grid steps: +-42 mm at
    1.75 mm voxels) are kept in millimetres: both grids scale with the data's voxel size
    (at 5.25 mm: grid 2, radius 4). Its displacement ``(X, Y, Z, 3)`` is in voxels on the fixed
    grid, the Learn2Reg convention that regzoo shares.
    """
    import_bench("SimpleITK")
    module = import_bench("convexAdam.convex_adam_MIND")

    def predict(item: Item) -> tuple[np.ndarray, float]:
        fixed = nib.load(item["fixed_path"])
        moving = nib.load(item["moving_path"])
        spacing = float(np.mean(fixed.header.get_zooms()[:3]))
        grid = max(1, round(6 * CONVEX_ADAM_SPACING_MM / spacing))
        adam_grid = max(1, round(2 * CONVEX_ADAM_SPACING_MM / spacing))
        images = [
            torch.from_numpy(np.asarray(v.dataobj, dtype=np.float32)) for v in (fixed, moving)
        ]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            disp, seconds = timed(
                lambda: module.convex_adam_pt(
                    *images,
                    grid_sp=grid,
                    grid_sp_adam=adam_grid,
                    device=torch.device("cpu"),
                    dtype=torch.float32,
                )
            )
        return np.moveaxis(np.asarray(disp, dtype=np.float32), -1, 0), seconds

    return Runner(predict, {"threads": args.threads}, warmup=True)


# --------------------------------------------------------------------------------------- MONAI


def check_monai_ddf_convention() -> None:
    """Check that MONAI's ``Warp`` reads a ddf as regzoo reads a displacement.

    MONAI samples ``image`` at ``index + ddf`` (voxels, channel ``k`` along array axis ``k``),
    as ``regzoo.spatial.warp`` does, so a VoxelMorph ddf is used as is. This guards against a
    MONAI release changing that.

    Raises:
        RuntimeError: if the two warps disagree.
    """
    from regzoo.spatial import warp

    Warp = import_bench("monai.networks.blocks").Warp
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 1, 6, 7, 8, generator=generator)
    ddf = 3 * torch.rand(1, 3, 6, 7, 8, generator=generator) - 1.5
    gap = (Warp(mode="bilinear", padding_mode="border")(image, ddf) - warp(image, ddf)).abs().max()
    if gap > 1e-5:
        raise RuntimeError(f"MONAI's ddf convention differs from regzoo's (max gap {gap:.3g})")


def monai_runner(args: argparse.Namespace) -> Runner:
    """Train MONAI's default 3D VoxelMorph on the training pairs, then predict."""
    warnings.filterwarnings("ignore", message=".*Using PyTorch native grid_sample.*")
    # MONAI 1.6's spatial_gradient indexes with a list of slices: torch still reads it as a
    # tuple (DiffusionLoss checked against central differences) but warns on every step
    warnings.filterwarnings("ignore", message=".*non-tuple sequence for multidimensional indexing")
    losses = import_bench("monai.losses")
    VoxelMorph = import_bench("monai.networks.nets").VoxelMorph
    import_bench("monai.utils").set_determinism(seed=args.seed)
    seed_everything(args.seed)
    check_monai_ddf_convention()
    train = Learn2RegDataset(args.data, "train", intensity_window=WINDOW)
    net = VoxelMorph(spatial_dims=3)
    similarity = losses.LocalNormalizedCrossCorrelationLoss(spatial_dims=3, kernel_size=9)
    smoothness = losses.DiffusionLoss()
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    net.train()

    def step(index: int) -> float:
        item = train[index]
        fixed, moving = item["fixed"][None], item["moving"][None]
        warped, ddf = net(moving, fixed)  # MONAI's order: moving first
        loss = similarity(warped, fixed) + args.monai_reg_weight * smoothness(ddf)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    indices = itertools.islice(seeded_cycle(len(train), args.seed), args.steps)
    loss_values, train_seconds = timed(lambda: [step(i) for i in indices])
    net.eval()
    per_step = train_seconds / args.steps if args.steps else math.nan
    if loss_values:
        print(
            f"monai_voxelmorph: {args.steps} steps on {len(train)} training pairs, "
            f"{per_step:.3f} s/step, loss {loss_values[0]:.4f} -> {loss_values[-1]:.4f}"
        )

    @torch.no_grad()
    def predict(item: Item) -> tuple[np.ndarray, float]:
        (_, ddf), seconds = timed(lambda: net(item["moving"][None], item["fixed"][None]))
        return ddf[0].numpy(), seconds

    extra = {
        "train_steps": args.steps,
        "train_seconds_per_step": per_step,
        "train_pairs": len(train),
        "lr": args.lr,
        "reg_weight": args.monai_reg_weight,
        "final_loss": loss_values[-1] if loss_values else None,
        "monai": import_bench("monai").__version__,
    }
    return Runner(predict, extra, warmup=True)


# -------------------------------------------------------------------------------------- regzoo


@cache
def load_regzoo(checkpoint: str) -> Any:
    """The regzoo model of a checkpoint, loaded once for both regzoo methods."""
    from regzoo.checkpoint import load_model

    return load_model(checkpoint)


def regzoo_runner(args: argparse.Namespace, refine: RefineOptions | None = None) -> Runner:
    """``regzoo.inference.register`` at ``--param`` values, refined by ``refine`` (``None``:
    the network alone)."""
    from regzoo.cli import parse_params
    from regzoo.inference import register

    model = load_regzoo(args.model)
    params = parse_params(args.param)

    def predict(item: Item) -> tuple[np.ndarray, float]:
        # images read before the clock starts, as for ANTs
        fixed, moving = read_volume(item["fixed_path"]), read_volume(item["moving_path"])
        result, seconds = timed(lambda: register(model, fixed, moving, refine=refine, **params))
        return result.displacement.numpy(), seconds

    extra = {"model": args.model, "params": model.objective.resolve(params)}
    settings = {"refine": 0} if refine is None else {"refine": refine.steps, **refine.to_dict()}
    return Runner(predict, {**extra, **settings}, warmup=True)


def refined_variants(args: argparse.Namespace) -> dict[str, tuple[int, str]]:
    """``regzoo_refined`` as one method per (``--refine`` iterations, ``--refine-similarity``):
    folder name -> (iterations, similarity text)."""
    return {
        f"regzoo_refined_{steps}" + ("" if spec == "model" else "_" + slug(spec)): (steps, spec)
        for spec in args.refine_similarity
        for steps in args.refine
    }


def slug(text: str) -> str:
    """A folder-safe name for a similarity text (``model + 0.5*ngf`` -> ``model_0.5ngf``)."""
    return re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9.]+", "_", text.replace("*", ""))).strip("_")


def regzoo_refined_runner(args: argparse.Namespace, steps: int, spec: str) -> Runner:
    """``regzoo`` followed by ``steps`` iterations of instance optimisation under ``spec``."""
    return regzoo_runner(args, from_flags(steps=steps, similarity=spec, split=args.refine_split))


RUNNERS: dict[str, Callable[[argparse.Namespace], Runner]] = {
    "identity": identity_runner,
    ANTS: ants_runner,
    CONVEX_ADAM: convex_adam_runner,
    "monai_voxelmorph": monai_runner,
    "regzoo": regzoo_runner,
}


# ------------------------------------------------------------------------------ run and score


def unavailable(name: str, args: argparse.Namespace) -> str | None:
    """Why ``name`` cannot run here, or ``None``."""
    needs = {ANTS: "ants", CONVEX_ADAM: "convexAdam", "monai_voxelmorph": "monai"}
    if name in needs and importlib.util.find_spec(needs[name]) is None:
        return f"{needs[name]} is not installed ({BENCH_HINT})"
    if name.startswith("regzoo") and not args.model:
        return "no --model given"
    if name == REFINED and not args.refine:
        return "no --refine given"
    return None


def choose_methods(args: argparse.Namespace) -> list[str]:
    """The methods to run: those asked for (all must be runnable), or all runnable ones."""
    if args.methods:
        names = [n.strip() for n in args.methods.split(",") if n.strip()]
        unknown = sorted(set(names) - set(METHODS))
        if unknown:
            raise SystemExit(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
        for name in names:
            if reason := unavailable(name, args):
                raise SystemExit(f"{name}: {reason}")
        return names
    names = []
    for name in METHODS:
        if reason := unavailable(name, args):
            print(f"skipping {name}: {reason}")
        else:
            names.append(name)
    return names


def run_method(runner: Runner, items: Sequence[Item], folder: Path) -> list[float]:
    """Register every item, write its displacement file in ``folder``; seconds per pair."""
    folder.mkdir(parents=True, exist_ok=True)
    if runner.warmup:
        runner.predict(items[0])
    seconds = []
    for item in items:
        displacement, elapsed = runner.predict(item)
        if displacement.shape != (3, *item["fixed"].shape[1:]):
            raise ValueError(f"displacement of shape {displacement.shape} for {item['fixed_id']}")
        affine = nib.load(item["fixed_path"]).affine
        write_displacement(
            displacement.astype(np.float32),
            affine,
            folder / f"disp_{item['fixed_id']}_{item['moving_id']}.nii.gz",
        )
        seconds.append(elapsed)
    return seconds


def score(args: argparse.Namespace, folder: Path) -> dict[str, float]:
    """Mean metrics of a folder of displacement files, as ``regzoo evaluate --disp-dir``."""
    dataset = Learn2RegDataset(args.data, args.split, annotations=True)
    rows = evaluate_displacements(dataset, folder, progress=False)
    write_report(rows, folder / "report.json", data=str(args.data), split=args.split)
    return summarize(rows)


def finite(value: Any) -> Any:
    """``None`` for NaN or infinite floats (strict JSON), the value otherwise."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def add_ratios(rows: dict[str, dict[str, Any]]) -> None:
    """Add TRE and seconds as ratios to ANTs SyN's (NaN without an ANTs row)."""
    reference = rows.get(ANTS, {})
    for row in rows.values():
        for key, ratio in (("tre_mm", "tre_ratio_ants"), ("seconds_per_pair", "time_ratio_ants")):
            base = reference.get(key, math.nan)
            row[ratio] = row.get(key, math.nan) / base if base else math.nan


COLUMNS = (
    ("TRE (mm)", "tre_mm", "{:.2f}"),
    ("Dice", "dice", "{:.4f}"),
    ("SDlogJ", "sdlogj", "{:.4f}"),
    ("folding", "folding_fraction", "{:.5f}"),
    ("s / pair", "seconds_per_pair", "{:.2f}"),
    ("TRE / ANTs", "tre_ratio_ants", "{:.2f}"),
    ("time / ANTs", "time_ratio_ants", "{:.3f}"),
    ("train s / step", "train_seconds_per_step", "{:.2f}"),
)


def markdown_table(rows: dict[str, dict[str, Any]]) -> str:
    """One markdown row per method; blanks for figures a method lacks."""

    def cell(row: dict[str, Any], key: str, fmt: str) -> str:
        value = row.get(key)
        return fmt.format(value) if isinstance(value, float) and math.isfinite(value) else "-"

    lines = [
        "| method | " + " | ".join(title for title, _, _ in COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    lines += [
        f"| {name} | " + " | ".join(cell(row, key, fmt) for _, key, fmt in COLUMNS) + " |"
        for name, row in rows.items()
    ]
    return "\n".join(lines)


def frontier_figure(rows: dict[str, dict[str, Any]], path: Path) -> None:
    """TRE against seconds per pair for every method (log time axis): the accuracy-time
    frontier. ``regzoo_refined`` methods of one similarity are joined in order of iterations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    curves: dict[str, list[tuple[float, float, int]]] = {}
    for name, row in rows.items():
        seconds, tre = row.get("seconds_per_pair"), row.get("tre_mm")
        if not (seconds and tre and math.isfinite(seconds) and math.isfinite(tre)):
            continue  # the identity (no time) or a method without keypoints
        if name.startswith(REFINED):
            curves.setdefault(row.get("similarity", "model"), []).append(
                (seconds, tre, row.get("refine", 0))
            )
            continue
        ants = name == ANTS
        color, marker, size = ("tab:red", "*", 160) if ants else ("black", "D", 40)
        ax.scatter(seconds, tre, color=color, marker=marker, s=size, zorder=3)
        ax.annotate(name, (seconds, tre), textcoords="offset points", xytext=(6, 4), fontsize=8)
    for spec, points in curves.items():
        points.sort()
        ax.plot(
            *zip(*[(t, e) for t, e, _ in points], strict=True),
            "o-",
            label=f"regzoo + refine ({spec})",
        )
        for seconds, tre, steps in points:
            ax.annotate(
                str(steps), (seconds, tre), textcoords="offset points", xytext=(4, -10), fontsize=7
            )
    if ANTS in rows and math.isfinite(rows[ANTS].get("tre_mm", math.nan)):
        reference = rows[ANTS]
        ax.axhline(
            0.45 * reference["tre_mm"], color="grey", lw=0.8, ls=":", label="0.45 x ANTs' TRE"
        )
        ax.axvline(reference["seconds_per_pair"], color="grey", lw=0.8, ls="--", label="ANTs' time")
    ax.set_xscale("log")
    ax.set_xlabel("seconds per pair (CPU)")
    ax.set_ylabel("mean TRE (mm)")
    ax.set_title("accuracy against time, one run (numbers: refinement iterations)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help="Learn2Reg-layout dataset folder")
    parser.add_argument("--split", default="val", choices=["train", "val", "test"])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--methods", help=f"comma list of {', '.join(METHODS)} (default: all)")
    parser.add_argument("--steps", type=int, default=500, help="MONAI VoxelMorph training steps")
    parser.add_argument("--lr", type=float, default=1e-3, help="MONAI VoxelMorph Adam lr")
    # 1.0: the VoxelMorph paper's choice for NCC with this diffusion regulariser (MONAI's
    # OASIS tutorial uses 1e-2 because it trains with MSE, the paper's other setting). MONAI's
    # DiffusionLoss sums the three squared partials where VoxelMorph's Grad('l2') averages
    # them, so 1.0 regularises somewhat more than the paper's lambda = 1 (0.33 would match it).
    parser.add_argument("--monai-reg-weight", type=float, default=1.0)
    parser.add_argument("--model", help="regzoo checkpoint (the regzoo methods need it)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument(
        "--refine",
        type=int,
        nargs="+",
        default=[],
        help="regzoo_refined iterations: one method per value (and per --refine-similarity)",
    )
    parser.add_argument(
        "--refine-similarity",
        nargs="+",
        default=["model"],
        metavar="SPEC",
        help="regzoo_refined similarities as regzoo.similarity.parse_similarity reads them "
        "('model': the training one; 'model + ngf'; '10*mind_ssc')",
    )
    parser.add_argument(
        "--refine-split", metavar="A:B:C", help="iterations per pyramid level, coarsest first"
    )
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch and ITK)")
    parser.add_argument(
        "--reuse",
        help="comma list of methods whose result an earlier run left in OUT/<method>/row.json "
        "(e.g. a long MONAI training); they are marked 'reused' in the JSON lines",
    )
    parser.add_argument(
        "--seed", type=int, default=1, help="seed of every method (ANTs needs it nonzero)"
    )
    args = parser.parse_args(argv)
    try:  # before any method runs: a typo must not cost an ANTs run
        for spec in args.refine_similarity:
            from_flags(similarity=spec, split=args.refine_split)
    except (ValueError, KeyError) as exc:  # InputError, UnknownNameError
        parser.error(str(exc.args[0]))
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Register, score, print the table and the JSON lines."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    methods = choose_methods(args)
    items = list(Learn2RegDataset(args.data, args.split, intensity_window=WINDOW))
    print(f"{len(items)} {args.split} pairs of {args.data}; {device_name(torch.device('cpu'))}")
    rows: dict[str, dict[str, Any]] = {}
    reused = {n.strip() for n in (args.reuse or "").split(",") if n.strip()}
    variants = refined_variants(args)
    runners: dict[str, Callable[[argparse.Namespace], Runner]] = {
        **RUNNERS,
        **{
            name: partial(regzoo_refined_runner, steps=n, spec=spec)
            for name, (n, spec) in variants.items()
        },
    }
    methods = [m for name in methods for m in (variants if name == REFINED else [name])]
    for name in [*sorted(reused - set(methods)), *methods]:
        saved = out / name / "row.json"
        if name in reused:
            if not saved.is_file():
                raise SystemExit(f"--reuse {name}: no earlier result at {saved}")
            rows[name] = {**json.loads(saved.read_text()), "reused": True}
            print(f"{name}: reused from {saved}")
            continue
        seed_everything(args.seed)
        runner = runners[name](args)
        seconds = run_method(runner, items, out / name)
        rows[name] = {
            **score(args, out / name),
            "seconds_per_pair": float(np.mean(seconds)),
            "pairs": len(items),
            **runner.extra,
        }
        rows[name].pop("seconds", None)  # the time to read a file back, not the method's
        saved.write_text(json.dumps({k: finite(v) for k, v in rows[name].items()}))
        print(f"{name}: done, {rows[name]['seconds_per_pair']:.2f} s/pair")
    add_ratios(rows)
    table = markdown_table(rows)
    lines = [
        json.dumps({"method": name, **{k: finite(v) for k, v in row.items()}})
        for name, row in rows.items()
    ]
    (out / "peers.md").write_text(table + "\n")
    frontier_figure(rows, out / "frontier.png")
    (out / "peers.jsonl").write_text("\n".join(lines) + "\n")
    print(f"\n{table}\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
