"""The registration network side by side: learning curves at equal steps and equal wall time.

Every variant trains on the data set's training pairs for ``--steps`` steps, in this one process
one after the other (same CPU, same threads), and is validated every ``--val-every`` steps on
the validation pairs at the setting ``--param`` (TRE in mm at the keypoints, lung Dice). The
curves are written as ``OUT/curves.jsonl`` and drawn against steps and against training wall
seconds in ``OUT/curves.png``. The final networks are scored by the same code as ``regzoo
evaluate`` (``evaluate_model`` / ``evaluate_displacements`` + ``summarize``) and tabulated in
``OUT/network.md``: TRE, Dice, SDlogJ and folding at the last step and at the wall-time budget
of the first variant (equal training time), plus seconds per step.

Variants (``--variants``):

* ``monai``: MONAI's ``VoxelMorph()`` with its defaults (full-resolution flow, 7 integration
  steps), LNCC 9^3 + ``--monai-reg-weight`` x ``DiffusionLoss``, Adam ``--monai-lr``, batch 1
  (the bench extra).
* every other name is a regzoo config: ``--config`` (default: the quickstart) with the
  variant's overrides from `VARIANTS` (``plain``: the backbone without the
  hypernetwork at the fixed setting ``--param``; ``film``: the quickstart itself; ``weights``:
  generated weights instead of FiLM; ``previous``: the quickstart before FiLM, the
  normalised weighting, the range curriculum, the cosine schedule and the multi-scale
  similarity; ``single_scale``: the quickstart with the bare LNCC, ``similarity.scales=[1]``;
  ``self_pairs``: a tenth of the training pairs are an image registered to itself;
  ``symmetric``: the antisymmetric network, u(F, M) = (g(F, M) - g(M, F)) / 2 in one batch;
  the rest change one choice). A hyper variant's parameter defaults are set to ``--param``, so it is validated
  there (and its range curriculum starts there).

    python benchmarks/network.py --data data/phantom --out runs/network --steps 600 \\
        --val-every 120 --jobs 2 --variants monai plain film weights previous
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
import warnings
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from _common import device_name
from peers import WINDOW, check_monai_ddf_convention, import_bench, seed_everything, seeded_cycle

from regzoo.checkpoint import load_model
from regzoo.config import load_config
from regzoo.data.learn2reg import Learn2RegDataset
from regzoo.evaluation import evaluate_identity, evaluate_model, evaluate_predictor, summarize
from regzoo.training import train

FOUR_DECADES = [
    "regularizers.0.params.lam={low: 0.01, high: 100.0, scale: log}",
    "regularizers.0.params.mu={low: 0.01, high: 100.0, scale: log}",
]
VARIANTS: dict[str, list[str]] = {
    "plain": ["model.hyper=false"],  # + the fixed setting, added from --param
    "film": [],  # the quickstart as it is
    "weights": ["model.conditioning=weights"],
    "additive": ["weighting=additive"],
    "no_curriculum": ["sampling.curriculum_steps=0"],
    "constant_lr": ["optimizer.schedule=constant"],
    "four_decades": FOUR_DECADES,
    "full_res": ["model.int_downsize=1"],
    "ema": ["optimizer.ema_steps=60"],
    "single_scale": ["similarity.scales=[1]"],
    "plain_single_scale": ["model.hyper=false", "similarity.scales=[1]"],
    "self_pairs": ["data.self_pairs=0.1"],  # a tenth of the pairs: an image to itself (0.25 diverged)
    "symmetric": ["model.symmetric=true"],  # u(F, M) = (g(F, M) - g(M, F)) / 2: u(F, F) = 0
    "previous": [  # the quickstart before issue 19
        "model.conditioning=weights",
        "similarity.scales=[1]",
        "weighting=additive",
        "sampling.curriculum_steps=0",
        "optimizer.schedule=constant",
        *FOUR_DECADES,
    ],
}
"""Config overrides of each regzoo variant (on top of ``--config``)."""

DEFAULT_PARAMS = ["lam=1", "mu=1"]


def parse_params(items: list[str]) -> dict[str, float]:
    """``["lam=0.1", "mu=1"]`` -> ``{"lam": 0.1, "mu": 1.0}``."""
    pairs = (item.split("=", 1) for item in items)
    return {name: float(value) for name, value in pairs}


def monai_variant(
    args: argparse.Namespace, validate: Callable[[Callable[[Mapping[str, Any]], Any]], dict]
) -> tuple[list[dict[str, Any]], Callable[[Mapping[str, Any]], torch.Tensor]]:
    """Train MONAI's default VoxelMorph with validation every ``--val-every`` steps."""
    warnings.filterwarnings("ignore", message=".*Using PyTorch native grid_sample.*")
    warnings.filterwarnings("ignore", message=".*non-tuple sequence for multidimensional indexing")
    losses = import_bench("monai.losses")
    import_bench("monai.utils").set_determinism(seed=args.seed)
    seed_everything(args.seed)
    check_monai_ddf_convention()
    train_set = Learn2RegDataset(args.data, "train", intensity_window=WINDOW, cache=True)
    net = import_bench("monai.networks.nets").VoxelMorph(spatial_dims=3)
    similarity = losses.LocalNormalizedCrossCorrelationLoss(spatial_dims=3, kernel_size=9)
    smoothness = losses.DiffusionLoss()
    optimizer = torch.optim.Adam(net.parameters(), lr=args.monai_lr)

    @torch.no_grad()
    def predict(item: Mapping[str, Any]) -> torch.Tensor:
        net.eval()
        ddf = net(item["moving"][None], item["fixed"][None])[1][0]
        net.train()
        return ddf

    curve, seconds = [], 0.0
    indices = seeded_cycle(len(train_set), args.seed)
    for step in range(1, args.steps + 1):
        item = train_set[next(indices)]
        start = time.perf_counter()
        warped, ddf = net(item["moving"][None], item["fixed"][None])  # MONAI: moving first
        loss = similarity(warped, item["fixed"][None]) + args.monai_reg_weight * smoothness(ddf)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seconds += time.perf_counter() - start
        if step % args.val_every == 0 or step == args.steps:
            curve.append({"step": step, "seconds": seconds, **validate(predict)})
    return curve, predict


def regzoo_variant(
    name: str, args: argparse.Namespace, params: dict[str, float]
) -> tuple[list[dict[str, Any]], Path]:
    """Train a regzoo config variant; its validation curve read from its TensorBoard log."""
    overrides = list(VARIANTS[name])
    if "model.hyper=false" in overrides:
        overrides += [f"regularizers.0.params.{k}={v}" for k, v in params.items()]
    run_dir = Path(args.out) / name
    n_train = len(Learn2RegDataset(args.data, "train"))
    config = load_config(
        args.config,
        [
            *overrides,
            f"run_dir={run_dir}",
            f"data.root={args.data}",
            f"seed={args.seed}",
            f"trainer.max_steps={args.steps}",
            f"trainer.check_val_every_n_epoch={max(1, args.val_every // n_train)}",
            "trainer.progress_bar=false",
            "trainer.checkpoint_every_n_steps=null",
        ],
    )
    if config.model.hyper:
        config = load_config(
            config.model_dump(mode="json"),
            [f"regularizers.0.params.{k}.default={v}" for k, v in params.items()],
        )
    checkpoint = train(config, overwrite=True)
    return read_curve(run_dir), checkpoint


def read_curve(run_dir: Path) -> list[dict[str, Any]]:
    """A regzoo run's validation curve from its TensorBoard log: step, training seconds since
    its first logged step, ``val/tre_mm`` and ``val/dice``."""
    event_accumulator = import_bench("tensorboard.backend.event_processing.event_accumulator")
    events = event_accumulator.EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    start = events.Scalars("train/loss")[0].wall_time
    tre = {e.step: e for e in events.Scalars("val/tre_mm")}
    dice = {e.step: e.value for e in events.Scalars("val/dice")}
    return [
        {"step": step, "seconds": e.wall_time - start, "tre_mm": e.value, "dice": dice.get(step)}
        for step, e in sorted(tre.items())
    ]


def at_budget(curve: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """The last validation within ``seconds`` of training (the first one if none is)."""
    within = [row for row in curve if row["seconds"] <= seconds * 1.001]
    return within[-1] if within else curve[0]


def plot(curves: dict[str, list[dict[str, Any]]], identity: float, path: Path) -> None:
    """TRE against steps and against training seconds, one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for name, curve in curves.items():
        for ax, key in zip(axes, ("step", "seconds"), strict=True):
            ax.plot([r[key] for r in curve], [r["tre_mm"] for r in curve], marker="o", label=name)
    for ax, label in zip(axes, ("training steps", "training wall seconds"), strict=True):
        ax.axhline(identity, color="grey", linestyle="--", label="identity")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation TRE (mm)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_variant(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train one variant and score its final network: ``{"curve": [...], "final": {...}}``."""
    torch.set_num_threads(args.threads)
    params = parse_params(args.param or DEFAULT_PARAMS)
    val_set = Learn2RegDataset(args.data, "val", intensity_window=WINDOW, annotations=True)

    def validate(predict: Callable[[Mapping[str, Any]], torch.Tensor]) -> dict[str, float]:
        summary = summarize(evaluate_predictor(val_set, predict, progress=False))
        return {"tre_mm": summary["tre_mm"], "dice": summary["dice"]}

    if name == "monai":
        curve, predict = monai_variant(args, validate)
        rows = evaluate_predictor(val_set, predict, progress=False)
    else:
        curve, checkpoint = regzoo_variant(name, args, params)
        model = load_model(checkpoint)
        setting = params if len(model.space) else None  # a plain model is fixed at params
        rows = evaluate_model(model, val_set, setting, progress=False)
    result = {"variant": name, "curve": curve, "final": summarize(rows)}
    with (args.out / "curves.jsonl").open("a") as stream:
        stream.write(json.dumps(result) + "\n")
    return result


def main() -> None:
    """Train every variant, print JSON lines and write the table and the figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/phantom"))
    parser.add_argument("--out", type=Path, default=Path("runs/network"))
    parser.add_argument("--config", type=Path, default=Path("configs/quickstart.yaml"))
    parser.add_argument("--variants", nargs="+", default=["monai", "plain", "film", "weights"])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--val-every", type=int, default=120)
    parser.add_argument(
        "--param", action="append", help="evaluation setting NAME=VALUE (default lam=1, mu=1)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per variant")
    parser.add_argument(
        "--jobs", type=int, default=1, help="variants trained at once, one process each"
    )
    parser.add_argument(
        "--reuse",
        nargs="*",
        default=[],
        help="variants to read from OUT/curves.jsonl (an earlier run) instead of training",
    )
    parser.add_argument("--monai-lr", type=float, default=1e-3)
    parser.add_argument("--monai-reg-weight", type=float, default=1.0)
    args = parser.parse_args()
    unknown = [v for v in args.variants if v != "monai" and v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from monai, {', '.join(VARIANTS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    curves_file = args.out / "curves.jsonl"
    earlier = (
        [json.loads(line) for line in curves_file.read_text().splitlines()]
        if args.reuse and curves_file.is_file()
        else []
    )
    reused = {r["variant"]: r for r in earlier if r["variant"] in args.reuse}
    missing = sorted(set(args.reuse) - set(reused))
    if missing:
        parser.error(f"--reuse: {missing} not found in {curves_file}")
    curves_file.write_text("".join(json.dumps(r) + "\n" for r in reused.values()))
    val_set = Learn2RegDataset(args.data, "val", intensity_window=WINDOW, annotations=True)
    identity = summarize(evaluate_identity(val_set, progress=False))["tre_mm"]
    to_train = [name for name in args.variants if name not in reused]
    if args.jobs > 1:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
            trained = list(pool.map(run_variant, to_train, [args] * len(to_train)))
    else:
        trained = [run_variant(name, args) for name in to_train]
    by_name = {**reused, **{r["variant"]: r for r in trained}}
    results = [by_name[name] for name in args.variants]
    budget = min(r["curve"][-1]["seconds"] for r in results)
    params = parse_params(args.param or DEFAULT_PARAMS)
    lines = [
        f"device: {device_name(torch.device('cpu'))}, {args.threads} thread(s) per variant, "
        f"{args.jobs} variant(s) at once; identity TRE {identity:.2f} mm; setting {params}; "
        f"equal-time budget: the fastest variant's {budget:.0f} s",
        "",
        f"| variant | TRE at {args.steps} steps (mm) | Dice | SDlogJ | folded | s / step | "
        f"TRE at {budget:.0f} s (mm) | steps by then |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        final, curve = result["final"], result["curve"]
        timed_row = at_budget(curve, budget)
        row = {
            "variant": result["variant"],
            **{k: final[k] for k in ("tre_mm", "dice", "sdlogj", "folding_fraction")},
            "seconds_per_step": curve[-1]["seconds"] / curve[-1]["step"],
            "tre_at_budget_mm": timed_row["tre_mm"],
            "steps_at_budget": timed_row["step"],
        }
        print(json.dumps(row))
        lines.append(
            f"| {row['variant']} | {row['tre_mm']:.2f} | {row['dice']:.4f} | "
            f"{row['sdlogj']:.3f} | {row['folding_fraction']:.2%} | "
            f"{row['seconds_per_step']:.2f} | {row['tre_at_budget_mm']:.2f} | "
            f"{row['steps_at_budget']} |"
        )
    (args.out / "network.md").write_text("\n".join(lines) + "\n")
    plot({r["variant"]: r["curve"] for r in results}, identity, args.out / "curves.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
