"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(
    fn: Callable[[], object], device: torch.device, *, repeats: int, warmup: int = 2
) -> float:
    """Median wall time of ``fn`` in seconds after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def clock(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """Run ``fn`` once: its wall seconds and the process's CPU seconds (all threads)."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated (CUDA) or peak resident set size of the process (CPU), MB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _status_kb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        return None
    return None


def rss_mb() -> float:
    """Current resident set size of this process, MB (Linux ``VmRSS``)."""
    kb = _status_kb("VmRSS")
    return kb / 1024 if kb is not None else peak_memory_mb(torch.device("cpu"))


def reset_peak(device: torch.device) -> float:
    """Reset the peak-memory counter; returns the memory in use now (the baseline), MB.

    CUDA: ``torch.cuda.reset_peak_memory_stats`` and the bytes allocated. CPU: writing ``5`` to
    ``/proc/self/clear_refs`` resets the kernel's peak RSS (``VmHWM``) to the current RSS
    (Linux >= 4.0), which Python's ``tracemalloc`` cannot replace (torch allocates outside it).
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    return rss_mb()


def peak_since_reset_mb(device: torch.device) -> float:
    """Peak memory since `reset_peak` (CUDA: allocated; CPU: ``VmHWM``), MB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    kb = _status_kb("VmHWM")
    return kb / 1024 if kb is not None else peak_memory_mb(device)


def device_name(device: torch.device) -> str:
    """A readable name of the device."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def median(values: Sequence[float]) -> float:
    """The median (``nan`` for no values)."""
    return statistics.median(values) if values else float("nan")


# OpenMP threads sleep instead of spinning while they wait: on a shared machine a spinning
# thread burns its core whenever its sibling is descheduled (measured: 2-thread training steps
# at 32^3 took 0.7 to 7 CPU seconds with spinning, 0.33 +- 0.02 without). Set it before torch
# is imported; a value in the environment wins.
WORKER_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


class Worker:
    """A benchmark variant in its own process, driven one command at a time.

    The child runs ``command`` (a script in ``--worker`` mode, see `serve`), prints one
    JSON line when ready and then answers each command line with one JSON line. Only one
    worker computes at a time, so variants interleaved round by round share the machine's
    background load evenly, and each variant's memory is its own process's.
    """

    def __init__(self, command: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            list(command),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            env={**WORKER_ENV, **os.environ, **(env or {})},
        )
        self.info = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"benchmark worker exited with code {self.process.wait()}")

    def ask(self, command: str) -> dict[str, Any]:
        """Send one command, return the worker's JSON answer."""
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        """End the worker process."""
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            self.process.wait(timeout=60)


def serve(actions: dict[str, Callable[[], dict[str, Any]]], info: dict[str, Any]) -> None:
    """Worker side of `Worker`: print ``info``, then run the commands read from stdin."""
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        name = line.strip()
        if name:
            print(json.dumps(actions[name]()), flush=True)


def interleaved(
    workers: dict[str, Worker], command: str, *, warmup: int, rounds: int
) -> dict[str, list[dict[str, Any]]]:
    """``warmup`` then ``rounds`` rounds of ``command`` on every worker, one worker at a time.

    The order rotates every round (A B C, B C A, C A B, ...), so no variant always runs first
    or right after another. Peaks are reset before the warm-up: the peak then covers the first
    step's allocations too (optimizer state, allocator caches), which a reset after it would
    count in the baseline. Returns each worker's answers in the measured rounds.
    """
    names = list(workers)
    for name in names:
        workers[name].ask("reset")
    for _ in range(warmup):
        for name in names:
            workers[name].ask(command)
    answers: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            answers[name].append(workers[name].ask(command))
    return answers


def paired_ratio(
    answers: dict[str, list[dict[str, Any]]], name: str, reference: str, key: str = "seconds"
) -> float:
    """Median over rounds of ``name``'s time divided by ``reference``'s in the same round."""
    pairs = zip(answers[name], answers[reference], strict=True)
    return median([a[key] / b[key] for a, b in pairs])
