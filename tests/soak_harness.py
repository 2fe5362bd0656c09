"""RSS measurement for the soak test (no torch import: a subprocess checks it cheaply)."""

from __future__ import annotations

import os
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

WARMUP = 50  # calls before the baseline: allocator pools, lazy imports, first refinement
GROWTH_BOUND_MIB = 8.0  # RSS growth allowed after the warm-up, whatever the number of calls
WINDOW = 5  # samples averaged (median) at each end: RSS moves by a few MiB call to call


def rss_mib() -> float:
    """Resident set size of this process in MiB (psutil, else /proc, else peak RSS)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        pass
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: the peak, which bounds the growth as well
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if os.uname().sysname == "Darwin" else peak / 2**10


@dataclass
class SoakReport:
    """RSS over a soak: the median of the first and last samples after the warm-up."""

    calls: int
    warmup: int
    start_mib: float
    baseline_mib: float
    final_mib: float
    peak_mib: float
    seconds: float

    @property
    def growth_mib(self) -> float:
        return self.final_mib - self.baseline_mib

    def summary(self) -> str:
        return (
            f"soak: {self.calls} calls in {self.seconds:.1f} s ({1e3 * self.seconds / self.calls:.1f}"
            f" ms/call); RSS {self.start_mib:.1f} MiB before, {self.baseline_mib:.1f} MiB after "
            f"{self.warmup} warm-up calls, {self.final_mib:.1f} MiB at the end (peak "
            f"{self.peak_mib:.1f}): growth {self.growth_mib:+.1f} MiB, bound {GROWTH_BOUND_MIB} MiB"
        )


def soak(step: Callable[[int], object], calls: int, *, warmup: int = WARMUP) -> SoakReport:
    """Run ``step(i)`` for ``i < calls`` and sample the RSS about 40 times after ``warmup``."""
    warmup = min(warmup, calls // 2)
    every = max(1, (calls - warmup) // 40)
    start, began, samples = rss_mib(), time.perf_counter(), []
    for i in range(calls):
        step(i)
        if i + 1 >= warmup and (i + 1 - warmup) % every == 0:
            samples.append(rss_mib())
    samples.append(rss_mib())
    return SoakReport(
        calls=calls,
        warmup=warmup,
        start_mib=start,
        baseline_mib=statistics.median(samples[:WINDOW]),
        final_mib=statistics.median(samples[-WINDOW:]),
        peak_mib=max(samples),
        seconds=time.perf_counter() - began,
    )
