"""Soak test: many ``register`` calls in one process keep the memory bounded.

Short in CI (200 calls at 16^3, a few seconds); the full soak is
``pytest tests/test_soak.py --soak-calls 2000`` (or ``REGZOO_SOAK_CALLS=2000``). The resident
set size (RSS) is printed with the test's output and its growth after a warm-up must stay under
:data:`GROWTH_BOUND_MIB` (figures in docs/reliability.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from soak_harness import GROWTH_BOUND_MIB, soak

from regzoo.checkpoint import load_model
from regzoo.inference import register
from regzoo.refinement import RefineOptions

HERE = Path(__file__).resolve().parent
DEFAULT_CALLS = 200
SHAPE = (16, 16, 16)
REFINE_EVERY = 10  # every 10th call also refines (autograd + optimiser), 2 iterations


@pytest.fixture
def soak_calls(request: pytest.FixtureRequest) -> int:
    option = request.config.getoption("--soak-calls", default=None)
    return int(option or os.environ.get("REGZOO_SOAK_CALLS") or DEFAULT_CALLS)


@pytest.fixture
def one_thread():
    """One intra-op thread: the soak measures memory, and on a shared CPU several OpenMP
    threads per process make small convolutions 10-30x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_many_register_calls_keep_memory_bounded(
    tiny_checkpoint, soak_calls, capsys, record_property
):
    model = load_model(tiny_checkpoint)
    space = model.space
    generator = torch.Generator().manual_seed(0)

    def call(i: int) -> None:
        fixed = torch.rand(SHAPE, generator=generator) * 1500 - 1000  # HU
        moving = torch.rand(SHAPE, generator=generator) * 1500 - 1000
        values = space.sample(1, generator)[0].tolist()
        params = dict(zip(space.names, values, strict=True))
        refine = RefineOptions(steps=2) if i % REFINE_EVERY == 0 else None
        # bare tensors carry no spacing: the network runs on their own grid
        result = register(model, fixed, moving, refine=refine, at_training_spacing=False, **params)
        assert result.displacement.shape == (3, *SHAPE)
        assert bool(torch.isfinite(result.displacement).all())

    report = soak(call, soak_calls)
    with capsys.disabled():
        print(f"\n{report.summary()}")
    record_property("rss_growth_mib", round(report.growth_mib, 2))
    assert report.growth_mib <= GROWTH_BOUND_MIB, report.summary()


def test_the_soak_detects_a_leak():
    # the same measurement on a loop that keeps 80 KiB per call (what a register call returns
    # at 16^3: field, warped image, Jacobian) exceeds the bound within the CI's 200 calls; in a
    # fresh process, since memory freed by earlier tests would absorb the first MiBs of a leak
    script = (
        "import soak_harness as h; kept = []; "
        f"r = h.soak(lambda i: kept.append(b'x' * 80 * 1024), {DEFAULT_CALLS}); "
        "print(r.growth_mib, r.summary())"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=HERE, capture_output=True, text=True, check=True
    ).stdout
    assert float(out.split()[0]) > GROWTH_BOUND_MIB, out
