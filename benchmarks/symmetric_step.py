"""Training-step time of the quickstart's network with and without ``model.symmetric``.

One process, the two networks interleaved (A, B, A, B, ...) so that a shared, loaded CPU slows
both alike: each step is a forward of one 64^3 phantom pair at a random setting, the
quickstart's objective (multi-scale LNCC + linear elastic) and a backward. Prints the median
seconds per step of each and their ratio::

    python benchmarks/symmetric_step.py --data data/phantom --rounds 5 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from regzoo.config import load_config
from regzoo.data.learn2reg import Learn2RegDataset
from regzoo.registration_model import RegistrationModel, field_objective


def main() -> None:
    """Time interleaved training steps of the plain-order and the antisymmetric network."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/phantom"))
    parser.add_argument("--config", type=Path, default=Path("configs/quickstart.yaml"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    item = Learn2RegDataset(args.data, "train", intensity_window=(-1000, 500))[0]
    fixed, moving = item["fixed"][None], item["moving"][None]
    models = {
        flag: RegistrationModel(load_config(args.config, [f"model.symmetric={str(flag).lower()}"]))
        for flag in (False, True)
    }
    times: dict[bool, list[float]] = {False: [], True: []}
    for round_ in range(args.rounds + 1):  # the first round warms up
        for flag, model in models.items():
            values = model.space.sample(1)
            start = time.perf_counter()
            output = model.predict(fixed, moving, values)
            terms = field_objective(
                model.objective, fixed, moving, output.displacement, output.displacement, values
            )
            terms.total.mean().backward()
            model.zero_grad(set_to_none=True)
            if round_:
                times[flag].append(time.perf_counter() - start)
    plain, symmetric = (statistics.median(times[f]) for f in (False, True))
    print(
        f"s / step (median of {args.rounds}, {args.threads} thread(s)): plain order "
        f"{plain:.2f}, symmetric {symmetric:.2f}, ratio {symmetric / plain:.2f}"
    )


if __name__ == "__main__":
    main()
