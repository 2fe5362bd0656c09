"""Slider-update latency of the parameter explorer: HTTP request to response with the images.

The explorer's server runs on loopback as ``regzoo explore`` serves it; each update moves
every free parameter to a new value (so the network always runs) and waits for the whole JSON
answer: the readouts (Dice, SDlogJ, folding, similarity, energies) and the twelve plane images
with their grid nodes and contours. A slice move (same parameters: no network) is timed too.
Prints one JSON line per request, then a table. The server runs in this process, so the CPU
seconds per update (all threads) are reported too, with the load average: on a shared machine
the wall time also counts the time other processes held the cores.

    python benchmarks/explore_latency.py [--model CKPT] [--size 64] [--updates 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

import torch
from _common import device_name

from regzoo.checkpoint import load_model
from regzoo.config import load_config
from regzoo.data.phantom import write_phantom_dataset
from regzoo.explore.app import create_app
from regzoo.explore.server import ExplorerServer
from regzoo.explore.session import ExploreSession
from regzoo.lightning_module import HyperRegistration


def post(url: str, body: dict) -> tuple[float, dict, int]:
    """Seconds from sending the request to having read the whole answer, the answer, bytes."""
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        raw = response.read()
    seconds = time.perf_counter() - started
    return seconds, json.loads(raw), len(raw)


def settings(model: HyperRegistration, count: int) -> list[dict[str, float]]:
    """``count`` settings sweeping every free parameter across its range (on its own scale),
    each different from the one before."""
    space = model.space
    steps = torch.linspace(0.05, 0.95, count, dtype=torch.float64)
    order = torch.cat([steps[0::2], steps[1::2].flip(0)])  # zig-zag: large jumps too
    unit = order[:, None].expand(count, len(space))
    values = space.denormalize(unit)
    return [dict(zip(space.names, map(float, row), strict=True)) for row in values]


def summary(name: str, times: list[float]) -> dict[str, float | str | int]:
    ordered = sorted(times)
    return {
        "what": name,
        "n": len(times),
        "median_s": statistics.median(times),
        "p90_s": ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))],
        "max_s": ordered[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", help="checkpoint (default: an untrained quickstart model)")
    parser.add_argument("--size", type=int, default=64, help="phantom side in voxels")
    parser.add_argument("--updates", type=int, default=20, help="timed slider updates")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = (
        load_model(args.model)
        if args.model
        else HyperRegistration(load_config("configs/quickstart.yaml")).eval()
    )
    with tempfile.TemporaryDirectory() as tmp:
        shape = (args.size,) * 3
        root = write_phantom_dataset(Path(tmp) / "phantom", n=2, val=1, shape=shape, progress=False)
        images, masks = root / "imagesTr", root / "masksTr"
        session = ExploreSession(
            model,
            images / "PhantomCT_0002_0000.nii.gz",
            images / "PhantomCT_0002_0001.nii.gz",
            fixed_seg=masks / "PhantomCT_0002_0000.nii.gz",
            moving_seg=masks / "PhantomCT_0002_0001.nii.gz",
        )
        server = ExplorerServer(create_app(session), "127.0.0.1", 0)
        with server.running() as url:
            update = url + "api/update"
            middle = [n // 2 for n in shape]
            for params in settings(model, 3):  # warm-up
                post(update, {"params": params, "slices": middle})
            rows = []
            load = os.getloadavg()[0]
            for i, params in enumerate(settings(model, args.updates)):
                cpu = time.process_time()
                seconds, answer, size = post(update, {"params": params, "slices": middle})
                rows.append(
                    {
                        "what": "slider",
                        "i": i,
                        "params": params,
                        "seconds": seconds,
                        "server_seconds": answer["readout"]["seconds"],
                        "cpu_seconds": time.process_time() - cpu,
                        "kbytes": size / 1024,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
            slice_times = []
            for k in range(args.updates):
                slices = [(m + 3 * k) % n for m, n in zip(middle, shape, strict=True)]
                seconds, _, _ = post(update, {"params": session.params, "slices": slices})
                slice_times.append(seconds)
                print(json.dumps({"what": "slice", "i": k, "seconds": seconds}), flush=True)
    results = [
        summary("slider update (network + scoring + images)", [r["seconds"] for r in rows]),
        summary("  of which server work (network + scoring)", [r["server_seconds"] for r in rows]),
        summary("slice move (images only)", slice_times),
        summary("slider update, CPU seconds (all threads)", [r["cpu_seconds"] for r in rows]),
    ]
    meta = {
        "load_average_1min": round(load, 2),
        "size": args.size,
        "device": device_name(torch.device("cpu")),
        "model": args.model or "untrained quickstart",
        "response_kbytes": statistics.median(r["kbytes"] for r in rows),
    }
    for result in results:
        print(json.dumps({**meta, **result}), flush=True)
    print(f"\nexplorer latency at {args.size}^3, {meta['device']}, {meta['model']} model")
    print(f"response: {meta['response_kbytes']:.0f} kB (JSON: readouts and 12 plane images)")
    print(f"load average (1 min) when the timing started: {load:.2f}")
    print(f"| {'what':<44} | n  | median (s) | p90 (s) | max (s) |")
    print(f"|{'-' * 46}|----|-----------:|--------:|--------:|")
    for r in results:
        print(
            f"| {r['what']:<44} | {r['n']:<2} | {r['median_s']:10.3f} | {r['p90_s']:7.3f} "
            f"| {r['max_s']:7.3f} |"
        )


if __name__ == "__main__":
    main()
